use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use super::*;
use crate::test_support::{allocation, did, id, setpoint, state, temp_store};

/// Polls `cond` until it holds or 5 s have passed.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn slow() -> WriteBehindOptions {
    WriteBehindOptions {
        interval: Duration::from_secs(3600),
        max_pending: usize::MAX,
        ..WriteBehindOptions::default()
    }
}

/// A load probe with a fixed answer that counts how often it was asked.
struct Fixed(Option<bool>, Arc<AtomicU64>);

impl LoadProbe for Fixed {
    fn busy(&mut self) -> Option<bool> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0
    }
}

/// A write-behind whose probe always answers `busy`, and its question count.
fn with_probe(
    store: &crate::Store,
    options: WriteBehindOptions,
    busy: Option<bool>,
) -> (WriteBehind, Arc<AtomicU64>) {
    let asked = Arc::new(AtomicU64::new(0));
    let probe = Box::new(Fixed(busy, Arc::clone(&asked)));
    let wb = WriteBehind::start_with_probe(store.clone(), options, probe).unwrap();
    (wb, asked)
}

/// Options under which an apply is due at once but may be put off an hour.
fn due_at_once_deferred_for_an_hour() -> WriteBehindOptions {
    WriteBehindOptions {
        interval: Duration::from_millis(1),
        max_defer: Duration::from_secs(3600),
        ..WriteBehindOptions::default()
    }
}

#[test]
fn while_every_core_is_busy_records_wait_until_max_defer_has_passed() {
    let (_dir, store) = temp_store();
    let options = WriteBehindOptions {
        interval: Duration::from_millis(20),
        max_defer: Duration::from_millis(300),
        ..WriteBehindOptions::default()
    };
    let (wb, _) = with_probe(&store, options, Some(true));
    let queued = Instant::now();
    wb.handle().queue_der_state(id("a"), state(1));
    eventually("the state to be applied", || {
        store.load_der_states().unwrap().contains_key(&id("a"))
    });
    // Not before interval + max_defer: the probe said busy every time.
    assert!(queued.elapsed() >= Duration::from_millis(320));
    assert!(wb.stats().deferred > 0);
}

#[test]
fn a_flush_request_does_not_wait_for_busy_cores() {
    let (_dir, store) = temp_store();
    let options = due_at_once_deferred_for_an_hour();
    let (wb, _) = with_probe(&store, options, Some(true));
    let h = wb.handle();
    h.queue_der_state(id("a"), state(1));
    // Put off a few times over: still not applied.
    eventually("deferrals", || wb.stats().deferred >= 3);
    assert!(store.load_der_states().unwrap().is_empty());
    h.flush_blocking().unwrap();
    assert!(store.load_der_states().unwrap().contains_key(&id("a")));
}

/// Lets the thread go idle (so the first record wakes it), then queues the
/// states of DERs `d0` .. `d{n-1}`.
fn queue_states_once_idle(h: &WriteBehindHandle, n: u64) {
    h.flush_blocking().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..n {
        h.queue_der_state(id(&format!("d{i}")), state(i));
    }
}

#[test]
fn while_every_core_is_busy_records_are_not_even_taken_from_the_channel() {
    let (_dir, store) = temp_store();
    let options = WriteBehindOptions {
        max_pending: 2,
        ..due_at_once_deferred_for_an_hour()
    };
    let (wb, asked) = with_probe(&store, options, Some(true));
    let h = wb.handle();
    queue_states_once_idle(&h, 5);
    // Due at once, and over max_pending, yet left where they are: nothing
    // taken (the gauge counts what was taken), nothing applied.
    eventually("deferrals", || wb.stats().deferred >= 3);
    assert!(asked.load(Ordering::Relaxed) >= 3);
    assert_eq!(wb.stats().pending, 0);
    assert!(store.load_der_states().unwrap().is_empty());
    // A flush request takes and applies them at once.
    h.flush_blocking().unwrap();
    assert_eq!(store.load_der_states().unwrap().len(), 5);
}

/// Cores idle until the store holds a DER state, then busy.
struct BusyOnceAnyApplied(crate::Store);

impl LoadProbe for BusyOnceAnyApplied {
    fn busy(&mut self) -> Option<bool> {
        Some(!self.0.load_der_states().unwrap().is_empty())
    }
}

#[test]
fn an_apply_begun_in_a_lull_stops_between_batches_when_the_cores_get_busy() {
    let (_dir, store) = temp_store();
    let probe = Box::new(BusyOnceAnyApplied(store.clone()));
    let wb =
        WriteBehind::start_with_probe(store.clone(), due_at_once_deferred_for_an_hour(), probe)
            .unwrap();
    let h = wb.handle();
    queue_states_once_idle(&h, 2500);
    // The first batch went in while the cores were idle; then they were
    // busy, and the rest waits.
    eventually("deferrals", || wb.stats().deferred >= 3);
    // (A batch holds what had been taken when it began: at most MAX_BATCH.)
    let applied = store.load_der_states().unwrap().len();
    assert!((1..=MAX_BATCH).contains(&applied), "{applied} applied");
    assert_eq!(wb.stats().batches_applied, 1);
    h.flush_blocking().unwrap();
    assert_eq!(store.load_der_states().unwrap().len(), 2500);
}

#[test]
fn an_idle_thread_does_not_count_busy_cores_as_deferrals() {
    let (_dir, store) = temp_store();
    let (wb, _) = with_probe(&store, due_at_once_deferred_for_an_hour(), Some(true));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(wb.stats().deferred, 0);
}

#[test]
fn unknown_load_defers_too_and_an_idle_verdict_applies() {
    let (_dir, store) = temp_store();
    let options = due_at_once_deferred_for_an_hour();
    // "Not known yet" puts off (the probe measures on the next question).
    let (wb, _) = with_probe(&store, options, None);
    wb.handle().queue_der_state(id("a"), state(1));
    eventually("deferrals", || wb.stats().deferred >= 2);
    assert!(store.load_der_states().unwrap().is_empty());
    drop(wb);
    // An idle verdict applies when due, without deferring.
    let (wb, asked) = with_probe(&store, options, Some(false));
    wb.handle().queue_der_state(id("b"), state(1));
    eventually("the state to be applied", || {
        store.load_der_states().unwrap().contains_key(&id("b"))
    });
    assert_eq!(wb.stats().deferred, 0);
    assert!(asked.load(Ordering::Relaxed) > 0);
}

#[test]
fn zero_max_defer_never_asks_about_the_load() {
    let (_dir, store) = temp_store();
    let options = WriteBehindOptions {
        interval: Duration::from_millis(5),
        max_defer: Duration::ZERO,
        max_pending: 2,
        ..WriteBehindOptions::default()
    };
    let (wb, asked) = with_probe(&store, options, Some(true));
    let h = wb.handle();
    h.queue_der_state(id("a"), state(1));
    h.queue_der_state(id("b"), state(1));
    h.queue_der_state(id("c"), state(1));
    eventually("the states to be applied", || {
        store.load_der_states().unwrap().len() == 3
    });
    assert_eq!(asked.load(Ordering::Relaxed), 0);
    assert_eq!(wb.stats().deferred, 0);
}

/// The nice values of this process's threads whose names start with `name`
/// (Linux: field 19 of /proc/self/task/TID/stat).
#[cfg(target_os = "linux")]
fn thread_nices(name: &str) -> Vec<i32> {
    let nice = |dir: std::path::PathBuf| -> Option<i32> {
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if !comm.trim_end().starts_with(name) {
            return None;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // After "(comm)": state is field 3, nice field 19.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(16)?.parse().ok()
    };
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(|task| nice(task.ok()?.path()))
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn the_thread_runs_at_the_nice_value_asked_for() {
    let (_dir, store) = temp_store();
    let options = WriteBehindOptions {
        nice: 7,
        ..WriteBehindOptions::default()
    };
    let wb = WriteBehind::start(store, options).unwrap();
    // The thread sets its priority first thing; a flush proves it has run.
    wb.handle().flush_blocking().unwrap();
    // Thread names are cut to 15 bytes in /proc. Other tests of this process
    // run write-behind threads of their own, at the default 0.
    assert!(thread_nices("vpp-store-write").contains(&7));
    wb.shutdown().unwrap();
}

#[test]
fn latest_record_per_key_wins_and_flush_applies_it() {
    let (_dir, store) = temp_store();
    let wb = WriteBehind::start(store.clone(), slow()).unwrap();
    let h = wb.handle();
    for seq in 0..100 {
        h.queue_der_state(id("a"), state(seq));
    }
    h.queue_der_state(id("b"), state(1));
    h.queue_setpoints(id("a"), vec![setpoint("d1")]);
    h.queue_allocation(allocation("d1", "a", 10));
    h.queue_allocation(allocation("d1", "a", 20));
    h.flush_blocking().unwrap();
    let states = store.load_der_states().unwrap();
    assert_eq!(states[&id("a")], state(99));
    assert_eq!(states.len(), 2);
    assert_eq!(
        store.load_setpoints().unwrap()[&id("a")],
        vec![setpoint("d1")]
    );
    assert_eq!(
        store.allocation(&did("d1"), &id("a")).unwrap(),
        Some(allocation("d1", "a", 20))
    );
    let stats = wb.stats();
    assert_eq!(stats.records_written, 4);
    assert_eq!(stats.batches_applied, 3);
    assert_eq!(stats.flushes, 1);
    assert_eq!(stats.pending, 0);

    h.queue_setpoints(id("a"), vec![]);
    h.flush_blocking().unwrap();
    assert!(store.load_setpoints().unwrap().is_empty());
}

#[test]
fn records_are_applied_after_the_interval_without_a_flush() {
    let (_dir, store) = temp_store();
    let options = WriteBehindOptions {
        interval: Duration::from_millis(20),
        ..WriteBehindOptions::default()
    };
    let wb = WriteBehind::start(store.clone(), options).unwrap();
    wb.handle().queue_der_state(id("a"), state(1));
    eventually("the state to be applied", || {
        store.load_der_states().unwrap().contains_key(&id("a"))
    });
    assert_eq!(wb.stats().flushes, 0);
}

#[test]
fn records_are_applied_when_too_many_keys_wait() {
    let (_dir, store) = temp_store();
    let options = WriteBehindOptions {
        max_pending: 10,
        ..slow()
    };
    let wb = WriteBehind::start(store.clone(), options).unwrap();
    let h = wb.handle();
    for i in 0..10 {
        h.queue_der_state(id(&format!("d{i}")), state(i));
    }
    eventually("the batch to be applied", || {
        store.load_der_states().unwrap().len() == 10
    });
    assert_eq!(wb.stats().batches_applied, 1);
}

#[test]
fn many_keys_are_applied_in_bounded_batches() {
    let (_dir, store) = temp_store();
    let wb = WriteBehind::start(store.clone(), slow()).unwrap();
    let h = wb.handle();
    for i in 0..2500 {
        h.queue_der_state(id(&format!("d{i}")), state(i));
    }
    h.flush_blocking().unwrap();
    assert_eq!(store.load_der_states().unwrap().len(), 2500);
    let stats = wb.stats();
    assert_eq!((stats.records_written, stats.batches_applied), (2500, 3));
}

#[test]
fn flush_then_reports_on_the_callback() {
    let (_dir, store) = temp_store();
    let wb = WriteBehind::start(store.clone(), slow()).unwrap();
    wb.handle().queue_der_state(id("a"), state(1));
    let (tx, rx) = mpsc::channel();
    wb.handle().flush_then(move |r| tx.send(r.is_ok()).unwrap());
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    assert_eq!(store.load_der_states().unwrap().len(), 1);
}

#[test]
fn shutdown_and_drop_write_everything_queued_before() {
    let (dir, store) = temp_store();
    let wb = WriteBehind::start(store.clone(), slow()).unwrap();
    wb.handle().queue_der_state(id("a"), state(1));
    wb.shutdown().unwrap();
    let wb = WriteBehind::start(store.clone(), slow()).unwrap();
    wb.handle().queue_der_state(id("b"), state(2));
    drop(wb);
    drop(store);
    let store = crate::Store::open(dir.path()).unwrap();
    assert_eq!(store.load_der_states().unwrap().len(), 2);
}

#[test]
fn a_stopped_thread_counts_dropped_records_and_refuses_flushes() {
    let (_dir, store) = temp_store();
    let wb = WriteBehind::start(store, slow()).unwrap();
    let h = wb.handle();
    wb.shutdown().unwrap();
    h.queue_der_state(id("a"), state(1));
    h.queue_setpoints(id("a"), vec![]);
    h.queue_allocation(allocation("d1", "a", 1));
    assert_eq!(h.stats().dropped, 3);
    assert!(matches!(
        h.flush_blocking(),
        Err(StoreError::WriteBehindStopped)
    ));
}

#[test]
fn a_queued_message_stays_small() {
    // The channel keeps messages inline; a burst leaves 250k waiting.
    assert!(
        std::mem::size_of::<Msg>() <= 48,
        "{}",
        std::mem::size_of::<Msg>()
    );
}
