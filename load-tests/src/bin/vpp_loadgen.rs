//! `vpp-loadgen`: a simulated device fleet against an MQTT broker, with an
//! optional benchmark of a node's dispatch round trip.
//!
//! Run (a node with the same fleet, and the broker it uses, already up):
//!
//! ```sh
//! cargo run --release -p vpp-load-tests --bin vpp-loadgen -- --generate-sites 2500
//! cargo run --release -p vpp-load-tests --bin vpp-loadgen -- \
//!     --scenario load-tests/scenarios/million.toml --api http://127.0.0.1:8080 --dispatch-kw 100000 \
//!     --token-file data/operator.token
//! ```
//!
//! Without `--api` it simulates until Ctrl-C (or `--duration-s`), printing a
//! progress line every few seconds. With `--api URL --dispatch-kw X` it
//! waits until every live device has published telemetry and the node's
//! root reports that many devices online, posts one dispatch, and reports
//! per-device latency from the POST to each device's first ack, the time
//! to the last ack, sustained telemetry throughput, and its own CPU time
//! and memory.
//!
//! Flags override the scenario file, which overrides the defaults.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;
use vpp_domain::generate::GenSpec;
use vpp_load_tests::node_api::NodeApi;
use vpp_load_tests::{cpu_time, machine, peak_rss_bytes, quantile, rss_bytes};
use vpp_simulator::{
    check_gen, devices_from_hierarchy, Encoding, FleetSpec, Scenario, SimConfig, SimHandle,
    SimStats,
};

/// Simulate a fleet of DERs over MQTT (protocol v1) and, optionally,
/// benchmark a node's dispatch round trip.
#[derive(Debug, Parser)]
#[command(name = "vpp-loadgen", version, allow_negative_numbers = true)]
struct Args {
    /// Scenario file (TOML; see load-tests/scenarios/).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// MQTT broker, host:port [default: the scenario's, else 127.0.0.1:1883].
    #[arg(long)]
    broker: Option<String>,
    /// Simulate the DERs of this hierarchy file (as `vpp hierarchy import` takes).
    #[arg(long, conflicts_with = "generate_sites")]
    hierarchy: Option<PathBuf>,
    /// Simulate a generated fleet of N sites, with the defaults of
    /// `vpp hierarchy generate` so ids match what the node imported.
    #[arg(long)]
    generate_sites: Option<usize>,
    /// Average DERs per generated site.
    #[arg(long, default_value_t = 4, requires = "generate_sites")]
    ders_per_site: usize,
    /// Levels of the generated hierarchy.
    #[arg(long, default_value_t = 5, requires = "generate_sites")]
    levels: usize,
    /// Seed of the generated hierarchy (not of the simulation: see --seed).
    #[arg(long, default_value_t = 1, requires = "generate_sites")]
    gen_seed: u64,
    /// MQTT connections [default: the scenario's, else one per 500 DERs, at most 2000].
    #[arg(long)]
    connections: Option<usize>,
    /// Telemetry period per device, ms [default: the scenario's, else 5000].
    #[arg(long)]
    telemetry_interval_ms: Option<u64>,
    /// Physics speed-up [default: the scenario's, else 1].
    #[arg(long)]
    speed: Option<f64>,
    /// Seed of the simulation (device states, fault picks).
    #[arg(long)]
    seed: Option<u64>,
    /// MQTT client id prefix.
    #[arg(long)]
    client_prefix: Option<String>,
    /// Payload encoding.
    #[arg(long, value_enum)]
    encoding: Option<Wire>,
    /// Gateways speak per site: telemetry, acks and reported as site
    /// batches, desired as site documents (device protocol §3.6, §3.7; the
    /// node needs `mqtt.site_documents = true`) [default: the scenario's,
    /// else one message per DER].
    #[arg(long)]
    site_batch: bool,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long)]
    duration_s: Option<u64>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress_s: u64,

    /// Benchmark: the node's HTTP API, e.g. http://127.0.0.1:8080.
    #[arg(long, requires = "dispatch_kw")]
    api: Option<String>,
    /// Benchmark: dispatch this many kW.
    #[arg(long, requires = "api")]
    dispatch_kw: Option<f64>,
    /// Benchmark: API token of an operator or aggregator [default: the
    /// contents of --token-file]
    #[arg(long, env = "VPP_TOKEN", hide_env_values = true, requires = "api")]
    token: Option<String>,
    /// Benchmark: file holding the API token, e.g. <data-dir>/operator.token.
    #[arg(long, requires = "api")]
    token_file: Option<std::path::PathBuf>,
    /// Benchmark: dispatch target [default: the node's root].
    #[arg(long, requires = "api")]
    target: Option<String>,
    /// Benchmark: direction of the dispatch.
    #[arg(long, value_enum, default_value_t = Dir::Up)]
    direction: Dir,
    /// Benchmark: dispatch duration, s.
    #[arg(long, default_value_t = 900)]
    dispatch_duration_s: u64,
    /// Benchmark: longest wait for the fleet to be up and seen, s.
    #[arg(long, default_value_t = 900)]
    ready_timeout_s: u64,
    /// Benchmark: acks are complete when none came for this long, s.
    #[arg(long, default_value_t = 10)]
    settle_s: u64,
    /// Benchmark: longest wait for acks after the POST, s.
    #[arg(long, default_value_t = 600)]
    ack_timeout_s: u64,
    /// Benchmark: after the acks, keep measuring telemetry ingest and the
    /// root's staleness for this long, s.
    #[arg(long, default_value_t = 10)]
    measure_s: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Wire {
    Json,
    Binary,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dir {
    Up,
    Down,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each cause left out when the message above
/// already says it.
fn chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// The configuration and fleet from scenario and flags.
fn resolve(args: &Args) -> Result<(SimConfig, FleetSpec, Option<String>)> {
    let scenario = match &args.scenario {
        Some(p) => Some(Scenario::load(p)?),
        None => None,
    };
    let (mut config, scenario_fleet, description) = match scenario {
        Some(s) => (s.config, s.fleet, s.description),
        None => (SimConfig::default(), None, None),
    };
    let fleet = if let Some(h) = &args.hierarchy {
        FleetSpec::Hierarchy(h.clone())
    } else if let Some(sites) = args.generate_sites {
        let g = GenSpec {
            sites,
            ders_per_site: args.ders_per_site,
            levels: args.levels,
            fanout: None,
            seed: args.gen_seed,
        };
        check_gen(&g).map_err(|e| as_flag(&e.to_string().replace("fleet.", "")))?;
        FleetSpec::Generate(g)
    } else if let Some(f) = scenario_fleet {
        f
    } else {
        bail!("no fleet: give --hierarchy FILE, --generate-sites N, or a --scenario with a [fleet] table");
    };
    if let Some(b) = &args.broker {
        config.broker = b.clone();
    }
    if let Some(n) = args.connections {
        config.connections = n;
    }
    if let Some(ms) = args.telemetry_interval_ms {
        config.telemetry_interval = Duration::from_millis(ms);
    }
    if let Some(s) = args.speed {
        config.speed = s;
    }
    if let Some(s) = args.seed {
        config.seed = s;
    }
    if let Some(p) = &args.client_prefix {
        config.client_prefix = p.clone();
    }
    if let Some(w) = args.encoding {
        config.encoding = match w {
            Wire::Json => Encoding::Json,
            Wire::Binary => Encoding::Binary,
        };
    }
    if args.site_batch {
        config.site_batch = true;
    }
    if let Some(kw) = args.dispatch_kw {
        if !(kw.is_finite() && kw > 0.0) {
            bail!("--dispatch-kw: {kw} must be a positive number of kW");
        }
    }
    config.validate().map_err(|e| as_flag(&e.to_string()))?;
    Ok((config, fleet, description))
}

/// A config error (`key: message`) as a flag error (`--key: message`).
fn as_flag(e: &str) -> anyhow::Error {
    match e.split_once(':') {
        Some((key, msg)) if !key.contains(' ') => anyhow!("--{}:{msg}", key.replace('_', "-")),
        _ => anyhow!("{e}"),
    }
}

async fn run(args: Args) -> Result<()> {
    let (mut config, fleet, description) = resolve(&args)?;
    if let Some(d) = &description {
        println!("scenario: {d}");
    }
    let t = Instant::now();
    let fleet_for_load = fleet.clone();
    let hierarchy = tokio::task::spawn_blocking(move || fleet_for_load.hierarchy())
        .await
        .context("loading the fleet")??;
    let sites = devices_from_hierarchy(&hierarchy);
    let root = hierarchy
        .virtual_ders
        .iter()
        .find(|v| v.parent.is_none())
        .map(|v| v.id.to_string());
    // A few DERs whose state shows whether the node ingests our telemetry.
    let sample: Vec<String> = sites
        .iter()
        .flat_map(|s| s.ders.iter())
        .take(8)
        .map(|d| d.id.to_string())
        .collect();
    drop(hierarchy);
    let devices: usize = sites.iter().map(|s| s.ders.len()).sum();
    if args.scenario.is_none() && args.connections.is_none() {
        config.connections = devices.div_ceil(500).clamp(1, 2000);
    }
    println!(
        "fleet: {} sites, {devices} DERs ({:.1} s, rss {} MiB); broker {}, {} connections, telemetry every {} ms, speed {}",
        sites.len(),
        t.elapsed().as_secs_f64(),
        rss_bytes() >> 20,
        config.broker,
        config.connections.min(sites.len()),
        config.telemetry_interval.as_millis(),
        config.speed,
    );
    let sim = vpp_simulator::start(config.clone(), sites).await?;
    let result = match (&args.api, args.dispatch_kw) {
        (Some(api), Some(kw)) => {
            let bench = Bench {
                api,
                kw,
                file_root: root,
                sample,
                config: &config,
            };
            benchmark(&args, &sim, bench).await
        }
        _ => simulate(&args, &sim).await,
    };
    sim.stop().await;
    result
}

/// Runs until Ctrl-C or `--duration-s`, printing progress.
async fn simulate(args: &Args, sim: &SimHandle) -> Result<()> {
    let start = Instant::now();
    let until = args.duration_s.map(|s| start + Duration::from_secs(s));
    let mut progress = Progress::new(sim.stats());
    let every = Duration::from_secs(args.progress_s.max(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = Instant::now() + every;
        let wake = until.map_or(next, |u| u.min(next));
        tokio::select! {
            r = &mut ctrl_c => {
                r.context("waiting for Ctrl-C")?;
                println!("stopping (Ctrl-C)");
                break;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        progress.line(start, sim.stats());
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
    }
    summary(start, &sim.stats());
    Ok(())
}

/// Rates between progress lines.
struct Progress {
    last: SimStats,
    at: Instant,
    cpu: Duration,
}

impl Progress {
    fn new(s: SimStats) -> Self {
        Self {
            last: s,
            at: Instant::now(),
            cpu: cpu_time(),
        }
    }

    fn line(&mut self, start: Instant, s: SimStats) {
        let dt = self.at.elapsed().as_secs_f64().max(1e-3);
        let rate = (s.telemetry_sent - self.last.telemetry_sent) as f64 / dt;
        let batches = match s.batches_sent - self.last.batches_sent {
            0 => String::new(),
            n => format!(" (site batches {:.0}/s)", n as f64 / dt),
        };
        let cpu = cpu_time();
        let cores = (cpu.saturating_sub(self.cpu)).as_secs_f64() / dt;
        println!(
            "[{:>5.0}s] connected {}/{}  reporting {}/{}  telemetry {:.0}/s{batches}  desired {}  acks accepted {} rejected {} applied {}  reconnects {}  cpu {:.2} cores",
            start.elapsed().as_secs_f64(),
            s.connected,
            s.connections,
            s.devices_reporting,
            s.devices_live,
            rate,
            s.desired_received,
            s.acks_accepted,
            s.acks_rejected,
            s.acks_applied,
            s.reconnects,
            cores,
        );
        self.last = s;
        self.at = Instant::now();
        self.cpu = cpu;
    }
}

fn summary(start: Instant, s: &SimStats) {
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    println!(
        "ran {secs:.0} s: {} telemetry ({:.0}/s), {} desired, acks {} accepted / {} rejected / {} applied, \
         ack latency p50 {:?} p99 {:?} max {:?}, {} reconnects, {} storms, {} publish errors",
        s.telemetry_sent,
        s.telemetry_sent as f64 / secs,
        s.desired_received,
        s.acks_accepted,
        s.acks_rejected,
        s.acks_applied,
        s.ack_latency.p50,
        s.ack_latency.p99,
        s.ack_latency.max,
        s.reconnects,
        s.storms,
        s.publish_errors,
    );
    println!(
        "loadgen: cpu {:.1} s, rss {} MiB (peak {} MiB); {}",
        cpu_time().as_secs_f64(),
        rss_bytes() >> 20,
        peak_rss_bytes() >> 20,
        machine()
    );
}

/// Runs a blocking API call off the async threads.
async fn api_call<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("API call failed: {e}"))?
}

/// What the benchmark needs besides the flags.
struct Bench<'a> {
    api: &'a str,
    kw: f64,
    /// The root according to the fleet file (if the node does not say).
    file_root: Option<String>,
    /// DER ids to check the node ingests telemetry.
    sample: Vec<String>,
    config: &'a SimConfig,
}

async fn benchmark(args: &Args, sim: &SimHandle, b: Bench<'_>) -> Result<()> {
    let Bench {
        api,
        kw,
        file_root,
        sample,
        config,
    } = b;
    let start = Instant::now();
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f).map_err(|e| anyhow!("--token-file {}: {e}", f.display()))?,
        ),
        (None, None) => None,
    };
    let node = std::sync::Arc::new(NodeApi::new(api, token));
    let n = node.clone();
    let root = match api_call(move || n.root()).await {
        Ok(r) => r,
        Err(e) => file_root.ok_or(e)?,
    };
    let target = args.target.clone().unwrap_or_else(|| root.clone());
    let deadline = start + Duration::from_secs(args.ready_timeout_s);
    let every = Duration::from_secs(args.progress_s.max(1));
    let mut progress = Progress::new(sim.stats());

    // 1. Every live device has published telemetry.
    let mut next_line = Instant::now() + every;
    loop {
        let s = sim.stats();
        if s.devices_reporting >= s.devices_live {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {} s only {} of {} devices have published telemetry ({} of {} connections up)",
                args.ready_timeout_s,
                s.devices_reporting,
                s.devices_live,
                s.connected,
                s.connections
            );
        }
        if Instant::now() >= next_line {
            progress.line(start, s);
            next_line += every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let live = sim.stats().devices_live as u64;
    println!(
        "all {live} live devices publishing after {:.1} s; waiting for {root} to report them online",
        start.elapsed().as_secs_f64()
    );

    // 2. The node ingests our telemetry (a sample DER's state has a
    //    sequence number), and its root sees every live device online.
    let mut ingesting = false;
    loop {
        if !ingesting {
            let (n, ids) = (node.clone(), sample.clone());
            let seqs = api_call(move || {
                ids.iter()
                    .map(|id| n.der_seq(id))
                    .collect::<Result<Vec<u64>>>()
            })
            .await?;
            ingesting = seqs.iter().any(|&s| s > 0);
        }
        let (n, r) = (node.clone(), root.clone());
        let online = api_call(move || n.online(&r)).await?;
        if ingesting && online >= live {
            println!(
                "{root} reports {online} devices online after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {} s the node {}: is it connected to the same broker ({})?",
                args.ready_timeout_s,
                if ingesting {
                    format!("reports {online} of {live} devices online under {root}")
                } else {
                    format!("shows no telemetry from {} and others", sample.join(", "))
                },
                config.broker
            );
        }
        if Instant::now() >= next_line {
            println!("  node sees {online}/{live} online, telemetry ingested: {ingesting}");
            progress.line(start, sim.stats());
            next_line += every;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Telemetry throughput is measured from here to the end, on both sides:
    // what this fleet published and what the node accepted (a broker may
    // drop what a subscriber is too far behind to take).
    let steady = (Instant::now(), sim.stats().telemetry_sent, cpu_time());
    let n = node.clone();
    let accepted_before = api_call(move || n.accepted()).await.ok();
    // The root's staleness and the node's ingest lag, sampled about once a
    // second from here on.
    let mut staleness: Vec<u64> = Vec::new();
    let mut lag: Vec<u64> = Vec::new();

    // 3. Dispatch, timed from just before the POST.
    let id = format!("loadgen-{}", steady_id());
    let body = json!({
        "id": id,
        "target": target,
        "direction": args.direction.as_str(),
        "power_kw": kw,
        "duration_s": args.dispatch_duration_s,
    });
    sim.arm_probe();
    let posted = Instant::now();
    let n = node.clone();
    let rec = api_call(move || n.post("/api/v1/dispatches", &body)).await?;
    let post_ms = posted.elapsed().as_secs_f64() * 1e3;
    println!(
        "POST /api/v1/dispatches {id}: {kw} kW {} on {target}, answered in {post_ms:.0} ms (status {})",
        args.direction.as_str(),
        rec["status"].as_str().unwrap_or("?")
    );

    // 4. Acks until all expected are in, or quiet for --settle-s.
    let ack_deadline = posted + Duration::from_secs(args.ack_timeout_s);
    let settle = Duration::from_secs(args.settle_s);
    let mut expected: Option<u64> = None;
    let mut last_count = 0usize;
    let mut last_change = Instant::now();
    let mut next_poll = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let acked = sim.probe().acked.len();
        if acked != last_count {
            last_count = acked;
            last_change = Instant::now();
        }
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + Duration::from_secs(1);
            sample_staleness(&node, &root, &mut staleness, &mut lag).await;
            let (n, path) = (node.clone(), format!("/api/v1/dispatches/{id}?depth=0"));
            if let Ok(v) = api_call(move || n.get(&path)).await {
                if let Some(d) = v["dispatch"]["ders"].as_u64() {
                    expected = Some(d);
                }
            }
        }
        if Instant::now() >= next_line {
            println!(
                "  acks {acked}{}",
                expected.map(|e| format!(" of {e}")).unwrap_or_default()
            );
            next_line += every;
        }
        if expected.is_some_and(|e| e > 0 && acked as u64 >= e) {
            break;
        }
        if acked > 0 && last_change.elapsed() >= settle {
            break;
        }
        if Instant::now() >= ack_deadline {
            println!(
                "  giving up waiting for acks after {} s",
                args.ack_timeout_s
            );
            break;
        }
    }
    let probe = sim.probe();
    // 5. Telemetry only, for --measure-s.
    let measure_end = Instant::now() + Duration::from_secs(args.measure_s);
    while Instant::now() < measure_end {
        sample_staleness(&node, &root, &mut staleness, &mut lag).await;
        if Instant::now() >= next_line {
            let last = |v: &[u64]| v.last().map_or("?".to_string(), |ms| format!("{ms} ms"));
            println!(
                "  root staleness {}, node ingest lag {}",
                last(&staleness),
                last(&lag)
            );
            progress.line(start, sim.stats());
            next_line += every;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let end = (Instant::now(), sim.stats().telemetry_sent, cpu_time());
    let n = node.clone();
    let accepted_after = api_call(move || n.accepted()).await.ok();
    let window = end.0.duration_since(steady.0).as_secs_f64().max(1e-3);
    let tps = (end.1 - steady.1) as f64 / window;

    let mut acked = probe.acked.clone();
    acked.sort_unstable();
    let mut applied = probe.applied.clone();
    applied.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let s = sim.stats();
    println!();
    println!("== vpp-loadgen benchmark ==");
    println!("machine: {}", machine());
    println!(
        "fleet: {} devices ({} live) on {} connections via {}, telemetry every {} ms, speed {}",
        s.devices,
        s.devices_live,
        s.connections,
        config.broker,
        config.telemetry_interval.as_millis(),
        config.speed,
    );
    println!(
        "dispatch: {kw} kW {} on {target}; node allocated it to {} DERs; POST answered in {post_ms:.0} ms",
        args.direction.as_str(),
        expected.map(|e| e.to_string()).unwrap_or_else(|| "?".into())
    );
    println!(
        "first ack per device (from the POST): {} devices ({} rejected)  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        acked.len(),
        probe.rejected,
        ms(quantile(&acked, 0.5)),
        ms(quantile(&acked, 0.99)),
        ms(quantile(&acked, 1.0)),
    );
    println!(
        "time until the last ack: {:.0} ms",
        ms(acked.last().copied().unwrap_or_default())
    );
    println!(
        "applied per device: {} devices  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        applied.len(),
        ms(quantile(&applied, 0.5)),
        ms(quantile(&applied, 0.99)),
        ms(quantile(&applied, 1.0)),
    );
    println!(
        "telemetry published: {tps:.0} msgs/s over {window:.0} s (loadgen CPU {:.1} s in that window: {:.2} cores)",
        (end.2 - steady.2).as_secs_f64(),
        (end.2 - steady.2).as_secs_f64() / window
    );
    if s.batches_sent > 0 {
        println!(
            "site batches published: {} in all ({:.1} items each on average)",
            s.batches_sent,
            (s.telemetry_sent + s.acks_accepted + s.acks_rejected + s.acks_applied) as f64
                / s.batches_sent as f64
        );
    }
    match (accepted_before, accepted_after) {
        (Some((a, ba)), Some((b, bb))) => println!(
            "node accepted: {:.0} device msgs/s over the same window (vpp_mqtt_accepted_total; telemetry, acks, reported), \
             of which {:.0} site batches/s carried part",
            b.saturating_sub(a) as f64 / window,
            bb.saturating_sub(ba) as f64 / window
        ),
        _ => println!("node accepted: not known (GET /metrics failed)"),
    }
    for (what, samples) in [
        (
            format!("root staleness (age of the newest telemetry {root} reflects)"),
            &mut staleness,
        ),
        (
            "node ingest lag (age of the newest telemetry ingested, vpp_mqtt_telemetry_lag_ms)"
                .to_string(),
            &mut lag,
        ),
    ] {
        samples.sort_unstable();
        if samples.is_empty() {
            println!("{what}: not known (the node did not say)");
            continue;
        }
        let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        println!(
            "{what}, sampled each second: {} samples  p50 {} ms  p99 {} ms  max {} ms",
            samples.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
    println!(
        "loadgen: cpu {:.1} s total, rss {} MiB (peak {} MiB); {} reconnects, {} publish errors",
        cpu_time().as_secs_f64(),
        rss_bytes() >> 20,
        peak_rss_bytes() >> 20,
        s.reconnects,
        s.publish_errors
    );
    if acked.is_empty() {
        bail!(
            "no device acked the dispatch within {} s",
            args.ack_timeout_s
        );
    }
    Ok(())
}

/// Adds one reading of `root`'s staleness and of the node's ingest lag, if
/// the node gives them.
async fn sample_staleness(
    node: &std::sync::Arc<NodeApi>,
    root: &str,
    staleness: &mut Vec<u64>,
    lag: &mut Vec<u64>,
) {
    let (n, r) = (node.clone(), root.to_string());
    if let Ok(Some(ms)) = api_call(move || n.staleness_ms(&r)).await {
        staleness.push(ms);
    }
    let n = node.clone();
    if let Ok(ms) = api_call(move || n.ingest_lag_ms()).await {
        lag.push(ms);
    }
}

/// A dispatch id suffix unique across runs: Unix ms.
fn steady_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
