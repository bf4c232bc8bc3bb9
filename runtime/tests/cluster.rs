//! Three `vpp serve` processes as one cluster on loopback: writes through any
//! member reach every member; SIGKILL of the leader loses no acknowledged
//! write; two of three stay writable; the killed member catches up when it
//! comes back; every member ends with the same audit chain.
//!
//! Run: `cargo nextest run -p vpp-runtime --test cluster`

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mosquitto::{free_port, free_port_pair};
use common::{eventually, request_as, small_toml};
use serde_json::{json, Value};

const COOKIE: &str = "test-cookie-3f9a";

struct Member {
    name: String,
    dir: PathBuf,
    api_port: u16,
    members: String,
    listen: String,
    /// Extra environment (TLS files).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// What the process printed on stdout.
    out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Member {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn start(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vpp"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.api_port),
                "--mqtt-listen",
                "127.0.0.1:0",
            ])
            .env("VPP_LOG", "warn")
            .env("VPP_CLUSTER_NODE", &self.name)
            .env("VPP_CLUSTER_MEMBERS", &self.members)
            .env("VPP_CLUSTER_LISTEN", &self.listen)
            .env("VPP_CLUSTER_COOKIE", COOKIE)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("VPP_NODE")
            .env_remove("VPP_DATA_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("vpp starts");
        let stdout = child.stdout.take().unwrap();
        let out = self.out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    fn get(&self, token: &str, path: &str) -> (u16, Value) {
        request_as(Some(token), "GET", &format!("{}{path}", self.url()), None)
    }

    fn ready(&self) -> bool {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        matches!(agent.get(format!("{}/api/v1/health/ready", self.url())).call(),
            Ok(r) if r.status() == 200)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn cluster(root: &Path) -> Vec<Member> {
    let names = ["n1", "n2", "n3"];
    let rpc: Vec<u16> = names.iter().map(|_| free_port_pair()).collect();
    let members = names
        .iter()
        .zip(&rpc)
        .map(|(n, p)| format!("{n}@127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    names
        .iter()
        .zip(&rpc)
        .map(|(n, p)| Member {
            name: n.to_string(),
            dir: root.join(n),
            api_port: free_port(),
            members: members.clone(),
            listen: format!("127.0.0.1:{p}"),
            env: Vec::new(),
            child: None,
            out: Default::default(),
        })
        .collect()
}

fn token_of(dir: &Path) -> String {
    eventually(30, || {
        std::fs::read_to_string(dir.join("operator.token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    })
}

fn leader(m: &[Member], token: &str) -> String {
    eventually(30, || {
        m.iter().filter(|x| x.child.is_some()).find_map(|x| {
            let (s, v) = x.get(token, "/api/v1/cluster");
            (s == 200 && v["role"] == "leader").then(|| v["node"].as_str().unwrap().to_string())
        })
    })
}

fn make_account(m: &Member, token: &str, id: &str) {
    let body = json!({"id": id, "name": id, "role": "participant"});
    let (s, v) = request_as(
        Some(token),
        "POST",
        &format!("{}/api/v1/accounts", m.url()),
        Some(("application/json", body.to_string().into_bytes())),
    );
    assert_eq!(s, 201, "account {id} through {}: {v}", m.name);
}

fn has_account(m: &Member, token: &str, id: &str) -> bool {
    let (s, v) = m.get(token, "/api/v1/accounts");
    s == 200
        && v.as_array()
            .or_else(|| v["accounts"].as_array())
            .is_some_and(|a| a.iter().any(|x| x["id"] == id))
}

fn ledger_head(m: &Member, token: &str) -> Value {
    let (s, v) = m.get(token, "/api/v1/audit/verify");
    assert_eq!(s, 200, "{}: {v}", m.name);
    v
}

/// The capacity of `north` as every member answers it (asserted equal,
/// apart from when it was read). The roll-up may still be carrying a change
/// up the tree (a split's response lands within two roll-up periods), so
/// three reads in a row may straddle it: they are taken again until they
/// agree, for at most 10 s.
fn same_capacity_everywhere(m: &[Member], token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let caps: Vec<Value> = m
            .iter()
            .map(|x| {
                let (s, mut v) = x.get(token, "/api/v1/nodes/north/capacity");
                assert_eq!(s, 200, "{}: {v}", x.name);
                v["as_of_ms"] = Value::Null; // when it was read
                v
            })
            .collect();
        if caps.windows(2).all(|w| w[0] == w[1]) {
            return caps.into_iter().next().unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "{caps:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three members started and ready, and the first operator's token once
/// every member knows it.
fn up(root: &Path) -> (Vec<Member>, String) {
    start_all(cluster(root))
}

/// Starts `m`, waits until every member is ready and knows the first
/// operator's token.
fn start_all(mut m: Vec<Member>) -> (Vec<Member>, String) {
    for x in m.iter_mut() {
        x.start();
    }
    eventually(40, || m.iter().all(Member::ready).then_some(()));
    // The first member (by name) makes the operator account, replicated.
    let token = token_of(&m[0].dir);
    // The account reaches every member through the log.
    eventually(30, || {
        m.iter()
            .all(|x| x.get(&token, "/api/v1/accounts/me").0 == 200)
            .then_some(())
    });
    (m, token)
}

#[test]
fn writes_through_any_member_survive_the_leader_being_killed() {
    let root = tempfile::tempdir().unwrap();
    let (mut m, token) = up(root.path());

    // A hierarchy through the third member, a dispatch through the second,
    // an account through the first: each is everywhere afterwards.
    let (s, v) = request_as(
        Some(&token),
        "PUT",
        &format!("{}/api/v1/hierarchy", m[2].url()),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(s, 200, "hierarchy through n3: {v}");
    let order = json!({"id": "d-cluster-1", "target": "north", "direction": "up",
        "power_kw": 5.0, "duration_s": 600});
    let (s, v) = request_as(
        Some(&token),
        "POST",
        &format!("{}/api/v1/dispatches", m[1].url()),
        Some(("application/json", order.to_string().into_bytes())),
    );
    assert_eq!(s, 202, "dispatch through n2: {v}");
    make_account(&m[0], &token, "acct-before");
    for x in &m {
        eventually(20, || {
            let (s, v) = x.get(&token, "/api/v1/hierarchy");
            (s == 200 && v.to_string().contains("north")).then_some(())
        });
        eventually(20, || {
            (x.get(&token, "/api/v1/dispatches/d-cluster-1").0 == 200).then_some(())
        });
        eventually(20, || has_account(x, &token, "acct-before").then_some(()));
    }

    // Every member answers fleet reads alike (followers ask the leader).
    let cap = same_capacity_everywhere(&m, &token);
    assert_eq!(cap["committed_up_kw"], json!(5.0), "the order is held");
    // The leader split the order.
    let placed = |x: &Member| {
        let (s, v) = x.get(&token, "/api/v1/dispatches/d-cluster-1");
        (s == 200 && v["allocation"]["allocated_kw"].as_f64().unwrap_or(0.0) > 0.0).then_some(v)
    };
    eventually(20, || placed(&m[0]));

    // Kill the leader: the other two elect a new one and keep taking writes.
    let old = leader(&m, &token);
    let gone = m.iter().position(|x| x.name == old).unwrap();
    m[gone].kill9();
    let new = leader(&m, &token);
    assert_ne!(new, old, "a survivor leads");
    let survivor = (0..3).find(|&i| i != gone).unwrap();
    make_account(&m[survivor], &token, "acct-during");
    for (i, x) in m.iter().enumerate() {
        if i == gone {
            continue;
        }
        assert!(
            has_account(x, &token, "acct-before"),
            "{} lost a write",
            x.name
        );
        eventually(20, || has_account(x, &token, "acct-during").then_some(()));
        // The new leader took the order over: its fleet holds the split.
        let v = eventually(20, || placed(x));
        assert_eq!(v["allocation"]["allocated_kw"], json!(5.0), "{v}");
    }

    // The killed member comes back and catches up on what it missed.
    m[gone].start();
    eventually(40, || m[gone].ready().then_some(()));
    eventually(30, || {
        has_account(&m[gone], &token, "acct-during").then_some(())
    });
    assert_eq!(m[gone].get(&token, "/api/v1/dispatches/d-cluster-1").0, 200);

    // A stopped member's data dir refuses offline writes (they would make it
    // differ from the others), and changes nothing.
    m[gone].kill9();
    let before = std::fs::read_dir(&m[gone].dir).unwrap().count();
    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .arg("--data-dir")
        .arg(&m[gone].dir)
        .args(["hierarchy", "import"])
        .arg(common::repo().join("examples/small.toml"))
        .env("VPP_LOG", "warn")
        .env_remove("VPP_NODE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("belongs to a cluster member"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&m[gone].dir).unwrap().count(), before);
    m[gone].start();
    eventually(40, || m[gone].ready().then_some(()));

    // Same chain everywhere, intact.
    let heads: Vec<Value> = eventually(30, || {
        let h: Vec<Value> = m.iter().map(|x| ledger_head(x, &token)).collect();
        h.windows(2).all(|w| w[0] == w[1]).then_some(h)
    });
    assert_eq!(heads[0]["first_bad"], Value::Null, "{}", heads[0]);
    assert!(heads[0]["entries"].as_u64().unwrap() >= 3, "{}", heads[0]);
}

#[test]
fn members_with_tls_replicate_split_across_the_mesh_and_refuse_plaintext() {
    let root = tempfile::tempdir().unwrap();
    let mut m = cluster(root.path());
    let certs = root.path().join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["cluster", "certs", "--out"])
        .arg(&certs)
        .env("VPP_CLUSTER_MEMBERS", &m[0].members)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for x in m.iter_mut() {
        x.env = vec![
            (
                "VPP_CLUSTER_TLS_CERT".into(),
                certs.join(format!("{}.crt", x.name)).display().to_string(),
            ),
            (
                "VPP_CLUSTER_TLS_KEY".into(),
                certs.join(format!("{}.key", x.name)).display().to_string(),
            ),
            (
                "VPP_CLUSTER_TLS_CA".into(),
                certs.join("ca.crt").display().to_string(),
            ),
        ];
    }
    // Raft over TLS: the members elect a leader and replicate the first
    // operator's account.
    let (m, token) = start_all(m);
    // Writes forwarded over TLS: a hierarchy through a follower, a dispatch
    // through another.
    let lead = leader(&m, &token);
    let followers: Vec<&Member> = m.iter().filter(|x| x.name != lead).collect();
    let (s, v) = request_as(
        Some(&token),
        "PUT",
        &format!("{}/api/v1/hierarchy", followers[0].url()),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(s, 200, "hierarchy through {}: {v}", followers[0].name);
    let order = json!({"id": "d-tls-1", "target": "north", "direction": "up",
        "power_kw": 5.0, "duration_s": 600});
    let (s, v) = request_as(
        Some(&token),
        "POST",
        &format!("{}/api/v1/dispatches", followers[1].url()),
        Some(("application/json", order.to_string().into_bytes())),
    );
    assert_eq!(s, 202, "dispatch through {}: {v}", followers[1].name);
    // The actor mesh over TLS: every member holds shards and sees the
    // others connected, and the split reaches sites on every member.
    let status = eventually(30, || {
        let (s, v) = m[0].get(&token, "/api/v1/cluster");
        let members = v["members"].as_array()?.clone();
        (s == 200
            && members.len() == 3
            && members
                .iter()
                .all(|x| x["connected"] == true && x["shards"].as_u64() > Some(0)))
        .then_some(v)
    });
    let placed = eventually(20, || {
        let (s, v) = m[0].get(&token, "/api/v1/dispatches/d-tls-1");
        (s == 200 && v["allocation"]["allocated_kw"] == json!(5.0)).then_some(v)
    });
    let tree = placed["allocation"].to_string();
    let sites: Vec<String> = small_toml()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("id = \""))
        .map(|id| id.trim_end_matches('"').to_string())
        .filter(|id| tree.contains(&format!("\"{id}\"")))
        .collect();
    assert!(!sites.is_empty(), "{placed}");
    let cap = same_capacity_everywhere(&m, &token);
    assert_eq!(cap["committed_up_kw"], json!(5.0), "{status}");

    // Plaintext on either port gets nothing, and the refusals are counted.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let url = format!("http://{}/cluster/v1/write", m[0].listen);
    let plain = agent
        .post(&url)
        .header("x-vpp-cookie", COOKIE)
        .send(&b"\x01"[..]);
    assert!(
        plain.is_err(),
        "plaintext answered: {:?}",
        plain.map(|r| r.status())
    );
    let metric = |x: &Member| {
        let text = ureq::get(format!("{}/metrics", x.url()))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("vpp_cluster_tls_handshakes_failed_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    eventually(10, || metric(&m[0]).filter(|n| *n >= 1));
}

#[test]
fn a_peer_without_the_cookie_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut m = cluster(root.path());
    m[0].start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{}/cluster/v1/write", m[0].listen);
    let status = eventually(30, || {
        agent
            .post(&url)
            .header("x-vpp-cookie", "wrong")
            .send(&b"\x01\x02"[..])
            .ok()
            .map(|r| r.status().as_u16())
    });
    assert_eq!(status, 401);
}

#[test]
fn a_bad_member_list_is_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = common::process::serve_refused(
        dir.path(),
        &[
            ("VPP_CLUSTER_NODE", "n9"),
            ("VPP_CLUSTER_MEMBERS", "n1@127.0.0.1:1,n2@127.0.0.1:2"),
            ("VPP_CLUSTER_COOKIE", COOKIE),
        ],
    );
    assert!(
        err.contains("\"n9\"") && err.contains("not among the members"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dir.path()).map_or(true, |d| d.count() == 0),
        "nothing written on a refused start"
    );
}

#[test]
fn a_leader_stopped_with_sigterm_hands_over_before_it_exits() {
    let root = tempfile::tempdir().unwrap();
    let (mut m, token) = up(root.path());
    make_account(&m[1], &token, "acct-before-drain");
    // The mesh's counters are in every member's /metrics.
    let metrics = ureq::get(format!("{}/metrics", m[2].url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for name in [
        "vpp_cluster_mesh_bad_messages_total 0",
        "vpp_cluster_mesh_casts_lost_total",
        "vpp_cluster_mesh_sessions_closed_total",
        "vpp_cluster_writes_total",
        "vpp_cluster_write_microseconds_total",
        "# TYPE vpp_cluster_write_microseconds_max gauge",
        "vpp_cluster_log_append_microseconds_total",
        "# TYPE vpp_cluster_write_seconds histogram",
        "# TYPE vpp_cluster_log_append_seconds histogram",
        "# TYPE vpp_cluster_apply_seconds histogram",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // Every member appends to its log (the account above, at least).
    let appends = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vpp_cluster_log_appends_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(appends.is_some_and(|n| n > 0), "{appends:?}");
    // … and its histogram counts every one of them.
    let in_buckets = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vpp_cluster_log_append_seconds_bucket{le=\"+Inf\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(in_buckets, appends, "{metrics}");
    let old = leader(&m, &token);
    let i = m.iter().position(|x| x.name == old).unwrap();
    // Every member runs shards to begin with.
    let (_, v) = m[i].get(&token, "/api/v1/cluster");
    let epoch_before = v["placement_epoch"].as_u64().unwrap();
    for x in v["members"].as_array().unwrap() {
        assert!(x["shards"].as_u64().unwrap() > 0, "{v}");
    }
    let mut child = m[i].child.take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "a drained node exits cleanly: {status:?}");
    // Asked once, right after the exit: leadership moved before it, so a
    // survivor leads already (no election timeout to wait out).
    let leads: Vec<String> = m
        .iter()
        .filter(|x| x.name != old)
        .filter_map(|x| {
            let (s, v) = x.get(&token, "/api/v1/cluster");
            (s == 200 && v["role"] == "leader").then(|| x.name.clone())
        })
        .collect();
    let printed = m[i].out.lock().unwrap().join("\n");
    assert_eq!(
        leads.len(),
        1,
        "one survivor leads at once: {leads:?}; it printed:\n{printed}"
    );
    assert!(
        printed.contains(&format!("draining: {} leads the cluster now", leads[0])),
        "{printed}"
    );
    // Its shards moved before it exited: the survivors run all 256.
    assert!(
        printed.contains("draining: this member's shards moved to the others"),
        "{printed}"
    );
    let j = m.iter().position(|x| x.name == leads[0]).unwrap();
    let (_, v) = m[j].get(&token, "/api/v1/cluster");
    let shards = |name: &str| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .map(|x| x["shards"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(shards(&old), 0, "{v}");
    let total: u64 = m.iter().map(|x| shards(&x.name)).sum();
    assert_eq!(total, 256, "{v}");
    // One move, no flapping: past the detection window (3 s) the drained
    // member has not been taken back in and dropped again.
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    let (_, v) = m[j].get(&token, "/api/v1/cluster");
    assert_eq!(
        v["placement_epoch"].as_u64(),
        Some(epoch_before + 1),
        "shards moved more than once: {v}"
    );
    // And nothing was lost: the survivors take writes and hold the old ones.
    make_account(&m[j], &token, "acct-after-drain");
    assert!(has_account(&m[j], &token, "acct-before-drain"));
}

#[test]
fn a_follower_stopped_with_sigterm_moves_its_shards_once() {
    let root = tempfile::tempdir().unwrap();
    let (mut m, token) = up(root.path());
    let lead = leader(&m, &token);
    let i = m.iter().position(|x| x.name != lead).unwrap();
    let j = m.iter().position(|x| x.name == lead).unwrap();
    let (_, v) = m[j].get(&token, "/api/v1/cluster");
    let epoch_before = v["placement_epoch"].as_u64().unwrap();
    let mut child = m[i].child.take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(
        child.wait().unwrap().success(),
        "a drained node exits cleanly"
    );
    let printed = m[i].out.lock().unwrap().join("\n");
    assert!(
        printed.contains("draining: this member's shards moved to the others"),
        "{printed}"
    );
    // Past the detection window (3 s): moved once, not taken back in while
    // it was stopping and dropped again.
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    let (_, v) = m[j].get(&token, "/api/v1/cluster");
    assert_eq!(
        v["placement_epoch"].as_u64(),
        Some(epoch_before + 1),
        "shards moved more than once: {v}"
    );
    let gone = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == m[i].name.as_str())
        .unwrap();
    assert_eq!(gone["shards"], 0, "{v}");
}
