//! The cluster benchmark of issue 5: three `vpp` nodes, a broker and a
//! simulated fleet in containers (our own image, on one Docker network),
//! all sharing this machine's cores. It reports:
//!
//! - how long the fleet takes to be seen whole (every device online at the root);
//! - dispatch completion: POST through a follower → allocated, and → the
//!   devices acknowledged the whole order;
//! - registry write latency p50 / p99 (accounts through the leader and a
//!   follower; each a Raft entry with its ledger entry);
//! - shard takeover after SIGKILL of a node that is not the leader: until the
//!   survivors run its shards (fleet rebuilt for the new placement), and
//!   until the devices hold the whole order again.
//!
//! Run (Docker needed; builds the image from the release binaries next to
//! this one):
//! `cargo build --release -p vpp-runtime --bin vpp -p vpp-load-tests --bin vpp-loadgen --bin bench-cluster`
//! then `./target/release/bench-cluster --devices 300000`

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use vpp_load_tests::{machine, percentile, wait_for};
use vpp_runtime::client::Client;

#[derive(Parser)]
#[command(about = "Three vpp nodes, a broker and a simulated fleet in containers")]
struct Args {
    /// Simulated devices (DERs); sites = devices / ders-per-site.
    #[arg(long, default_value_t = 300_000)]
    devices: usize,
    /// Average DERs per site (as `vpp hierarchy generate` makes them).
    #[arg(long, default_value_t = 4)]
    ders_per_site: usize,
    /// Order size, kW.
    #[arg(long, default_value_t = 2000.0)]
    dispatch_kw: f64,
    /// Registry writes per path.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Simulator MQTT connections (at most 256 keeps one desired filter per
    /// shard; more means a filter per site, which rumqttd routes slowly).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Device telemetry period, ms.
    #[arg(long, default_value_t = 10_000)]
    telemetry_interval_ms: u64,
    /// Longest wait for any one phase, s.
    #[arg(long, default_value_t = 900)]
    phase_timeout_s: u64,
    /// The cluster's detection window (`cluster.detect_ms`), ms: with the
    /// whole fleet on two cores, a member can miss pings for seconds.
    #[arg(long, default_value_t = 10_000)]
    detect_ms: u64,
    /// `cluster.subscribe` of the nodes: `shards` (only their shards'
    /// topics) or `all` (wildcards; see runtime/config/vpp.toml).
    #[arg(long, default_value = "shards")]
    subscribe: String,
    /// Leave the containers running at the end.
    #[arg(long)]
    keep: bool,
    /// Devices speak per site: the simulator sends site batches
    /// (`vpp-loadgen --site-batch`) and the nodes publish site documents
    /// (`VPP_MQTT_SITE_DOCUMENTS=true`).
    #[arg(long)]
    site_batch: bool,
}

const COOKIE: &str = "bench-cluster-cookie";

/// Runs `docker args…`, failing with its output.
fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Removes the containers, network and image of the run when dropped.
struct Cleanup {
    containers: Vec<String>,
    net: String,
    image: String,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "kept: containers {:?}, network {}, image {}",
                self.containers, self.net, self.image
            );
            return;
        }
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.net])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

/// The API of container `name` on this host (its published port).
fn api_of(name: &str) -> Result<String> {
    let port = docker(&["port", name, "8080/tcp"])?;
    let port = port
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .context("no published API port")?
        .trim()
        .to_string();
    Ok(format!("http://127.0.0.1:{port}"))
}

fn root_response(c: &Client, root: &str) -> Option<Value> {
    let v = c.get(&format!("/api/v1/nodes/{root}/capacity")).ok()?;
    Some(v["envelope"].clone())
}

/// Device messages a member accepted (its own counter).
fn accepted(c: &Client) -> u64 {
    c.get_text("/metrics")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("vpp_mqtt_accepted_total"))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let bin = std::env::current_exe()?;
    let vpp = bin.with_file_name("vpp");
    let loadgen = bin.with_file_name("vpp-loadgen");
    for b in [&vpp, &loadgen] {
        if !b.exists() {
            bail!(
                "{} not found: build it first (see this program's doc)",
                b.display()
            );
        }
    }
    let sites = (a.devices / a.ders_per_site.max(1)).max(1);
    let run = format!("bench{}", std::process::id());
    let image = format!("vpp:{run}");
    println!(
        "bench-cluster: {} devices ({sites} sites{}), 3 nodes (subscribe = {}, detect_ms = {}) + broker + simulator in containers; {}",
        a.devices,
        if a.site_batch { ", per site" } else { "" },
        a.subscribe,
        a.detect_ms,
        machine()
    );
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = Instant::now();
    let out = Command::new(repo.join("deploy/build-image.sh"))
        .env("VPP_BIN", &vpp)
        .env("VPP_LOADGEN_BIN", &loadgen)
        .env("VPP_IMAGE", &image)
        .output()
        .context("deploy/build-image.sh")?;
    if !out.status.success() {
        bail!(
            "building the image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("image {image} built in {}", secs(t.elapsed()));

    let net = format!("vpp-{run}");
    let names: Vec<String> = (0..3).map(|i| format!("{run}-vpp-{i}")).collect();
    let broker = format!("{run}-broker");
    let fleet = format!("{run}-fleet");
    let mut cleanup = Cleanup {
        containers: vec![broker.clone(), fleet.clone()],
        net: net.clone(),
        image: image.clone(),
        keep: a.keep,
    };
    cleanup.containers.extend(names.iter().cloned());
    docker(&["network", "create", &net])?;
    docker(&[
        "run",
        "-d",
        "--name",
        &broker,
        "--network",
        &net,
        &image,
        "/vpp",
        "broker",
        "--listen",
        "0.0.0.0:1883",
    ])?;
    let members = names
        .iter()
        .map(|n| format!("{n}@{n}:7070"))
        .collect::<Vec<_>>()
        .join(",");
    for n in &names {
        docker(&[
            "run",
            "-d",
            "--name",
            n,
            "--network",
            &net,
            "-p",
            "127.0.0.1::8080",
            "-e",
            "VPP_LISTEN=0.0.0.0:8080",
            "-e",
            "VPP_DATA_DIR=/data",
            "-e",
            &format!("VPP_BROKER=mqtt://{broker}:1883"),
            "-e",
            &format!("VPP_CLUSTER_NODE={n}"),
            "-e",
            &format!("VPP_CLUSTER_MEMBERS={members}"),
            "-e",
            "VPP_CLUSTER_LISTEN=0.0.0.0:7070",
            "-e",
            &format!("VPP_CLUSTER_COOKIE={COOKIE}"),
            "-e",
            &format!("VPP_CLUSTER_DETECT_MS={}", a.detect_ms),
            "-e",
            &format!("VPP_CLUSTER_SUBSCRIBE={}", a.subscribe),
            "-e",
            &format!("VPP_MQTT_SITE_DOCUMENTS={}", a.site_batch),
            "-e",
            "VPP_LOG=info,openraft=off,ractor_cluster=error",
            &image,
            "/vpp",
            "serve",
        ])?;
    }
    let token = wait_for("the first operator's token", 60, || {
        let out = Command::new("docker")
            .args(["cp", &format!("{}:/data/operator.token", names[0]), "-"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("vpp_") && w.len() > 20)
            .map(str::to_string)
    })?;
    let clients: Vec<Client> = names
        .iter()
        .map(|n| Ok(Client::new(&api_of(n)?).with_token(Some(token.clone()))))
        .collect::<Result<_>>()?;
    let leader = wait_for("a leader", 60, || {
        clients.iter().find_map(|c| {
            let v = c.get("/api/v1/cluster").ok()?;
            (v["role"] == "leader").then(|| v["node"].as_str().map(str::to_string))?
        })
    })?;
    let li = names.iter().position(|n| *n == leader).unwrap_or(0);
    let fi = (li + 1) % 3;
    let ki = (li + 2) % 3; // the one killed: not the leader
    wait_for("the operator on every node", 60, || {
        clients
            .iter()
            .all(|c| c.get("/api/v1/accounts/me").is_ok())
            .then_some(())
    })?;

    // The fleet: generated hierarchy through a follower, then the simulator.
    let t = Instant::now();
    let gen = Command::new(&vpp)
        .args(["hierarchy", "generate", "--sites", &sites.to_string()])
        .output()
        .context("vpp hierarchy generate")?;
    if !gen.status.success() {
        bail!("{}", String::from_utf8_lossy(&gen.stderr));
    }
    let toml = String::from_utf8(gen.stdout)?;
    clients[fi]
        .put_text("/api/v1/hierarchy", toml)
        .context("importing the hierarchy")?;
    let root = wait_for("the hierarchy on every node", a.phase_timeout_s, || {
        let roots: Vec<String> = clients
            .iter()
            .map(|c| {
                c.get("/api/v1/health")
                    .ok()
                    .and_then(|h| h["root"].as_str().map(str::to_string))
            })
            .collect::<Option<_>>()?;
        roots
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| roots[0].clone())
    })?;
    println!(
        "hierarchy of {sites} sites imported through a follower and loaded everywhere: {}",
        secs(t.elapsed())
    );
    let t = Instant::now();
    let (sites_s, per_site, interval, conns) = (
        sites.to_string(),
        a.ders_per_site.to_string(),
        a.telemetry_interval_ms.to_string(),
        a.connections.to_string(),
    );
    let broker_addr = format!("{broker}:1883");
    let mut run = vec![
        "run",
        "-d",
        "--name",
        &fleet,
        "--network",
        &net,
        &image,
        "/vpp-loadgen",
        "--broker",
        &broker_addr,
        "--generate-sites",
        &sites_s,
        "--ders-per-site",
        &per_site,
        "--telemetry-interval-ms",
        &interval,
        "--connections",
        &conns,
    ];
    if a.site_batch {
        run.push("--site-batch");
    }
    docker(&run)?;
    // Seen = the members together accepted at least one message per device
    // (telemetry, status), and the root counts every device online.
    let mut last = Instant::now();
    let total = wait_for(
        "every device heard and online at the root",
        a.phase_timeout_s,
        || {
            let heard: u64 = clients.iter().map(accepted).sum();
            let env = root_response(&clients[li], &root)?;
            let (online, total) = (
                env["total"]["online"].as_u64()?,
                env["total"]["total"].as_u64()?,
            );
            if last.elapsed() > Duration::from_secs(10) {
                last = Instant::now();
                println!(
                    "  … {heard} device messages accepted, {online} of {total} devices online ({})",
                    secs(t.elapsed())
                );
            }
            (heard >= total && online == total && total > 0).then_some(total)
        },
    )?;
    let fleet_up = t.elapsed();
    println!(
        "fleet of {total} devices heard and online at the root: {}",
        secs(fleet_up)
    );
    let shards: Vec<u64> = clients[li].get("/api/v1/cluster")?["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| m["shards"].as_u64().unwrap_or(0))
        .collect();
    println!("shards per member: {shards:?}");

    // Dispatch through a follower.
    let kw = a.dispatch_kw;
    let t = Instant::now();
    clients[fi].post_json(
        "/api/v1/dispatches",
        &json!({"id": "bench-1", "target": root, "direction": "up", "power_kw": kw, "duration_s": 3600}),
    )?;
    let taken = t.elapsed();
    let rec = wait_for("the order allocated", a.phase_timeout_s, || {
        let v = clients[fi].get("/api/v1/dispatches/bench-1").ok()?;
        (v["dispatch"]["status"] == "allocated").then_some(v)
    })?;
    let allocated = t.elapsed();
    let alloc_kw = rec["dispatch"]["allocated_kw"].as_f64().unwrap_or(0.0);
    let acked = |c: &Client| {
        let env = root_response(c, &root)?;
        let r = &env["response"];
        (r["acked_kw"].as_f64()? >= alloc_kw * 0.99 - 1e-6).then(|| r.clone())
    };
    let r = wait_for(
        "the devices acknowledging the order",
        a.phase_timeout_s,
        || acked(&clients[fi]),
    )?;
    let acks = t.elapsed();
    println!(
        "dispatch {kw} kW through a follower: accepted {} · allocated {} ({alloc_kw} kW) · devices acked {} kW after {}",
        secs(taken),
        secs(allocated),
        r["acked_kw"],
        secs(acks)
    );

    // Registry write latency.
    for (label, i) in [("leader", li), ("follower", fi)] {
        let before = [cluster_timings(&clients[li]), cluster_timings(&clients[fi])];
        let heard_before: u64 = clients.iter().map(accepted).sum();
        let phase = Instant::now();
        let mut lat = Vec::with_capacity(a.writes);
        for n in 0..a.writes {
            let body =
                json!({"id": format!("bench-{label}-{n}"), "name": "b", "role": "participant"});
            let t = Instant::now();
            clients[i].post_json("/api/v1/accounts", &body)?;
            lat.push(t.elapsed());
        }
        let load = (clients.iter().map(accepted).sum::<u64>() - heard_before) as f64
            / phase.elapsed().as_secs_f64();
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let line = format!(
            "registry writes through the {label}: p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms ({} writes in {}, while the members accepted {load:.0} device messages/s)",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap_or(&Duration::ZERO)),
            a.writes,
            secs(phase.elapsed()),
        );
        println!("{line}");
        // Where the time went, as the members measured it (histogram
        // buckets over this phase: "≤ 5" is the bucket's upper bound).
        let after = [cluster_timings(&clients[li]), cluster_timings(&clients[fi])];
        for (who, j) in [("leader", 0), ("follower", 1)] {
            let h = |name: &str| {
                let q = |q: f64| {
                    histogram_quantile(&before[j], &after[j], name, q)
                        .map_or("-".to_string(), |s| format!("≤ {}", s * 1000.0))
                };
                format!("p50 {} · p99 {} ms", q(0.5), q(0.99))
            };
            let mut parts = Vec::new();
            if who == label {
                parts.push(format!(
                    "write (call to applied) {}",
                    h("vpp_cluster_write_seconds")
                ));
            }
            parts.push(format!(
                "log append + fsync {}",
                h("vpp_cluster_log_append_seconds")
            ));
            parts.push(format!("apply + flush {}", h("vpp_cluster_apply_seconds")));
            println!("  as the {who} measured them: {}", parts.join("; "));
        }
    }

    // SIGKILL of a member that is not the leader.
    let killed = names[ki].clone();
    let before = clients[li].get("/api/v1/cluster")?["placement_epoch"]
        .as_u64()
        .unwrap_or(0);
    let t = Instant::now();
    docker(&["kill", "--signal", "KILL", &killed])?;
    let survivors = [li, fi];
    wait_for(
        "the survivors running the killed member's shards",
        a.phase_timeout_s,
        || {
            survivors
                .iter()
                .all(|&i| {
                    clients[i].get("/api/v1/cluster").ok().is_some_and(|v| {
                        v["placement_epoch"].as_u64().unwrap_or(0) > before
                            && v["fleet_epoch"] == v["placement_epoch"]
                            && v["members"].as_array().is_some_and(|ms| {
                                ms.iter()
                                    .all(|m| (m["name"] == killed.as_str()) == (m["shards"] == 0))
                            })
                    })
                })
                .then_some(())
        },
    )?;
    let moved = t.elapsed();
    // Held = acknowledged in every poll for 2.5 s (longer than the 2 s
    // re-report period, so no stale report from before the kill counts).
    let mut first: Option<Duration> = None;
    let r = wait_for(
        "the devices holding the order again",
        a.phase_timeout_s,
        || match acked(&clients[li]) {
            Some(r) => {
                let f = *first.get_or_insert(t.elapsed());
                (t.elapsed() - f > Duration::from_millis(2500)).then_some(r)
            }
            None => {
                first = None;
                None
            }
        },
    )?;
    let reacked = first.unwrap_or(t.elapsed());
    println!(
        "SIGKILL of {killed}: its shards run on the survivors after {} ({} after the {} s detection window); the devices hold the whole order ({} kW acked) after {}",
        secs(moved),
        secs(moved.saturating_sub(Duration::from_millis(a.detect_ms))),
        a.detect_ms / 1000,
        r["acked_kw"],
        secs(reacked)
    );
    drop(cleanup);
    Ok(())
}

/// The `q` quantile of histogram `name` over the window between two
/// [`cluster_timings`] readings: the upper bound (s) of the first bucket
/// holding it; `None` if nothing was recorded.
fn histogram_quantile(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    name: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).unwrap_or(&0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

/// A member's `vpp_cluster_*` figures from `/metrics`, by name (with labels).
fn cluster_timings(c: &Client) -> std::collections::HashMap<String, f64> {
    c.get_text("/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("vpp_cluster_"))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}
