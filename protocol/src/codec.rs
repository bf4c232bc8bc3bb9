//! Encoding and decoding payloads.
//!
//! Optional fields are always written (as `null` in JSON): postcard is not
//! self-describing, so a field may not be skipped. JSON readers may omit them.
//!
//! JSON is the default so real devices and `mosquitto_pub` can speak the
//! protocol. The binary variant is postcard after the marker byte
//! [`BINARY_MARKER`] (JSON never starts with it), for gateways that care
//! about bytes. Both carry the same fields, `v` first.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::batch::{SiteBatch, MAX_BATCH_ITEMS, MAX_BATCH_PAYLOAD};
use crate::reject::Reject;
use crate::VERSION;

/// Largest payload accepted, bytes. A desired document with a few dozen
/// setpoints fits easily; anything bigger is hostile or broken.
pub const MAX_PAYLOAD: usize = 4096;

/// First byte of a binary (postcard) payload.
pub const BINARY_MARKER: u8 = 0xB1;

/// A message that carries the protocol version.
pub trait Versioned {
    /// The `v` field.
    fn version(&self) -> u32;
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Decodes a payload of either encoding, checking size and version.
pub fn decode<T: DeserializeOwned + Versioned>(payload: &[u8]) -> Result<T, Reject> {
    decode_within(payload, MAX_PAYLOAD)
}

/// Decodes a [`SiteBatch`]: as [`decode`], with the batch's larger size
/// limit ([`MAX_BATCH_PAYLOAD`]) and at most [`MAX_BATCH_ITEMS`] items.
pub fn decode_batch<T: DeserializeOwned>(payload: &[u8]) -> Result<SiteBatch<T>, Reject> {
    let b: SiteBatch<T> = decode_within(payload, MAX_BATCH_PAYLOAD)?;
    if b.items.len() > MAX_BATCH_ITEMS {
        return Err(Reject::Oversized);
    }
    Ok(b)
}

fn decode_within<T: DeserializeOwned + Versioned>(
    payload: &[u8],
    limit: usize,
) -> Result<T, Reject> {
    if payload.len() > limit {
        return Err(Reject::Oversized);
    }
    if payload.first() == Some(&BINARY_MARKER) {
        let body = &payload[1..];
        return match postcard::from_bytes::<T>(body) {
            Ok(m) if m.version() == VERSION => Ok(m),
            Ok(_) => Err(Reject::WrongVersion),
            // The version leads every message, so a newer layout is still told apart.
            Err(_) => match postcard::take_from_bytes::<u32>(body) {
                Ok((v, _)) if v != VERSION => Err(Reject::WrongVersion),
                _ => Err(Reject::Malformed),
            },
        };
    }
    match serde_json::from_slice::<T>(payload) {
        Ok(m) if m.version() == VERSION => Ok(m),
        Ok(_) => Err(Reject::WrongVersion),
        Err(_) => match serde_json::from_slice::<VersionOnly>(payload) {
            Ok(VersionOnly { v }) if v != VERSION => Err(Reject::WrongVersion),
            _ => Err(Reject::Malformed),
        },
    }
}

/// JSON encoding.
pub fn encode_json<T: Serialize>(msg: &T) -> Vec<u8> {
    // Our message types hold no maps with non-string keys: this cannot fail.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Binary encoding: [`BINARY_MARKER`] then postcard.
pub fn encode_binary<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![BINARY_MARKER];
    out.extend(postcard::to_stdvec(msg).unwrap_or_default());
    out
}
