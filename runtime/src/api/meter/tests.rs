use super::*;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// `s1` and `s2` are sites, `vd` is not one; anything else is unknown.
fn not_a_site(id: &NodeId) -> Option<&'static str> {
    match id.as_str() {
        "s1" | "s2" => None,
        "vd" => Some("is not a site"),
        _ => Some("is not in the hierarchy"),
    }
}

const CSV: &str = "site,start,kw\n\
                   s1,1970-01-01T00:05:00Z,1.5\n\
                   s2,0,-0.25\n\
                   s1,0,2\n";

#[test]
fn a_good_file_becomes_readings_a_summary_and_a_draft() {
    let plan = plan_import(CSV, 300, "ops", not_a_site).unwrap();
    let mut r = plan.readings.clone();
    r.sort();
    assert_eq!(
        r,
        [
            (id("s1"), 0, 2000),
            (id("s1"), 300_000, 1500),
            (id("s2"), 0, -250)
        ]
    );
    assert_eq!(
        plan.summary,
        ImportSummary {
            readings: 3,
            sites: 2,
            from_ms: 0,
            to_ms: 600_000,
            ledger_seq: 0,
        }
    );
    assert_eq!(
        (plan.draft.actor.as_str(), plan.draft.action.as_str()),
        ("ops", "meter.import")
    );
    assert_eq!(plan.draft.subject, "meter");
    let one = plan_import("site,start,kw\ns2,0,1\n", 300, "ops", not_a_site).unwrap();
    assert_eq!(one.draft.subject, "meter/s2");
}

#[test]
fn bad_lines_are_listed_with_their_numbers() {
    let text = "site,start,kw\ns1,0,1\ns1,17,1\ns1,300000,abc\n";
    let e = plan_import(text, 300, "ops", not_a_site).unwrap_err();
    assert_eq!(e.reason(), "invalid_csv");
    let a = AppError::from(e);
    assert_eq!(
        (a.status, a.code),
        (StatusCode::BAD_REQUEST, "invalid_meter_data")
    );
    let lines: Vec<_> = a.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [Some(3), Some(4)]);
    assert!(
        a.problems[1].message.starts_with("kw: "),
        "{:?}",
        a.problems
    );
}

#[test]
fn ids_that_are_not_sites_are_named() {
    let text = "site,start,kw\ns1,0,1\nvd,0,1\nghost,0,1\n";
    let e = plan_import(text, 300, "ops", not_a_site).unwrap_err();
    assert_eq!(e.reason(), "unknown_site");
    let a = AppError::from(e);
    assert_eq!(
        (a.status, a.code),
        (StatusCode::BAD_REQUEST, "unknown_site")
    );
    assert!(
        a.message.contains("ghost") && a.message.contains("vd"),
        "{}",
        a.message
    );
    let ids: Vec<_> = a.problems.iter().map(|p| p.id.clone().unwrap()).collect();
    assert_eq!(ids, ["ghost", "vd"]);
}

#[test]
fn a_header_alone_is_refused() {
    let e = plan_import("site,start,kw\n", 300, "ops", not_a_site).unwrap_err();
    assert_eq!(e.reason(), "no_readings");
}
