//! Values on disk: one format-version byte, then postcard.
//!
//! ```text
//!   ┌────────┬──────────────────────────┐
//!   │ 0x01   │ postcard(value)          │
//!   └────────┴──────────────────────────┘
//!    version  serde fields, in declaration order
//! ```
//!
//! postcard is compact (varints, no field names) but not self-describing: a
//! field added to a domain type changes the layout. The version byte is what
//! lets a later build recognise old records and convert them instead of
//! misreading them. Decoding never panics: anything unexpected becomes
//! [`StoreError::Corrupt`] naming the tree and key.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

/// The format version written as the first byte of every value.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// Encodes `value` in the versioned envelope. `what` names it in errors.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT_VERSION]).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a value read from `tree` at `key`.
pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| corrupt(tree, key, reason);
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this build reads version {FORMAT_VERSION}"
        )));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| corrupt(format!("postcard: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// A [`StoreError::Corrupt`] for `key` in `tree`.
pub(crate) fn corrupt(tree: &'static str, key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests;
