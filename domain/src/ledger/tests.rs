use proptest::prelude::*;

use super::*;

fn draft(n: u64) -> LedgerDraft {
    LedgerDraft {
        actor: format!("acct-{n}"),
        action: "event.create".into(),
        subject: format!("event/ev-{n}"),
        before: n
            .is_multiple_of(2)
            .then(|| digest(format!("before {n}").as_bytes())),
        after: Some(digest(format!("after {n}").as_bytes())),
        detail: format!("{{\"n\":{n}}}"),
    }
}

/// A valid chain of `n` entries.
fn chain(n: u64) -> Vec<LedgerEntry> {
    let mut prev = ZERO_DIGEST;
    (1..=n)
        .map(|seq| {
            let e = LedgerEntry::seal(draft(seq), seq, 1_700_000_000_000 + seq, prev);
            prev = e.hash;
            e
        })
        .collect()
}

fn first_bad(entries: Vec<LedgerEntry>) -> (u64, Check) {
    let bad = verify(entries).first_bad.expect("tampering detected");
    (bad.seq, bad.check)
}

#[test]
fn golden_vector_of_the_module_doc() {
    let e = LedgerEntry::seal(
        LedgerDraft {
            actor: "ops".into(),
            action: "account.create".into(),
            subject: "account/alice".into(),
            before: None,
            after: Some(digest(b"alice")),
            detail: r#"{"role":"participant"}"#.into(),
        },
        1,
        1_700_000_000_000,
        ZERO_DIGEST,
    );
    assert_eq!(
        to_hex(&e.hash),
        "7affb3d78434f4fdb6a1e932cfc7928479755d43a349d5d0fd4d8b13caf7b8d2"
    );
    assert_eq!(
        to_hex(&digest(b"alice")),
        "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
    );
}

#[test]
fn preimage_layout_is_the_documented_one() {
    let e = LedgerEntry::seal(
        LedgerDraft {
            actor: "a".into(),
            action: "".into(),
            subject: "s".into(),
            before: Some([7; 32]),
            after: None,
            detail: "dé".into(),
        },
        2,
        3,
        [9; 32],
    );
    let mut want = vec![1];
    want.extend_from_slice(&2u64.to_be_bytes());
    want.extend_from_slice(&3u64.to_be_bytes());
    want.extend_from_slice(&1u64.to_be_bytes());
    want.push(b'a');
    want.extend_from_slice(&0u64.to_be_bytes());
    want.extend_from_slice(&1u64.to_be_bytes());
    want.push(b's');
    want.push(1);
    want.extend_from_slice(&[7; 32]);
    want.push(0);
    want.extend_from_slice(&3u64.to_be_bytes());
    want.extend_from_slice("dé".as_bytes());
    want.extend_from_slice(&[9; 32]);
    assert_eq!(e.preimage(), want);
    assert_eq!(e.hash, digest(&want));
    let mut stored = want.clone();
    stored.extend_from_slice(&e.hash);
    assert_eq!(e.to_bytes(), stored);
}

#[test]
fn hex_round_trips_and_rejects_junk() {
    let d = digest(b"x");
    let h = to_hex(&d);
    assert_eq!(h.len(), 64);
    assert_eq!(from_hex(&h), Ok(d));
    assert_eq!(from_hex(&h.to_uppercase()), Ok(d));
    for bad in [
        "",
        "00",
        &h[..63],
        &format!("{h}0"),
        &h.replace(&h[..1], "g"),
    ] {
        assert!(from_hex(bad).is_err(), "{bad:?}");
    }
    // Multi-byte characters of the right byte length are not hex either.
    assert!(from_hex(&"é".repeat(32)).is_err());
}

#[test]
fn json_has_hex_digests_and_round_trips() {
    let e = chain(2).pop().unwrap();
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["hash"], to_hex(&e.hash));
    assert_eq!(v["prev"], to_hex(&e.prev));
    assert_eq!(v["before"], to_hex(&e.before.unwrap()));
    let back: LedgerEntry = serde_json::from_value(v).unwrap();
    assert_eq!(back, e);

    let first = chain(1).pop().unwrap();
    let v = serde_json::to_value(&first).unwrap();
    assert!(v["before"].is_null());
    assert_eq!(serde_json::from_value::<LedgerEntry>(v).unwrap(), first);

    let report = verify(chain(3));
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["head"], to_hex(&report.head.unwrap()));
    assert_eq!(serde_json::from_value::<VerifyReport>(v).unwrap(), report);
}

#[test]
fn stored_form_round_trips_and_bad_bytes_are_errors() {
    for e in chain(4) {
        assert_eq!(LedgerEntry::from_bytes(&e.to_bytes()).unwrap(), e);
    }
    let bytes = chain(1).pop().unwrap().to_bytes();
    // Every truncation fails, and so does a trailing byte.
    for n in 0..bytes.len() {
        assert!(LedgerEntry::from_bytes(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(LedgerEntry::from_bytes(&long).is_err());
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert!(LedgerEntry::from_bytes(&v2)
        .unwrap_err()
        .0
        .contains("version 2"));
    // A length that points past the end, and invalid UTF-8.
    let mut huge = bytes.clone();
    huge[17..25].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(LedgerEntry::from_bytes(&huge).is_err());
    let mut utf = bytes.clone();
    utf[25] = 0xff;
    assert!(LedgerEntry::from_bytes(&utf)
        .unwrap_err()
        .0
        .contains("actor"));
}

#[test]
fn a_whole_chain_verifies() {
    let entries = chain(5);
    let head = entries.last().unwrap().hash;
    let r = verify(entries);
    assert_eq!(
        r,
        VerifyReport {
            entries: 5,
            head: Some(head),
            first_bad: None
        }
    );
    assert!(r.is_ok());
    assert_eq!(
        verify(Vec::new()),
        VerifyReport {
            entries: 0,
            head: None,
            first_bad: None
        }
    );
}

#[test]
fn a_changed_field_is_named() {
    let mut c = chain(5);
    c[2].actor = "mallory".into();
    assert_eq!(first_bad(c), (3, Check::Hash));
    let mut c = chain(5);
    c[3].after = None;
    assert_eq!(first_bad(c), (4, Check::Hash));
    let mut c = chain(5);
    c[0].at_ms += 1;
    assert_eq!(first_bad(c), (1, Check::Hash));
}

#[test]
fn a_changed_hash_is_named() {
    let mut c = chain(5);
    c[1].hash[0] ^= 1;
    assert_eq!(first_bad(c), (2, Check::Hash));
}

#[test]
fn a_resealed_entry_breaks_the_link_of_the_next() {
    // Change entry 3 and seal it again: it passes on its own, but entry 4
    // still points at the old hash.
    let mut c = chain(5);
    let mut d = draft(3);
    d.actor = "mallory".into();
    c[2] = LedgerEntry::seal(d, 3, c[2].at_ms, c[2].prev);
    let bad = verify(c).first_bad.unwrap();
    assert_eq!((bad.seq, bad.check), (4, Check::Link));
    assert!(bad.reason.contains("entry 3"), "{}", bad.reason);
}

#[test]
fn a_first_entry_with_a_prev_is_named() {
    let c = vec![LedgerEntry::seal(draft(1), 1, 0, [1; 32])];
    assert_eq!(first_bad(c), (1, Check::Link));
}

#[test]
fn a_deleted_entry_is_named() {
    let mut c = chain(5);
    c.remove(2);
    let r = verify(c);
    assert_eq!(r.entries, 4);
    let bad = r.first_bad.unwrap();
    assert_eq!((bad.seq, bad.check), (3, Check::Sequence));
    assert!(bad.reason.contains("entry 3 is missing"), "{}", bad.reason);
}

#[test]
fn swapped_entries_are_named() {
    let mut c = chain(5);
    c.swap(1, 2);
    assert_eq!(first_bad(c), (2, Check::Sequence));
}

#[test]
fn a_duplicated_entry_is_named() {
    let mut c = chain(3);
    c.insert(2, c[1].clone());
    assert_eq!(first_bad(c), (3, Check::Sequence));
}

#[test]
fn a_chain_not_starting_at_one_is_named() {
    let mut c = chain(3);
    c.remove(0);
    assert_eq!(first_bad(c), (1, Check::Sequence));
}

#[test]
fn only_the_first_failure_is_kept_and_counting_goes_on() {
    let mut c = chain(6);
    c[1].actor = "x".into();
    c[4].actor = "y".into();
    let r = verify(c);
    assert_eq!(r.entries, 6);
    assert_eq!(r.first_bad.unwrap().seq, 2);
}

#[test]
fn undecodable_records_take_their_place() {
    let c = chain(3);
    let mut v = ChainVerifier::new();
    v.push(&c[0]);
    v.push_undecodable("garbage".into());
    assert_eq!(v.next_seq(), 3);
    v.push(&c[2]);
    let r = v.finish();
    assert_eq!(r.entries, 3);
    assert_eq!(r.head, Some(c[2].hash));
    let bad = r.first_bad.unwrap();
    assert_eq!(
        (bad.seq, bad.check, bad.reason.as_str()),
        (2, Check::Decode, "garbage")
    );
}

fn arb_draft() -> impl Strategy<Value = LedgerDraft> {
    (
        ".{0,12}",
        "[a-z.]{0,12}",
        ".{0,12}",
        proptest::option::of(any::<[u8; 32]>()),
        proptest::option::of(any::<[u8; 32]>()),
        ".{0,40}",
    )
        .prop_map(
            |(actor, action, subject, before, after, detail)| LedgerDraft {
                actor,
                action,
                subject,
                before,
                after,
                detail,
            },
        )
}

proptest! {
    #[test]
    fn any_entry_round_trips_and_any_byte_flip_is_caught(
        d in arb_draft(),
        seq in 1u64..,
        at_ms in any::<u64>(),
        prev in any::<[u8; 32]>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let e = LedgerEntry::seal(d, seq, at_ms, prev);
        let bytes = e.to_bytes();
        prop_assert_eq!(LedgerEntry::from_bytes(&bytes).unwrap(), e.clone());
        // Flip one bit anywhere: the record no longer decodes, or decodes
        // to an entry that does not hash to its stored hash.
        let mut bad = bytes.clone();
        bad[flip.index(bytes.len())] ^= 0x10;
        if let Ok(changed) = LedgerEntry::from_bytes(&bad) {
            prop_assert_ne!(changed.computed_hash(), changed.hash);
        }
    }

    /// Different field splits never share a preimage (length prefixes).
    #[test]
    fn moving_bytes_between_fields_changes_the_hash(a in "[a-z]{0,6}", b in "[a-z]{0,6}", cut in 0usize..6) {
        let joined = format!("{a}{b}");
        let cut = cut.min(joined.len());
        let (x, y) = joined.split_at(cut);
        prop_assume!(x != a);
        let mk = |actor: &str, action: &str| LedgerEntry::seal(
            LedgerDraft { actor: actor.into(), action: action.into(), subject: String::new(), before: None, after: None, detail: String::new() },
            1, 0, ZERO_DIGEST,
        ).hash;
        prop_assert_ne!(mk(&a, &b), mk(x, y));
    }
}
