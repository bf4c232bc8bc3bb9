//! Interval meter data, black-box, against a node started as `vpp serve`
//! does: CSV imports over the API (all or nothing, errors with line
//! numbers), reading them back, and telemetry published over MQTT turning
//! into readings of the metered site.
//!
//! Run: `cargo nextest run -p vpp-runtime --test meter`

mod common;

use common::{eventually, repo, request, TestNode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use vpp_protocol::topic::der_topic;
use vpp_protocol::Channel;

const SITE: &str = "res-ams-01";
/// 2026-07-01T17:00:00Z
const T0: u64 = 1_782_925_200_000;

fn node(tune: impl FnOnce(&mut vpp_runtime::config::NodeConfig)) -> TestNode {
    let node = TestNode::start_serving(tempfile::tempdir().unwrap(), tune);
    let text = std::fs::read_to_string(repo().join("examples/small.toml")).unwrap();
    node.client()
        .put_text("/api/v1/hierarchy", text)
        .expect("hierarchy imported");
    node
}

fn post_csv(node: &TestNode, csv: &str) -> (u16, Value) {
    request(
        "POST",
        &format!("{}/api/v1/meter", node.url),
        Some(("text/csv", csv.as_bytes().to_vec())),
    )
}

/// `(start_ms, kW)` of a site's readings in `[from, to)`.
fn readings(node: &TestNode, site: &str, from: u64, to: u64) -> Vec<(u64, f64)> {
    let v = node
        .client()
        .get(&format!("/api/v1/meter/{site}?from_ms={from}&to_ms={to}"))
        .unwrap();
    v["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["start_ms"].as_u64().unwrap(), r["kw"].as_f64().unwrap()))
        .collect()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_csv_import_is_stored_and_read_back() {
    let node = node(|_| {});
    let csv = "# utility export\n\
               site,start,kw\n\
               res-ams-01,2026-07-01T17:00:00Z,3.25\n\
               res-ams-01,2026-07-01T19:05:00+02:00,-1.5\n\
               com-ams-02,1782925200000,40\n";
    let (status, v) = post_csv(&node, csv);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["readings"], 3);
    assert_eq!(v["sites"], 2);
    assert_eq!(v["from_ms"], T0);
    assert_eq!(v["to_ms"], T0 + 600_000);
    assert!(v["ledger_seq"].as_u64().unwrap() >= 1, "{v}");

    assert_eq!(
        readings(&node, SITE, T0, T0 + 3_600_000),
        [(T0, 3.25), (T0 + 300_000, -1.5)]
    );
    // Half-open: the range ends before the second interval.
    assert_eq!(readings(&node, SITE, T0, T0 + 300_000), [(T0, 3.25)]);
    assert_eq!(readings(&node, "com-ams-02", T0, T0 + 1), [(T0, 40.0)]);
    // Not a site, not a node, not an id.
    let (s, _) = request(
        "GET",
        &format!("{}/api/v1/meter/north-city", node.url),
        None,
    );
    assert_eq!(s, 400);
    let (s, _) = request("GET", &format!("{}/api/v1/meter/nobody", node.url), None);
    assert_eq!(s, 404);
    let (s, _) = request(
        "GET",
        &format!("{}/api/v1/meter/{SITE}?from_ms=10&to_ms=5", node.url),
        None,
    );
    assert_eq!(s, 400);
}

#[test]
fn a_bad_csv_is_refused_with_its_line_numbers_and_stores_nothing() {
    let node = node(|_| {});
    let csv = "site,start,kw\n\
               res-ams-01,2026-07-01T17:00:00Z,3.25\n\
               res-ams-01,2026-07-01T17:01:00Z,1\n\
               \n\
               res-ams-01,2026-07-01T17:10:00Z,lots\n";
    let (status, v) = post_csv(&node, csv);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_meter_data");
    let lines: Vec<_> = v["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 5], "{v}");
    assert!(readings(&node, SITE, 0, u64::MAX).is_empty());

    // A site the hierarchy does not have: named, and nothing stored either.
    let csv = "site,start,kw\n\
               res-ams-01,2026-07-01T17:00:00Z,3.25\n\
               nowhere-01,2026-07-01T17:00:00Z,1\n\
               north-city,2026-07-01T17:00:00Z,1\n";
    let (status, v) = post_csv(&node, csv);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "unknown_site");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("nowhere-01") && msg.contains("north-city"),
        "{msg}"
    );
    assert!(readings(&node, SITE, 0, u64::MAX).is_empty());

    let metrics = node.client().get_text("/metrics").unwrap();
    for reason in ["invalid_csv", "unknown_site"] {
        let name = format!("vpp_api_rejected_total{{route=\"meter\",reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &name), 1, "{reason}:\n{metrics}");
    }
}

/// Publishes one telemetry message per `(der, power_w, seq)`.
fn publish(rt: &tokio::runtime::Runtime, client: &AsyncClient, msgs: &[(&str, i64, u64)]) {
    rt.block_on(async {
        for (der, w, seq) in msgs {
            let t = json!({"v": 1, "seq": seq, "ts": seq, "power_w": w, "available": true});
            client
                .publish(
                    der_topic(SITE, der, Channel::Telemetry),
                    QoS::AtLeastOnce,
                    false,
                    t.to_string(),
                )
                .await
                .unwrap();
        }
    });
}

fn device(rt: &tokio::runtime::Runtime, node: &TestNode) -> AsyncClient {
    let addr = node.mqtt.clone().expect("node has a broker");
    let (h, p) = addr.rsplit_once(':').unwrap();
    let o = MqttOptions::new("meter-test-gateway", h, p.parse().unwrap());
    let (client, mut events) = AsyncClient::new(o, 100);
    rt.spawn(async move {
        while let Ok(e) = events.poll().await {
            if let Event::Incoming(Packet::Disconnect) = e {
                break;
            }
        }
    });
    client
}

#[test]
fn telemetry_of_a_metered_site_becomes_readings() {
    let node = node(|c| {
        c.metering.interval_s = 1;
        c.metering.sites = vpp_runtime::config::MeteredSites::All;
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = device(&rt, &node);
    let from = vpp_actors::now_ms();
    let mut seq = 0;
    // The PV exports 500 W, the battery charges at 1500 W: the site
    // imports 1 kW. Keep reporting until a whole interval held both values.
    let got = eventually(30, || {
        seq += 1;
        publish(
            &rt,
            &client,
            &[("res-ams-01-pv", -500, seq), ("res-ams-01-bat", 1500, seq)],
        );
        let r = readings(&node, SITE, from, u64::MAX);
        r.iter().any(|&(_, kw)| kw == 1.0).then_some(r)
    });
    for (start, kw) in &got {
        assert_eq!(start % 1000, 0, "interval starts are aligned");
        assert!((-0.5..=1.0).contains(kw), "{got:?}");
    }
    let metrics = node.client().get_text("/metrics").unwrap();
    assert!(
        metric(&metrics, "vpp_metering_samples_total") >= 2,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "vpp_metering_readings_written_total") >= 1,
        "{metrics}"
    );
}

#[test]
fn telemetry_of_a_site_nobody_watches_is_not_metered() {
    // The default: only sites under an enrollment are metered.
    let node = node(|c| c.metering.interval_s = 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = device(&rt, &node);
    publish(&rt, &client, &[("res-ams-01-bat", 1500, 7)]);
    // Once the DER has the reading, ingest has passed it by metering.
    eventually(20, || {
        let v = node.client().get("/api/v1/nodes/res-ams-01-bat").ok()?;
        (v["capacity"]["state"]["seq"] == 7).then_some(())
    });
    let metrics = node.client().get_text("/metrics").unwrap();
    assert_eq!(metric(&metrics, "vpp_metering_samples_total"), 0);
    assert_eq!(metric(&metrics, "vpp_metering_sites"), 0);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn the_cli_imports_and_shows_on_the_data_dir_and_through_a_node() {
    use common::process::{vpp, NodeProcess};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let small = repo().join("examples/small.toml");
    let out = vpp(&[
        "--data-dir",
        d,
        "hierarchy",
        "import",
        small.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good.csv");
    std::fs::write(
        &good,
        "site,start,kw\nres-ams-01,2026-07-01T17:00:00Z,3.25\n",
    )
    .unwrap();
    let bad = files.path().join("bad.csv");
    std::fs::write(&bad, "site,start,kw\nres-ams-01,2026-07-01T17:00:00Z,x\n").unwrap();
    let (from, to) = ("2026-07-01T17:00:00Z", "2026-07-01T18:00:00Z");

    // No node: straight into the data dir.
    let out = vpp(&["--data-dir", d, "meter", "import", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 readings for 1 site(s)"),
        "{}",
        text(&out.stdout)
    );
    let out = vpp(&["--data-dir", d, "meter", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bad.csv:2: kw:"),
        "{}",
        text(&out.stderr)
    );
    let out = vpp(&[
        "--data-dir",
        d,
        "meter",
        "show",
        SITE,
        "--from",
        from,
        "--to",
        to,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("3.250"), "{}", text(&out.stdout));

    // A node holds the data dir: through its API.
    let _node = NodeProcess::start(dir.path());
    std::fs::write(&good, "site,start,kw\nres-ams-01,2026-07-01T17:05:00Z,-2\n").unwrap();
    let out = vpp(&["--data-dir", d, "meter", "import", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("into the node at http://"),
        "{}",
        text(&out.stdout)
    );
    let out = vpp(&["--data-dir", d, "meter", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("line 2: kw:"),
        "{}",
        text(&out.stderr)
    );
    let out = vpp(&[
        "--data-dir",
        d,
        "meter",
        "show",
        SITE,
        "--from",
        from,
        "--to",
        to,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["readings"],
        json!([{"start_ms": T0, "kw": 3.25}, {"start_ms": T0 + 300_000, "kw": -2.0}])
    );
}
