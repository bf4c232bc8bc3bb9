//! The DER actors' half of the device shadow, without a broker: desired
//! documents go out when setpoints change, acks come back, a rejected
//! setpoint is re-split (across sites when its own site has no room left),
//! telemetry moves the measured response at the root, and silent devices or
//! a gateway's last will take DERs out of the envelope.
//!
//! Run: `cargo test -p vpp-actors --test device_loop`

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, id, order};
use vpp_actors::{DeviceInput, DeviceLink, Fleet, FleetConfig, Metrics, NullJournal};
use vpp_domain::{
    DerKind, DerRating, DerSpec, DerState, Hierarchy, Location, NodeId, Segment, SiteSpec,
    Strategy, VirtualDerSpec,
};
use vpp_protocol::{Ack, AckStatus, Desired};

/// Records every desired document.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String, Desired)>>);

impl DeviceLink for Recorder {
    fn desired(&self, site: &NodeId, der: &NodeId, doc: &Desired) {
        self.0
            .lock()
            .unwrap()
            .push((site.to_string(), der.to_string(), doc.clone()));
    }

    fn site_documents(&self) -> bool {
        false
    }

    fn desired_site(&self, _: &NodeId, _: &[(&NodeId, Desired)]) {
        unreachable!("per-DER documents only")
    }
}

impl Recorder {
    fn latest(&self, der: &str) -> Option<Desired> {
        let docs = self.0.lock().unwrap();
        docs.iter().rev().find(|d| d.1 == der).map(|d| d.2.clone())
    }
}

/// root → 2 sites × 2 batteries of 5 kW (pro rata, so every DER is used).
fn hierarchy() -> Hierarchy {
    let mut h = Hierarchy::default();
    h.virtual_ders.push(VirtualDerSpec {
        id: id("root"),
        name: "root".into(),
        parent: None,
        strategy: Strategy::ProRata,
    });
    for s in 0..2 {
        let site = format!("s{s}");
        h.sites.push(SiteSpec {
            id: id(&site),
            name: site.clone(),
            parent: id("root"),
            location: Location {
                lat: 50.0,
                lon: 5.0,
                zone: "z".into(),
                feeder: "f".into(),
            },
            segment: Segment::Residential,
            owner: "o".into(),
            strategy: Strategy::ProRata,
        });
        for b in 0..2 {
            let mut rating = DerRating::new(DerKind::Battery, 5_000, 5_000);
            rating.energy_wh = 10_000;
            rating.ramp_w_per_min = 5_000;
            h.ders.push(DerSpec {
                id: id(&format!("{site}b{b}")),
                name: String::new(),
                site: id(&site),
                rating,
            });
        }
    }
    h
}

async fn start(offline_after: Duration) -> (Fleet, Arc<Recorder>, Arc<Metrics>) {
    let rec = Arc::new(Recorder::default());
    let metrics = Arc::new(Metrics::default());
    let config = FleetConfig {
        rollup_interval: Duration::from_millis(5),
        offline_after,
        ..FleetConfig::default()
    };
    let fleet = Fleet::start(
        hierarchy(),
        config,
        Arc::new(NullJournal),
        rec.clone(),
        metrics.clone(),
    )
    .await
    .unwrap();
    (fleet, rec, metrics)
}

fn ack(fleet: &Fleet, site: &str, der: &str, version: u64, status: AckStatus) {
    let addr = fleet.locate_der(site, der).expect("der is at site");
    let reason = (status == AckStatus::Rejected).then(|| "battery below reserve".to_string());
    fleet.send_device_inputs([(
        addr,
        DeviceInput::Ack(Ack {
            v: 1,
            version,
            status,
            reason,
        }),
    )]);
}

fn telemetry(fleet: &Fleet, site: &str, der: &str, seq: u64, power_w: i64) {
    let addr = fleet.locate_der(site, der).unwrap();
    fleet.send_device_inputs([(
        addr,
        DeviceInput::Telemetry(DerState {
            online: true,
            power_w,
            soc_pct: Some(50.0),
            temperature_c: None,
            accepts_control: true,
            updated_ms: vpp_actors::now_ms(),
            seq,
        }),
    )]);
}

const DERS: [(&str, &str); 4] = [
    ("s0", "s0b0"),
    ("s0", "s0b1"),
    ("s1", "s1b0"),
    ("s1", "s1b1"),
];

#[tokio::test]
async fn acks_rejections_and_telemetry_close_the_loop() {
    let (fleet, rec, metrics) = start(Duration::from_secs(60)).await;
    // 8 kW up over four 5 kW batteries: 2 kW each.
    let out = fleet.dispatch(order("o1", "root", 8_000)).await.unwrap();
    assert_eq!(out.accepted_w, 8_000);
    for (_, der) in DERS {
        let d = rec.latest(der).expect("a desired document per DER");
        assert_eq!(d.setpoints.len(), 1);
        assert_eq!(d.setpoints[0].power_w, 2_000);
    }
    let root = fleet.view(&id("root")).await.unwrap();
    assert_eq!(root.envelope.response.commanded, 4);
    assert_eq!(root.envelope.response.requested_w, 8_000);
    assert_eq!(root.envelope.response.acked, 0);

    // Three accept; s0b0 rejects: its 2 kW go to s0b1 (same site, room 3 kW).
    for (site, der) in &DERS[1..] {
        let v = rec.latest(der).unwrap().version;
        ack(&fleet, site, der, v, AckStatus::Accepted);
    }
    let v0 = rec.latest("s0b0").unwrap().version;
    ack(&fleet, "s0", "s0b0", v0, AckStatus::Rejected);
    let d = eventually(5, || async {
        let d = rec.latest("s0b1")?;
        (d.setpoints.first()?.power_w == 4_000).then_some(d)
    })
    .await;
    assert!(rec.latest("s0b0").unwrap().setpoints.is_empty());
    let s0 = fleet
        .allocation(&order("o1", "root", 8_000).id, &id("s0"))
        .await
        .unwrap();
    let s0 = s0.expect("site allocation");
    assert_eq!(s0.allocated_w, 4_000);
    assert!(
        s0.refusals
            .iter()
            .any(|r| r.child == id("s0b0") && r.reason.contains("battery below reserve")),
        "{:?}",
        s0.refusals
    );
    assert_eq!(
        metrics
            .late_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // s0b1 now rejects its bigger setpoint too: site s0 cannot place 4 kW,
    // the root moves it to site s1 (3 kW of room each).
    ack(&fleet, "s0", "s0b1", d.version, AckStatus::Rejected);
    eventually(5, || async {
        let a = rec.latest("s1b0")?.setpoints.first()?.power_w;
        let b = rec.latest("s1b1")?.setpoints.first()?.power_w;
        (a + b == 8_000).then_some(())
    })
    .await;
    let root_alloc = fleet
        .allocation(&order("o1", "root", 8_000).id, &id("root"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(root_alloc.allocated_w, 8_000);
    assert_eq!(root_alloc.shortfall_w, 0);
    assert!(root_alloc.refusals.iter().any(|r| r.child == id("s0")));

    // Both s1 batteries accept and apply; telemetry shows them discharging.
    for der in ["s1b0", "s1b1"] {
        let v = rec.latest(der).unwrap().version;
        ack(&fleet, "s1", der, v, AckStatus::Applied);
        telemetry(&fleet, "s1", der, 1, -4_000);
    }
    let resp = eventually(5, || async {
        let r = fleet.view(&id("root")).await.ok()?.envelope.response;
        (r.applied == 2 && r.delivered_w == 8_000).then_some(r)
    })
    .await;
    assert_eq!(resp.commanded, 2);
    assert_eq!(resp.acked_w, 8_000);

    // An ack for a version never published is refused and counted.
    ack(&fleet, "s1", "s1b0", u64::MAX, AckStatus::Accepted);
    eventually(5, || async {
        (metrics
            .acks_unknown_version
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn silent_devices_and_gateway_wills_leave_the_envelope() {
    let (fleet, _rec, metrics) = start(Duration::from_millis(300)).await;
    let online = |f: Fleet| async move { f.refresh(&id("root")).await.unwrap().total().online };
    assert_eq!(online(fleet.clone()).await, 4, "nominal state: all online");
    // Only s1b0 reports telemetry; it is then tracked and times out when silent.
    telemetry(&fleet, "s1", "s1b0", 10, 0);
    eventually(5, || async {
        (metrics
            .devices_timed_out
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(online(fleet.clone()).await, 3);
    // Telemetry brings it back.
    telemetry(&fleet, "s1", "s1b0", 11, 0);
    eventually(5, || async {
        (online(fleet.clone()).await == 4).then_some(())
    })
    .await;
    // The s0 gateway's last will takes both its DERs out.
    fleet.gateway_status(fleet.locate_site("s0").unwrap(), false);
    eventually(5, || async {
        (online(fleet.clone()).await <= 2).then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn republish_sends_current_documents_with_newer_versions() {
    let (fleet, rec, _) = start(Duration::from_secs(60)).await;
    fleet.dispatch(order("o1", "root", 4_000)).await.unwrap();
    let before = rec.latest("s0b0").unwrap();
    fleet.republish_desired();
    let after = eventually(5, || async {
        let d = rec.latest("s0b0")?;
        (d.version > before.version).then_some(d)
    })
    .await;
    assert_eq!(after.setpoints, before.setpoints);

    // A device that reports an older version is sent the current document
    // again, with the same version (so a slow device is not chased forever).
    let n = rec.0.lock().unwrap().len();
    let addr = fleet.locate_der("s0", "s0b0").unwrap();
    fleet.send_device_inputs([(addr, DeviceInput::Reported(before.version))]);
    let again = eventually(5, || async {
        let docs = rec.0.lock().unwrap();
        docs[n..]
            .iter()
            .find(|d| d.1 == "s0b0")
            .map(|d| d.2.clone())
    })
    .await;
    assert_eq!(again, after);
    fleet.send_device_inputs([(addr, DeviceInput::Reported(after.version))]);
    fleet.view(&id("s0")).await.unwrap(); // the site has handled both
    let resent = rec.0.lock().unwrap()[n..]
        .iter()
        .filter(|d| d.1 == "s0b0")
        .count();
    assert_eq!(
        resent, 1,
        "a device that is up to date is not sent anything"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn republish_unapplied_asks_again_only_where_no_applied_ack_came() {
    // Pro rata over every DER: all four hold a setpoint.
    let (fleet, rec, _) = start(Duration::from_secs(60)).await;
    fleet.dispatch(order("o1", "root", 4_000)).await.unwrap();
    let applied = rec.latest("s0b0").unwrap();
    let waiting = rec.latest("s1b1").unwrap();
    ack(&fleet, "s0", "s0b0", applied.version, AckStatus::Applied);
    ack(&fleet, "s1", "s1b1", waiting.version, AckStatus::Accepted);
    fleet.view(&id("s0")).await.unwrap(); // both sites have handled the acks
    fleet.view(&id("s1")).await.unwrap();

    fleet.republish_unapplied();
    let again = eventually(5, || async {
        let d = rec.latest("s1b1")?;
        (d.version > waiting.version).then_some(d)
    })
    .await;
    assert_eq!(again.setpoints, waiting.setpoints);
    fleet.view(&id("s0")).await.unwrap(); // s0 has handled the republish
    assert_eq!(
        rec.latest("s0b0").unwrap().version,
        applied.version,
        "a device that acked its setpoints as applied is not asked again"
    );
    fleet.stop().await;
}

/// A site document as recorded: site id, then (DER id, document) items.
type SiteDoc = (String, Vec<(String, Desired)>);

/// Records site documents; per-DER documents are a failure.
#[derive(Default)]
struct SiteRecorder {
    sites: Mutex<Vec<SiteDoc>>,
    per_der: Mutex<usize>,
}

impl DeviceLink for SiteRecorder {
    fn desired(&self, _: &NodeId, _: &NodeId, _: &Desired) {
        *self.per_der.lock().unwrap() += 1;
    }

    fn site_documents(&self) -> bool {
        true
    }

    fn desired_site(&self, site: &NodeId, docs: &[(&NodeId, Desired)]) {
        let docs = docs
            .iter()
            .map(|(d, doc)| (d.to_string(), doc.clone()))
            .collect();
        self.sites.lock().unwrap().push((site.to_string(), docs));
    }
}

#[tokio::test]
async fn site_documents_carry_every_ders_current_document() {
    let rec = Arc::new(SiteRecorder::default());
    let fleet = Fleet::start(
        hierarchy(),
        FleetConfig {
            rollup_interval: Duration::from_millis(5),
            ..FleetConfig::default()
        },
        Arc::new(NullJournal),
        rec.clone(),
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    fleet.dispatch(order("o1", "root", 4_000)).await.unwrap();
    let docs = eventually(5, || async {
        let s = rec.sites.lock().unwrap().clone();
        (s.len() == 2).then_some(s)
    })
    .await;
    for (site, items) in &docs {
        let ders: Vec<&str> = items.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(ders, [format!("{site}b0"), format!("{site}b1")]);
        assert!(items.iter().all(|(_, d)| d.setpoints.len() == 1));
    }
    // s0b0 reports an older version: the site's document goes out again,
    // with the same versions for both DERs (s0b1's unchanged one included).
    let s0 = docs.iter().find(|(s, _)| s == "s0").unwrap().1.clone();
    let addr = fleet.locate_der("s0", "s0b0").unwrap();
    fleet.send_device_inputs([(addr, DeviceInput::Reported(s0[0].1.version - 1))]);
    let again = eventually(5, || async {
        let s = rec.sites.lock().unwrap();
        s.get(2).cloned()
    })
    .await;
    assert_eq!(again, ("s0".to_string(), s0));
    assert_eq!(*rec.per_der.lock().unwrap(), 0, "no per-DER document");
    fleet.stop().await;
}

/// Counts the site records written.
#[derive(Default)]
struct CountingJournal(Mutex<Vec<String>>);

impl vpp_actors::Journal for CountingJournal {
    fn site_ders(&self, site: &NodeId, _: Vec<vpp_store::DerRecord>) {
        self.0.lock().unwrap().push(site.to_string());
    }

    fn allocation(&self, _: &vpp_domain::NodeAllocation) {}
}

#[tokio::test]
async fn telemetry_alone_is_written_once_per_window_and_setpoints_at_once() {
    let journal = Arc::new(CountingJournal::default());
    let fleet = Fleet::start(
        hierarchy(),
        FleetConfig {
            rollup_interval: Duration::from_millis(5),
            telemetry_persist_every: Duration::from_secs(3600),
            ..FleetConfig::default()
        },
        journal.clone(),
        Arc::new(Recorder::default()),
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    let writes = || journal.0.lock().unwrap().len();
    let before = writes();
    for seq in 1..=20 {
        telemetry(&fleet, "s0", "s0b0", seq, 100 + seq as i64);
    }
    let v = eventually(5, || async {
        let v = fleet.view(&id("s0b0")).await.ok()?;
        (v.state.as_ref()?.seq == 20).then_some(v)
    })
    .await;
    assert_eq!(v.state.unwrap().power_w, 120);
    assert_eq!(
        writes(),
        before,
        "telemetry inside the window is not written"
    );
    // A setpoint change is written at once, telemetry state with it.
    fleet.dispatch(order("o1", "root", 4_000)).await.unwrap();
    eventually(5, || async { (writes() > before).then_some(()) }).await;
    fleet.stop().await;
}
