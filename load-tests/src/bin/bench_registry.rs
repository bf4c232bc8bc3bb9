//! Registry write latency of a three-node cluster: starts three `vpp serve`
//! processes on loopback as one cluster, then makes N registry writes (an
//! account each: one Raft entry with its ledger entry) one after another,
//! first through the leader, then through a follower (which hands the
//! request to the leader), and prints p50 / p90 / p99 / max per path.
//!
//! Run: `cargo build --release -p vpp-runtime --bin vpp -p vpp-load-tests --bin bench-registry`
//! then `./target/release/bench-registry --writes 1000`

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use vpp_load_tests::{free_port_pair, percentile, wait_for as wait};
use vpp_runtime::client::Client;

#[derive(Parser)]
#[command(about = "Registry write latency of a three-node cluster on loopback")]
struct Args {
    /// The vpp binary [default: next to this one].
    #[arg(long)]
    vpp: Option<PathBuf>,
    /// Writes per path (leader, follower).
    #[arg(long, default_value_t = 500)]
    writes: usize,
}

struct Member {
    name: String,
    api: String,
    child: Child,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start(vpp: &Path, root: &Path) -> Result<Vec<Member>> {
    let names = ["b1", "b2", "b3"];
    let rpc: Vec<u16> = names
        .iter()
        .map(|_| free_port_pair())
        .collect::<Result<_>>()?;
    let members = names
        .iter()
        .zip(&rpc)
        .map(|(n, p)| format!("{n}@127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    names
        .iter()
        .zip(&rpc)
        .map(|(n, p)| {
            let api = free_port()?;
            let child = Command::new(vpp)
                .arg("--data-dir")
                .arg(root.join(n))
                .args(["serve", "--listen", &format!("127.0.0.1:{api}")])
                .args(["--mqtt-listen", "127.0.0.1:0"])
                .env("VPP_LOG", "error")
                .env("VPP_CLUSTER_NODE", n)
                .env("VPP_CLUSTER_MEMBERS", &members)
                .env("VPP_CLUSTER_LISTEN", format!("127.0.0.1:{p}"))
                .env("VPP_CLUSTER_COOKIE", "bench-registry")
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", vpp.display()))?;
            Ok(Member {
                name: n.to_string(),
                api: format!("http://127.0.0.1:{api}"),
                child,
            })
        })
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let vpp = match args.vpp {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("vpp"),
    };
    if !vpp.exists() {
        bail!(
            "{} not found: cargo build --release -p vpp-runtime --bin vpp",
            vpp.display()
        );
    }
    let root = tempfile::tempdir()?;
    println!(
        "bench-registry: 3 members on loopback, {} writes per path, {} cores",
        args.writes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let members = start(&vpp, root.path())?;
    let token_file = root.path().join("b1").join("operator.token");
    let token = wait("the first operator's token", 60, || {
        std::fs::read_to_string(&token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    })?;
    let clients: Vec<Client> = members
        .iter()
        .map(|m| Client::new(&m.api).with_token(Some(token.clone())))
        .collect();
    let leader = wait("a leader every member knows", 60, || {
        let views: Vec<_> = clients
            .iter()
            .map(|c| c.get("/api/v1/cluster").ok())
            .collect::<Option<Vec<_>>>()?;
        let l = views.iter().find(|v| v["role"] == "leader")?["node"]
            .as_str()?
            .to_string();
        views.iter().all(|v| v["leader"] == l.as_str()).then_some(l)
    })?;
    let li = members.iter().position(|m| m.name == leader).unwrap_or(0);
    let fi = (li + 1) % members.len();
    for (label, i) in [("through the leader", li), ("through a follower", fi)] {
        let c = &clients[i];
        let mut lat = Vec::with_capacity(args.writes);
        let t0 = Instant::now();
        for n in 0..args.writes {
            let body =
                json!({"id": format!("bench-{i}-{n}"), "name": "bench", "role": "participant"});
            let t = Instant::now();
            c.post_json("/api/v1/accounts", &body)
                .with_context(|| format!("write {n} {label}"))?;
            lat.push(t.elapsed());
        }
        let total = t0.elapsed();
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{label} ({}): {} writes in {:.2} s = {:.0}/s; latency ms p50 {:.2} · p90 {:.2} · p99 {:.2} · max {:.2}",
            members[i].name,
            args.writes,
            total.as_secs_f64(),
            args.writes as f64 / total.as_secs_f64(),
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.90)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap_or(&Duration::ZERO)),
        );
    }
    Ok(())
}
