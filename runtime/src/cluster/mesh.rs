//! Byte-message transport between cluster members, over `ractor_cluster`.
//!
//! Every member runs one `NodeServer` (raw TCP, cookie authentication,
//! isolated connection mode) and one *region* actor, which joins the process
//! group `vpp-region-{me}`. Once a session with a peer is authenticated the
//! peer advertises its groups, and its region shows up here as a remote member
//! of `vpp-region-{peer}`: that is what [`Mesh::cast`], [`Mesh::call`] and
//! [`Mesh::connected`] look up.
//!
//! A background task (the keeper) runs every 500 ms and
//! - dials each configured peer that has no authenticated session (DNS is
//!   resolved on every attempt; duplicate sessions in both directions are
//!   settled by `ractor_cluster`'s session election),
//! - stops sessions that do not authenticate within 3 s (a peer that accepts
//!   TCP but never speaks would otherwise leave them open forever),
//! - heartbeats every connected peer's region and stops the session of a peer
//!   that stays silent for 3 s (`ractor_cluster` has no ping timeout, so a
//!   frozen peer or half-open TCP connection is otherwise never noticed).
//!
//! The region never blocks: casts go straight to [`MeshHandler::cast`], calls
//! are answered from a spawned task.
//!
//! Messages and answers are limited to 16 MiB (`ractor_cluster` drops a
//! session that receives a larger frame, so bigger ones are refused before
//! sending). A message shares its session with the heartbeat: one that takes
//! longer than the heartbeat timeout to transfer would cost the session.
//!
//! Transport security: with `[cluster.tls]` the mesh port is our own
//! [`TlsListener`] (each handshake in its own task, with a time limit; the
//! node server's own listener would run them one at a time with none), which
//! hands finished streams to the node server; its own listener then binds an
//! unused loopback port. Peers are dialed with `client_connect_enc` (mutual
//! TLS, `tls.rs`). Without TLS: plain TCP on the node server's listener. The
//! cookie is checked either way.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    ClientConnectErr, IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
    NodeSessionMessage, RactorClusterMessage,
};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::tls::{handshake_failed, server_name, Tls, TlsListener};

/// Process group holding a member's region actor is this prefix + its name.
const REGION_GROUP_PREFIX: &str = "vpp-region-";
/// How often the keeper dials, expires and heartbeats.
const KEEPER_EVERY: Duration = Duration::from_millis(500);
/// Longest a TCP connect (DNS included) to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a session may stay unauthenticated; also the pause between two
/// dials of a peer whose TCP connect succeeded.
const AUTH_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a connected peer is heartbeaten.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A peer that does not answer a heartbeat within this loses its session.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra time the remote side of a call may spend past the caller's timeout.
const REPLY_SLACK: Duration = Duration::from_secs(1);
/// Largest message or answer, in bytes.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest inbound cluster frame: a message plus protocol overhead.
const MAX_FRAME: u64 = (MAX_MESSAGE as u64) + (64 << 10);
/// Longest `stop` waits for each actor.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// Id of the keeper's node-event subscription.
const SUBSCRIPTION_ID: &str = "vpp-mesh";

/// What a member does with messages from its peers.
pub trait MeshHandler: Send + Sync + 'static {
    /// A one-way message.
    fn cast(&self, bytes: Vec<u8>);
    /// A request; its answer goes back to the caller.
    fn call(&self, bytes: Vec<u8>) -> BoxFuture<'static, Vec<u8>>;
}

/// How a member joins the mesh.
#[derive(Clone)]
pub struct MeshConfig {
    /// This member's name, e.g. `vpp-0`.
    pub me: String,
    /// Where this member's node server listens.
    pub listen: SocketAddr,
    /// Other members: (name, `host:port` of their mesh listener); host may be a DNS name.
    pub peers: Vec<(String, String)>,
    /// Shared secret for `ractor_cluster`'s cookie authentication.
    pub cookie: String,
    /// A peer that answers no heartbeat for this long loses its session
    /// (it is dialled again). At least [`HEARTBEAT_TIMEOUT`].
    pub heartbeat_timeout: Duration,
    /// Mutual TLS, or `None` for plain TCP.
    pub tls: Option<Tls>,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("me", &self.me)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("cookie", &"<redacted>")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// This member's end of the mesh: a node server, a region actor and the keeper.
pub struct Mesh {
    me: String,
    peers: Vec<String>,
    node_server: ActorRef<NodeServerMessage>,
    region: ActorRef<RegionMsg>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    /// With TLS: the task handing accepted sessions to the node server.
    tls_accepter: Option<JoinHandle<()>>,
    stopped: AtomicBool,
    /// Sessions closed so far (messages in flight on them may be lost).
    closed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("me", &self.me)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Starts the region actor, the node server on `cfg.listen` and the keeper.
    pub async fn start(cfg: MeshConfig, handler: Arc<dyn MeshHandler>) -> Result<Mesh, String> {
        validate(&cfg)?;
        let region = Region {
            me: cfg.me.clone(),
            handler,
        };
        let (region, _) = Actor::spawn(None, region, ())
            .await
            .map_err(|e| format!("mesh region actor of {} failed to start: {e}", cfg.me))?;
        ractor::pg::join(region_group(&cfg.me), vec![region.get_cell()]);

        let node_server = match Actor::spawn(None, node_server(&cfg), ()).await {
            Ok((node_server, _)) => node_server,
            Err(e) => {
                region.stop(None);
                return Err(format!(
                    "mesh listener of {} on {} failed to start: {e}",
                    cfg.me, cfg.listen
                ));
            }
        };
        let tls_accepter = match &cfg.tls {
            None => None,
            Some(tls) => match tokio::net::TcpListener::bind(cfg.listen).await {
                Ok(listener) => Some(tokio::spawn(accept_tls(
                    TlsListener::new(listener, tls.acceptor(), "mesh"),
                    node_server.clone(),
                ))),
                Err(e) => {
                    region.stop(None);
                    node_server.stop(None);
                    return Err(format!(
                        "mesh listener of {} on {} failed to start: {e}",
                        cfg.me, cfg.listen
                    ));
                }
            },
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let subscribe = NodeServerMessage::SubscribeToEvents {
            id: SUBSCRIPTION_ID.to_string(),
            subscription: Box::new(SessionEvents(events_tx)),
        };
        if node_server.cast(subscribe).is_err() {
            region.stop(None);
            node_server.stop(None);
            return Err(format!(
                "mesh node server of {} stopped while starting",
                cfg.me
            ));
        }

        let closed = Arc::new(AtomicU64::new(0));
        let keeper = Keeper {
            closed: closed.clone(),
            node_server: node_server.clone(),
            peers: cfg.peers.clone(),
            tls: cfg.tls.clone(),
            events: events_rx,
            work: JoinSet::new(),
            dialed: HashMap::new(),
            beats: HashMap::new(),
            heartbeat_timeout: cfg.heartbeat_timeout.max(HEARTBEAT_TIMEOUT),
            unauthenticated: HashMap::new(),
            sessions: HashMap::new(),
        };
        Ok(Mesh {
            closed,
            me: cfg.me,
            peers: cfg.peers.into_iter().map(|(name, _)| name).collect(),
            node_server,
            region,
            keeper: Mutex::new(Some(tokio::spawn(keeper.run()))),
            tls_accepter,
            stopped: AtomicBool::new(false),
        })
    }

    /// Sends a one-way message to `member`.
    /// Err if the member is not connected (caller retries / treats as lost).
    pub fn cast(&self, member: &str, bytes: Vec<u8>) -> Result<(), String> {
        check_size(member, &bytes)?;
        let region = self.region_of(member)?;
        region
            .cast(RegionMsg::Cast(bytes))
            .map_err(|_| format!("member {member} is not connected"))
    }

    /// Sends a request to `member` and waits up to `timeout` for its answer.
    pub async fn call(
        &self,
        member: &str,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        check_size(member, &bytes)?;
        let region = self.region_of(member)?;
        match call_region(&region, |reply| RegionMsg::Call(bytes, reply), timeout).await {
            Reply::Answer(answer) => Ok(answer),
            Reply::Late => Err(format!(
                "member {member} did not answer within {timeout:?}"
            )),
            Reply::Dropped => Err(format!(
                "member {member} dropped the call without answering (connection lost or handler failed)"
            )),
            Reply::Unsent => Err(format!("member {member} is not connected")),
        }
    }

    /// Sessions closed so far: grows whenever messages in flight may have
    /// been lost (senders of repairable messages send them again).
    pub fn losses(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Peers whose region actor is currently reachable.
    pub fn connected(&self) -> Vec<String> {
        if self.stopped.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.peers
            .iter()
            .filter(|peer| remote_region(peer).is_some())
            .cloned()
            .collect()
    }

    /// Stops the keeper, the region actor and the node server (closing all sessions).
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(a) = &self.tls_accepter {
            a.abort();
        }
        let keeper = self
            .keeper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(keeper) = keeper {
            keeper.abort();
            let _ = keeper.await;
        }
        let reason = Some("mesh stopped".to_string());
        let _ = self
            .region
            .stop_and_wait(reason.clone(), Some(STOP_WAIT))
            .await;
        // The listener and sessions are the node server's children; they are
        // killed after it stops, and the port is free once they are gone.
        let children = self.node_server.get_children();
        let _ = self
            .node_server
            .stop_and_wait(reason, Some(STOP_WAIT))
            .await;
        for child in children {
            let _ = child.wait(Some(STOP_WAIT)).await;
        }
    }

    /// `member`'s region, if it is a connected peer.
    fn region_of(&self, member: &str) -> Result<ActorRef<RegionMsg>, String> {
        if member == self.me {
            return Err(format!(
                "member {member} is this member; the mesh only reaches peers"
            ));
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err(format!(
                "member {member} is not connected: the mesh of {} is stopped",
                self.me
            ));
        }
        remote_region(member).ok_or_else(|| format!("member {member} is not connected"))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let keeper = self
            .keeper
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(keeper) = keeper {
            keeper.abort();
        }
        self.region.stop(None);
        self.node_server.stop(None);
    }
}

/// Rejects a configuration the mesh cannot run with.
fn validate(cfg: &MeshConfig) -> Result<(), String> {
    if cfg.me.is_empty() {
        return Err("mesh member name is empty".to_string());
    }
    if cfg.cookie.is_empty() {
        return Err(format!("mesh cookie of {} is empty", cfg.me));
    }
    let mut seen = HashSet::new();
    for (name, addr) in &cfg.peers {
        if name.is_empty() {
            return Err(format!("a mesh peer of {} has an empty name", cfg.me));
        }
        if *name == cfg.me {
            return Err(format!("mesh peer {name} has this member's own name"));
        }
        if !seen.insert(name.as_str()) {
            return Err(format!("mesh peer {name} is listed twice"));
        }
        if addr.trim().is_empty() {
            return Err(format!("mesh peer {name} has an empty address"));
        }
    }
    Ok(())
}

/// Refuses a message the receiving end would reject (it would drop the session).
fn check_size(member: &str, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!(
            "message of {} bytes to member {member} exceeds the mesh limit of {MAX_MESSAGE} bytes",
            bytes.len()
        ));
    }
    Ok(())
}

/// Name of the process group holding `member`'s region actor.
fn region_group(member: &str) -> String {
    format!("{REGION_GROUP_PREFIX}{member}")
}

/// Full node name `ractor_cluster` reports for `member` (`name@host`, and the
/// mesh uses the member name as host too).
fn node_name(member: &str) -> String {
    format!("{member}@{member}")
}

/// The node server for `cfg`. The member name doubles as `ractor_cluster`'s
/// hostname: two pods listening on the same `0.0.0.0:port` would otherwise
/// share a connection string and reject each other as "self".
fn node_server(cfg: &MeshConfig) -> NodeServer {
    // With TLS, [`accept_tls`] serves the mesh port; the node server's own
    // listener takes a loopback port nobody is told about.
    let (port, ip) = match &cfg.tls {
        Some(_) => (0, std::net::IpAddr::from([127, 0, 0, 1])),
        None => (cfg.listen.port(), cfg.listen.ip()),
    };
    NodeServer::new(
        port,
        cfg.cookie.clone(),
        cfg.me.clone(),
        cfg.me.clone(),
        Some(IncomingEncryptionMode::Raw),
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(ip)
    .with_max_inbound_frame_size(MAX_FRAME)
}

/// Hands every session [`TlsListener`] accepted (handshake done) to the node
/// server, as its own listener would.
async fn accept_tls(mut listener: TlsListener, node_server: ActorRef<NodeServerMessage>) {
    use axum::serve::Listener;
    loop {
        let (stream, peer_addr) = listener.accept().await;
        let local_addr = match stream.get_ref().0.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let opened = NodeServerMessage::ConnectionOpened {
            stream: Box::new(ractor_cluster::NetworkStream::TlsServer {
                peer_addr,
                local_addr,
                stream,
            }),
            is_server: true,
        };
        if node_server.cast(opened).is_err() {
            return;
        }
    }
}

/// Opens a TCP connection to `addr` (resolving it now), runs the TLS
/// handshake when `tls` is set, and hands it to the node server.
async fn dial(
    node_server: &ActorRef<NodeServerMessage>,
    addr: &str,
    tls: Option<&Tls>,
) -> Result<(), String> {
    let connect = async {
        match tls {
            Some(tls) => {
                let name = server_name(addr)?;
                match ractor_cluster::client_connect_enc(node_server, addr, tls.connector(), name)
                    .await
                {
                    Err(ClientConnectErr::Encryption(e)) => {
                        let why = e.to_string();
                        handshake_failed("mesh", addr, &why);
                        Err(format!("TLS handshake failed: {why}"))
                    }
                    other => other.map_err(|e| e.to_string()),
                }
            }
            None => ractor_cluster::client_connect(node_server, addr)
                .await
                .map_err(|e| e.to_string()),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    }
}

/// The reachable region of `member`: a remote member of its group, the one on
/// the newest session if there are several.
fn remote_region(member: &str) -> Option<ActorRef<RegionMsg>> {
    ractor::pg::get_members(&region_group(member))
        .into_iter()
        .filter(|cell| !cell.get_id().is_local() && cell.get_status() < ActorStatus::Stopping)
        .max_by_key(|cell| cell.get_id().node())
        .map(ActorRef::from)
}

/// How a call to a region ended.
enum Reply<T> {
    /// The region answered.
    Answer(T),
    /// No answer within the timeout.
    Late,
    /// The reply port was dropped unanswered (session lost, handler failed).
    Dropped,
    /// The request could not be sent (the region is gone).
    Unsent,
}

/// Calls `region`, waiting up to `timeout`.
///
/// The timeout is enforced here. `ractor` gets a slightly longer one to bound
/// the remote side: its serialized reply port runs its own timer, which,
/// racing ours, would report a late answer as a dropped one.
async fn call_region<T: Send + 'static>(
    region: &ActorRef<RegionMsg>,
    request: impl FnOnce(RpcReplyPort<T>) -> RegionMsg,
    timeout: Duration,
) -> Reply<T> {
    let bound = timeout.checked_add(REPLY_SLACK).unwrap_or(timeout);
    match tokio::time::timeout(timeout, region.call(request, Some(bound))).await {
        Err(_) | Ok(Ok(CallResult::Timeout)) => Reply::Late,
        Ok(Ok(CallResult::Success(answer))) => Reply::Answer(answer),
        Ok(Ok(CallResult::SenderError)) => Reply::Dropped,
        Ok(Err(_)) => Reply::Unsent,
    }
}

/// Messages a region accepts, local or from peers.
#[derive(RactorClusterMessage)]
enum RegionMsg {
    /// A one-way message for the handler.
    Cast(Vec<u8>),
    /// A request for the handler, answered on the port.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A keeper's heartbeat, answered at once.
    #[rpc]
    Ping(RpcReplyPort<()>),
}

/// The actor peers address: hands their messages to the handler.
struct Region {
    me: String,
    handler: Arc<dyn MeshHandler>,
}

impl Actor for Region {
    type Msg = RegionMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<RegionMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<RegionMsg>,
        message: RegionMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RegionMsg::Cast(bytes) => {
                if catch_unwind(AssertUnwindSafe(|| self.handler.cast(bytes))).is_err() {
                    tracing::error!("mesh handler of {} panicked on a cast", self.me);
                }
            }
            RegionMsg::Call(bytes, reply) => {
                let Ok(answer) = catch_unwind(AssertUnwindSafe(|| self.handler.call(bytes))) else {
                    tracing::error!("mesh handler of {} panicked on a call", self.me);
                    return Ok(());
                };
                let me = self.me.clone();
                let limit = reply.get_timeout();
                tokio::spawn(async move {
                    // Nobody waits longer than the caller's timeout (plus slack).
                    let answer = match limit {
                        None => answer.await,
                        Some(limit) => match tokio::time::timeout(limit, answer).await {
                            Ok(answer) => answer,
                            Err(_) => {
                                tracing::debug!(
                                    "mesh handler of {me} did not answer a call within {limit:?}"
                                );
                                return;
                            }
                        },
                    };
                    if answer.len() > MAX_MESSAGE {
                        tracing::error!(
                            "mesh handler of {me} answered {} bytes, over the mesh limit of {MAX_MESSAGE}; answer dropped",
                            answer.len()
                        );
                        return;
                    }
                    // The caller may have timed out already.
                    let _ = reply.send(answer);
                });
            }
            RegionMsg::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

/// Node-server session events, as the keeper sees them.
enum SessionEvent {
    /// A session (inbound or outbound) was opened, not yet authenticated.
    Opened(NodeServerSessionInformation),
    /// A session authenticated and won the election for its peer.
    Authenticated(ActorId),
    /// A session ended.
    Closed(NodeServerSessionInformation),
}

/// Forwards node-server session events to the keeper.
struct SessionEvents(mpsc::UnboundedSender<SessionEvent>);

impl NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Opened(ses));
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Closed(ses));
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Authenticated(ses.actor.get_id()));
    }
}

/// Outcome of a heartbeat.
enum Beat {
    /// The peer answered.
    Answered,
    /// The peer's session went away during the heartbeat.
    Lost,
    /// The peer did not answer in time.
    Silent,
}

/// A finished piece of keeper work.
enum Finished {
    /// A dial of `peer` at `addr` ended.
    Dialed {
        peer: String,
        addr: String,
        result: Result<(), String>,
    },
    /// A heartbeat to `peer` over session `node_id` ended.
    Beat {
        peer: String,
        node_id: u64,
        beat: Beat,
    },
}

/// Heartbeat bookkeeping for one peer.
#[derive(Default)]
struct Heartbeat {
    /// When the last heartbeat was sent.
    sent: Option<Instant>,
    /// A heartbeat is awaiting its answer.
    in_flight: bool,
}

/// Keeps sessions to all peers open and healthy.
struct Keeper {
    /// `Mesh::closed`.
    closed: Arc<AtomicU64>,
    node_server: ActorRef<NodeServerMessage>,
    peers: Vec<(String, String)>,
    /// `MeshConfig::tls`.
    tls: Option<Tls>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    work: JoinSet<Finished>,
    /// Peers dialed recently, and when.
    dialed: HashMap<String, Instant>,
    beats: HashMap<String, Heartbeat>,
    /// `MeshConfig::heartbeat_timeout`.
    heartbeat_timeout: Duration,
    /// Sessions not authenticated yet, and when they opened.
    unauthenticated: HashMap<ActorId, (ActorRef<NodeSessionMessage>, Instant)>,
    /// Open sessions by node id (the node id of their remote actors).
    sessions: HashMap<u64, ActorRef<NodeSessionMessage>>,
}

impl Keeper {
    /// Runs until the node server stops (or the task is aborted).
    async fn run(mut self) {
        let mut tick = tokio::time::interval(KEEPER_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !self.round().await {
                        return;
                    }
                }
                Some(event) = self.events.recv() => self.on_event(event),
                Some(done) = self.work.join_next() => {
                    if let Ok(done) = done {
                        self.on_finished(done);
                    }
                }
            }
        }
    }

    /// One round: expire, dial, heartbeat. False once the node server is gone.
    async fn round(&mut self) -> bool {
        let sessions = match self
            .node_server
            .call(NodeServerMessage::GetSessions, Some(KEEPER_EVERY))
            .await
        {
            Ok(CallResult::Success(sessions)) => sessions,
            _ if self.node_server.get_status() >= ActorStatus::Stopping => {
                tracing::debug!("mesh node server stopped; keeper exits");
                return false;
            }
            _ => {
                tracing::debug!("mesh node server did not list its sessions");
                return true;
            }
        };
        let linked: HashSet<String> = sessions
            .into_values()
            .filter_map(|ses| ses.peer_name.map(|name| name.name))
            .collect();
        let now = Instant::now();

        self.unauthenticated.retain(|_, (session, opened)| {
            if now.duration_since(*opened) < AUTH_TIMEOUT {
                return true;
            }
            tracing::debug!(
                "mesh session did not authenticate within {AUTH_TIMEOUT:?}; closing it"
            );
            session.stop(Some("mesh: not authenticated in time".to_string()));
            false
        });

        for (peer, addr) in &self.peers {
            if linked.contains(&node_name(peer)) {
                self.dialed.remove(peer);
                continue;
            }
            if self
                .dialed
                .get(peer)
                .is_some_and(|at| now.duration_since(*at) < AUTH_TIMEOUT)
            {
                continue;
            }
            self.dialed.insert(peer.clone(), now);
            let node_server = self.node_server.clone();
            let (peer, addr, tls) = (peer.clone(), addr.clone(), self.tls.clone());
            self.work.spawn(async move {
                let result = dial(&node_server, &addr, tls.as_ref()).await;
                Finished::Dialed { peer, addr, result }
            });
        }

        for (peer, _) in &self.peers {
            let Some(region) = remote_region(peer) else {
                self.beats.remove(peer);
                continue;
            };
            let beat = self.beats.entry(peer.clone()).or_default();
            if beat.in_flight
                || beat
                    .sent
                    .is_some_and(|at| now.duration_since(at) < HEARTBEAT_EVERY)
            {
                continue;
            }
            beat.in_flight = true;
            beat.sent = Some(now);
            let peer = peer.clone();
            let timeout = self.heartbeat_timeout;
            self.work.spawn(async move {
                let node_id = region.get_id().node();
                let beat = match call_region(&region, RegionMsg::Ping, timeout).await {
                    Reply::Answer(()) => Beat::Answered,
                    Reply::Late => Beat::Silent,
                    Reply::Dropped | Reply::Unsent => Beat::Lost,
                };
                Finished::Beat {
                    peer,
                    node_id,
                    beat,
                }
            });
        }
        true
    }

    /// Tracks sessions opening, authenticating and closing.
    fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Opened(ses) => {
                self.unauthenticated
                    .insert(ses.actor.get_id(), (ses.actor.clone(), Instant::now()));
                self.sessions.insert(ses.node_id, ses.actor);
            }
            SessionEvent::Authenticated(id) => {
                self.unauthenticated.remove(&id);
            }
            SessionEvent::Closed(ses) => {
                self.closed.fetch_add(1, Ordering::Relaxed);
                self.unauthenticated.remove(&ses.actor.get_id());
                self.sessions.remove(&ses.node_id);
                if let Some(name) = ses.peer_name {
                    tracing::debug!("mesh session with {} ({}) closed", name.name, ses.peer_addr);
                }
            }
        }
    }

    /// Acts on a finished dial or heartbeat.
    fn on_finished(&mut self, done: Finished) {
        match done {
            Finished::Dialed { peer, addr, result } => {
                if let Err(e) = result {
                    tracing::debug!("mesh could not reach peer {peer} at {addr}: {e}");
                    // Refused or unresolvable: try again next round.
                    self.dialed.remove(&peer);
                }
            }
            Finished::Beat {
                peer,
                node_id,
                beat,
            } => {
                if let Some(heartbeat) = self.beats.get_mut(&peer) {
                    heartbeat.in_flight = false;
                }
                if let Beat::Silent = beat {
                    if let Some(session) = self.sessions.get(&node_id) {
                        tracing::warn!(
                            "mesh peer {peer} did not answer a heartbeat within {:?}; dropping its session", self.heartbeat_timeout
                        );
                        session.stop(Some("mesh: heartbeat timeout".to_string()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers calls with the request reversed; counts nothing.
    struct Echo;

    impl MeshHandler for Echo {
        fn cast(&self, _bytes: Vec<u8>) {}

        fn call(&self, mut bytes: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
            bytes.reverse();
            Box::pin(async move { bytes })
        }
    }

    fn config(me: &str, listen: SocketAddr) -> MeshConfig {
        MeshConfig {
            me: me.to_string(),
            listen,
            peers: vec![("unit-peer".to_string(), "127.0.0.1:9".to_string())],
            cookie: "cookie".to_string(),
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
            tls: None,
        }
    }

    fn free_addr() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr")
    }

    async fn start_err(cfg: MeshConfig) -> String {
        match Mesh::start(cfg, Arc::new(Echo)).await {
            Ok(mesh) => {
                mesh.stop().await;
                panic!("mesh started with a bad configuration")
            }
            Err(e) => e,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_configurations_are_refused() {
        let addr = free_addr();
        let mut cfg = config("", addr);
        assert_eq!(start_err(cfg).await, "mesh member name is empty");
        cfg = config("unit-bad", addr);
        cfg.cookie.clear();
        assert_eq!(start_err(cfg).await, "mesh cookie of unit-bad is empty");
        cfg = config("unit-bad", addr);
        cfg.peers
            .push(("unit-bad".to_string(), "127.0.0.1:1".to_string()));
        assert_eq!(
            start_err(cfg).await,
            "mesh peer unit-bad has this member's own name"
        );
        cfg = config("unit-bad", addr);
        cfg.peers
            .push(("unit-peer".to_string(), "127.0.0.1:1".to_string()));
        assert_eq!(start_err(cfg).await, "mesh peer unit-peer is listed twice");
        cfg = config("unit-bad", addr);
        cfg.peers[0].1 = " ".to_string();
        assert_eq!(
            start_err(cfg).await,
            "mesh peer unit-peer has an empty address"
        );
        cfg = config("unit-bad", addr);
        cfg.peers[0].0.clear();
        assert_eq!(
            start_err(cfg).await,
            "a mesh peer of unit-bad has an empty name"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_port_fails_start() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("local addr");
        let e = start_err(config("unit-taken", addr)).await;
        assert!(
            e.starts_with(&format!(
                "mesh listener of unit-taken on {addr} failed to start"
            )),
            "{e}"
        );
        assert!(ractor::pg::get_members(&region_group("unit-taken")).len() <= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_members_fail_at_once_and_stop_frees_the_port() {
        let addr = free_addr();
        let mesh = Mesh::start(config("unit-alone", addr), Arc::new(Echo))
            .await
            .expect("mesh starts");
        let started = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(
            mesh.call("unit-peer", b"x".to_vec(), second).await,
            Err("member unit-peer is not connected".to_string())
        );
        assert_eq!(
            mesh.cast("unit-nobody", b"x".to_vec()),
            Err("member unit-nobody is not connected".to_string())
        );
        assert_eq!(
            mesh.call("unit-alone", b"x".to_vec(), second).await,
            Err("member unit-alone is this member; the mesh only reaches peers".to_string())
        );
        assert_eq!(
            mesh.cast("unit-peer", vec![0; MAX_MESSAGE + 1]),
            Err(format!(
                "message of {} bytes to member unit-peer exceeds the mesh limit of {MAX_MESSAGE} bytes",
                MAX_MESSAGE + 1
            ))
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(mesh.connected().is_empty());

        mesh.stop().await;
        mesh.stop().await;
        std::net::TcpListener::bind(addr).expect("the port is free after stop");
        assert_eq!(
            mesh.call("unit-peer", b"x".to_vec(), second).await,
            Err("member unit-peer is not connected: the mesh of unit-alone is stopped".to_string())
        );
        assert!(ractor::pg::get_members(&region_group("unit-alone")).is_empty());
    }

    #[test]
    fn the_cookie_is_not_printed() {
        let printed = format!("{:?}", config("unit-debug", free_addr()));
        assert!(!printed.contains("\"cookie\""), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
