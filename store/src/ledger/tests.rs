use std::collections::HashSet;

use vpp_domain::ledger::{digest, verify, Check};

use super::*;
use crate::test_support::temp_store;

fn draft(n: u64) -> LedgerDraft {
    LedgerDraft {
        actor: format!("acct-{n}"),
        action: "event.create".into(),
        subject: format!("event/ev-{n}"),
        before: None,
        after: Some(digest(&n.to_be_bytes())),
        detail: format!("n={n}"),
    }
}

/// A store holding entries 1..=n.
fn store_with(n: u64) -> (tempfile::TempDir, Store) {
    let (dir, store) = temp_store();
    for i in 1..=n {
        store.append_ledger(draft(i)).unwrap();
    }
    (dir, store)
}

fn raw(store: &Store, seq: u64) -> Vec<u8> {
    store
        .inner
        .ledger
        .get(ledger_entry_key(seq))
        .unwrap()
        .unwrap()
        .to_vec()
}

fn put_raw(store: &Store, seq: u64, bytes: Vec<u8>) {
    store
        .inner
        .ledger
        .insert(ledger_entry_key(seq), bytes)
        .unwrap();
}

fn first_bad(store: &Store) -> (u64, Check, String) {
    let b = store
        .verify_ledger()
        .unwrap()
        .first_bad
        .expect("tampering detected");
    (b.seq, b.check, b.reason)
}

#[test]
fn append_read_and_verify() {
    let (_dir, store) = temp_store();
    assert_eq!(store.ledger_head().unwrap(), None);
    assert_eq!(
        store.verify_ledger().unwrap(),
        VerifyReport {
            entries: 0,
            head: None,
            first_bad: None
        }
    );

    let e1 = store.append_ledger(draft(1)).unwrap();
    let e2 = store.append_ledger(draft(2)).unwrap();
    assert_eq!((e1.seq, e2.seq), (1, 2));
    assert_eq!(e1.prev, ZERO_DIGEST);
    assert_eq!(e2.prev, e1.hash);
    assert_eq!(e2.actor, "acct-2");
    assert!(e1.at_ms > 1_600_000_000_000);
    assert_eq!(store.ledger_head().unwrap(), Some((2, e2.hash)));

    for i in 3..=10 {
        store.append_ledger(draft(i)).unwrap();
    }
    let all = store.ledger_entries(1, usize::MAX).unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[0], e1);
    assert_eq!(all[1], e2);
    let page = store.ledger_entries(4, 3).unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(store.ledger_entries(0, 1).unwrap()[0].seq, 1);
    assert!(store.ledger_entries(11, 5).unwrap().is_empty());

    let report = store.verify_ledger().unwrap();
    assert_eq!(report, verify(all.clone()));
    assert_eq!(report.entries, 10);
    assert_eq!(report.head, Some(all[9].hash));
    assert!(report.is_ok());
}

#[test]
fn the_ledger_survives_a_reopen() {
    let (dir, store) = store_with(3);
    let head = store.ledger_head().unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.ledger_head().unwrap(), head);
    assert_eq!(store.append_ledger(draft(4)).unwrap().seq, 4);
    assert!(store.verify_ledger().unwrap().is_ok());
}

#[test]
fn concurrent_appends_make_one_gap_free_chain() {
    const THREADS: u64 = 4;
    const EACH: u64 = 25;
    let (_dir, store) = temp_store();
    let seqs: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| store.append_ledger(draft(t * 1000 + i)).unwrap().seq)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: HashSet<_> = seqs.iter().copied().collect();
    assert_eq!(
        unique.len() as u64,
        THREADS * EACH,
        "a seq was handed out twice"
    );
    assert_eq!(unique, (1..=THREADS * EACH).collect());
    let report = store.verify_ledger().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, THREADS * EACH);
    // Each thread's own entries are in the order it appended them.
    let all = store.ledger_entries(1, usize::MAX).unwrap();
    for t in 0..THREADS {
        let mine: Vec<_> = all
            .iter()
            .filter(|e| {
                let n: u64 = e.actor.strip_prefix("acct-").unwrap().parse().unwrap();
                n / 1000 == t
            })
            .map(|e| e.detail.clone())
            .collect();
        let want: Vec<_> = (0..EACH).map(|i| format!("n={}", t * 1000 + i)).collect();
        assert_eq!(mine, want);
    }
}

#[test]
fn appends_inside_a_callers_transaction_roll_back_with_it() {
    let (_dir, store) = store_with(2);
    let r: Result<(), TransactionError<StoreError>> = store.inner.ledger.transaction(|t| {
        append_tx(t, draft(3), 0)?;
        Err(ConflictableTransactionError::Abort(
            StoreError::WriteBehindStopped,
        ))
    });
    assert!(r.is_err());
    assert_eq!(store.ledger_head().unwrap().unwrap().0, 2);
    assert_eq!(store.append_ledger(draft(3)).unwrap().seq, 3);
    assert!(store.verify_ledger().unwrap().is_ok());
}

#[test]
fn a_changed_field_is_named() {
    let (_dir, store) = store_with(5);
    let mut e = LedgerEntry::from_bytes(&raw(&store, 3)).unwrap();
    e.actor = "mallory".into();
    put_raw(&store, 3, e.to_bytes());
    let (seq, check, _) = first_bad(&store);
    assert_eq!((seq, check), (3, Check::Hash));
    // Reading still works: damage to the chain is verify's to report.
    assert_eq!(store.ledger_entries(3, 1).unwrap()[0].actor, "mallory");
}

#[test]
fn a_changed_hash_is_named() {
    let (_dir, store) = store_with(5);
    let mut bytes = raw(&store, 4);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    put_raw(&store, 4, bytes);
    assert_eq!(first_bad(&store).0, 4);
    assert_eq!(first_bad(&store).1, Check::Hash);
}

#[test]
fn a_resealed_entry_is_named_by_the_link_of_the_next() {
    let (_dir, store) = store_with(5);
    let e = LedgerEntry::from_bytes(&raw(&store, 2)).unwrap();
    let mut d = draft(2);
    d.detail = "rewritten".into();
    put_raw(
        &store,
        2,
        LedgerEntry::seal(d, 2, e.at_ms, e.prev).to_bytes(),
    );
    assert_eq!(first_bad(&store).0, 3);
    assert_eq!(first_bad(&store).1, Check::Link);
}

#[test]
fn a_deleted_entry_is_named() {
    let (_dir, store) = store_with(5);
    store.inner.ledger.remove(ledger_entry_key(3)).unwrap();
    let (seq, check, reason) = first_bad(&store);
    assert_eq!((seq, check), (3, Check::Sequence));
    assert!(reason.contains("entry 3 is missing"), "{reason}");
}

#[test]
fn deleted_entries_at_the_end_are_named_through_the_head() {
    let (_dir, store) = store_with(5);
    store.inner.ledger.remove(ledger_entry_key(5)).unwrap();
    store.inner.ledger.remove(ledger_entry_key(4)).unwrap();
    let (seq, check, reason) = first_bad(&store);
    assert_eq!((seq, check), (4, Check::Head));
    assert!(reason.contains("entry 4 is missing"), "{reason}");
    // Appends go on after the head, so the hole stays visible.
    assert_eq!(store.append_ledger(draft(6)).unwrap().seq, 6);
    assert_eq!(first_bad(&store).0, 4);
}

#[test]
fn swapped_entries_are_named() {
    let (_dir, store) = store_with(5);
    let (two, three) = (raw(&store, 2), raw(&store, 3));
    put_raw(&store, 2, three);
    put_raw(&store, 3, two);
    let (seq, check, reason) = first_bad(&store);
    assert_eq!((seq, check), (2, Check::Sequence));
    assert!(reason.contains("stored as entry 2 is entry 3"), "{reason}");
    assert!(matches!(
        store.ledger_entries(2, 1),
        Err(StoreError::Corrupt { tree: LEDGER, .. })
    ));
}

#[test]
fn garbage_bytes_are_named_not_an_error() {
    let (_dir, store) = store_with(5);
    put_raw(&store, 3, b"garbage".to_vec());
    let report = store.verify_ledger().unwrap();
    assert_eq!(report.entries, 5);
    let bad = report.first_bad.unwrap();
    assert_eq!((bad.seq, bad.check), (3, Check::Decode));
    assert!(
        bad.reason.contains("entry 3 cannot be read"),
        "{}",
        bad.reason
    );
    let err = store.ledger_entries(1, 10).unwrap_err();
    assert!(err.to_string().contains("key \"entry 3\""), "{err}");
    // An empty value is garbage too.
    put_raw(&store, 3, Vec::new());
    assert_eq!(first_bad(&store).0, 3);
}

#[test]
fn an_entry_appended_behind_the_stores_back_is_named() {
    let (_dir, store) = store_with(3);
    let head = store.ledger_head().unwrap().unwrap();
    // A well-formed entry 4 written without moving the head.
    let forged = LedgerEntry::seal(draft(4), 4, 0, head.1);
    put_raw(&store, 4, forged.to_bytes());
    let (seq, check, _) = first_bad(&store);
    assert_eq!((seq, check), (4, Check::Head));
    // Appending now would overwrite it: refused, nothing written.
    let err = store.append_ledger(draft(5)).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(store.ledger_head().unwrap().unwrap().0, 3);
}

#[test]
fn a_replaced_last_entry_is_named_through_the_head() {
    let (_dir, store) = store_with(3);
    let e = LedgerEntry::from_bytes(&raw(&store, 3)).unwrap();
    let mut d = draft(3);
    d.actor = "mallory".into();
    put_raw(
        &store,
        3,
        LedgerEntry::seal(d, 3, e.at_ms, e.prev).to_bytes(),
    );
    assert_eq!(first_bad(&store).0, 3);
    assert_eq!(first_bad(&store).1, Check::Head);
}

#[test]
fn a_damaged_or_missing_head_is_named() {
    let (_dir, store) = store_with(3);
    store
        .inner
        .ledger
        .insert(LEDGER_HEAD_KEY, &b"xx"[..])
        .unwrap();
    assert_eq!(first_bad(&store).1, Check::Head);
    assert!(matches!(
        store.ledger_head(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(store.append_ledger(draft(4)).is_err());

    store.inner.ledger.remove(LEDGER_HEAD_KEY).unwrap();
    let (seq, check, _) = first_bad(&store);
    assert_eq!((seq, check), (3, Check::Head));
    // Without its head the ledger would restart at 1 over entry 1: refused.
    let err = store.append_ledger(draft(4)).unwrap_err();
    assert!(err.to_string().contains("entry 1 exists"), "{err}");
}

#[test]
fn a_stray_key_is_named() {
    let (_dir, store) = store_with(2);
    store.inner.ledger.insert(b"e12", &b"x"[..]).unwrap();
    let r = store.verify_ledger().unwrap();
    assert_eq!(r.entries, 2);
    assert_eq!(r.first_bad.unwrap().check, Check::Decode);
}
