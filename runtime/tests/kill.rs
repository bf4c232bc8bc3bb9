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
