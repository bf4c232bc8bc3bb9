use std::collections::HashSet;

use vpp_domain::{
    DerKind, DerRating, DerSpec, DerState, Direction, DispatchId, Hierarchy, Location, Segment,
    Setpoint, SiteSpec, Strategy, VirtualDerSpec,
};

use super::*;
use crate::{WriteBehind, WriteBehindOptions};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn record(der: &str) -> DerRecord {
    let rating = DerRating::new(DerKind::CurtailableLoad, 1000, 0);
    DerRecord {
        id: id(der),
        state: DerState::nominal(&rating),
        setpoints: vec![Setpoint {
            dispatch: DispatchId::new("d1").unwrap(),
            direction: Direction::Up,
            power_w: 10,
            target_power_w: 690,
            start_ms: 1,
            end_ms: 2,
            ramp_w_per_min: 1000,
        }],
    }
}

fn hierarchy(sites: &[&str]) -> Hierarchy {
    let mut h = Hierarchy::default();
    h.virtual_ders.push(VirtualDerSpec {
        id: id("root"),
        name: String::new(),
        parent: None,
        strategy: Strategy::ProRata,
    });
    for s in sites {
        h.sites.push(SiteSpec {
            id: id(s),
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
        });
        h.ders.push(DerSpec {
            id: id(&format!("{s}-d")),
            name: String::new(),
            site: id(s),
            rating: DerRating::new(DerKind::CurtailableLoad, 1000, 0),
        });
    }
    h
}

#[test]
fn round_trip_replace_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_site_ders(&[
            (id("s1"), vec![record("a"), record("b")]),
            (id("s2"), vec![record("c")]),
        ])
        .unwrap();
    assert_eq!(store.site_ders(&id("s1")).unwrap().len(), 2);
    store
        .put_site_ders(&[(id("s1"), vec![record("b")])])
        .unwrap();
    assert_eq!(store.site_ders(&id("s1")).unwrap(), vec![record("b")]);
    store.put_site_ders(&[(id("s2"), Vec::new())]).unwrap();
    assert!(store.site_ders(&id("s2")).unwrap().is_empty());
    let all = store.load_site_ders().unwrap();
    assert_eq!(
        all.keys().cloned().collect::<HashSet<_>>(),
        HashSet::from([id("s1")])
    );
}

#[test]
fn write_behind_persists_latest_record_per_site_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let wb = WriteBehind::start(store.clone(), WriteBehindOptions::default()).unwrap();
        let h = wb.handle();
        h.queue_site_ders(id("s1"), vec![record("a")]);
        h.queue_site_ders(id("s1"), vec![record("a"), record("b")]);
        h.flush_blocking().unwrap();
        assert_eq!(store.site_ders(&id("s1")).unwrap().len(), 2);
        wb.shutdown().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.site_ders(&id("s1")).unwrap().len(), 2);
}

#[test]
fn replacing_the_hierarchy_drops_records_of_removed_sites() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.replace_hierarchy(&hierarchy(&["s1", "s2"])).unwrap();
    store
        .put_site_ders(&[
            (id("s1"), vec![record("s1-d")]),
            (id("s2"), vec![record("s2-d")]),
        ])
        .unwrap();
    store.replace_hierarchy(&hierarchy(&["s1"])).unwrap();
    assert_eq!(store.site_ders(&id("s1")).unwrap().len(), 1);
    assert!(store.site_ders(&id("s2")).unwrap().is_empty());
}

#[test]
fn garbage_record_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .inner
        .site_ders
        .insert("s1", &[1u8, 0xff, 0xff][..])
        .unwrap();
    assert!(matches!(
        store.site_ders(&id("s1")),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(store.load_site_ders().is_err());
}
