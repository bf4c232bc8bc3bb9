//! Cluster RPC: Raft's messages and forwarded writes between members, over
//! HTTP on the cluster port, bodies in postcard, every request carrying the
//! shared cookie.
//!
//! | route                          | body → answer                                   |
//! |--------------------------------|-------------------------------------------------|
//! | `POST /cluster/v1/raft/append` | AppendEntriesRequest → Result<AppendEntriesResponse, RaftError> |
//! | `POST /cluster/v1/raft/vote`   | VoteRequest → Result<VoteResponse, RaftError>   |
//! | `POST /cluster/v1/write`       | Command → Result<(log index, Applied), String>  |
//! | `POST /cluster/v1/elect`       | () → Result<(), String>: stand for election now (a draining leader hands over) |
//!
//! A request without the right cookie gets 401 and nothing else. The cookie
//! is compared in constant time. With `[cluster.tls]` the port speaks only
//! mutual TLS (`tls.rs`) and requests go out as `https://`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use vpp_store::{Applied, Command};

use super::tls::{Tls, TlsListener};
use super::{Raft, TypeConfig};

pub(super) const COOKIE_HEADER: &str = "x-vpp-cookie";
/// Largest RPC body (a whole hierarchy travels in one log entry).
const MAX_BODY: usize = 1 << 30;

/// Sends Raft RPCs and forwarded writes to other members.
#[derive(Clone)]
pub(super) struct Client {
    agent: ureq::Agent,
    cookie: String,
    /// `http` or, with TLS, `https`.
    scheme: &'static str,
}

impl Client {
    pub(super) fn new(cookie: String, tls: Option<&Tls>) -> Self {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)));
        if let Some(tls) = tls {
            config = config.tls_config(tls.ureq());
        }
        let agent: ureq::Agent = config.build().into();
        let scheme = if tls.is_some() { "https" } else { "http" };
        Self {
            agent,
            cookie,
            scheme,
        }
    }

    /// POSTs `body` to `http://{addr}{path}` and decodes the answer.
    async fn call<Q: Serialize, A: DeserializeOwned + Send + 'static>(
        &self,
        addr: &str,
        path: &str,
        body: &Q,
        ttl: Duration,
    ) -> Result<A, String> {
        let bytes = postcard::to_stdvec(body).map_err(|e| format!("encoding: {e}"))?;
        let url = format!("{}://{addr}{path}", self.scheme);
        let agent = self.agent.clone();
        let cookie = self.cookie.clone();
        tokio::task::spawn_blocking(move || {
            let mut resp = agent
                .post(&url)
                .config()
                .timeout_global(Some(ttl))
                .build()
                .header(COOKIE_HEADER, &cookie)
                .content_type("application/octet-stream")
                .send(&bytes[..])
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_BODY as u64)
                .read_to_vec()
                .map_err(|e| format!("{url}: reading the answer: {e}"))?;
            if !status.is_success() {
                return Err(format!(
                    "{url}: {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            postcard::from_bytes(&body).map_err(|e| format!("{url}: decoding the answer: {e}"))
        })
        .await
        .map_err(|e| format!("rpc task: {e}"))?
    }

    /// Asks the member at `addr` to stand for election now.
    pub(super) async fn elect(&self, addr: &str) -> Result<(), String> {
        let r: Result<(), String> = self
            .call(addr, "/cluster/v1/elect", &(), Duration::from_secs(5))
            .await?;
        r
    }

    /// Asks the leader at `addr` to replicate `cmd`.
    pub(super) async fn forward(
        &self,
        addr: &str,
        cmd: &Command,
    ) -> Result<(u64, Applied), String> {
        let r: Result<(u64, Applied), String> = self
            .call(addr, "/cluster/v1/write", cmd, Duration::from_secs(30))
            .await?;
        r
    }
}

impl RaftNetworkFactory<TypeConfig> for Client {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            client: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The connection to one member.
pub(super) struct Peer {
    client: Client,
    target: u64,
    addr: String,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl Peer {
    async fn rpc<Q: Serialize, A: DeserializeOwned + Send + 'static, E>(
        &self,
        path: &str,
        req: &Q,
        option: &RPCOption,
    ) -> Result<A, RpcErr<E>>
    where
        E: std::error::Error + DeserializeOwned + Send + 'static,
        Result<A, RaftError<u64, E>>: DeserializeOwned,
    {
        let r: Result<A, RaftError<u64, E>> = self
            .client
            .call(&self.addr, path, req, option.hard_ttl())
            .await
            .map_err(|e| {
                RPCError::Unreachable(Unreachable::new(&NetworkError::new(&AnyError::error(e))))
            })?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        self.rpc("/cluster/v1/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
            "snapshots are not supported yet: the log is kept whole",
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.rpc("/cluster/v1/raft/vote", &rpc, &option).await
    }
}

#[derive(Clone)]
struct Srv {
    raft: Raft,
    cookie: String,
    /// The node's API router, for requests followers forward (`proxy.rs`).
    api: Arc<OnceLock<Router>>,
}

/// Serves the cluster RPC routes until the task is aborted.
pub(super) async fn serve(
    listener: TcpListener,
    raft: Raft,
    cookie: String,
    api: Arc<OnceLock<Router>>,
    tls: Option<Tls>,
) {
    let app = Router::new()
        .route("/cluster/v1/raft/append", post(append))
        .route("/cluster/v1/raft/vote", post(vote))
        .route("/cluster/v1/write", post(write))
        .route("/cluster/v1/elect", post(elect))
        .route("/cluster/v1/api/{*rest}", any(forwarded_api))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Srv { raft, cookie, api });
    let served = match tls {
        Some(tls) => axum::serve(TlsListener::new(listener, tls.acceptor(), "cluster"), app).await,
        None => axum::serve(listener, app).await,
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "cluster listener stopped");
    }
}

/// Constant-time comparison of the presented cookie.
fn authorised(s: &Srv, headers: &HeaderMap) -> bool {
    let Some(got) = headers.get(COOKIE_HEADER).map(|v| v.as_bytes()) else {
        return false;
    };
    let want = s.cookie.as_bytes();
    got.len() == want.len() && got.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

fn reply<T: Serialize>(v: &T) -> Response {
    match postcard::to_stdvec(v) {
        Ok(b) => (StatusCode::OK, b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding: {e}")).into_response(),
    }
}

fn bad(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("undecodable body: {e}")).into_response()
}

fn denied() -> Response {
    (StatusCode::UNAUTHORIZED, "wrong or missing cluster cookie").into_response()
}

async fn append(State(s): State<Srv>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&s, &headers) {
        return denied();
    }
    match postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(req) => reply(&s.raft.append_entries(req).await),
        Err(e) => bad(e),
    }
}

async fn vote(State(s): State<Srv>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&s, &headers) {
        return denied();
    }
    match postcard::from_bytes::<VoteRequest<u64>>(&body) {
        Ok(req) => reply(&s.raft.vote(req).await),
        Err(e) => bad(e),
    }
}

async fn write(State(s): State<Srv>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&s, &headers) {
        return denied();
    }
    let cmd = match postcard::from_bytes::<Command>(&body) {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    let r: Result<(u64, Applied), String> = s
        .raft
        .client_write(cmd)
        .await
        .map(|resp| (resp.log_id.index, resp.data))
        .map_err(|e| e.to_string());
    reply(&r)
}

async fn forwarded_api(State(s): State<Srv>, req: axum::extract::Request) -> Response {
    if !authorised(&s, req.headers()) {
        return denied();
    }
    match s.api.get() {
        Some(api) => super::proxy::serve_forwarded(api.clone(), req).await,
        None => (StatusCode::SERVICE_UNAVAILABLE, "the API is not up yet").into_response(),
    }
}

async fn elect(State(s): State<Srv>, headers: HeaderMap) -> Response {
    if !authorised(&s, &headers) {
        return denied();
    }
    let r: Result<(), String> = s.raft.trigger().elect().await.map_err(|e| e.to_string());
    reply(&r)
}
