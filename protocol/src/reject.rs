//! Why an incoming message was rejected: the reasons the runtime counts.

/// A reason to reject a message from a device. Each has a stable snake_case
/// name used as the counter label (`vpp_mqtt_rejected_total{reason=…}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// The topic is not a protocol v1 device topic.
    #[error("topic is not a vpp/v1 device topic")]
    Topic,
    /// The shard segment is not the site's shard.
    #[error("shard segment does not match the site id")]
    WrongShard,
    /// The payload is larger than [`crate::MAX_PAYLOAD`] (a site batch:
    /// [`crate::MAX_BATCH_PAYLOAD`] or [`crate::MAX_BATCH_ITEMS`] items).
    #[error(
        "payload too large (over {} bytes; a site batch over {} bytes or {} items)",
        crate::MAX_PAYLOAD,
        crate::MAX_BATCH_PAYLOAD,
        crate::MAX_BATCH_ITEMS
    )]
    Oversized,
    /// The payload does not decode as the channel's message.
    #[error("payload does not decode")]
    Malformed,
    /// The payload decodes but names another protocol version.
    #[error("unsupported protocol version")]
    WrongVersion,
    /// A value is out of range (negative sequence, NaN, absurd power…).
    #[error("value out of range")]
    OutOfRange,
    /// No such DER at that site in the hierarchy.
    #[error("unknown device")]
    UnknownDevice,
    /// Sequence number not newer than the last one applied.
    #[error("replayed or stale sequence number")]
    Replayed,
    /// An ack for a desired version the runtime never published.
    #[error("ack for an unknown desired version")]
    UnknownVersion,
    /// Devices may not publish here (e.g. a device writing `desired`).
    #[error("device may not publish on this channel")]
    ReadOnly,
}

impl Reject {
    /// Every reason, in counter order.
    pub const ALL: [Reject; 10] = [
        Reject::Topic,
        Reject::WrongShard,
        Reject::Oversized,
        Reject::Malformed,
        Reject::WrongVersion,
        Reject::OutOfRange,
        Reject::UnknownDevice,
        Reject::Replayed,
        Reject::UnknownVersion,
        Reject::ReadOnly,
    ];

    /// The counter label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Topic => "bad_topic",
            Reject::WrongShard => "wrong_shard",
            Reject::Oversized => "oversized",
            Reject::Malformed => "malformed",
            Reject::WrongVersion => "wrong_version",
            Reject::OutOfRange => "out_of_range",
            Reject::UnknownDevice => "unknown_device",
            Reject::Replayed => "replayed",
            Reject::UnknownVersion => "unknown_version",
            Reject::ReadOnly => "read_only_channel",
        }
    }

    /// Index into [`Reject::ALL`] (for counter arrays).
    pub fn index(self) -> usize {
        Reject::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}
