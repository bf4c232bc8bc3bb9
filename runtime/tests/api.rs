//! The HTTP API, black-box: a real node on port 0 with its own data dir.
//!
//! Run: `cargo nextest run -p vpp-runtime --test api`

mod common;

use common::{eventually, repo, request, small_toml, TestNode};
use serde_json::{json, Value};
use vpp_domain::flex::der_envelope;
use vpp_domain::hierarchy_file::parse;
use vpp_domain::{DerState, Direction, FlexEnvelope};

fn put_small(n: &TestNode) {
    let (s, v) = request(
        "PUT",
        &format!("{}/api/v1/hierarchy", n.url),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ders"], 18);
}

fn post_json(n: &TestNode, path: &str, body: &str) -> (u16, Value) {
    request(
        "POST",
        &format!("{}{path}", n.url),
        Some(("application/json", body.as_bytes().to_vec())),
    )
}

fn get(n: &TestNode, path: &str) -> (u16, Value) {
    request("GET", &format!("{}{path}", n.url), None)
}

fn metric(n: &TestNode, name_and_labels: &str) -> u64 {
    let text = n.client().get_text("/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

#[test]
fn capacity_of_the_root_is_the_roll_up_of_every_der() {
    let n = TestNode::start();
    let (s, v) = get(&n, "/api/v1/nodes/vpp/capacity");
    assert_eq!(s, 409, "no hierarchy yet: {v}");
    assert_eq!(v["error"]["code"], "no_hierarchy");
    put_small(&n);

    let h = parse("small", &small_toml()).unwrap();
    let want = FlexEnvelope::sum(
        h.ders
            .iter()
            .map(|d| der_envelope(&d.rating, &DerState::nominal(&d.rating)))
            .collect::<Vec<_>>()
            .iter(),
    );
    let (s, v) = get(&n, "/api/v1/nodes/vpp/capacity");
    assert_eq!(s, 200, "{v}");
    let up = v["envelope"]["total"]["up_kw"].as_f64().unwrap();
    assert_eq!(
        (up * 1000.0).round() as u64,
        want.available_w(Direction::Up)
    );
    let down = v["envelope"]["total"]["down_kw"].as_f64().unwrap();
    assert_eq!(
        (down * 1000.0).round() as u64,
        want.available_w(Direction::Down)
    );
    assert_eq!(v["envelope"]["total"]["total"], 18);
    assert_eq!(v["envelope"]["by_kind"].as_object().unwrap().len(), 6);
    assert_eq!(v["children_total"], 2);

    // A fresh read agrees, and a DER answers for itself.
    let (_, f) = get(&n, "/api/v1/nodes/vpp/capacity?fresh=true");
    assert_eq!(
        f["envelope"]["total"]["up_kw"],
        v["envelope"]["total"]["up_kw"]
    );
    let (s, d) = get(&n, "/api/v1/nodes/res-ams-01-bat");
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["kind"], "der");
    assert_eq!(d["parent"], "res-ams-01");
    assert_eq!(d["capacity"]["state"]["soc_pct"], 50.0);
}

#[test]
fn der_state_changes_roll_up_and_bad_state_is_refused() {
    let n = TestNode::start();
    put_small(&n);
    let (_, before) = get(&n, "/api/v1/nodes/vpp/capacity");
    let before_up = before["envelope"]["total"]["up_kw"].as_f64().unwrap();
    // The industrial process load goes offline.
    let (s, v) = request(
        "PUT",
        &format!("{}/api/v1/nodes/ind-mst-06-pulper/state", n.url),
        Some(("application/json", br#"{"online": false}"#.to_vec())),
    );
    assert_eq!(s, 200, "{v}");
    let after_up = eventually(10, || {
        let (_, v) = get(&n, "/api/v1/nodes/vpp/capacity");
        let up = v["envelope"]["total"]["up_kw"].as_f64().unwrap();
        (up < before_up).then_some(up)
    });
    assert!(after_up < before_up);

    let bad: &[(&str, &str, u16)] = &[
        ("ind-mst-06-pulper", r#"{"power_kw": "lots"}"#, 400),
        ("ind-mst-06-pulper", r#"{"soc_pct": 140}"#, 400),
        ("ind-mst-06-pulper", r#"{"power_kw": 1e12}"#, 400),
        ("ind-mst-06-pulper", r#"{"colour": "red"}"#, 400),
        ("ind-mst-06-pulper", r#"{"seq": 1}"#, 400), // stale sequence number
        ("ind-mst-06-pulper", "not json", 400),
        ("ind-mst-06", r#"{"online": true}"#, 400), // a site, not a DER
        ("nobody", r#"{"online": true}"#, 404),
        ("bad%20id", r#"{"online": true}"#, 400),
    ];
    for (id, body, want) in bad {
        let (s, v) = request(
            "PUT",
            &format!("{}/api/v1/nodes/{id}/state", n.url),
            Some(("application/json", body.as_bytes().to_vec())),
        );
        assert_eq!(s, *want, "{id} {body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let (_, still) = get(&n, "/api/v1/nodes/vpp/capacity");
    assert_eq!(
        still["envelope"]["total"]["up_kw"].as_f64().unwrap(),
        after_up
    );
    assert!(metric(&n, "vpp_api_rejected_total{route=\"put_state\"") >= 1);
}

#[test]
fn bad_hierarchy_uploads_are_located_and_change_nothing() {
    let n = TestNode::start();
    put_small(&n);
    let (_, before) = get(&n, "/api/v1/hierarchy");
    for entry in std::fs::read_dir(repo().join("examples/bad")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read(&path).unwrap();
        let (s, v) = request(
            "PUT",
            &format!("{}/api/v1/hierarchy", n.url),
            Some(("application/toml", text)),
        );
        assert_eq!(s, 422, "{}: {v}", path.display());
        assert_eq!(v["error"]["code"], "invalid_hierarchy");
        let p = &v["error"]["problems"][0];
        assert!(
            p["line"].as_u64().is_some(),
            "{}: no line in {v}",
            path.display()
        );
    }
    for body in [&b""[..], &b"\xff\xfe"[..], &b"[[site]]\nid = 3\n"[..]] {
        let (s, v) = request(
            "PUT",
            &format!("{}/api/v1/hierarchy", n.url),
            Some(("application/toml", body.to_vec())),
        );
        assert!(s == 400 || s == 422, "{s} {v}");
    }
    let (_, after) = get(&n, "/api/v1/hierarchy");
    assert_eq!(
        before, after,
        "a rejected upload changed the stored hierarchy"
    );
    assert!(metric(&n, "vpp_api_rejected_total{route=\"put_hierarchy\"") >= 7);
}

#[test]
fn nodes_can_be_added_and_removed() {
    let n = TestNode::start();
    put_small(&n);
    let fragment = r#"
[[site]]
id = "res-new-07"
parent = "north-rural"
lat = 53.0
lon = 6.0
zone = "NL-north"
feeder = "GRN-F01"
segment = "residential"
owner = "zoe"

  [[site.der]]
  id = "res-new-07-bat"
  kind = "battery"
  max_import_kw = 3.0
  max_export_kw = 3.0
  energy_kwh = 10.0
"#;
    let (s, v) = request(
        "POST",
        &format!("{}/api/v1/hierarchy/nodes", n.url),
        Some(("application/toml", fragment.as_bytes().to_vec())),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["added"], 2);
    let (_, c) = get(&n, "/api/v1/nodes/vpp/capacity");
    assert_eq!(c["envelope"]["total"]["total"], 19);

    // The same fragment again: duplicate ids, located in the fragment.
    let (s, v) = request(
        "POST",
        &format!("{}/api/v1/hierarchy/nodes", n.url),
        Some(("application/toml", fragment.as_bytes().to_vec())),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["problems"][0]["line"], 3, "{v}");

    let (_, north) = get(&n, "/api/v1/nodes/north/capacity");
    let north_ders = north["envelope"]["total"]["total"].as_u64().unwrap();
    let (s, v) = request(
        "DELETE",
        &format!("{}/api/v1/hierarchy/nodes/north", n.url),
        None,
    );
    assert_eq!(s, 200, "{v}");
    // north, north-city, north-rural; four sites; their DERs.
    assert_eq!(v["removed"].as_u64().unwrap(), 3 + 4 + north_ders);
    let (s, _) = get(&n, "/api/v1/nodes/res-ams-01/capacity");
    assert_eq!(s, 404);
    let (s, v) = request(
        "DELETE",
        &format!("{}/api/v1/hierarchy/nodes/vpp", n.url),
        None,
    );
    assert_eq!(s, 400, "{v}");
}

#[test]
fn dispatch_create_split_get_cancel() {
    let n = TestNode::start();
    put_small(&n);
    let (_, cap) = get(&n, "/api/v1/nodes/vpp/capacity");
    let up = cap["envelope"]["total"]["up_kw"].as_f64().unwrap();
    let want = (up / 2.0 * 1000.0).round() / 1000.0;
    let body = json!({"id": "evening-peak", "target": "vpp", "direction": "up",
                      "power_kw": want, "duration_s": 7200})
    .to_string();
    let (s, v) = post_json(&n, "/api/v1/dispatches", &body);
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "accepted");
    // Same id, same terms: idempotent. Other terms: conflict.
    let (s, v) = post_json(&n, "/api/v1/dispatches", &body);
    assert_eq!(s, 200, "{v}");
    let other = json!({"id": "evening-peak", "target": "vpp", "direction": "down",
                       "power_kw": 1.0, "duration_s": 60})
    .to_string();
    let (s, v) = post_json(&n, "/api/v1/dispatches", &other);
    assert_eq!(s, 409, "{v}");

    let done = eventually(20, || {
        let (_, v) = get(&n, "/api/v1/dispatches/evening-peak?depth=10");
        (v["dispatch"]["status"] == "allocated").then_some(v)
    });
    let d = &done["dispatch"];
    assert_eq!(d["allocated_kw"].as_f64().unwrap(), want);
    assert_eq!(d["shortfall_kw"], 0.0);
    // The tree's leaves add up to the order.
    fn leaves(a: &Value) -> f64 {
        let kids = a["children"].as_array().cloned().unwrap_or_default();
        if kids.is_empty() {
            a["allocated_kw"].as_f64().unwrap()
        } else {
            kids.iter().map(leaves).sum()
        }
    }
    let total = leaves(&done["allocation"]);
    assert!((total - want).abs() < 1e-6, "{total} vs {want}");

    let (_, cap) = get(&n, "/api/v1/nodes/vpp/capacity");
    assert_eq!(cap["committed_up_kw"].as_f64().unwrap(), want);

    let (_, list) = get(&n, "/api/v1/dispatches");
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (s, v) = post_json(&n, "/api/v1/dispatches/evening-peak/cancel", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    let (_, cap) = get(&n, "/api/v1/nodes/vpp/capacity");
    assert_eq!(cap["committed_up_kw"], 0.0);
    let (_, bat) = get(&n, "/api/v1/nodes/res-ams-01-bat/capacity");
    assert!(bat.get("setpoints").is_none(), "{bat}");
}

#[test]
fn bad_dispatch_bodies_get_clear_errors_and_store_nothing() {
    let n = TestNode::start();
    put_small(&n);
    let cases: &[(&str, u16, &str)] = &[
        ("{", 400, "dispatch body"),
        ("[]", 400, "dispatch body"),
        (
            r#"{"target":"vpp","direction":"up","power_kw":5}"#,
            400,
            "duration_s",
        ),
        (
            r#"{"target":"vpp","direction":"up","power_kw":-5,"duration_s":60}"#,
            400,
            "power_kw",
        ),
        (
            r#"{"target":"vpp","direction":"up","power_kw":0,"duration_s":60}"#,
            400,
            "power_kw",
        ),
        (
            r#"{"target":"vpp","direction":"up","power_kw":5,"duration_s":0}"#,
            400,
            "duration_s",
        ),
        (
            r#"{"target":"vpp","direction":"up","power_kw":5,"duration_s":99999999}"#,
            400,
            "duration_s",
        ),
        (
            r#"{"target":"vpp","direction":"left","power_kw":5,"duration_s":60}"#,
            400,
            "direction",
        ),
        (
            r#"{"target":"vpp","direction":"up","power_kw":5,"duration_s":60,"extra":1}"#,
            400,
            "extra",
        ),
        (
            r#"{"target":"nowhere","direction":"up","power_kw":5,"duration_s":60}"#,
            404,
            "nowhere",
        ),
        (
            r#"{"target":"res-ams-01-pv","direction":"up","power_kw":5,"duration_s":60}"#,
            400,
            "der",
        ),
        (
            r#"{"target":"a/b","direction":"up","power_kw":5,"duration_s":60}"#,
            400,
            "target",
        ),
        (
            r#"{"id":"x y","target":"vpp","direction":"up","power_kw":5,"duration_s":60}"#,
            400,
            "id",
        ),
    ];
    for (body, want, mention) in cases {
        let (s, v) = post_json(&n, "/api/v1/dispatches", body);
        assert_eq!(s, *want, "{body}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains(mention),
            "{body}: message {m:?} should mention {mention:?}"
        );
    }
    let (_, list) = get(&n, "/api/v1/dispatches");
    assert_eq!(list, json!([]), "nothing may be stored");
    assert!(
        metric(&n, "vpp_api_rejected_total{route=\"create_dispatch\"") >= cases.len() as u64 - 3
    );
    let (s, v) = get(&n, "/api/v1/dispatches/none");
    assert_eq!(s, 404, "{v}");
    let (s, v) = get(&n, "/api/v1/no/such/route");
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
}

#[test]
fn deep_allocation_trees_are_bounded() {
    let n = TestNode::start();
    let large = std::fs::read(repo().join("examples/large.toml")).unwrap();
    let (s, v) = request(
        "PUT",
        &format!("{}/api/v1/hierarchy", n.url),
        Some(("application/toml", large)),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = post_json(
        &n,
        "/api/v1/dispatches",
        r#"{"id":"big","target":"vpp","direction":"up","power_kw":500,"duration_s":600}"#,
    );
    assert_eq!(s, 202, "{v}");
    let done = eventually(30, || {
        let (_, v) = get(&n, "/api/v1/dispatches/big?depth=10");
        (v["dispatch"]["status"] == "allocated").then_some(v)
    });
    fn count(a: &Value) -> usize {
        1 + a["children"]
            .as_array()
            .map(|c| c.iter().map(count).sum())
            .unwrap_or(0)
    }
    let nodes = count(&done["allocation"]);
    assert!(
        nodes <= vpp_runtime::node::MAX_TREE_NODES,
        "{nodes} nodes in one answer"
    );
    assert!(nodes > 100, "the tree is expanded: {nodes}");
    assert_eq!(done["allocation"]["allocated_kw"], 500.0);
    // Breadth-first: every region is shown even though the budget ran out.
    assert_eq!(
        done["allocation"]["children"].as_array().unwrap().len() as u64,
        done["allocation"]["children_with_share"].as_u64().unwrap()
    );
}

#[test]
fn errors_axum_raises_are_json_counted_and_change_nothing() {
    let n = TestNode::start_with(tempfile::tempdir().unwrap(), |c| c.api.max_body_mb = 1);
    put_small(&n);
    let (_, before) = get(&n, "/api/v1/hierarchy");
    let big = vec![b'a'; 2 * 1024 * 1024];
    let (s, v) = common::request_oversized(&format!("{}/api/v1/hierarchy", n.url), big);
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api.max_body_mb (1 MiB)"));
    let (s, v) = request("DELETE", &format!("{}/api/v1/dispatches", n.url), None);
    assert_eq!(s, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed");
    let (s, v) = get(&n, "/api/v1/nodes/%FF/capacity");
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    let (_, after) = get(&n, "/api/v1/hierarchy");
    assert_eq!(before, after);
    assert!(metric(&n, "vpp_api_rejected_total{route=\"http\"") >= 3);
}

#[test]
fn metrics_show_the_write_behind_counters() {
    let n = TestNode::start();
    let text = n.client().get_text("/metrics").unwrap();
    for name in [
        "vpp_store_write_behind_records_total",
        "vpp_store_write_behind_deferred_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing from /metrics:\n{text}"
        );
    }
}
