//! Supervision of hosted DER actors.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vpp_domain::{
    DerKind, DerRating, DerSpec, Direction, Hierarchy, Location, NodeId, Segment, SiteSpec,
    Strategy, VirtualDerSpec,
};

use crate::messages::AggregateMsg;
use crate::{Fleet, FleetConfig, Metrics, NullJournal};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn one_site() -> Hierarchy {
    Hierarchy {
        virtual_ders: vec![VirtualDerSpec {
            id: id("root"),
            name: String::new(),
            parent: None,
            strategy: Strategy::ProRata,
        }],
        sites: vec![SiteSpec {
            id: id("s"),
            name: String::new(),
            parent: id("root"),
            location: Location {
                lat: 0.0,
                lon: 0.0,
                zone: "z".into(),
                feeder: "f".into(),
            },
            segment: Segment::Residential,
            owner: String::new(),
            strategy: Strategy::ProRata,
        }],
        ders: (0..2)
            .map(|i| DerSpec {
                id: id(&format!("d{i}")),
                name: String::new(),
                site: id("s"),
                rating: DerRating::new(DerKind::CurtailableLoad, 1000, 0),
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_panicking_der_is_restarted_and_its_site_lives_on() {
    let metrics = Arc::new(Metrics::default());
    let fleet = Fleet::start(
        one_site(),
        FleetConfig::default(),
        Arc::new(NullJournal),
        Arc::new(crate::NoDevices),
        metrics.clone(),
    )
    .await
    .unwrap();
    let before = fleet.view(&id("s")).await.unwrap().envelope;
    assert_eq!(before.available_w(Direction::Up), 1400);

    let site = fleet.site_actor(&id("d1")).unwrap();
    let r = site
        .call(|rp| AggregateMsg::PanicDer(1, rp), None)
        .await
        .unwrap()
        .unwrap();
    let err = r.unwrap_err();
    assert!(
        err.contains("injected fault") && err.contains("restarted"),
        "{err}"
    );
    assert_eq!(metrics.actor_failures.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.actor_restarts.load(Ordering::Relaxed), 1);

    // No store: the restarted DER knows no state and counts as offline; the
    // site's envelope drops its share, the other DER is untouched.
    let d1 = fleet.view(&id("d1")).await.unwrap();
    assert!(!d1.state.unwrap().online);
    let after = fleet.view(&id("s")).await.unwrap().envelope;
    assert_eq!(after.available_w(Direction::Up), 700);
    assert_eq!(after.total().total, 2);
    // The site still serves its DERs.
    assert!(fleet.view(&id("d0")).await.unwrap().state.unwrap().online);
    fleet.stop().await;
}

/// Roll-up phases: a virtual DER waits for the next instant of its phase in
/// the wall-clock period, never less than a moment nor more than a period.
#[test]
fn a_report_waits_for_the_next_instant_of_its_phase() {
    use std::time::Duration;

    use super::phase_wait;
    let ms = Duration::from_millis;
    let t = ms(100);
    // 1,000,030 ms since the epoch is 30 ms into a period.
    let now = 1_000_030_000;
    assert_eq!(phase_wait(t, ms(50), now), ms(20));
    // Past this period's instant: the next period's.
    assert_eq!(phase_wait(t, ms(10), now), ms(80));
    // At the instant itself: a whole period (at most one report per period).
    assert_eq!(phase_wait(t, ms(30), now), ms(100));
    // Parents (larger phases) come after their children in every period.
    assert!(phase_wait(t, ms(33), now) < phase_wait(t, ms(66), now));
    // No period: at once.
    assert_eq!(phase_wait(Duration::ZERO, ms(10), now), Duration::ZERO);
}
