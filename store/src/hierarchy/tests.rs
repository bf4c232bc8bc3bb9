use super::*;
use crate::test_support::{hierarchy, id, setpoint, state, temp_store};

fn reopen(dir: &tempfile::TempDir, store: Store) -> Store {
    drop(store);
    Store::open(dir.path()).unwrap()
}

/// One `nodes` record holding the nodes of `h`.
fn record_of(h: &Hierarchy) -> Vec<u8> {
    encode("nodes", &h.nodes().collect::<Vec<_>>()).unwrap()
}

#[test]
fn empty_store_has_an_empty_hierarchy() {
    let (_dir, store) = temp_store();
    assert_eq!(store.load_hierarchy().unwrap(), Hierarchy::default());
    assert_eq!(store.hierarchy_len().unwrap(), 0);
}

#[test]
fn round_trips_exactly_in_file_order() {
    let (dir, store) = temp_store();
    // Not in id order, so a store that sorted by id would reorder it.
    let h = hierarchy(&["z", "a", "m"]);
    store.replace_hierarchy(&h).unwrap();
    assert_eq!(store.load_hierarchy().unwrap(), h);
    assert_eq!(store.hierarchy_len().unwrap(), 5);
    let store = reopen(&dir, store);
    assert_eq!(store.load_hierarchy().unwrap(), h);
}

#[test]
fn large_hierarchies_span_several_records() {
    let (_dir, store) = temp_store();
    let ids: Vec<String> = (0..NODES_PER_RECORD * 2 + 5)
        .map(|i| format!("der-{}", 9999 - i))
        .collect();
    let h = hierarchy(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    store.replace_hierarchy(&h).unwrap();
    assert_eq!(store.inner.nodes.len(), 3);
    assert_eq!(store.load_hierarchy().unwrap(), h);
}

#[test]
fn replace_drops_state_and_setpoints_of_removed_nodes_and_the_old_generation() {
    let (_dir, store) = temp_store();
    store
        .replace_hierarchy(&hierarchy(&["d1", "d2", "d3"]))
        .unwrap();
    store
        .put_der_states(&[
            (id("d1"), state(1)),
            (id("d2"), state(2)),
            (id("d3"), state(3)),
        ])
        .unwrap();
    store
        .put_setpoints(&[
            (id("d1"), vec![setpoint("x")]),
            (id("d2"), vec![setpoint("x")]),
        ])
        .unwrap();
    let h2 = hierarchy(&["d3", "d1", "d4"]);
    store.replace_hierarchy(&h2).unwrap();
    assert_eq!(store.load_hierarchy().unwrap(), h2);
    let mut states: Vec<_> = store.load_der_states().unwrap().into_keys().collect();
    states.sort();
    assert_eq!(states, [id("d1"), id("d3")]);
    assert_eq!(
        store.load_setpoints().unwrap().keys().collect::<Vec<_>>(),
        [&id("d1")]
    );
    assert_eq!(store.inner.nodes.len(), 1, "old generation is gone");
    assert!(!store.inner.meta.contains_key(SWEEP_KEY).unwrap());

    store.replace_hierarchy(&Hierarchy::default()).unwrap();
    assert_eq!(store.load_hierarchy().unwrap(), Hierarchy::default());
    assert!(store.load_der_states().unwrap().is_empty());
    assert!(store.inner.nodes.is_empty());
}

#[test]
fn open_discards_a_generation_written_before_a_crash_but_never_made_current() {
    let (dir, store) = temp_store();
    let h = hierarchy(&["d1"]);
    store.replace_hierarchy(&h).unwrap();
    store
        .put_der_states(&[(id("d1"), state(1)), (id("other"), state(1))])
        .unwrap();
    // As if a replacement had written part of generation 2, then crashed.
    let stray = record_of(&hierarchy(&["x"]));
    store
        .inner
        .nodes
        .insert(node_key(2, 0), stray.clone())
        .unwrap();
    store.inner.nodes.insert(node_key(2, 7), stray).unwrap();
    let store = reopen(&dir, store);
    assert_eq!(store.load_hierarchy().unwrap(), h);
    assert_eq!(store.inner.nodes.len(), 1);
    // No flip happened, so nothing else was touched.
    assert_eq!(store.load_der_states().unwrap().len(), 2);
}

#[test]
fn open_finishes_the_sweep_of_a_replacement_interrupted_after_the_flip() {
    let (dir, store) = temp_store();
    store.replace_hierarchy(&hierarchy(&["d1", "d2"])).unwrap();
    store
        .put_der_states(&[(id("d1"), state(1)), (id("d2"), state(2))])
        .unwrap();
    store
        .put_setpoints(&[(id("d2"), vec![setpoint("x")])])
        .unwrap();
    // Steps 1 and 2 of a replacement by generation 2, without step 3.
    let h2 = hierarchy(&["d1"]);
    store
        .inner
        .nodes
        .insert(node_key(2, 0), record_of(&h2))
        .unwrap();
    let pointer = HierarchyPointer {
        generation: 2,
        nodes: h2.len() as u64,
        records: 1,
    };
    let meta = &store.inner.meta;
    meta.insert(HIERARCHY_KEY, encode("p", &pointer).unwrap())
        .unwrap();
    meta.insert(SWEEP_KEY, encode("s", &2u64).unwrap()).unwrap();
    let store = reopen(&dir, store);
    assert_eq!(store.load_hierarchy().unwrap(), h2);
    assert_eq!(
        store.load_der_states().unwrap().keys().collect::<Vec<_>>(),
        [&id("d1")]
    );
    assert!(store.load_setpoints().unwrap().is_empty());
    assert_eq!(store.inner.nodes.len(), 1);
    assert!(!store.inner.meta.contains_key(SWEEP_KEY).unwrap());
}

#[test]
fn replace_is_not_confused_by_leftovers_of_a_failed_replace() {
    let (_dir, store) = temp_store();
    store.replace_hierarchy(&hierarchy(&["d1"])).unwrap();
    let stray = record_of(&hierarchy(&["x"]));
    store.inner.nodes.insert(node_key(2, 100), stray).unwrap();
    let h = hierarchy(&["d2"]);
    store.replace_hierarchy(&h).unwrap();
    assert_eq!(store.load_hierarchy().unwrap(), h);
}

#[test]
fn a_lost_or_damaged_node_record_is_corrupt() {
    let (_dir, store) = temp_store();
    store.replace_hierarchy(&hierarchy(&["d1", "d2"])).unwrap();
    let good = store.inner.nodes.remove(node_key(1, 0)).unwrap().unwrap();
    let err = store.load_hierarchy().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { tree: NODES, reason, .. }
            if reason == "found 0 nodes in 0 records, 4 nodes in 1 records were written"),
        "{err:?}"
    );
    store.inner.nodes.insert(node_key(1, 0), good).unwrap();
    assert_eq!(store.load_hierarchy().unwrap().len(), 4);
    store
        .inner
        .nodes
        .insert(node_key(1, 0), &[1u8, 0xff][..])
        .unwrap();
    let err = store.load_hierarchy().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { tree: NODES, key, .. } if key == "generation 1 record 0"),
        "{err:?}"
    );
}
