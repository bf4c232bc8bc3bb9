//! A five-level hierarchy of real actors (root → region → district → site →
//! DER): roll-up reaches the root, a dispatch reaches every leaf with the
//! split the pure math predicts, a refusing child's share is re-split, and
//! cancel withdraws every setpoint.
//!
//! Run: `cargo test -p vpp-actors --test five_levels`

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, five_levels as hierarchy, id, order};
use vpp_actors::{Fleet, FleetConfig, Metrics, NullJournal};
use vpp_domain::split::{split, Candidate};
use vpp_domain::{
    DerKind, DerRating, DerState, Direction, DispatchId, Hierarchy, NodeId, Strategy,
};

fn config(rollup: Duration) -> FleetConfig {
    FleetConfig {
        rollup_interval: rollup,
        dispatch_timeout: Duration::from_secs(20),
        ..FleetConfig::default()
    }
}

async fn start(h: Hierarchy, rollup: Duration) -> Fleet {
    start_counted(h, rollup).await.0
}

/// [`start`], with the fleet's metrics.
async fn start_counted(h: Hierarchy, rollup: Duration) -> (Fleet, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let fleet = Fleet::start(
        h,
        config(rollup),
        Arc::new(NullJournal),
        Arc::new(vpp_actors::NoDevices),
        metrics.clone(),
    )
    .await
    .expect("fleet starts");
    (fleet, metrics)
}

/// The split the pure math predicts for `power_w` at `node`, down to DERs.
fn expected(
    h: &Hierarchy,
    fleet_avail: &HashMap<NodeId, u64>,
    node: &NodeId,
    power_w: u64,
    out: &mut HashMap<NodeId, u64>,
) {
    let topo = h.validate().unwrap();
    let kids = topo.children_of(node);
    if kids.is_empty() {
        out.insert(node.clone(), power_w);
        return;
    }
    let cands: Vec<Candidate> = kids
        .iter()
        .map(|k| Candidate {
            available_w: fleet_avail[k],
            cost: 0,
            last_dispatched_ms: None,
        })
        .collect();
    let s = split(power_w, &cands, Strategy::ProRata);
    for (k, w) in kids.iter().zip(s.allocations) {
        if w > 0 {
            expected(h, fleet_avail, k, w, out);
        }
    }
}

/// The root's upward availability now, W.
async fn root_up(fleet: &Fleet) -> u64 {
    fleet
        .view(&id("root"))
        .await
        .unwrap()
        .envelope
        .available_w(Direction::Up)
}

/// The root's upward availability once it differs from `before` (5 s at most).
async fn root_up_once_changed(fleet: &Fleet, before: u64) -> u64 {
    eventually(5, || async move {
        let v = root_up(fleet).await;
        (v != before).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_change_reaches_the_root() {
    let h = hierarchy(Strategy::ProRata);
    let fleet = start(h.clone(), Duration::from_millis(10)).await;
    let before = root_up(&fleet).await;
    // 36 loads at 70 % of 10, 11, 12 kW (DerState::nominal).
    assert_eq!(before, 12 * (7_000 + 7_700 + 8_400));

    let leaf = id("r1d1s2l2");
    let mut st = DerState::nominal(&DerRating::new(DerKind::CurtailableLoad, 12_000, 0));
    st.power_w = 1_000;
    st.seq = 1;
    fleet.set_state(&leaf, st.clone()).await.unwrap();
    let after = root_up_once_changed(&fleet, before).await;
    assert_eq!(after, before - 8_400 + 1_000);
    // A stale update (same sequence number) is refused and changes nothing.
    assert!(fleet.set_state(&leaf, st).await.is_err());
    fleet.stop().await;
}

/// A batch of states for every DER of one site becomes one report from the
/// site, then one per level above it: 3 reports for site → district →
/// region → root, however many DERs the batch changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_reports_once_per_batch() {
    use std::sync::atomic::Ordering::Relaxed;
    let (fleet, metrics) =
        start_counted(hierarchy(Strategy::ProRata), Duration::from_millis(10)).await;
    let before = root_up(&fleet).await;
    let sent_before = metrics.reports_sent.load(Relaxed);
    let states = (0..3u64).map(|k| {
        let rating = DerRating::new(DerKind::CurtailableLoad, 10_000 + 1_000 * k, 0);
        let mut st = DerState::nominal(&rating);
        st.power_w = 1_000;
        st.seq = 1;
        (id(&format!("r1d1s2l{k}")), st)
    });
    assert!(fleet.send_states(states).is_empty());
    let after = root_up_once_changed(&fleet, before).await;
    assert_eq!(after, before - (7_000 + 7_700 + 8_400) + 3 * 1_000);
    // Let any further (wrong) report arrive before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metrics.reports_sent.load(Relaxed) - sent_before, 3);
    fleet.stop().await;
}

/// A split over a site's DERs, and its cancel, each become one report from
/// the site (then one per level above), not one per DER it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_reports_a_split_over_its_ders_once() {
    use std::sync::atomic::Ordering::Relaxed;
    let (fleet, metrics) =
        start_counted(hierarchy(Strategy::ProRata), Duration::from_millis(10)).await;
    let sent = || metrics.reports_sent.load(Relaxed);
    let before = sent();
    let o = order("o1", "r1d1s2", 9_000);
    let out = fleet.dispatch(o.clone()).await.unwrap();
    assert_eq!((out.accepted_w, out.ders), (9_000, 3));
    // Let the district's and region's windows pass.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sent() - before, 3, "site, district, region: once each");
    let before = sent();
    fleet.cancel(&o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sent() - before, 3, "the cancel too");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_reaches_every_leaf_with_the_expected_split() {
    let h = hierarchy(Strategy::ProRata);
    let fleet = start(h.clone(), Duration::from_millis(10)).await;
    let topo = h.validate().unwrap();
    let mut avail = HashMap::new();
    for n in topo.kinds.keys() {
        let v = fleet.view(n).await.unwrap();
        avail.insert(n.clone(), v.envelope.available_w(Direction::Up));
    }
    let total = avail[&id("root")];
    let power = total / 3 + 7; // an awkward number, to exercise remainders
    let out = fleet.dispatch(order("o1", "root", power)).await.unwrap();
    assert_eq!(out.accepted_w, power);
    assert_eq!(out.reason, None);
    assert_eq!(out.ders, 36);

    let mut want = HashMap::new();
    expected(&h, &avail, &id("root"), power, &mut want);
    let mut sum = 0;
    for d in &h.ders {
        let v = fleet.view(&d.id).await.unwrap();
        let got: u64 = v.setpoints.iter().map(|s| s.power_w).sum();
        assert_eq!(got, want.get(&d.id).copied().unwrap_or(0), "der {}", d.id);
        sum += got;
        if let Some(sp) = v.setpoints.first() {
            let st = v.state.unwrap();
            assert_eq!(sp.target_power_w, st.power_w - sp.power_w as i64);
        }
    }
    assert_eq!(sum, power);
    // Every level records its allocation.
    let a = fleet
        .allocation(&DispatchId::new("o1").unwrap(), &id("r0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.allocated_w, a.requested_w);
    assert_eq!(a.children.len(), 2);

    // A second order only gets what the first left uncommitted.
    let out2 = fleet.dispatch(order("o2", "root", total)).await.unwrap();
    assert_eq!(out2.accepted_w, total - power);
    assert!(out2.reason.is_some());

    // Cancel withdraws every setpoint of the order.
    fleet.cancel(&order("o1", "root", power)).await.unwrap();
    for d in &h.ders {
        let v = fleet.view(&d.id).await.unwrap();
        assert!(v.setpoints.iter().all(|s| s.dispatch.as_str() == "o2"));
    }
    let root = fleet.view(&id("root")).await.unwrap();
    assert_eq!(root.committed_up_w, total - power);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_childs_share_is_resplit() {
    let h = hierarchy(Strategy::ProRata);
    // Virtual DERs coalesce for an hour, so the region never hears that a
    // whole district went dark: it gives the district a share, and the
    // district (which knows its sites have nothing) refuses it.
    let fleet = start(h.clone(), Duration::from_secs(3600)).await;
    let dark = "r0d0";
    for site in 0..3 {
        for k in 0..3u64 {
            let mut st = DerState::nominal(&DerRating::new(DerKind::CurtailableLoad, 10_000, 0));
            st.online = false;
            st.seq = 1;
            let der = id(&format!("{dark}s{site}l{k}"));
            fleet.set_state(&der, st).await.unwrap();
        }
    }
    assert_eq!(
        fleet
            .view(&id(dark))
            .await
            .unwrap()
            .envelope
            .available_w(Direction::Up),
        0,
        "the district itself is current"
    );
    let believed = fleet
        .view(&id("r0"))
        .await
        .unwrap()
        .envelope
        .available_w(Direction::Up);
    // Half of what the region believes: pro rata asks each district for a
    // quarter; the dark one refuses, and the live one has exactly that much
    // room left, so everything is still placed.
    let power = believed / 2;
    let out = fleet
        .dispatch(order("o-refuse", "r0", power))
        .await
        .unwrap();
    assert_eq!(
        out.accepted_w, power,
        "the dark district's share went to the other"
    );
    assert!(out.resplits >= 1);

    let a = fleet
        .allocation(&DispatchId::new("o-refuse").unwrap(), &id("r0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.refusals.len(), 1);
    assert_eq!(a.refusals[0].child, id(dark));
    assert_eq!(a.refusals[0].refused_w, power / 2);
    assert!(a.resplits >= 1);
    assert_eq!(a.children, vec![(id("r0d1"), power)]);
    for site in 0..3 {
        for k in 0..3 {
            let v = fleet
                .view(&id(&format!("{dark}s{site}l{k}")))
                .await
                .unwrap();
            assert!(v.setpoints.is_empty());
        }
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merit_order_uses_cheapest_sites_first() {
    let h = hierarchy(Strategy::MeritOrder);
    let fleet = start(h.clone(), Duration::from_millis(10)).await;
    // Site s0 of each district is cheapest (cost grows with the site index).
    let d = fleet.view(&id("r1d0")).await.unwrap();
    let s0 = d.children[0].envelope.available_w(Direction::Up);
    fleet.dispatch(order("m1", "r1d0", s0)).await.unwrap();
    let a = fleet
        .allocation(&DispatchId::new("m1").unwrap(), &id("r1d0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.children, vec![(id("r1d0s0"), s0)]);
    // And at the site, the cheapest load first.
    let site = fleet
        .allocation(&DispatchId::new("m1").unwrap(), &id("r1d0s0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(site.children.len(), 3);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_to_ders_or_unknown_nodes_are_rejected() {
    let fleet = start(hierarchy(Strategy::ProRata), Duration::from_millis(10)).await;
    let e = fleet
        .dispatch(order("x", "r0d0s0l0", 10))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is a der"), "{e}");
    let e = fleet.dispatch(order("x", "nope", 10)).await.unwrap_err();
    assert!(e.to_string().contains("no node nope"), "{e}");
    fleet.stop().await;
}
