//! Write-behind: coalesce frequent per-DER writes and apply them in batches.
//!
//! Telemetry updates the state of every DER every few seconds; writing each
//! one to sled as it comes would cost a tree write per message. Writers queue
//! records instead; one thread keeps only the latest record per key and
//! applies what it holds as sled batches (of at most 1000 keys) every
//! `interval`, or sooner when `max_pending` keys wait.
//!
//! Applying costs CPU (encoding, sled's page cache), and a burst of records
//! comes when the actors need the cores most: a telemetry wave or a split
//! over the whole fleet. So when an apply is due while the process keeps
//! every core busy (`cpu_load.rs`), it is put off in 20 ms steps, at most
//! `max_defer` past `interval`, and the records land right after the burst.
//! Meanwhile the records are not even taken from the channel: taking them
//! (hashing each into the pending map) was a tenth of the CPU of a 1M-DER
//! wave. A flush request is never put off.
//!
//! Records do not wake the thread one by one: a sender wakes it only when it
//! had said it was idle (nothing pending), and while records are pending it
//! takes them from the channel every 20 ms on its own. A flush or shutdown
//! request always wakes it.
//!
//! ```text
//!   actors ── queue_der_state ──┐
//!   actors ── queue_setpoints ──┼─► unbounded mpsc ─► write-behind thread
//!   actors ── queue_allocation ─┘         │           ┌─────────────────────┐
//!                                         │           │ HashMap per tree    │
//!   flush_then(done) ─────────────────────┘           │ (latest wins)       │
//!     (same channel, so it is behind                  └──────────┬──────────┘
//!      every record queued before it)       every interval, or   │
//!                                           > max_pending keys   ▼
//!                                             sled batches: der_state,
//!                                             setpoints, allocations
//!                                    on flush request: batches + db.flush(),
//!                                    then done(result)
//! ```
//!
//! Queueing never blocks and never fails: the channel is unbounded (memory is
//! bounded by the number of distinct keys once the thread coalesces), and a
//! record sent after the thread stopped is counted in
//! [`WriteBehindStats::dropped`] and logged once. If sled fails to apply a
//! batch, the records stay pending (still coalesced) and are retried one
//! `interval` later; the error is counted and returned to flush requests.
//!
//! Waiting for durability from async code: [`WriteBehindHandle::flush_then`]
//! takes a callback that runs on the write-behind thread, so an async caller
//! passes the sending half of a oneshot channel and awaits the other half,
//! without blocking a runtime worker:
//!
//! ```text
//!   let (tx, rx) = tokio::sync::oneshot::channel();
//!   handle.flush_then(move |result| { let _ = tx.send(result); });
//!   rx.await??;   // everything queued before flush_then is now durable
//! ```
//!
//! Synchronous callers use [`WriteBehindHandle::flush_blocking`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SendError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use vpp_domain::{DerState, DispatchId, NodeAllocation, NodeId, Setpoint};

use self::cpu_load::{CpuLoad, LoadProbe};
use crate::der_state::{der_state_batch, setpoints_batch};
use crate::error::StoreError;
use crate::journal::allocations_batch;
use crate::site_ders::{site_ders_batch, DerRecord};
use crate::store::{Store, MAX_BATCH};

/// How the write-behind thread batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBehindOptions {
    /// Longest a queued record waits before it is applied to sled (it is
    /// durable one `flush_every_ms` later). Longer means more coalescing of
    /// chatty DERs, and more to lose in a crash.
    pub interval: Duration,
    /// Apply at once when this many distinct keys are pending, so a burst
    /// (a fleet reconnecting) does not pile up for a whole interval.
    pub max_pending: usize,
    /// Nice value of the write-behind thread (0 = as the process, the
    /// default; up to 19 = yield the most; Linux only, elsewhere ignored).
    /// Above 0, persisting derived state yields to the actors when the cores
    /// are busy: a burst reaches every actor sooner and lands on disk later.
    /// But whoever waits for a flush (a shard takeover, an order becoming
    /// `allocated`) then waits on a thread that yields: with 10, takeover in
    /// `bench-cluster` went from ~4 s to 5.7 s after detection.
    pub nice: i32,
    /// While the process keeps every core busy (a wave or a split over the
    /// fleet) and nobody waits for a flush, applying is put off, at most
    /// this long past `interval`: the records land right after the burst
    /// instead of taking a core from it. A flush request still applies at
    /// once. Zero never puts off.
    pub max_defer: Duration,
}

impl Default for WriteBehindOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            max_pending: 50_000,
            nice: 0,
            max_defer: Duration::from_millis(1000),
        }
    }
}

/// While records are pending, how often the thread takes new ones from the
/// channel (they do not wake it), or, while the cores are busy, asks again
/// whether they still are.
const TICK: Duration = Duration::from_millis(20);
/// Longest sleep with nothing pending (a sender wakes an idle thread; this
/// is only a safety net).
const IDLE_PARK: Duration = Duration::from_secs(1);

/// What a flush request is told when everything before it is durable, or
/// why it is not. Runs on the write-behind thread: keep it short.
type FlushDone = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Counters of a write-behind thread, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteBehindStats {
    /// Records applied to sled (after coalescing).
    pub records_written: u64,
    /// sled batches applied.
    pub batches_applied: u64,
    /// Batches or flushes that sled refused (the records were kept).
    pub apply_errors: u64,
    /// Flush requests completed successfully.
    pub flushes: u64,
    /// Records queued after the thread had stopped, and so never written.
    pub dropped: u64,
    /// Keys taken from the channel and waiting to be applied, when last
    /// looked at (records left in the channel while every core is busy are
    /// not counted).
    pub pending: u64,
    /// Times an apply that was due was put off because every core was busy.
    pub deferred: u64,
}

#[derive(Default)]
struct Counters {
    records_written: AtomicU64,
    batches_applied: AtomicU64,
    apply_errors: AtomicU64,
    flushes: AtomicU64,
    dropped: AtomicU64,
    pending: AtomicU64,
    deferred: AtomicU64,
    warned_stopped: AtomicBool,
}

/// A queued record or request. Kept small (the larger records are boxed):
/// the channel stores messages inline in blocks it allocates zeroed, and a
/// burst leaves a quarter of a million of them waiting.
enum Msg {
    DerState(Box<(NodeId, DerState)>),
    Setpoints(NodeId, Vec<Setpoint>),
    Allocation(Box<NodeAllocation>),
    SiteDers(NodeId, Vec<DerRecord>),
    Flush(FlushDone),
    Shutdown(FlushDone),
}

/// The write-behind thread. Dropping it (or [`WriteBehind::shutdown`])
/// applies and flushes everything queued before, then stops the thread.
pub struct WriteBehind {
    handle: WriteBehindHandle,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable way to queue writes to a [`WriteBehind`] thread.
#[derive(Clone)]
pub struct WriteBehindHandle {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    wake: Arc<Wake>,
}

/// How senders wake the thread. A flush or shutdown request always does
/// (and says so in `urgent`); a record only when the thread said it is idle
/// (nothing pending), so a burst of records costs its senders one wake-up,
/// not a futex call each (that was ~8 % of the actors' time in a 1M-DER
/// split). While records are pending the thread wakes on its own every
/// `TICK`.
struct Wake {
    thread: std::thread::Thread,
    idle: Arc<AtomicBool>,
    urgent: Arc<AtomicBool>,
}

impl WriteBehind {
    /// Starts the thread; it writes through its own clone of `store`.
    pub fn start(store: Store, options: WriteBehindOptions) -> Result<WriteBehind, StoreError> {
        Self::start_with_probe(store, options, Box::new(CpuLoad::new()))
    }

    /// [`WriteBehind::start`], asking `load` whether the cores are busy.
    pub(crate) fn start_with_probe(
        store: Store,
        options: WriteBehindOptions,
        mut load: Box<dyn LoadProbe>,
    ) -> Result<WriteBehind, StoreError> {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let idle = Arc::new(AtomicBool::new(false));
        let thread_idle = Arc::clone(&idle);
        let urgent = Arc::new(AtomicBool::new(false));
        let thread_urgent = Arc::clone(&urgent);
        let thread = std::thread::Builder::new()
            .name("vpp-store-write-behind".into())
            .spawn(move || {
                lower_priority(options.nice);
                let mut writer = Writer {
                    store: &store,
                    rx: &rx,
                    options,
                    counters: &thread_counters,
                    idle: &thread_idle,
                    urgent: &thread_urgent,
                };
                writer.run(load.as_mut());
            })
            .map_err(StoreError::Thread)?;
        let wake = Arc::new(Wake {
            thread: thread.thread().clone(),
            idle,
            urgent,
        });
        Ok(WriteBehind {
            handle: WriteBehindHandle { tx, counters, wake },
            thread: Some(thread),
        })
    }

    /// A handle to queue writes with.
    pub fn handle(&self) -> WriteBehindHandle {
        self.handle.clone()
    }

    /// The thread's counters.
    pub fn stats(&self) -> WriteBehindStats {
        self.handle.stats()
    }

    /// Applies and flushes everything queued so far, then stops the thread.
    /// Records queued through other handles afterwards are dropped (and
    /// counted).
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.send(Msg::Shutdown(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        let result = rx.recv().unwrap_or(Err(StoreError::WriteBehindStopped));
        if thread.join().is_err() {
            tracing::error!("write-behind thread panicked");
        }
        result
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!(%error, "write-behind: final flush failed");
        }
    }
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WriteBehindHandle {
    /// Queues the state of one DER (replaces any queued state of that DER).
    pub fn queue_der_state(&self, id: NodeId, state: DerState) {
        self.send(Msg::DerState(Box::new((id, state))));
    }

    /// Queues the active setpoints of one DER; an empty list deletes them.
    pub fn queue_setpoints(&self, id: NodeId, setpoints: Vec<Setpoint>) {
        self.send(Msg::Setpoints(id, setpoints));
    }

    /// Queues the record of one site: the state and setpoints of each of its
    /// DERs (replaces any queued record of that site; empty deletes it).
    pub fn queue_site_ders(&self, site: NodeId, ders: Vec<DerRecord>) {
        self.send(Msg::SiteDers(site, ders));
    }

    /// Queues one node's allocation of one order.
    pub fn queue_allocation(&self, allocation: NodeAllocation) {
        self.send(Msg::Allocation(Box::new(allocation)));
    }

    /// Asks the thread to apply everything queued before this call and flush
    /// it to disk, then calls `done` on the write-behind thread with the
    /// outcome (`Ok` ⇒ all of it is durable). If the thread has stopped,
    /// `done` is called at once with [`StoreError::WriteBehindStopped`].
    pub fn flush_then(&self, done: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        self.send(Msg::Flush(Box::new(done)));
    }

    /// [`WriteBehindHandle::flush_then`], waiting for the outcome. Blocks for
    /// an fsync: do not call it on an async runtime worker.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.flush_then(move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(StoreError::WriteBehindStopped))
    }

    /// The thread's counters.
    pub fn stats(&self) -> WriteBehindStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriteBehindStats {
            records_written: get(&c.records_written),
            batches_applied: get(&c.batches_applied),
            apply_errors: get(&c.apply_errors),
            flushes: get(&c.flushes),
            dropped: get(&c.dropped),
            pending: get(&c.pending),
            deferred: get(&c.deferred),
        }
    }

    fn send(&self, msg: Msg) {
        let urgent = matches!(msg, Msg::Flush(_) | Msg::Shutdown(_));
        let Err(SendError(msg)) = self.tx.send(msg) else {
            // Sent before the flag is read: the thread, once it has said it
            // is idle, looks at the channel again before it sleeps.
            if urgent {
                self.wake.urgent.store(true, Ordering::Release);
                self.wake.thread.unpark();
            } else if self.wake.idle.swap(false, Ordering::AcqRel) {
                self.wake.thread.unpark();
            }
            return;
        };
        match msg {
            Msg::Flush(done) | Msg::Shutdown(done) => done(Err(StoreError::WriteBehindStopped)),
            Msg::DerState(..) | Msg::Setpoints(..) | Msg::Allocation(_) | Msg::SiteDers(..) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.counters.warned_stopped.swap(true, Ordering::Relaxed) {
                    tracing::warn!("write-behind thread has stopped; dropping queued writes");
                }
            }
        }
    }
}

impl std::fmt::Debug for WriteBehindHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehindHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Records waiting to be applied, latest per key.
#[derive(Default)]
struct Pending {
    der_states: FxHashMap<NodeId, DerState>,
    setpoints: FxHashMap<NodeId, Vec<Setpoint>>,
    allocations: FxHashMap<(DispatchId, NodeId), NodeAllocation>,
    site_ders: FxHashMap<NodeId, Vec<DerRecord>>,
}

impl Pending {
    fn len(&self) -> usize {
        self.der_states.len() + self.setpoints.len() + self.allocations.len() + self.site_ders.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&mut self, msg: Msg) {
        match msg {
            Msg::DerState(record) => {
                let (id, s) = *record;
                self.der_states.insert(id, s);
            }
            Msg::Setpoints(id, s) => {
                self.setpoints.insert(id, s);
            }
            Msg::Allocation(a) => {
                self.allocations
                    .insert((a.dispatch.clone(), a.node.clone()), *a);
            }
            Msg::SiteDers(id, ders) => {
                self.site_ders.insert(id, ders);
            }
            Msg::Flush(_) | Msg::Shutdown(_) => {}
        }
    }

    /// Applies everything pending, in sled batches of at most `MAX_BATCH`
    /// keys. Updates the `pending` gauge before returning, so a flush
    /// callback never sees a stale one.
    fn apply(&mut self, store: &Store, counters: &Counters) -> Result<(), StoreError> {
        while self.apply_next(store, counters)? {}
        Ok(())
    }

    /// Applies one sled batch of at most `MAX_BATCH` keys, from the first
    /// tree with records pending; what it applied is forgotten, what a
    /// failed batch held stays pending. False if nothing was pending.
    /// Between two batches the thread looks again at the cores, so an
    /// apply that began in a lull does not hold a core through the burst
    /// that follows.
    fn apply_next(&mut self, store: &Store, counters: &Counters) -> Result<bool, StoreError> {
        let trees = &store.inner;
        let applied = if !self.der_states.is_empty() {
            apply_some(&mut self.der_states, &trees.der_state, |items| {
                der_state_batch(items.iter().map(|(id, s)| (id, s)))
            })
        } else if !self.setpoints.is_empty() {
            apply_some(&mut self.setpoints, &trees.setpoints, |items| {
                setpoints_batch(items.iter().map(|(id, s)| (id, s.as_slice())))
            })
        } else if !self.allocations.is_empty() {
            apply_some(&mut self.allocations, &trees.allocations, |items| {
                allocations_batch(items.iter().map(|(_, a)| a))
            })
        } else if !self.site_ders.is_empty() {
            apply_some(&mut self.site_ders, &trees.site_ders, |items| {
                site_ders_batch(items.iter().map(|(id, d)| (id, d.as_slice())))
            })
        } else {
            return Ok(false);
        };
        counters.pending.store(self.len() as u64, Ordering::Relaxed);
        let n = applied?;
        counters.batches_applied.fetch_add(1, Ordering::Relaxed);
        counters
            .records_written
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn apply_and_flush(&mut self, store: &Store, counters: &Counters) -> Result<(), StoreError> {
        let result = self.apply(store, counters).and_then(|()| store.flush());
        match result {
            Ok(_) => {
                counters.flushes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                counters.apply_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// Takes at most `MAX_BATCH` records out of `map` and applies them to
/// `tree` as one batch built by `batch`; if sled refuses it, puts them
/// back. How many were applied.
fn apply_some<K: Eq + std::hash::Hash, V>(
    map: &mut FxHashMap<K, V>,
    tree: &sled::Tree,
    batch: impl FnOnce(&[(K, V)]) -> Result<sled::Batch, StoreError>,
) -> Result<usize, StoreError> {
    let items: Vec<(K, V)> = map.extract_if(|_, _| true).take(MAX_BATCH).collect();
    match batch(&items).and_then(|b| Ok(tree.apply_batch(b)?)) {
        Ok(()) => Ok(items.len()),
        Err(e) => {
            map.extend(items);
            Err(e)
        }
    }
}

/// Gives the calling thread nice value `nice`; a failure (not allowed, say)
/// is logged and the thread runs on as it was.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // Linux keeps a nice value per thread: PRIO_PROCESS with a thread id
        // sets only that thread's.
        let tid = rustix::thread::gettid();
        if let Err(error) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::warn!(%error, nice, "write-behind: could not lower the thread's priority");
        }
    }
}

/// The write-behind thread's side: its channel, store and counters.
struct Writer<'a> {
    store: &'a Store,
    rx: &'a Receiver<Msg>,
    options: WriteBehindOptions,
    counters: &'a Counters,
    /// Set by the thread when nothing is pending; the next record's sender
    /// clears it and wakes the thread (see `Wake`).
    idle: &'a AtomicBool,
    /// Set by the sender of a flush or shutdown request: take what is
    /// queued now, busy cores or not.
    urgent: &'a AtomicBool,
}

impl Writer<'_> {
    fn run(&mut self, load: &mut dyn LoadProbe) {
        let (store, options, counters) = (self.store, self.options, self.counters);
        let mut pending = Pending::default();
        // When the oldest record not applied yet (taken or still in the
        // channel) was first seen.
        let mut since: Option<Instant> = None;
        // After a failed apply, when to try again (a burst must not retry on
        // every tick).
        let mut retry_at = Instant::now();
        loop {
            let now = Instant::now();
            let urgent = self.urgent.swap(false, Ordering::AcqRel);
            // Records may wait for the cores while nobody waits for them and
            // the deadline allows.
            let may_wait = |first: Instant| {
                !urgent
                    && !options.max_defer.is_zero()
                    && now < first + options.interval + options.max_defer
            };
            // Every core busy (or not known yet), asked at most once a round.
            let mut busy = None;
            let mut cores_busy =
                |load: &mut dyn LoadProbe| *busy.get_or_insert_with(|| load.busy() != Some(false));
            // While they may wait, records stay where they are: taking them
            // (hashing into `pending`) and applying them are both work the
            // burst would wait for.
            let holding = since.is_some_and(may_wait) && cores_busy(load);
            if !holding && !self.take_queued(&mut pending) {
                return;
            }
            counters
                .pending
                .store(pending.len() as u64, Ordering::Relaxed);
            if !holding && pending.is_empty() {
                since = None;
                if !self.idle.swap(true, Ordering::AcqRel) {
                    // Just said so: look once more before sleeping, for a
                    // record sent before its sender could see the flag.
                    continue;
                }
                std::thread::park_timeout(IDLE_PARK);
                if !self.idle.load(Ordering::Acquire) {
                    // A sender cleared the flag: records are queued.
                    since = Some(Instant::now());
                }
                continue;
            }
            let first = *since.get_or_insert(now);
            let due_at = first + options.interval;
            let due = now >= due_at || pending.len() >= options.max_pending;
            if due && may_wait(first) && cores_busy(load) {
                counters.deferred.fetch_add(1, Ordering::Relaxed);
            } else if due && now >= retry_at {
                // One batch at a time: the next round looks at the cores
                // again before it applies more.
                match pending.apply_next(store, counters) {
                    Ok(_) => {
                        if pending.is_empty() {
                            since = None;
                        }
                        continue;
                    }
                    Err(error) => {
                        counters.apply_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, pending = pending.len(), "write-behind: apply failed, will retry");
                        retry_at = now + options.interval;
                    }
                }
            }
            // Records do not wake the thread while some are pending: take
            // them every tick (and check `max_pending`, or whether the cores
            // are still busy), or when due.
            let wake_at = if due {
                now + TICK
            } else {
                due_at.min(now + TICK)
            };
            std::thread::park_timeout(wake_at.saturating_duration_since(now));
        }
    }

    /// Takes every message waiting, in order (a flush request applies and
    /// flushes everything queued before it). False once the thread must stop.
    fn take_queued(&self, pending: &mut Pending) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Flush(done)) => done(pending.apply_and_flush(self.store, self.counters)),
                Ok(Msg::Shutdown(done)) => {
                    self.shut_down(pending, done);
                    return false;
                }
                Ok(other) => pending.add(other),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    if let Err(error) = pending.apply_and_flush(self.store, self.counters) {
                        tracing::error!(%error, "write-behind: final flush failed");
                    }
                    return false;
                }
            }
        }
    }

    /// Applies and flushes everything queued before the shutdown request
    /// and answers every flush request still waiting.
    fn shut_down(&self, pending: &mut Pending, done: FlushDone) {
        let mut waiting = Vec::new();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Flush(d) | Msg::Shutdown(d) => waiting.push(d),
                other => pending.add(other),
            }
        }
        let result = pending.apply_and_flush(self.store, self.counters);
        for d in waiting {
            d(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(StoreError::WriteBehindStopped),
            });
        }
        done(result);
    }
}

mod cpu_load;

#[cfg(test)]
mod tests;
