//! Interval meter data from telemetry: each metered site's net power,
//! integrated over time into one average per interval, written to the
//! store's `meter` tree for M&V baselines.
//!
//! ```text
//!   ingest (devices.rs) ── sample(site, der, power_w, now) ──► Metering
//!        per site: last power of each DER, their sum held between
//!        samples and integrated (W·ms) over the current interval
//!   run (every 250 ms) ── close_due(now) ── readings ──► Store::put_meter
//! ```
//!
//! What is metered: with `metering.sites = "enrolled"` (the default) only the
//! sites the programs layer names through [`Metering::watch`]; with `"all"`,
//! every site that sends telemetry.
//!
//! How an interval's average is made:
//! * Intervals are `metering.interval_s` long, aligned to the Unix epoch on
//!   the node's clock (so they line up with imported CSV data), half-open:
//!   a sample at exactly an interval's end belongs to the next one.
//! * The site's power is the sum of the last value each of its DERs
//!   reported; it is held from one sample to the next, across an interval's
//!   end too, and the average is weighted by how long each value held.
//! * Time before a site's first sample is not counted: the first interval
//!   averages over the part after that sample.
//! * An interval is written only if the site sent at least one sample in it.
//!   A whole interval without one means the site's values are stale: they
//!   are forgotten, and the next interval starts from its first new sample.
//!
//! The hot path ([`Metering::sample`], once per telemetry message) returns
//! after one atomic load while nothing is metered, and otherwise takes one
//! uncontended lock and two hash lookups by `&str`, without allocating once
//! a site and its DERs have been seen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vpp_domain::NodeId;
use vpp_store::Command;

use crate::cluster::Writer;
use crate::config::{MeteredSites, MeteringConfig};

/// How often [`run`] closes due intervals: a quarter of the shortest
/// interval the config allows (1 s). Between interval ends a pass costs one
/// comparison.
pub const CLOSE_EVERY: Duration = Duration::from_millis(250);

/// Largest power taken from one sample, W (1 TW).
const MAX_DER_W: i64 = 1_000_000_000_000;

/// One reading: site, interval start (Unix ms), average W.
pub type Reading = (NodeId, u64, i64);

/// Integrates telemetry into interval readings. Shared (`Arc`) by the
/// ingest pump, the closing task and the programs layer.
pub struct Metering {
    interval_ms: u64,
    /// `metering.sites = "all"`.
    all: bool,
    /// Whether any site can be metered: lets [`Metering::sample`] return at
    /// once on a node that meters nothing (the default until enrollments).
    active: AtomicBool,
    state: Mutex<State>,
    samples: AtomicU64,
    readings_written: AtomicU64,
    write_errors: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Every metered site (with `"enrolled"`, exactly the watched ones).
    sites: HashMap<NodeId, SiteMeter>,
    /// Readings of intervals a sample closed, waiting for `close_due`.
    closed: Vec<Reading>,
    /// No site's interval ends before this, so `close_due` has nothing to
    /// do until then (every site's intervals end on the same grid).
    next_end_ms: u64,
}

/// The running integration of one site.
struct SiteMeter {
    /// The site (for its readings).
    id: NodeId,
    /// Last reported power of each DER, W.
    ders: HashMap<NodeId, i64>,
    /// Sum of `ders`.
    net_w: i64,
    /// Start of the current interval, ms.
    start_ms: u64,
    /// Time up to which the current interval is integrated; `None` while
    /// there is no value to hold (no sample yet, or stale).
    held_since: Option<u64>,
    /// ∫ power dt over the current interval, W·ms.
    energy: i128,
    /// How much of the current interval `energy` covers, ms.
    covered_ms: u64,
    /// A sample arrived in the current interval.
    sampled: bool,
}

impl SiteMeter {
    fn new(id: NodeId) -> SiteMeter {
        SiteMeter {
            id,
            ders: HashMap::new(),
            net_w: 0,
            start_ms: 0,
            held_since: None,
            energy: 0,
            covered_ms: 0,
            sampled: false,
        }
    }

    /// Holds the current power up to `t`.
    fn integrate_to(&mut self, t: u64) {
        if let Some(h) = self.held_since {
            if t > h {
                self.energy += i128::from(self.net_w) * i128::from(t - h);
                self.covered_ms += t - h;
                self.held_since = Some(t);
            }
        }
    }

    /// Closes every interval that ends at or before `now` (pushing the
    /// reading of the one with samples) and moves to the interval holding
    /// `now`.
    fn roll_to(&mut self, now: u64, interval_ms: u64, out: &mut Vec<Reading>) {
        let end = self.start_ms.saturating_add(interval_ms);
        if now < end {
            return;
        }
        self.integrate_to(end);
        if self.sampled {
            let avg = if self.covered_ms == 0 {
                self.net_w
            } else {
                round_div(self.energy, self.covered_ms)
            };
            out.push((self.id.clone(), self.start_ms, avg));
        }
        let next = align(now, interval_ms);
        if !(self.sampled && next == end) {
            // A whole interval without a sample: nothing to hold any more.
            self.ders.clear();
            self.net_w = 0;
            self.held_since = None;
        }
        self.start_ms = next;
        self.energy = 0;
        self.covered_ms = 0;
        self.sampled = false;
    }
}

/// `energy / covered`, rounded to the nearest W (halves away from zero).
fn round_div(energy: i128, covered_ms: u64) -> i64 {
    let d = i128::from(covered_ms);
    let q = (energy.abs() + d / 2) / d;
    let q = if energy < 0 { -q } else { q };
    q.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Start of the interval holding `t`.
fn align(t: u64, interval_ms: u64) -> u64 {
    t - t % interval_ms
}

impl Metering {
    /// Metering as `[metering]` says (validated: `interval_s` ≥ 1).
    pub fn new(config: &MeteringConfig) -> Metering {
        let all = config.sites == MeteredSites::All;
        Metering {
            interval_ms: u64::from(config.interval_s.max(1)) * 1000,
            all,
            active: AtomicBool::new(all),
            state: Mutex::new(State::default()),
            samples: AtomicU64::new(0),
            readings_written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        }
    }

    /// Interval length, s.
    pub fn interval_s(&self) -> u32 {
        (self.interval_ms / 1000) as u32
    }

    /// Interval length, ms.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Meters exactly `sites` from now on (with `metering.sites =
    /// "enrolled"`; ignored with `"all"`). Sites that drop out lose their
    /// unfinished interval; sites that stay keep theirs.
    pub fn watch(&self, sites: HashSet<NodeId>) {
        if self.all {
            return;
        }
        let mut st = self.lock();
        st.sites.retain(|id, _| sites.contains(id));
        for id in sites {
            st.sites
                .entry(id.clone())
                .or_insert_with(|| SiteMeter::new(id));
        }
        self.active.store(!st.sites.is_empty(), Ordering::Relaxed);
    }

    /// Sites being metered now.
    pub fn sites(&self) -> usize {
        self.lock().sites.len()
    }

    /// Whether any site can be metered (a cheap check before work done only
    /// for metering, like parsing a topic).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// One telemetry value: DER `der` of site `site` reported `power_w` (net
    /// import, W), received at `now_ms` on the node's clock. Ignored for a
    /// site that is not metered.
    pub fn sample(&self, site: &str, der: &str, power_w: i64, now_ms: u64) {
        if !self.is_active() {
            return;
        }
        let interval_ms = self.interval_ms;
        let mut guard = self.lock();
        let State { sites, closed, .. } = &mut *guard;
        if !sites.contains_key(site) {
            // Only with "all": the first sample of a site starts its meter.
            let Some(id) = self.all.then(|| NodeId::new(site).ok()).flatten() else {
                return;
            };
            sites.insert(id.clone(), SiteMeter::new(id));
        }
        let Some(m) = sites.get_mut(site) else {
            return;
        };
        self.samples.fetch_add(1, Ordering::Relaxed);
        // Telemetry is range-checked far below this; the clamp only keeps
        // a caller's absurd value from overflowing a site's sum.
        let power_w = power_w.clamp(-MAX_DER_W, MAX_DER_W);
        // A clock that steps back does not rewind an interval.
        let now = now_ms.max(m.start_ms).max(m.held_since.unwrap_or(0));
        m.roll_to(now, interval_ms, closed);
        m.integrate_to(now);
        match m.ders.get_mut(der) {
            Some(w) => {
                m.net_w += power_w - *w;
                *w = power_w;
            }
            None => {
                let Ok(der) = NodeId::new(der) else {
                    return;
                };
                m.ders.insert(der, power_w);
                m.net_w += power_w;
            }
        }
        m.held_since = Some(now);
        m.sampled = true;
    }

    /// Closes every interval that has ended by `now_ms` and returns the
    /// readings of those that had samples (and of any a sample closed
    /// since the last call).
    pub fn close_due(&self, now_ms: u64) -> Vec<Reading> {
        let interval_ms = self.interval_ms;
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut out = std::mem::take(&mut st.closed);
        if now_ms < st.next_end_ms {
            return out;
        }
        for m in st.sites.values_mut() {
            m.roll_to(now_ms, interval_ms, &mut out);
        }
        st.next_end_ms = align(now_ms, interval_ms) + interval_ms;
        out
    }

    /// Telemetry values taken in (for metered sites).
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Readings written to the store.
    pub fn readings_written(&self) -> u64 {
        self.readings_written.load(Ordering::Relaxed)
    }

    /// Writes of readings the store refused (those readings are lost).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements: a panic elsewhere
        // while holding the lock does not make it unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes the intervals due at `now_ms` and writes their readings. Returns
/// how many were written.
pub async fn write_due(metering: &Metering, writes: &Writer, now_ms: u64) -> usize {
    let readings = metering.close_due(now_ms);
    if readings.is_empty() {
        return 0;
    }
    let n = readings.len();
    // In a cluster every member integrates the telemetry it hears; the
    // leader alone writes the readings (they are replicated to the others).
    if writes.cluster().is_some_and(|c| !c.is_leader()) {
        return 0;
    }
    match writes.write(Command::PutMeter(readings)).await {
        Ok(_) => {
            metering
                .readings_written
                .fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(readings = n, "meter readings written");
            n
        }
        Err(e) => {
            metering.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(readings = n, error = %e, "writing meter readings failed; they are lost");
            0
        }
    }
}

/// Closes due intervals every [`CLOSE_EVERY`] on the node's clock and writes
/// their readings, until aborted.
pub async fn run(metering: Arc<Metering>, writes: Writer) {
    let mut tick = tokio::time::interval(CLOSE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        write_due(&metering, &writes, vpp_actors::now_ms()).await;
    }
}

#[cfg(test)]
mod tests;
