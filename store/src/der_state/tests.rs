use super::*;
use crate::test_support::{id, setpoint, state, temp_store};

#[test]
fn states_round_trip_and_the_last_entry_wins() {
    let (_dir, store) = temp_store();
    assert!(store.load_der_states().unwrap().is_empty());
    store
        .put_der_states(&[
            (id("a"), state(1)),
            (id("b"), state(2)),
            (id("a"), state(3)),
        ])
        .unwrap();
    let got = store.load_der_states().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[&id("a")], state(3));
    assert_eq!(got[&id("b")], state(2));
    assert_eq!(store.der_state(&id("a")).unwrap(), Some(state(3)));
    assert_eq!(store.der_state(&id("c")).unwrap(), None);
}

#[test]
fn empty_setpoint_list_deletes() {
    let (_dir, store) = temp_store();
    store
        .put_setpoints(&[
            (id("a"), vec![setpoint("d1"), setpoint("d2")]),
            (id("b"), vec![setpoint("d1")]),
        ])
        .unwrap();
    store.put_setpoints(&[(id("b"), vec![])]).unwrap();
    let got = store.load_setpoints().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[&id("a")], vec![setpoint("d1"), setpoint("d2")]);
    assert_eq!(store.setpoints(&id("a")).unwrap(), got[&id("a")]);
    assert!(store.setpoints(&id("b")).unwrap().is_empty());
}

#[test]
fn bad_keys_and_values_are_corrupt() {
    let (_dir, store) = temp_store();
    store
        .inner
        .der_state
        .insert("not an id", crate::codec::encode("s", &state(1)).unwrap())
        .unwrap();
    let err = store.load_der_states().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { tree: DER_STATE, key, .. } if key == "not an id"),
        "{err:?}"
    );
    store.inner.setpoints.insert("a", &[9u8][..]).unwrap();
    let err = store.load_setpoints().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { tree: SETPOINTS, key, .. } if key == "a"),
        "{err:?}"
    );
}
