//! Counters the connections bump and [`SimStats`], the snapshot callers read.
//!
//! Every counter is a relaxed atomic bumped where the event happens; a
//! snapshot is a handful of loads, cheap enough to poll. Two extra pieces:
//!
//! - a log-scale histogram of the time from receiving a desired document to
//!   publishing its first ack (what the device adds, injected latency
//!   included);
//! - a [`Probe`]: armed at an instant (say, just before a dispatch is
//!   posted), it records each device's first ack and first `applied` after
//!   that instant, for per-device latency figures.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Histogram buckets: exact below 16 µs, then 8 per power of two.
const BUCKETS: usize = 16 + 48 * 8;

fn bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // >= 4
    let sub = ((us >> (exp - 3)) & 7) as usize;
    (16 + (exp - 4) * 8 + sub).min(BUCKETS - 1)
}

/// Lower bound of a bucket, µs.
fn bucket_floor(b: usize) -> u64 {
    if b < 16 {
        return b as u64;
    }
    let exp = (b - 16) / 8 + 4;
    let sub = ((b - 16) % 8) as u64;
    (8 + sub) << (exp - 3)
}

/// A concurrent log-scale latency histogram.
#[derive(Debug)]
pub(crate) struct Histogram {
    counts: Vec<AtomicU64>,
    max_us: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[bucket(us)].fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let n: u64 = counts.iter().sum();
        let q = |f: f64| {
            let rank = ((n as f64 * f).ceil() as u64).max(1);
            let mut acc = 0;
            for (b, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= rank {
                    return Duration::from_micros(bucket_floor(b));
                }
            }
            Duration::ZERO
        };
        LatencySummary {
            count: n,
            p50: if n > 0 { q(0.5) } else { Duration::ZERO },
            p99: if n > 0 { q(0.99) } else { Duration::ZERO },
            max: Duration::from_micros(self.max_us.load(Relaxed)),
        }
    }
}

/// Count and quantiles of a latency (quantiles are bucket floors, within
/// 12.5 %).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// The live counters.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) connected: AtomicUsize,
    pub(crate) devices_reporting: AtomicUsize,
    pub(crate) telemetry_sent: AtomicU64,
    pub(crate) desired_received: AtomicU64,
    pub(crate) desired_stale: AtomicU64,
    pub(crate) desired_unknown: AtomicU64,
    pub(crate) desired_malformed: AtomicU64,
    pub(crate) acks_accepted: AtomicU64,
    pub(crate) acks_rejected: AtomicU64,
    pub(crate) acks_applied: AtomicU64,
    pub(crate) reported_sent: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) storms: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) ack_latency: Histogram,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            connected: AtomicUsize::new(0),
            devices_reporting: AtomicUsize::new(0),
            telemetry_sent: AtomicU64::new(0),
            desired_received: AtomicU64::new(0),
            desired_stale: AtomicU64::new(0),
            desired_unknown: AtomicU64::new(0),
            desired_malformed: AtomicU64::new(0),
            acks_accepted: AtomicU64::new(0),
            acks_rejected: AtomicU64::new(0),
            acks_applied: AtomicU64::new(0),
            reported_sent: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            storms: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            ack_latency: Histogram::new(),
        }
    }

    pub(crate) fn snapshot(
        &self,
        connections: usize,
        devices: usize,
        devices_live: usize,
    ) -> SimStats {
        SimStats {
            connections,
            connected: self.connected.load(Relaxed),
            devices,
            devices_live,
            devices_reporting: self.devices_reporting.load(Relaxed),
            telemetry_sent: self.telemetry_sent.load(Relaxed),
            desired_received: self.desired_received.load(Relaxed),
            desired_stale: self.desired_stale.load(Relaxed),
            desired_unknown: self.desired_unknown.load(Relaxed),
            desired_malformed: self.desired_malformed.load(Relaxed),
            acks_accepted: self.acks_accepted.load(Relaxed),
            acks_rejected: self.acks_rejected.load(Relaxed),
            acks_applied: self.acks_applied.load(Relaxed),
            reported_sent: self.reported_sent.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            storms: self.storms.load(Relaxed),
            publish_errors: self.publish_errors.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            ack_latency: self.ack_latency.summary(),
        }
    }
}

/// A snapshot of what the simulator has done since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// MQTT connections planned (and started).
    pub connections: usize,
    /// Connections up now.
    pub connected: usize,
    /// Devices simulated.
    pub devices: usize,
    /// Devices not offline by fault injection at start.
    pub devices_live: usize,
    /// Devices that have published telemetry at least once.
    pub devices_reporting: usize,
    /// Telemetry messages published (with site batches: items, one per
    /// device reading).
    pub telemetry_sent: u64,
    /// Desired documents received for simulated devices (decoded).
    pub desired_received: u64,
    /// … of which ignored as not newer than the version seen.
    pub desired_stale: u64,
    /// Desired documents for devices this simulator does not have.
    pub desired_unknown: u64,
    /// Desired documents that did not decode.
    pub desired_malformed: u64,
    /// `accepted` acks published.
    pub acks_accepted: u64,
    /// `rejected` acks published.
    pub acks_rejected: u64,
    /// `applied` acks published.
    pub acks_applied: u64,
    /// `reported` documents published.
    pub reported_sent: u64,
    /// Connections re-established after a drop.
    pub reconnects: u64,
    /// Connections lost (errors and storm drops).
    pub disconnects: u64,
    /// Reconnect storms run.
    pub storms: u64,
    /// Publishes the MQTT client refused (its event loop gone).
    pub publish_errors: u64,
    /// Site batches published (MQTT messages carrying several devices'
    /// telemetry or acks).
    pub batches_sent: u64,
    /// Receipt of a desired document to its first ack, per document.
    pub ack_latency: LatencySummary,
}

/// Per-device first ack / first `applied` after an instant.
#[derive(Debug)]
pub(crate) struct Probe {
    epoch: Instant,
    /// µs after `epoch` the probe was armed; `u64::MAX`: not armed.
    armed_at_us: AtomicU64,
    armed: AtomicBool,
    /// µs after arming + 1 (0: none yet), per global device index.
    first_ack: Vec<AtomicU64>,
    first_applied: Vec<AtomicU64>,
    rejected: AtomicU64,
}

impl Probe {
    pub(crate) fn new(devices: usize) -> Self {
        Self {
            epoch: Instant::now(),
            armed_at_us: AtomicU64::new(u64::MAX),
            armed: AtomicBool::new(false),
            first_ack: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            first_applied: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            rejected: AtomicU64::new(0),
        }
    }

    pub(crate) fn arm(&self) {
        self.armed.store(false, Relaxed);
        for s in self.first_ack.iter().chain(&self.first_applied) {
            s.store(0, Relaxed);
        }
        self.rejected.store(0, Relaxed);
        self.armed_at_us
            .store(self.epoch.elapsed().as_micros() as u64, Relaxed);
        self.armed.store(true, Relaxed);
    }

    fn since_armed(&self) -> Option<u64> {
        if !self.armed.load(Relaxed) {
            return None;
        }
        let at = self.armed_at_us.load(Relaxed);
        Some((self.epoch.elapsed().as_micros() as u64).saturating_sub(at) + 1)
    }

    /// Device `i` published an `accepted` or `rejected` ack.
    pub(crate) fn ack(&self, i: usize, rejected: bool) {
        if let (Some(t), Some(slot)) = (self.since_armed(), self.first_ack.get(i)) {
            if slot.compare_exchange(0, t, Relaxed, Relaxed).is_ok() && rejected {
                self.rejected.fetch_add(1, Relaxed);
            }
        }
    }

    /// Device `i` published an `applied` ack.
    pub(crate) fn applied(&self, i: usize) {
        if let (Some(t), Some(slot)) = (self.since_armed(), self.first_applied.get(i)) {
            let _ = slot.compare_exchange(0, t, Relaxed, Relaxed);
        }
    }

    pub(crate) fn report(&self) -> ProbeReport {
        let collect = |v: &[AtomicU64]| -> Vec<Duration> {
            v.iter()
                .map(|s| s.load(Relaxed))
                .filter(|&t| t > 0)
                .map(|t| Duration::from_micros(t - 1))
                .collect()
        };
        ProbeReport {
            armed: self.armed.load(Relaxed),
            acked: collect(&self.first_ack),
            applied: collect(&self.first_applied),
            rejected: self.rejected.load(Relaxed),
        }
    }
}

/// Per-device latencies since [`crate::SimHandle::arm_probe`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeReport {
    /// Whether the probe was armed at all.
    pub armed: bool,
    /// For each device that acked since then: time to its first ack
    /// (`accepted` or `rejected`), unordered.
    pub acked: Vec<Duration>,
    /// For each device that reported `applied` since then: time to it.
    pub applied: Vec<Duration>,
    /// How many of the first acks were rejections.
    pub rejected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_tight() {
        let mut last = 0;
        for us in [
            0u64, 1, 15, 16, 17, 100, 1_000, 12_345, 1_000_000, 60_000_000,
        ] {
            let b = bucket(us);
            assert!(b >= last);
            last = b;
            let floor = bucket_floor(b);
            assert!(
                floor <= us && us as f64 <= floor as f64 * 1.125 + 1.0,
                "{us} {floor}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        let p50 = s.p50.as_millis();
        assert!((44..=50).contains(&p50), "{p50}");
        assert!(s.p99.as_millis() >= 88);
        assert_eq!(s.max, Duration::from_millis(100));
    }

    #[test]
    fn probe_keeps_first_ack_per_device() {
        let p = Probe::new(3);
        p.ack(0, false);
        assert!(p.report().acked.is_empty(), "not armed: nothing recorded");
        p.arm();
        p.ack(0, true);
        p.ack(0, false);
        p.applied(1);
        p.ack(7, false); // out of range: ignored
        let r = p.report();
        assert_eq!((r.acked.len(), r.applied.len(), r.rejected), (1, 1, 1));
    }
}
