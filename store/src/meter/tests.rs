use super::*;
use crate::test_support::{id, temp_store};

#[test]
fn range_is_half_open_per_site_and_in_time_order() {
    let (_dir, store) = temp_store();
    store
        .put_meter(&[
            (id("a"), 600_000, 1500),
            (id("a"), 0, -200),
            (id("a"), 300_000, 0),
            (id("ab"), 300_000, 99),
            (id("b"), 300_000, 7),
        ])
        .unwrap();
    let a = store.meter_range(&id("a"), 0, 600_000).unwrap();
    assert_eq!(a.into_iter().collect::<Vec<_>>(), [(0, -200), (300_000, 0)]);
    let a = store.meter_range(&id("a"), 300_000, u64::MAX).unwrap();
    assert_eq!(
        a.into_iter().collect::<Vec<_>>(),
        [(300_000, 0), (600_000, 1500)]
    );
    // `a` does not reach into `ab`, and empty or reversed ranges are empty.
    assert_eq!(store.meter_range(&id("ab"), 0, u64::MAX).unwrap().len(), 1);
    assert!(store.meter_range(&id("a"), 10, 10).unwrap().is_empty());
    assert!(store.meter_range(&id("a"), 20, 10).unwrap().is_empty());
    assert!(store.meter_range(&id("c"), 0, u64::MAX).unwrap().is_empty());
}

#[test]
fn a_reading_replaces_the_one_of_the_same_interval() {
    let (_dir, store) = temp_store();
    store.put_meter(&[(id("a"), 0, 1)]).unwrap();
    store
        .put_meter(&[(id("a"), 0, i64::MIN), (id("a"), u64::MAX - 1, i64::MAX)])
        .unwrap();
    let got = store.meter_range(&id("a"), 0, u64::MAX).unwrap();
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [(0, i64::MIN), (u64::MAX - 1, i64::MAX)]
    );
}

#[test]
fn readings_survive_a_reopen() {
    let (dir, store) = temp_store();
    store.put_meter(&[(id("a"), 900_000, 42)]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.meter_range(&id("a"), 0, u64::MAX).unwrap()[&900_000],
        42
    );
}

#[test]
fn a_damaged_value_is_corrupt_not_a_panic() {
    let (_dir, store) = temp_store();
    store
        .inner
        .meter
        .insert(meter_key(&id("a"), 0), &[1, 2, 3][..])
        .unwrap();
    let e = store.meter_range(&id("a"), 0, 1).unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { tree: METER, .. }),
        "{e:?}"
    );
}

fn draft() -> LedgerDraft {
    LedgerDraft {
        actor: "operator".into(),
        action: "meter.import".into(),
        subject: "meter/a".into(),
        before: None,
        after: None,
        detail: "2 readings".into(),
    }
}

#[test]
fn an_import_writes_its_readings_and_one_ledger_entry() {
    let (_dir, store) = temp_store();
    store.put_meter(&[(id("a"), 0, 5)]).unwrap();
    let e = store
        .import_meter(&[(id("a"), 0, 100), (id("a"), 900_000, 200)], draft())
        .unwrap();
    assert_eq!((e.seq, e.actor.as_str()), (1, "operator"));
    let got = store.meter_range(&id("a"), 0, u64::MAX).unwrap();
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [(0, 100), (900_000, 200)]
    );
    assert_eq!(
        store.ledger_entries(1, 10).unwrap(),
        std::slice::from_ref(&e)
    );
    assert!(store.verify_ledger().unwrap().first_bad.is_none());

    // The digests depend on the values, not on the order of the lines; a
    // re-import of the same data finds what it writes.
    let again = store
        .import_meter(&[(id("a"), 900_000, 200), (id("a"), 0, 100)], draft())
        .unwrap();
    assert_eq!(again.after, e.after);
    assert_eq!(again.before, e.after);
    assert_ne!(e.before, e.after);
}

#[test]
fn a_failing_import_leaves_nothing() {
    let (_dir, store) = temp_store();
    store.put_meter(&[(id("a"), 0, 5)]).unwrap();
    // A damaged ledger head makes the ledger append abort after the
    // readings were written inside the transaction.
    store
        .inner
        .ledger
        .insert(crate::keys::LEDGER_HEAD_KEY, &b"junk"[..])
        .unwrap();
    let e = store
        .import_meter(&[(id("a"), 0, 100), (id("b"), 0, 1)], draft())
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert_eq!(store.meter_range(&id("a"), 0, u64::MAX).unwrap()[&0], 5);
    assert!(store.meter_range(&id("b"), 0, u64::MAX).unwrap().is_empty());
    assert!(store.ledger_entries(1, 10).unwrap().is_empty());
}

#[test]
fn an_import_over_the_limit_is_refused_before_writing() {
    let (_dir, store) = temp_store();
    let too_many: Vec<_> = (0..=MAX_IMPORT_READINGS as u64)
        .map(|i| (id("a"), i * 300_000, 1))
        .collect();
    let e = store.import_meter(&too_many, draft()).unwrap_err();
    assert!(e.to_string().contains("at most 1000000 readings"), "{e}");
    assert!(store.meter_range(&id("a"), 0, u64::MAX).unwrap().is_empty());
    assert!(store.ledger_head().unwrap().is_none());
}
