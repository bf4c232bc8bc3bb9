//! Is the process keeping every core busy? The write-behind asks before it
//! applies a batch: while the actors are in a burst (a telemetry wave, a
//! split over the whole fleet), applying competes with them for the cores,
//! and the records can as well land right after the burst.
//!
//! The answer comes from the process's CPU clock: CPU time used over wall
//! time since the last sample, against the number of cores. A sample older
//! than [`STALE`] says nothing about now, so the first question after a
//! quiet spell answers "don't know yet" and starts a fresh window; the
//! caller asks again a moment later.
//!
//! ```text
//!   busy()  ── last sample < MIN_WINDOW ago ──► the last verdict
//!           ── last sample ≤ STALE ago ───────► (cpu - cpu0) / (now - t0) ≥ cores - SLACK (0.75)
//!           ── no sample, or older ───────────► None (sample taken: ask again)
//! ```

use std::time::{Duration, Instant};

/// A verdict is reused for this long (a sample costs a system call).
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// A sample older than this starts a new window instead.
const STALE: Duration = Duration::from_millis(200);
/// "Every core busy" allows this much idle, in cores: threads that wake
/// and sleep, and a VM's stolen time (with 0.5, one 1M-DER wave of four on
/// the 2-core dev VM measured "not busy" in a 20 ms window and applied in
/// the middle of it).
const SLACK: f64 = 0.75;

/// Whether the cores are all busy, as [`CpuLoad::busy`] answers it.
pub(crate) trait LoadProbe: Send {
    /// `Some(true)`: every core busy; `Some(false)`: not; `None`: not known
    /// yet (ask again in a few milliseconds).
    fn busy(&mut self) -> Option<bool>;
}

/// The process's CPU use, sampled on demand.
pub(crate) struct CpuLoad {
    cores: f64,
    /// Reads the CPU time used so far (the process's clock; tests pass
    /// their own).
    cpu_clock: Box<dyn FnMut() -> Option<Duration> + Send>,
    /// When the last sample was taken, and the CPU time then.
    last: Option<(Instant, Duration)>,
    verdict: Option<bool>,
}

impl CpuLoad {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_clock(cores, Box::new(process_cpu_time))
    }

    fn with_clock(cores: usize, cpu_clock: Box<dyn FnMut() -> Option<Duration> + Send>) -> Self {
        CpuLoad {
            cores: cores as f64,
            cpu_clock,
            last: None,
            verdict: None,
        }
    }

    fn busy_at(&mut self, now: Instant) -> Option<bool> {
        match self.last {
            Some((t, _)) if now.saturating_duration_since(t) < MIN_WINDOW => self.verdict,
            Some((t, cpu0)) if now.saturating_duration_since(t) <= STALE => {
                let cpu = (self.cpu_clock)()?;
                let share = cpu.saturating_sub(cpu0).as_secs_f64()
                    / now.saturating_duration_since(t).as_secs_f64();
                self.last = Some((now, cpu));
                self.verdict = Some(share >= self.cores - SLACK);
                self.verdict
            }
            _ => {
                self.last = (self.cpu_clock)().map(|cpu| (now, cpu));
                self.verdict = None;
                None
            }
        }
    }
}

impl LoadProbe for CpuLoad {
    fn busy(&mut self) -> Option<bool> {
        self.busy_at(Instant::now())
    }
}

/// CPU time used by every thread of this process so far (`None` where the
/// platform does not say: then the write-behind never defers).
fn process_cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Some(Duration::new(
            u64::try_from(t.tv_sec).ok()?,
            u32::try_from(t.tv_nsec).ok()?,
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A CPU clock the test moves by hand (microseconds).
    fn fake_clock() -> (Arc<AtomicU64>, Box<dyn FnMut() -> Option<Duration> + Send>) {
        let us = Arc::new(AtomicU64::new(0));
        let read = Arc::clone(&us);
        let clock = move || Some(Duration::from_micros(read.load(Ordering::Relaxed)));
        (us, Box::new(clock))
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn busy_means_every_core_but_a_quarter_of_one_over_the_window() {
        let (cpu, clock) = fake_clock();
        let mut load = CpuLoad::with_clock(2, clock);
        let t0 = Instant::now();
        // First question: no window yet.
        assert_eq!(load.busy_at(t0), None);
        // 20 ms of wall time, 39 ms of CPU on 2 cores: busy.
        cpu.store(39_000, Ordering::Relaxed);
        assert_eq!(load.busy_at(t0 + 20 * MS), Some(true));
        // Within MIN_WINDOW the verdict is reused, whatever the clock says.
        cpu.store(39_000, Ordering::Relaxed);
        assert_eq!(load.busy_at(t0 + 25 * MS), Some(true));
        // The next 20 ms: 23 ms of CPU (1.15 cores): not busy.
        cpu.store(62_000, Ordering::Relaxed);
        assert_eq!(load.busy_at(t0 + 40 * MS), Some(false));
        // 1.35 cores of 2: over the line (1.25).
        cpu.store(89_000, Ordering::Relaxed);
        assert_eq!(load.busy_at(t0 + 60 * MS), Some(true));
    }

    #[test]
    fn a_stale_sample_starts_a_new_window() {
        let (cpu, clock) = fake_clock();
        let mut load = CpuLoad::with_clock(2, clock);
        let t0 = Instant::now();
        assert_eq!(load.busy_at(t0), None);
        cpu.store(1_000_000, Ordering::Relaxed);
        // A second later the last sample says nothing about now.
        assert_eq!(load.busy_at(t0 + 1000 * MS), None);
        assert_eq!(load.busy_at(t0 + 1020 * MS), Some(false));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_sleeping_process_is_not_busy_by_its_own_clock() {
        let mut load = CpuLoad::new();
        assert_eq!(load.busy(), None);
        std::thread::sleep(30 * MS);
        assert_eq!(load.busy(), Some(false));
    }
}
