//! Simulated time: wall-clock Unix ms in, physics time out.
//!
//! Setpoint windows (`start_ms`, `end_ms`) are wall-clock, as the runtime
//! writes them. Physics runs `speed` times faster than the wall clock, so a
//! demo at `speed = 60` shows an hour of thermal drift in a minute. The sky
//! (sunshine, outdoor temperature) follows the simulated clock, in local
//! solar time at each site's longitude.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds in an hour.
const HOUR_MS: f64 = 3_600_000.0;

/// Now, Unix ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Maps wall-clock ms to simulated ms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimClock {
    wall0_ms: u64,
    sim0_ms: f64,
    speed: f64,
}

impl SimClock {
    /// A clock that starts at `wall0_ms`, running `speed` times faster. With
    /// `start_hour`, simulated time starts at that solar hour (at longitude
    /// 0) of the current day; otherwise at the wall clock.
    pub(crate) fn new(wall0_ms: u64, speed: f64, start_hour: Option<f64>) -> Self {
        let sim0_ms = match start_hour {
            Some(h) => {
                let midnight = (wall0_ms as f64 / (24.0 * HOUR_MS)).floor() * 24.0 * HOUR_MS;
                midnight + h.rem_euclid(24.0) * HOUR_MS
            }
            None => wall0_ms as f64,
        };
        Self {
            wall0_ms,
            sim0_ms,
            speed,
        }
    }

    /// Physics seconds that pass in `wall_ms` wall-clock milliseconds.
    pub(crate) fn sim_s(&self, wall_ms: f64) -> f64 {
        wall_ms / 1000.0 * self.speed
    }

    /// Local solar hour (0..24) at `lon` degrees when the wall clock reads
    /// `wall_ms`.
    pub(crate) fn hour(&self, wall_ms: u64, lon: f64) -> f64 {
        let sim = self.sim0_ms + (wall_ms as f64 - self.wall0_ms as f64) * self.speed;
        (sim / HOUR_MS + lon / 15.0).rem_euclid(24.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_hour_and_speed() {
        let wall0 = 1_763_700_000_000;
        let c = SimClock::new(wall0, 60.0, Some(11.5));
        assert!((c.hour(wall0, 0.0) - 11.5).abs() < 1e-9);
        // One wall minute at speed 60 is one simulated hour.
        assert!((c.hour(wall0 + 60_000, 0.0) - 12.5).abs() < 1e-9);
        // 15 degrees east is an hour later in solar time.
        assert!((c.hour(wall0, 15.0) - 12.5).abs() < 1e-9);
        assert!((c.sim_s(1000.0) - 60.0).abs() < 1e-9);
        let real = SimClock::new(wall0, 1.0, None);
        let h = real.hour(wall0, 0.0);
        assert!((0.0..24.0).contains(&h));
    }
}
