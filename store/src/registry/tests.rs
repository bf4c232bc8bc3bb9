use super::*;
use crate::test_support::{draft, temp_store};

#[test]
fn commit_writes_records_and_one_ledger_entry() {
    let (_dir, store) = temp_store();
    let e = store
        .registry_commit(
            &[
                Change::put("thing/1", &"one".to_string()).unwrap(),
                Change::put("thing/2", &"two".to_string()).unwrap(),
            ],
            draft("thing.create"),
        )
        .unwrap();
    assert_eq!(e.seq, 1);
    assert_ne!(e.before, e.after);
    let got: Option<String> = store.registry_get("thing/1").unwrap();
    assert_eq!(got.as_deref(), Some("one"));
    let all: Vec<String> = store.registry_scan("thing/").unwrap();
    assert_eq!(all, vec!["one".to_string(), "two".to_string()]);

    // A later change's before digest is the earlier one's after digest when
    // it touches the same keys.
    let e2 = store
        .registry_commit(
            &[
                Change::put("thing/1", &"uno".to_string()).unwrap(),
                Change::put("thing/2", &"two".to_string()).unwrap(),
            ],
            draft("thing.update"),
        )
        .unwrap();
    assert_eq!(e2.seq, 2);
    assert_eq!(e2.before, e.after);
    store
        .registry_commit(&[Change::delete("thing/2")], draft("thing.delete"))
        .unwrap();
    let all: Vec<String> = store.registry_scan("thing/").unwrap();
    assert_eq!(all, vec!["uno".to_string()]);
    assert!(store.verify_ledger().unwrap().first_bad.is_none());
}

#[test]
fn a_record_of_another_type_is_reported_not_panicked() {
    let (_dir, store) = temp_store();
    store
        .registry_commit(&[Change::put("n/1", &7u8).unwrap()], draft("n"))
        .unwrap();
    let r: Result<Option<String>, _> = store.registry_get("n/1");
    assert!(r.is_err());
}
