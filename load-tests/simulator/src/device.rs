//! One simulated device: its physics, its side of the shadow, its ramp.
//!
//! ```text
//!   desired (version v) ──receive──► stale? ignore
//!                                    refusing / physics says no? ─► Rejected(reason)
//!                                    else hold it ─► Accepted { applied: already there? }
//!   advance(now) : per sub-step (≤ 60 simulated s)
//!       requested = Σ active setpoints' signed moves          (Desired::delta_up_w)
//!       moved    ──ramp (min of rating and setpoint ramps)──► requested
//!       power    = clamp(baseline − moved, range)             (physics limits win)
//!       power    = model.step(power)                          (what it really drew)
//!   is_applied(now): the doc is in force and |baseline − power − requested| ≤ tolerance
//! ```
//!
//! Pure: wall-clock milliseconds come in as arguments, nothing here sleeps
//! or does I/O, so every rule is unit-tested with made-up times.

use vpp_domain::DerRating;
use vpp_protocol::{Desired, DesiredSetpoint, Reported, Telemetry};

use crate::clock::SimClock;
use crate::physics::{tolerance_w, Ambient, Plant};
use crate::rng::SplitMix64;

/// Longest physics step, simulated seconds: long enough to be cheap at
/// speed 1, short enough for ramps and thermostats at high speeds.
const MAX_STEP_S: f64 = 60.0;

/// The reason a refusing device gives (fault injection).
pub const REFUSING_REASON: &str = "refusing: fault injection";

/// What a device made of a desired document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Receipt {
    /// Not newer than the newest version seen: ignored, no answer.
    Stale,
    /// Refused, with the reason for the ack.
    Rejected(String),
    /// Held from now on; `applied` when the device already holds it.
    Accepted {
        /// Already within tolerance of the target.
        applied: bool,
    },
}

/// One device.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    plant: Plant,
    rng: SplitMix64,
    /// Rating ramp, W/min (infinite when the rating says 0).
    ramp_w_per_min: f64,
    tol_w: f64,
    /// Site longitude, for solar time.
    lon: f64,
    /// Newest desired version seen (held or rejected).
    seen_version: u64,
    /// Version of the document being executed (0: none).
    held_version: u64,
    setpoints: Vec<DesiredSetpoint>,
    /// The held document still owes its `applied` ack.
    applied_pending: bool,
    /// The move now in force, W up (ramps towards the requested one).
    moved_w: f64,
    /// Power drawn over the last step, W.
    power_w: f64,
    /// Wall clock of the last step, ms.
    last_ms: u64,
    /// Last telemetry sequence number sent.
    seq: u64,
    /// Rejects every desired document (fault injection).
    pub(crate) refusing: bool,
    /// Silent from this wall-clock ms on (fault injection); `u64::MAX`: never.
    pub(crate) silent_from_ms: u64,
}

impl Device {
    /// A device for `rating` at a site at `lon`, seeded `rng`, clock
    /// starting at `now_ms`; telemetry sequence numbers start after `seq0`.
    pub(crate) fn new(
        rating: &DerRating,
        lon: f64,
        mut rng: SplitMix64,
        now_ms: u64,
        seq0: u64,
    ) -> Self {
        let plant = Plant::new(rating, &mut rng);
        let ramp = rating.ramp_w_per_min as f64;
        Self {
            plant,
            rng,
            ramp_w_per_min: if ramp > 0.0 { ramp } else { f64::INFINITY },
            tol_w: tolerance_w(rating),
            lon,
            seen_version: 0,
            held_version: 0,
            setpoints: Vec::new(),
            applied_pending: false,
            moved_w: 0.0,
            power_w: 0.0,
            last_ms: now_ms,
            seq: seq0,
            refusing: false,
            silent_from_ms: u64::MAX,
        }
    }

    /// The same device with a given plant (tests).
    #[cfg(test)]
    pub(crate) fn with_plant(mut self, plant: Plant, clock: &SimClock) -> Self {
        self.plant = plant;
        self.power_w = self.baseline(clock, self.last_ms);
        self
    }

    /// Silent (offline by fault injection) at `now_ms`.
    pub(crate) fn silent(&self, now_ms: u64) -> bool {
        now_ms >= self.silent_from_ms
    }

    /// The version held.
    pub(crate) fn held_version(&self) -> u64 {
        self.held_version
    }

    /// The held document still owes its `applied` ack.
    pub(crate) fn applied_pending(&self) -> bool {
        self.applied_pending
    }

    fn ambient(&self, clock: &SimClock, wall_ms: u64) -> Ambient {
        Ambient::at(clock.hour(wall_ms, self.lon))
    }

    /// Requested move at `wall_ms`, W up.
    fn requested_w(&self, wall_ms: u64) -> f64 {
        self.setpoints
            .iter()
            .filter(|s| s.start_ms <= wall_ms && wall_ms < s.end_ms)
            .map(|s| match s.direction {
                vpp_domain::Direction::Up => s.power_w as f64,
                vpp_domain::Direction::Down => -(s.power_w as f64),
            })
            .sum()
    }

    /// Ramp in force at `wall_ms`, W/min: the rating's, or an active
    /// setpoint's if slower.
    fn ramp_at(&self, wall_ms: u64) -> f64 {
        self.setpoints
            .iter()
            .filter(|s| s.start_ms <= wall_ms && wall_ms < s.end_ms && s.ramp_w_per_min > 0)
            .map(|s| s.ramp_w_per_min as f64)
            .fold(self.ramp_w_per_min, f64::min)
    }

    fn under_command(&self, requested_w: f64) -> bool {
        requested_w != 0.0 || self.moved_w != 0.0
    }

    fn baseline(&self, clock: &SimClock, wall_ms: u64) -> f64 {
        let amb = self.ambient(clock, wall_ms);
        let m = self.plant.model();
        if self.under_command(self.requested_w(wall_ms)) {
            m.baseline_w(&amb)
        } else {
            m.natural_w(&amb)
        }
    }

    /// Runs the physics up to `now_ms`.
    pub(crate) fn advance(&mut self, clock: &SimClock, now_ms: u64) {
        if now_ms <= self.last_ms {
            return;
        }
        let wall_ms = (now_ms - self.last_ms) as f64;
        let sim_s = clock.sim_s(wall_ms);
        let n = (sim_s / MAX_STEP_S).ceil().clamp(1.0, 10_000.0) as u64;
        let h = sim_s / n as f64;
        for i in 1..=n {
            let t = self.last_ms + (wall_ms * i as f64 / n as f64) as u64;
            let amb = self.ambient(clock, t);
            let requested = self.requested_w(t);
            let max_change = self.ramp_at(t) * h / 60.0;
            self.moved_w += (requested - self.moved_w).clamp(-max_change, max_change);
            let model = self.plant.model_mut();
            let base = if requested != 0.0 || self.moved_w != 0.0 {
                model.baseline_w(&amb)
            } else {
                model.natural_w(&amb)
            };
            let (lo, hi) = model.range_w(&amb);
            let p = (base - self.moved_w).clamp(lo, hi.max(lo));
            self.power_w = model.step(p, h, &amb, &mut self.rng);
        }
        self.last_ms = now_ms;
    }

    /// Handles a desired document at `now_ms` (after advancing to it).
    pub(crate) fn receive(&mut self, d: &Desired, clock: &SimClock, now_ms: u64) -> Receipt {
        self.advance(clock, now_ms);
        if d.version <= self.seen_version {
            return Receipt::Stale;
        }
        self.seen_version = d.version;
        if self.refusing {
            return Receipt::Rejected(REFUSING_REASON.into());
        }
        if let Err(reason) = self.assess(d, clock, now_ms) {
            return Receipt::Rejected(reason);
        }
        self.held_version = d.version;
        self.setpoints = d.setpoints.clone();
        self.applied_pending = true;
        let applied = self.is_applied(clock, now_ms);
        if applied {
            self.applied_pending = false;
        }
        Receipt::Accepted { applied }
    }

    /// Whether physics allows the document: the move it asks for now and at
    /// each later start, judged against the device's present state.
    fn assess(&self, d: &Desired, clock: &SimClock, now_ms: u64) -> Result<(), String> {
        let amb = self.ambient(clock, now_ms);
        let model = self.plant.model();
        let starts = d
            .setpoints
            .iter()
            .filter(|s| s.start_ms > now_ms && s.start_ms < s.end_ms)
            .map(|s| s.start_ms);
        for t in std::iter::once(now_ms).chain(starts) {
            let delta = d.delta_up_w(t) as f64;
            if delta.abs() > self.tol_w || (delta != 0.0 && !model.available()) {
                model.check(delta, &amb, self.tol_w)?;
            }
        }
        Ok(())
    }

    /// The held document is in force and the device within tolerance of it.
    pub(crate) fn is_applied(&self, clock: &SimClock, now_ms: u64) -> bool {
        let in_force =
            self.setpoints.is_empty() || self.setpoints.iter().any(|s| s.start_ms <= now_ms);
        if !in_force {
            return false;
        }
        let requested = self.requested_w(now_ms);
        let actual = self.baseline(clock, now_ms) - self.power_w;
        (actual - requested).abs() <= self.tol_w
    }

    /// Call after [`Device::advance`]: true once when the held document has
    /// just become applied (the caller then sends the `applied` ack).
    pub(crate) fn take_applied(&mut self, clock: &SimClock, now_ms: u64) -> bool {
        if self.applied_pending && self.is_applied(clock, now_ms) {
            self.applied_pending = false;
            return true;
        }
        false
    }

    /// Wall-clock ms from `now_ms` until the held document could be applied,
    /// judging by the ramp alone (when to look again).
    pub(crate) fn ms_until_applied(&self, clock: &SimClock, now_ms: u64) -> u64 {
        let start = self
            .setpoints
            .iter()
            .map(|s| s.start_ms)
            .filter(|&s| s > now_ms)
            .min();
        let from = start.unwrap_or(now_ms);
        let gap = (self.requested_w(from) - self.moved_w).abs();
        let ramp = self.ramp_at(from);
        let sim_s = if ramp.is_finite() {
            gap / ramp * 60.0
        } else {
            0.0
        };
        let wall_ms = if sim_s > 0.0 {
            (sim_s * 1000.0 / clock.sim_s(1000.0)).ceil() as u64
        } else {
            0
        };
        (from - now_ms).saturating_add(wall_ms)
    }

    /// A telemetry message for the state at the last step.
    pub(crate) fn telemetry(&mut self, now_ms: u64) -> Telemetry {
        self.seq += 1;
        let m = self.plant.model();
        Telemetry {
            v: vpp_protocol::VERSION,
            seq: self.seq,
            ts: now_ms,
            power_w: self.power_w.round() as i64,
            soc_pct: m.soc_pct(),
            temp_c: m.temp_c(),
            available: m.available(),
        }
    }

    /// The `reported` document: the version held and, under command, the
    /// net import it steers to.
    pub(crate) fn reported(&self, clock: &SimClock, now_ms: u64) -> Reported {
        let requested = self.requested_w(now_ms);
        Reported {
            v: vpp_protocol::VERSION,
            version: self.held_version,
            target_power_w: (requested != 0.0)
                .then(|| (self.baseline(clock, now_ms) - requested).round() as i64),
        }
    }

    /// Power over the last step, W.
    #[cfg(test)]
    pub(crate) fn power_w(&self) -> f64 {
        self.power_w
    }
}

#[cfg(test)]
mod tests;
