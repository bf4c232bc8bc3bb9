//! Black-box tests: a small simulated fleet against a real Mosquitto.
//!
//! Run with `cargo nextest run -p vpp-simulator` (needs `mosquitto` on the
//! PATH or in /usr/sbin). Each test starts its own broker on a free port.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{poll_until, Mosquitto, Observer};
use vpp_domain::{DerKind, DerRating, Direction, NodeId};
use vpp_protocol::topic::{der_topic, status_topic};
use vpp_protocol::{
    decode, encode_json, Ack, AckStatus, Channel, Desired, DesiredSetpoint, Reported, Status,
    Telemetry,
};
use vpp_simulator::{start, Faults, SimConfig, SimDer, SimSite, REFUSING_REASON};

const WITHIN: Duration = Duration::from_secs(15);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn battery(id: &str) -> SimDer {
    let mut r = DerRating::new(DerKind::Battery, 5000, 5000);
    r.energy_wh = 10_000;
    r.soc_min_pct = 10;
    r.soc_max_pct = 90;
    // A full swing in half a second of physics time: applied at once.
    r.ramp_w_per_min = 600_000;
    SimDer {
        id: NodeId::new(id).unwrap(),
        rating: r,
    }
}

fn site(id: &str, ders: Vec<SimDer>) -> SimSite {
    SimSite {
        id: NodeId::new(id).unwrap(),
        lon: 5.0,
        ders,
    }
}

fn config(addr: &str, prefix: &str) -> SimConfig {
    SimConfig {
        broker: addr.to_string(),
        connections: 8,
        telemetry_interval: Duration::from_millis(200),
        client_prefix: prefix.into(),
        ..SimConfig::default()
    }
}

fn discharge(version: u64, power_w: u64) -> Desired {
    let now = now_ms();
    Desired {
        v: 1,
        version,
        setpoints: vec![DesiredSetpoint {
            dispatch: "test-1".into(),
            direction: Direction::Up,
            power_w,
            target_power_w: -(power_w as i64),
            start_ms: now - 1000,
            end_ms: now + 600_000,
            ramp_w_per_min: 0,
        }],
    }
}

fn is<T: serde::de::DeserializeOwned + vpp_protocol::codec::Versioned>(
    s: &common::Seen,
    topic: &str,
) -> Option<T> {
    (s.topic == topic)
        .then(|| decode::<T>(&s.payload).ok())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_acks_applies_and_telemetry_follows_refuser_rejects() {
    let broker = Mosquitto::start();
    let mut obs = Observer::connect(&broker.addr(), "observer-1").await;
    let cfg = SimConfig {
        faults: Faults {
            refusing_ids: vec!["site-b-bat".into()],
            ..Faults::default()
        },
        ..config(&broker.addr(), "t1")
    };
    let sim = start(
        cfg,
        vec![
            site("site-a", vec![battery("site-a-bat")]),
            site("site-b", vec![battery("site-b-bat")]),
        ],
    )
    .await
    .expect("simulator starts");

    // One site per connection: status online, and telemetry flows.
    let online = status_topic("site-a");
    obs.wait_for("site-a online", WITHIN, |s| {
        is::<Status>(s, &online).is_some_and(|st| st.online)
    })
    .await;
    let tel = der_topic("site-a", "site-a-bat", Channel::Telemetry);
    let first = obs
        .wait_for("telemetry", WITHIN, |s| is::<Telemetry>(s, &tel).is_some())
        .await;
    let first: Telemetry = decode(&first.payload).unwrap();
    assert!(first.power_w.abs() <= 100, "idle battery: {first:?}");
    assert!(first.seq > now_ms() - 60_000, "seq starts from the clock");

    // A retained desired document: accepted, applied, telemetry follows.
    let version = now_ms();
    let desired = der_topic("site-a", "site-a-bat", Channel::Desired);
    obs.publish_retained(&desired, encode_json(&discharge(version, 2000)))
        .await;
    let ack = der_topic("site-a", "site-a-bat", Channel::Ack);
    let has_ack = |st: AckStatus| {
        let ack = ack.clone();
        move |s: &common::Seen| {
            is::<Ack>(s, &ack).is_some_and(|a| a.version == version && a.status == st)
        }
    };
    obs.wait_for("accepted", WITHIN, has_ack(AckStatus::Accepted))
        .await;
    let applied_at = obs
        .wait_for("applied", WITHIN, has_ack(AckStatus::Applied))
        .await
        .at;
    let moved = obs
        .wait_for("telemetry near -2 kW", WITHIN, |s| {
            s.at >= applied_at
                && is::<Telemetry>(s, &tel).is_some_and(|t| (t.power_w + 2000).abs() <= 100)
        })
        .await;
    let moved: Telemetry = decode(&moved.payload).unwrap();
    assert!(moved.seq > first.seq);
    assert!(moved.soc_pct.is_some());
    let rep = der_topic("site-a", "site-a-bat", Channel::Reported);
    obs.wait_for("reported version", WITHIN, |s| {
        s.topic == rep
            && decode::<Reported>(&s.payload)
                .is_ok_and(|r| r.version == version && r.target_power_w.is_some())
    })
    .await;

    // A stale version is ignored (counted, not acked).
    obs.publish_retained(&desired, encode_json(&discharge(version - 1, 1000)))
        .await;
    poll_until("stale desired counted", WITHIN, || {
        sim.stats().desired_stale >= 1
    })
    .await;

    // The refusing device rejects with the fault-injection reason.
    let b_version = now_ms();
    obs.publish_retained(
        &der_topic("site-b", "site-b-bat", Channel::Desired),
        encode_json(&discharge(b_version, 1000)),
    )
    .await;
    let b_ack = der_topic("site-b", "site-b-bat", Channel::Ack);
    let rej = obs
        .wait_for("rejection", WITHIN, |s| {
            is::<Ack>(s, &b_ack).is_some_and(|a| a.version == b_version)
        })
        .await;
    let rej: Ack = decode(&rej.payload).unwrap();
    assert_eq!(rej.status, AckStatus::Rejected);
    assert_eq!(rej.reason.as_deref(), Some(REFUSING_REASON));

    let st = sim.stats();
    assert_eq!((st.connections, st.connected, st.devices), (2, 2, 2));
    assert!(st.acks_accepted >= 1 && st.acks_applied >= 1 && st.acks_rejected >= 1);
    assert!(st.telemetry_sent >= 2);
    assert_eq!(st.devices_reporting, 2);
    assert!(st.ack_latency.count >= 2);

    // A graceful stop says offline.
    sim.stop().await;
    obs.wait_for("site-a offline", WITHIN, |s| {
        is::<Status>(s, &online).is_some_and(|st| !st.online)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_to_retained_desired_and_survives_reconnect_storms() {
    let broker = Mosquitto::start();
    let mut obs = Observer::connect(&broker.addr(), "observer-2").await;
    // The document is there before the device connects.
    let version = now_ms();
    obs.publish_retained(
        &der_topic("site-c", "site-c-bat", Channel::Desired),
        encode_json(&discharge(version, 1500)),
    )
    .await;
    let cfg = SimConfig {
        faults: Faults {
            storm_every_s: Some(0.5),
            storm_share: 1.0,
            ..Faults::default()
        },
        ..config(&broker.addr(), "t2")
    };
    let sim = start(cfg, vec![site("site-c", vec![battery("site-c-bat")])])
        .await
        .expect("simulator starts");
    let ack = der_topic("site-c", "site-c-bat", Channel::Ack);
    obs.wait_for("accepted on connect", WITHIN, |s| {
        is::<Ack>(s, &ack).is_some_and(|a| a.version == version && a.status == AckStatus::Accepted)
    })
    .await;
    // A storm drops the connection abruptly: the last will fires...
    let status = status_topic("site-c");
    let offline = obs
        .wait_for("last will", WITHIN, |s| {
            is::<Status>(s, &status).is_some_and(|st| !st.online)
        })
        .await;
    // ...then it reconnects, says online, republishes what it holds and
    // ignores the redelivered retained document.
    obs.wait_for("online again", WITHIN, |s| {
        s.at > offline.at && is::<Status>(s, &status).is_some_and(|st| st.online)
    })
    .await;
    let rep = der_topic("site-c", "site-c-bat", Channel::Reported);
    obs.wait_for("reported after reconnect", WITHIN, |s| {
        s.at > offline.at && is::<Reported>(s, &rep).is_some_and(|r| r.version == version)
    })
    .await;
    poll_until("reconnects and stale redelivery", WITHIN, || {
        let st = sim.stats();
        st.reconnects >= 1 && st.storms >= 1 && st.desired_stale >= 1
    })
    .await;
    assert_eq!(sim.stats().acks_accepted, 1, "accepted exactly once");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_shards_with_offline_devices_and_ack_latency() {
    let broker = Mosquitto::start();
    let mut obs = Observer::connect(&broker.addr(), "observer-3").await;
    let h = vpp_domain::generate::generate(&vpp_domain::generate::GenSpec {
        sites: 40,
        ders_per_site: 3,
        ..Default::default()
    });
    let sites = vpp_simulator::devices_from_hierarchy(&h);
    let silent = sites[0].ders[0].id.to_string();
    let target = sites[1].ders[0].clone();
    let target_site = sites[1].id.to_string();
    let cfg = SimConfig {
        connections: 3,
        faults: Faults {
            offline_ids: vec![silent.clone()],
            ack_latency_ms: [300, 400],
            ..Faults::default()
        },
        ..config(&broker.addr(), "t3")
    };
    let sim = start(cfg, sites).await.expect("simulator starts");
    poll_until("every live device reports", WITHIN, || {
        let st = sim.stats();
        st.connected == 3 && st.devices_reporting == 119
    })
    .await;
    let st = sim.stats();
    assert_eq!((st.connections, st.devices, st.devices_live), (3, 120, 119));
    // Multiplexed connections publish no status.
    assert!(!obs.seen.iter().any(|s| s.topic.ends_with("/status")));

    // Latency: the ack comes no sooner than the injected delay.
    sim.arm_probe();
    let version = now_ms();
    let desired = der_topic(&target_site, target.id.as_str(), Channel::Desired);
    let empty = Desired {
        v: 1,
        version,
        setpoints: vec![],
    };
    obs.publish_retained(&desired, encode_json(&empty)).await;
    let sent = std::time::Instant::now();
    let ack = der_topic(&target_site, target.id.as_str(), Channel::Ack);
    let got = obs
        .wait_for("delayed ack", WITHIN, |s| {
            is::<Ack>(s, &ack).is_some_and(|a| a.version == version)
        })
        .await;
    assert!(got.at.duration_since(sent) >= Duration::from_millis(300));
    let probe = sim.probe();
    assert_eq!(probe.acked.len(), 1);
    assert!(probe.acked[0] >= Duration::from_millis(300));
    // The silent device never said anything.
    assert!(!obs
        .seen
        .iter()
        .any(|s| s.topic.contains(&format!("/{silent}/"))));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoint_start_and_end_send_prompt_telemetry() {
    let broker = Mosquitto::start();
    let mut obs = Observer::connect(&broker.addr(), "observer-4").await;
    // Regular telemetry only once a minute: what arrives sooner is prompt.
    let cfg = SimConfig {
        telemetry_interval: Duration::from_secs(60),
        ..config(&broker.addr(), "t4")
    };
    let sim = start(cfg, vec![site("site-d", vec![battery("site-d-bat")])])
        .await
        .expect("simulator starts");
    poll_until("connected", WITHIN, || sim.stats().connected == 1).await;
    let now = now_ms();
    let doc = Desired {
        v: 1,
        version: now,
        setpoints: vec![DesiredSetpoint {
            dispatch: "edge".into(),
            direction: Direction::Up,
            power_w: 2000,
            target_power_w: -2000,
            start_ms: now + 1000,
            end_ms: now + 2500,
            ramp_w_per_min: 0,
        }],
    };
    obs.publish_retained(
        &der_topic("site-d", "site-d-bat", Channel::Desired),
        encode_json(&doc),
    )
    .await;
    let tel = der_topic("site-d", "site-d-bat", Channel::Telemetry);
    let started = obs
        .wait_for("telemetry at the start", WITHIN, |s| {
            is::<Telemetry>(s, &tel).is_some_and(|t| (t.power_w + 2000).abs() <= 100)
        })
        .await;
    let ended = obs
        .wait_for("telemetry at the end", WITHIN, |s| {
            s.at > started.at && is::<Telemetry>(s, &tel).is_some_and(|t| t.power_w.abs() <= 100)
        })
        .await;
    let gap = ended.at.duration_since(started.at);
    assert!(
        gap >= Duration::from_millis(1000) && gap < Duration::from_secs(5),
        "{gap:?}"
    );
    sim.stop().await;
}
