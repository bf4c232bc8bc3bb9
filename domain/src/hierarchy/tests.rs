use super::*;
use crate::der::DerKind;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn vder(i: &str, parent: Option<&str>) -> VirtualDerSpec {
    VirtualDerSpec {
        id: id(i),
        name: i.to_string(),
        parent: parent.map(id),
        strategy: Strategy::ProRata,
    }
}

fn site(i: &str, parent: &str) -> SiteSpec {
    SiteSpec {
        id: id(i),
        name: i.to_string(),
        parent: id(parent),
        location: Location {
            lat: 52.0,
            lon: 4.0,
            zone: "z1".into(),
            feeder: "f1".into(),
        },
        segment: Segment::Residential,
        owner: "o".into(),
        strategy: Strategy::ProRata,
    }
}

fn der(i: &str, s: &str) -> DerSpec {
    DerSpec {
        id: id(i),
        name: i.to_string(),
        site: id(s),
        rating: DerRating::new(DerKind::CurtailableLoad, 1000, 0),
    }
}

fn good() -> Hierarchy {
    Hierarchy {
        virtual_ders: vec![vder("root", None), vder("north", Some("root"))],
        sites: vec![site("s1", "north"), site("s2", "root")],
        ders: vec![der("d1", "s1"), der("d2", "s1"), der("d3", "s2")],
    }
}

#[test]
fn valid_hierarchy_has_topology() {
    let t = good().validate().unwrap();
    assert_eq!(t.root, Some(id("root")));
    assert_eq!(t.children_of(&id("s1")), &[id("d1"), id("d2")]);
    assert_eq!(t.children_of(&id("root")), &[id("north"), id("s2")]);
    assert_eq!(t.depth, 4);
    assert_eq!(t.subtree(&id("north")).len(), 4);
}

#[test]
fn duplicate_ids_across_kinds() {
    let mut h = good();
    h.ders.push(der("s1", "s2"));
    let errs = h.validate().unwrap_err();
    assert!(errs.contains(&HierarchyError::DuplicateId { id: id("s1") }));
}

#[test]
fn unknown_and_wrong_parents() {
    let mut h = good();
    h.sites.push(site("s3", "nowhere"));
    h.ders.push(der("d9", "north"));
    let errs = h.validate().unwrap_err();
    assert!(errs.contains(&HierarchyError::UnknownParent {
        id: id("s3"),
        parent: id("nowhere")
    }));
    assert!(errs
        .iter()
        .any(|e| matches!(e, HierarchyError::WrongParentKind { id: i, .. } if *i == id("d9"))));
}

#[test]
fn cycles_and_roots() {
    let mut h = good();
    h.virtual_ders.push(vder("a", Some("b")));
    h.virtual_ders.push(vder("b", Some("a")));
    let errs = h.validate().unwrap_err();
    let cyc = errs
        .iter()
        .find_map(|e| match e {
            HierarchyError::Cycle { path, .. } => Some(path.clone()),
            _ => None,
        })
        .expect("cycle reported");
    assert_eq!(cyc.first(), cyc.last());
    assert_eq!(cyc.len(), 3);

    let mut h = good();
    h.virtual_ders.push(vder("root2", None));
    assert!(matches!(
        h.validate().unwrap_err()[0],
        HierarchyError::MultipleRoots { .. }
    ));

    let h = Hierarchy::default();
    assert_eq!(h.validate().unwrap_err(), vec![HierarchyError::NoRoot]);
}

#[test]
fn self_parent_is_a_cycle() {
    let mut h = good();
    h.virtual_ders.push(vder("me", Some("me")));
    assert!(h
        .validate()
        .unwrap_err()
        .iter()
        .any(|e| matches!(e, HierarchyError::Cycle { .. })));
}

#[test]
fn bad_fields_are_named() {
    let mut h = good();
    h.ders[0].rating = DerRating::new(DerKind::Hvac, 0, 0);
    h.sites[0].location.lat = 200.0;
    let errs = h.validate().unwrap_err();
    assert!(errs.iter().any(
        |e| matches!(e, HierarchyError::BadField { id: i, field: "rating", .. } if *i == id("d1"))
    ));
    assert!(errs.iter().any(
        |e| matches!(e, HierarchyError::BadField { id: i, field: "location", .. } if *i == id("s1"))
    ));
}

#[test]
fn error_count_is_capped() {
    let mut h = good();
    for i in 0..200 {
        h.ders.push(der(&format!("x{i}"), "missing"));
    }
    let errs = h.validate().unwrap_err();
    assert_eq!(errs.len(), MAX_REPORTED_ERRORS + 1);
    assert_eq!(errs.last(), Some(&HierarchyError::TooMany));
}

#[test]
fn nodes_round_trip() {
    let h = good();
    let back = Hierarchy::from_nodes(h.nodes());
    assert_eq!(back, h);
}
