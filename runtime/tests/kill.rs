//! Durability under SIGKILL: what the node acknowledged is in the store when
//! it is reopened, and a restarted node finishes what it had accepted.
//! (ARCHITECTURE.md, "What is durable when".)
//!
//! Run: `cargo nextest run -p vpp-runtime --test kill`

mod common;

use common::process::NodeProcess;
use common::{eventually, request, small_toml};
use serde_json::json;
use vpp_domain::hierarchy_file::parse;
use vpp_domain::{DispatchId, DispatchStatus, Hierarchy};
use vpp_store::Store;

fn sorted(mut h: Hierarchy) -> Hierarchy {
    h.virtual_ders.sort_by(|a, b| a.id.cmp(&b.id));
    h.sites.sort_by(|a, b| a.id.cmp(&b.id));
    h.ders.sort_by(|a, b| a.id.cmp(&b.id));
    h
}

#[test]
fn sigkill_right_after_acks_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path());
    let (s, v) = request(
        "PUT",
        &format!("{}/api/v1/hierarchy", node.url),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(s, 200, "{v}");
    let order = json!({"id": "acked", "target": "north", "direction": "up",
                       "power_kw": 12.5, "duration_s": 3600});
    let (s, v) = request(
        "POST",
        &format!("{}/api/v1/dispatches", node.url),
        Some(("application/json", order.to_string().into_bytes())),
    );
    assert_eq!(s, 202, "{v}");
    node.kill9(); // the very moment the acknowledgement arrived

    {
        let store = Store::open(dir.path()).expect("store reopens after SIGKILL");
        let want = sorted(parse("small", &small_toml()).unwrap());
        assert_eq!(sorted(store.load_hierarchy().unwrap()), want);
        let rec = store
            .get_dispatch(&DispatchId::new("acked").unwrap())
            .unwrap()
            .expect("the acknowledged order is in the journal");
        assert_eq!(rec.order.power_w, 12_500);
        assert_eq!(rec.order.target.as_str(), "north");
        assert_ne!(rec.status, DispatchStatus::Cancelled);
    }

    // A restarted node rebuilds the tree and finishes (or keeps) the split.
    let node = NodeProcess::start(dir.path());
    let done = eventually(30, || {
        let (_, v) = request(
            "GET",
            &format!("{}/api/v1/dispatches/acked?depth=10", node.url),
            None,
        );
        (v["dispatch"]["status"] == "allocated").then_some(v)
    });
    assert_eq!(done["dispatch"]["allocated_kw"], 12.5, "{done}");
    let (_, cap) = request(
        "GET",
        &format!("{}/api/v1/nodes/north/capacity", node.url),
        None,
    );
    assert_eq!(cap["committed_up_kw"], 12.5, "{cap}");
    assert_eq!(cap["envelope"]["total"]["total"], 9, "{cap}");
}

#[test]
fn sigkill_after_split_keeps_setpoints_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path());
    let url = node.url.clone();
    let put = request(
        "PUT",
        &format!("{url}/api/v1/hierarchy"),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(put.0, 200);
    // A DER state set before the orders: persisted in its site's record,
    // which is flushed before any order is marked allocated.
    let (s, v) = request(
        "PUT",
        &format!("{url}/api/v1/nodes/res-ams-01-bat/state"),
        Some(("application/json", br#"{"soc_pct": 77.5}"#.to_vec())),
    );
    assert_eq!(s, 200, "{v}");
    for (id, kw) in [("keep", 5.0), ("drop", 3.0)] {
        let order = json!({"id": id, "target": "vpp", "direction": "up", "power_kw": kw, "duration_s": 3600});
        let (s, v) = request(
            "POST",
            &format!("{url}/api/v1/dispatches"),
            Some(("application/json", order.to_string().into_bytes())),
        );
        assert_eq!(s, 202, "{v}");
        eventually(20, || {
            let (_, v) = request("GET", &format!("{url}/api/v1/dispatches/{id}"), None);
            (v["dispatch"]["status"] == "allocated").then_some(())
        });
    }
    let (s, v) = request(
        "POST",
        &format!("{url}/api/v1/dispatches/drop/cancel"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    node.kill9();

    let node = NodeProcess::start(dir.path());
    let (_, cap) = request(
        "GET",
        &format!("{}/api/v1/nodes/vpp/capacity", node.url),
        None,
    );
    assert_eq!(
        cap["committed_up_kw"], 5.0,
        "only the kept order is committed: {cap}"
    );
    let (_, d) = request("GET", &format!("{}/api/v1/dispatches/drop", node.url), None);
    assert_eq!(d["dispatch"]["status"], "cancelled");
    let (_, bat) = request(
        "GET",
        &format!("{}/api/v1/nodes/res-ams-01-bat/capacity", node.url),
        None,
    );
    assert_eq!(bat["state"]["soc_pct"], 77.5, "{bat}");
}

/// Telemetry-only state is written at most every `store.telemetry_persist_s`
/// (here 1 s): with the first message after that window, or at the site's
/// next check for silent devices (`mqtt.offline_after_s`, here 2 s). Both
/// survive a SIGKILL once those windows (plus the write-behind's) passed.
#[test]
fn sigkill_keeps_telemetry_state_written_within_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vpp.toml");
    std::fs::write(
        &config,
        "[store]\ntelemetry_persist_s = 1\n[mqtt]\noffline_after_s = 2\n",
    )
    .unwrap();
    let node = NodeProcess::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    let url = node.url.clone();
    let put = request(
        "PUT",
        &format!("{url}/api/v1/hierarchy"),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(put.0, 200);
    let mqtt = node
        .mqtt
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the node printed its broker");
    let (host, port) = mqtt.rsplit_once(':').unwrap();
    let publish = |der: &str, seq: u64| {
        let topic =
            vpp_protocol::topic::der_topic("res-ams-01", der, vpp_protocol::Channel::Telemetry);
        let t = json!({"v":1,"seq":seq,"ts":seq,"power_w":seq,"available":true});
        let st = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                host,
                "-p",
                port,
                "-q",
                "1",
                "-t",
                &topic,
                "-m",
                &t.to_string(),
            ])
            .status()
            .expect("mosquitto_pub runs (apt-get install mosquitto-clients)");
        assert!(st.success());
    };
    // The battery keeps talking: 11 waits, 12 comes after the window.
    publish("res-ams-01-bat", 10);
    publish("res-ams-01-bat", 11);
    // The PV says one thing and falls silent: only the sweep writes it.
    publish("res-ams-01-pv", 20);
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    publish("res-ams-01-bat", 12);
    eventually(10, || {
        let (_, v) = request("GET", &format!("{url}/api/v1/nodes/res-ams-01-bat"), None);
        (v["capacity"]["state"]["seq"] == 12).then_some(())
    });
    // The sweep (2 s after the first reading), then write-behind and fsync
    // (200 + 500 ms), with room to spare.
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    node.kill9();

    let node = NodeProcess::start(dir.path());
    for (der, seq) in [("res-ams-01-bat", 12), ("res-ams-01-pv", 20)] {
        let (_, v) = request(
            "GET",
            &format!("{}/api/v1/nodes/{der}/capacity", node.url),
            None,
        );
        assert_eq!(v["state"]["seq"], seq, "{der}: {v}");
    }
}

/// A JSON request as `token` that must answer `want`.
fn post_as(token: &str, url: &str, body: serde_json::Value, want: u16) -> serde_json::Value {
    let (s, v) = common::request_as(
        Some(token),
        "POST",
        url,
        Some(("application/json", body.to_string().into_bytes())),
    );
    assert_eq!(s, want, "POST {url}: {v}");
    v
}

#[test]
fn sigkill_right_after_program_steps_are_acknowledged_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path());
    let url = node.url.clone();
    let op = common::operator_token(dir.path());
    let (s, _) = request(
        "PUT",
        &format!("{url}/api/v1/hierarchy"),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(s, 200);
    let acct = |id: &str, role: &str, extra: serde_json::Value| {
        let mut b = json!({"id": id, "name": id, "role": role});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        post_as(&op, &format!("{url}/api/v1/accounts"), b, 201);
        post_as(
            &op,
            &format!("{url}/api/v1/accounts/{id}/tokens"),
            json!({}),
            201,
        )["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let utility = acct("u", "utility", json!({"jurisdiction": ["NL-north"]}));
    let shop = acct("p", "participant", json!({"resources": ["com-ams-02"]}));
    post_as(
        &op,
        &format!("{url}/api/v1/accounts/u/verify"),
        json!({}),
        200,
    );
    let program = json!({
        "id": "prog", "name": "P", "kind": "capacity", "zones": ["NL-north"],
        "terms": {"currency": "EUR", "capacity_per_kw": "1", "energy_per_kwh": "0.1"},
        "notice_s": 0, "max_events_per_season": 5, "max_hours_per_season": 5,
        "max_event_duration_s": 3600, "baseline": {"method": "x_of_y", "x": 3, "y": 5}
    });
    post_as(&utility, &format!("{url}/api/v1/programs"), program, 201);
    let en = json!({"id": "en", "program": "prog", "resource": "com-ams-02", "committed_kw": 10.0});
    post_as(&shop, &format!("{url}/api/v1/enrollments"), en, 201);
    let ev = json!({"id": "ev", "program": "prog", "zones": ["NL-north"], "start_in_s": 3000,
                    "duration_s": 600, "requested_kw": 10.0});
    post_as(&utility, &format!("{url}/api/v1/events"), ev, 201);
    let conf = json!({"enrollment": "en", "answer": "confirm", "confidence_pct": 80});
    post_as(
        &shop,
        &format!("{url}/api/v1/events/ev/confirmations"),
        conf,
        200,
    );
    node.kill9(); // the moment the last acknowledgement arrived

    {
        let store = Store::open(dir.path()).expect("store reopens after SIGKILL");
        for key in ["account/u", "account/p", "program/prog", "enrollment/en"] {
            let v: Option<serde_json::Value> = store.registry_get(key).unwrap();
            assert!(v.is_some(), "{key} lost");
        }
        let ev: serde_json::Value = store.registry_get("event/ev").unwrap().unwrap();
        assert_eq!(ev["status"], "notified");
        assert_eq!(ev["participants"][0]["status"], "confirmed", "{ev}");
        assert_eq!(ev["participants"][0]["confidence_pct"], 80);
        let report = store.verify_ledger().unwrap();
        assert_eq!(report.first_bad, None);
        let actions: Vec<String> = store
            .ledger_entries(1, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions.last().map(String::as_str), Some("event.confirm"));
    }
    // A restarted node serves them, and the tokens still work.
    let node = NodeProcess::start(dir.path());
    let (s, v) = common::request_as(
        Some(&shop),
        "GET",
        &format!("{}/api/v1/events/ev", node.url),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["participants"][0]["status"], "confirmed");
}
