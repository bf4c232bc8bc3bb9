//! `…/{der}/ack`: a device's answer to a desired document, QoS 1.
//!
//! A device answers each desired version it receives: `accepted` (it will
//! follow it), or `rejected` with a reason (it cannot: the runtime takes the
//! newly added setpoints off it and re-splits them among other devices), and
//! later `applied` once it holds the target. Acks for versions older than the
//! newest published one still count for the setpoints they covered.

use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

/// What the device says about a desired version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Received and will follow.
    Accepted,
    /// Cannot follow (see `reason`).
    Rejected,
    /// Holding the target now.
    Applied,
}

/// An ack.
///
/// ```json
/// {"v":1,"version":1763700000123,"status":"rejected","reason":"battery below reserve"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Protocol version, 1.
    pub v: u32,
    /// The desired document's version being answered.
    pub version: u64,
    /// The answer.
    pub status: AckStatus,
    /// Why, for rejections (at most 200 characters are kept).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Versioned for Ack {
    fn version(&self) -> u32 {
        self.v
    }
}
