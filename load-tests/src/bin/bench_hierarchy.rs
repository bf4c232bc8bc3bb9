//! Benchmark of the actor hierarchy at fleet scale (issue: foundation).
//!
//! Builds a synthetic fleet (default 1,000,000 DERs at 250,000 sites, 5
//! levels) in one process, with the real store and write-behind, and prints:
//!
//! - time to write the hierarchy to sled (import) and to spawn every actor,
//! - resident memory per DER, all in,
//! - time from "every leaf changes" to "the root reflects all of it",
//! - time to split one root dispatch down to every DER,
//! - cold start from sled (load + spawn) of the same hierarchy.
//!
//! Run (release!):
//!
//! ```text
//! cargo run --release -p vpp-load-tests --bin bench-hierarchy
//! cargo run --release -p vpp-load-tests --bin bench-hierarchy -- --sites 25000   # quicker
//! ```
//!
//! Figures go to BENCHMARKS.md with the command and the machine printed here.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `vpp` binary uses (runtime/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::Parser;
use vpp_actors::{Fleet, FleetConfig, Journal, Metrics, NullJournal};
use vpp_domain::flex::der_envelope;
use vpp_domain::generate::{generate, GenSpec};
use vpp_domain::{
    DerState, Direction, DispatchId, DispatchOrder, DispatchRecord, DispatchStatus, FlexEnvelope,
    NodeId,
};
use vpp_store::{Store, StoreOptions, WriteBehind, WriteBehindOptions};

/// Fleet-scale benchmark of spawn, roll-up, dispatch and cold start.
#[derive(Debug, Parser)]
struct Args {
    /// Sites (DERs = sites × ders-per-site).
    #[arg(long, default_value_t = 250_000)]
    sites: usize,
    /// Average DERs per site.
    #[arg(long, default_value_t = 4)]
    ders_per_site: usize,
    /// Levels, root to DERs.
    #[arg(long, default_value_t = 5)]
    levels: usize,
    /// Roll-up coalescing interval per aggregate, ms.
    #[arg(long, default_value_t = 100)]
    rollup_ms: u64,
    /// Data dir [default: a fresh temporary directory].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where actors write behind: the real store, or nowhere (to measure
    /// what persistence costs).
    #[arg(long, value_enum, default_value_t = JournalKind::Store)]
    journal: JournalKind,
    /// Tasks spawning actors in parallel.
    #[arg(long, default_value_t = FleetConfig::default().spawn_parallelism)]
    spawn_parallelism: usize,
    /// Internal: only measure a cold start of the fleet stored in this data dir
    /// (the main run re-executes itself with it, in a fresh process).
    #[arg(long, hide = true)]
    cold_start: Option<std::path::PathBuf>,
    /// Internal: with --cold-start, the root's up W and committed W to check.
    #[arg(long, hide = true)]
    expect: Option<String>,
    /// Send the wave one state per message instead of one batch per site.
    #[arg(long)]
    unbatched: bool,
    /// How long the write-behind may put applying off while every core is
    /// busy, ms, 0-60000 (the node's `store.write_behind_defer_ms`; 0 = never).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    write_behind_defer_ms: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum JournalKind {
    Store,
    Null,
}

use vpp_load_tests::{machine, rss_bytes};

/// Waits for the write-behind to apply and fsync everything queued so far,
/// so the next phase is measured on a quiet system; prints how long it took.
async fn drain(wb: &WriteBehind) -> Result<()> {
    let before = wb.stats();
    let t = Instant::now();
    let h = wb.handle();
    tokio::task::spawn_blocking(move || h.flush_blocking()).await??;
    row(
        "  then write-behind drained + fsynced",
        format!("{:.2} s", t.elapsed().as_secs_f64()),
        "",
    );
    let after = wb.stats();
    row(
        "  records left to drain / applies put off",
        format!(
            "{} / {}",
            after.records_written - before.records_written,
            after.deferred
        ),
        "",
    );
    Ok(())
}

fn mb(b: u64) -> f64 {
    b as f64 / 1024.0 / 1024.0
}

fn row(name: &str, value: String, target: &str) {
    println!("| {name:<44} | {value:>16} | {target:<12} |");
}

async fn wait_root(fleet: &Fleet, want: &FlexEnvelope, deadline: Duration) -> Result<Duration> {
    let t = Instant::now();
    let root = fleet.root().clone();
    loop {
        let v = fleet.view(&root).await?;
        if &v.envelope == want {
            return Ok(t.elapsed());
        }
        if t.elapsed() > deadline {
            anyhow::bail!(
                "root did not reflect the wave within {deadline:?}: up {} W, want {} W",
                v.envelope.available_w(Direction::Up),
                want.available_w(Direction::Up)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VPP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,vpp_actors=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.cold_start.clone() {
        Some(dir) => rt.block_on(cold_start(&dir, args.expect.as_deref())),
        None => rt.block_on(run(args)),
    }
}

async fn cold_start(dir: &std::path::Path, expect: Option<&str>) -> Result<()> {
    let t = Instant::now();
    let store = Store::open_with(dir, StoreOptions::default())?;
    let wb = WriteBehind::start(store.clone(), WriteBehindOptions::default())?;
    let fleet = Fleet::start_from_store(
        store.clone(),
        FleetConfig::default(),
        Arc::new(wb.handle()),
        Arc::new(vpp_actors::NoDevices),
        Arc::new(Metrics::default()),
        |_, _| {},
    )
    .await?;
    let cold = t.elapsed();
    let root = fleet.view(fleet.root()).await?;
    let got = format!(
        "{}:{}",
        root.envelope.available_w(Direction::Up),
        root.committed_up_w
    );
    row(
        "cold start from sled, fresh process",
        format!("{:.2} s", cold.as_secs_f64()),
        "<= 20 s",
    );
    row(
        "  RSS after cold start",
        format!("{:.0} MiB", mb(rss_bytes())),
        "",
    );
    if let Some(e) = expect {
        row(
            "  root envelope + commitments restored",
            format!("{}", e == got),
            "true",
        );
    }
    fleet.stop().await;
    drop(fleet);
    wb.shutdown()?;
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    println!("machine: {}", machine());
    println!(
        "fleet: {} sites x {} DERs avg, {} levels, roll-up interval {} ms, journal {:?}, write-behind defer {} ms, wave {}, data dir {}",
        args.sites,
        args.ders_per_site,
        args.levels,
        args.rollup_ms,
        args.journal,
        args.write_behind_defer_ms,
        if args.unbatched { "one message per DER" } else { "one message per site" },
        dir.display()
    );
    let rss0 = rss_bytes();
    println!();
    println!("| measure                                      |            value | target       |");
    println!("|----------------------------------------------|------------------|--------------|");

    let t = Instant::now();
    let h = generate(&GenSpec {
        sites: args.sites,
        ders_per_site: args.ders_per_site,
        levels: args.levels,
        fanout: None,
        seed: args.seed,
    });
    let n_ders = h.ders.len();
    let n_nodes = h.len();
    let gen_time = t.elapsed();
    row("DERs / nodes", format!("{n_ders} / {n_nodes}"), "1M DERs");
    row(
        "generate hierarchy (pure)",
        format!("{:.2} s", gen_time.as_secs_f64()),
        "",
    );
    let ders: Vec<(NodeId, vpp_domain::DerRating)> = h
        .ders
        .iter()
        .map(|d| (d.id.clone(), d.rating.clone()))
        .collect();

    let store = Store::open_with(&dir, StoreOptions::default())?;
    let t = Instant::now();
    store
        .replace_hierarchy(&h)
        .context("writing the hierarchy")?;
    let import_time = t.elapsed();
    drop(h);
    row(
        "write hierarchy to sled (import, flushed)",
        format!("{:.2} s", import_time.as_secs_f64()),
        "",
    );

    let wb = WriteBehind::start(
        store.clone(),
        WriteBehindOptions {
            max_defer: Duration::from_millis(args.write_behind_defer_ms),
            ..WriteBehindOptions::default()
        },
    )?;
    let config = FleetConfig {
        rollup_interval: Duration::from_millis(args.rollup_ms),
        dispatch_timeout: Duration::from_secs(120),
        spawn_parallelism: args.spawn_parallelism,
        ..FleetConfig::default()
    };
    let rss_before_spawn = rss_bytes();
    let t = Instant::now();
    let journal = |wb: &WriteBehind| -> Arc<dyn Journal> {
        match args.journal {
            JournalKind::Store => Arc::new(wb.handle()),
            JournalKind::Null => Arc::new(NullJournal),
        }
    };
    let fleet = Fleet::start_from_store(
        store.clone(),
        config.clone(),
        journal(&wb),
        Arc::new(vpp_actors::NoDevices),
        Arc::new(Metrics::default()),
        |_, _| {},
    )
    .await?;
    let spawn_time = t.elapsed();
    let rss_fleet = rss_bytes();
    row(
        "spawn every actor (incl. load from sled)",
        format!("{:.2} s", spawn_time.as_secs_f64()),
        "<= 15 s",
    );
    row(
        "RSS per DER, actors only (spawn delta)",
        format!(
            "{:.0} B",
            rss_fleet.saturating_sub(rss_before_spawn) as f64 / n_ders as f64
        ),
        "",
    );

    // Every leaf changes: each DER reports a new operating point.
    let mut want = FlexEnvelope::zero();
    let mut states = Vec::with_capacity(n_ders);
    for (i, (id, rating)) in ders.iter().enumerate() {
        let mut s = DerState::nominal(rating);
        s.power_w = s.power_w * 9 / 10 + (i % 7) as i64;
        s.seq = 1;
        want.add(&der_envelope(rating, &s));
        states.push((id, s));
    }
    let t = Instant::now();
    if args.unbatched {
        for (id, s) in states {
            fleet.send_state(id, s)?;
        }
    } else {
        // As telemetry ingest does: one message per site per batch.
        let rejected = fleet.send_states(states);
        anyhow::ensure!(rejected.is_empty(), "{} states rejected", rejected.len());
    }
    let sent = t.elapsed();
    let reflected = wait_root(&fleet, &want, Duration::from_secs(120)).await?;
    let wave = sent + reflected;
    row(
        "roll-up wave: send 1 state per DER",
        format!("{:.3} s", sent.as_secs_f64()),
        "",
    );
    row(
        "roll-up wave: every leaf -> root reflects",
        format!("{:.3} s", wave.as_secs_f64()),
        "<= 1 s",
    );
    drain(&wb).await?;

    // One dispatch at the root, split down to every DER.
    let up = want.available_w(Direction::Up);
    let order = Arc::new(DispatchOrder {
        id: DispatchId::new("bench-1")?,
        target: fleet.root().clone(),
        direction: Direction::Up,
        power_w: up / 2,
        start_ms: vpp_actors::now_ms(),
        duration_s: 3600,
        ramp_w_per_min: None,
        created_ms: vpp_actors::now_ms(),
    });
    // Journal it first, as the node does before acknowledging.
    store.put_dispatch_durable(&DispatchRecord {
        order: (*order).clone(),
        status: DispatchStatus::Allocated,
        updated_ms: order.created_ms,
        summary: None,
    })?;
    let t = Instant::now();
    let out = fleet.dispatch(order).await?;
    let split_time = t.elapsed();
    let rss_after = rss_bytes();
    row(
        "root dispatch split to every DER",
        format!("{:.3} s", split_time.as_secs_f64()),
        "<= 1 s",
    );
    drain(&wb).await?;
    row(
        "  DERs holding a setpoint / shortfall",
        format!(
            "{} / {} W",
            out.ders,
            (up / 2).saturating_sub(out.accepted_w)
        ),
        "",
    );
    row(
        "RSS per DER, all in (after dispatch)",
        format!("{:.0} B", (rss_after - rss0) as f64 / n_ders as f64),
        "<= 10 KB",
    );
    row(
        "process RSS after dispatch",
        format!("{:.0} MiB", mb(rss_after)),
        "",
    );

    // Cold start: stop and flush everything, then rebuild from the store in
    // a fresh process (a restart does not find a warm heap), which checks
    // that root envelope and commitments come back exactly.
    fleet.stop().await;
    drop(fleet);
    wb.shutdown()?;
    drop(store);
    let expect = format!("{}:{}", want.available_w(Direction::Up), out.accepted_w);
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("--cold-start")
        .arg(&dir)
        .arg("--expect")
        .arg(&expect)
        .output()
        .context("running the cold-start process")?;
    let text = String::from_utf8_lossy(&child.stdout);
    anyhow::ensure!(
        child.status.success(),
        "cold-start process failed: {}{}",
        text,
        String::from_utf8_lossy(&child.stderr)
    );
    print!("{text}");
    Ok(())
}
