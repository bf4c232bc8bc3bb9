//! Device physics, one model per DER kind, as plain code (no tokio, no I/O).
//!
//! A model answers four questions about its device at an instant:
//!
//! ```text
//!   natural_w   what it would draw with no command (net import, W)
//!   baseline_w  the point a command is measured from (natural, except for
//!               loads whose thermostat would otherwise cancel a shed)
//!   range_w     the net import it can reach right now [lo, hi]
//!   check       can it move by Δ "up" (less import) from its baseline? If not, why
//! ```
//!
//! and [`Model::step`] advances its state over `dt` seconds holding a power,
//! returning the power it really drew (a battery at its floor draws less
//! than asked). The device layer (`device.rs`) ramps the commanded move,
//! clamps it into `range_w` and calls `step`; telemetry reports what `step`
//! returned, so it is honest by construction.
//!
//! Sign convention (as in `vpp_domain`): power is net import, negative =
//! export; "up" = less import / more export.

pub(crate) mod battery;
pub(crate) mod curtailable_load;
pub(crate) mod ev_charger;
pub(crate) mod hvac;
pub(crate) mod pv;
pub(crate) mod water_heater;

use std::f64::consts::PI;

use vpp_domain::{DerKind, DerRating};

use crate::rng::SplitMix64;

/// The world around a device at one simulated instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ambient {
    /// Local solar hour, 0..24.
    pub(crate) hour: f64,
    /// Outdoor air temperature, °C.
    pub(crate) outdoor_c: f64,
}

impl Ambient {
    /// The sky and weather at a local solar hour.
    pub(crate) fn at(hour: f64) -> Self {
        Self {
            hour,
            outdoor_c: outdoor_c(hour),
        }
    }
}

/// Outdoor temperature by hour: a heating-season day, 8 °C ± 5 °C, coldest
/// at 05:00 and warmest at 17:00.
pub(crate) fn outdoor_c(hour: f64) -> f64 {
    8.0 - 5.0 * (2.0 * PI * (hour - 5.0) / 24.0).cos()
}

/// Clear-sky output factor 0..=1: a bell from 06:00 to 18:00 solar time,
/// peaking at noon (season and latitude left out on purpose).
pub(crate) fn clear_sky(hour: f64) -> f64 {
    if hour <= 6.0 || hour >= 18.0 {
        return 0.0;
    }
    (PI * (hour - 6.0) / 12.0).sin().powf(1.5)
}

/// Within this many watts of a target counts as holding it: 50 W or 2 % of
/// the larger rating, whichever is more (meters and inverters are not exact).
pub(crate) fn tolerance_w(rating: &DerRating) -> f64 {
    (rating.max_import_w.max(rating.max_export_w) as f64 * 0.02).max(50.0)
}

/// What every kind answers; see the module docs.
pub(crate) trait Model {
    /// Net import with no command, W.
    fn natural_w(&self, amb: &Ambient) -> f64;
    /// The point a command is measured from, W.
    fn baseline_w(&self, amb: &Ambient) -> f64 {
        self.natural_w(amb)
    }
    /// Net import reachable now, `(lo, hi)`, W.
    fn range_w(&self, amb: &Ambient) -> (f64, f64);
    /// Whether a move of `delta_up_w` from the baseline is possible now.
    fn check(&self, delta_up_w: f64, amb: &Ambient, tol_w: f64) -> Result<(), String>;
    /// Advances `dt_s` seconds holding `power_w`; returns the power drawn.
    fn step(&mut self, power_w: f64, dt_s: f64, amb: &Ambient, rng: &mut SplitMix64) -> f64;
    /// State of charge, % (storage kinds).
    fn soc_pct(&self) -> Option<f32> {
        None
    }
    /// Room or tank temperature, °C (thermal kinds).
    fn temp_c(&self) -> Option<f32> {
        None
    }
    /// Whether the VPP may control it now (an EV charger without a car: no).
    fn available(&self) -> bool {
        true
    }
}

/// The reachable-range part of [`Model::check`], shared by every kind.
pub(crate) fn check_range(
    delta_up_w: f64,
    baseline_w: f64,
    (lo, hi): (f64, f64),
    tol_w: f64,
) -> Result<(), String> {
    let target = baseline_w - delta_up_w;
    if target < lo - tol_w {
        return Err(format!(
            "cannot move up {:.0} W: at most {:.0} W up from {:.0} W",
            delta_up_w,
            (baseline_w - lo).max(0.0),
            baseline_w
        ));
    }
    if target > hi + tol_w {
        return Err(format!(
            "cannot move down {:.0} W: at most {:.0} W down from {:.0} W",
            -delta_up_w,
            (hi - baseline_w).max(0.0),
            baseline_w
        ));
    }
    Ok(())
}

/// One device's physics, by kind.
#[derive(Debug, Clone)]
pub(crate) enum Plant {
    /// A stationary battery.
    Battery(battery::Battery),
    /// An EV charger and the cars that come and go.
    EvCharger(ev_charger::EvCharger),
    /// A heat pump or air conditioner in a room.
    Hvac(hvac::Hvac),
    /// A water heater and its tank.
    WaterHeater(water_heater::WaterHeater),
    /// Rooftop PV.
    Pv(pv::Pv),
    /// A sheddable commercial or industrial load.
    CurtailableLoad(curtailable_load::CurtailableLoad),
}

impl Plant {
    /// A plant for `rating` in a random but plausible starting state.
    pub(crate) fn new(rating: &DerRating, rng: &mut SplitMix64) -> Self {
        match rating.kind {
            DerKind::Battery => Plant::Battery(battery::Battery::new(rating, rng)),
            DerKind::EvCharger => Plant::EvCharger(ev_charger::EvCharger::new(rating, rng)),
            DerKind::Hvac => Plant::Hvac(hvac::Hvac::new(rating, rng)),
            DerKind::WaterHeater => Plant::WaterHeater(water_heater::WaterHeater::new(rating, rng)),
            DerKind::Pv => Plant::Pv(pv::Pv::new(rating, rng)),
            DerKind::CurtailableLoad => {
                Plant::CurtailableLoad(curtailable_load::CurtailableLoad::new(rating, rng))
            }
        }
    }

    /// The model, for reading.
    pub(crate) fn model(&self) -> &dyn Model {
        match self {
            Plant::Battery(m) => m,
            Plant::EvCharger(m) => m,
            Plant::Hvac(m) => m,
            Plant::WaterHeater(m) => m,
            Plant::Pv(m) => m,
            Plant::CurtailableLoad(m) => m,
        }
    }

    /// The model, for stepping.
    pub(crate) fn model_mut(&mut self) -> &mut dyn Model {
        match self {
            Plant::Battery(m) => m,
            Plant::EvCharger(m) => m,
            Plant::Hvac(m) => m,
            Plant::WaterHeater(m) => m,
            Plant::Pv(m) => m,
            Plant::CurtailableLoad(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sky_and_weather() {
        assert_eq!(clear_sky(3.0), 0.0);
        assert_eq!(clear_sky(20.0), 0.0);
        assert!((clear_sky(12.0) - 1.0).abs() < 1e-9);
        assert!(clear_sky(9.0) > 0.2 && clear_sky(9.0) < clear_sky(11.0));
        assert!((outdoor_c(5.0) - 3.0).abs() < 1e-9);
        assert!((outdoor_c(17.0) - 13.0).abs() < 1e-9);
    }

    #[test]
    fn range_check_names_the_limit() {
        assert!(check_range(1000.0, 0.0, (-5000.0, 5000.0), 50.0).is_ok());
        let e = check_range(6000.0, 0.0, (-5000.0, 5000.0), 50.0).unwrap_err();
        assert!(e.contains("at most 5000 W up"), "{e}");
        let e = check_range(-100.0, 0.0, (-5000.0, 0.0), 50.0).unwrap_err();
        assert!(e.contains("at most 0 W down"), "{e}");
        // Within tolerance passes.
        assert!(check_range(-40.0, 0.0, (-5000.0, 0.0), 50.0).is_ok());
    }

    #[test]
    fn tolerance_scales_with_rating() {
        assert_eq!(
            tolerance_w(&DerRating::new(DerKind::Battery, 1000, 1000)),
            50.0
        );
        assert_eq!(
            tolerance_w(&DerRating::new(DerKind::Pv, 0, 100_000)),
            2000.0
        );
    }
}
