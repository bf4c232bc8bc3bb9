//! HVAC: a heat pump (or air conditioner) holding a room in its comfort band.
//!
//! First-order thermal model: the room loses heat to the outdoors with time
//! constant [`TAU_S`] and gains `COP × P` from the unit (the COP cancels out:
//! the building is sized so full power holds a 25 K difference) (heating when it is
//! colder outside than the band's middle, cooling otherwise). The power is
//! the duty-cycle average of an on/off compressor, i.e. a continuous
//! 0..=`max_import_w`. Left alone, a proportional thermostat holds the
//! middle of the band.
//!
//! Under command, the unit runs at the feed-forward power that would have
//! held the temperature (the baseline) minus the move, with no thermostat
//! correction: a shed is felt as the room drifting, not cancelled by the
//! thermostat. When the room leaves the band, local control takes over (the
//! device stops following the command and recovers at its natural power
//! until it is back well inside), and new commands are refused.

use vpp_domain::DerRating;

use super::{check_range, Ambient, Model};
use crate::rng::SplitMix64;

/// Thermal time constant of the room, s.
pub(crate) const TAU_S: f64 = 5.0 * 3600.0;
/// The unit at full power holds a room this much warmer (or cooler) than
/// outdoors, K: sizes the building's loss coefficient.
const FULL_LOAD_DELTA_K: f64 = 25.0;
/// Thermostat gain: full power at this error, K.
const FULL_POWER_ERROR_K: f64 = 2.0;
/// Local control hands back once this far inside the band, K.
const RECOVERY_MARGIN_K: f64 = 0.5;

/// An HVAC unit and its room.
#[derive(Debug, Clone)]
pub(crate) struct Hvac {
    max_import_w: f64,
    lo_c: f64,
    hi_c: f64,
    /// Room temperature, °C.
    temp_c: f64,
    /// Local control has taken over (the room left its band).
    overridden: bool,
}

impl Hvac {
    /// A unit with the room near the middle of its band.
    pub(crate) fn new(r: &DerRating, rng: &mut SplitMix64) -> Self {
        let mut h = Self::with_temp(r, 0.0);
        h.temp_c = h.mid() + rng.range(-0.5, 0.5);
        h
    }

    /// A unit with the room at `temp_c`.
    pub(crate) fn with_temp(r: &DerRating, temp_c: f64) -> Self {
        let (lo, hi) = r.comfort_c.unwrap_or((20.0, 24.0));
        let mut h = Self {
            max_import_w: r.max_import_w as f64,
            lo_c: f64::from(lo),
            hi_c: f64::from(hi),
            temp_c,
            overridden: false,
        };
        h.overridden = !h.in_band();
        h
    }

    fn mid(&self) -> f64 {
        (self.lo_c + self.hi_c) / 2.0
    }

    fn in_band(&self) -> bool {
        self.lo_c <= self.temp_c && self.temp_c <= self.hi_c
    }

    /// +1 heating, -1 cooling.
    fn mode(&self, amb: &Ambient) -> f64 {
        if amb.outdoor_c < self.mid() {
            1.0
        } else {
            -1.0
        }
    }

    /// Building loss coefficient over COP: electrical W per K of difference.
    fn w_per_k(&self) -> f64 {
        self.max_import_w / FULL_LOAD_DELTA_K
    }
}

impl Model for Hvac {
    fn natural_w(&self, amb: &Ambient) -> f64 {
        let error_k = (self.mid() - self.temp_c) * self.mode(amb);
        let p = self.baseline_w(amb) + self.max_import_w / FULL_POWER_ERROR_K * error_k;
        p.clamp(0.0, self.max_import_w)
    }

    fn baseline_w(&self, amb: &Ambient) -> f64 {
        (self.w_per_k() * (self.mid() - amb.outdoor_c).abs()).clamp(0.0, self.max_import_w)
    }

    fn range_w(&self, amb: &Ambient) -> (f64, f64) {
        if self.overridden {
            let p = self.natural_w(amb);
            (p, p)
        } else {
            (0.0, self.max_import_w)
        }
    }

    fn check(&self, delta_up_w: f64, amb: &Ambient, tol_w: f64) -> Result<(), String> {
        if self.overridden {
            return Err(format!(
                "room at {:.1} °C is outside the comfort band {:.1}–{:.1} °C",
                self.temp_c, self.lo_c, self.hi_c
            ));
        }
        check_range(
            delta_up_w,
            self.baseline_w(amb),
            (0.0, self.max_import_w),
            tol_w,
        )
    }

    fn step(&mut self, power_w: f64, dt_s: f64, amb: &Ambient, _rng: &mut SplitMix64) -> f64 {
        if dt_s <= 0.0 {
            return power_w;
        }
        let p = power_w.clamp(0.0, self.max_import_w);
        // Exact solution of dT/dt = (T_out - T)/τ + s·COP·P/C with
        // C = UA·τ and UA = COP·w_per_k: equilibrium T_out + s·P/w_per_k.
        let t_eq = amb.outdoor_c + self.mode(amb) * p / self.w_per_k();
        self.temp_c = t_eq + (self.temp_c - t_eq) * (-dt_s / TAU_S).exp();
        if !self.in_band() {
            self.overridden = true;
        } else if self.overridden
            && (self.temp_c - self.mid()).abs() <= (self.hi_c - self.lo_c) / 2.0 - RECOVERY_MARGIN_K
        {
            self.overridden = false;
        }
        p
    }

    fn temp_c(&self) -> Option<f32> {
        Some(self.temp_c as f32)
    }
}

#[cfg(test)]
mod tests {
    use vpp_domain::DerKind;

    use super::*;

    fn rating() -> DerRating {
        let mut r = DerRating::new(DerKind::Hvac, 4000, 0);
        r.comfort_c = Some((20.0, 24.0));
        r
    }

    fn cold() -> Ambient {
        Ambient {
            hour: 6.0,
            outdoor_c: 2.0,
        }
    }

    #[test]
    fn thermostat_holds_the_band_when_left_alone() {
        let mut h = Hvac::with_temp(&rating(), 21.0);
        let mut rng = SplitMix64::new(1);
        let amb = cold();
        for _ in 0..(24 * 60) {
            let p = h.natural_w(&amb);
            h.step(p, 60.0, &amb, &mut rng);
        }
        assert!((h.temp_c - 22.0).abs() < 0.3, "{}", h.temp_c);
        // Steady power is the feed-forward: 20 K × 4000/25 W/K.
        assert!((h.natural_w(&amb) - 3200.0).abs() < 100.0);
    }

    #[test]
    fn sheds_while_in_band_then_local_control_takes_over() {
        let mut h = Hvac::with_temp(&rating(), 22.0);
        let mut rng = SplitMix64::new(1);
        let amb = cold();
        assert!(h.check(2000.0, &amb, 80.0).is_ok());
        let mut minutes = 0;
        while !h.overridden && minutes < 24 * 60 {
            let p = (h.baseline_w(&amb) - 2000.0).clamp(h.range_w(&amb).0, h.range_w(&amb).1);
            h.step(p, 60.0, &amb, &mut rng);
            minutes += 1;
        }
        // The room cooled through the band in a plausible time, then left it.
        assert!((30..600).contains(&minutes), "{minutes}");
        assert!(h.temp_c < 20.0 && h.temp_c > 19.5, "{}", h.temp_c);
        let e = h.check(500.0, &amb, 80.0).unwrap_err();
        assert!(e.contains("outside the comfort band"), "{e}");
        // Overridden: only its natural power is reachable, and it recovers.
        let (lo, hi) = h.range_w(&amb);
        assert_eq!(lo, hi);
        let mut recovery = 0;
        while h.overridden {
            let p = h.range_w(&amb).0;
            assert_eq!(p, h.natural_w(&amb));
            h.step(p, 60.0, &amb, &mut rng);
            recovery += 1;
            assert!(recovery < 600, "{}", h.temp_c);
        }
        assert!(h.temp_c >= 20.5);
        assert!(h.check(500.0, &amb, 80.0).is_ok());
    }

    #[test]
    fn refuses_moves_beyond_its_power() {
        let h = Hvac::with_temp(&rating(), 22.0);
        let amb = cold();
        let base = h.baseline_w(&amb);
        assert!(h.check(base + 500.0, &amb, 80.0).is_err());
        assert!(h.check(-(4000.0 - base) - 500.0, &amb, 80.0).is_err());
        assert!(h.check(-(4000.0 - base), &amb, 80.0).is_ok());
    }

    #[test]
    fn cools_when_it_is_hot_outside() {
        let mut h = Hvac::with_temp(&rating(), 22.0);
        let mut rng = SplitMix64::new(1);
        let hot = Ambient {
            hour: 15.0,
            outdoor_c: 32.0,
        };
        // Off, the room warms towards the outdoors.
        h.step(0.0, 3600.0, &hot, &mut rng);
        assert!(h.temp_c > 22.5);
        let before = h.temp_c;
        h.step(4000.0, 3600.0, &hot, &mut rng);
        assert!(h.temp_c < before);
    }
}
