//! X-of-Y baselines and their day-of adjustment (formulas on
//! [`compute`](super::compute)).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use super::calendar::{format_time_of_day, Date, MS_PER_DAY};
use super::report::{AdjustmentOutcome, AppliedAdjustment, SkipReason, SkippedDay, Window};
use super::{div_round, Adjustment, BaselineReport, EventWindow, MvError, XOfYSpec, HOUR_MS};
use crate::meter::MeterSeries;

/// The adjustment window on the event day and its interval starts.
struct AdjustmentWindow {
    adjustment: Adjustment,
    window: Window,
    starts: Vec<u64>,
}

fn adjustment_window(
    adjustment: Adjustment,
    series: &MeterSeries,
    event: &EventWindow,
) -> Result<AdjustmentWindow, MvError> {
    let (hours, gap) = adjustment.window_hours();
    let end = event.start_ms.checked_sub(u64::from(gap) * HOUR_MS);
    let start = end.and_then(|e| e.checked_sub(u64::from(hours) * HOUR_MS));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(MvError::InvalidEvent(
            "the adjustment window would start before 1970".into(),
        ));
    };
    let starts: Vec<u64> = series.starts(start, end).collect();
    if starts.is_empty() {
        return Err(MvError::InvalidSpec {
            field: "adjustment.hours",
            message: format!(
                "a window of {hours} h holds no whole interval of {} s",
                series.interval_s
            ),
        });
    }
    Ok(AdjustmentWindow {
        adjustment,
        window: Window {
            start_ms: start,
            end_ms: end,
        },
        starts,
    })
}

/// How many of `starts`, shifted back by `shift` ms, have no reading.
fn missing(series: &MeterSeries, starts: &[u64], shift: u64) -> u32 {
    starts
        .iter()
        .filter(|&&t| series.get(t - shift).is_none())
        .count() as u32
}

/// Σ of the readings at `starts` shifted back by `shift` (all present).
fn sum_at(series: &MeterSeries, starts: &[u64], shift: u64) -> i128 {
    starts
        .iter()
        .map(|&t| i128::from(series.get(t - shift).unwrap_or(0)))
        .sum()
}

/// The X-of-Y baseline per event interval; fills the days and the
/// adjustment of `report`.
pub(super) fn baseline(
    spec: &XOfYSpec,
    series: &MeterSeries,
    event: &EventWindow,
    excluded_days: &[Date],
    report: &mut BaselineReport,
) -> Result<Vec<(u64, i64)>, MvError> {
    let event_starts: Vec<u64> = series.starts(event.start_ms, event.end_ms).collect();
    let adj = spec
        .adjustment
        .map(|a| adjustment_window(a, series, event))
        .transpose()?;
    let event_day = report.event_day;
    let weekend = event_day.weekday().is_weekend();
    let excluded: BTreeSet<Date> = excluded_days.iter().copied().collect();
    // The earliest instant read on a candidate day, relative to the event
    // day: the adjustment window's start, or the event start.
    let earliest = adj.as_ref().map_or(event.start_ms, |a| a.window.start_ms);
    let first_reading = series.first_start();

    // Walk back day by day until Y eligible days are found.
    let mut eligible: Vec<(u32, Date)> = Vec::new();
    let mut skipped: Vec<SkippedDay> = Vec::new();
    let mut looked_back = 0;
    for k in 1..=spec.max_lookback_days {
        let shift = u64::from(k) * MS_PER_DAY;
        if earliest < shift {
            break; // before 1970
        }
        // Nothing on this day or before it: the series starts later.
        if first_reading.is_none_or(|f| event.end_ms - shift <= f) {
            break;
        }
        looked_back = k;
        let date = event_day.add_days(-i64::from(k));
        let day_weekend = date.weekday().is_weekend();
        let reason = if spec.same_day_type && day_weekend != weekend {
            Some(SkipReason::DayType {
                weekend: day_weekend,
            })
        } else if excluded.contains(&date) {
            Some(SkipReason::Excluded)
        } else {
            let m = missing(series, &event_starts, shift);
            if m > 0 {
                Some(SkipReason::MissingEventIntervals {
                    missing: m,
                    of: event_starts.len() as u32,
                })
            } else {
                adj.as_ref().and_then(|a| {
                    let m = missing(series, &a.starts, shift);
                    (m > 0).then_some(SkipReason::MissingAdjustmentIntervals {
                        missing: m,
                        of: a.starts.len() as u32,
                    })
                })
            }
        };
        match reason {
            Some(reason) => skipped.push(SkippedDay { date, reason }),
            None => eligible.push((k, date)),
        }
        if eligible.len() == spec.y as usize {
            break;
        }
    }
    skipped.reverse(); // oldest first
    if eligible.len() < spec.x as usize {
        return Err(MvError::InsufficientData {
            found: eligible.len() as u32,
            needed: spec.x,
            wanted: spec.y,
            looked_back_days: looked_back,
            skipped,
        });
    }

    // Rank by load over the event's hours; ties go to the more recent day
    // (smaller k), which the stable sort keeps first.
    let mut ranked: Vec<(u32, Date, i128)> = eligible
        .iter()
        .map(|&(k, d)| {
            (
                k,
                d,
                sum_at(series, &event_starts, u64::from(k) * MS_PER_DAY),
            )
        })
        .collect();
    ranked.sort_by_key(|&(_, _, load)| Reverse(load));
    let (used, lower) = ranked.split_at(spec.x as usize);
    skipped.extend(lower.iter().map(|&(_, date, _)| SkippedDay {
        date,
        reason: SkipReason::LowerLoad,
    }));
    skipped.sort_by_key(|s| s.date);
    let used_shifts: Vec<u64> = used
        .iter()
        .map(|&(k, _, _)| u64::from(k) * MS_PER_DAY)
        .collect();
    let mut days: Vec<Date> = used.iter().map(|&(_, d, _)| d).collect();
    days.sort();
    report.days_used = days;
    report.days_skipped = skipped;

    // Σ over the used days per interval: the baseline is this over X.
    let day_sum = |t: u64| -> i128 {
        used_shifts
            .iter()
            .map(|&s| i128::from(series.get(t - s).unwrap_or(0)))
            .sum()
    };
    let x = i128::from(spec.x);
    let Some(adj) = adj else {
        return Ok(event_starts
            .iter()
            .map(|&t| (t, div_round(day_sum(t), x) as i64))
            .collect());
    };

    // Day-of adjustment over the window's intervals that have a reading on
    // the event day.
    let measured: Vec<(u64, i64)> = adj
        .starts
        .iter()
        .filter_map(|&t| series.get(t).map(|a| (t, a)))
        .collect();
    if measured.is_empty() {
        return Err(MvError::NoReadings(format!(
            "on the event day in the adjustment window {}–{}",
            format_time_of_day(adj.window.start_ms, event.utc_offset_min),
            format_time_of_day(adj.window.end_ms, event.utc_offset_min)
        )));
    }
    let m = measured.len() as i128;
    let actual_sum: i128 = measured.iter().map(|&(_, a)| i128::from(a)).sum();
    // Σ over the window and the used days: baseline_avg = base_sum / (X·m).
    let base_sum: i128 = measured.iter().map(|&(t, _)| day_sum(t)).sum();
    let mut applied = AppliedAdjustment {
        outcome: AdjustmentOutcome::Multiplicative {
            factor: 1.0,
            uncapped_factor: None,
            capped: false,
        },
        window: adj.window,
        event_day_avg_w: div_round(actual_sum, m) as i64,
        baseline_avg_w: div_round(base_sum, x * m) as i64,
        missing_intervals: (adj.starts.len() - measured.len()) as u32,
    };
    let baseline: Vec<(u64, i64)> = match adj.adjustment {
        Adjustment::Multiplicative { cap_pct, .. } => {
            // factor = actual_avg / baseline_avg = (actual_sum·X) / base_sum,
            // as the fraction num/den, clamped to [(100−cap)/100, (100+cap)/100].
            let (num, den, raw, capped) = if base_sum > 0 {
                let (num, den) = (actual_sum * x, base_sum);
                let raw = Some(num as f64 / den as f64);
                let cap = i128::from(cap_pct);
                if num * 100 < (100 - cap) * den {
                    (100 - cap, 100, raw, true)
                } else if num * 100 > (100 + cap) * den {
                    (100 + cap, 100, raw, true)
                } else {
                    (num, den, raw, false)
                }
            } else {
                (1, 1, None, false)
            };
            applied.outcome = AdjustmentOutcome::Multiplicative {
                factor: num as f64 / den as f64,
                uncapped_factor: raw,
                capped,
            };
            event_starts
                .iter()
                .map(|&t| (t, div_round(day_sum(t) * num, x * den) as i64))
                .collect()
        }
        Adjustment::Additive { .. } => {
            // offset = actual_avg − baseline_avg = (actual_sum·X − base_sum) / (X·m),
            // raised to 0 when negative.
            let diff = actual_sum * x - base_sum;
            let up = diff.max(0);
            applied.outcome = AdjustmentOutcome::Additive {
                offset_w: div_round(up, x * m) as i64,
                uncapped_offset_w: div_round(diff, x * m) as i64,
                capped: diff < 0,
            };
            event_starts
                .iter()
                .map(|&t| (t, div_round(day_sum(t) * m + up, x * m) as i64))
                .collect()
        }
    };
    report.adjustment = Some(applied);
    Ok(baseline)
}
