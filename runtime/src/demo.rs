//! `vpp demo`: the whole loop in one command, no setup.
//!
//! ```text
//!   generate a 4-level hierarchy ─► start a node (embedded broker + store)
//!   ─► simulated fleet connects over MQTT ─► devices report in (roll-up)
//!   ─► one dispatch at the root ─► progress while devices acknowledge
//!   ─► table per aggregate: requested, allocated, acknowledged, measured
//!      response (telemetry), shortfall; timings
//!   ─► demand response (demo/journey.rs): program, enrollment, event,
//!      dispatch, M&V, settlement, approval, audit ledger
//!   ─► keep serving (or --exit)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use vpp_domain::generate::{generate, GenSpec};
use vpp_domain::{DispatchId, DispatchOrder, Hierarchy, NodeId};

use crate::config::NodeConfig;
use crate::node::Node;
use crate::serve::{self, ServeOptions};

mod journey;

/// Marks a data dir as the demo's own, so `vpp demo` never wipes anything else.
const MARKER: &str = ".vpp-demo";

/// `vpp demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated devices (DERs), four per site.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Data dir of the demo node; recreated on every run (only if it is a
    /// demo data dir or empty).
    #[arg(long, default_value = "demo-data")]
    pub demo_dir: PathBuf,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The embedded MQTT broker's listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// Power to dispatch upward at the root, kW [default: a quarter of what
    /// the fleet offers].
    #[arg(long)]
    pub kw: Option<f64>,
    /// Percent of devices that refuse every setpoint (their share is re-split).
    #[arg(long, default_value_t = 2.0)]
    pub refusing_pct: f64,
    /// Simulated time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 30.0)]
    pub speed: f64,
    /// MQTT connections the simulated fleet multiplexes its devices over.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Stop after printing the results instead of serving on.
    #[arg(long)]
    pub exit: bool,
    /// Skip the demand-response part (program, event, M&V, settlement).
    #[arg(long)]
    pub no_programs: bool,
}

/// Runs the demo.
pub async fn run(a: DemoArgs) -> Result<()> {
    if a.devices < 4 || a.devices > 2_000_000 {
        bail!(
            "--devices must be between 4 and 2000000 (got {})",
            a.devices
        );
    }
    if !(0.0..=100.0).contains(&a.refusing_pct) {
        bail!(
            "--refusing-pct must be within 0..100 (got {})",
            a.refusing_pct
        );
    }
    if !(a.speed.is_finite() && a.speed > 0.0) {
        bail!("--speed must be a positive number (got {})", a.speed);
    }
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let t0 = Instant::now();
    prepare_dir(&a.demo_dir)?;

    let sites = a.devices.div_ceil(4);
    let h = generate(&GenSpec {
        sites,
        ders_per_site: 4,
        levels: 4,
        fanout: None,
        seed: 7,
    });
    let file = a.demo_dir.join("demo-hierarchy.toml");
    std::fs::write(&file, vpp_domain::hierarchy_file::to_toml(&h))
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "1/6 hierarchy: {} DERs at {sites} sites under {} virtual DERs, 4 levels ({})",
        h.ders.len(),
        h.virtual_ders.len(),
        file.display()
    );

    let mut config = NodeConfig {
        data_dir: a.demo_dir.clone(),
        listen: a.listen,
        ..NodeConfig::default()
    };
    config.mqtt.listen = a.mqtt_listen;
    // Short intervals so the demo's event is measured in seconds.
    config.metering.interval_s = 2;
    config.programs.tick_ms = 250;
    config.validate()?;
    let running = serve::start(config, &ServeOptions::default())
        .await
        .context(
            "starting the demo node (a port in use? pick others with --listen and --mqtt-listen)",
        )?;
    let node = running.node.clone();
    node.replace_hierarchy(h.clone()).await?;
    let root = node.fleet().await?.root().clone();
    println!(
        "2/6 node up: API http://{}, embedded MQTT broker mqtt://{}, store {}",
        running.api,
        running.mqtt,
        a.demo_dir.display()
    );

    let sim = start_fleet(&a, &running.mqtt, &h).await?;
    let expected = report_in(&node, &sim, h.ders.len()).await?;
    println!(
        "3/6 {expected} devices reported in ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );

    let result = dispatch_and_watch(&node, &root, a.kw).await;
    match result {
        Ok(r) => print_results(&node, &root, &r).await?,
        Err(e) => eprintln!("dispatch failed: {e:#}"),
    }
    if !a.no_programs {
        if let Err(e) = journey::run(&node, &h, &root, &running.api.to_string()).await {
            eprintln!("demand-response journey failed: {e:#}");
        }
    }

    if !a.exit {
        println!();
        println!("the node keeps serving; explore it (Ctrl-C stops the demo):");
        let token = a.demo_dir.join(crate::programs::OPERATOR_TOKEN_FILE);
        println!(
            "  curl -s -H \"Authorization: Bearer $(cat {})\" http://{}/api/v1/nodes/{root} | head -c 600",
            token.display(),
            running.api
        );
        println!(
            "  cargo run --release -p vpp-runtime --bin vpp -- dispatch list --data-dir {}",
            a.demo_dir.display()
        );
        println!(
            "  mosquitto_sub -h {} -p {} -t 'vpp/v1/+/+/+/ack' -v -C 5",
            a.mqtt_listen.ip(),
            running.mqtt.rsplit(':').next().unwrap_or("1883")
        );
        serve::shutdown_signal().await;
    }
    println!("stopping the simulated fleet and the node");
    sim.stop().await;
    running.stop().await;
    Ok(())
}

/// Recreates the demo data dir; refuses to touch a dir that is neither empty
/// nor a previous demo's.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a vpp demo data dir; pass another --demo-dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "vpp demo data dir: recreated by every `vpp demo`\n",
    )?;
    Ok(())
}

async fn start_fleet(
    a: &DemoArgs,
    broker: &str,
    h: &Hierarchy,
) -> Result<vpp_simulator::SimHandle> {
    let mut config = vpp_simulator::SimConfig {
        broker: broker.to_string(),
        connections: a.connections,
        speed: a.speed,
        telemetry_interval: Duration::from_secs(2),
        client_prefix: "vpp-demo".to_string(),
        start_hour: Some(12.0),
        ..vpp_simulator::SimConfig::default()
    };
    config.faults.refusing_share = a.refusing_pct / 100.0;
    let sites = vpp_simulator::devices_from_hierarchy(h);
    vpp_simulator::start(config, sites)
        .await
        .context("starting the simulated fleet")
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("    {bar:40} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// Waits until every device has published telemetry and the node took it.
async fn report_in(node: &Arc<Node>, sim: &vpp_simulator::SimHandle, ders: usize) -> Result<u64> {
    let pb = bar(ders as u64, "devices reporting in");
    let deadline = Instant::now() + Duration::from_secs(60 + ders as u64 / 1_000);
    loop {
        let s = sim.stats();
        let heard = s.devices_reporting.min(ders) as u64;
        let live = s.devices_live as u64;
        pb.set_position(heard);
        let taken = node
            .metrics()
            .states_applied
            .load(std::sync::atomic::Ordering::Relaxed);
        if heard >= live && live > 0 && taken >= live {
            pb.finish_and_clear();
            // One roll-up interval per level so the root has it all.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(live);
        }
        if Instant::now() > deadline {
            pb.abandon();
            bail!("only {heard} of {ders} devices reported in within the deadline");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What happened to the demo's dispatch.
struct Outcome {
    id: DispatchId,
    requested_w: u64,
    allocated_after: Duration,
    first_ack_after: Option<Duration>,
    all_acked_after: Option<Duration>,
    response_after: Option<Duration>,
}

async fn dispatch_and_watch(node: &Arc<Node>, root: &NodeId, kw: Option<f64>) -> Result<Outcome> {
    let fleet = node.fleet().await?;
    let view = fleet.view(root).await?;
    let offered = view
        .envelope
        .total()
        .up_w
        .saturating_sub(view.committed_up_w);
    let requested_w = match kw {
        Some(kw) => {
            vpp_domain::units::kilo_to_unit(kw).map_err(|e| anyhow::anyhow!("--kw: {e}"))?
        }
        None => (offered / 4 / 1000).max(1) * 1000,
    };
    let now = vpp_actors::now_ms();
    let id = DispatchId::new(format!("demo-{now}"))?;
    let order = DispatchOrder {
        id: id.clone(),
        target: root.clone(),
        direction: vpp_domain::Direction::Up,
        power_w: requested_w,
        start_ms: now,
        duration_s: 15 * 60,
        ramp_w_per_min: None,
        created_ms: now,
    };
    println!(
        "4/6 dispatch {id}: {:.1} kW up at {root} for 15 min (the fleet offers {:.1} kW up)",
        requested_w as f64 / 1000.0,
        offered as f64 / 1000.0
    );
    let t = Instant::now();
    node.create_dispatch(order, false).await?;
    loop {
        let rec = node.dispatch(&id)?;
        if rec.status != vpp_domain::DispatchStatus::Accepted {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the split did not finish in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let allocated_after = t.elapsed();

    let mut first_ack_after = None;
    let mut all_acked_after = None;
    let mut response_after = None;
    let pb = bar(0, "devices acknowledged");
    let deadline = t + Duration::from_secs(60);
    loop {
        let r = fleet.view(root).await?.envelope.response;
        pb.set_length(r.commanded);
        pb.set_position(r.acked);
        if first_ack_after.is_none() && r.acked > 0 {
            first_ack_after = Some(t.elapsed());
        }
        if all_acked_after.is_none() && r.commanded > 0 && r.acked == r.commanded {
            all_acked_after = Some(t.elapsed());
            pb.finish_and_clear();
        }
        // Measured response within 90 % of what the devices acknowledged.
        if response_after.is_none() && r.acked_w > 0 && r.delivered_w * 10 >= r.acked_w * 9 {
            response_after = Some(t.elapsed());
        }
        if (all_acked_after.is_some() && response_after.is_some()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !pb.is_finished() {
        pb.abandon();
    }
    Ok(Outcome {
        id,
        requested_w,
        allocated_after,
        first_ack_after,
        all_acked_after,
        response_after,
    })
}

fn kw(w: i64) -> String {
    format!("{:.1}", w as f64 / 1000.0)
}

async fn print_results(node: &Arc<Node>, root: &NodeId, o: &Outcome) -> Result<()> {
    let fleet = node.fleet().await?;
    let root_view = fleet.view(root).await?;
    let mut rows = vec![root.clone()];
    rows.extend(root_view.children.iter().map(|c| c.id.clone()));
    println!("5/6 results per aggregate (kW; acked = devices that acknowledged / commanded)");
    println!(
        "    {:<24} {:>10} {:>10} {:>13} {:>10} {:>10} {:>10} {:>8}",
        "aggregate",
        "requested",
        "allocated",
        "acked",
        "acked kW",
        "measured",
        "shortfall",
        "refused"
    );
    for id in rows {
        let alloc = fleet.allocation(&o.id, &id).await.ok().flatten();
        let r = fleet.view(&id).await?.envelope.response;
        let (req, allocd, short, refused) = match &alloc {
            Some(a) => (
                a.requested_w as i64,
                a.allocated_w as i64,
                a.shortfall_w as i64,
                a.refusals.len(),
            ),
            None => (0, 0, 0, 0),
        };
        println!(
            "    {:<24} {:>10} {:>10} {:>13} {:>10} {:>10} {:>10} {:>8}",
            id.as_str(),
            kw(req),
            kw(allocd),
            format!("{}/{}", r.acked, r.commanded),
            kw(r.acked_w),
            kw(r.delivered_w),
            kw(short),
            refused
        );
    }
    let fmt = |d: Option<Duration>| match d {
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "not within 60 s".to_string(),
    };
    println!(
        "    timings from the order: split and placed {:.2} s · first ack {} · all acked {} · measured response ≥ 90 % of acked {}",
        o.allocated_after.as_secs_f64(),
        fmt(o.first_ack_after),
        fmt(o.all_acked_after),
        fmt(o.response_after)
    );
    println!(
        "    requested {} kW; refusals were re-split (see GET /api/v1/dispatches/{}?depth=3)",
        kw(o.requested_w as i64),
        o.id
    );
    Ok(())
}
