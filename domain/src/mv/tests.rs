//! Baselines against hand-computed examples. Unless a test says otherwise:
//! hourly intervals, UTC, and the event is Friday 2026-07-10 17:00–19:00
//! (two intervals, 17:00 and 18:00). The calendar around it:
//!
//! ```text
//!   Mo Tu We Th Fr Sa Su
//!   22 23 24 25 26 27 28   June
//!   29 30  1  2  3  4  5   June/July
//!    6  7  8  9 10         July (10 = event day)
//! ```

use proptest::prelude::{prop_assert, proptest};

use super::*;
use crate::meter::MeterSeries;

const H: u64 = 3_600_000;

fn date(s: &str) -> Date {
    s.parse().unwrap()
}

/// Unix ms of `hour`:00 UTC on `day`.
fn at(day: &str, hour: u64) -> u64 {
    date(day).days() as u64 * MS_PER_DAY + hour * H
}

fn w(kw: f64) -> i64 {
    (kw * 1000.0).round() as i64
}

/// An hourly series from 2026-06-22 to 2026-07-09: 5 kW all day on
/// weekdays, 100 kW on weekends (so a weekend day used by mistake shows).
fn base() -> MeterSeries {
    let mut s = MeterSeries::new(3600).unwrap();
    let mut d = date("2026-06-22");
    while d < date("2026-07-10") {
        let kw = if d.weekday().is_weekend() { 100.0 } else { 5.0 };
        fill(&mut s, &d.to_string(), |_| kw);
        d = d.add_days(1);
    }
    s
}

/// Sets every hour of `day` to `kw(hour)`.
fn fill(s: &mut MeterSeries, day: &str, kw: impl Fn(u64) -> f64) {
    for h in 0..24 {
        s.points.insert(at(day, h), w(kw(h)));
    }
}

fn set(s: &mut MeterSeries, day: &str, hour: u64, kw: f64) {
    s.points.insert(at(day, hour), w(kw));
}

fn event() -> EventWindow {
    EventWindow {
        start_ms: at("2026-07-10", 17),
        end_ms: at("2026-07-10", 19),
        utc_offset_min: 0,
    }
}

fn x_of_y(x: u32, y: u32) -> XOfYSpec {
    XOfYSpec::new(x, y)
}

fn run(spec: XOfYSpec, s: &MeterSeries, excluded: &[&str]) -> Result<BaselineReport, MvError> {
    let ex: Vec<Date> = excluded.iter().map(|d| date(d)).collect();
    compute(&BaselineSpec::XOfY(spec), s, &event(), &ex)
}

fn baselines(r: &BaselineReport) -> Vec<i64> {
    r.intervals.iter().map(|i| i.baseline_w).collect()
}

fn days(r: &BaselineReport) -> Vec<String> {
    r.days_used.iter().map(Date::to_string).collect()
}

fn skipped(r: &[SkippedDay]) -> Vec<(String, SkipReason)> {
    r.iter().map(|s| (s.date.to_string(), s.reason)).collect()
}

const WEEKEND: SkipReason = SkipReason::DayType { weekend: true };

#[test]
fn ten_of_ten_averages_all_ten() {
    let mut s = base();
    // The ten most recent weekdays before Fri 10 July, newest first, get
    // 1..=10 kW at 17:00 and twice that at 18:00.
    let ten = [
        "2026-07-09",
        "2026-07-08",
        "2026-07-07",
        "2026-07-06",
        "2026-07-03",
        "2026-07-02",
        "2026-07-01",
        "2026-06-30",
        "2026-06-29",
        "2026-06-26",
    ];
    for (i, d) in ten.iter().enumerate() {
        let kw = (i + 1) as f64;
        set(&mut s, d, 17, kw);
        set(&mut s, d, 18, 2.0 * kw);
    }
    // Event day: 3 kW, then 9 kW.
    set(&mut s, "2026-07-10", 17, 3.0);
    set(&mut s, "2026-07-10", 18, 9.0);
    let r = run(x_of_y(10, 10), &s, &[]).unwrap();
    assert_eq!(r.method, "10 of 10");
    // 17:00: (1+2+…+10)/10 = 55/10 = 5.5 kW; 18:00: 110/10 = 11 kW.
    assert_eq!(baselines(&r), vec![5500, 11_000]);
    let mut want = ten.map(String::from).to_vec();
    want.reverse();
    assert_eq!(days(&r), want);
    // The weekends in between were skipped; nothing older was looked at.
    assert_eq!(
        skipped(&r.days_skipped),
        vec![
            ("2026-06-27".into(), WEEKEND),
            ("2026-06-28".into(), WEEKEND),
            ("2026-07-04".into(), WEEKEND),
            ("2026-07-05".into(), WEEKEND),
        ]
    );
    // Delivered: 5.5 − 3 = 2.5 kW, 11 − 9 = 2 kW; average 2.25 kW;
    // energy (2500 + 2000) W × 1 h = 4500 Wh; 2.25 / 3 kW committed = 75 %.
    let delivered: Vec<Option<i64>> = r.intervals.iter().map(|i| i.delivered_w).collect();
    assert_eq!(delivered, vec![Some(2500), Some(2000)]);
    assert_eq!(r.avg_delivered_w, Some(2250));
    assert_eq!(r.delivered_wh, 4500);
    assert_eq!(r.performance_pct(3000), Some(75.0));
    assert_eq!(r.performance_pct(0), None);
    // (5.5 + 11) / 2 = 8.25 kW.
    assert_eq!(r.avg_baseline_w, 8250);
    assert_eq!((r.measured_intervals, r.missing_intervals), (2, 0));
    assert_eq!(r.event_day, date("2026-07-10"));
}

#[test]
fn high_x_of_y_keeps_the_highest_load_days() {
    let mut s = base();
    // The five most recent weekdays and their 17:00 load (18:00 = +2 kW):
    //   Thu 9: 10, Wed 8: 12, Tue 7: 16, Mon 6: 14, Fri 3: 9 kW.
    // Thu 2 July (50 kW) is the sixth weekday: beyond Y, never looked at.
    for (d, kw) in [
        ("2026-07-09", 10.0),
        ("2026-07-08", 12.0),
        ("2026-07-07", 16.0),
        ("2026-07-06", 14.0),
        ("2026-07-03", 9.0),
        ("2026-07-02", 50.0),
    ] {
        set(&mut s, d, 17, kw);
        set(&mut s, d, 18, kw + 2.0);
    }
    let r = run(x_of_y(3, 5), &s, &[]).unwrap();
    assert_eq!(r.method, "high 3 of 5");
    // Highest three: 7th (16), 6th (14), 8th (12).
    // 17:00: (16+14+12)/3 = 14 kW; 18:00: (18+16+14)/3 = 16 kW.
    assert_eq!(baselines(&r), vec![14_000, 16_000]);
    assert_eq!(days(&r), vec!["2026-07-06", "2026-07-07", "2026-07-08"]);
    assert_eq!(
        skipped(&r.days_skipped),
        vec![
            ("2026-07-03".into(), SkipReason::LowerLoad),
            ("2026-07-04".into(), WEEKEND),
            ("2026-07-05".into(), WEEKEND),
            ("2026-07-09".into(), SkipReason::LowerLoad),
        ]
    );
    // No reading on the event day: all intervals missing, nothing delivered.
    assert_eq!((r.measured_intervals, r.missing_intervals), (0, 2));
    assert_eq!(r.avg_delivered_w, None);
    assert_eq!(r.delivered_wh, 0);
    assert_eq!(r.performance_pct(1000), None);
}

#[test]
fn ranking_ties_go_to_the_more_recent_day() {
    let mut s = base();
    // 1 of 3 among Thu 9 (7 kW), Wed 8 (7 kW), Tue 7 (6 kW) at both hours:
    // 9 and 8 tie on load; the more recent (9) wins → 7 kW.
    for (d, kw) in [
        ("2026-07-09", 7.0),
        ("2026-07-08", 7.0),
        ("2026-07-07", 6.0),
    ] {
        set(&mut s, d, 17, kw);
        set(&mut s, d, 18, kw);
    }
    let r = run(x_of_y(1, 3), &s, &[]).unwrap();
    assert_eq!(days(&r), vec!["2026-07-09"]);
    assert_eq!(baselines(&r), vec![7000, 7000]);
}

#[test]
fn weekend_event_uses_weekend_days_unless_the_rule_is_off() {
    let mut s = base();
    // Event on Sunday 5 July, 17:00–19:00. Sat 4: 100 kW (base),
    // Sun 28 June: 80 kW at 17 and 18.
    set(&mut s, "2026-06-28", 17, 80.0);
    set(&mut s, "2026-06-28", 18, 80.0);
    let ev = EventWindow {
        start_ms: at("2026-07-05", 17),
        end_ms: at("2026-07-05", 19),
        utc_offset_min: 0,
    };
    let r = compute(&BaselineSpec::XOfY(x_of_y(2, 2)), &s, &ev, &[]).unwrap();
    // Weekend days 4 July and 28 June: (100 + 80)/2 = 90 kW.
    assert_eq!(days(&r), vec!["2026-06-28", "2026-07-04"]);
    assert_eq!(baselines(&r), vec![90_000, 90_000]);
    // The five weekdays between them are skipped as weekdays.
    assert_eq!(r.days_skipped.len(), 5);
    assert!(r
        .days_skipped
        .iter()
        .all(|d| d.reason == SkipReason::DayType { weekend: false }));

    // Rule off: the two most recent days, Sat 4 (100 kW) and Fri 3 (5 kW):
    // (100 + 5)/2 = 52.5 kW.
    let mut spec = x_of_y(2, 2);
    spec.same_day_type = false;
    let r = compute(&BaselineSpec::XOfY(spec), &s, &ev, &[]).unwrap();
    assert_eq!(r.method, "2 of 2, any day type");
    assert_eq!(days(&r), vec!["2026-07-03", "2026-07-04"]);
    assert_eq!(baselines(&r), vec![52_500, 52_500]);
}

#[test]
fn local_offset_decides_the_day_and_its_type() {
    let s = base();
    // 23:00Z on Friday 10 July is 01:00 on Saturday 11 July at +02:00: a
    // weekend event. 1 of 1: the most recent local weekend day is Sunday
    // 5 July, whose 01:00 local is 23:00Z on Saturday 4 July (100 kW).
    let ev = EventWindow {
        start_ms: at("2026-07-10", 23),
        end_ms: at("2026-07-10", 24),
        utc_offset_min: 120,
    };
    let r = compute(&BaselineSpec::XOfY(x_of_y(1, 1)), &s, &ev, &[]).unwrap();
    assert_eq!(r.event_day, date("2026-07-11"));
    assert_eq!(days(&r), vec!["2026-07-05"]);
    assert_eq!(baselines(&r), vec![100_000]);
    // Fri 10 … Mon 6 (local) were weekdays.
    assert_eq!(r.days_skipped.len(), 5);
}

#[test]
fn excluded_days_are_skipped() {
    let mut s = base();
    // Thu 9: 10 kW, Wed 8 (an earlier event day): 2 kW, Tue 7: 6 kW,
    // Mon 6: 8 kW at both hours.
    for (d, kw) in [
        ("2026-07-09", 10.0),
        ("2026-07-08", 2.0),
        ("2026-07-07", 6.0),
        ("2026-07-06", 8.0),
    ] {
        set(&mut s, d, 17, kw);
        set(&mut s, d, 18, kw);
    }
    // 3 of 3 without 8 July: 9, 7, 6 → (10 + 6 + 8)/3 = 8 kW.
    let r = run(x_of_y(3, 3), &s, &["2026-07-08"]).unwrap();
    assert_eq!(days(&r), vec!["2026-07-06", "2026-07-07", "2026-07-09"]);
    assert_eq!(baselines(&r), vec![8000, 8000]);
    assert_eq!(
        skipped(&r.days_skipped),
        vec![("2026-07-08".into(), SkipReason::Excluded)]
    );
    // Not excluded: 9, 8, 7 → (10 + 2 + 6)/3 = 6 kW.
    let r = run(x_of_y(3, 3), &s, &[]).unwrap();
    assert_eq!(baselines(&r), vec![6000, 6000]);
}

#[test]
fn a_day_missing_a_reading_is_skipped() {
    let mut s = base();
    // Wed 8 July lacks its 18:00 reading; Thu 9: 9 kW, Tue 7: 3 kW.
    s.points.remove(&at("2026-07-08", 18));
    for (d, kw) in [("2026-07-09", 9.0), ("2026-07-07", 3.0)] {
        set(&mut s, d, 17, kw);
        set(&mut s, d, 18, kw);
    }
    // 2 of 2: 9 and 7 → (9 + 3)/2 = 6 kW.
    let r = run(x_of_y(2, 2), &s, &[]).unwrap();
    assert_eq!(days(&r), vec!["2026-07-07", "2026-07-09"]);
    assert_eq!(baselines(&r), vec![6000, 6000]);
    assert_eq!(
        skipped(&r.days_skipped),
        vec![(
            "2026-07-08".into(),
            SkipReason::MissingEventIntervals { missing: 1, of: 2 }
        )]
    );

    // A gap in the adjustment window (Thu 9, 14:00) matters only with an
    // adjustment: 2 of 2 then takes 7 and 6 July.
    let mut s = base();
    s.points.remove(&at("2026-07-09", 14));
    let mut spec = x_of_y(2, 2);
    spec.adjustment = Some(Adjustment::Additive {
        hours: 3,
        gap_hours: 1,
    });
    set(&mut s, "2026-07-10", 13, 5.0);
    let r = run(spec, &s, &[]).unwrap();
    assert_eq!(days(&r), vec!["2026-07-07", "2026-07-08"]);
    assert_eq!(
        skipped(&r.days_skipped),
        vec![(
            "2026-07-09".into(),
            SkipReason::MissingAdjustmentIntervals { missing: 1, of: 3 }
        )]
    );
}

/// Prior weekdays flat at `window_kw` (all day) except 20 kW at 17:00 and
/// 18:00; the event day at `event_day_kw` in the adjustment window
/// (13:00–16:00: 3 h ending 1 h before 17:00), 15 then 16 kW in the event.
fn adjusted(window_kw: f64, event_day_kw: [f64; 3], adjustment: Adjustment) -> BaselineReport {
    let mut s = MeterSeries::new(3600).unwrap();
    for d in ["2026-07-08", "2026-07-09"] {
        fill(
            &mut s,
            d,
            |h| if h == 17 || h == 18 { 20.0 } else { window_kw },
        );
    }
    for (h, kw) in [13, 14, 15].into_iter().zip(event_day_kw) {
        set(&mut s, "2026-07-10", h, kw);
    }
    set(&mut s, "2026-07-10", 17, 15.0);
    set(&mut s, "2026-07-10", 18, 16.0);
    let mut spec = x_of_y(2, 2);
    spec.adjustment = Some(adjustment);
    run(spec, &s, &[]).unwrap()
}

fn mult(cap_pct: u32) -> Adjustment {
    Adjustment::Multiplicative {
        cap_pct,
        hours: 3,
        gap_hours: 1,
    }
}

#[test]
fn multiplicative_adjustment_within_the_cap() {
    // Window: event day (11+11+11)/3 = 11 kW, baseline (10+10+10)/3 = 10 kW;
    // factor 11/10 = 1.1, inside [0.8, 1.2].
    // Baseline 20 × 1.1 = 22 kW; delivered 22 − 15 = 7, 22 − 16 = 6 kW;
    // 13 kWh; average 6.5 kW.
    let r = adjusted(10.0, [11.0; 3], mult(20));
    assert_eq!(baselines(&r), vec![22_000, 22_000]);
    let a = r.adjustment.unwrap();
    assert_eq!(
        a.outcome,
        AdjustmentOutcome::Multiplicative {
            factor: 1.1,
            uncapped_factor: Some(1.1),
            capped: false
        }
    );
    assert_eq!((a.event_day_avg_w, a.baseline_avg_w), (11_000, 10_000));
    assert_eq!(
        a.window,
        Window {
            start_ms: at("2026-07-10", 13),
            end_ms: at("2026-07-10", 16)
        }
    );
    assert_eq!(r.delivered_wh, 13_000);
    assert_eq!(r.avg_delivered_w, Some(6500));
    assert!(
        r.adjustment_summary().contains("13:00–16:00"),
        "{}",
        r.adjustment_summary()
    );
}

#[test]
fn multiplicative_adjustment_is_exact() {
    // Window: 3.1 kW vs 3 kW → factor 31/30 = 1.0333…;
    // 20 000 W × 31/30 = 20 666.67 → 20 667 W (rounded once, at the end).
    let r = adjusted(3.0, [3.1; 3], mult(20));
    assert_eq!(baselines(&r), vec![20_667, 20_667]);
    // Event day 3.0, 3.1, 3.2 kW: average 3.1 kW again, same result.
    let r = adjusted(3.0, [3.0, 3.1, 3.2], mult(20));
    assert_eq!(baselines(&r), vec![20_667, 20_667]);
}

#[test]
fn multiplicative_adjustment_capped_both_ways() {
    // 15/10 = 1.5 > 1.2 → 1.2: 20 × 1.2 = 24 kW.
    let r = adjusted(10.0, [15.0; 3], mult(20));
    assert_eq!(baselines(&r), vec![24_000, 24_000]);
    assert_eq!(
        r.adjustment.unwrap().outcome,
        AdjustmentOutcome::Multiplicative {
            factor: 1.2,
            uncapped_factor: Some(1.5),
            capped: true
        }
    );
    assert!(r.adjustment_summary().contains("capped from 1.5000"));
    // 5/10 = 0.5 < 0.8 → 0.8: 20 × 0.8 = 16 kW.
    let r = adjusted(10.0, [5.0; 3], mult(20));
    assert_eq!(baselines(&r), vec![16_000, 16_000]);
    // Exactly at the cap (12/10 = 1.2) is not capped.
    let r = adjusted(10.0, [12.0; 3], mult(20));
    assert_eq!(baselines(&r), vec![24_000, 24_000]);
    assert!(matches!(
        r.adjustment.unwrap().outcome,
        AdjustmentOutcome::Multiplicative { capped: false, .. }
    ));
    // Cap 0: the factor is always 1.
    let r = adjusted(10.0, [15.0; 3], mult(0));
    assert_eq!(baselines(&r), vec![20_000, 20_000]);
}

#[test]
fn multiplicative_adjustment_without_a_positive_baseline_is_one() {
    // A net exporter: −2 kW in the window on past days, so no ratio exists;
    // the factor is 1 and the baseline stays 20 kW.
    let r = adjusted(-2.0, [1.0; 3], mult(20));
    assert_eq!(baselines(&r), vec![20_000, 20_000]);
    assert_eq!(
        r.adjustment.unwrap().outcome,
        AdjustmentOutcome::Multiplicative {
            factor: 1.0,
            uncapped_factor: None,
            capped: false
        }
    );
}

#[test]
fn additive_adjustment_is_upward_only() {
    let add = Adjustment::Additive {
        hours: 3,
        gap_hours: 1,
    };
    // Window: 11 − 10 = +1 kW → 20 + 1 = 21 kW.
    let r = adjusted(10.0, [11.0; 3], add);
    assert_eq!(baselines(&r), vec![21_000, 21_000]);
    assert_eq!(
        r.adjustment.unwrap().outcome,
        AdjustmentOutcome::Additive {
            offset_w: 1000,
            uncapped_offset_w: 1000,
            capped: false
        }
    );
    // Window: 9 − 10 = −1 kW → max(0, −1) = 0 → 20 kW.
    let r = adjusted(10.0, [9.0; 3], add);
    assert_eq!(baselines(&r), vec![20_000, 20_000]);
    assert_eq!(
        r.adjustment.unwrap().outcome,
        AdjustmentOutcome::Additive {
            offset_w: 0,
            uncapped_offset_w: -1000,
            capped: true
        }
    );
}

#[test]
fn adjustment_uses_the_event_day_readings_it_has() {
    // Event day window: 13:00 missing, 14:00 = 12, 15:00 = 13 kW → 12.5 kW;
    // past days over the same two hours: 10 kW → +2.5 kW → 22.5 kW.
    let mut s = MeterSeries::new(3600).unwrap();
    for d in ["2026-07-08", "2026-07-09"] {
        fill(&mut s, d, |h| if h == 17 || h == 18 { 20.0 } else { 10.0 });
    }
    set(&mut s, "2026-07-10", 14, 12.0);
    set(&mut s, "2026-07-10", 15, 13.0);
    let mut spec = x_of_y(2, 2);
    spec.adjustment = Some(Adjustment::Additive {
        hours: 3,
        gap_hours: 1,
    });
    let r = run(spec.clone(), &s, &[]).unwrap();
    assert_eq!(baselines(&r), vec![22_500, 22_500]);
    assert_eq!(r.adjustment.unwrap().missing_intervals, 1);
    // No reading at all in the window: no adjustment can be made.
    s.points.remove(&at("2026-07-10", 14));
    s.points.remove(&at("2026-07-10", 15));
    let e = run(spec.clone(), &s, &[]).unwrap_err();
    assert!(matches!(e, MvError::NoReadings(_)), "{e}");
    assert!(e.to_string().contains("13:00–16:00"), "{e}");
    // … but the same method without it still gives the plain baseline.
    let plain = BaselineSpec::XOfY(spec).without_adjustment();
    let r = compute(&plain, &s, &event(), &[]).unwrap();
    assert_eq!(baselines(&r), vec![20_000, 20_000]);
}

#[test]
fn missing_event_day_interval_is_not_a_zero() {
    let mut s = base();
    // Baseline 5 kW (all weekdays flat). Event day: 17:00 = 2 kW, 18:00
    // missing. Delivered: 3 kW at 17:00 only; average 3 kW, 3 kWh.
    set(&mut s, "2026-07-10", 17, 2.0);
    let r = run(x_of_y(10, 10), &s, &[]).unwrap();
    assert_eq!(r.intervals[0].actual_w, Some(2000));
    assert_eq!(r.intervals[0].delivered_w, Some(3000));
    assert_eq!(r.intervals[1].actual_w, None);
    assert_eq!(r.intervals[1].delivered_w, None);
    assert_eq!(r.intervals[1].baseline_w, 5000);
    assert_eq!((r.measured_intervals, r.missing_intervals), (1, 1));
    assert_eq!(r.avg_delivered_w, Some(3000));
    assert_eq!(r.delivered_wh, 3000);
    // 3 kW of 4 kW committed = 75 % (not 37.5 %: the gap is not a zero).
    assert_eq!(r.performance_pct(4000), Some(75.0));
}

#[test]
fn insufficient_data_says_what_was_found_and_why() {
    // Data only from Sat 4 July: weekdays 6, 7, 8, 9 → 4 eligible days, but
    // 8 July is excluded → 3 found; high 5 of 10 needs 5.
    let mut s = MeterSeries::new(3600).unwrap();
    for d in [
        "2026-07-04",
        "2026-07-05",
        "2026-07-06",
        "2026-07-07",
        "2026-07-08",
        "2026-07-09",
    ] {
        fill(&mut s, d, |_| 5.0);
    }
    let e = run(x_of_y(5, 10), &s, &["2026-07-08"]).unwrap_err();
    let MvError::InsufficientData {
        found,
        needed,
        wanted,
        looked_back_days,
        skipped: sk,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!((*found, *needed, *wanted, *looked_back_days), (3, 5, 10, 6));
    assert_eq!(
        skipped(sk),
        vec![
            ("2026-07-04".into(), WEEKEND),
            ("2026-07-05".into(), WEEKEND),
            ("2026-07-08".into(), SkipReason::Excluded),
        ]
    );
    let msg = e.to_string();
    assert!(
        msg.contains("3 eligible day(s) found, 5 needed (5 of 10)"),
        "{msg}"
    );
    assert!(
        msg.contains("2 weekend days (2026-07-04, 2026-07-05)"),
        "{msg}"
    );
    assert!(msg.contains("1 excluded (2026-07-08)"), "{msg}");

    // Fewer than Y but at least X: the X highest of what was found.
    // 3 of 10 on the same data: days 6, 7, 9 → 5 kW.
    let r = run(x_of_y(3, 10), &s, &["2026-07-08"]).unwrap();
    assert_eq!(days(&r), vec!["2026-07-06", "2026-07-07", "2026-07-09"]);
    assert_eq!(baselines(&r), vec![5000, 5000]);

    // An empty series looks back no days at all.
    let e = run(x_of_y(1, 1), &MeterSeries::new(3600).unwrap(), &[]).unwrap_err();
    assert!(
        matches!(
            e,
            MvError::InsufficientData {
                found: 0,
                looked_back_days: 0,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn lookback_limit() {
    // One weekday of data, 20 days before the event: a lookback of 10 days
    // does not reach it.
    let mut s = MeterSeries::new(3600).unwrap();
    fill(&mut s, "2026-06-19", |_| 4.0);
    let mut spec = x_of_y(1, 1);
    spec.max_lookback_days = 10;
    let e = run(spec.clone(), &s, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            MvError::InsufficientData {
                looked_back_days: 10,
                ..
            }
        ),
        "{e}"
    );
    spec.max_lookback_days = 21;
    let r = run(spec, &s, &[]).unwrap();
    assert_eq!(days(&r), vec!["2026-06-19"]);
    // The 14 weekdays after it had no readings, the 6 weekend days are
    // another type.
    assert_eq!(r.days_skipped.len(), 20);
}

#[test]
fn same_day_averages_the_windows_around_the_event() {
    let mut s = MeterSeries::new(3600).unwrap();
    // Before: 15:00 = 10, 16:00 = 12 kW; after: 19:00 = 14 kW, 20:00 missing.
    // Baseline (10 + 12 + 14)/3 = 12 kW in every event interval.
    for (h, kw) in [(14, 99.0), (15, 10.0), (16, 12.0), (19, 14.0), (21, 99.0)] {
        set(&mut s, "2026-07-10", h, kw);
    }
    // Event: 17:00 = 8 kW, 18:00 missing → delivered 4 kW at 17:00 only.
    set(&mut s, "2026-07-10", 17, 8.0);
    let spec = BaselineSpec::SameDay(SameDaySpec::default());
    let r = compute(&spec, &s, &event(), &[]).unwrap();
    assert_eq!(r.method, "same day (2 h before; 2 h after)");
    assert_eq!(baselines(&r), vec![12_000, 12_000]);
    let basis = r.same_day.clone().unwrap();
    assert_eq!(
        (basis.readings, basis.missing_intervals, basis.avg_w),
        (3, 1, 12_000)
    );
    assert_eq!(r.intervals[0].delivered_w, Some(4000));
    assert_eq!(r.intervals[1].delivered_w, None);
    assert_eq!((r.avg_delivered_w, r.delivered_wh), (Some(4000), 4000));
    // 4 kW of 5 kW committed = 80 %.
    assert_eq!(r.performance_pct(5000), Some(80.0));
    assert!(r.days_used.is_empty());

    // With 1 h gaps on both sides and 1 h windows: 15:00 (10 kW) and
    // 20:00 (missing) → 10 kW.
    let spec = BaselineSpec::SameDay(SameDaySpec {
        before_hours: 1,
        gap_before_hours: 1,
        after_hours: 1,
        gap_after_hours: 1,
    });
    let r = compute(&spec, &s, &event(), &[]).unwrap();
    assert_eq!(baselines(&r), vec![10_000, 10_000]);
    // Before only, 3 h: 14:00, 15:00, 16:00 → (99 + 10 + 12)/3 = 40.333… → 40 333 W.
    let spec = BaselineSpec::SameDay(SameDaySpec {
        before_hours: 3,
        gap_before_hours: 0,
        after_hours: 0,
        gap_after_hours: 0,
    });
    let r = compute(&spec, &s, &event(), &[]).unwrap();
    assert_eq!(baselines(&r), vec![40_333, 40_333]);
    // Nothing in the windows.
    let e = compute(&spec, &MeterSeries::new(3600).unwrap(), &event(), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no readings in the same-day window(s) 14:00–17:00"
    );
}

#[test]
fn fifteen_minute_intervals() {
    // 900 s intervals; event 17:00–17:30 (two intervals). 2 of 2 over Thu 9
    // (4 kW) and Wed 8 (6 kW) → 5 kW; event day 2 kW then 3 kW.
    // Delivered 3 and 2 kW → average 2.5 kW; energy (3000 + 2000) W × ¼ h
    // = 1250 Wh.
    let q = 900_000;
    let mut s = MeterSeries::new(900).unwrap();
    for (d, kw) in [("2026-07-09", 4.0), ("2026-07-08", 6.0)] {
        for i in 0..96 {
            s.insert(at(d, 0) + i * q, w(kw)).unwrap();
        }
    }
    s.insert(at("2026-07-10", 17), 2000).unwrap();
    s.insert(at("2026-07-10", 17) + q, 3000).unwrap();
    let ev = EventWindow {
        start_ms: at("2026-07-10", 17),
        end_ms: at("2026-07-10", 17) + 2 * q,
        utc_offset_min: 0,
    };
    let r = compute(&BaselineSpec::XOfY(x_of_y(2, 2)), &s, &ev, &[]).unwrap();
    assert_eq!(baselines(&r), vec![5000, 5000]);
    assert_eq!(r.avg_delivered_w, Some(2500));
    assert_eq!(r.delivered_wh, 1250);

    // The event must sit on interval boundaries.
    let off = EventWindow {
        start_ms: ev.start_ms + 60_000,
        ..ev
    };
    let e = compute(&BaselineSpec::XOfY(x_of_y(2, 2)), &s, &off, &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("17:01:00Z is not on a 900 s interval boundary"),
        "{e}"
    );
}

#[test]
fn two_second_intervals() {
    // The live system's tests meter every 2 s. Same-day, 1 h before a 6 s
    // event: 1800 readings alternating 4 kW and 6 kW → 5 kW. Event: 1, 2, 3
    // kW → delivered 4, 3, 2 kW; average 3 kW; energy 9000 W × 2 s / 3600
    // = 5 Wh.
    let mut s = MeterSeries::new(2).unwrap();
    let start = at("2026-07-10", 17);
    for i in 1..=1800u64 {
        s.insert(start - i * 2000, if i % 2 == 0 { 4000 } else { 6000 })
            .unwrap();
    }
    for (i, kw) in [1.0, 2.0, 3.0].into_iter().enumerate() {
        s.insert(start + i as u64 * 2000, w(kw)).unwrap();
    }
    let spec = BaselineSpec::SameDay(SameDaySpec {
        before_hours: 1,
        gap_before_hours: 0,
        after_hours: 0,
        gap_after_hours: 0,
    });
    let ev = EventWindow {
        start_ms: start,
        end_ms: start + 6000,
        utc_offset_min: 0,
    };
    let r = compute(&spec, &s, &ev, &[]).unwrap();
    assert_eq!(baselines(&r), vec![5000, 5000, 5000]);
    assert_eq!(r.avg_delivered_w, Some(3000));
    assert_eq!(r.delivered_wh, 5);
}

#[test]
fn bad_events_and_series() {
    let s = base();
    let spec = BaselineSpec::XOfY(x_of_y(1, 1));
    let mut ev = event();
    ev.end_ms = ev.start_ms;
    assert!(matches!(
        compute(&spec, &s, &ev, &[]),
        Err(MvError::InvalidEvent(_))
    ));
    ev.end_ms = ev.start_ms + MS_PER_DAY + H;
    assert!(matches!(
        compute(&spec, &s, &ev, &[]),
        Err(MvError::InvalidEvent(_))
    ));
    let mut ev = event();
    ev.utc_offset_min = 15 * 60;
    assert!(matches!(
        compute(&spec, &s, &ev, &[]),
        Err(MvError::InvalidEvent(_))
    ));
    let mut bad = s.clone();
    bad.interval_s = 7;
    assert!(matches!(
        compute(&spec, &bad, &event(), &[]),
        Err(MvError::InvalidSeries(_))
    ));
    let mut huge = s.clone();
    huge.points.insert(at("2026-07-09", 3), i64::MAX);
    assert!(matches!(
        compute(&spec, &huge, &event(), &[]),
        Err(MvError::InvalidSeries(_))
    ));
    // An event near 1970 has no earlier days and no adjustment window.
    let early = EventWindow {
        start_ms: H,
        end_ms: 2 * H,
        utc_offset_min: 0,
    };
    assert!(matches!(
        compute(&spec, &s, &early, &[]),
        Err(MvError::InsufficientData { .. })
    ));
    let mut adj = x_of_y(1, 1);
    adj.adjustment = Some(mult(20));
    assert!(matches!(
        compute(&BaselineSpec::XOfY(adj), &s, &early, &[]),
        Err(MvError::InvalidEvent(_))
    ));
}

#[test]
fn spec_json() {
    let j =
        r#"{"method":"x_of_y","x":5,"y":10,"adjustment":{"kind":"multiplicative","cap_pct":20}}"#;
    let spec: BaselineSpec = serde_json::from_str(j).unwrap();
    assert_eq!(
        spec,
        BaselineSpec::XOfY(XOfYSpec {
            x: 5,
            y: 10,
            same_day_type: true,
            max_lookback_days: 45,
            adjustment: Some(Adjustment::Multiplicative {
                cap_pct: 20,
                hours: 3,
                gap_hours: 1
            }),
        })
    );
    let back: BaselineSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    let spec: BaselineSpec =
        serde_json::from_str(r#"{"method":"same_day","before_hours":1,"gap_after_hours":1}"#)
            .unwrap();
    assert_eq!(
        spec,
        BaselineSpec::SameDay(SameDaySpec {
            before_hours: 1,
            gap_before_hours: 0,
            after_hours: 2,
            gap_after_hours: 1
        })
    );
    let additive: BaselineSpec = serde_json::from_str(
        r#"{"method":"x_of_y","x":10,"y":10,"adjustment":{"kind":"additive","hours":2,"gap_hours":0}}"#,
    )
    .unwrap();
    assert_eq!(
        additive.to_string(),
        "10 of 10, additive adjustment (upward only, 2 h ending 0 h before the event)"
    );
    for bad in [
        r#"{"method":"x_of_y","x":5,"y":10,"z":1}"#,
        r#"{"method":"x_of_y","x":5}"#,
        r#"{"method":"x_of_z","x":5,"y":10}"#,
        r#"{"method":"x_of_y","x":5,"y":10,"adjustment":{"kind":"multiplicative"}}"#,
        r#"{"method":"x_of_y","x":5,"y":10,"adjustment":{"kind":"additive","cap_pct":20}}"#,
        r#"{"method":"same_day","before":2}"#,
    ] {
        assert!(serde_json::from_str::<BaselineSpec>(bad).is_err(), "{bad}");
    }
}

#[test]
fn spec_validation_names_the_field() {
    let cases: [(BaselineSpec, &str); 8] = [
        (
            BaselineSpec::XOfY(x_of_y(6, 5)),
            "x: 6 must be 1 to y (5) days",
        ),
        (
            BaselineSpec::XOfY(x_of_y(0, 5)),
            "x: 0 must be 1 to y (5) days",
        ),
        (
            BaselineSpec::XOfY(x_of_y(5, 31)),
            "y: 31 must be 1 to 30 days",
        ),
        (
            BaselineSpec::XOfY(XOfYSpec {
                max_lookback_days: 5,
                ..x_of_y(10, 10)
            }),
            "max_lookback_days: 5 must be y (10) to 90 days",
        ),
        (
            BaselineSpec::XOfY(XOfYSpec {
                adjustment: Some(mult(101)),
                ..x_of_y(10, 10)
            }),
            "adjustment.cap_pct: 101 must be 0 to 100 %",
        ),
        (
            BaselineSpec::XOfY(XOfYSpec {
                adjustment: Some(Adjustment::Additive {
                    hours: 0,
                    gap_hours: 1,
                }),
                ..x_of_y(10, 10)
            }),
            "adjustment.hours: 0 must be 1 to 12 hours",
        ),
        (
            BaselineSpec::SameDay(SameDaySpec {
                before_hours: 0,
                after_hours: 0,
                ..SameDaySpec::default()
            }),
            "before_hours: before_hours and after_hours are both 0: there is no window to average",
        ),
        (
            BaselineSpec::SameDay(SameDaySpec {
                after_hours: 13,
                ..SameDaySpec::default()
            }),
            "after_hours: 13 must be 0 to 12 hours",
        ),
    ];
    for (spec, msg) in cases {
        assert_eq!(spec.validate().unwrap_err().to_string(), msg);
        // compute refuses it the same way.
        assert_eq!(
            compute(&spec, &base(), &event(), &[])
                .unwrap_err()
                .to_string(),
            msg
        );
    }
}

#[test]
fn short_forms() {
    let p = |s: &str| s.parse::<BaselineSpec>();
    assert_eq!(p("10-of-10").unwrap(), BaselineSpec::XOfY(x_of_y(10, 10)));
    assert_eq!(
        p("high-5-of-10").unwrap(),
        BaselineSpec::XOfY(x_of_y(5, 10))
    );
    assert_eq!(p("3-of-5").unwrap(), BaselineSpec::XOfY(x_of_y(3, 5)));
    assert_eq!(p("HIGH_4_OF_5").unwrap(), BaselineSpec::XOfY(x_of_y(4, 5)));
    assert_eq!(
        p("same-day").unwrap(),
        BaselineSpec::SameDay(SameDaySpec::default())
    );
    for s in ["10-of-10", "high-5-of-10", "same-day"] {
        assert_eq!(p(s).unwrap().short_name(), s);
    }
    assert_eq!(p("high-5-of-10").unwrap().to_string(), "high 5 of 10");
    for bad in [
        "",
        "of",
        "5-of-",
        "-of-5",
        "five-of-ten",
        "5-of-10-x",
        "99999999999-of-1",
        "low-5-of-10",
    ] {
        let e = p(bad).unwrap_err().to_string();
        assert!(
            e.starts_with("method: unknown baseline method"),
            "{bad}: {e}"
        );
    }
    assert_eq!(
        p("6-of-5").unwrap_err().to_string(),
        "x: 6 must be 1 to y (5) days"
    );
}

#[test]
fn report_json_round_trips() {
    let mut s = base();
    s.points.remove(&at("2026-07-08", 18));
    set(&mut s, "2026-07-10", 17, 2.0);
    for h in 13..16 {
        set(&mut s, "2026-07-10", h, 6.0);
    }
    let mut spec = x_of_y(3, 5);
    spec.adjustment = Some(mult(20));
    let r = run(spec, &s, &["2026-07-07"]).unwrap();
    let j = serde_json::to_value(&r).unwrap();
    // Eligible, newest first: 9, 6, 3, 2, 1 July (7 excluded, 8 has a gap),
    // all 5 kW: the tie keeps the most recent three, 9, 6 and 3.
    assert_eq!(j["days_used"][0], "2026-07-03");
    assert_eq!(j["adjustment"]["kind"], "multiplicative");
    assert_eq!(j["adjustment"]["factor"], 1.2);
    let sk = j["days_skipped"].as_array().unwrap();
    assert!(sk.iter().any(|d| d["date"] == "2026-07-08"
        && d["reason"] == "missing_event_intervals"
        && d["missing"] == 1));
    assert_eq!(j["intervals"][1]["actual_w"], serde_json::Value::Null);
    let back: BaselineReport = serde_json::from_value(j).unwrap();
    assert_eq!(back, r);
}

#[test]
fn rounding() {
    assert_eq!(div_round(5, 2), 3);
    assert_eq!(div_round(-5, 2), -3);
    assert_eq!(div_round(4, 3), 1);
    assert_eq!(div_round(-4, 3), -1);
    assert_eq!(div_round(2, 3), 1);
    assert_eq!(div_round(-2, 3), -1);
    assert_eq!(div_round(0, 7), 0);
}

proptest! {
    /// A flat history gives a flat baseline whatever X, Y and the cap are,
    /// and an event day equal to it delivers nothing.
    #[test]
    fn flat_history_flat_baseline(kw in -50i64..50, x in 1u32..6, extra in 0u32..5, cap in 0u32..100) {
        let y = x + extra;
        let mut s = MeterSeries::new(3600).unwrap();
        let mut d = date("2026-05-01");
        while d <= date("2026-07-10") {
            for h in 0..24 {
                s.points.insert(at(&d.to_string(), h), kw * 1000);
            }
            d = d.add_days(1);
        }
        let mut spec = x_of_y(x, y);
        spec.adjustment = Some(mult(cap));
        let r = run(spec, &s, &[]).unwrap();
        prop_assert!(r.intervals.iter().all(|i| i.baseline_w == kw * 1000 && i.delivered_w == Some(0)));
        prop_assert!(r.days_used.len() == x as usize);
    }

    /// Whatever the data, a computation returns a result or an error, never
    /// panics, and a result's figures add up.
    #[test]
    fn random_series_never_panic(
        readings in proptest::collection::btree_map(0u64..(40 * 24), -1_000_000_000i64..1_000_000_000, 0..400),
        spec_i in 0usize..4,
        excluded in proptest::collection::vec(0i64..40, 0..5),
    ) {
        let origin = at("2026-06-01", 0);
        let mut s = MeterSeries::new(3600).unwrap();
        for (h, v) in readings {
            s.points.insert(origin + h * H, v);
        }
        let specs = [
            BaselineSpec::XOfY(x_of_y(1, 3)),
            BaselineSpec::XOfY(XOfYSpec { adjustment: Some(mult(20)), ..x_of_y(2, 5) }),
            BaselineSpec::XOfY(XOfYSpec { adjustment: Some(Adjustment::Additive { hours: 3, gap_hours: 1 }), same_day_type: false, ..x_of_y(1, 1) }),
            BaselineSpec::SameDay(SameDaySpec::default()),
        ];
        let ex: Vec<Date> = excluded.iter().map(|k| date("2026-07-10").add_days(-k)).collect();
        if let Ok(r) = compute(&specs[spec_i], &s, &event(), &ex) {
            prop_assert!(r.intervals.len() == 2);
            prop_assert!(r.measured_intervals + r.missing_intervals == 2);
            prop_assert!(r.days_used.iter().all(|d| !ex.contains(d)));
        }
    }
}
