//! Key layouts, one function per tree, so the bytes are defined in one place.
//!
//! | tree          | key                                              |
//! |---------------|--------------------------------------------------|
//! | `meta`        | ASCII name (`schema_version`, `hierarchy`, …)    |
//! | `nodes`       | generation (u64 BE) ‖ record number (u64 BE)     |
//! | `der_state`   | node id                                          |
//! | `setpoints`   | node id                                          |
//! | `dispatches`  | dispatch id                                      |
//! | `allocations` | dispatch id ‖ 0x00 ‖ node id                     |
//! | `ledger`      | `e` ‖ seq (u64 BE) per entry, `h` for the head   |
//!
//! Ids are validated ASCII without 0x00 (see [`vpp_domain::id`]), so the 0x00
//! separator makes a dispatch's allocations one exact prefix: `d1` never
//! matches the allocations of `d10`. Big-endian numbers sort numerically, so a
//! generation is one contiguous key range, its records in file order.

use vpp_domain::{DispatchId, NodeId};

use crate::codec::corrupt;
use crate::error::StoreError;

/// `meta` key of the schema version.
pub(crate) const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
/// `meta` key of the pointer to the current hierarchy generation.
pub(crate) const HIERARCHY_KEY: &[u8] = b"hierarchy";
/// `meta` key present while a hierarchy replacement still has to clean up.
pub(crate) const SWEEP_KEY: &[u8] = b"hierarchy_sweep_pending";

/// `ledger` key of the head record: (seq, hash) of the last entry.
pub(crate) const LEDGER_HEAD_KEY: &[u8] = b"h";
/// First byte of every `ledger` entry key.
const LEDGER_ENTRY_TAG: u8 = b'e';
/// Above every entry key and below the head key: the end of an entry range.
pub(crate) const LEDGER_END_KEY: &[u8] = b"f";

/// `ledger` key of entry `seq`.
pub(crate) fn ledger_entry_key(seq: u64) -> [u8; 9] {
    let mut key = [LEDGER_ENTRY_TAG; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The seq of a `ledger` entry key; none for any other key.
pub(crate) fn ledger_entry_seq(key: &[u8]) -> Option<u64> {
    match key {
        [LEDGER_ENTRY_TAG, seq @ ..] => Some(u64::from_be_bytes(seq.try_into().ok()?)),
        _ => None,
    }
}

/// Length of a `nodes` key.
pub(crate) const NODE_KEY_LEN: usize = 16;

/// The key range prefix of one hierarchy generation.
pub(crate) fn generation_prefix(generation: u64) -> [u8; 8] {
    generation.to_be_bytes()
}

/// Key of record number `record` (file order) of `generation`.
pub(crate) fn node_key(generation: u64, record: u64) -> [u8; NODE_KEY_LEN] {
    let mut key = [0; NODE_KEY_LEN];
    key[..8].copy_from_slice(&generation.to_be_bytes());
    key[8..].copy_from_slice(&record.to_be_bytes());
    key
}

/// Key of one node's allocation of one dispatch.
pub(crate) fn allocation_key(dispatch: &DispatchId, node: &NodeId) -> Vec<u8> {
    let mut key = allocation_prefix(dispatch);
    key.extend_from_slice(node.as_str().as_bytes());
    key
}

/// Prefix of every allocation of `dispatch`.
pub(crate) fn allocation_prefix(dispatch: &DispatchId) -> Vec<u8> {
    let mut key = Vec::with_capacity(dispatch.as_str().len() + 1 + 16);
    key.extend_from_slice(dispatch.as_str().as_bytes());
    key.push(0);
    key
}

/// Parses a node id key of `tree`.
pub(crate) fn node_id(tree: &'static str, key: &[u8]) -> Result<NodeId, StoreError> {
    let s = std::str::from_utf8(key).map_err(|e| corrupt(tree, key, format!("key: {e}")))?;
    NodeId::new(s).map_err(|e| corrupt(tree, key, format!("key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_prefix_does_not_match_longer_ids() {
        let d1 = DispatchId::new("d1").unwrap();
        let d10 = DispatchId::new("d10").unwrap();
        let n = NodeId::new("n").unwrap();
        assert!(allocation_key(&d1, &n).starts_with(&allocation_prefix(&d1)));
        assert!(!allocation_key(&d10, &n).starts_with(&allocation_prefix(&d1)));
    }

    #[test]
    fn node_keys_sort_by_generation_then_record() {
        assert!(node_key(1, u64::MAX) < node_key(2, 0));
        assert!(node_key(2, 9) < node_key(2, 10));
        assert!(node_key(3, 0).starts_with(&generation_prefix(3)));
    }

    #[test]
    fn ledger_entry_keys_sort_by_seq_between_their_bounds() {
        assert!(ledger_entry_key(9) < ledger_entry_key(10));
        assert!(&ledger_entry_key(u64::MAX)[..] < LEDGER_END_KEY);
        assert!(LEDGER_END_KEY < LEDGER_HEAD_KEY);
        assert_eq!(ledger_entry_seq(&ledger_entry_key(42)), Some(42));
        assert_eq!(ledger_entry_seq(b"h"), None);
        assert_eq!(ledger_entry_seq(b"e123"), None);
    }

    #[test]
    fn bad_node_id_keys_are_corrupt() {
        for key in [&b""[..], b"a/b", &[0xff, 0xfe]] {
            assert!(matches!(
                node_id("der_state", key),
                Err(StoreError::Corrupt {
                    tree: "der_state",
                    ..
                })
            ));
        }
    }
}
