//! Rooftop PV: exports what the sun gives, can be curtailed.
//!
//! Output is `max_export_w × clear_sky(hour) × clouds`, where `clouds` is a
//! slow random walk between 0.3 and 1.0 (mean 0.85) per device. Curtailing
//! ("down": less export) is possible up to the current output; PV cannot
//! produce more than the sun gives, so "up" is refused.

use vpp_domain::DerRating;

use super::{check_range, clear_sky, Ambient, Model};
use crate::rng::SplitMix64;

/// Mean cloud factor and its time constant, s.
const CLOUD_MEAN: f64 = 0.85;
const CLOUD_TAU_S: f64 = 1800.0;

/// A PV system.
#[derive(Debug, Clone)]
pub(crate) struct Pv {
    max_export_w: f64,
    /// 0.3..=1.0: share of the clear-sky output getting through.
    clouds: f64,
}

impl Pv {
    /// A system under a random sky.
    pub(crate) fn new(r: &DerRating, rng: &mut SplitMix64) -> Self {
        Self::with_clouds(r, rng.range(0.6, 1.0))
    }

    /// A system with a fixed cloud factor (until stepped).
    pub(crate) fn with_clouds(r: &DerRating, clouds: f64) -> Self {
        Self {
            max_export_w: r.max_export_w as f64,
            clouds: clouds.clamp(0.3, 1.0),
        }
    }

    /// What the panels produce now, W (positive).
    pub(crate) fn production_w(&self, amb: &Ambient) -> f64 {
        self.max_export_w * clear_sky(amb.hour) * self.clouds
    }
}

impl Model for Pv {
    fn natural_w(&self, amb: &Ambient) -> f64 {
        -self.production_w(amb)
    }

    fn range_w(&self, amb: &Ambient) -> (f64, f64) {
        (-self.production_w(amb), 0.0)
    }

    fn check(&self, delta_up_w: f64, amb: &Ambient, tol_w: f64) -> Result<(), String> {
        if delta_up_w > tol_w {
            return Err("pv cannot produce more than the sun gives".into());
        }
        let produced = self.production_w(amb);
        if -delta_up_w > produced + tol_w {
            return Err(format!(
                "producing only {produced:.0} W: cannot curtail {:.0} W",
                -delta_up_w
            ));
        }
        check_range(delta_up_w, self.natural_w(amb), self.range_w(amb), tol_w)
    }

    fn step(&mut self, power_w: f64, dt_s: f64, amb: &Ambient, rng: &mut SplitMix64) -> f64 {
        if dt_s > 0.0 {
            let k = (dt_s / CLOUD_TAU_S).min(1.0);
            self.clouds += (CLOUD_MEAN - self.clouds) * k + 0.1 * k.sqrt() * rng.normalish();
            self.clouds = self.clouds.clamp(0.3, 1.0);
        }
        let (lo, hi) = self.range_w(amb);
        power_w.clamp(lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use vpp_domain::DerKind;

    use super::*;

    fn rating() -> DerRating {
        DerRating::new(DerKind::Pv, 0, 6000)
    }

    #[test]
    fn produces_by_day_only() {
        let pv = Pv::with_clouds(&rating(), 1.0);
        assert_eq!(pv.natural_w(&Ambient::at(2.0)), 0.0);
        assert!((pv.natural_w(&Ambient::at(12.0)) + 6000.0).abs() < 1e-6);
        assert!(pv.natural_w(&Ambient::at(8.0)) > -3000.0);
    }

    #[test]
    fn curtailment_is_bounded_by_production() {
        let mut pv = Pv::with_clouds(&rating(), 0.5);
        let mut rng = SplitMix64::new(1);
        let noon = Ambient::at(12.0);
        assert!(pv.check(-2000.0, &noon, 120.0).is_ok());
        let e = pv.check(-4000.0, &noon, 120.0).unwrap_err();
        assert!(e.contains("producing only 3000 W"), "{e}");
        // Asked for more import than curtailing everything gives: 0 W.
        assert_eq!(pv.step(1500.0, 1.0, &noon, &mut rng), 0.0);
        // At night there is nothing to curtail.
        assert!(pv.check(-500.0, &Ambient::at(23.0), 120.0).is_err());
    }

    #[test]
    fn refuses_to_go_up() {
        let pv = Pv::with_clouds(&rating(), 0.5);
        let e = pv.check(1000.0, &Ambient::at(12.0), 120.0).unwrap_err();
        assert!(e.contains("cannot produce more"), "{e}");
    }

    #[test]
    fn clouds_wander_within_bounds() {
        let mut pv = Pv::with_clouds(&rating(), 0.9);
        let mut rng = SplitMix64::new(4);
        let noon = Ambient::at(12.0);
        let mut seen = (1.0f64, 0.0f64);
        for _ in 0..10_000 {
            pv.step(0.0, 60.0, &noon, &mut rng);
            seen = (seen.0.min(pv.clouds), seen.1.max(pv.clouds));
        }
        assert!(seen.0 >= 0.3 && seen.1 <= 1.0);
        assert!(seen.1 - seen.0 > 0.2, "{seen:?}");
    }
}
