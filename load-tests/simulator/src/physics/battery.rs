//! Stationary battery: idles at 0 W, charges or discharges on command.
//!
//! State of charge integrates power with a round-trip efficiency of 92 %,
//! split evenly (√0.92 on the way in, √0.92 on the way out). The owner's
//! `soc_min_pct`..`soc_max_pct` window is a hard limit: a step that would
//! cross it draws only what reaches the limit, and a move that could not be
//! held for at least [`MIN_HOLD_S`] is refused.

use vpp_domain::DerRating;

use super::{check_range, Ambient, Model};
use crate::rng::SplitMix64;

/// Round-trip efficiency.
const ROUND_TRIP: f64 = 0.92;

/// A move the battery could hold for less than this (physics seconds) is
/// refused: it would be over before anyone measured it.
pub(crate) const MIN_HOLD_S: f64 = 60.0;

/// A battery.
#[derive(Debug, Clone)]
pub(crate) struct Battery {
    max_import_w: f64,
    max_export_w: f64,
    capacity_wh: f64,
    min_wh: f64,
    max_wh: f64,
    /// Stored energy, Wh.
    energy_wh: f64,
}

impl Battery {
    /// A battery somewhere between 30 % and 80 % charged (inside its window).
    pub(crate) fn new(r: &DerRating, rng: &mut SplitMix64) -> Self {
        let lo = f64::from(r.soc_min_pct).max(30.0);
        let hi = f64::from(r.soc_max_pct).min(80.0).max(lo);
        Self::with_soc(r, rng.range(lo, hi + 1e-9))
    }

    /// A battery at `soc_pct`.
    pub(crate) fn with_soc(r: &DerRating, soc_pct: f64) -> Self {
        let capacity_wh = (r.energy_wh as f64).max(1.0);
        Self {
            max_import_w: r.max_import_w as f64,
            max_export_w: r.max_export_w as f64,
            capacity_wh,
            min_wh: capacity_wh * f64::from(r.soc_min_pct) / 100.0,
            max_wh: capacity_wh * f64::from(r.soc_max_pct) / 100.0,
            energy_wh: capacity_wh * soc_pct.clamp(0.0, 100.0) / 100.0,
        }
    }

    /// Seconds it could hold `power_w` before reaching a SoC limit.
    fn hold_s(&self, power_w: f64) -> f64 {
        let eta = ROUND_TRIP.sqrt();
        if power_w > 0.0 {
            (self.max_wh - self.energy_wh).max(0.0) / (power_w * eta) * 3600.0
        } else if power_w < 0.0 {
            (self.energy_wh - self.min_wh).max(0.0) / (-power_w / eta) * 3600.0
        } else {
            f64::INFINITY
        }
    }

    fn soc(&self) -> f64 {
        self.energy_wh / self.capacity_wh * 100.0
    }
}

impl Model for Battery {
    fn natural_w(&self, _amb: &Ambient) -> f64 {
        0.0
    }

    fn range_w(&self, _amb: &Ambient) -> (f64, f64) {
        // A hair of slack so a battery resting exactly at a limit stays put.
        let lo = if self.energy_wh > self.min_wh + 1e-6 {
            -self.max_export_w
        } else {
            0.0
        };
        let hi = if self.energy_wh < self.max_wh - 1e-6 {
            self.max_import_w
        } else {
            0.0
        };
        (lo, hi)
    }

    fn check(&self, delta_up_w: f64, amb: &Ambient, tol_w: f64) -> Result<(), String> {
        let target = self.natural_w(amb) - delta_up_w;
        if target < -tol_w && self.hold_s(target) < MIN_HOLD_S {
            return Err(format!(
                "battery at {:.1} % cannot discharge: floor is {:.0} %",
                self.soc(),
                self.min_wh / self.capacity_wh * 100.0
            ));
        }
        if target > tol_w && self.hold_s(target) < MIN_HOLD_S {
            return Err(format!(
                "battery at {:.1} % cannot charge: ceiling is {:.0} %",
                self.soc(),
                self.max_wh / self.capacity_wh * 100.0
            ));
        }
        check_range(
            delta_up_w,
            self.natural_w(amb),
            (-self.max_export_w, self.max_import_w),
            tol_w,
        )
    }

    fn step(&mut self, power_w: f64, dt_s: f64, _amb: &Ambient, _rng: &mut SplitMix64) -> f64 {
        if dt_s <= 0.0 {
            return power_w;
        }
        let eta = ROUND_TRIP.sqrt();
        let p = power_w.clamp(-self.max_export_w, self.max_import_w);
        // Energy into the cells: charging loses on the way in, discharging
        // takes more out of the cells than reaches the grid.
        let d_wh = if p >= 0.0 {
            p * eta * dt_s / 3600.0
        } else {
            p / eta * dt_s / 3600.0
        };
        let before = self.energy_wh;
        let after = if d_wh >= 0.0 {
            (before + d_wh).min(self.max_wh.max(before))
        } else {
            (before + d_wh).max(self.min_wh.min(before))
        };
        self.energy_wh = after;
        let moved = after - before;
        // The average grid power that moved exactly that much energy.
        if moved >= 0.0 {
            moved / eta * 3600.0 / dt_s
        } else {
            moved * eta * 3600.0 / dt_s
        }
    }

    fn soc_pct(&self) -> Option<f32> {
        Some(self.soc() as f32)
    }
}

#[cfg(test)]
mod tests {
    use vpp_domain::DerKind;

    use super::*;

    fn rating() -> DerRating {
        let mut r = DerRating::new(DerKind::Battery, 5000, 5000);
        r.energy_wh = 10_000;
        r.soc_min_pct = 10;
        r.soc_max_pct = 90;
        r
    }

    const AMB: Ambient = Ambient {
        hour: 12.0,
        outdoor_c: 10.0,
    };

    #[test]
    fn round_trip_loses_eight_percent() {
        let mut b = Battery::with_soc(&rating(), 50.0);
        let mut rng = SplitMix64::new(1);
        let start = b.energy_wh;
        // Charge 1 kWh from the grid, then discharge until back at the start.
        b.step(1000.0, 3600.0, &AMB, &mut rng);
        let stored = b.energy_wh - start;
        assert!((stored - 1000.0 * ROUND_TRIP.sqrt()).abs() < 1e-6);
        let mut delivered = 0.0;
        while b.energy_wh > start + 1e-9 {
            delivered -= b.step(-100.0, 36.0, &AMB, &mut rng) * 36.0 / 3600.0;
        }
        assert!(
            (delivered / 1000.0 - ROUND_TRIP).abs() < 0.01,
            "{delivered}"
        );
    }

    #[test]
    fn stops_at_soc_min_and_reports_it() {
        let mut b = Battery::with_soc(&rating(), 11.0);
        let mut rng = SplitMix64::new(1);
        // 100 Wh above the floor; an hour at -5 kW would take 5.4 kWh.
        let p = b.step(-5000.0, 3600.0, &AMB, &mut rng);
        assert!((b.soc() - 10.0).abs() < 1e-9);
        assert!(p > -200.0 && p < 0.0, "average power honest: {p}");
        assert_eq!(b.range_w(&AMB).0, 0.0);
        let p = b.step(-5000.0, 60.0, &AMB, &mut rng);
        assert_eq!(p, 0.0);
        assert!((b.soc() - 10.0).abs() < 1e-9);
        let e = b.check(2000.0, &AMB, 100.0).unwrap_err();
        assert!(e.contains("cannot discharge"), "{e}");
        // It can still charge.
        assert!(b.check(-2000.0, &AMB, 100.0).is_ok());
    }

    #[test]
    fn refuses_beyond_inverter_and_near_the_ceiling() {
        let b = Battery::with_soc(&rating(), 50.0);
        assert!(b.check(5000.0, &AMB, 100.0).is_ok());
        assert!(b.check(-5000.0, &AMB, 100.0).is_ok());
        assert!(b.check(7000.0, &AMB, 100.0).is_err());
        let full = Battery::with_soc(&rating(), 89.99);
        assert!(full.check(-3000.0, &AMB, 100.0).is_err());
        assert!(full.check(3000.0, &AMB, 100.0).is_ok());
        assert_eq!(full.soc_pct().map(|s| s.round()), Some(90.0));
    }

    #[test]
    fn starts_inside_its_window() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..100 {
            let b = Battery::new(&rating(), &mut rng);
            assert!((30.0..=80.0).contains(&b.soc()));
        }
    }
}
