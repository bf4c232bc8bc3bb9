//! `…/{der}/reported`: what the device is executing, retained, QoS 1.
//!
//! Published by the device after it applies a desired document (and on
//! connect), so anyone can compare desired and reported versions: a device
//! whose reported version lags the desired one has not converged yet.

use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

/// The device's side of the shadow.
///
/// ```json
/// {"v":1,"version":1763700000123,"target_power_w":-2500}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    /// Protocol version, 1.
    pub v: u32,
    /// Version of the desired document the device holds (0: none yet).
    pub version: u64,
    /// The net import it is steering to, W, if under command.
    #[serde(default)]
    pub target_power_w: Option<i64>,
}

impl Versioned for Reported {
    fn version(&self) -> u32 {
        self.v
    }
}
