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
