//! `…/{der}/telemetry`: what a device measures, device → runtime, QoS 0.

use serde::{Deserialize, Serialize};
use vpp_domain::DerState;

use crate::codec::Versioned;
use crate::reject::Reject;

/// Largest power a single device may report, W (100 MW).
pub const MAX_POWER_W: i64 = 100_000_000;

/// One measurement.
///
/// ```json
/// {"v":1,"seq":17,"ts":1763700000000,"power_w":-1500,"soc_pct":62.5,"available":true}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Protocol version, 1.
    pub v: u32,
    /// Grows with every message, across device restarts too (a device that
    /// cannot persist a counter uses its clock in ms). Older ones are dropped.
    pub seq: u64,
    /// When measured, Unix ms (device clock).
    pub ts: u64,
    /// Net import, W (negative = export).
    pub power_w: i64,
    /// State of charge, % (batteries, EVs).
    #[serde(default)]
    pub soc_pct: Option<f32>,
    /// Room or tank temperature, °C (HVAC, water heaters).
    #[serde(default)]
    pub temp_c: Option<f32>,
    /// The owner lets the VPP control the device (no local override).
    pub available: bool,
}

impl Versioned for Telemetry {
    fn version(&self) -> u32 {
        self.v
    }
}

impl Telemetry {
    /// Range checks beyond what decoding does.
    pub fn validate(&self) -> Result<(), Reject> {
        let pct_ok = |p: Option<f32>| p.is_none_or(|p| p.is_finite() && (0.0..=100.0).contains(&p));
        let temp_ok =
            |t: Option<f32>| t.is_none_or(|t| t.is_finite() && (-60.0..=150.0).contains(&t));
        if self.seq == 0
            || self.power_w.abs() > MAX_POWER_W
            || !pct_ok(self.soc_pct)
            || !temp_ok(self.temp_c)
        {
            return Err(Reject::OutOfRange);
        }
        Ok(())
    }

    /// The DER state this measurement says (the device is online: it spoke).
    pub fn to_state(&self) -> DerState {
        DerState {
            online: true,
            power_w: self.power_w,
            soc_pct: self.soc_pct,
            temperature_c: self.temp_c,
            accepts_control: self.available,
            updated_ms: self.ts,
            seq: self.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode_binary, encode_json};

    fn sample() -> Telemetry {
        Telemetry {
            v: 1,
            seq: 17,
            ts: 1_763_700_000_000,
            power_w: -1500,
            soc_pct: Some(62.5),
            temp_c: None,
            available: true,
        }
    }

    #[test]
    fn json_and_binary_round_trip() {
        let t = sample();
        assert_eq!(decode::<Telemetry>(&encode_json(&t)).unwrap(), t);
        assert_eq!(decode::<Telemetry>(&encode_binary(&t)).unwrap(), t);
    }

    #[test]
    fn documented_example_decodes() {
        let j = br#"{"v":1,"seq":17,"ts":1763700000000,"power_w":-1500,"soc_pct":62.5,"available":true}"#;
        assert_eq!(decode::<Telemetry>(j).unwrap(), sample());
    }

    #[test]
    fn rejections() {
        assert_eq!(decode::<Telemetry>(b"{"), Err(Reject::Malformed));
        assert_eq!(decode::<Telemetry>(b"\xff\x00"), Err(Reject::Malformed));
        assert_eq!(
            decode::<Telemetry>(br#"{"v":2,"whatever":1}"#),
            Err(Reject::WrongVersion)
        );
        let mut t = sample();
        t.v = 3;
        assert_eq!(
            decode::<Telemetry>(&encode_json(&t)),
            Err(Reject::WrongVersion)
        );
        assert_eq!(
            decode::<Telemetry>(&encode_binary(&t)),
            Err(Reject::WrongVersion)
        );
        assert_eq!(
            decode::<Telemetry>(&vec![b' '; crate::MAX_PAYLOAD + 1]),
            Err(Reject::Oversized)
        );
        let mut t = sample();
        t.soc_pct = Some(f32::NAN);
        assert_eq!(t.validate(), Err(Reject::OutOfRange));
        t.soc_pct = None;
        t.seq = 0;
        assert_eq!(t.validate(), Err(Reject::OutOfRange));
    }
}
