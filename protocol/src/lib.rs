//! # vpp-protocol: device protocol v1
//!
//! The one definition of how devices and the runtime talk over MQTT, used by
//! the runtime (`vpp serve`) and by the fleet simulator (`vpp-loadgen`). The
//! human-readable specification is `docs/device-protocol.md`; this crate is
//! its code.
//!
//! ```text
//!   vpp/v1/{shard}/{site}/status            device → runtime  retained, last will
//!   vpp/v1/{shard}/{site}/{der}/telemetry   device → runtime  QoS 0
//!   vpp/v1/{shard}/{site}/{der}/reported    device → runtime  QoS 1, retained
//!   vpp/v1/{shard}/{site}/{der}/ack         device → runtime  QoS 1
//!   vpp/v1/{shard}/{site}/{der}/desired     runtime → device  QoS 1, retained
//!   vpp/v1/{shard}/{site}/telemetry         device → runtime  QoS 0, site batch
//!   vpp/v1/{shard}/{site}/ack               device → runtime  QoS 1, site batch
//!   vpp/v1/{shard}/{site}/reported          device → runtime  QoS 1, retained, site batch
//!   vpp/v1/{shard}/{site}/desired           runtime → device  QoS 1, retained, site document
//! ```
//!
//! A site batch ([`batch`]) carries the messages of one channel for several
//! of the site's DERs in one message; a site document is a site batch of
//! every DER's desired document (when the runtime is set to publish them).
//!
//! `shard` is two lowercase hex digits, [`shard_of`] the site id: a fixed
//! function, so a cluster node can subscribe to exactly the shards it owns.
//!
//! The **desired** document is the device shadow: it always carries the
//! complete set of setpoints the device should hold, with a version that only
//! grows. It is retained, so a device that reconnects, or every device after
//! a broker restart (the runtime republishes on reconnect), converges to the
//! latest one; a device ignores any version not newer than what it holds.
//!
//! Payloads are JSON ([`codec`]); a compact binary variant (postcard behind a
//! one-byte marker) is accepted everywhere JSON is.

#![deny(missing_docs, unreachable_pub, unsafe_code)]

pub mod ack;
pub mod batch;
pub mod codec;
pub mod desired;
pub mod reject;
pub mod reported;
pub mod status;
pub mod telemetry;
pub mod topic;

pub use ack::{Ack, AckStatus};
pub use batch::{BatchItem, SiteBatch, MAX_BATCH_ITEMS, MAX_BATCH_PAYLOAD};
pub use codec::{decode, decode_batch, encode_binary, encode_json, MAX_PAYLOAD};
pub use desired::{Desired, DesiredSetpoint};
pub use reject::Reject;
pub use reported::Reported;
pub use status::Status;
pub use telemetry::Telemetry;
pub use topic::{shard_of, Channel, Topic, PREFIX, SHARDS};

/// The protocol version every payload carries in its `v` field.
pub const VERSION: u32 = 1;
