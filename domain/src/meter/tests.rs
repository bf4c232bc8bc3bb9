use proptest::prelude::{any, prop_assert_eq, proptest};
use proptest::strategy::Strategy as _;

use super::*;

/// 2026-07-01T17:00:00Z, Unix ms.
const T17: u64 = 1_782_925_200_000;
const Q: u64 = 900_000; // 15 minutes

fn site(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn err(text: &str, interval_s: u32) -> CsvError {
    parse_csv(text, interval_s).expect_err("should be rejected")
}

/// The problems as `(line, column)` pairs.
fn places(e: &CsvError) -> Vec<(usize, Option<&str>)> {
    e.problems
        .iter()
        .map(|p| (p.line, p.column.as_deref()))
        .collect()
}

#[test]
fn parses_a_good_file() {
    let text = "\
# exported 2026-07-02

site,start,kw
site-001,2026-07-01T17:00:00Z,3.25
site-001,2026-07-01T19:15:00+02:00,3.1
  site-002 , 1782925200000 , -1.5
\"site-002\",\"2026-07-01T17:15:00Z\",0
# a re-sent line with the same value is fine
site-001,2026-07-01T17:00:00Z,3.250
";
    let m = parse_csv(text, 900).unwrap();
    assert_eq!(m.len(), 2);
    let a = &m[&site("site-001")];
    assert_eq!(a.interval_s, 900);
    // 19:15+02:00 is 17:15Z.
    assert_eq!(a.points, BTreeMap::from([(T17, 3250), (T17 + Q, 3100)]));
    let b = &m[&site("site-002")];
    assert_eq!(b.points, BTreeMap::from([(T17, -1500), (T17 + Q, 0)]));
    // Lookups by &str work too.
    assert!(m.contains_key("site-002"));
}

#[test]
fn header_columns_in_any_order_crlf_and_bom() {
    let text = "\u{feff}KW,Site,Start\r\n2.5,s1,2026-07-01T17:00:00Z\r\n";
    let m = parse_csv(text, 900).unwrap();
    assert_eq!(m[&site("s1")].points, BTreeMap::from([(T17, 2500)]));
}

#[test]
fn kwh_is_energy_over_the_interval() {
    // 0.75 kWh in 15 min = 0.75 × 3600 / 900 = 3 kW average.
    // 0.1 kWh in 5 min   = 0.1 × 3600 / 300 = 1.2 kW average.
    let m = parse_csv("site,start,kwh\na,2026-07-01T17:00:00Z,0.75\n", 900).unwrap();
    assert_eq!(m[&site("a")].points[&T17], 3000);
    let m = parse_csv("site,start,kwh\na,2026-07-01T17:00:00Z,0.1\n", 300).unwrap();
    assert_eq!(m[&site("a")].points[&T17], 1200);
}

#[test]
fn header_problems() {
    let e = err("site,start,kw,temp\n", 900);
    assert_eq!(places(&e), vec![(1, None)]);
    assert!(
        e.problems[0]
            .message
            .contains("unknown column \"temp\" (column 4)"),
        "{e}"
    );

    let e = err("# only a comment\nsite,kw\n", 900);
    assert_eq!(places(&e), vec![(2, None)]);
    assert!(e.problems[0].message.contains("no start column"), "{e}");

    let e = err("site,start,kw,kwh\n", 900);
    assert!(e.to_string().contains("not both"), "{e}");

    let e = err("site,start,kw,site\n", 900);
    assert_eq!(places(&e), vec![(1, Some("site"))]);

    // Data where the header should be.
    let e = err("a,2026-07-01T17:00:00Z,1\n", 900);
    assert!(e.problems[0].message.contains("expected the header"), "{e}");

    let e = err("\n# nothing\n", 900);
    assert!(e.problems[0].message.contains("no header line"), "{e}");
    // A header alone is an empty (valid) file.
    assert!(parse_csv("site,start,kw\n", 900).unwrap().is_empty());
}

#[test]
fn every_kind_of_bad_line_is_located() {
    let text = "\
site,start,kw
a,2026-07-01T17:00:00Z,1
a,2026-07-01T17:07:00Z,1
a,2026-07-01T17:15:00Z,abc
a,2026-07-01T17:30:00Z,NaN
a,2026-07-01T17:45:00Z,100000.001
a/b,2026-07-01T18:00:00Z,1
a,2026-07-01T17:00:00Z,2
a,yesterday,1
a,2026-07-01T18:00:00Z
a,2026-07-01T18:15:00Z,inf
,2026-07-01T18:30:00Z,
a,2026-07-01T18:45:00Z,-100000
";
    let e = err(text, 900);
    assert_eq!(
        places(&e),
        vec![
            (3, Some("start")), // 17:07 is not on a 15-minute boundary
            (4, Some("kw")),    // not a number
            (5, Some("kw")),    // NaN
            (6, Some("kw")),    // above 100 MW
            (7, Some("site")),  // '/' in an id
            (8, Some("kw")),    // duplicate of line 2 with another value
            (9, Some("start")), // not a time
            (10, None),         // two fields
            (11, Some("kw")),   // infinite
            (12, Some("site")), // empty id
            (12, Some("kw")),   // empty value
        ],
        "{e}"
    );
    let msg = |i: usize| e.problems[i].message.as_str();
    assert!(msg(0).contains("not the start of a 900 s interval"), "{e}");
    assert!(msg(1).contains("\"abc\" is not a number"), "{e}");
    assert!(msg(2).contains("NaN"), "{e}");
    assert!(msg(3).contains("absurd"), "{e}");
    assert!(msg(4).contains("'/'"), "{e}");
    assert!(
        msg(5).contains("on line 2") && msg(5).contains("2 kW here, 1 kW"),
        "{e}"
    );
    assert!(msg(7).contains("2 fields where the header has 3"), "{e}");
    assert!(msg(8).contains("infinite"), "{e}");
    // Exactly -100 000 kW (the limit) is accepted: line 13 has no problem.
    let shown = e.clone().with_path("m.csv").to_string();
    assert!(
        shown.starts_with("meter data m.csv: 11 problems"),
        "{shown}"
    );
    assert!(
        shown.contains("\n  m.csv:4: kw: \"abc\" is not a number"),
        "{shown}"
    );
    assert!(e.to_string().contains("\n  line 4: kw: "), "{e}");
}

#[test]
fn stops_listing_after_the_limit() {
    let mut text = String::from("site,start,kw\n");
    for _ in 0..50 {
        text.push_str("a,2026-07-01T17:00:00Z,x\n");
    }
    let e = err(&text, 900);
    assert_eq!(e.problems.len(), MAX_CSV_PROBLEMS);
    assert!(e.truncated);
    assert!(e.to_string().contains("and more"), "{e}");
}

#[test]
fn unix_ms_and_offsets_name_the_same_interval() {
    let text = "\
site,start,kw
a,1782925200000,1
b,2026-07-01T12:00:00-05:00,1
c,2026-07-01T22:30:00+05:30,1
d,2026-07-01t17:00:00.000z,1
";
    let m = parse_csv(text, 900).unwrap();
    for s in ["a", "b", "c", "d"] {
        assert_eq!(m[&site(s)].first_start(), Some(T17), "{s}");
    }
}

#[test]
fn short_intervals() {
    // 1 s data, as the live system's tests write it.
    let text = "site,start,kw\na,1782925200000,1\na,1782925201000,2\na,1782925201500,3\n";
    let e = err(text, 1);
    assert_eq!(places(&e), vec![(4, Some("start"))]);
    let good = text.replace("a,1782925201500,3\n", "");
    let m = parse_csv(&good, 1).unwrap();
    assert_eq!(m[&site("a")].points.len(), 2);
}

#[test]
fn bad_interval_lengths() {
    for bad in [0, 7, 1000, 86_401] {
        let e = err("site,start,kw\n", bad);
        assert!(e.to_string().contains("divide a day"), "{e}");
        assert!(MeterSeries::new(bad).is_err());
    }
    for good in [1, 2, 300, 900, 3600, 86_400] {
        assert!(MeterSeries::new(good).is_ok());
    }
}

#[test]
fn series_insert_and_starts() {
    let mut s = MeterSeries::new(900).unwrap();
    assert_eq!(s.insert(T17, 5), Ok(None));
    assert_eq!(s.insert(T17, 6), Ok(Some(5)));
    assert!(matches!(
        s.insert(T17 + 1, 1),
        Err(MeterError::NotAligned { .. })
    ));
    assert_eq!(
        s.insert(T17, MAX_SITE_W + 1),
        Err(MeterError::Absurd(MAX_SITE_W + 1))
    );
    // Whole intervals inside [17:05, 18:00): 17:15, 17:30, 17:45.
    let starts: Vec<u64> = s.starts(T17 + 300_000, T17 + 4 * Q).collect();
    assert_eq!(starts, vec![T17 + Q, T17 + 2 * Q, T17 + 3 * Q]);
    // Near the end of time nothing overflows.
    assert_eq!(s.starts(u64::MAX - 10, u64::MAX).count(), 0);
}

#[test]
fn csv_round_trip() {
    let text = "site,start,kw\na,2026-07-01T17:00:00Z,-0.001\na,2026-07-01T17:15:00Z,12345.678\nb,2026-07-01T17:00:00Z,3\n";
    let m = parse_csv(text, 900).unwrap();
    assert_eq!(to_csv(&m), text);
    assert_eq!(parse_csv(&to_csv(&m), 900).unwrap(), m);
}

proptest! {
    #[test]
    fn random_text_never_panics(text in any::<String>(), interval in 0u32..100_000) {
        let _ = parse_csv(&text, interval);
        let _ = parse_csv(&format!("site,start,kw\n{text}"), 900);
    }

    #[test]
    fn plausible_lines_never_panic(
        lines in proptest::collection::vec(
            proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("site".to_string()),
                    proptest::strategy::Just("2026-07-01T17:00:00Z".to_string()),
                    proptest::strategy::Just("2026-07-01T17:00:00+14:00".to_string()),
                    proptest::strategy::Just("18446744073709551615".to_string()),
                    proptest::strategy::Just("1e308".to_string()),
                    proptest::strategy::Just("-0".to_string()),
                    proptest::strategy::Just("\"".to_string()),
                    "[a-z0-9:+.TZ-]{0,30}",
                    any::<f64>().prop_map(|f| f.to_string()),
                    any::<u64>().prop_map(|n| n.to_string()),
                ],
                0..5,
            ),
            0..20,
        )
    ) {
        let mut text = String::from("site,start,kw\n");
        for l in &lines {
            text.push_str(&l.join(","));
            text.push('\n');
        }
        if let Ok(m) = parse_csv(&text, 900) {
            // Whatever was accepted writes back and reads back the same.
            prop_assert_eq!(parse_csv(&to_csv(&m), 900).unwrap(), m);
        }
    }
}
