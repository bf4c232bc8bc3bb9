//! `vpp/v1/{shard}/{site}/status`: gateway online/offline, retained.
//!
//! A site's gateway connects with a last will of `{"v":1,"online":false}`
//! (retained, QoS 1) on this topic and publishes `{"v":1,"online":true}`
//! (retained) once connected. Offline takes every DER of the site out of the
//! envelope at once; a gateway that multiplexes many sites on one connection
//! relies on the telemetry timeout instead.

use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

/// Gateway liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Protocol version, 1.
    pub v: u32,
    /// Connected or not.
    pub online: bool,
}

impl Versioned for Status {
    fn version(&self) -> u32 {
        self.v
    }
}
