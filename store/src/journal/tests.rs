use super::*;
use crate::test_support::{allocation, did, id, record, temp_store};

#[test]
fn dispatch_records_round_trip_and_replace() {
    let (_dir, store) = temp_store();
    assert_eq!(store.get_dispatch(&did("d1")).unwrap(), None);
    store.put_dispatch_durable(&record("d1", 5)).unwrap();
    let mut r = record("d1", 5);
    r.status = vpp_domain::DispatchStatus::Allocated;
    store.put_dispatch(&r).unwrap();
    assert_eq!(store.get_dispatch(&did("d1")).unwrap(), Some(r));
}

#[test]
fn list_is_newest_first_ties_by_id_and_limited() {
    let (_dir, store) = temp_store();
    for (d, t) in [("a", 10), ("b", 30), ("c", 20), ("d", 30)] {
        store.put_dispatch(&record(d, t)).unwrap();
    }
    let ids = |v: Vec<DispatchRecord>| {
        v.into_iter()
            .map(|r| r.order.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.list_dispatches(10).unwrap()),
        ["b", "d", "c", "a"]
    );
    assert_eq!(ids(store.list_dispatches(2).unwrap()), ["b", "d"]);
    assert!(store.list_dispatches(0).unwrap().is_empty());
}

#[test]
fn allocations_are_found_by_exact_dispatch_prefix() {
    let (_dir, store) = temp_store();
    store
        .put_allocations(&[
            allocation("d1", "n2", 10),
            allocation("d1", "n1", 20),
            allocation("d10", "n1", 30),
            allocation("d1", "n1", 25),
        ])
        .unwrap();
    let of_d1 = store.allocations_of(&did("d1")).unwrap();
    assert_eq!(
        of_d1,
        [allocation("d1", "n1", 25), allocation("d1", "n2", 10)]
    );
    assert_eq!(store.allocations_of(&did("d10")).unwrap().len(), 1);
    assert!(store.allocations_of(&did("d")).unwrap().is_empty());
    assert_eq!(
        store.allocation(&did("d10"), &id("n1")).unwrap(),
        Some(allocation("d10", "n1", 30))
    );
    assert_eq!(store.allocation(&did("d10"), &id("n2")).unwrap(), None);
}

#[test]
fn a_record_under_the_wrong_key_is_corrupt() {
    let (_dir, store) = temp_store();
    let misplaced = crate::codec::encode("r", &record("other", 1)).unwrap();
    store.inner.dispatches.insert("d1", misplaced).unwrap();
    let err = store.get_dispatch(&did("d1")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { tree: DISPATCHES, key, .. } if key == "d1"),
        "{err:?}"
    );
    assert!(store.list_dispatches(5).is_err());
}
