//! `…/{site}/telemetry`, `…/{site}/ack`, `…/{site}/reported`: site batches;
//! `…/{site}/desired`: site documents.
//!
//! A gateway may send the telemetry (or the acks, or the reported documents)
//! of several of its site's DERs in one message instead of one message per
//! DER; a runtime set to do so sends each site one document holding every
//! DER's desired document. Each item is exactly the per-DER message of that
//! channel, named by its DER id:
//!
//! ```json
//! {"v":1,"items":[{"der":"site-1-bat","msg":{"v":1,"seq":17,"ts":1763700000000,"power_w":-1500,"available":true}},
//!                 {"der":"site-1-pv","msg":{"v":1,"seq":9,"ts":1763700000000,"power_w":-3200,"available":true}}]}
//! ```
//!
//! Items are taken in order (an `accepted` and an `applied` ack of the same
//! DER may share a batch) and checked one by one: a bad item is rejected and
//! counted like a bad single message, and the rest of the batch still counts.
//! The broker carries one message where it carried one per DER, which is what
//! a million devices on a small machine need (`BENCHMARKS.md`).

use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

/// A site batch may be at most this large (bytes, either encoding): inside
/// the embedded broker's packet limit (20,480 bytes, `broker-config/`).
pub const MAX_BATCH_PAYLOAD: usize = 16_384;

/// A site batch may carry at most this many items.
pub const MAX_BATCH_ITEMS: usize = 256;

/// Several DERs' messages of one channel, from one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteBatch<T> {
    /// Protocol version, `1`.
    pub v: u32,
    /// The messages, in the order the gateway produced them.
    pub items: Vec<BatchItem<T>>,
}

/// One DER's message inside a [`SiteBatch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem<T> {
    /// The DER it is about (it must belong to the batch's site).
    pub der: String,
    /// The message, exactly as it would be sent on the DER's own topic.
    pub msg: T,
}

impl<T> Versioned for SiteBatch<T> {
    fn version(&self) -> u32 {
        self.v
    }
}

impl<T> SiteBatch<T> {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            v: crate::VERSION,
            items: Vec::new(),
        }
    }
}

impl<T> Default for SiteBatch<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_batch, encode_binary, encode_json};
    use crate::reject::Reject;
    use crate::{Ack, AckStatus, Telemetry};

    #[test]
    fn documented_example_decodes() {
        let j = br#"{"v":1,"items":[{"der":"site-1-bat","msg":{"v":1,"seq":17,"ts":1763700000000,"power_w":-1500,"available":true}},
                 {"der":"site-1-pv","msg":{"v":1,"seq":9,"ts":1763700000000,"power_w":-3200,"available":true}}]}"#;
        let b: SiteBatch<Telemetry> = decode_batch(j).unwrap();
        assert_eq!(b.items.len(), 2);
        assert_eq!(b.items[1].der, "site-1-pv");
        assert_eq!(b.items[1].msg.power_w, -3200);
    }

    #[test]
    fn round_trips_in_both_encodings_and_keeps_order() {
        let mut b = SiteBatch::new();
        for status in [AckStatus::Accepted, AckStatus::Applied] {
            b.items.push(BatchItem {
                der: "d".into(),
                msg: Ack {
                    v: 1,
                    version: 5,
                    status,
                    reason: None,
                },
            });
        }
        assert_eq!(decode_batch::<Ack>(&encode_json(&b)).unwrap(), b);
        assert_eq!(decode_batch::<Ack>(&encode_binary(&b)).unwrap(), b);
    }

    #[test]
    fn rejections() {
        assert_eq!(
            decode_batch::<Ack>(br#"{"v":2,"items":[]}"#),
            Err(Reject::WrongVersion)
        );
        assert_eq!(
            decode_batch::<Ack>(br#"{"v":1,"items":{}}"#),
            Err(Reject::Malformed)
        );
        // Larger than a single message may be, within the batch limit.
        let mut b = SiteBatch::new();
        for i in 0..60 {
            b.items.push(BatchItem {
                der: format!("a-rather-long-der-id-{i:04}"),
                msg: Ack {
                    v: 1,
                    version: 1,
                    status: AckStatus::Applied,
                    reason: None,
                },
            });
        }
        let json = encode_json(&b);
        assert!(json.len() > crate::MAX_PAYLOAD);
        assert!(decode_batch::<Ack>(&json).is_ok());
        assert_eq!(
            decode_batch::<Ack>(&vec![b' '; MAX_BATCH_PAYLOAD + 1]),
            Err(Reject::Oversized)
        );
        let mut many = b.clone();
        while many.items.len() <= MAX_BATCH_ITEMS {
            many.items.push(b.items[0].clone());
        }
        assert_eq!(
            decode_batch::<Ack>(&encode_binary(&many)),
            Err(Reject::Oversized)
        );
    }
}
