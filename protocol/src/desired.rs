//! `…/{der}/desired`: the setpoints a device should hold, runtime → device,
//! QoS 1, retained.
//!
//! Always the complete set (the device shadow): an empty `setpoints` list
//! means "no command, run normally". `version` only grows (the runtime uses
//! `max(previous + 1, now in ms)`, so it keeps growing across restarts of the
//! runtime without being stored); a device ignores a version not newer than
//! the one it holds. Each setpoint moves the device by `power_w` from where it
//! would otherwise be, in `direction`, between `start_ms` and `end_ms`;
//! `target_power_w` is the net import the runtime expects at that point.

use serde::{Deserialize, Serialize};
use vpp_domain::{Direction, Setpoint};

use crate::codec::Versioned;

/// One setpoint in a desired document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSetpoint {
    /// The dispatch order it serves.
    pub dispatch: String,
    /// `up` (less import / more export) or `down`.
    pub direction: Direction,
    /// How far to move, W.
    pub power_w: u64,
    /// Expected net import while it holds, W (negative = export).
    pub target_power_w: i64,
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End, Unix ms; the device drops the setpoint by itself after it.
    pub end_ms: u64,
    /// Ramp limit, W/min.
    pub ramp_w_per_min: u64,
}

impl From<&Setpoint> for DesiredSetpoint {
    fn from(s: &Setpoint) -> Self {
        Self {
            dispatch: s.dispatch.to_string(),
            direction: s.direction,
            power_w: s.power_w,
            target_power_w: s.target_power_w,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            ramp_w_per_min: s.ramp_w_per_min,
        }
    }
}

/// The desired document.
///
/// ```json
/// {"v":1,"version":1763700000123,"setpoints":[{"dispatch":"dr-1","direction":"up",
///  "power_w":2000,"target_power_w":-2000,"start_ms":1763700000000,
///  "end_ms":1763700900000,"ramp_w_per_min":5000}]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Protocol version, 1.
    pub v: u32,
    /// Grows with every change; see the module docs.
    pub version: u64,
    /// Every setpoint the device should hold; empty = none.
    pub setpoints: Vec<DesiredSetpoint>,
}

impl Versioned for Desired {
    fn version(&self) -> u32 {
        self.v
    }
}

impl Desired {
    /// The signed movement this document asks for at `now_ms`, W
    /// (positive = up, i.e. less import).
    pub fn delta_up_w(&self, now_ms: u64) -> i64 {
        self.setpoints
            .iter()
            .filter(|s| s.start_ms <= now_ms && now_ms < s.end_ms)
            .map(|s| match s.direction {
                Direction::Up => s.power_w as i64,
                Direction::Down => -(s.power_w as i64),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode_json};

    #[test]
    fn documented_example_decodes() {
        let j =
            br#"{"v":1,"version":1763700000123,"setpoints":[{"dispatch":"dr-1","direction":"up",
 "power_w":2000,"target_power_w":-2000,"start_ms":1763700000000,
 "end_ms":1763700900000,"ramp_w_per_min":5000}]}"#;
        let d: Desired = decode(j).unwrap();
        assert_eq!(d.setpoints.len(), 1);
        assert_eq!(d.delta_up_w(1_763_700_000_500), 2000);
        assert_eq!(d.delta_up_w(1_763_700_900_000), 0);
        assert_eq!(decode::<Desired>(&encode_json(&d)).unwrap(), d);
    }
}
