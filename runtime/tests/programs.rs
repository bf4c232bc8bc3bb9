//! The demand-flexibility journey through the HTTP API, with real actors
//! and the simulated fleet over the embedded MQTT broker: accounts and
//! verification, program discovery, enrollment, an event with notification
//! (API and MQTT), confirmation, dispatch through the hierarchy to devices,
//! M&V from metered telemetry against a baseline from imported history,
//! settlement and its two-party approval, and the audit ledger behind it.
//!
//! Run: `cargo nextest run -p vpp-runtime --test programs` (needs
//! `mosquitto_sub` from mosquitto-clients).

mod common;

use std::time::Duration;

use common::{eventually, repo, request_as, TestNode};
use serde_json::{json, Value};
use vpp_simulator::{devices_from_hierarchy, SimConfig};

fn small() -> vpp_domain::Hierarchy {
    vpp_domain::hierarchy_file::load(&repo().join("examples/small.toml")).unwrap()
}

/// A JSON call as `token`; panics with the answer unless the status is
/// `want`.
fn call(
    node: &TestNode,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    want: u16,
) -> Value {
    let (s, v) = request_as(
        Some(token),
        method,
        &format!("{}{path}", node.url),
        body.map(|b| ("application/json", b.to_string().into_bytes())),
    );
    assert_eq!(s, want, "{method} {path}: {v}");
    v
}

fn account(node: &TestNode, id: &str, role: &str, extra: Value) -> String {
    let mut body = json!({"id": id, "name": id, "role": role});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    call(
        node,
        &node.token,
        "POST",
        "/api/v1/accounts",
        Some(body),
        201,
    );
    let t = call(
        node,
        &node.token,
        "POST",
        &format!("/api/v1/accounts/{id}/tokens"),
        None,
        201,
    );
    t["token"].as_str().unwrap().to_string()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn the_whole_journey_from_discovery_to_approved_settlement() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = TestNode::start_serving(tempfile::tempdir().unwrap(), |c| {
        c.programs.tick_ms = 100;
        c.programs.quorum = 2;
        c.metering.interval_s = 1;
    });
    let op = node.token.clone();
    let text = std::fs::read_to_string(repo().join("examples/small.toml")).unwrap();
    node.client().put_text("/api/v1/hierarchy", text).unwrap();
    let sim = rt
        .block_on(vpp_simulator::start(
            SimConfig {
                broker: node.mqtt.clone().unwrap(),
                connections: 2,
                telemetry_interval: Duration::from_millis(200),
                start_hour: Some(12.0),
                client_prefix: "journey".into(),
                ..SimConfig::default()
            },
            devices_from_hierarchy(&small()),
        ))
        .expect("simulator starts");

    // Accounts: a utility for the north, a supermarket owner.
    let utility = account(
        &node,
        "grid-north",
        "utility",
        json!({"jurisdiction": ["NL-north"]}),
    );
    let shop = account(
        &node,
        "fresh-foods",
        "participant",
        json!({"resources": ["com-ams-02"]}),
    );

    // An unverified utility cannot publish; the operator verifies it.
    let program = json!({
        "id": "north-peak",
        "name": "North peak shaving",
        "kind": "capacity",
        "zones": ["NL-north"],
        "coverage": [{"lat": 52.37, "lon": 4.89, "radius_km": 30.0}],
        "segments": ["commercial", "industrial"],
        "min_kw": 5.0,
        "terms": {
            "currency": "EUR",
            "capacity_per_kw": "2.00",
            "energy_per_kwh": "0.50",
            "penalty_per_kw_short": "1.00",
            "penalty_threshold_pct": 50,
            "max_payment_per_event": null
        },
        "notice_s": 0,
        "max_events_per_season": 10,
        "max_hours_per_season": 20,
        "max_event_duration_s": 3600,
        "baseline": {"method": "x_of_y", "x": 5, "y": 10}
    });
    let denied = call(
        &node,
        &utility,
        "POST",
        "/api/v1/programs",
        Some(program.clone()),
        403,
    );
    assert!(denied.to_string().contains("not been verified"), "{denied}");
    call(
        &node,
        &op,
        "POST",
        "/api/v1/accounts/grid-north/verify",
        None,
        200,
    );
    call(
        &node,
        &utility,
        "POST",
        "/api/v1/programs",
        Some(program),
        201,
    );

    // Discovery by zone and segment, by place, and by resource.
    for q in [
        "zone=NL-north&segment=commercial",
        "lat=52.37&lon=4.84",
        "resource=com-ams-02",
        "capacity_kw=10",
    ] {
        let found = call(
            &node,
            &shop,
            "GET",
            &format!("/api/v1/programs?{q}"),
            None,
            200,
        );
        assert_eq!(found.as_array().unwrap().len(), 1, "{q}: {found}");
    }
    for q in [
        "zone=NL-south",
        "lat=50.85&lon=5.69",
        "resource=res-ams-01",
        "capacity_kw=1",
    ] {
        let found = call(
            &node,
            &shop,
            "GET",
            &format!("/api/v1/programs?{q}"),
            None,
            200,
        );
        assert!(found.as_array().unwrap().is_empty(), "{q}: {found}");
    }

    // Enrollment: checked against the program and the hierarchy.
    let too_much =
        json!({"program": "north-peak", "resource": "com-ams-02", "committed_kw": 5000.0});
    let e = call(
        &node,
        &shop,
        "POST",
        "/api/v1/enrollments",
        Some(too_much),
        400,
    );
    assert!(e.to_string().contains("more than com-ams-02 can do"), "{e}");
    let not_mine = json!({"program": "north-peak", "resource": "res-ams-01", "committed_kw": 5.0});
    call(
        &node,
        &shop,
        "POST",
        "/api/v1/enrollments",
        Some(not_mine),
        403,
    );
    let en = call(
        &node,
        &shop,
        "POST",
        "/api/v1/enrollments",
        Some(
            json!({"id": "ff-north", "program": "north-peak", "resource": "com-ams-02", "committed_kw": 20.0}),
        ),
        201,
    );
    assert_eq!(en["status"], "active");

    // Wait until the site's telemetry is metered (it is enrolled now).
    eventually(30, || {
        let from = now_ms() - 60_000;
        let v = call(
            &node,
            &op,
            "GET",
            &format!("/api/v1/meter/com-ams-02?from_ms={from}"),
            None,
            200,
        );
        (v["readings"].as_array()?.len() >= 3).then_some(())
    });

    // History for the baseline: the 20 days before, at the event's hours,
    // 100 kW (a CSV import, as a utility's meter data would come).
    let start_ms = (now_ms() + 6_000) / 1000 * 1000;
    let duration_s = 6u64;
    let mut csv = String::from("site,start,kw\n");
    for d in 1..=20u64 {
        for k in 0..duration_s {
            let t = start_ms - d * 86_400_000 + k * 1000;
            csv.push_str(&format!("com-ams-02,{t},100\n"));
        }
    }
    let (s, v) = request_as(
        Some(&op),
        "POST",
        &format!("{}/api/v1/meter", node.url),
        Some(("text/csv", csv.into_bytes())),
    );
    assert_eq!(s, 200, "{v}");

    // The utility calls an event in its zone: the shop is notified.
    let ev = call(
        &node,
        &utility,
        "POST",
        "/api/v1/events",
        Some(json!({
            "id": "ev-1",
            "program": "north-peak",
            "zones": ["NL-north"],
            "start_ms": start_ms,
            "duration_s": duration_s,
            "ramp_kw_per_min": 60.0,
            "requested_kw": 20.0,
            "price_per_kwh": "0.35",
            "grid": {"reason": "evening peak on the Amsterdam ring", "frequency_hz": 49.85}
        })),
        201,
    );
    assert_eq!(ev["status"], "notified", "{ev}");
    assert_eq!(ev["participants"][0]["enrollment"], "ff-north");
    assert_eq!(ev["participants"][0]["requested_w"], 20_000);
    let notices = call(&node, &shop, "GET", "/api/v1/notices", None, 200);
    assert_eq!(
        notices[0]["event"]["grid"]["frequency_hz"], 49.85,
        "{notices}"
    );
    assert_eq!(notices[0]["event"]["price_per_kwh"], "0.35");
    // … and over MQTT, retained on the participant's topic.
    let (host, port) = node.mqtt.as_deref().unwrap().rsplit_once(':').unwrap();
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-C", "1", "-W", "10"])
        .args(["-t", "vpp-programs/v1/fresh-foods/events/#"])
        .output()
        .expect("mosquitto_sub runs (apt install mosquitto-clients)");
    let msg: Value = serde_json::from_slice(&out.stdout).expect("a JSON notice");
    assert_eq!(msg["event"]["id"], "ev-1", "{msg}");

    // The shop confirms with kW and confidence; it gets a baseline and target.
    let ev = call(
        &node,
        &shop,
        "POST",
        "/api/v1/events/ev-1/confirmations",
        Some(
            json!({"enrollment": "ff-north", "answer": "confirm", "committed_kw": 20.0, "confidence_pct": 90}),
        ),
        200,
    );
    let part = &ev["participants"][0];
    assert_eq!(part["status"], "confirmed");
    assert_eq!(part["baseline_w"], 100_000, "{part}");
    assert_eq!(part["target_w"], 80_000, "{part}");

    // At the start the commitment is dispatched to the site's devices.
    let ev = eventually(20, || {
        let v = call(&node, &op, "GET", "/api/v1/events/ev-1", None, 200);
        (v["status"] == "active").then_some(v)
    });
    let dispatch = ev["participants"][0]["dispatch"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(20, || {
        let d = call(
            &node,
            &op,
            "GET",
            &format!("/api/v1/dispatches/{dispatch}"),
            None,
            200,
        );
        (d["dispatch"]["allocated_kw"].as_f64()? > 0.0).then_some(())
    });
    eventually(20, || {
        let v = call(&node, &op, "GET", "/api/v1/nodes/com-ams-02", None, 200);
        (v["capacity"]["envelope"]["response"]["acked"].as_u64()? > 0).then_some(())
    });

    // It completes; M&V from the metered telemetry against the baseline.
    eventually(30, || {
        let v = call(&node, &op, "GET", "/api/v1/events/ev-1", None, 200);
        (v["status"] == "completed").then_some(())
    });
    let perf = eventually(20, || {
        let p = call(
            &node,
            &utility,
            "GET",
            "/api/v1/events/ev-1/performance",
            None,
            200,
        );
        let intervals = p[0]["report"]["intervals"].as_array()?.clone();
        let measured = intervals
            .iter()
            .filter(|i| !i["actual_w"].is_null())
            .count();
        (measured as u64 >= duration_s - 1).then_some(p)
    });
    for i in perf[0]["report"]["intervals"].as_array().unwrap() {
        assert_eq!(i["baseline_w"], 100_000, "{i}");
        if let (Some(a), Some(d)) = (i["actual_w"].as_i64(), i["delivered_w"].as_i64()) {
            assert_eq!(d, 100_000 - a, "delivered = baseline − actual: {i}");
        }
    }

    // Settlement: computed by the utility, approved by a second party.
    let st = call(
        &node,
        &utility,
        "POST",
        "/api/v1/events/ev-1/settlement",
        None,
        201,
    );
    assert_eq!(st[0]["status"], "pending", "{st}");
    call(
        &node,
        &utility,
        "POST",
        "/api/v1/events/ev-1/settlement/approve",
        None,
        403,
    );
    call(
        &node,
        &shop,
        "POST",
        "/api/v1/events/ev-1/settlement/approve",
        None,
        403,
    );
    let st = call(
        &node,
        &op,
        "POST",
        "/api/v1/events/ev-1/settlement/approve",
        None,
        200,
    );
    assert_eq!(st[0]["status"], "approved", "{st}");
    let mine = call(&node, &shop, "GET", "/api/v1/settlements", None, 200);
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let total: rust_decimal::Decimal = mine[0]["statement"]["total"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let sum: rust_decimal::Decimal = mine[0]["statement"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["amount"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, sum, "{mine}");
    let m = call(
        &node,
        &shop,
        "GET",
        "/api/v1/participants/fresh-foods/metrics",
        None,
        200,
    );
    assert_eq!(m["events"], 1, "{m}");

    // Every step is in a ledger that verifies.
    let v = call(&node, &op, "GET", "/api/v1/audit/verify", None, 200);
    assert!(v["first_bad"].is_null(), "{v}");
    let entries = call(&node, &op, "GET", "/api/v1/audit?limit=1000", None, 200);
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "account.bootstrap",
        "account.create",
        "account.verify",
        "program.publish",
        "enrollment.create",
        "event.create_notify",
        "event.confirm",
        "event.start",
        "event.complete",
        "settlement.compute",
        "settlement.approve",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    rt.block_on(sim.stop());
}

/// A node with small.toml, a verified utility for NL-north, a shop owning
/// com-ams-02 enrolled in `program` (auto-confirm as given).
struct Setup {
    node: TestNode,
    utility: String,
    shop: String,
}

fn setup(kind: &str, auto_confirm: bool) -> Setup {
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), |c| {
        c.programs.tick_ms = 50;
        c.programs.quorum = 2;
    });
    let text = std::fs::read_to_string(repo().join("examples/small.toml")).unwrap();
    node.client().put_text("/api/v1/hierarchy", text).unwrap();
    let utility = account(
        &node,
        "grid-north",
        "utility",
        json!({"jurisdiction": ["NL-north"]}),
    );
    let shop = account(
        &node,
        "fresh-foods",
        "participant",
        json!({"resources": ["com-ams-02"]}),
    );
    call(
        &node,
        &node.token,
        "POST",
        "/api/v1/accounts/grid-north/verify",
        None,
        200,
    );
    let program = json!({
        "id": "p", "name": "P", "kind": kind, "zones": ["NL-north"],
        "terms": {"currency": "EUR", "capacity_per_kw": "1.00", "energy_per_kwh": "0.10"},
        "notice_s": 0, "max_events_per_season": 10, "max_hours_per_season": 10,
        "max_event_duration_s": 3600, "baseline": {"method": "x_of_y", "x": 3, "y": 5}
    });
    call(
        &node,
        &utility,
        "POST",
        "/api/v1/programs",
        Some(program),
        201,
    );
    let en = json!({"id": "en", "program": "p", "resource": "com-ams-02", "committed_kw": 10.0,
                    "auto_confirm": auto_confirm, "max_opt_outs_per_season": 1});
    call(&node, &shop, "POST", "/api/v1/enrollments", Some(en), 201);
    Setup {
        node,
        utility,
        shop,
    }
}

fn event(id: &str, start_in_s: u64, duration_s: u64) -> Value {
    json!({"id": id, "program": "p", "zones": ["NL-north"], "start_in_s": start_in_s,
           "duration_s": duration_s, "requested_kw": 10.0,
           "grid": {"reason": "frequency dip", "frequency_hz": 49.7}})
}

#[test]
fn an_emergency_event_waits_for_a_second_approver() {
    let s = setup("emergency", false);
    let (node, op) = (&s.node, s.node.token.clone());
    let ev = call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events",
        Some(event("em", 600, 60)),
        201,
    );
    assert_eq!(ev["status"], "draft", "{ev}");
    assert!(ev["participants"].as_array().unwrap().is_empty());
    // Not notified yet: the shop has nothing; the proposer cannot approve
    // twice; notify is refused without the quorum; a participant may not approve.
    let n = call(node, &s.shop, "GET", "/api/v1/notices", None, 200);
    assert!(n.as_array().unwrap().is_empty(), "{n}");
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events/em/approve",
        None,
        403,
    );
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events/em/notify",
        None,
        403,
    );
    call(
        node,
        &s.shop,
        "POST",
        "/api/v1/events/em/approve",
        None,
        403,
    );
    // The operator is the second approver: the event goes out.
    let ev = call(node, &op, "POST", "/api/v1/events/em/approve", None, 200);
    assert_eq!(ev["status"], "notified", "{ev}");
    assert_eq!(ev["approvals"]["by"], json!(["grid-north", "operator"]));
    let n = call(node, &s.shop, "GET", "/api/v1/notices", None, 200);
    assert_eq!(n[0]["event"]["id"], "em", "{n}");
}

#[test]
fn new_terms_apply_only_once_approved() {
    let s = setup("capacity", false);
    let node = &s.node;
    let terms =
        json!({"terms": {"currency": "EUR", "capacity_per_kw": "9.00", "energy_per_kwh": "0.10"}});
    let p = call(
        node,
        &s.utility,
        "PUT",
        "/api/v1/programs/p/terms",
        Some(terms.clone()),
        200,
    );
    assert_eq!(
        p["terms"]["capacity_per_kw"], "1.00",
        "old terms still apply: {p}"
    );
    assert_eq!(p["pending_terms"]["terms"]["capacity_per_kw"], "9.00");
    // A second proposal waits for the first; the proposer cannot approve.
    call(
        node,
        &s.utility,
        "PUT",
        "/api/v1/programs/p/terms",
        Some(terms),
        409,
    );
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/programs/p/terms/approve",
        None,
        403,
    );
    let p = call(
        node,
        &node.token,
        "POST",
        "/api/v1/programs/p/terms/approve",
        None,
        200,
    );
    assert_eq!(p["terms"]["capacity_per_kw"], "9.00", "{p}");
    assert_eq!(p["terms_version"], 2);
    assert!(p["pending_terms"].is_null());
}

#[test]
fn participants_decline_or_opt_out_before_the_start_only() {
    let s = setup("capacity", false);
    let node = &s.node;
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events",
        Some(event("e1", 600, 60)),
        201,
    );
    let ans = |answer: &str, want: u16| {
        call(
            node,
            &s.shop,
            "POST",
            "/api/v1/events/e1/confirmations",
            Some(json!({"enrollment": "en", "answer": answer})),
            want,
        )
    };
    ans("opt_out", 409); // nothing to opt out of yet
    let e = ans("confirm", 200);
    assert_eq!(e["participants"][0]["committed_w"], 10_000);
    ans("decline", 409); // confirmed: opt out instead
    let e = ans("opt_out", 200);
    assert_eq!(e["participants"][0]["status"], "opted_out");
    // One opt-out a season: in the next event the confirmation stands.
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events",
        Some(event("e1b", 900, 60)),
        201,
    );
    let ans2 = |answer: &str, want: u16| {
        call(
            node,
            &s.shop,
            "POST",
            "/api/v1/events/e1b/confirmations",
            Some(json!({"enrollment": "en", "answer": answer})),
            want,
        )
    };
    ans2("confirm", 200);
    let e = ans2("opt_out", 409);
    assert!(e.to_string().contains("1 of its 1 opt-outs"), "{e}");
    // Too much, or another's enrollment.
    call(
        node,
        &s.shop,
        "POST",
        "/api/v1/events/e1/confirmations",
        Some(json!({"enrollment": "en", "answer": "confirm", "committed_kw": 11.0})),
        400,
    );
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events/e1/confirmations",
        Some(json!({"enrollment": "en", "answer": "confirm"})),
        403,
    );
}

#[test]
fn an_auto_confirmed_event_is_dispatched_and_its_cancel_withdraws_the_order() {
    let s = setup("capacity", true);
    let (node, op) = (&s.node, s.node.token.clone());
    let ev = call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events",
        Some(event("e2", 1, 600)),
        201,
    );
    assert_eq!(ev["participants"][0]["status"], "confirmed", "{ev}");
    assert_eq!(ev["participants"][0]["auto"], true);
    let ev = eventually(20, || {
        let v = call(node, &op, "GET", "/api/v1/events/e2", None, 200);
        (v["status"] == "active").then_some(v)
    });
    let d = ev["participants"][0]["dispatch"]
        .as_str()
        .unwrap()
        .to_string();
    // The event is committed active with its dispatch ids first, and the
    // orders are created right after (again by the ticker if the node died
    // in between): for a moment the order is not there yet.
    eventually(20, || {
        let (s, v) = request_as(
            Some(&op),
            "GET",
            &format!("{}/api/v1/dispatches/{d}", node.url),
            None,
        );
        assert!(s == 200 || s == 404, "GET /api/v1/dispatches/{d}: {s} {v}");
        (v["dispatch"]["status"] == "allocated").then_some(())
    });
    let v = call(
        node,
        &op,
        "GET",
        "/api/v1/nodes/com-ams-02/capacity",
        None,
        200,
    );
    assert_eq!(v["committed_up_kw"], 10.0, "{v}");
    // A participant may not cancel; the utility may.
    call(node, &s.shop, "POST", "/api/v1/events/e2/cancel", None, 403);
    let ev = call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events/e2/cancel",
        None,
        200,
    );
    assert_eq!(ev["status"], "cancelled");
    let v = call(
        node,
        &op,
        "GET",
        &format!("/api/v1/dispatches/{d}"),
        None,
        200,
    );
    assert_eq!(v["dispatch"]["status"], "cancelled", "{v}");
    let v = call(
        node,
        &op,
        "GET",
        "/api/v1/nodes/com-ams-02/capacity",
        None,
        200,
    );
    assert_eq!(v["committed_up_kw"], 0.0, "{v}");
    // Cancelled events are not settled.
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events/e2/settlement",
        None,
        409,
    );
}

#[test]
fn the_notice_stream_sends_each_participant_its_own_notices() {
    use std::io::{BufRead, BufReader, Write};
    let s = setup("capacity", false);
    let node = &s.node;
    let addr = node.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "GET /api/v1/notices/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        s.shop
    )
    .unwrap();
    let mut lines = BufReader::new(conn).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.contains("200"), "{status}");
    // The stream is open once its headers arrived; now call an event.
    loop {
        let l = lines.next().unwrap().unwrap();
        if l.to_ascii_lowercase().starts_with("content-type") {
            assert!(l.contains("text/event-stream"), "{l}");
        }
        if l.is_empty() {
            break;
        }
    }
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events",
        Some(event("e3", 600, 60)),
        201,
    );
    let data = loop {
        let l = lines
            .next()
            .expect("stream ended")
            .expect("a line within 20 s");
        if let Some(d) = l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")) {
            break d.to_string();
        }
    };
    let n: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(n["account"], "fresh-foods");
    assert_eq!(n["event"]["id"], "e3");
    assert_eq!(n["event"]["grid"]["frequency_hz"], 49.7);
}

#[test]
fn a_site_counts_once_per_program_and_a_cancelled_enrollment_cannot_confirm() {
    let s = setup("capacity", false);
    let (node, op) = (&s.node, s.node.token.clone());
    // north-city holds com-ams-02, already enrolled by the shop.
    let agg = account(
        node,
        "agg",
        "aggregator",
        json!({"resources": ["north-city"]}),
    );
    let e = call(
        node,
        &agg,
        "POST",
        "/api/v1/enrollments",
        Some(json!({"program": "p", "resource": "north-city", "committed_kw": 5.0})),
        409,
    );
    assert!(e.to_string().contains("com-ams-02"), "{e}");
    // res-ams-01 alone shares nothing: accepted.
    call(
        node,
        &agg,
        "POST",
        "/api/v1/enrollments",
        Some(json!({"program": "p", "resource": "res-ams-01", "committed_kw": 2.0})),
        201,
    );
    call(
        node,
        &s.utility,
        "POST",
        "/api/v1/events",
        Some(event("e4", 600, 60)),
        201,
    );
    call(
        node,
        &s.shop,
        "POST",
        "/api/v1/enrollments/en/cancel",
        None,
        200,
    );
    let e = call(
        node,
        &s.shop,
        "POST",
        "/api/v1/events/e4/confirmations",
        Some(json!({"enrollment": "en", "answer": "confirm"})),
        409,
    );
    assert!(e.to_string().contains("left the program"), "{e}");
    // Fleet changes are in the ledger with their actor.
    let d = json!({"id": "d-agg", "target": "res-ams-01", "direction": "up", "power_kw": 1.0, "duration_s": 60});
    call(node, &agg, "POST", "/api/v1/dispatches", Some(d), 202);
    let entries = call(node, &op, "GET", "/api/v1/audit", None, 200);
    let found = entries
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "dispatch.create" && e["actor"] == "agg");
    assert!(found, "{entries}");
}
