use super::*;
use crate::test_support::{draft, record, temp_store};

fn commit(n: u64) -> Command {
    Command::RegistryCommit {
        changes: vec![Change::put(format!("thing/{n}"), &n).unwrap()],
        draft: draft("thing.create"),
        at_ms: 1_700_000_000_000 + n,
    }
}

#[test]
fn the_same_commands_give_every_replica_the_same_ledger() {
    let (_a, one) = temp_store();
    let (_b, two) = temp_store();
    let cmds = [
        commit(1),
        Command::PutDispatch(record("d1", 5)),
        Command::AppendLedger {
            draft: draft("thing.look"),
            at_ms: 1_700_000_000_100,
        },
        commit(2),
    ];
    for (i, c) in cmds.iter().enumerate() {
        let mark = (i as u64).to_be_bytes();
        one.apply(c, Some(&mark)).unwrap();
        two.apply(c, Some(&mark)).unwrap();
    }
    let a = one.ledger_entries(1, 100).unwrap();
    let b = two.ledger_entries(1, 100).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a, b, "same commands, same chain");
    // The proposer's time stamps the entry, not the replica's clock.
    assert_eq!(a[0].at_ms, 1_700_000_000_001);
    assert_eq!(one.ledger_head().unwrap(), two.ledger_head().unwrap());
    assert_eq!(
        one.applied_mark().unwrap(),
        Some(3u64.to_be_bytes().to_vec())
    );
    assert!(two
        .get_dispatch(&record("d1", 5).order.id)
        .unwrap()
        .is_some());
}

#[test]
fn a_ledger_command_writes_its_mark_with_its_entry() {
    let (_d, store) = temp_store();
    let got = store.apply(&commit(7), Some(b"m7")).unwrap();
    let Applied::Ledger(entry) = got else {
        panic!("expected a ledger entry, got {got:?}")
    };
    assert_eq!(entry.seq, 1);
    assert_eq!(store.applied_mark().unwrap().as_deref(), Some(&b"m7"[..]));
    // Without a mark (a single node), nothing is recorded.
    store.apply(&commit(8), None).unwrap();
    assert_eq!(store.applied_mark().unwrap().as_deref(), Some(&b"m7"[..]));
}

#[test]
fn a_refused_command_writes_nothing_but_its_mark() {
    let (_d, store) = temp_store();
    let too_many = vec![(NodeId::new("site-1").unwrap(), 0, 1); crate::MAX_IMPORT_READINGS + 1];
    let got = store
        .apply(
            &Command::ImportMeter {
                readings: too_many,
                draft: draft("meter.import"),
                at_ms: 1,
            },
            Some(b"m1"),
        )
        .unwrap();
    assert!(
        matches!(got, Applied::Refused(ref why) if why.contains("at most")),
        "{got:?}"
    );
    assert_eq!(store.ledger_head().unwrap(), None);
    assert_eq!(store.applied_mark().unwrap().as_deref(), Some(&b"m1"[..]));
}

#[test]
fn log_entries_append_read_truncate_and_purge() {
    let (_d, store) = temp_store();
    let entries: Vec<(u64, Vec<u8>)> = (1..=10).map(|i| (i, vec![i as u8; 3])).collect();
    store.raft_log_append(&entries).unwrap();
    assert_eq!(store.raft_log_range(3, 6).unwrap(), entries[2..5].to_vec());
    assert_eq!(store.raft_log_last().unwrap(), Some((10, vec![10; 3])));
    store.raft_log_truncate(8).unwrap();
    assert_eq!(store.raft_log_last().unwrap().map(|e| e.0), Some(7));
    store.raft_log_purge(4).unwrap();
    let left: Vec<u64> = store
        .raft_log_range(0, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(left, vec![5, 6, 7]);
    assert!(store.raft_log_range(6, 6).unwrap().is_empty());
    store.put_raft_meta("vote", b"v").unwrap();
    assert_eq!(store.raft_meta("vote").unwrap().as_deref(), Some(&b"v"[..]));
}
