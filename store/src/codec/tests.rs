use proptest::prelude::*;
use vpp_domain::{DerState, DispatchRecord, NodeAllocation, NodeId, NodeSpec, Setpoint};

use super::*;
use crate::test_support::{allocation, hierarchy, record, setpoint, state};

fn round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode("test", value).unwrap();
    assert_eq!(bytes[0], FORMAT_VERSION);
    assert_eq!(&decode::<T>("t", b"k", &bytes).unwrap(), value);
}

fn assert_corrupt<T: DeserializeOwned + std::fmt::Debug>(bytes: &[u8], want: &str) {
    match decode::<T>("der_state", b"der-1", bytes) {
        Err(StoreError::Corrupt { tree, key, reason }) => {
            assert_eq!((tree, key.as_str()), ("der_state", "der-1"));
            assert!(
                reason.contains(want),
                "{reason:?} does not mention {want:?}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn every_stored_type_round_trips() {
    round_trip(&state(7));
    for node in hierarchy(&["a", "b"]).nodes() {
        round_trip(&node);
    }
    let mut rec = record("d1", 5);
    rec.summary = Some(Default::default());
    round_trip(&rec);
    round_trip(&allocation("d1", "n1", 1500));
    round_trip(&vec![setpoint("d1"), setpoint("d2")]);
    round_trip(&42u32);
}

#[test]
fn wrong_version_is_corrupt() {
    let mut bytes = encode("state", &state(1)).unwrap();
    bytes[0] = 2;
    assert_corrupt::<DerState>(&bytes, "format version 2");
    bytes[0] = 0;
    assert_corrupt::<DerState>(&bytes, "format version 0");
}

#[test]
fn empty_garbage_and_truncated_values_are_corrupt() {
    assert_corrupt::<DerState>(&[], "empty value");
    assert_corrupt::<DerState>(&[FORMAT_VERSION, 7, 0xff, 0xff, 0xff], "postcard");
    let bytes = encode("state", &state(1)).unwrap();
    assert_corrupt::<DerState>(&bytes[..bytes.len() - 3], "postcard");
    let mut long = bytes.clone();
    long.extend_from_slice(&[0, 0]);
    assert_corrupt::<DerState>(&long, "2 trailing bytes");
}

#[test]
fn an_invalid_id_inside_a_value_is_corrupt() {
    // postcard of a String "a b": length 3, then the bytes.
    assert_corrupt::<NodeId>(&[FORMAT_VERSION, 3, b'a', b' ', b'b'], "postcard");
}

#[test]
fn key_is_reported_as_lossy_utf8() {
    match decode::<u32>("nodes", &[b'k', 0xff], &[]) {
        Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "k\u{fffd}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever is on disk, decoding returns a value or `Corrupt`; it never
    /// panics and never reports another error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        fn check<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
            match decode::<T>("t", b"k", bytes) {
                Ok(_) | Err(StoreError::Corrupt { .. }) => Ok(()),
                Err(e) => Err(TestCaseError::fail(format!("unexpected error {e}"))),
            }
        }
        let mut versioned = vec![FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        for b in [&bytes, &versioned] {
            check::<DerState>(b)?;
            check::<NodeSpec>(b)?;
            check::<DispatchRecord>(b)?;
            check::<NodeAllocation>(b)?;
            check::<Vec<Setpoint>>(b)?;
        }
    }
}
