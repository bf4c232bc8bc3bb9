//! Electric water heater: a tank, a heating element and people drawing hot
//! water.
//!
//! The tank's heat capacity is its rated `energy_wh` spread over its band
//! (`comfort_c`, default 45–65 °C). Left alone, a thermostat switches the
//! element on below `high − 9 °C` and off at `high − 3 °C`. Hot-water draws
//! come at random (more in the morning and the evening) and cool the tank;
//! it also loses heat to a 20 °C room with a time constant of 100 h.
//!
//! The element can be modulated 0..=`max_import_w` on command (shed while it
//! heats, or heat while it rests) as long as the tank stays in its band:
//! below the band's low end it must heat at full power (and refuses
//! commands), at the high end it cannot heat at all.

use vpp_domain::DerRating;

use super::{check_range, Ambient, Model};
use crate::rng::SplitMix64;

/// Element efficiency, electricity to water.
const ELEMENT_EFF: f64 = 0.98;
/// Standby loss time constant, s.
const LOSS_TAU_S: f64 = 100.0 * 3600.0;
/// Room temperature around the tank, °C.
const ROOM_C: f64 = 20.0;
/// Thermostat: off at `high − OFF_BELOW_HIGH_K`, on at a further `DEADBAND_K` below.
const OFF_BELOW_HIGH_K: f64 = 3.0;
const DEADBAND_K: f64 = 6.0;

/// A water heater and its tank.
#[derive(Debug, Clone)]
pub(crate) struct WaterHeater {
    max_import_w: f64,
    lo_c: f64,
    hi_c: f64,
    /// Heat capacity, Wh per K.
    cap_wh_per_k: f64,
    /// Tank temperature, °C.
    temp_c: f64,
    /// The thermostat's element state.
    heating: bool,
    /// Current draw, thermal W, and how long it lasts, s.
    draw_w: f64,
    draw_left_s: f64,
}

impl WaterHeater {
    /// A tank somewhere in the upper part of its band.
    pub(crate) fn new(r: &DerRating, rng: &mut SplitMix64) -> Self {
        let mut w = Self::with_temp(r, 0.0, false);
        w.temp_c = rng.range(w.on_below_c(), w.off_at_c());
        w.heating = rng.unit() < 0.3;
        w
    }

    /// A tank at `temp_c` with the element on or off.
    pub(crate) fn with_temp(r: &DerRating, temp_c: f64, heating: bool) -> Self {
        let (lo, hi) = r.comfort_c.unwrap_or((45.0, 65.0));
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let energy_wh = if r.energy_wh > 0 {
            r.energy_wh as f64
        } else {
            8_000.0
        };
        Self {
            max_import_w: r.max_import_w as f64,
            lo_c: lo,
            hi_c: hi,
            cap_wh_per_k: energy_wh / (hi - lo).max(1.0),
            temp_c,
            heating,
            draw_w: 0.0,
            draw_left_s: 0.0,
        }
    }

    fn off_at_c(&self) -> f64 {
        self.hi_c - OFF_BELOW_HIGH_K
    }

    fn on_below_c(&self) -> f64 {
        (self.off_at_c() - DEADBAND_K).max(self.lo_c + 0.5)
    }

    /// Expected draws per hour at a solar hour.
    fn draws_per_h(hour: f64) -> f64 {
        match hour {
            h if (6.0..9.0).contains(&h) => 1.5,
            h if (18.0..22.0).contains(&h) => 1.0,
            _ => 0.2,
        }
    }
}

impl Model for WaterHeater {
    fn natural_w(&self, _amb: &Ambient) -> f64 {
        if self.temp_c < self.lo_c || (self.heating && self.temp_c < self.hi_c) {
            self.max_import_w
        } else {
            0.0
        }
    }

    fn range_w(&self, _amb: &Ambient) -> (f64, f64) {
        if self.temp_c < self.lo_c {
            (self.max_import_w, self.max_import_w)
        } else if self.temp_c >= self.hi_c {
            (0.0, 0.0)
        } else {
            (0.0, self.max_import_w)
        }
    }

    fn check(&self, delta_up_w: f64, amb: &Ambient, tol_w: f64) -> Result<(), String> {
        if self.temp_c < self.lo_c {
            return Err(format!(
                "tank at {:.1} °C is below its minimum of {:.0} °C",
                self.temp_c, self.lo_c
            ));
        }
        if delta_up_w < -tol_w && self.temp_c >= self.hi_c {
            return Err(format!(
                "tank at {:.1} °C is at its maximum of {:.0} °C",
                self.temp_c, self.hi_c
            ));
        }
        check_range(delta_up_w, self.natural_w(amb), self.range_w(amb), tol_w)
    }

    fn step(&mut self, power_w: f64, dt_s: f64, amb: &Ambient, rng: &mut SplitMix64) -> f64 {
        if dt_s <= 0.0 {
            return power_w;
        }
        let (lo, hi) = self.range_w(amb);
        let p = power_w.clamp(lo, hi);
        if self.draw_left_s <= 0.0 {
            self.draw_w = 0.0;
            if rng.unit() < Self::draws_per_h(amb.hour) * dt_s / 3600.0 {
                self.draw_w = rng.range(2_000.0, 6_000.0);
                self.draw_left_s = rng.range(180.0, 600.0);
            }
        }
        let draw_w = if self.draw_left_s > 0.0 {
            self.draw_left_s -= dt_s;
            self.draw_w
        } else {
            0.0
        };
        let loss_w = (self.temp_c - ROOM_C) * self.cap_wh_per_k / (LOSS_TAU_S / 3600.0);
        let net_wh = (p * ELEMENT_EFF - draw_w - loss_w) * dt_s / 3600.0;
        self.temp_c = (self.temp_c + net_wh / self.cap_wh_per_k).clamp(5.0, 95.0);
        if self.temp_c >= self.off_at_c() {
            self.heating = false;
        } else if self.temp_c < self.on_below_c() {
            self.heating = true;
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
        let mut r = DerRating::new(DerKind::WaterHeater, 3000, 0);
        r.energy_wh = 8_000;
        r.comfort_c = Some((45.0, 65.0));
        r
    }

    const NIGHT: Ambient = Ambient {
        hour: 2.0,
        outdoor_c: 4.0,
    };

    #[test]
    fn thermostat_cycles_within_band() {
        let mut w = WaterHeater::with_temp(&rating(), 55.0, false);
        let mut rng = SplitMix64::new(9);
        let (mut min, mut max) = (f64::MAX, f64::MIN);
        let mut on_minutes = 0;
        for i in 0..(3 * 24 * 60) {
            let amb = Ambient::at((i as f64 / 60.0) % 24.0);
            let p = w.natural_w(&amb);
            if p > 0.0 {
                on_minutes += 1;
            }
            w.step(p, 60.0, &amb, &mut rng);
            min = min.min(w.temp_c);
            max = max.max(w.temp_c);
        }
        assert!(min >= 45.0 && max <= 65.0, "{min}..{max}");
        // Draws and losses need the element some of the time, not always.
        assert!(on_minutes > 60 && on_minutes < 2 * 24 * 60, "{on_minutes}");
    }

    #[test]
    fn sheds_only_what_it_draws_and_heats_only_below_max() {
        let w = WaterHeater::with_temp(&rating(), 55.0, true);
        assert_eq!(w.natural_w(&NIGHT), 3000.0);
        assert!(w.check(3000.0, &NIGHT, 60.0).is_ok());
        assert!(w.check(3500.0, &NIGHT, 60.0).is_err());
        let hot = WaterHeater::with_temp(&rating(), 65.0, false);
        let e = hot.check(-2000.0, &NIGHT, 60.0).unwrap_err();
        assert!(e.contains("maximum"), "{e}");
    }

    #[test]
    fn cold_tank_refuses_and_heats_at_full_power() {
        let mut w = WaterHeater::with_temp(&rating(), 44.0, false);
        let mut rng = SplitMix64::new(1);
        let e = w.check(1000.0, &NIGHT, 60.0).unwrap_err();
        assert!(e.contains("below its minimum"), "{e}");
        assert_eq!(w.range_w(&NIGHT), (3000.0, 3000.0));
        // Asked for nothing, it heats anyway.
        assert_eq!(w.step(0.0, 60.0, &NIGHT, &mut rng), 3000.0);
    }
}
