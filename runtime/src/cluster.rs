//! Several nodes as one VPP: the registry is replicated with Raft
//! (openraft), so no acknowledged write is lost with any one node of three.
//!
//! ```text
//!   API / programs / metering ──Command──► Writer::write
//!        single node:  Store::apply(cmd) + flush ─────────────────────► ok
//!        cluster:      leader?  ── no ──► POST leader /cluster/v1/write
//!                        │ yes
//!                        ▼
//!                      raft log entry ──append──► followers (a majority
//!                        │                        has it on disk = committed)
//!                        ▼
//!                      every member applies it in log order:
//!                      Store::apply(cmd, mark) (storage.rs) ──► sled
//!                        │
//!                        ▼
//!                      ok to the caller once the entry is applied on the
//!                      node that took the request (read-your-writes there)
//! ```
//!
//! What is replicated is every write of [`Command`]: the hierarchy, dispatch
//! records, accounts, programs, enrollments, events, settlements, meter data
//! and the audit ledger. What is not: DER state, setpoints and allocations
//! (the live twin of the devices, rebuilt from the devices' retained
//! desired/reported documents and fresh telemetry).
//!
//! Members are static: every node is given the same list (`[cluster]
//! members`, or `VPP_CLUSTER_MEMBERS`). A member's Raft id is its position in
//! that list sorted by name, so the order given does not matter. The member
//! with the lowest id initialises the cluster on first start; the others
//! wait to hear from a leader. Peers authenticate with the shared cookie.
//!
//! The log is never compacted yet (no snapshots): a member that comes back
//! empty is sent the whole log. See ARCHITECTURE.md.

pub mod discovery;
pub mod mesh;
mod network;
mod proxy;
pub mod shards;
mod storage;
pub mod tls;

pub use proxy::FORWARDED;
pub use shards::Placement;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use vpp_store::{Applied, Command, Store, StoreError};

use crate::config::ClusterConfig;

openraft::declare_raft_types!(
    /// The Raft types of the registry.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
);

type Raft = openraft::Raft<TypeConfig>;

/// How long a write waits for a leader (an election) before giving up.
const WRITE_PATIENCE: Duration = Duration::from_secs(15);

/// Why a replicated write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader could take the write in time (no quorum, or an election
    /// that did not end).
    #[error("the cluster has no leader that could take the write in time: {0}")]
    NoLeader(String),
    /// The store refused the command (same on every member).
    #[error("{0}")]
    Refused(String),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The members of a cluster, parsed from the config.
#[derive(Debug, Clone)]
pub struct Members {
    /// This node's id.
    pub me: u64,
    /// Every member by id: (name, cluster RPC address).
    pub all: BTreeMap<u64, (String, String)>,
}

impl Members {
    /// Parses `cluster.members` and finds `cluster.node` in it.
    pub fn parse(c: &ClusterConfig) -> Result<Members, String> {
        if c.cookie.is_empty() {
            return Err(
                "cluster.cookie (VPP_CLUSTER_COOKIE) must be set when cluster.node is".into(),
            );
        }
        let mut named = Self::parse_list(&c.members)?;
        named.sort();
        let all: BTreeMap<u64, (String, String)> = named
            .into_iter()
            .zip(1u64..)
            .map(|(m, id)| (id, m))
            .collect();
        let me = all
            .iter()
            .find(|(_, (n, _))| *n == c.node)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                format!(
                    "this node, {:?} (cluster.node / VPP_CLUSTER_NODE), is not among the members {:?}",
                    c.node, c.members
                )
            })?;
        Ok(Members { me, all })
    }

    /// `name@host:port` entries as (name, address), in the given order.
    /// Errors name the entry: not `name@host:port`, a bad name, a name
    /// listed twice.
    pub fn parse_list(list: &[String]) -> Result<Vec<(String, String)>, String> {
        let mut named: Vec<(String, String)> = Vec::new();
        for m in list {
            let Some((name, addr)) = m.split_once('@') else {
                return Err(format!("member {m:?} is not name@host:port"));
            };
            let ok_name = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.');
            if !ok_name {
                return Err(format!(
                    "member {m:?}: the name must be letters, digits, - _ or ."
                ));
            }
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(format!("member {m:?}: {addr:?} is not host:port")),
            }
            if named.iter().any(|(n, _)| n == name) {
                return Err(format!("member name {name:?} is listed twice"));
            }
            named.push((name.to_string(), addr.to_string()));
        }
        Ok(named)
    }

    /// Every member's name.
    pub fn names(&self) -> Vec<String> {
        self.all.values().map(|(n, _)| n.clone()).collect()
    }

    fn name(&self, id: u64) -> String {
        self.all
            .get(&id)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }
}

/// One member as `vpp cluster status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Name.
    pub name: String,
    /// Raft id.
    pub id: u64,
    /// Cluster RPC address.
    pub addr: String,
    /// Last log index it is known to hold (the leader knows; others say
    /// nothing).
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's log (the leader knows).
    pub lag: Option<u64>,
    /// It owns shards in the placement in force here.
    pub live: bool,
    /// Device-protocol shards it owns (of 256).
    pub shards: usize,
    /// This member's actor mesh has a session with it (itself: always).
    pub connected: bool,
}

/// What a node knows of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// Raft term.
    pub term: u64,
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// Last index in this node's log.
    pub last_log_index: Option<u64>,
    /// Last index applied to this node's store.
    pub last_applied: Option<u64>,
    /// Milliseconds since a quorum last acknowledged the leader (leader only).
    pub ms_since_quorum_ack: Option<u64>,
    /// Every member.
    pub members: Vec<MemberStatus>,
    /// The placement in force here: grows with every change of the live
    /// members (0: none replicated yet; every configured member counts).
    pub placement_epoch: u64,
    /// The placement epoch this member's part of the fleet was built for
    /// (ready once it equals `placement_epoch`).
    pub fleet_epoch: u64,
    /// This member acts for its shards (it hears from the leader).
    pub acting: bool,
}

/// A running cluster member.
pub struct Cluster {
    raft: Raft,
    members: Members,
    client: network::Client,
    /// Hierarchy replacements applied to this node's store so far.
    hierarchies: watch::Receiver<u64>,
    server: tokio::task::JoinHandle<()>,
    cookie: String,
    /// Mutual TLS between members (`cluster.tls`), if on.
    tls: Option<tls::Tls>,
    /// How long writes through this member took.
    writes: Timing,
    /// openraft's leader lease (`Cluster::drain`).
    election_timeout_max_ms: u64,
    /// The node's API router, for requests followers forward to this node.
    api: Arc<std::sync::OnceLock<axum::Router>>,
    /// Messages between the parts of the fleet on different members.
    mesh: Arc<mesh::Mesh>,
    /// Placement, the fleet serving the mesh, contact with the leader.
    shared: Arc<shards::Shared>,
    /// Live-member changes applied here so far; changes on each one.
    lives: watch::Receiver<u64>,
    /// `cluster.detect_ms`.
    detect_ms: u64,
    /// Store (the live set is read from it).
    store: Store,
    /// The member-watching task.
    watcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Upper bounds of [`Timing`]'s histogram buckets, in microseconds.
const TIMING_BUCKETS_US: [u64; 12] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    5_000_000,
];

/// How long one kind of operation took: count, sum, the longest, and a
/// histogram, in microseconds (for `/metrics`; the histogram is what a p99
/// over any window is read from).
#[derive(Default)]
pub struct Timing {
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
    /// Operations that took at most `TIMING_BUCKETS_US[i]` (not cumulative).
    buckets: [AtomicU64; TIMING_BUCKETS_US.len()],
}

/// The names one [`Timing`] is shown under.
struct TimingNames {
    /// `…_total`: how many.
    count: &'static str,
    /// `…_microseconds_total`: their sum.
    sum: &'static str,
    /// `…_microseconds_max`: the longest since start.
    max: &'static str,
    /// `…_seconds`: the histogram.
    histogram: &'static str,
    help: &'static str,
}

impl Timing {
    /// An empty one (for statics).
    pub const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; TIMING_BUCKETS_US.len()],
        }
    }

    /// Counts one operation that took `d`.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        if let Some(i) = TIMING_BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends the Prometheus text of this timing to `out`: the count, the
    /// sum and the longest in microseconds (as before), then a histogram in
    /// seconds with cumulative `le` buckets.
    fn write_metrics(&self, n: &TimingNames, out: &mut String) {
        use std::fmt::Write as _;
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed);
        for (name, kind, v) in [
            (n.count, "counter", count),
            (n.sum, "counter", sum),
            (n.max, "gauge", self.max_us.load(Ordering::Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} {kind}\n{name} {v}",
                n.help
            );
        }
        let h = n.histogram;
        let _ = writeln!(out, "# HELP {h} {}\n# TYPE {h} histogram", n.help);
        let mut below = 0;
        for (b, le) in self.buckets.iter().zip(TIMING_BUCKETS_US) {
            below += b.load(Ordering::Relaxed);
            let _ = writeln!(out, "{h}_bucket{{le=\"{}\"}} {below}", le as f64 / 1e6);
        }
        let _ = writeln!(out, "{h}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{h}_sum {}", sum as f64 / 1e6);
        let _ = writeln!(out, "{h}_count {count}");
    }
}

/// The mesh listens on the cluster port + 1.
fn mesh_addr(addr: &str) -> Result<String, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{addr:?}: bad port"))?;
    let mesh = port.checked_add(1).ok_or_else(|| {
        format!("{addr:?}: the actor mesh needs the next port up, and there is none")
    })?;
    Ok(format!("{host}:{mesh}"))
}

/// How long a member waits for DNS to list every member.
const DNS_PATIENCE: Duration = Duration::from_secs(600);

/// Before a member opens its store: reads the member list from DNS when
/// `cluster.members_dns` is set (printing what it sees while it waits),
/// then checks the list and the TLS files, so a refused start writes
/// nothing. A single node passes untouched.
pub async fn prepare(cfg: &mut ClusterConfig) -> anyhow::Result<()> {
    if cfg.node.is_empty() {
        return Ok(());
    }
    if !cfg.members_dns.is_empty() {
        let server = match cfg.dns_server.as_str() {
            "" => None,
            s => Some(
                s.parse()
                    .map_err(|e| anyhow::anyhow!("cluster.dns_server {s:?}: {e}"))?,
            ),
        };
        let seeds = discovery::DnsSeeds {
            srv: cfg.members_dns.clone(),
            size: cfg.size,
            server,
        };
        let members =
            discovery::discover(&seeds, Duration::from_millis(500), DNS_PATIENCE, &mut |m| {
                println!("{m}")
            })
            .await
            .map_err(|e| anyhow::anyhow!("cluster.members_dns: {e}"))?;
        println!("dns: members {}", members.join(","));
        cfg.members = members;
        cfg.members_dns.clear();
    }
    Members::parse(cfg).map_err(|m| anyhow::anyhow!("cluster.members: {m}"))?;
    tls::Tls::load(&cfg.tls).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

impl Cluster {
    /// Joins the cluster: opens the log in `store`, listens for peers on
    /// `cfg.listen`, and (lowest id, first start) initialises it.
    pub async fn start(cfg: &ClusterConfig, store: Store) -> anyhow::Result<Arc<Cluster>> {
        let members = Members::parse(cfg).map_err(|m| anyhow::anyhow!("cluster.members: {m}"))?;
        let config = openraft::Config {
            cluster_name: "vpp".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            // No snapshots yet: the log is kept whole (module doc).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Default::default()
        }
        .validate()?;
        let (hier_tx, hierarchies) = watch::channel(0u64);
        let (lives_tx, lives) = watch::channel(0u64);
        let log = storage::LogStore::new(store.clone());
        let sm = storage::StateMachine::open(store.clone(), hier_tx, lives_tx)?;
        let tls = tls::Tls::load(&cfg.tls).map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = network::Client::new(cfg.cookie.clone(), tls.as_ref());
        let raft = Raft::new(members.me, Arc::new(config), client.clone(), log, sm).await?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cluster listener on {}: {e}", cfg.listen))?;
        let api = Arc::new(std::sync::OnceLock::new());
        let server = tokio::spawn(network::serve(
            listener,
            raft.clone(),
            cfg.cookie.clone(),
            api.clone(),
            tls.clone(),
        ));
        if members.me == *members.all.keys().next().expect("at least this node") {
            let initialized = raft.is_initialized().await?;
            if !initialized {
                let nodes: BTreeMap<u64, BasicNode> = members
                    .all
                    .iter()
                    .map(|(id, (_, addr))| (*id, BasicNode::new(addr)))
                    .collect();
                raft.initialize(nodes).await?;
                tracing::info!(members = members.all.len(), "initialised the cluster");
            }
        }
        let me = members.name(members.me);
        let placement = placement_in(&store, &members)?;
        let shared = Arc::new(shards::Shared::new(placement));
        let mesh_listen: std::net::SocketAddr = mesh_addr(&cfg.listen.to_string())
            .and_then(|a| a.parse().map_err(|e| format!("{a}: {e}")))
            .map_err(|e| anyhow::anyhow!("cluster.listen: {e}"))?;
        let mut peers = Vec::new();
        for (id, (name, addr)) in &members.all {
            if *id != members.me {
                let a = mesh_addr(addr).map_err(|e| anyhow::anyhow!("cluster.members: {e}"))?;
                peers.push((name.clone(), a));
            }
        }
        let mesh = mesh::Mesh::start(
            mesh::MeshConfig {
                me: me.clone(),
                listen: mesh_listen,
                peers,
                cookie: cfg.cookie.clone(),
                // A member starved of CPU for a moment keeps its session;
                // losing a member is the leader's call (`detect_ms`).
                heartbeat_timeout: Duration::from_millis(cfg.detect_ms),
                tls: tls.clone(),
            },
            Arc::new(shards::Region {
                shared: shared.clone(),
            }),
        )
        .await
        .map_err(|e| anyhow::anyhow!("actor mesh on {mesh_listen}: {e}"))?;
        tracing::info!(node = %me, id = members.me, listen = %cfg.listen, mesh = %mesh_listen, "cluster member up");
        let cluster = Arc::new(Cluster {
            raft,
            members,
            client,
            hierarchies,
            server,
            cookie: cfg.cookie.clone(),
            tls,
            writes: Timing::default(),
            election_timeout_max_ms: cfg.election_timeout_ms * 2,
            api,
            mesh: Arc::new(mesh),
            shared,
            lives,
            detect_ms: cfg.detect_ms,
            store,
            watcher: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(watch_members(Arc::downgrade(&cluster)));
        if let Ok(mut w) = cluster.watcher.lock() {
            *w = Some(task);
        }
        Ok(cluster)
    }

    /// How this member's fleet reaches nodes on other members.
    pub fn remote_link(&self) -> Arc<dyn vpp_actors::RemoteLink> {
        Arc::new(shards::MeshLink {
            mesh: self.mesh.clone(),
            shared: self.shared.clone(),
            me: self.members.name(self.members.me),
        })
    }

    /// The placement in force here.
    pub fn placement(&self) -> Arc<Placement> {
        self.shared.placement()
    }

    /// Reads the replicated live set and makes it the placement in force.
    /// Returns it when it changed.
    pub fn refresh_placement(&self) -> Result<Option<Arc<Placement>>, StoreError> {
        let p = placement_in(&self.store, &self.members)?;
        let mut slot = self
            .shared
            .placement
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if **slot == p {
            return Ok(None);
        }
        *slot = Arc::new(p);
        Ok(Some(slot.clone()))
    }

    /// Live-member changes applied here; changes on each one.
    pub fn lives(&self) -> watch::Receiver<u64> {
        self.lives.clone()
    }

    /// The fleet that answers other members' requests (`None` while it is
    /// rebuilt), and the placement epoch it was built for.
    pub fn serve_fleet(&self, fleet: Option<vpp_actors::Fleet>, epoch: u64) {
        if let Ok(mut f) = self.shared.fleet.write() {
            *f = fleet;
        }
        self.shared.fleet_epoch.store(epoch, Ordering::SeqCst);
    }

    /// True while this member may act for its shards: it hears from the
    /// leader (a follower: a ping within `detect_ms`; the leader: a quorum
    /// acknowledged it within `detect_ms`), and it is not draining.
    pub fn acting(&self) -> bool {
        if self.shared.leaving.load(Ordering::SeqCst) {
            return false;
        }
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.members.me) {
            return m
                .millis_since_quorum_ack
                .is_some_and(|ms| ms < self.detect_ms);
        }
        let last = self.shared.contact_ms.load(Ordering::SeqCst);
        vpp_actors::now_ms().saturating_sub(last) < self.detect_ms
    }

    /// Waits (up to `patience`) until every live member's fleet is built
    /// for placement `epoch` or later, so a split does not race their
    /// rebuilds. Returns the members that were not, if any.
    pub async fn wait_members_at(&self, epoch: u64, patience: Duration) -> Vec<String> {
        let me = self.members.name(self.members.me);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let placement = self.placement();
            let mut behind = Vec::new();
            for m in placement.live.iter().filter(|m| **m != me) {
                match shards::ping(&self.mesh, &me, m, Duration::from_millis(500)).await {
                    Ok((e, _)) if e >= epoch => {}
                    _ => behind.push(m.clone()),
                }
            }
            if behind.is_empty() || tokio::time::Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts draining: this member stops acting for its shards and answers
    /// the leader's pings with `leaving`, so the leader moves them away;
    /// waits (up to `patience`) until the placement in force here no longer
    /// gives it any. Returns whether they moved.
    pub async fn hand_shards_over(&self, patience: Duration) -> bool {
        let me = self.members.name(self.members.me);
        self.shared.leaving.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if !self.placement().live.contains(&me) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Replicates `cmd`: through this node if it leads, else through the
    /// leader. Returns once the command is applied on this node too.
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        use tracing::Instrument as _;
        let started = std::time::Instant::now();
        let span = tracing::info_span!("registry write", command = cmd.name());
        let result = self.write_untimed(cmd).instrument(span).await;
        self.writes.record(started.elapsed());
        result
    }

    async fn write_untimed(&self, cmd: Command) -> Result<Applied, WriteError> {
        let give_up = tokio::time::Instant::now() + WRITE_PATIENCE;
        let mut last = String::from("no leader elected yet");
        loop {
            let res = match self.raft.client_write(cmd.clone()).await {
                Ok(resp) => Ok((resp.log_id.index, resp.data)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match f.leader_node {
                        Some(node) => self.client.forward(&node.addr, &cmd).await,
                        None => Err(last.clone()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match res {
                Ok((index, applied)) => {
                    self.wait_applied(index).await?;
                    return match applied {
                        Applied::Refused(why) => Err(WriteError::Refused(why)),
                        a => Ok(a),
                    };
                }
                Err(e) => last = e,
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(WriteError::NoLeader(last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), WriteError> {
        self.raft
            .wait(Some(WRITE_PATIENCE))
            .applied_index_at_least(Some(index), "write applied here")
            .await
            .map(|_| ())
            .map_err(|e| WriteError::NoLeader(format!("applying entry {index} here: {e}")))
    }

    /// Serves requests other members forward to this one through `api`
    /// (set once, when the API is up).
    pub fn set_api(&self, api: axum::Router) {
        let _ = self.api.set(api);
    }

    /// Where API requests go: `Ok(None)` = here (this member leads),
    /// `Ok(Some(addr))` = the leader's cluster address, `Err` = no leader known.
    pub fn api_target(&self) -> Result<Option<String>, String> {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.members.me => Ok(None),
            Some(l) => self
                .members
                .all
                .get(&l)
                .map(|(_, addr)| Some(addr.clone()))
                .ok_or_else(|| format!("the leader (id {l}) is not in the member list")),
            None => Err("no cluster leader is known yet; try again in a few seconds".into()),
        }
    }

    /// Runs `req` where the leader is: here (`local`), or forwarded to it.
    /// While no leader is known or the one known cannot be reached (an
    /// election under way), waits up to [`WRITE_PATIENCE`] for the next,
    /// then answers 503. The body is held in memory (up to `max_body`) so
    /// that it can be sent again.
    pub async fn route_api<F, Fut>(
        &self,
        req: axum::extract::Request,
        max_body: usize,
        local: F,
    ) -> axum::response::Response
    where
        F: FnOnce(axum::extract::Request) -> Fut,
        Fut: std::future::Future<Output = axum::response::Response>,
    {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, max_body).await {
            Ok(b) => b,
            // Over the limit (or cut off): 413 before anything is forwarded.
            Err(e) => return proxy::too_large(max_body, e),
        };
        let give_up = tokio::time::Instant::now() + WRITE_PATIENCE;
        loop {
            let why = match self.api_target() {
                Ok(None) => {
                    let req = axum::extract::Request::from_parts(parts, bytes.into());
                    return local(req).await;
                }
                Ok(Some(addr)) => {
                    let req =
                        axum::extract::Request::from_parts(parts.clone(), bytes.clone().into());
                    match proxy::forward(&addr, &self.cookie, self.tls.as_ref(), req).await {
                        Ok(resp) => return resp,
                        Err(why) => why,
                    }
                }
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= give_up {
                return proxy::unavailable(why);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// True while this member leads.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(self.members.me)
    }

    /// Changes of leadership, as seen here (`true` = this member leads).
    pub fn leadership(&self) -> watch::Receiver<bool> {
        let mut metrics = self.raft.metrics();
        let me = self.members.me;
        let (tx, rx) = watch::channel(metrics.borrow().current_leader == Some(me));
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let leads = metrics.borrow().current_leader == Some(me)
                    && metrics.borrow().state == ServerState::Leader;
                tx.send_if_modified(|v| std::mem::replace(v, leads) != leads);
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }

    /// True on the member with the lowest id (it initialises the cluster
    /// and makes the first operator account).
    pub fn is_first_member(&self) -> bool {
        self.members.all.keys().next() == Some(&self.members.me)
    }

    /// Waits until a leader is known and this node has applied every entry
    /// in its log that the leader has committed (checked by a replicated
    /// barrier: a write that changes nothing).
    pub async fn caught_up(&self) {
        loop {
            if self.ready() {
                let barrier = Command::PutMeter(Vec::new());
                match self.write(barrier).await {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(error = %e, "waiting for the cluster"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Hierarchy replacements applied here so far; changes on each one.
    pub fn hierarchies(&self) -> watch::Receiver<u64> {
        self.hierarchies.clone()
    }

    /// True when a leader is known and this node has applied what it knows
    /// to be committed (it can serve reads).
    pub fn ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader.is_some() && m.running_state.is_ok()
    }

    /// This member's cluster counters, for `/metrics`.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        vec![
            (
                "vpp_cluster_tls_handshakes_failed_total",
                "TLS handshakes with other members that failed (cluster.tls)",
                "counter",
                tls::handshakes_failed(),
            ),
            (
                "vpp_cluster_mesh_bad_messages_total",
                "actor-mesh messages from other members that could not be decoded",
                "counter",
                self.shared.bad_messages.load(Ordering::Relaxed),
            ),
            (
                "vpp_cluster_mesh_casts_lost_total",
                "one-way messages to other members that could not be sent (repaired by re-sending)",
                "counter",
                self.shared.casts_lost.load(Ordering::Relaxed),
            ),
            (
                "vpp_cluster_mesh_sessions_closed_total",
                "actor-mesh sessions to other members that closed",
                "counter",
                self.mesh.losses(),
            ),
        ]
    }

    /// This member's cluster timings, as Prometheus text for `/metrics`.
    pub fn timings(&self) -> String {
        let mut out = String::new();
        self.writes.write_metrics(
            &TimingNames {
                count: "vpp_cluster_writes_total",
                sum: "vpp_cluster_write_microseconds_total",
                max: "vpp_cluster_write_microseconds_max",
                histogram: "vpp_cluster_write_seconds",
                help: "replicated writes made through this member, from the call to applied here",
            },
            &mut out,
        );
        storage::LOG_APPENDS.write_metrics(
            &TimingNames {
                count: "vpp_cluster_log_appends_total",
                sum: "vpp_cluster_log_append_microseconds_total",
                max: "vpp_cluster_log_append_microseconds_max",
                histogram: "vpp_cluster_log_append_seconds",
                help: "Raft log appends on this member, written and flushed to disk",
            },
            &mut out,
        );
        storage::APPLIES.write_metrics(
            &TimingNames {
                count: "vpp_cluster_applies_total",
                sum: "vpp_cluster_apply_microseconds_total",
                max: "vpp_cluster_apply_microseconds_max",
                histogram: "vpp_cluster_apply_seconds",
                help:
                    "batches of committed Raft entries applied to this member's store and flushed",
            },
            &mut out,
        );
        out
    }

    /// True once this member's part of the fleet is built for the
    /// placement in force.
    pub fn shards_loaded(&self) -> bool {
        self.shared.fleet_epoch.load(Ordering::SeqCst) == self.placement().epoch
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let last = m.last_log_index;
        let placement = self.placement();
        let counts = placement.counts();
        let connected = self.mesh.connected();
        let members = self
            .members
            .all
            .iter()
            .map(|(id, (name, addr))| {
                let matched = if *id == self.members.me {
                    last
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                let lag = match (m.state, matched, last) {
                    (ServerState::Leader, Some(x), Some(l)) => Some(l.saturating_sub(x)),
                    (ServerState::Leader, None, Some(l)) => Some(l + 1),
                    _ => None,
                };
                MemberStatus {
                    live: placement.live.contains(name),
                    shards: counts.get(name).copied().unwrap_or(0),
                    connected: *id == self.members.me || connected.contains(name),
                    name: name.clone(),
                    id: *id,
                    addr: addr.clone(),
                    matched_index: if m.state == ServerState::Leader || *id == self.members.me {
                        matched
                    } else {
                        None
                    },
                    lag,
                }
            })
            .collect();
        ClusterStatus {
            node: self.members.name(self.members.me),
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader.map(|l| self.members.name(l)),
            last_log_index: last,
            last_applied: m.last_applied.map(|l| l.index),
            ms_since_quorum_ack: m.millis_since_quorum_ack,
            members,
            placement_epoch: placement.epoch,
            fleet_epoch: self.shared.fleet_epoch.load(Ordering::SeqCst),
            acting: self.acting(),
        }
    }

    /// Hands leadership over before this member stops (SIGTERM): if it
    /// leads, waits (up to 2 s) for the most up-to-date follower to hold the
    /// whole log, asks it to stand for election, and waits until another
    /// member leads (at most twice the longest election timeout plus 2 s). The others then need not wait out an election
    /// timeout. Returns who leads afterwards, if known.
    pub async fn drain(&self) -> Option<String> {
        if !self.is_leader() {
            return self.status().leader;
        }
        let pick = |m: &openraft::RaftMetrics<u64, BasicNode>| {
            m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.members.me)
                    .max_by_key(|(_, l)| l.map(|l| l.index))
                    .map(|(id, l)| (*id, l.map(|l| l.index)))
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let target = loop {
            let m = self.raft.metrics().borrow().clone();
            match pick(&m) {
                Some((id, matched)) if matched == m.last_log_index => break Some(id),
                Some((id, _)) if tokio::time::Instant::now() >= deadline => break Some(id),
                None => break None,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (name, addr) = self.members.all.get(&target?).cloned()?;
        tracing::info!(to = %name, "draining: handing leadership over");
        // A member refuses to vote while the leader it knows holds its lease
        // (openraft: the longest election timeout since the vote last
        // changed), so a young leader may be refused at first: ask again
        // until the lease has run out.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.election_timeout_max_ms * 2 + 2_000);
        while tokio::time::Instant::now() < deadline {
            if let Err(e) = self.client.elect(&addr).await {
                tracing::warn!(to = %name, error = %e, "asking for an election failed");
            }
            let ask_again = tokio::time::Instant::now() + Duration::from_millis(500);
            while tokio::time::Instant::now() < ask_again {
                let m = self.raft.metrics().borrow().clone();
                if let Some(l) = m.current_leader.filter(|l| *l != self.members.me) {
                    let who = self.members.name(l);
                    tracing::info!(leader = %who, "draining: another member leads");
                    return Some(who);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        None
    }

    /// Stops taking part (the others elect a new leader if this one led).
    pub async fn shutdown(&self) {
        if let Some(t) = self.watcher.lock().ok().and_then(|mut w| w.take()) {
            t.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping raft");
        }
        self.server.abort();
        self.mesh.stop().await;
    }
}

/// The placement the replicated live set gives (every configured member
/// before one is replicated).
fn placement_in(store: &Store, members: &Members) -> Result<Placement, StoreError> {
    let me = members.name(members.me);
    Ok(match store.live()? {
        Some((epoch, live)) => Placement::new(epoch, live, &me),
        None => Placement::new(0, members.names(), &me),
    })
}

/// On the leader: pings every member over the mesh every 500 ms, and
/// replicates a new live set when one has not answered for `detect_ms`, has
/// come back, or is draining (`shards.rs`).
async fn watch_members(cluster: std::sync::Weak<Cluster>) {
    let mut last_ok: HashMap<String, u64> = HashMap::new();
    // Members whose last answer said they are draining: out until one says
    // otherwise (a ping that fails meanwhile must not bring them back).
    let mut leaving: HashSet<String> = HashSet::new();
    let mut was_leader = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(c) = cluster.upgrade() else { return };
        let leads = c.is_leader();
        if !leads {
            was_leader = false;
            continue;
        }
        let me = c.members.name(c.members.me);
        let now = vpp_actors::now_ms();
        if !was_leader {
            // New leader: every member the log counts as live gets a full
            // detection window; the others (lost, drained) must answer a
            // ping to come back.
            was_leader = true;
            leaving.clear();
            last_ok = match placement_in(&c.store, &c.members) {
                Ok(p) => p.live.into_iter().map(|m| (m, now)).collect(),
                Err(_) => c.members.names().into_iter().map(|m| (m, now)).collect(),
            };
        }
        let others: Vec<String> = c.members.names().into_iter().filter(|m| *m != me).collect();
        let pings = others.iter().map(|m| {
            let c = c.clone();
            let me = me.clone();
            // Answer within a third of the window, so a few pings fit in it.
            let timeout = Duration::from_millis((c.detect_ms / 3).max(1000));
            async move { shards::ping(&c.mesh, &me, m, timeout).await }
        });
        let answers = futures::future::join_all(pings).await;
        let now = vpp_actors::now_ms();
        let mut live = Vec::new();
        if !c.shared.leaving.load(Ordering::SeqCst) {
            live.push(me.clone());
        }
        for (m, a) in others.iter().zip(answers) {
            if let Ok((_, drains)) = a {
                last_ok.insert(m.clone(), now);
                if drains {
                    leaving.insert(m.clone());
                } else {
                    leaving.remove(m);
                }
            }
            let seen = last_ok.get(m).copied().unwrap_or(0);
            if !leaving.contains(m) && now.saturating_sub(seen) < c.detect_ms {
                live.push(m.clone());
            }
        }
        live.sort();
        // What the log holds (this member may not have rebuilt for it yet).
        let current = match placement_in(&c.store, &c.members) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading the live members failed");
                continue;
            }
        };
        if live == current.live || live.is_empty() {
            continue;
        }
        tracing::info!(from = ?current.live, to = ?live, "live members changed: moving shards");
        let cmd = Command::SetLive {
            epoch: current.epoch + 1,
            members: live,
        };
        if let Err(e) = c.write(cmd).await {
            tracing::warn!(error = %e, "replicating the live members failed");
        }
    }
}

/// Where durable writes go: the local store, or the cluster.
#[derive(Clone)]
pub enum Writer {
    /// A single node: applied to the store and flushed.
    Local(Store),
    /// Replicated.
    Cluster(Arc<Cluster>),
}

impl Writer {
    /// Makes `cmd` durable: on `Ok` it survives a crash of this node (single
    /// node) or of any minority of the members (cluster).
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        match self {
            Writer::Local(store) => {
                let store = store.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    let a = store.apply(&cmd, None)?;
                    store.flush()?;
                    Ok::<Applied, StoreError>(a)
                })
                .await
                .map_err(|e| WriteError::Refused(format!("write task failed: {e}")))?
                .map_err(WriteError::Store)?;
                match applied {
                    Applied::Refused(why) => Err(WriteError::Refused(why)),
                    a => Ok(a),
                }
            }
            Writer::Cluster(c) => c.write(cmd).await,
        }
    }

    /// [`Writer::write`] of a command that appends to the ledger: its entry.
    pub async fn write_ledger(&self, cmd: Command) -> Result<vpp_store::LedgerEntry, WriteError> {
        match self.write(cmd).await? {
            Applied::Ledger(e) => Ok(*e),
            other => Err(WriteError::Refused(format!(
                "expected a ledger entry, the store answered {other:?}"
            ))),
        }
    }

    /// The cluster, when there is one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Writer::Local(_) => None,
            Writer::Cluster(c) => Some(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{mesh_addr, Timing, TimingNames};
    use std::time::Duration;

    #[test]
    fn a_timing_is_a_cumulative_histogram_in_seconds() {
        let t = Timing::new();
        for us in [300, 3_000, 3_500, 30_000, 10_000_000] {
            t.record(Duration::from_micros(us));
        }
        let mut out = String::new();
        t.write_metrics(
            &TimingNames {
                count: "x_total",
                sum: "x_microseconds_total",
                max: "x_microseconds_max",
                histogram: "x_seconds",
                help: "test",
            },
            &mut out,
        );
        let value = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing:\n{out}"))
                .to_string()
        };
        assert_eq!(value("x_total"), "5");
        assert_eq!(value("x_microseconds_max"), "10000000");
        assert_eq!(value("x_seconds_bucket{le=\"0.0005\"}"), "1");
        assert_eq!(value("x_seconds_bucket{le=\"0.002\"}"), "1");
        assert_eq!(value("x_seconds_bucket{le=\"0.005\"}"), "3");
        assert_eq!(value("x_seconds_bucket{le=\"0.05\"}"), "4");
        assert_eq!(value("x_seconds_bucket{le=\"5\"}"), "4");
        assert_eq!(value("x_seconds_bucket{le=\"+Inf\"}"), "5");
        assert_eq!(value("x_seconds_count"), "5");
        assert_eq!(value("x_seconds_sum"), "10.0368");
        assert!(out.contains("# TYPE x_seconds histogram"), "{out}");
    }

    #[test]
    fn the_mesh_takes_the_next_port_and_says_when_there_is_none() {
        assert_eq!(
            mesh_addr("vpp-0.vpp-peers:7070").unwrap(),
            "vpp-0.vpp-peers:7071"
        );
        let e = mesh_addr("h:65535").unwrap_err();
        assert!(e.contains("65535") && e.contains("next port"), "{e}");
        assert!(mesh_addr("no-port").is_err());
    }
}
