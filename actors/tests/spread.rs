//! One hierarchy spread over three "members" (three fleets in one process,
//! linked by an in-process `RemoteLink`): each runs only the aggregates
//! placed on it, yet roll-up reaches the root, a dispatch at the root
//! reaches DERs on every member with the same split one fleet makes, any
//! member answers for any node, a lost report is repaired, and cancel
//! withdraws everything.
//!
//! Run: `cargo test -p vpp-actors --test spread`

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{eventually, five_levels, id, order};
use futures::future::BoxFuture;
use vpp_actors::{
    Fleet, FleetConfig, Metrics, NoDevices, NullJournal, RemoteCall, RemoteCast, RemoteLink,
    RemoteReply,
};
use vpp_domain::{Direction, Hierarchy, NodeId, NodeKind, Strategy};

const MEMBERS: usize = 3;

/// Which member runs an aggregate: a fixed spread that puts parents and
/// children on different members at every level.
fn owner(id: &NodeId) -> usize {
    let s = id.as_str();
    if s == "root" {
        return 0;
    }
    s.bytes().map(usize::from).sum::<usize>() % MEMBERS
}

/// Routes between the fleets of one process. Casts can be made to drop
/// (`lose`) to show that periodic re-reports repair lost messages.
struct Link {
    me: usize,
    fleets: Arc<RwLock<Vec<Fleet>>>,
    lose: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl RemoteLink for Link {
    fn losses(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }

    fn is_local(&self, id: &NodeId, _: NodeKind) -> bool {
        owner(id) == self.me
    }

    fn cast(&self, _: NodeKind, msg: RemoteCast) {
        if self.lose.load(Ordering::SeqCst) {
            self.lost.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let to = owner(msg.to());
        assert_ne!(to, self.me, "a cast to a local node went through the link");
        let f = self.fleets.read().unwrap().get(to).cloned();
        if let Some(f) = f {
            f.serve_cast(msg);
        }
    }

    fn call(
        &self,
        route: (&NodeId, NodeKind),
        msg: RemoteCall,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RemoteReply, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let to = owner(route.0);
        assert_ne!(to, self.me, "a call to a local node went through the link");
        let fleets = self.fleets.clone();
        Box::pin(async move {
            let f = fleets.read().unwrap().get(to).cloned();
            let f = f.ok_or("member not up")?;
            tokio::time::timeout(timeout, f.serve_call(msg))
                .await
                .map_err(|_| "timed out".to_string())
        })
    }
}

fn config() -> FleetConfig {
    FleetConfig {
        rollup_interval: Duration::from_millis(10),
        dispatch_timeout: Duration::from_secs(10),
        remote_report_interval: Duration::from_millis(200),
        ..FleetConfig::default()
    }
}

struct Spread {
    fleets: Vec<Fleet>,
    all: Arc<RwLock<Vec<Fleet>>>,
    lose: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

async fn member(
    h: &Hierarchy,
    me: usize,
    all: &Arc<RwLock<Vec<Fleet>>>,
    lose: &Arc<AtomicBool>,
    calls: &Arc<AtomicU64>,
) -> Fleet {
    let link = Link {
        me,
        fleets: all.clone(),
        lose: lose.clone(),
        lost: Arc::new(AtomicU64::new(0)),
        calls: calls.clone(),
    };
    Fleet::start_linked(
        h.clone(),
        config(),
        Arc::new(NullJournal),
        Arc::new(NoDevices),
        Arc::new(Metrics::default()),
        Some(Arc::new(link)),
    )
    .await
    .expect("member's part starts")
}

async fn spread(h: &Hierarchy) -> Spread {
    let all = Arc::new(RwLock::new(Vec::new()));
    let lose = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut fleets = Vec::new();
    for me in 0..MEMBERS {
        fleets.push(member(h, me, &all, &lose, &calls).await);
    }
    *all.write().unwrap() = fleets.clone();
    Spread {
        fleets,
        all,
        lose,
        calls,
    }
}

/// Every DER's setpoint for `order`, as seen through `fleet`.
async fn setpoints(fleet: &Fleet, h: &Hierarchy, order: &str) -> Vec<(NodeId, u64)> {
    let mut out = Vec::new();
    for d in &h.ders {
        let v = fleet.view(&d.id).await.expect("der view");
        let w: u64 = v
            .setpoints
            .iter()
            .filter(|s| s.dispatch.as_str() == order)
            .map(|s| s.power_w)
            .sum();
        out.push((d.id.clone(), w));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_fleet_rolls_up_splits_and_cancels_like_one_fleet() {
    let h = five_levels(Strategy::ProRata);
    // Every member runs part of the tree, and parents and children are
    // split across members.
    for m in 0..MEMBERS {
        assert!(
            h.sites.iter().any(|s| owner(&s.id) == m),
            "member {m} runs sites"
        );
    }
    let one = Fleet::start(
        h.clone(),
        config(),
        Arc::new(NullJournal),
        Arc::new(NoDevices),
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    let s = spread(&h).await;
    for (m, f) in s.fleets.iter().enumerate() {
        let here = h.sites.iter().filter(|x| f.is_here(&x.id)).count();
        let expected = h.sites.iter().filter(|x| owner(&x.id) == m).count();
        assert_eq!(here, expected, "member {m} runs exactly its sites");
    }

    // Roll-up: the root (member 0) knows the whole fleet, through any member.
    let want = one.view(&id("root")).await.unwrap().envelope;
    for f in &s.fleets {
        let got = eventually(5, || async {
            let v = f.view(&id("root")).await.ok()?;
            (v.envelope == want).then_some(v)
        })
        .await;
        assert_eq!(
            got.envelope.available_w(Direction::Up),
            want.available_w(Direction::Up)
        );
    }

    // A state change on a DER of member 2, set through member 1, reaches
    // the root on member 0.
    let der = h
        .ders
        .iter()
        .find(|d| owner(&d.site) == 2)
        .expect("a DER on member 2");
    let mut st = one.view(&der.id).await.unwrap().state.unwrap();
    st.power_w /= 2;
    st.seq += 1;
    s.fleets[1].set_state(&der.id, st.clone()).await.unwrap();
    one.set_state(&der.id, st).await.unwrap();
    let want = one.refresh(&id("root")).await.unwrap();
    eventually(5, || async {
        let v = s.fleets[0].view(&id("root")).await.ok()?;
        (v.envelope == want).then_some(())
    })
    .await;
    // A fresh pull crosses members too.
    assert_eq!(s.fleets[2].refresh(&id("root")).await.unwrap(), want);

    // Dispatch at the root: the same split as one fleet, DERs on every member.
    let calls_before = s.calls.load(Ordering::SeqCst);
    let o = order("spread-1", "root", 40_000);
    let out_one = one.dispatch(o.clone()).await.unwrap();
    let out = s.fleets[0].dispatch(o.clone()).await.unwrap();
    assert_eq!(out.accepted_w, 40_000);
    assert_eq!(out.accepted_w, out_one.accepted_w);
    assert_eq!(out.ders, out_one.ders);
    assert!(
        s.calls.load(Ordering::SeqCst) > calls_before,
        "the split crossed members"
    );
    let want_sp = setpoints(&one, &h, "spread-1").await;
    for f in &s.fleets {
        assert_eq!(
            setpoints(f, &h, "spread-1").await,
            want_sp,
            "same setpoints, seen from any member"
        );
    }
    let holders: std::collections::BTreeSet<usize> = want_sp
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(d, _)| owner(&h.ders.iter().find(|x| &x.id == d).unwrap().site))
        .collect();
    assert_eq!(holders.len(), MEMBERS, "DERs on every member hold a share");
    // Allocations are answered by the member that holds them.
    let a = s.fleets[1]
        .allocation(&o.id, &id("root"))
        .await
        .unwrap()
        .expect("root holds the order");
    assert_eq!(a.allocated_w, 40_000);

    // Asking again with the same total is a no-op (retries are safe).
    let again = s.fleets[0].dispatch(o.clone()).await.unwrap();
    assert_eq!(again.accepted_w, 40_000);
    assert_eq!(setpoints(&s.fleets[2], &h, "spread-1").await, want_sp);

    // Member 2 loses its part and comes back empty (as when its sites move
    // to a member that never held them): a plain dispatch sees nothing
    // missing, a reassert gives the rebuilt sites their shares back.
    s.fleets[2].stop().await;
    let fresh = member(&h, 2, &s.all, &s.lose, &s.calls).await;
    s.all.write().unwrap()[2] = fresh.clone();
    let lost = setpoints(&s.fleets[0], &h, "spread-1").await;
    assert_ne!(lost, want_sp, "the rebuilt member holds nothing");
    s.fleets[0].dispatch(o.clone()).await.unwrap();
    assert_eq!(
        setpoints(&s.fleets[0], &h, "spread-1").await,
        lost,
        "a plain re-dispatch is a no-op"
    );
    let out = s.fleets[0].reassert(o.clone()).await.unwrap();
    assert_eq!(out.accepted_w, 40_000);
    // Each site holds its share again (its DERs split it by their state
    // now: the rebuilt member starts them at nominal, not where the
    // earlier state change left one).
    let per_site = |sp: &[(NodeId, u64)]| {
        let mut m = std::collections::BTreeMap::new();
        for (d, w) in sp {
            let site = &h.ders.iter().find(|x| &x.id == d).unwrap().site;
            *m.entry(site.clone()).or_insert(0u64) += w;
        }
        m
    };
    assert_eq!(
        per_site(&setpoints(&fresh, &h, "spread-1").await),
        per_site(&want_sp)
    );
    let fleets: Vec<Fleet> = s.all.read().unwrap().clone();

    // Cancel through another member withdraws every setpoint everywhere.
    fleets[2].cancel(&o).await.unwrap();
    for (d, w) in setpoints(&fleets[0], &h, "spread-1").await {
        assert_eq!(w, 0, "{d} still holds a share after cancel");
    }

    for f in fleets.iter().chain([&one]) {
        f.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_report_is_repaired_by_the_next_resend() {
    let h = five_levels(Strategy::ProRata);
    let s = spread(&h).await;
    let before = s.fleets[0].refresh(&id("root")).await.unwrap();
    // Every cast is lost while a DER on another member changes.
    s.lose.store(true, Ordering::SeqCst);
    let der = h
        .ders
        .iter()
        .find(|d| owner(&d.site) != 0)
        .expect("a DER away from the root");
    let mut st = s.fleets[0].view(&der.id).await.unwrap().state.unwrap();
    st.power_w = 0;
    st.seq += 1;
    s.fleets[0].set_state(&der.id, st).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = s.fleets[0].view(&id("root")).await.unwrap().envelope;
    assert_eq!(
        stale, before,
        "with every report lost the root cannot know yet"
    );
    // Messages flow again: the periodic resend repairs the root (no pull).
    s.lose.store(false, Ordering::SeqCst);
    let repaired = eventually(5, || async {
        let v = s.fleets[0].view(&id("root")).await.ok()?;
        (v.envelope != before).then_some(v.envelope)
    })
    .await;
    assert_eq!(repaired, s.fleets[1].refresh(&id("root")).await.unwrap());
    for f in &s.fleets {
        f.stop().await;
    }
}
