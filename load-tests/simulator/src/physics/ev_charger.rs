//! EV charger: cars arrive, charge and leave.
//!
//! While a car is plugged in and below its target (`soc_max_pct`), the
//! charger draws its full `max_import_w` (that is what chargers do when
//! nobody tells them otherwise); it can be turned down (up flexibility) or,
//! when it is not already at full power, up. A car stays plugged in 4–14 h
//! of simulated time, then the charger is empty for 2–10 h. Without a car
//! it can do nothing: every command is refused with that reason, and
//! telemetry says `available: false`.

use vpp_domain::DerRating;

use super::{check_range, Ambient, Model};
use crate::rng::SplitMix64;

/// Charging efficiency, grid to pack.
const CHARGE_EFF: f64 = 0.9;

/// An EV charger.
#[derive(Debug, Clone)]
pub(crate) struct EvCharger {
    max_import_w: f64,
    pack_wh: f64,
    target_pct: f64,
    /// A car is plugged in.
    plugged: bool,
    /// The plugged car's state of charge, %.
    soc_pct: f64,
    /// Simulated seconds until the car leaves (plugged) or one arrives.
    until_change_s: f64,
}

impl EvCharger {
    /// A charger with a car plugged in (60 % of chargers) or not.
    pub(crate) fn new(r: &DerRating, rng: &mut SplitMix64) -> Self {
        let plugged = rng.unit() < 0.6;
        let mut ev = Self::with_car(r, plugged.then(|| rng.range(20.0, 60.0)));
        ev.until_change_s = if plugged {
            rng.range(2.0, 12.0) * 3600.0
        } else {
            rng.range(1.0, 8.0) * 3600.0
        };
        ev
    }

    /// A charger with a car at `soc` % plugged in, or none; the state holds
    /// for a day.
    pub(crate) fn with_car(r: &DerRating, soc: Option<f64>) -> Self {
        Self {
            max_import_w: r.max_import_w as f64,
            pack_wh: (r.energy_wh as f64).max(1.0),
            target_pct: f64::from(r.soc_max_pct),
            plugged: soc.is_some(),
            soc_pct: soc.unwrap_or(0.0),
            until_change_s: 24.0 * 3600.0,
        }
    }

    fn wants_charge(&self) -> bool {
        self.plugged && self.soc_pct < self.target_pct - 1e-6
    }
}

impl Model for EvCharger {
    fn natural_w(&self, _amb: &Ambient) -> f64 {
        if self.wants_charge() {
            self.max_import_w
        } else {
            0.0
        }
    }

    fn range_w(&self, _amb: &Ambient) -> (f64, f64) {
        if self.wants_charge() {
            (0.0, self.max_import_w)
        } else {
            (0.0, 0.0)
        }
    }

    fn check(&self, delta_up_w: f64, amb: &Ambient, tol_w: f64) -> Result<(), String> {
        if !self.plugged {
            return Err("no vehicle plugged in".into());
        }
        if delta_up_w < -tol_w && !self.wants_charge() {
            return Err(format!(
                "vehicle charged to {:.0} %, its limit",
                self.soc_pct
            ));
        }
        check_range(delta_up_w, self.natural_w(amb), self.range_w(amb), tol_w)
    }

    fn step(&mut self, power_w: f64, dt_s: f64, _amb: &Ambient, rng: &mut SplitMix64) -> f64 {
        if dt_s <= 0.0 {
            return 0.0;
        }
        let mut drawn = 0.0;
        if self.wants_charge() {
            let p = power_w.clamp(0.0, self.max_import_w);
            let room_wh = (self.target_pct - self.soc_pct) / 100.0 * self.pack_wh;
            let stored_wh = (p * CHARGE_EFF * dt_s / 3600.0).min(room_wh);
            self.soc_pct += stored_wh / self.pack_wh * 100.0;
            drawn = stored_wh / CHARGE_EFF * 3600.0 / dt_s;
        }
        self.until_change_s -= dt_s;
        if self.until_change_s <= 0.0 {
            self.plugged = !self.plugged;
            if self.plugged {
                self.soc_pct = rng.range(15.0, 60.0).min(self.target_pct);
                self.until_change_s = rng.range(4.0, 14.0) * 3600.0;
            } else {
                self.until_change_s = rng.range(2.0, 10.0) * 3600.0;
            }
        }
        drawn
    }

    fn soc_pct(&self) -> Option<f32> {
        self.plugged.then_some(self.soc_pct as f32)
    }

    fn available(&self) -> bool {
        self.plugged
    }
}

#[cfg(test)]
mod tests {
    use vpp_domain::DerKind;

    use super::*;

    fn rating() -> DerRating {
        let mut r = DerRating::new(DerKind::EvCharger, 7400, 0);
        r.energy_wh = 60_000;
        r.soc_min_pct = 20;
        r.soc_max_pct = 90;
        r
    }

    const AMB: Ambient = Ambient {
        hour: 19.0,
        outdoor_c: 8.0,
    };

    #[test]
    fn unplugged_refuses_everything() {
        let ev = EvCharger::with_car(&rating(), None);
        assert_eq!(ev.natural_w(&AMB), 0.0);
        assert!(!ev.available());
        assert_eq!(ev.soc_pct(), None);
        for d in [3000.0, -3000.0] {
            assert_eq!(
                ev.check(d, &AMB, 150.0).unwrap_err(),
                "no vehicle plugged in"
            );
        }
    }

    #[test]
    fn charges_at_full_power_until_target() {
        let mut ev = EvCharger::with_car(&rating(), Some(89.0));
        let mut rng = SplitMix64::new(1);
        assert_eq!(ev.natural_w(&AMB), 7400.0);
        // 1 % of 60 kWh is 600 Wh: reached within the hour, at a lower
        // average power than asked.
        let p = ev.step(7400.0, 3600.0, &AMB, &mut rng);
        assert!((ev.soc_pct - 90.0).abs() < 1e-9);
        assert!(p > 0.0 && p < 1000.0, "{p}");
        assert_eq!(ev.natural_w(&AMB), 0.0);
        let e = ev.check(-2000.0, &AMB, 150.0).unwrap_err();
        assert!(e.contains("its limit"), "{e}");
    }

    #[test]
    fn can_shed_what_it_draws() {
        let ev = EvCharger::with_car(&rating(), Some(40.0));
        assert!(ev.check(7400.0, &AMB, 150.0).is_ok());
        assert!(ev.check(8000.0, &AMB, 150.0).is_err());
        // Already at full power: cannot go further down.
        assert!(ev.check(-1000.0, &AMB, 150.0).is_err());
    }

    #[test]
    fn cars_come_and_go() {
        let mut rng = SplitMix64::new(5);
        let mut ev = EvCharger::new(&rating(), &mut rng);
        let mut changes = 0;
        let mut was = ev.plugged;
        for _ in 0..(7 * 24 * 60) {
            ev.step(ev.natural_w(&AMB), 60.0, &AMB, &mut rng);
            if ev.plugged != was {
                changes += 1;
                was = ev.plugged;
            }
        }
        // A week holds several visits.
        assert!(changes >= 6, "{changes}");
    }
}
