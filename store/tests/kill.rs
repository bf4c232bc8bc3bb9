//! Crash tests: a child process writes, the parent kills it with SIGKILL at
//! an arbitrary moment, reopens the data dir and checks that everything the
//! child acknowledged is there, intact. Also: a data dir held by another
//! process cannot be opened.
//!
//! The child is this same test binary, re-run with `--exact <test>` and the
//! environment variable `VPP_STORE_CHILD` naming its role; it prints
//! `ACK <n>` on stdout after each acknowledged write.
//!
//! Run: `cargo test -p vpp-store --test kill`

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use vpp_domain::{
    DerKind, DerRating, DerSpec, DerState, Direction, DispatchId, DispatchOrder, DispatchRecord,
    DispatchStatus, Hierarchy, Location, NodeAllocation, NodeId, Segment, SiteSpec, Strategy,
    VirtualDerSpec,
};
use vpp_store::{LedgerDraft, Store, StoreError, WriteBehind, WriteBehindOptions};

const ROLE: &str = "VPP_STORE_CHILD";
const DIR: &str = "VPP_STORE_DIR";
const START: &str = "VPP_STORE_START";
/// A child gives up on its own after this long, in case its parent died.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for a child to say something.
const PATIENCE: Duration = Duration::from_secs(30);
/// Kill rounds per test, each on the same data dir.
const ROUNDS: u64 = 3;
/// More rounds for the hierarchy: its clean-up phase is a small part of a
/// replacement, and the kill must land in it now and then.
const HIERARCHY_ROUNDS: u64 = 8;

/// The role, data dir and first sequence number when this process is a child.
fn child_args(role: &str) -> Option<(PathBuf, u64)> {
    if std::env::var(ROLE).ok()? != role {
        return None;
    }
    let dir = PathBuf::from(std::env::var(DIR).expect("child without data dir"));
    let start = std::env::var(START)
        .expect("child without start")
        .parse()
        .expect("start");
    Some((dir, start))
}

fn ack(n: u64) {
    let mut out = std::io::stdout().lock();
    // The parent may be gone; then there is nobody to acknowledge to.
    if writeln!(out, "ACK {n}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

struct ChildProcess {
    child: Child,
    lines: Receiver<String>,
    /// Lines already read by `wait_for`.
    seen: Vec<String>,
}

impl ChildProcess {
    fn spawn(test: &str, role: &str, dir: &Path, start: u64) -> ChildProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(DIR, dir)
            .env(START, start.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until `want` lines satisfy `is_wanted`; returns the time
    /// between the last two of them.
    fn wait_for(&mut self, want: usize, is_wanted: impl Fn(&str) -> bool) -> Duration {
        let deadline = Instant::now() + PATIENCE;
        let mut wanted = 0;
        let (mut previous, mut cycle) = (Instant::now(), Duration::ZERO);
        while wanted < want {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if is_wanted(&line) {
                        wanted += 1;
                        cycle = previous.elapsed();
                        previous = Instant::now();
                    }
                    self.seen.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("child said nothing useful for {PATIENCE:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("child exited early (see its stderr)")
                }
            }
        }
        cycle
    }

    /// SIGKILL at a random point of the child's write cycle (the time
    /// between its last two lines), so that over many rounds the kill lands
    /// in every phase of a write, not just right after an ACK.
    fn kill_mid_cycle(self, cycle: Duration) -> Vec<u64> {
        let fraction = RandomState::new().build_hasher().finish() % 1000;
        std::thread::sleep(cycle * fraction as u32 / 1000);
        self.kill()
    }

    /// SIGKILL, reap, and every ACK the child printed before it died.
    fn kill(mut self) -> Vec<u64> {
        self.child.kill().expect("kill child");
        let status = self.child.wait().expect("reap child");
        assert!(!status.success(), "child was expected to die by the signal");
        // The reader thread ends at EOF once the pipe is drained.
        let seen = std::mem::take(&mut self.seen);
        seen.into_iter()
            .chain(self.lines.iter())
            .filter_map(|l| ack_number(&l))
            .collect()
    }
}

impl Drop for ChildProcess {
    /// A parent that fails an assertion must not leave its child running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nid(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// The number of an `ACK <n>` line. The first thing a child prints shares
/// its line with the harness's `test <name> ... `, so look at the end.
fn ack_number(line: &str) -> Option<u64> {
    line.rsplit_once("ACK ")
        .map(|(_, n)| n.parse().expect("ACK number"))
}

fn is_ack(line: &str) -> bool {
    ack_number(line).is_some()
}

// ---------------------------------------------------------------- hierarchy

/// Generation `n`: 1000 DERs, half of them shared with generation `n - 1`,
/// every name stamped with `n` so a mix of two generations shows.
fn generation(n: u64) -> Hierarchy {
    let mut rating = DerRating::new(DerKind::Pv, 0, 4000);
    rating.cost_micros_per_kwh = n;
    Hierarchy {
        virtual_ders: vec![VirtualDerSpec {
            id: nid("root"),
            name: format!("root {n}"),
            parent: None,
            strategy: Strategy::ProRata,
        }],
        sites: vec![SiteSpec {
            id: nid("site"),
            name: format!("site {n}"),
            parent: nid("root"),
            location: Location {
                lat: 1.0,
                lon: 2.0,
                zone: "z".into(),
                feeder: "f".into(),
            },
            segment: Segment::Residential,
            owner: format!("owner {n}"),
            strategy: Strategy::ProRata,
        }],
        ders: (n * 500..n * 500 + 1000)
            .map(|i| DerSpec {
                id: nid(&format!("der-{i}")),
                name: format!("pv {i} gen {n}"),
                site: nid("site"),
                rating: rating.clone(),
            })
            .collect(),
    }
}

fn der_state(seq: u64) -> DerState {
    DerState {
        online: true,
        power_w: -2000,
        soc_pct: None,
        temperature_c: None,
        accepts_control: true,
        updated_ms: seq,
        seq,
    }
}

fn hierarchy_writer(dir: &Path, start: u64) {
    let store = Store::open(dir).unwrap();
    let until = Instant::now() + CHILD_LIFETIME;
    for n in start.. {
        if Instant::now() > until {
            return;
        }
        let h = generation(n);
        store.replace_hierarchy(&h).unwrap();
        ack(n);
        // Unflushed state for this generation's DERs: the next replacement
        // must not let the ones it drops come back after a crash.
        let states: Vec<_> = h
            .ders
            .iter()
            .map(|d| (d.id.clone(), der_state(n)))
            .collect();
        store.put_der_states(&states).unwrap();
    }
}

#[test]
fn acknowledged_hierarchy_survives_sigkill_whole() {
    const TEST: &str = "acknowledged_hierarchy_survives_sigkill_whole";
    if let Some((dir, start)) = child_args("hierarchy") {
        return hierarchy_writer(&dir, start);
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..HIERARCHY_ROUNDS {
        let start = round * 1000;
        let mut child = ChildProcess::spawn(TEST, "hierarchy", dir.path(), start);
        let cycle = child.wait_for(2 + round as usize % 3, is_ack);
        let acked = child.kill_mid_cycle(cycle);
        let last = *acked.last().unwrap();

        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load_hierarchy().unwrap();
        // The last acknowledged generation, or the one after it if the kill
        // came between its flip and its ACK; never a mix.
        assert!(
            loaded == generation(last) || loaded == generation(last + 1),
            "round {round}: after ACK {last} found a hierarchy that is neither generation {last} nor {}",
            last + 1
        );
        let ids: HashSet<_> = loaded.nodes().map(|n| n.id().clone()).collect();
        let states = store.load_der_states().unwrap();
        assert!(
            states.keys().all(|id| ids.contains(id)),
            "round {round}: DER state of a node outside the hierarchy survived"
        );
    }
}

// ----------------------------------------------------------------- dispatch

fn record(n: u64) -> DispatchRecord {
    DispatchRecord {
        order: DispatchOrder {
            id: DispatchId::new(format!("order-{n}")).unwrap(),
            target: nid("root"),
            direction: Direction::Up,
            power_w: 1000 + n,
            start_ms: n,
            duration_s: 60,
            ramp_w_per_min: None,
            created_ms: n,
        },
        status: DispatchStatus::Accepted,
        updated_ms: n,
        summary: None,
    }
}

fn allocation(n: u64) -> NodeAllocation {
    NodeAllocation {
        dispatch: record(n).order.id,
        node: nid("root"),
        requested_w: 1000 + n,
        allocated_w: 1000 + n,
        shortfall_w: 0,
        children: vec![(nid("site"), 1000 + n)],
        refusals: vec![],
        resplits: 0,
    }
}

fn dispatch_writer(dir: &Path, start: u64) {
    let store = Store::open(dir).unwrap();
    let until = Instant::now() + CHILD_LIFETIME;
    for n in start.. {
        if Instant::now() > until {
            return;
        }
        store.put_dispatch_durable(&record(n)).unwrap();
        ack(n);
        store.put_allocations(&[allocation(n)]).unwrap();
    }
}

#[test]
fn acknowledged_dispatch_survives_sigkill() {
    const TEST: &str = "acknowledged_dispatch_survives_sigkill";
    if let Some((dir, start)) = child_args("dispatch") {
        return dispatch_writer(&dir, start);
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let start = round * 1_000_000;
        let mut child = ChildProcess::spawn(TEST, "dispatch", dir.path(), start);
        let cycle = child.wait_for(20 + 10 * round as usize, is_ack);
        let acked = child.kill_mid_cycle(cycle);

        let store = Store::open(dir.path()).unwrap();
        for &n in &acked {
            let id = record(n).order.id;
            assert_eq!(
                store.get_dispatch(&id).unwrap(),
                Some(record(n)),
                "round {round}: acknowledged order {id} lost or damaged"
            );
            // Not promised durable, but whatever survived must decode.
            if let Some(a) = store.allocation(&id, &nid("root")).unwrap() {
                assert_eq!(a, allocation(n));
            }
        }
        // Every record in the journal decodes.
        let all = store.list_dispatches(usize::MAX).unwrap();
        assert!(all.len() >= acked.len());
    }
}

// ------------------------------------------------------------- write-behind

const WB_DERS: u64 = 200;

fn write_behind_writer(dir: &Path, start: u64) {
    let store = Store::open(dir).unwrap();
    let wb = WriteBehind::start(store, WriteBehindOptions::default()).unwrap();
    let h = wb.handle();
    let until = Instant::now() + CHILD_LIFETIME;
    for n in start.. {
        if Instant::now() > until {
            return;
        }
        for i in 0..WB_DERS {
            h.queue_der_state(nid(&format!("der-{i}")), der_state(n));
        }
        if n % 5 == 0 {
            h.flush_blocking().unwrap();
            ack(n);
        }
    }
}

#[test]
fn write_behind_flush_survives_sigkill() {
    const TEST: &str = "write_behind_flush_survives_sigkill";
    if let Some((dir, start)) = child_args("write_behind") {
        return write_behind_writer(&dir, start);
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let start = (round + 1) * 1_000_000;
        let mut child = ChildProcess::spawn(TEST, "write_behind", dir.path(), start);
        let cycle = child.wait_for(5 + 5 * round as usize, is_ack);
        let last = *child.kill_mid_cycle(cycle).last().unwrap();

        let store = Store::open(dir.path()).unwrap();
        let states = store.load_der_states().unwrap();
        assert_eq!(states.len() as u64, WB_DERS, "round {round}");
        for (id, s) in states {
            assert!(
                s.seq >= last,
                "round {round}: {id} has seq {} but ACK {last} promised at least that",
                s.seq
            );
            assert_eq!(s, der_state(s.seq));
        }
    }
}

// ------------------------------------------------------------------- ledger

fn ledger_draft(n: u64) -> LedgerDraft {
    LedgerDraft {
        actor: "system".into(),
        action: "test.append".into(),
        subject: format!("test/{n}"),
        before: None,
        after: Some(vpp_domain::ledger::digest(&n.to_be_bytes())),
        detail: format!("n={n}"),
    }
}

fn ledger_writer(dir: &Path, start: u64) {
    let store = Store::open(dir).unwrap();
    let until = Instant::now() + CHILD_LIFETIME;
    for n in start.. {
        if Instant::now() > until {
            return;
        }
        let entry = store.append_ledger(ledger_draft(n)).unwrap();
        ack(entry.seq);
    }
}

#[test]
fn acknowledged_ledger_entries_survive_sigkill_in_a_whole_chain() {
    const TEST: &str = "acknowledged_ledger_entries_survive_sigkill_in_a_whole_chain";
    if let Some((dir, start)) = child_args("ledger") {
        return ledger_writer(&dir, start);
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let start = round * 1_000_000;
        let mut child = ChildProcess::spawn(TEST, "ledger", dir.path(), start);
        let cycle = child.wait_for(20 + 10 * round as usize, is_ack);
        let acked = child.kill_mid_cycle(cycle);
        let last = *acked.last().unwrap();

        let store = Store::open(dir.path()).unwrap();
        let report = store.verify_ledger().unwrap();
        assert_eq!(report.first_bad, None, "round {round}: chain broken");
        assert!(
            report.entries >= last,
            "round {round}: ACK {last} but only {} entries",
            report.entries
        );
        let entries = store.ledger_entries(1, usize::MAX).unwrap();
        for &seq in &acked {
            let e = &entries[seq as usize - 1];
            assert_eq!(e.seq, seq, "round {round}");
            assert_eq!(
                e.action, "test.append",
                "round {round}: entry {seq} damaged"
            );
        }
        // The head names the last entry, so the next round appends after it.
        assert_eq!(
            store.ledger_head().unwrap(),
            entries.last().map(|e| (e.seq, e.hash))
        );
    }
}

// -------------------------------------------------------------- meter import

/// Readings per import, per site; every import rewrites the same keys.
const METER_READINGS: u64 = 200;

/// Import `n`: sites `a` and `b`, intervals 0..METER_READINGS, every value
/// stamped with `n`, so a mix of two imports shows.
fn meter_import(n: u64) -> Vec<(NodeId, u64, i64)> {
    ["a", "b"]
        .iter()
        .flat_map(|s| {
            (0..METER_READINGS).map(move |i| (nid(s), i * 300_000, (n * 10_000 + i) as i64))
        })
        .collect()
}

fn meter_draft(n: u64) -> LedgerDraft {
    LedgerDraft {
        actor: "operator".into(),
        action: "meter.import".into(),
        subject: format!("meter/import-{n}"),
        before: None,
        after: None,
        detail: format!("n={n}"),
    }
}

fn meter_writer(dir: &Path, start: u64) {
    let store = Store::open(dir).unwrap();
    let until = Instant::now() + CHILD_LIFETIME;
    for n in start.. {
        if Instant::now() > until {
            return;
        }
        store
            .import_meter(&meter_import(n), meter_draft(n))
            .unwrap();
        ack(n);
    }
}

#[test]
fn acknowledged_meter_imports_survive_sigkill_whole() {
    const TEST: &str = "acknowledged_meter_imports_survive_sigkill_whole";
    if let Some((dir, start)) = child_args("meter") {
        return meter_writer(&dir, start);
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let start = round * 1_000_000;
        let mut child = ChildProcess::spawn(TEST, "meter", dir.path(), start);
        let cycle = child.wait_for(10 + 5 * round as usize, is_ack);
        let acked = child.kill_mid_cycle(cycle);
        let last = *acked.last().unwrap();

        let store = Store::open(dir.path()).unwrap();
        let mut found = Vec::new();
        for site in ["a", "b"] {
            let got = store.meter_range(&nid(site), 0, u64::MAX).unwrap();
            assert_eq!(got.len() as u64, METER_READINGS, "round {round}");
            found.extend(got.into_iter().map(|(t, w)| (nid(site), t, w)));
        }
        // One import, whole: the last acknowledged one, or the one after it
        // if the kill came between its commit and its ACK.
        let n = found[0].2 as u64 / 10_000;
        assert!(
            n == last || n == last + 1,
            "round {round}: after ACK {last} found import {n}"
        );
        assert_eq!(found, meter_import(n), "round {round}: a mix of imports");
        // Its ledger entry landed with it, and so did every acknowledged one's.
        assert_eq!(store.verify_ledger().unwrap().first_bad, None);
        let entries = store.ledger_entries(1, usize::MAX).unwrap();
        assert_eq!(
            entries.last().map(|e| e.subject.clone()),
            Some(format!("meter/import-{n}")),
            "round {round}: readings of import {n} without its ledger entry"
        );
        let subjects: HashSet<_> = entries.iter().map(|e| e.subject.clone()).collect();
        for a in &acked {
            assert!(
                subjects.contains(&format!("meter/import-{a}")),
                "round {round}: acknowledged import {a} has no ledger entry"
            );
        }
    }
}

// --------------------------------------------------------------------- lock

fn holder(dir: &Path) {
    let _store = Store::open(dir).unwrap();
    println!("OPEN");
    // Hold the store until the parent kills us or closes our stdin.
    let _ = std::io::stdin().read_line(&mut String::new());
}

#[test]
fn data_dir_held_by_another_process_is_locked() {
    const TEST: &str = "data_dir_held_by_another_process_is_locked";
    if let Some((dir, _)) = child_args("hold") {
        return holder(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = ChildProcess::spawn(TEST, "hold", dir.path(), 0);
    child.wait_for(1, |l| l.ends_with("OPEN"));
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "data dir {} is in use by another vpp process (stop it, or talk to it with --node URL)",
            dir.path().display()
        )
    );
    child.kill();
    // The kernel drops the lock with the process.
    Store::open(dir.path()).unwrap();
}

// ---------------------------------------------------------------- registry

/// Commit `n`: two records rewritten together (the shape of an event and its
/// settlement, or an account and its token) plus one new record `n`.
fn registry_changes(n: u64) -> Vec<vpp_store::Change> {
    vec![
        vpp_store::Change::put("pair/a", &n).unwrap(),
        vpp_store::Change::put("pair/b", &n).unwrap(),
        vpp_store::Change::put(format!("item/{n:020}"), &n).unwrap(),
    ]
}

fn registry_writer(dir: &Path, start: u64) {
    let store = Store::open(dir).unwrap();
    let until = Instant::now() + CHILD_LIFETIME;
    for n in start.. {
        if Instant::now() > until {
            return;
        }
        let draft = LedgerDraft {
            actor: "system".into(),
            action: "test.commit".into(),
            subject: format!("item/{n}"),
            before: None,
            after: None,
            detail: String::new(),
        };
        store.registry_commit(&registry_changes(n), draft).unwrap();
        ack(n);
    }
}

#[test]
fn acknowledged_registry_commits_survive_sigkill_whole_with_their_ledger_entry() {
    const TEST: &str =
        "acknowledged_registry_commits_survive_sigkill_whole_with_their_ledger_entry";
    if let Some((dir, start)) = child_args("registry") {
        return registry_writer(&dir, start);
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let start = round * 1_000_000;
        let mut child = ChildProcess::spawn(TEST, "registry", dir.path(), start);
        let cycle = child.wait_for(20 + 10 * round as usize, is_ack);
        let acked = child.kill_mid_cycle(cycle);
        let last = *acked.last().unwrap();

        let store = Store::open(dir.path()).unwrap();
        // Every acknowledged record is there.
        for &n in &acked {
            let v: Option<u64> = store.registry_get(&format!("item/{n:020}")).unwrap();
            assert_eq!(v, Some(n), "round {round}: acknowledged commit {n} lost");
        }
        // The pair was written together: never a mix of two commits, and at
        // least the last acknowledged one.
        let a: u64 = store.registry_get("pair/a").unwrap().unwrap();
        let b: u64 = store.registry_get("pair/b").unwrap().unwrap();
        assert_eq!(a, b, "round {round}: a commit was applied in part");
        assert!(a >= last, "round {round}: pair at {a}, ACK {last}");
        // One ledger entry per commit found, in a chain that verifies.
        let items: Vec<u64> = store.registry_scan("item/").unwrap();
        let report = store.verify_ledger().unwrap();
        assert_eq!(report.first_bad, None, "round {round}: chain broken");
        let commits = store
            .ledger_entries(1, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "test.commit")
            .count();
        assert_eq!(
            commits,
            items.len(),
            "round {round}: records and ledger entries disagree"
        );
    }
}
