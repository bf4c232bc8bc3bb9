//! Devices over MQTT, black-box, against a node started as `vpp serve` does:
//! a real MQTT client that is not ours (`mosquitto_pub` / `mosquitto_sub`)
//! acts as a device, and 10,000 hostile publishes are each counted under a
//! reason while a valid device keeps working.
//!
//! Run: `cargo nextest run -p vpp-runtime --test devices` (needs the
//! `mosquitto-clients` package for the first test).

mod common;

use std::process::{Command, Stdio};

use common::{eventually, repo, TestNode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use vpp_protocol::topic::{der_topic, site_topic, status_topic};
use vpp_protocol::Channel;

const SITE: &str = "res-ams-01";
const DER: &str = "res-ams-01-bat";

fn node_with_small_fleet() -> TestNode {
    node_with_small_fleet_tuned(|_| {})
}

fn node_with_small_fleet_tuned(
    tune: impl FnOnce(&mut vpp_runtime::config::NodeConfig),
) -> TestNode {
    let node = TestNode::start_serving(tempfile::tempdir().unwrap(), tune);
    let text = std::fs::read_to_string(repo().join("examples/small.toml")).unwrap();
    node.client()
        .put_text("/api/v1/hierarchy", text)
        .expect("hierarchy imported");
    node
}

fn host_port(node: &TestNode) -> (String, String) {
    let addr = node.mqtt.clone().expect("node has a broker");
    let (h, p) = addr.rsplit_once(':').unwrap();
    (h.to_string(), p.to_string())
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found: install the mosquitto-clients package (apt-get install mosquitto-clients)"
    );
    Command::new(name)
}

fn mosquitto_pub(node: &TestNode, topic: &str, payload: &str) {
    let (h, p) = host_port(node);
    let st = tool("mosquitto_pub")
        .args(["-h", &h, "-p", &p, "-q", "1", "-t", topic, "-m", payload])
        .status()
        .unwrap();
    assert!(st.success(), "mosquitto_pub {topic} failed");
}

fn der_view(node: &TestNode, id: &str) -> Value {
    node.client().get(&format!("/api/v1/nodes/{id}")).unwrap()
}

fn now_ms() -> u64 {
    vpp_actors::now_ms()
}

#[test]
fn a_mosquitto_client_acts_as_a_device() {
    let node = node_with_small_fleet();
    let (h, p) = host_port(&node);
    // The device listens for its desired document (retained: no race).
    let desired = der_topic(SITE, DER, Channel::Desired);
    let sub = tool("mosquitto_sub")
        .args([
            "-h", &h, "-p", &p, "-q", "1", "-t", &desired, "-C", "1", "-W", "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // It reports in: the DER's state is the device's.
    let telemetry = der_topic(SITE, DER, Channel::Telemetry);
    let t = json!({"v":1,"seq":1,"ts":now_ms(),"power_w":0,"soc_pct":60.0,"available":true});
    mosquitto_pub(&node, &telemetry, &t.to_string());
    eventually(20, || {
        let v = der_view(&node, DER);
        (v["capacity"]["state"]["seq"] == 1).then_some(())
    });

    // A dispatch to its site reaches it as a desired document.
    let order = json!({"id":"mq-1","target":SITE,"direction":"up","power_kw":2.0,"duration_s":900});
    node.client()
        .post_json("/api/v1/dispatches", &order)
        .expect("dispatch accepted");
    let out = sub.wait_with_output().unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("desired document received");
    let version = doc["version"].as_u64().expect("version");
    let sp = doc["setpoints"].as_array().expect("setpoints");
    assert!(sp.iter().any(|s| s["dispatch"] == "mq-1"), "{doc}");
    let mine: u64 = sp.iter().map(|s| s["power_w"].as_u64().unwrap()).sum();

    // It acknowledges, applies, and its telemetry shows the move.
    let ack = der_topic(SITE, DER, Channel::Ack);
    mosquitto_pub(
        &node,
        &ack,
        &json!({"v":1,"version":version,"status":"accepted"}).to_string(),
    );
    mosquitto_pub(
        &node,
        &ack,
        &json!({"v":1,"version":version,"status":"applied"}).to_string(),
    );
    let t = json!({"v":1,"seq":2,"ts":now_ms(),"power_w":-(mine as i64),"soc_pct":59.0,"available":true});
    mosquitto_pub(&node, &telemetry, &t.to_string());
    let site = eventually(20, || {
        let v = der_view(&node, SITE);
        let r = &v["capacity"]["envelope"]["response"];
        (r["applied"] == 1 && r["delivered_kw"].as_f64() > Some(0.0)).then_some(v)
    });
    let r = &site["capacity"]["envelope"]["response"];
    assert_eq!(
        r["delivered_kw"].as_f64(),
        Some(mine as f64 / 1000.0),
        "{r}"
    );
    let der = der_view(&node, DER);
    assert_eq!(der["capacity"]["device"]["reported_version"], version);
}

#[test]
fn a_gateway_sends_site_batches_and_the_root_knows_how_fresh_it_is() {
    let node = node_with_small_fleet();
    let read = |path: &str| node.client().get_text(path).unwrap();
    let before = read("/metrics");
    let (t1, t2) = (now_ms() - 5, now_ms());
    // One message for the site: two good readings, one for a DER of
    // another site, one out of range.
    let batch = json!({"v":1,"items":[
        {"der":"res-ams-01-pv","msg":{"v":1,"seq":7,"ts":t1,"power_w":-2500,"available":true}},
        {"der":DER,"msg":{"v":1,"seq":8,"ts":t2,"power_w":1200,"soc_pct":40.0,"available":true}},
        {"der":"com-ams-02-pv","msg":{"v":1,"seq":9,"ts":t2,"power_w":0,"available":true}},
        {"der":DER,"msg":{"v":1,"seq":0,"ts":t2,"power_w":0,"available":true}}
    ]});
    mosquitto_pub(
        &node,
        &site_topic(SITE, Channel::Telemetry),
        &batch.to_string(),
    );
    eventually(20, || {
        let pv = der_view(&node, "res-ams-01-pv");
        let bat = der_view(&node, DER);
        (pv["capacity"]["state"]["seq"] == 7 && bat["capacity"]["state"]["seq"] == 8).then_some(())
    });
    let bat = der_view(&node, DER);
    assert_eq!(bat["capacity"]["state"]["power_kw"], 1.2);
    // The DER of the other site was not touched.
    let other = der_view(&node, "com-ams-02-pv");
    assert_ne!(other["capacity"]["state"]["seq"], 9);

    let after = read("/metrics");
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(delta("vpp_mqtt_site_batches_total"), 1);
    assert_eq!(delta("vpp_mqtt_accepted_total"), 2);
    assert_eq!(
        delta("vpp_mqtt_rejected_total{reason=\"unknown_device\"}"),
        1
    );
    assert_eq!(delta("vpp_mqtt_rejected_total{reason=\"out_of_range\"}"), 1);

    // The newest reading reaches the root: it knows how fresh its roll-up is.
    let root = eventually(20, || {
        let v = node.client().get("/api/v1/nodes/vpp/capacity").ok()?;
        (v["envelope"]["telemetry_ms"] == t2).then_some(v)
    });
    let staleness = root["staleness_ms"].as_u64().expect("staleness_ms");
    assert_eq!(staleness, root["as_of_ms"].as_u64().unwrap() - t2);

    // A batch that does not decode is one rejection, of the whole batch.
    mosquitto_pub(
        &node,
        &site_topic(SITE, Channel::Ack),
        "{\"v\":1,\"items\":7}",
    );
    eventually(20, || {
        let now = read("/metrics");
        let d = |name: &str| metric(&now, name) - metric(&after, name);
        (d("vpp_mqtt_rejected_total{reason=\"malformed\"}") == 1).then_some(())
    });
}

#[test]
fn with_site_documents_a_gateway_gets_and_answers_one_message_per_site() {
    let node = node_with_small_fleet_tuned(|c| c.mqtt.site_documents = true);
    let (h, p) = host_port(&node);
    // The gateway listens for its site's document (retained: no race).
    let sub = tool("mosquitto_sub")
        .args([
            "-h",
            &h,
            "-p",
            &p,
            "-q",
            "1",
            "-t",
            &site_topic(SITE, Channel::Desired),
            "-C",
            "1",
            "-W",
            "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = json!({"v":1,"items":[{"der":DER,"msg":{"v":1,"seq":1,"ts":now_ms(),"power_w":0,"soc_pct":60.0,"available":true}}]});
    mosquitto_pub(&node, &site_topic(SITE, Channel::Telemetry), &t.to_string());
    eventually(20, || {
        (der_view(&node, DER)["capacity"]["state"]["seq"] == 1).then_some(())
    });
    let order =
        json!({"id":"site-doc-1","target":SITE,"direction":"up","power_kw":2.0,"duration_s":900});
    node.client()
        .post_json("/api/v1/dispatches", &order)
        .expect("dispatch accepted");
    let out = sub.wait_with_output().unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("site document received");
    let items = doc["items"].as_array().expect("items");
    let bat = items
        .iter()
        .find(|i| i["der"] == DER)
        .unwrap_or_else(|| panic!("no document for the battery in {doc}"));
    let version = bat["msg"]["version"].as_u64().expect("version");
    assert!(
        bat["msg"]["setpoints"].to_string().contains("site-doc-1"),
        "{doc}"
    );
    // No per-DER document was published.
    let text = node.client().get_text("/metrics").unwrap();
    assert_eq!(metric(&text, "vpp_mqtt_desired_sent_total"), 1, "{text}");

    // The gateway answers for the site: acks in one batch, reported in one.
    let acks = json!({"v":1,"items":[
        {"der":DER,"msg":{"v":1,"version":version,"status":"accepted"}},
        {"der":DER,"msg":{"v":1,"version":version,"status":"applied"}}]});
    mosquitto_pub(&node, &site_topic(SITE, Channel::Ack), &acks.to_string());
    let reported =
        json!({"v":1,"items":[{"der":DER,"msg":{"v":1,"version":version,"target_power_w":-2000}}]});
    mosquitto_pub(
        &node,
        &site_topic(SITE, Channel::Reported),
        &reported.to_string(),
    );
    eventually(20, || {
        let v = der_view(&node, DER);
        let r = &node.client().get(&format!("/api/v1/nodes/{SITE}")).ok()?["capacity"]["envelope"]
            ["response"];
        (v["capacity"]["device"]["reported_version"] == version && r["applied"] == 1).then_some(())
    });
}

/// Publishes `n` messages (QoS 1, each acknowledged by the broker).
async fn publish_all(client: &AsyncClient, msgs: Vec<(String, Vec<u8>)>) {
    for (topic, payload) in msgs {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn hostile_publishes_are_counted_and_valid_devices_keep_working() {
    let node = node_with_small_fleet();
    let (h, p) = host_port(&node);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The hostile and the honest device share nothing but the broker.
    let hostile: Vec<(String, Vec<u8>)> = {
        let tel = der_topic(SITE, "res-ams-01-pv", Channel::Telemetry);
        let ack = der_topic(SITE, "res-ams-01-pv", Channel::Ack);
        let good = |seq: u64| {
            json!({"v":1,"seq":seq,"ts":1,"power_w":-500,"available":true})
                .to_string()
                .into_bytes()
        };
        let shard = format!("/{:02x}/", vpp_protocol::shard_of(SITE));
        let kinds: Vec<(String, Vec<u8>)> = vec![
            // wrong shard
            (tel.replacen(&shard, "/00/", 1), good(1)),
            // malformed topic segment (shard not hex)
            (tel.replacen(&shard, "/zz/", 1), good(1)),
            // unknown device, and a real DER at the wrong site
            (der_topic(SITE, "nobody", Channel::Telemetry), good(1)),
            (der_topic("com-ams-02", DER, Channel::Telemetry), good(1)),
            // malformed payloads
            (tel.clone(), b"{not json".to_vec()),
            (tel.clone(), vec![0xB1, 0xff, 0xff, 0xff]),
            (tel.clone(), Vec::new()),
            // oversized
            (tel.clone(), vec![b' '; 5000]),
            // wrong version
            (
                tel.clone(),
                br#"{"v":2,"seq":1,"ts":1,"power_w":0,"available":true}"#.to_vec(),
            ),
            // out of range
            (
                tel.clone(),
                br#"{"v":1,"seq":0,"ts":1,"power_w":0,"available":true}"#.to_vec(),
            ),
            (
                tel.clone(),
                br#"{"v":1,"seq":9,"ts":1,"power_w":900000000000,"available":true}"#.to_vec(),
            ),
            // an ack for a version never published
            (
                ack.clone(),
                br#"{"v":1,"version":99,"status":"accepted"}"#.to_vec(),
            ),
            // status of an unknown site
            (
                status_topic("nowhere"),
                br#"{"v":1,"online":false}"#.to_vec(),
            ),
        ];
        let mut v = Vec::with_capacity(10_000);
        // One valid reading first, then replays of it (counted as replayed).
        v.push((tel.clone(), good(1_000)));
        let mut i = 0;
        while v.len() < 10_001 {
            if i % 7 == 6 {
                v.push((tel.clone(), good(1_000)));
            } else {
                let (t, p) = &kinds[i % kinds.len()];
                v.push((t.clone(), p.clone()));
            }
            i += 1;
        }
        v
    };
    let honest = der_topic(SITE, DER, Channel::Telemetry);
    rt.block_on(async {
        let connect = |id: &str| {
            let mut o = MqttOptions::new(id, h.clone(), p.parse().unwrap());
            o.set_max_packet_size(64 * 1024, 64 * 1024);
            let (c, mut ev) = AsyncClient::new(o, 1000);
            tokio::spawn(async move {
                while let Ok(e) = ev.poll().await {
                    if let Event::Incoming(Packet::Disconnect) = e {
                        break;
                    }
                }
            });
            c
        };
        let bad = connect("hostile");
        let good = connect("honest");
        let attack = tokio::spawn(async move { publish_all(&bad, hostile).await });
        for seq in 1..=50u64 {
            let t = json!({"v":1,"seq":seq,"ts":seq,"power_w":-(seq as i64),"soc_pct":50.0,"available":true});
            good.publish(honest.clone(), QoS::AtLeastOnce, false, t.to_string())
                .await
                .unwrap();
        }
        attack.await.unwrap();
    });
    // Every hostile message is counted under a reason (one was valid).
    let counts = eventually(30, || {
        let text = node.client().get_text("/metrics").ok()?;
        let rejected = metric(&text, "vpp_mqtt_rejected_total{");
        (rejected == 10_000).then_some(text)
    });
    for reason in [
        "wrong_shard",
        "bad_topic",
        "unknown_device",
        "malformed",
        "oversized",
        "wrong_version",
        "out_of_range",
        "replayed",
        "unknown_version",
    ] {
        let n = metric(
            &counts,
            &format!("vpp_mqtt_rejected_total{{reason=\"{reason}\"}}"),
        );
        assert!(n > 0, "no rejection counted as {reason}:\n{counts}");
    }
    // The honest device's last reading is applied; the node still answers.
    eventually(20, || {
        let v = der_view(&node, DER);
        (v["capacity"]["state"]["seq"] == 50).then_some(())
    });
    let pv = der_view(&node, "res-ams-01-pv");
    assert_eq!(
        pv["capacity"]["state"]["seq"], 1_000,
        "the one valid reading of the pv"
    );
}
