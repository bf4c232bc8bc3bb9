use std::str::FromStr;

use proptest::prelude::*;

use super::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// 5.00 per kW, 0.10 per kWh, 8.00 per kW short below 50 %, no cap.
fn terms() -> IncentiveTerms {
    IncentiveTerms {
        currency: "USD".into(),
        capacity_per_kw: d("5.00"),
        energy_per_kwh: d("0.10"),
        penalty_per_kw_short: d("8.00"),
        penalty_threshold_pct: 50,
        max_payment_per_event: None,
    }
}

/// 100 kW committed for a two-hour event, `avg_kw` delivered on average.
fn perf(committed_kw: u64, avg_kw: i64, kwh: i64) -> Performance {
    Performance {
        committed_w: committed_kw * 1000,
        avg_delivered_w: avg_kw * 1000,
        delivered_wh: kwh * 1000,
        measured_intervals: 8,
        missing_intervals: 0,
    }
}

/// (code, quantity, rate, amount) of every line.
fn lines(s: &Statement) -> Vec<(&'static str, String, String, String)> {
    s.lines
        .iter()
        .map(|l| {
            (
                l.code.as_str(),
                l.quantity.to_string(),
                l.rate.to_string(),
                l.amount.to_string(),
            )
        })
        .collect()
}

fn line(code: &'static str, q: &str, r: &str, a: &str) -> (&'static str, String, String, String) {
    (code, q.into(), r.into(), a.into())
}

#[test]
fn full_delivery() {
    // capacity 100 kW × 5.00 × 100 % = 500.00
    // energy   200 kWh × 0.10       =  20.00
    // total                          520.00
    let s = settle(&terms(), &perf(100, 100, 200));
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "100.000", "5.00", "500.00"),
            line("energy", "200.000", "0.10", "20.00"),
        ]
    );
    assert_eq!(s.total, d("520.00"));
    assert_eq!(s.performance_pct, d("100"));
    assert_eq!(s.currency, "USD");
}

#[test]
fn over_delivery_is_capped_at_100_percent_for_capacity() {
    // 130 kW against 100 committed: performance 130 %, capacity credited
    // 100 kW × 5.00 = 500.00; energy pays all 260 kWh × 0.10 = 26.00.
    let s = settle(&terms(), &perf(100, 130, 260));
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "100.000", "5.00", "500.00"),
            line("energy", "260.000", "0.10", "26.00"),
        ]
    );
    assert_eq!(s.total, d("526.00"));
    assert_eq!(s.performance_pct, d("130"));
}

#[test]
fn partial_delivery_above_the_threshold() {
    // 85 kW of 100: capacity 85 kW × 5.00 = 425.00 (= 100 × 5.00 × 85 %),
    // energy 170 kWh × 0.10 = 17.00; 85 % ≥ 50 %: no penalty. Total 442.00.
    let s = settle(&terms(), &perf(100, 85, 170));
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "85.000", "5.00", "425.00"),
            line("energy", "170.000", "0.10", "17.00"),
        ]
    );
    assert_eq!(s.total, d("442.00"));
    assert_eq!(s.performance_pct, d("85"));
}

#[test]
fn under_the_threshold_the_whole_shortfall_is_charged() {
    // 40 kW of 100 = 40 % < 50 %:
    // capacity 40 kW × 5.00            =  200.00
    // energy   80 kWh × 0.10           =    8.00
    // penalty  (100 − 40) kW × 8.00    = −480.00
    // total                              −272.00
    let s = settle(&terms(), &perf(100, 40, 80));
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "40.000", "5.00", "200.00"),
            line("energy", "80.000", "0.10", "8.00"),
            line("penalty", "60.000", "8.00", "-480.00"),
        ]
    );
    assert_eq!(s.total, d("-272.00"));
    assert!(s.lines[2].description.contains("below the 50 % threshold"));
}

#[test]
fn exactly_at_the_threshold_is_no_penalty() {
    // 50 kW × 100 = 5000 is not < 100 kW × 50 = 5000.
    let s = settle(&terms(), &perf(100, 50, 100));
    assert_eq!(s.lines.len(), 2);
    assert_eq!(s.total, d("260.00"));
    // One watt less is.
    let mut p = perf(100, 50, 100);
    p.avg_delivered_w -= 1;
    let s = settle(&terms(), &p);
    // capacity 49.999 × 5.00 = 249.995 → 250.00; penalty 50.001 × 8.00 =
    // 400.008 → −400.01; energy 10.00. Total −140.01.
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "49.999", "5.00", "250.00"),
            line("energy", "100.000", "0.10", "10.00"),
            line("penalty", "50.001", "8.00", "-400.01"),
        ]
    );
    assert_eq!(s.total, d("-140.01"));
}

#[test]
fn negative_delivery_counts_as_none() {
    // The participant used 20 kW more than its baseline: delivered is
    // floored at 0, so no capacity or energy payment, and the shortfall is
    // the whole 100 kW: 100 × 8.00 = −800.00.
    let s = settle(&terms(), &perf(100, -20, -40));
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "0.000", "5.00", "0.00"),
            line("energy", "0.000", "0.10", "0.00"),
            line("penalty", "100.000", "8.00", "-800.00"),
        ]
    );
    assert_eq!(s.total, d("-800.00"));
    assert_eq!(s.performance_pct, d("0"));
}

#[test]
fn payment_cap_is_a_visible_line() {
    // 500.00 + 20.00 = 520.00 > 300.00: a cap line of −220.00.
    let mut t = terms();
    t.max_payment_per_event = Some(d("300.00"));
    let s = settle(&t, &perf(100, 100, 200));
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "100.000", "5.00", "500.00"),
            line("energy", "200.000", "0.10", "20.00"),
            line("cap", "1", "-220.00", "-220.00"),
        ]
    );
    assert_eq!(s.total, d("300.00"));
    assert_eq!(s.lines[2].unit, "event");
    // Under the cap nothing changes: 425.00 + 17.00 = 442.00 ≤ 500.00.
    t.max_payment_per_event = Some(d("500"));
    let s = settle(&t, &perf(100, 85, 170));
    assert_eq!(s.lines.len(), 2);
    assert_eq!(s.total, d("442.00"));
    // A cap of 0 takes everything positive away, and leaves penalties.
    t.max_payment_per_event = Some(Decimal::ZERO);
    assert_eq!(settle(&t, &perf(100, 100, 200)).total, Decimal::ZERO);
    assert_eq!(settle(&t, &perf(100, 40, 80)).total, d("-272.00"));
}

#[test]
fn zero_commitment_pays_energy_only() {
    // Nothing committed: no capacity credit (min(5, 0) = 0 kW), no
    // penalty, performance reported as 0; energy 10 kWh × 0.10 = 1.00.
    let s = settle(&terms(), &perf(0, 5, 10));
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "0.000", "5.00", "0.00"),
            line("energy", "10.000", "0.10", "1.00"),
        ]
    );
    assert_eq!(s.total, d("1.00"));
    assert_eq!(s.performance_pct, Decimal::ZERO);
}

#[test]
fn each_line_is_rounded_once_half_away_from_zero() {
    // 0.001 kW × 5.00 = 0.005 → 0.01 (banker's rounding would give 0.00);
    // 0.003 kWh × 0.10 = 0.0003 → 0.00; penalty 0.999 kW × 5.00 = 4.995
    // → −5.00. Total −4.99.
    let t = IncentiveTerms {
        penalty_per_kw_short: d("5.00"),
        ..terms()
    };
    let p = Performance {
        committed_w: 1000,
        avg_delivered_w: 1,
        delivered_wh: 3,
        measured_intervals: 1,
        missing_intervals: 0,
    };
    let s = settle(&t, &p);
    assert_eq!(
        lines(&s),
        vec![
            line("capacity", "0.001", "5.00", "0.01"),
            line("energy", "0.003", "0.10", "0.00"),
            line("penalty", "0.999", "5.00", "-5.00"),
        ]
    );
    assert_eq!(s.total, d("-4.99"));
    // 1 W of 3 kW: 0.0333… % → 0.03.
    let p = Performance {
        committed_w: 3000,
        ..p
    };
    assert_eq!(p.performance_pct(), d("0.03"));
    assert_eq!(to_cents(d("-0.005")), d("-0.01"));
    assert_eq!(to_cents(d("0.015")), d("0.02"));
    assert_eq!(to_cents(d("0.025")), d("0.03"));
}

#[test]
fn a_penalty_that_rounds_to_nothing_is_not_negative_zero() {
    let t = IncentiveTerms {
        penalty_per_kw_short: d("0.000001"),
        ..terms()
    };
    let s = settle(&t, &perf(1, 0, 0));
    assert_eq!(s.lines[2].amount.to_string(), "0.00");
}

#[test]
fn missing_intervals_are_mentioned() {
    let mut p = perf(100, 85, 170);
    p.missing_intervals = 2;
    let s = settle(&terms(), &p);
    assert!(
        s.lines[0]
            .description
            .contains("2 of 10 intervals without meter data"),
        "{}",
        s.lines[0].description
    );
}

#[test]
fn metrics_over_a_history() {
    // Performance 100, 85, 40 % → mean 75.00; delivered 200 + 170 + 80 =
    // 450 kWh; paid 520.00 + 442.00 − 272.00 = 690.00.
    let history: Vec<_> = [perf(100, 100, 200), perf(100, 85, 170), perf(100, 40, 80)]
        .into_iter()
        .map(|p| (p, settle(&terms(), &p)))
        .collect();
    let m = metrics(&history);
    assert_eq!(
        m,
        ParticipantMetrics {
            events: 3,
            avg_performance_pct: d("75.00"),
            last_performance_pct: Some(d("40")),
            delivered_kwh_total: d("450"),
            paid_total: d("690.00"),
        }
    );
    // Negative energy does not reduce the delivered total; the mean rounds.
    let history: Vec<_> = [perf(3, 1, -5), perf(3, 3, 1), perf(3, 3, 1)]
        .into_iter()
        .map(|p| (p, settle(&terms(), &p)))
        .collect();
    let m = metrics(&history);
    // (33.33 + 100 + 100) / 3 = 77.776… → 77.78
    assert_eq!(m.avg_performance_pct, d("77.78"));
    assert_eq!(m.delivered_kwh_total, d("2"));

    let empty = metrics(&[]);
    assert_eq!(empty.events, 0);
    assert_eq!(empty.avg_performance_pct, Decimal::ZERO);
    assert_eq!(empty.last_performance_pct, None);
    assert_eq!(empty.paid_total, Decimal::ZERO);
}

#[test]
fn terms_from_json_with_string_amounts_only() {
    let t: IncentiveTerms = serde_json::from_str(
        r#"{"currency":"USD","capacity_per_kw":"5.00","energy_per_kwh":"0.10",
            "penalty_per_kw_short":"8.00","penalty_threshold_pct":50,
            "max_payment_per_event":"500.00"}"#,
    )
    .unwrap();
    assert_eq!(
        t,
        IncentiveTerms {
            max_payment_per_event: Some(d("500.00")),
            ..terms()
        }
    );
    t.validate().unwrap();
    // Penalty and cap may be left out.
    let t: IncentiveTerms =
        serde_json::from_str(r#"{"currency":"EUR","capacity_per_kw":"1","energy_per_kwh":"0"}"#)
            .unwrap();
    assert_eq!(t.penalty_threshold_pct, 0);
    assert_eq!(t.max_payment_per_event, None);
    // Unknown fields and JSON numbers (floats) are refused.
    for bad in [
        r#"{"currency":"USD","capacity_per_kw":"5","energy_per_kwh":"0","bonus":"1"}"#,
        r#"{"currency":"USD","capacity_per_kw":5.0,"energy_per_kwh":"0"}"#,
        r#"{"currency":"USD","capacity_per_kw":"five","energy_per_kwh":"0"}"#,
    ] {
        assert!(
            serde_json::from_str::<IncentiveTerms>(bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn statements_serialise_amounts_as_strings() {
    let s = settle(&terms(), &perf(100, 40, 80));
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["total"], "-272.00");
    assert_eq!(v["lines"][2]["code"], "penalty");
    assert_eq!(v["lines"][2]["amount"], "-480.00");
    assert_eq!(v["performance_pct"], "40.00");
    assert_eq!(serde_json::from_value::<Statement>(v).unwrap(), s);
}

#[test]
fn validation_names_the_field() {
    let cases: Vec<(IncentiveTerms, &str)> = vec![
        (
            IncentiveTerms {
                currency: "usd".into(),
                ..terms()
            },
            "currency",
        ),
        (
            IncentiveTerms {
                capacity_per_kw: d("-1"),
                ..terms()
            },
            "capacity_per_kw",
        ),
        (
            IncentiveTerms {
                energy_per_kwh: d("0.0000001"),
                ..terms()
            },
            "energy_per_kwh",
        ),
        (
            IncentiveTerms {
                penalty_per_kw_short: d("1000000.01"),
                ..terms()
            },
            "penalty_per_kw_short",
        ),
        (
            IncentiveTerms {
                penalty_threshold_pct: 101,
                ..terms()
            },
            "penalty_threshold_pct",
        ),
        (
            IncentiveTerms {
                max_payment_per_event: Some(d("1.005")),
                ..terms()
            },
            "max_payment_per_event",
        ),
        (
            IncentiveTerms {
                max_payment_per_event: Some(d("-1")),
                ..terms()
            },
            "max_payment_per_event",
        ),
    ];
    for (t, field) in cases {
        let err = t.validate().unwrap_err();
        assert!(err.starts_with(field), "{field}: {err}");
    }
    terms().validate().unwrap();
    // Trailing zeros are not extra decimals.
    IncentiveTerms {
        energy_per_kwh: d("0.1000000000"),
        max_payment_per_event: Some(d("10.0000")),
        ..terms()
    }
    .validate()
    .unwrap();
}

#[test]
fn no_float_in_the_money_path() {
    let src = include_str!("../settlement.rs");
    for word in ["f32", "f64", "as_f", "to_f", "from_f"] {
        assert!(!src.contains(word), "settlement.rs mentions {word}");
    }
}

/// A rate of at most `MAX_RATE` with at most six decimals, as micro-units.
fn arb_rate() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        0u64..=10_000_000,
        0u64..=u64::from(MAX_RATE) * 1_000_000,
    ]
}

/// Reference rounding in integers: `x` in units of 10⁻⁹ to cents, half away
/// from zero.
fn cents_of_nanos(x: u128) -> i128 {
    ((x + 5_000_000) / 10_000_000) as i128
}

proptest! {
    #[test]
    fn totals_are_the_sum_of_exact_integer_lines(
        cap_micros in 0u64..=10_000_000,
        energy_micros in arb_rate(),
        penalty_micros in arb_rate(),
        threshold in 0u32..=100,
        cap_cents in proptest::option::of(0u64..=MAX_CAP * 100),
        committed_w in prop_oneof![0u64..1_000_000, any::<u64>()],
        avg_delivered_w in prop_oneof![-1_000_000i64..2_000_000, any::<i64>()],
        delivered_wh in any::<i64>(),
        missing in 0u32..10,
    ) {
        let terms = IncentiveTerms {
            currency: "USD".into(),
            capacity_per_kw: Decimal::new(cap_micros as i64, 6),
            energy_per_kwh: Decimal::new(energy_micros as i64, 6),
            penalty_per_kw_short: Decimal::new(penalty_micros as i64, 6),
            penalty_threshold_pct: threshold,
            max_payment_per_event: cap_cents.map(|c| Decimal::new(c as i64, 2)),
        };
        prop_assert!(terms.validate().is_ok());
        let perf = Performance {
            committed_w,
            avg_delivered_w,
            delivered_wh,
            measured_intervals: 4,
            missing_intervals: missing,
        };
        let s = settle(&terms, &perf);

        // The total is the sum of the lines, every amount in whole cents.
        let sum = s.lines.iter().fold(Decimal::ZERO, |a, l| a + l.amount);
        prop_assert_eq!(s.total, sum);
        for l in &s.lines {
            prop_assert!(l.amount.normalize().scale() <= 2, "{:?}", l);
        }

        // Each line against integer arithmetic: W × micro-units = 10⁻⁹.
        let delivered = avg_delivered_w.max(0) as u64;
        let credited = delivered.min(committed_w);
        let cents = |n: i128| Decimal::from_i128_with_scale(n, 2);
        prop_assert_eq!(s.lines[0].amount, cents(cents_of_nanos(u128::from(credited) * u128::from(cap_micros))));
        let wh = delivered_wh.max(0) as u64;
        prop_assert_eq!(s.lines[1].amount, cents(cents_of_nanos(u128::from(wh) * u128::from(energy_micros))));
        let penalised = committed_w > 0
            && u128::from(delivered) * 100 < u128::from(committed_w) * u128::from(threshold);
        let has_penalty = s.lines.iter().any(|l| l.code == LineCode::Penalty);
        prop_assert_eq!(has_penalty, penalised);
        if penalised {
            let short = committed_w - delivered;
            prop_assert_eq!(s.lines[2].amount, -cents(cents_of_nanos(u128::from(short) * u128::from(penalty_micros))));
        }

        // The cap holds, and applies only when needed.
        match terms.max_payment_per_event {
            Some(cap) => {
                prop_assert!(s.total <= cap);
                let capped = s.lines.iter().any(|l| l.code == LineCode::Cap);
                prop_assert_eq!(capped, sum - s.lines.last().unwrap().amount * Decimal::from(u8::from(capped)) > cap);
            }
            None => prop_assert!(s.lines.iter().all(|l| l.code != LineCode::Cap)),
        }
        prop_assert!(s.performance_pct >= Decimal::ZERO);
    }
}
