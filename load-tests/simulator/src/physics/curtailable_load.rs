//! Curtailable commercial or industrial load: a base load with noise that
//! can be shed, but only for so long.
//!
//! Each load runs at its own level (50–85 % of `max_import_w`), 20 % lower
//! outside 07:00–19:00, with ±3 % noise (a slow random walk). It can shed
//! down to zero; it cannot be told to consume more. A shed lasts at most
//! the rating's hold time (`max_hold_s`, default per kind); then the process
//! must run again: the load returns to its natural power for a quarter of
//! the hold time (at least a minute) and refuses new sheds meanwhile.

use vpp_domain::DerRating;

use super::{check_range, Ambient, Model};
use crate::rng::SplitMix64;

/// Noise: standard deviation and time constant, s.
const NOISE_SD: f64 = 0.03;
const NOISE_TAU_S: f64 = 600.0;

/// A curtailable load.
#[derive(Debug, Clone)]
pub(crate) struct CurtailableLoad {
    max_import_w: f64,
    /// Share of `max_import_w` drawn in working hours.
    level: f64,
    /// Relative noise, a slow random walk around 0.
    noise: f64,
    /// Longest shed, s.
    hold_s: f64,
    /// Shed counts from this many watts below natural.
    shed_threshold_w: f64,
    /// Seconds shed so far (since the last recovery).
    shed_for_s: f64,
    /// Seconds of recovery left (0: not recovering).
    recovery_left_s: f64,
}

impl CurtailableLoad {
    /// A load at a random level.
    pub(crate) fn new(r: &DerRating, rng: &mut SplitMix64) -> Self {
        Self::with_level(r, rng.range(0.5, 0.85))
    }

    /// A load at `level` of its rating, without noise until stepped.
    pub(crate) fn with_level(r: &DerRating, level: f64) -> Self {
        Self {
            max_import_w: r.max_import_w as f64,
            level: level.clamp(0.0, 1.0),
            noise: 0.0,
            hold_s: f64::from(r.hold_s().max(1)),
            shed_threshold_w: super::tolerance_w(r),
            shed_for_s: 0.0,
            recovery_left_s: 0.0,
        }
    }

    fn recovering(&self) -> bool {
        self.recovery_left_s > 0.0
    }
}

impl Model for CurtailableLoad {
    fn natural_w(&self, amb: &Ambient) -> f64 {
        let day = if (7.0..19.0).contains(&amb.hour) {
            1.0
        } else {
            0.8
        };
        (self.max_import_w * self.level * day * (1.0 + self.noise)).clamp(0.0, self.max_import_w)
    }

    fn range_w(&self, amb: &Ambient) -> (f64, f64) {
        let p = self.natural_w(amb);
        if self.recovering() {
            (p, p)
        } else {
            (0.0, p)
        }
    }

    fn check(&self, delta_up_w: f64, amb: &Ambient, tol_w: f64) -> Result<(), String> {
        if delta_up_w < -tol_w {
            return Err("a curtailable load cannot increase consumption on command".into());
        }
        if self.recovering() {
            return Err(format!(
                "shed for its longest allowed time ({:.0} s); the process must run again first",
                self.hold_s
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
        if self.recovering() {
            self.recovery_left_s -= dt_s;
            if !self.recovering() {
                self.shed_for_s = 0.0;
            }
        } else if p < hi - self.shed_threshold_w {
            self.shed_for_s += dt_s;
            if self.shed_for_s >= self.hold_s {
                self.recovery_left_s = (self.hold_s / 4.0).max(60.0);
            }
        } else {
            self.shed_for_s = 0.0;
        }
        let k = (dt_s / NOISE_TAU_S).min(1.0);
        self.noise += -self.noise * k + NOISE_SD * (2.0 * k).sqrt() * rng.normalish();
        self.noise = self.noise.clamp(-4.0 * NOISE_SD, 4.0 * NOISE_SD);
        p
    }
}

#[cfg(test)]
mod tests {
    use vpp_domain::DerKind;

    use super::*;

    fn rating() -> DerRating {
        let mut r = DerRating::new(DerKind::CurtailableLoad, 100_000, 0);
        r.max_hold_s = 3600;
        r
    }

    #[test]
    fn base_load_with_bounded_noise() {
        let mut l = CurtailableLoad::with_level(&rating(), 0.6);
        let mut rng = SplitMix64::new(2);
        let noon = Ambient::at(12.0);
        let mut seen = (f64::MAX, f64::MIN);
        for _ in 0..5000 {
            let p = l.natural_w(&noon);
            l.step(p, 60.0, &noon, &mut rng);
            seen = (seen.0.min(p), seen.1.max(p));
        }
        assert!(
            seen.0 >= 60_000.0 * 0.88 && seen.1 <= 60_000.0 * 1.12,
            "{seen:?}"
        );
        assert!(seen.1 - seen.0 > 2_000.0, "noise present: {seen:?}");
        assert!(l.natural_w(&Ambient::at(2.0)) < l.natural_w(&noon));
    }

    #[test]
    fn sheds_up_to_its_draw_never_more_and_never_down() {
        let l = CurtailableLoad::with_level(&rating(), 0.6);
        let noon = Ambient::at(12.0);
        assert!(l.check(60_000.0, &noon, 2000.0).is_ok());
        assert!(l.check(70_000.0, &noon, 2000.0).is_err());
        let e = l.check(-10_000.0, &noon, 2000.0).unwrap_err();
        assert!(e.contains("cannot increase"), "{e}");
    }

    #[test]
    fn shed_ends_after_the_hold_time() {
        let mut l = CurtailableLoad::with_level(&rating(), 0.6);
        let mut rng = SplitMix64::new(2);
        let noon = Ambient::at(12.0);
        let mut minutes = 0;
        loop {
            let (lo, hi) = l.range_w(&noon);
            let p = (l.natural_w(&noon) - 30_000.0).clamp(lo, hi);
            l.step(p, 60.0, &noon, &mut rng);
            minutes += 1;
            if l.recovering() {
                break;
            }
            assert!(minutes <= 60);
        }
        assert_eq!(minutes, 60);
        assert!(l.check(10_000.0, &noon, 2000.0).is_err());
        // The process runs at its natural power meanwhile, then sheds again.
        let (lo, hi) = l.range_w(&noon);
        assert_eq!(lo, hi);
        for _ in 0..15 {
            let p = l.range_w(&noon).0;
            l.step(p, 60.0, &noon, &mut rng);
        }
        assert!(l.check(10_000.0, &noon, 2000.0).is_ok());
    }
}
