//! `vpp audit verify` and `vpp audit export` on a data dir, with the ledger
//! tampered with directly in sled the way someone with disk access could.
//!
//! Run: `cargo nextest run -p vpp-runtime --test audit`

mod common;

use std::path::Path;

use common::process::vpp;
use vpp_domain::ledger::{digest, to_hex, LedgerDraft, LedgerEntry};
use vpp_store::Store;

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// A data dir whose ledger holds `n` entries; returns them.
fn ledger_with(dir: &Path, n: u64) -> Vec<LedgerEntry> {
    let store = Store::open(dir).unwrap();
    let entries = (1..=n)
        .map(|i| {
            store
                .append_ledger(LedgerDraft {
                    actor: format!("acct-{i}"),
                    action: "event.create".into(),
                    subject: format!("event/ev-{i}"),
                    before: None,
                    after: Some(digest(&i.to_be_bytes())),
                    detail: format!(r#"{{"n":{i},"note":"a, b"}}"#),
                })
                .unwrap()
        })
        .collect();
    drop(store);
    entries
}

/// The sled key of ledger entry `seq` (`e` ‖ seq u64 BE, store/src/keys.rs).
fn entry_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Opens the data dir with sled itself, lets `f` change the `ledger` tree,
/// flushes and closes.
fn tamper(dir: &Path, f: impl FnOnce(&sled::Tree)) {
    let db = sled::open(dir).unwrap();
    let ledger = db.open_tree("ledger").unwrap();
    f(&ledger);
    db.flush().unwrap();
}

fn verify(dir: &Path, extra: &[&str]) -> std::process::Output {
    let d = dir.to_str().unwrap();
    let mut args = vec!["--data-dir", d, "audit", "verify"];
    args.extend_from_slice(extra);
    vpp(&args)
}

#[test]
fn verify_names_the_entry_changed_in_the_sled_file() {
    let dir = tempfile::tempdir().unwrap();
    let entries = ledger_with(dir.path(), 5);

    let out = verify(dir.path(), &[]);
    let text = s(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", s(&out.stderr));
    assert!(text.contains("entries checked: 5"), "{text}");
    assert!(
        text.contains(&format!("head: 5:{}", to_hex(&entries[4].hash))),
        "{text}"
    );
    assert!(text.trim_end().ends_with("ok"), "{text}");

    // Change the actor of entry 3 in the raw record, same length, hash
    // untouched.
    tamper(dir.path(), |ledger| {
        let key = entry_key(3);
        let mut bytes = ledger.get(&key).unwrap().unwrap().to_vec();
        let at = bytes
            .windows(6)
            .position(|w| w == b"acct-3")
            .expect("actor in the record");
        bytes[at..at + 6].copy_from_slice(b"acct-X");
        ledger.insert(key, bytes).unwrap();
    });

    let out = verify(dir.path(), &[]);
    let text = s(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}{}", s(&out.stderr));
    assert!(text.contains("ledger broken at entry 3: "), "{text}");
    assert!(text.contains("(hash check)"), "{text}");

    let out = verify(dir.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_bad"]["seq"], 3);
    assert_eq!(v["first_bad"]["check"], "hash");
    assert_eq!(v["entries"], 5);
}

#[test]
fn verify_names_a_deleted_entry_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with(dir.path(), 4);
    tamper(dir.path(), |ledger| {
        ledger.remove(entry_key(2)).unwrap();
    });
    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stdout).contains("ledger broken at entry 2: entry 2 is missing"),
        "{}",
        s(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    ledger_with(dir.path(), 4);
    tamper(dir.path(), |ledger| {
        ledger.insert(entry_key(4), &b"\xffgarbage"[..]).unwrap();
    });
    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stdout).contains("ledger broken at entry 4: "),
        "{}",
        s(&out.stdout)
    );
}

#[test]
fn an_anchor_catches_a_chain_rewritten_from_an_entry_on() {
    let dir = tempfile::tempdir().unwrap();
    let entries = ledger_with(dir.path(), 3);
    let anchor = format!("3:{}", to_hex(&entries[2].hash));
    let out = verify(dir.path(), &["--anchor", &anchor]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stdout));

    // Rewrite entry 3 and the head record consistently: the chain alone
    // cannot tell.
    tamper(dir.path(), |ledger| {
        let old = &entries[2];
        let forged = LedgerEntry::seal(
            LedgerDraft {
                actor: "mallory".into(),
                action: old.action.clone(),
                subject: old.subject.clone(),
                before: old.before,
                after: old.after,
                detail: old.detail.clone(),
            },
            3,
            old.at_ms,
            old.prev,
        );
        ledger.insert(entry_key(3), forged.to_bytes()).unwrap();
        let mut head = vec![1];
        head.extend_from_slice(&3u64.to_be_bytes());
        head.extend_from_slice(&forged.hash);
        ledger.insert(b"h", head).unwrap();
    });
    assert_eq!(verify(dir.path(), &[]).status.code(), Some(0));
    let out = verify(dir.path(), &["--anchor", &anchor]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stdout).contains("ledger broken at entry 3: its hash is"),
        "{}",
        s(&out.stdout)
    );
    let out = verify(dir.path(), &["--anchor", "9:00"]);
    assert_eq!(out.status.code(), Some(2), "a bad anchor is a usage error");
}

#[test]
fn export_writes_every_entry_back_readable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let entries = ledger_with(dir.path(), 6);

    let out = vpp(&["--data-dir", d, "audit", "export"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let back: Vec<LedgerEntry> = s(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, entries);
    let first: serde_json::Value =
        serde_json::from_str(s(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["hash"], to_hex(&entries[0].hash));
    assert!(first["before"].is_null());
    assert!(
        s(&out.stderr).contains(&format!("--anchor 6:{}", to_hex(&entries[5].hash))),
        "{}",
        s(&out.stderr)
    );

    let out = vpp(&["--data-dir", d, "audit", "export", "--from", "4"]);
    let seqs: Vec<u64> = s(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<LedgerEntry>(l).unwrap().seq)
        .collect();
    assert_eq!(seqs, vec![4, 5, 6]);

    let csv = dir.path().join("ledger.csv");
    let out = vpp(&[
        "--data-dir",
        d,
        "audit",
        "export",
        "--format",
        "csv",
        "--output",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(
        lines[0],
        "seq,at_ms,actor,action,subject,before,after,detail,prev,hash"
    );
    let e = &entries[1];
    assert_eq!(
        lines[2],
        format!(
            r#"2,{},acct-2,event.create,event/ev-2,,{},"{{""n"":2,""note"":""a, b""}}",{},{}"#,
            e.at_ms,
            to_hex(&e.after.unwrap()),
            to_hex(&e.prev),
            to_hex(&e.hash)
        )
    );
    assert!(!dir.path().join("ledger.csv.partial").exists());
}

#[test]
fn a_store_held_by_a_node_or_missing_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with(dir.path(), 1);
    let held = Store::open(dir.path()).unwrap();
    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = s(&out.stderr);
    assert!(
        err.contains(&format!(
            "the node serving {} holds the store; stop it or use the API",
            dir.path().display()
        )),
        "{err}"
    );
    let d = dir.path().to_str().unwrap();
    let out = vpp(&["--data-dir", d, "audit", "export"]);
    assert!(!out.status.success());
    assert!(s(&out.stderr).contains("holds the store"));
    drop(held);

    let empty = tempfile::tempdir().unwrap();
    let out = verify(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(s(&out.stderr).contains("no store in"), "{}", s(&out.stderr));
    assert!(!empty.path().join("db").exists(), "verify created a store");
}
