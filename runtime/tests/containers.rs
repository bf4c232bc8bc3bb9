//! The cluster in containers, driven by testcontainers: an image of the very
//! binaries under test (`deploy/build-image.sh`), a broker (`vpp broker`),
//! three nodes and a simulated fleet (`vpp-loadgen`) on a private network.
//!
//! - a dispatch through a follower reaches the devices; capacity read through
//!   every node agrees;
//! - SIGKILL of the leader's container right after a dispatch is accepted: a
//!   survivor takes the order over and the devices acknowledge it; takeover
//!   time printed; nothing acknowledged lost;
//! - a node cut off from the network (`docker network disconnect`) and
//!   healed: the majority keeps taking writes, the cut-off node takes none,
//!   and after healing it holds the same ledger.
//!
//! Needs Docker (the CI machine has it). Run:
//! `cargo nextest run -p vpp-runtime --test containers`

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::{eventually, request_as};
use serde_json::{json, Value};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

const COOKIE: &str = "containers-test-cookie";
const SITES: &str = "40";

/// Builds `vpp:test-<pid>` from the binaries this test run built.
fn build_image(tag: &str) {
    let vpp = PathBuf::from(env!("CARGO_BIN_EXE_vpp"));
    let loadgen = vpp.with_file_name("vpp-loadgen");
    assert!(
        loadgen.exists(),
        "{} is missing: `cargo build -p vpp-load-tests --bin vpp-loadgen` (the README's test command, .ci/test, does)",
        loadgen.display()
    );
    let out = Command::new(common::repo().join("deploy/build-image.sh"))
        .env("VPP_BIN", &vpp)
        .env("VPP_LOADGEN_BIN", &loadgen)
        .env("VPP_IMAGE", format!("vpp:{tag}"))
        .output()
        .expect("deploy/build-image.sh runs");
    assert!(
        out.status.success(),
        "building the image failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn docker(args: &[&str]) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the test's image when dropped.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

struct Node {
    name: String,
    api: String,
    c: Container<GenericImage>,
}

/// On a failure, the last lines each node logged (the containers go with
/// the test).
impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("VPP_TEST_LOGS").is_some() {
            if let Ok(out) = Command::new("docker")
                .args(["logs", "--tail", "150", self.c.id()])
                .output()
            {
                eprintln!(
                    "--- {} ---\n{}{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

impl Node {
    fn get(&self, token: &str, path: &str) -> (u16, Value) {
        request_as(Some(token), "GET", &format!("{}{path}", self.api), None)
    }

    fn send(&self, token: &str, method: &str, path: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
        request_as(
            Some(token),
            method,
            &format!("{}{path}", self.api),
            Some((ct, body)),
        )
    }
}

fn image(tag: &str) -> GenericImage {
    GenericImage::new("vpp", tag).with_wait_for(WaitFor::Nothing)
}

fn leader(nodes: &[&Node], token: &str) -> String {
    eventually(40, || {
        nodes.iter().find_map(|n| {
            let (s, v) = n.get(token, "/api/v1/cluster");
            (s == 200 && v["role"] == "leader").then(|| v["node"].as_str().unwrap().to_string())
        })
    })
}

/// The status of a GET, or `None` while the server cannot be reached.
fn status_of(token: &str, url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    let r = agent
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .ok()?;
    Some(r.status().as_u16())
}

/// Runs the `vpp` CLI inside a node's container against its own API.
fn exec_vpp(n: &Node, token: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("docker");
    cmd.args([
        "exec",
        n.c.id(),
        "/vpp",
        "--node",
        "http://127.0.0.1:8080",
        "--token",
        token,
    ]);
    let out = cmd.args(args).output().expect("docker exec runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn three_nodes_in_containers_lose_nothing_to_a_kill_or_a_partition() {
    let run = format!("t{}", std::process::id());
    build_image(&run);
    // Declared first, dropped last: after every container is gone.
    let _image = RemoveImage(format!("vpp:{run}"));
    let net = format!("vpp-{run}");
    let names: Vec<String> = (0..3).map(|i| format!("vpp-{run}-{i}")).collect();
    let members = names
        .iter()
        .map(|n| format!("{n}@{n}:7070"))
        .collect::<Vec<_>>()
        .join(",");

    let broker_name = format!("broker-{run}");
    let _broker = image(&run)
        .with_cmd(["/vpp", "broker", "--listen", "0.0.0.0:1883"])
        .with_network(&net)
        .with_container_name(&broker_name)
        .start()
        .expect("broker container");
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| {
            let c = image(&run)
                .with_exposed_port(8080.tcp())
                .with_cmd(["/vpp", "serve"])
                .with_network(&net)
                .with_container_name(n)
                .with_env_var("VPP_LISTEN", "0.0.0.0:8080")
                .with_env_var("VPP_DATA_DIR", "/data")
                .with_env_var("VPP_BROKER", format!("mqtt://{broker_name}:1883"))
                .with_env_var("VPP_CLUSTER_NODE", n)
                .with_env_var("VPP_CLUSTER_MEMBERS", &members)
                .with_env_var("VPP_CLUSTER_LISTEN", "0.0.0.0:7070")
                .with_env_var("VPP_CLUSTER_COOKIE", COOKIE)
                .with_env_var("VPP_LOG", "info,openraft=off,ractor_cluster=error")
                .start()
                .expect("node container");
            let port = c.get_host_port_ipv4(8080).expect("mapped API port");
            Node {
                name: n.clone(),
                api: format!("http://127.0.0.1:{port}"),
                c,
            }
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    // The first member writes the first operator's token into its data dir.
    let token = eventually(40, || {
        let out = Command::new("docker")
            .args(["cp", &format!("{}:/data/operator.token", names[0]), "-"])
            .output()
            .ok()?;
        // `docker cp … -` writes a tar stream: the token is its one line of text.
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("vpp_") && w.len() > 20)
            .map(str::to_string)
    });
    eventually(30, || {
        all.iter()
            .all(|n| n.get(&token, "/api/v1/accounts/me").0 == 200)
            .then_some(())
    });

    // The fleet: a generated hierarchy imported through a follower, and the
    // simulator playing its devices over the broker.
    let gen = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["hierarchy", "generate", "--sites", SITES])
        .output()
        .expect("vpp hierarchy generate");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let lead = leader(&all, &token);
    let follower = nodes.iter().find(|n| n.name != lead).unwrap();
    let (s, v) = follower.send(
        &token,
        "PUT",
        "/api/v1/hierarchy",
        "application/toml",
        gen.stdout,
    );
    assert_eq!(s, 200, "hierarchy through follower {}: {v}", follower.name);
    let root = eventually(20, || {
        let (_, h) = nodes[0].get(&token, "/api/v1/health");
        h["root"].as_str().map(str::to_string)
    });
    let _fleet = image(&run)
        .with_cmd([
            "/vpp-loadgen",
            "--broker",
            &format!("{broker_name}:1883"),
            "--generate-sites",
            SITES,
            "--telemetry-interval-ms",
            "1000",
        ])
        .with_network(&net)
        .with_container_name(format!("loadgen-{run}"))
        .start()
        .expect("loadgen container");
    let online = |n: &Node| {
        let (s, v) = n.get(&token, &format!("/api/v1/nodes/{root}/capacity"));
        (s == 200).then(|| (v["envelope"]["total"]["online"].as_u64().unwrap_or(0), v))
    };
    let (total, _) = eventually(60, || {
        online(&nodes[0])
            .filter(|(o, v)| *o > 0 && Some(*o) == v["envelope"]["total"]["total"].as_u64())
    });
    // Capacity agrees through every node.
    for n in &nodes {
        let (o, _) = online(n).expect("capacity");
        assert_eq!(o, total, "{} sees another fleet", n.name);
    }

    // Shards: all 256 owned, each member runs some, every member agrees.
    let shards_of = |n: &Node| -> Option<(u64, Vec<(String, u64)>)> {
        let (s, v) = n.get(&token, "/api/v1/cluster");
        if s != 200 || v["fleet_epoch"] != v["placement_epoch"] {
            return None;
        }
        let per = v["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["shards"].as_u64().unwrap(),
                )
            })
            .collect();
        Some((v["placement_epoch"].as_u64()?, per))
    };
    let (epoch, per) = shards_of(&nodes[0]).expect("shard view");
    assert_eq!(per.iter().map(|(_, k)| k).sum::<u64>(), 256, "{per:?}");
    assert!(
        per.iter().all(|(_, k)| *k > 0),
        "every member runs shards: {per:?}"
    );
    for n in &nodes {
        assert_eq!(shards_of(n).map(|x| x.0), Some(epoch), "{} agrees", n.name);
    }
    let published = |n: &Node| -> u64 {
        let out = ureq::get(format!("{}/metrics", n.api))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        out.lines()
            .find(|l| l.starts_with("vpp_mqtt_desired_sent_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before: Vec<u64> = nodes.iter().map(published).collect();

    // A dispatch through a follower; then the leader is SIGKILLed at once.
    let order = json!({"id": "c-1", "target": root, "direction": "up",
        "power_kw": 20.0, "duration_s": 900});
    let (s, v) = follower.send(
        &token,
        "POST",
        "/api/v1/dispatches",
        "application/json",
        order.to_string().into_bytes(),
    );
    assert_eq!(s, 202, "{v}");
    let killed_at = Instant::now();
    let lead_node = nodes.iter().find(|n| n.name == lead).unwrap();
    docker(&["kill", "--signal", "KILL", lead_node.c.id()]);
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.name != lead).collect();
    let new = leader(&survivors, &token);
    let takeover = killed_at.elapsed();
    let acked = |n: &Node| {
        let (s, v) = n.get(&token, &format!("/api/v1/nodes/{root}/capacity"));
        let r = &v["envelope"]["response"];
        (s == 200 && r["acked_kw"].as_f64().unwrap_or(0.0) >= 20.0 - 1e-6).then(|| r.clone())
    };
    // The survivors take the killed member's shards over.
    eventually(30, || {
        survivors
            .iter()
            .all(|n| {
                shards_of(n).is_some_and(|(e, per)| {
                    e > epoch && per.iter().all(|(m, k)| (m == &lead) == (*k == 0))
                })
            })
            .then_some(())
    });
    let shards_moved = killed_at.elapsed();
    let mut last_seen = Instant::now();
    let r = eventually(40, || {
        let r = acked(survivors[0]);
        if r.is_none() && last_seen.elapsed().as_secs() >= 5 {
            last_seen = Instant::now();
            let (_, v) = survivors[0].get(&token, &format!("/api/v1/nodes/{root}/capacity"));
            eprintln!("waiting for acks: {}", v["envelope"]["response"]);
        }
        r
    });
    println!(
        "takeover: {new} leads {:.1} s after SIGKILL of {lead}; its shards run on the survivors {:.1} s after; devices acked {} kW of the order {:.1} s after",
        takeover.as_secs_f64(),
        shards_moved.as_secs_f64(),
        r["acked_kw"],
        killed_at.elapsed().as_secs_f64()
    );
    // The order reached devices through members other than the one it was
    // sent to: desired documents went out from at least two members.
    let sent: Vec<u64> = survivors
        .iter()
        .map(|n| {
            let i = nodes.iter().position(|x| x.name == n.name).unwrap();
            published(n).saturating_sub(before[i])
        })
        .collect();
    assert!(
        sent.iter().all(|k| *k > 0),
        "every survivor published desired documents: {sent:?}"
    );
    for n in &survivors {
        let (s, v) = n.get(&token, "/api/v1/dispatches/c-1");
        assert_eq!(s, 200, "{}: {v}", n.name);
        assert!(
            v["allocation"]["allocated_kw"].as_f64().unwrap_or(0.0) >= 20.0 - 1e-6,
            "{v}"
        );
    }

    // The killed node comes back and catches up.
    docker(&["start", lead_node.c.id()]);
    let back = |n: &Node| {
        let port = Command::new("docker")
            .args(["port", n.c.id(), "8080/tcp"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&port.stdout).to_string();
        let port = text.lines().next()?.rsplit(':').next()?.trim().to_string();
        let url = format!("http://127.0.0.1:{port}/api/v1/dispatches/c-1");
        (status_of(&token, &url)? == 200).then_some(url)
    };
    eventually(40, || back(lead_node));

    // Partition a follower: the other two keep a majority and take writes;
    // the cut-off one acknowledges none; healed, it holds the same ledger.
    let new = leader(&survivors, &token);
    let cut = survivors.iter().find(|n| n.name != new).unwrap();
    let other = survivors.iter().find(|n| n.name == new).unwrap();
    docker(&["network", "disconnect", &net, cut.c.id()]);
    let cut_at = Instant::now();
    // The cut-off member stops acting for its shards within the detection
    // window, and the majority takes them over.
    let status_in = |n: &Node| -> Option<Value> {
        let (ok, out) = exec_vpp(n, &token, &["cluster", "status", "--json"]);
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    };
    eventually(20, || {
        status_in(cut).filter(|v| v["acting"] == false).map(|_| ())
    });
    let quiet = cut_at.elapsed();
    eventually(20, || {
        shards_of(other).filter(|(_, per)| per.iter().all(|(m, k)| (m == &cut.name) == (*k == 0)))
    });
    let moved = cut_at.elapsed();
    println!(
        "partition: {} stopped acting {:.1} s after the cut; the majority ran its shards {:.1} s after",
        cut.name,
        quiet.as_secs_f64(),
        moved.as_secs_f64()
    );
    assert!(
        quiet.as_secs_f64() < 3.0 + 2.5,
        "the cut-off member kept acting for {quiet:?} (detection window 3 s)"
    );
    let body = json!({"id": "acct-majority", "name": "m", "role": "participant"});
    let (s, v) = other.send(
        &token,
        "POST",
        "/api/v1/accounts",
        "application/json",
        body.to_string().into_bytes(),
    );
    assert_eq!(s, 201, "the majority takes writes: {v}");
    // The cut-off node is reached from inside its container (its published
    // port went with its network).
    let (ok, out) = exec_vpp(
        cut,
        &token,
        &[
            "account",
            "create",
            "acct-cut",
            "--role",
            "participant",
            "--name",
            "c",
        ],
    );
    assert!(!ok, "a cut-off member acknowledged a write: {out}");
    docker(&["network", "connect", &net, cut.c.id()]);
    let applied = |n: &Node| -> Option<u64> {
        let (ok, out) = exec_vpp(n, &token, &["cluster", "status", "--json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        (ok && v["leader"].is_string())
            .then(|| v["last_applied"].as_u64())
            .flatten()
    };
    eventually(40, || {
        let (a, b) = (applied(cut)?, applied(other)?);
        (a == b).then_some(())
    });
    let (ok, out) = exec_vpp(cut, &token, &["account", "list"]);
    assert!(
        ok && out.contains("acct-majority") && !out.contains("acct-cut"),
        "{out}"
    );
    eventually(40, || {
        let (s, _) = other.send(
            &token,
            "POST",
            "/api/v1/accounts",
            "application/json",
            json!({"id": "acct-healed", "name": "h", "role": "participant"})
                .to_string()
                .into_bytes(),
        );
        (s == 201 || s == 409).then_some(())
    });
    // Healed, the member runs shards again.
    eventually(30, || {
        shards_of(other).filter(|(_, per)| per.iter().all(|(_, k)| *k > 0))
    });
    // Nothing acknowledged was lost anywhere.
    assert_eq!(other.get(&token, "/api/v1/dispatches/c-1").0, 200);
    let (_, v) = other.get(&token, "/api/v1/accounts");
    let v = v.to_string();
    assert!(
        v.contains("acct-healed") && v.contains("acct-majority"),
        "{}: {v}",
        other.name
    );
    // The cut-off node holds them too (asked inside its container).
    eventually(20, || {
        let (ok, out) = exec_vpp(cut, &token, &["account", "list"]);
        (ok && out.contains("acct-healed")).then_some(())
    });
}
