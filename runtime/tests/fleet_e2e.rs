//! End to end with the simulated fleet over a real broker: dispatch → device
//! setpoints → acks → telemetry shows the response → the root's delivered
//! figure moves; a refusing device's share is re-split. Once over the
//! embedded broker, once over Mosquitto (external broker mode), and through
//! a Mosquitto restart in the middle of a dispatch.
//!
//! Run: `cargo nextest run -p vpp-runtime --test fleet_e2e` (needs the
//! `mosquitto` binary for the external-broker tests).

mod common;

use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::{eventually, repo, TestNode};
use serde_json::{json, Value};
use vpp_runtime::config::BrokerChoice;
use vpp_simulator::{devices_from_hierarchy, SimConfig, SimHandle};

/// The battery at res-ams-01 refuses every setpoint.
const REFUSER: &str = "res-ams-01-bat";

fn small() -> vpp_domain::Hierarchy {
    vpp_domain::hierarchy_file::load(&repo().join("examples/small.toml")).unwrap()
}

fn node(tune: impl FnOnce(&mut vpp_runtime::config::NodeConfig)) -> TestNode {
    let node = TestNode::start_serving(tempfile::tempdir().unwrap(), tune);
    let text = std::fs::read_to_string(repo().join("examples/small.toml")).unwrap();
    node.client().put_text("/api/v1/hierarchy", text).unwrap();
    node
}

fn start_sim(rt: &tokio::runtime::Runtime, broker: &str, prefix: &str) -> SimHandle {
    start_sim_with(rt, broker, prefix, false)
}

fn start_sim_with(
    rt: &tokio::runtime::Runtime,
    broker: &str,
    prefix: &str,
    site_batch: bool,
) -> SimHandle {
    let mut config = SimConfig {
        broker: broker.to_string(),
        connections: 3,
        telemetry_interval: Duration::from_millis(300),
        speed: 60.0,
        start_hour: Some(12.0),
        client_prefix: prefix.to_string(),
        site_batch,
        ..SimConfig::default()
    };
    config.faults.refusing_ids = vec![REFUSER.to_string()];
    rt.block_on(vpp_simulator::start(
        config,
        devices_from_hierarchy(&small()),
    ))
    .expect("simulator starts")
}

fn view(node: &TestNode, id: &str) -> Value {
    node.client().get(&format!("/api/v1/nodes/{id}")).unwrap()["capacity"].clone()
}

fn response(node: &TestNode, id: &str) -> Value {
    view(node, id)["envelope"]["response"].clone()
}

/// Every device has reported in: each DER's state carries a sequence number.
fn wait_reported(node: &TestNode) {
    let ders: Vec<String> = small().ders.iter().map(|d| d.id.to_string()).collect();
    eventually(30, || {
        ders.iter()
            .all(|d| view(node, d)["state"]["seq"].as_u64() > Some(0))
            .then_some(())
    });
}

fn dispatch(node: &TestNode, id: &str, target: &str, kw: f64) {
    let order = json!({"id":id,"target":target,"direction":"up","power_kw":kw,"duration_s":900});
    node.client()
        .post_json("/api/v1/dispatches", &order)
        .expect("dispatch accepted");
}

/// The closed loop through devices, checked at the root and at the refuser.
fn closed_loop(node: &TestNode) {
    wait_reported(node);
    let before = response(node, "vpp");
    assert_eq!(before["commanded"], 0);
    // To Amsterdam (pro rata): the refusing battery gets a share, its site
    // cannot place it elsewhere, the supermarket takes it.
    dispatch(node, "e2e-1", "north-city", 8.0);
    // Every device holding a setpoint acknowledges it.
    // (Once the refuser's share has been re-split: acked_kw reaches 8.)
    eventually(30, || {
        let r = response(node, "vpp");
        let n = r["commanded"].as_u64()?;
        let all = n > 0 && r["acked"].as_u64() == Some(n);
        (all && r["acked_kw"].as_f64() == Some(8.0)).then_some(r)
    });
    // Telemetry shows the response: the root's delivered figure moves.
    eventually(30, || {
        let d = response(node, "vpp")["delivered_kw"].as_f64()?;
        (d > 4.0).then_some(())
    });
    // The refusing battery holds nothing; its share went elsewhere.
    let refuser = view(node, REFUSER);
    assert!(
        refuser["setpoints"].as_array().is_none_or(|s| s.is_empty()),
        "{refuser}"
    );
    let rec = node
        .client()
        .get("/api/v1/dispatches/e2e-1?depth=5")
        .unwrap();
    let text = rec.to_string();
    assert!(
        text.contains("fault injection") && text.contains(REFUSER),
        "refusal recorded with the device's reason: {text}"
    );
    let alloc = &rec["allocation"];
    assert_eq!(alloc["allocated_kw"].as_f64(), Some(8.0), "{alloc}");
}

#[test]
fn dispatch_reaches_simulated_devices_over_the_embedded_broker() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = node(|_| {});
    let sim = start_sim(&rt, node.mqtt.as_deref().unwrap(), "e2e-embedded");
    closed_loop(&node);
    rt.block_on(sim.stop());
}

#[test]
fn the_loop_closes_when_gateways_send_site_batches() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = node(|c| c.mqtt.site_documents = true);
    let sim = start_sim_with(&rt, node.mqtt.as_deref().unwrap(), "e2e-batch", true);
    // Every message travels per site: telemetry, acks (the refuser's
    // rejection among them) and reported as site batches, desired
    // documents as site documents.
    closed_loop(&node);
    let st = sim.stats();
    assert!(st.batches_sent > 0 && st.acks_rejected > 0, "{st:?}");
    let text = node.client().get_text("/metrics").unwrap();
    let batches: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("vpp_mqtt_site_batches_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("vpp_mqtt_site_batches_total");
    assert!(batches > 0, "the node received no site batch");
    // The root knows how fresh its roll-up is.
    let root = view(&node, "vpp");
    assert!(root["staleness_ms"].as_u64().is_some(), "{root}");
    rt.block_on(sim.stop());
}

#[test]
fn dispatch_reaches_simulated_devices_through_mosquitto() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = Mosquitto::start();
    let url = broker.url();
    let node = node(|c| c.mqtt.broker = url.parse::<BrokerChoice>().unwrap());
    let sim = start_sim(
        &rt,
        &format!("127.0.0.1:{}", broker.port()),
        "e2e-mosquitto",
    );
    closed_loop(&node);
    rt.block_on(sim.stop());
}

#[test]
fn devices_converge_after_a_broker_restart_mid_dispatch() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut broker = Mosquitto::start();
    let url = broker.url();
    let node = node(|c| c.mqtt.broker = url.parse::<BrokerChoice>().unwrap());
    let sim = start_sim(&rt, &format!("127.0.0.1:{}", broker.port()), "e2e-restart");
    wait_reported(&node);
    dispatch(&node, "before-restart", "vpp", 6.0);
    eventually(30, || {
        let r = response(&node, "vpp");
        (r["acked_kw"].as_f64() == Some(6.0)).then_some(())
    });
    // The broker dies (losing every retained message) while a second order
    // is accepted; it is placed and its documents wait for the broker.
    broker.kill();
    dispatch(&node, "during-outage", "vpp", 4.0);
    let rec = node
        .client()
        .get("/api/v1/dispatches/during-outage")
        .unwrap();
    assert_ne!(rec["dispatch"]["status"], "failed", "{rec}");
    broker.restart();
    // Every device reaches the latest desired version: the runtime
    // republishes on reconnect, devices ack and report it.
    let ders: Vec<String> = small().ders.iter().map(|d| d.id.to_string()).collect();
    eventually(45, || {
        let r = response(&node, "vpp");
        if r["acked_kw"].as_f64() != Some(10.0) {
            return None;
        }
        ders.iter()
            .all(|d| {
                let dev = &view(&node, d)["device"];
                match dev["desired_version"].as_u64() {
                    Some(v) => dev["reported_version"].as_u64() == Some(v),
                    None => true,
                }
            })
            .then_some(())
    });
    for id in ["before-restart", "during-outage"] {
        let rec = node
            .client()
            .get(&format!("/api/v1/dispatches/{id}"))
            .unwrap();
        assert_eq!(rec["dispatch"]["status"], "allocated", "{id}: {rec}");
    }
    rt.block_on(sim.stop());
}
