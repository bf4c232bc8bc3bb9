//! DERs: what kind of device, what it is rated for, and its last known state.
//!
//! Sign convention for power: `power_w` is the net **import** from the grid
//! (consumption positive, generation or discharge negative). "Up" flexibility
//! means less import / more export; "down" means the opposite.

use serde::{Deserialize, Serialize};

/// The kinds of DER the runtime models. Adding one means adding a variant here,
/// to [`DerKind::ALL`], and its physics in [`crate::flex::der_envelope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DerKind {
    /// Stationary battery: can import (charge) or export (discharge).
    Battery,
    /// EV charger: a controllable load while a vehicle is plugged in.
    EvCharger,
    /// Heat pump / air conditioner / thermostat: a load bounded by a comfort band.
    Hvac,
    /// Electric water heater: a load bounded by tank temperature.
    WaterHeater,
    /// Rooftop or ground PV: generation that can be curtailed.
    Pv,
    /// Commercial or industrial load that can be shed.
    CurtailableLoad,
}

impl DerKind {
    /// How many kinds there are (size of per-kind arrays).
    pub const COUNT: usize = 6;
    /// Every kind, in index order.
    pub const ALL: [DerKind; Self::COUNT] = [
        DerKind::Battery,
        DerKind::EvCharger,
        DerKind::Hvac,
        DerKind::WaterHeater,
        DerKind::Pv,
        DerKind::CurtailableLoad,
    ];

    /// Position in per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The snake_case name used in files, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DerKind::Battery => "battery",
            DerKind::EvCharger => "ev_charger",
            DerKind::Hvac => "hvac",
            DerKind::WaterHeater => "water_heater",
            DerKind::Pv => "pv",
            DerKind::CurtailableLoad => "curtailable_load",
        }
    }

    /// How long a load of this kind can hold a shed (or a push) before comfort or
    /// process limits end it, when the rating does not say. Storage kinds are
    /// limited by energy instead.
    pub fn default_hold_s(self) -> u32 {
        match self {
            DerKind::Battery => 0,
            DerKind::EvCharger => 4 * 3600,
            DerKind::Hvac => 3600,
            DerKind::WaterHeater => 2 * 3600,
            DerKind::Pv => 24 * 3600,
            DerKind::CurtailableLoad => 4 * 3600,
        }
    }
}

impl std::fmt::Display for DerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Nameplate and constraints of one DER, in integer units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerRating {
    /// What the device is.
    pub kind: DerKind,
    /// Most it can draw from the grid (charge, heat, charge a car), W.
    pub max_import_w: u64,
    /// Most it can feed into the grid (discharge, generate), W.
    pub max_export_w: u64,
    /// Usable storage (battery, EV pack, tank thermal equivalent), Wh; 0 where none.
    pub energy_wh: u64,
    /// Lowest state of charge the owner allows, percent (storage kinds).
    pub soc_min_pct: u8,
    /// Highest state of charge the owner allows, percent (storage kinds).
    pub soc_max_pct: u8,
    /// Fastest it may change power, W per minute.
    pub ramp_w_per_min: u64,
    /// Comfort band for HVAC, °C (low, high); `None` for other kinds.
    pub comfort_c: Option<(f32, f32)>,
    /// Once switched on, stay on at least this long, s (0 = no constraint).
    pub min_on_s: u32,
    /// Once switched off, stay off at least this long, s (0 = no constraint).
    pub min_off_s: u32,
    /// How long a shed or push can be held, s (loads); 0 = the kind's default.
    pub max_hold_s: u32,
    /// Cost of using this DER, micro-currency per kWh (merit order).
    pub cost_micros_per_kwh: u64,
}

/// Why a rating is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RatingError {
    /// Neither import nor export is possible.
    #[error("a {0} must have max_import_kw or max_export_kw above zero")]
    NoPower(DerKind),
    /// A storage kind without energy.
    #[error("a {0} must have energy_kwh above zero")]
    NoEnergy(DerKind),
    /// SoC limits out of order or beyond 100 %.
    #[error("soc limits {0}..{1} % must satisfy 0 <= min < max <= 100")]
    SocLimits(u8, u8),
    /// Comfort band out of order or outside -50..=80 °C.
    #[error("comfort band {0}..{1} °C must satisfy -50 <= low < high <= 80")]
    Comfort(f32, f32),
    /// A kind that only consumes was given export capability (or vice versa).
    #[error("a {kind} cannot have {field} above zero")]
    WrongDirection {
        /// The kind.
        kind: DerKind,
        /// The field that must be zero.
        field: &'static str,
    },
}

impl DerRating {
    /// A rating with the given kind and powers, everything else neutral.
    pub fn new(kind: DerKind, max_import_w: u64, max_export_w: u64) -> Self {
        Self {
            kind,
            max_import_w,
            max_export_w,
            energy_wh: 0,
            soc_min_pct: 0,
            soc_max_pct: 100,
            ramp_w_per_min: max_import_w.max(max_export_w),
            comfort_c: None,
            min_on_s: 0,
            min_off_s: 0,
            max_hold_s: 0,
            cost_micros_per_kwh: 0,
        }
    }

    /// Checks the constraints that depend on the kind.
    pub fn validate(&self) -> Result<(), RatingError> {
        let k = self.kind;
        if self.max_import_w == 0 && self.max_export_w == 0 {
            return Err(RatingError::NoPower(k));
        }
        if self.soc_min_pct >= self.soc_max_pct || self.soc_max_pct > 100 {
            return Err(RatingError::SocLimits(self.soc_min_pct, self.soc_max_pct));
        }
        match k {
            DerKind::Battery | DerKind::EvCharger if self.energy_wh == 0 => {
                return Err(RatingError::NoEnergy(k));
            }
            DerKind::EvCharger
            | DerKind::Hvac
            | DerKind::WaterHeater
            | DerKind::CurtailableLoad
                if self.max_export_w > 0 =>
            {
                return Err(RatingError::WrongDirection {
                    kind: k,
                    field: "max_export_kw",
                });
            }
            DerKind::Pv if self.max_import_w > 0 => {
                return Err(RatingError::WrongDirection {
                    kind: k,
                    field: "max_import_kw",
                });
            }
            _ => {}
        }
        if let Some((lo, hi)) = self.comfort_c {
            if !(lo.is_finite() && hi.is_finite() && -50.0 <= lo && lo < hi && hi <= 80.0) {
                return Err(RatingError::Comfort(lo, hi));
            }
        }
        Ok(())
    }

    /// How long a shed or push can be held, s.
    pub fn hold_s(&self) -> u32 {
        if self.max_hold_s > 0 {
            self.max_hold_s
        } else {
            self.kind.default_hold_s()
        }
    }
}

/// The last known state of a DER: what telemetry (or an operator) last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerState {
    /// Reachable right now. Offline DERs count in `total` but offer nothing.
    pub online: bool,
    /// Net import now, W (negative = export).
    pub power_w: i64,
    /// State of charge, percent (storage kinds).
    pub soc_pct: Option<f32>,
    /// Room or tank temperature, °C (thermal kinds).
    pub temperature_c: Option<f32>,
    /// The owner lets the VPP control it (no local override in force).
    pub accepts_control: bool,
    /// When this state was observed, Unix ms.
    pub updated_ms: u64,
    /// Sequence number of the observation; older ones are ignored.
    pub seq: u64,
}

impl DerState {
    /// A plausible operating point for a DER nobody has reported on yet, so an
    /// imported hierarchy shows real flexibility before any telemetry arrives:
    /// batteries idle at mid charge, loads at part load, PV at 60 % output.
    pub fn nominal(rating: &DerRating) -> Self {
        let imp = rating.max_import_w as i64;
        let exp = rating.max_export_w as i64;
        let (power_w, soc_pct, temperature_c) = match rating.kind {
            DerKind::Battery => (0, Some(50.0), None),
            DerKind::EvCharger => (imp, Some(40.0), None),
            DerKind::Hvac => {
                let mid = rating
                    .comfort_c
                    .map(|(lo, hi)| (lo + hi) / 2.0)
                    .unwrap_or(21.0);
                (imp / 2, None, Some(mid))
            }
            DerKind::WaterHeater => (imp, None, Some(55.0)),
            DerKind::Pv => (-(exp * 6 / 10), None, None),
            DerKind::CurtailableLoad => (imp * 7 / 10, None, None),
        };
        Self {
            online: true,
            power_w,
            soc_pct,
            temperature_c,
            accepts_control: true,
            updated_ms: 0,
            seq: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_in_order() {
        for (i, k) in DerKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn rating_rules() {
        let mut b = DerRating::new(DerKind::Battery, 5000, 5000);
        assert_eq!(b.validate(), Err(RatingError::NoEnergy(DerKind::Battery)));
        b.energy_wh = 13_500;
        assert_eq!(b.validate(), Ok(()));
        b.soc_min_pct = 90;
        b.soc_max_pct = 10;
        assert!(matches!(b.validate(), Err(RatingError::SocLimits(90, 10))));
        let pv = DerRating::new(DerKind::Pv, 100, 4000);
        assert!(matches!(
            pv.validate(),
            Err(RatingError::WrongDirection { .. })
        ));
        let none = DerRating::new(DerKind::Hvac, 0, 0);
        assert!(matches!(none.validate(), Err(RatingError::NoPower(_))));
        let mut hvac = DerRating::new(DerKind::Hvac, 3000, 0);
        hvac.comfort_c = Some((24.0, 20.0));
        assert!(matches!(hvac.validate(), Err(RatingError::Comfort(..))));
    }
}
