//! The HTTP API under `/api/v1`, plus `/metrics`.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/health` | liveness and a summary |
//! | `GET /api/v1/health/live` · `GET /api/v1/health/ready` | probes: the process answers · it can serve (cluster: a leader is known and its shards are loaded) |
//! | `GET /api/v1/cluster` | members, roles, log positions and lag (operator) |
//! | `GET /api/v1/hierarchy` | the stored hierarchy (JSON; `?format=toml` for the file format) |
//! | `PUT /api/v1/hierarchy` | replace it (TOML body, as `vpp hierarchy import`) |
//! | `POST /api/v1/hierarchy/nodes` | add nodes (TOML fragment: `[[virtual_der]]`, `[[site]]`) |
//! | `DELETE /api/v1/hierarchy/nodes/{id}` | remove a node and its subtree |
//! | `GET /api/v1/nodes/{id}` | a node's spec, capacity and children |
//! | `GET /api/v1/nodes/{id}/capacity` | what it can do now (`?fresh=true` pulls every DER) |
//! | `PUT /api/v1/nodes/{id}/state` | set a DER's state (JSON, kW) |
//! | `POST /api/v1/dispatches` | create an order (JSON, kW) → 202 |
//! | `GET /api/v1/dispatches` | newest orders (`?limit=N`) |
//! | `GET /api/v1/dispatches/{id}` | an order and its allocation tree (`?depth=N`) |
//! | `POST /api/v1/dispatches/{id}/cancel` | cancel it |
//! | `POST /api/v1/meter` | import interval meter data (CSV body: `site,start,kw`), all or nothing |
//! | `GET /api/v1/meter/{site}` | a site's readings, kW per interval (`?from_ms=&to_ms=`, default the last 24 h) |
//! | `GET /metrics` | Prometheus text |
//! | `POST /api/v1/accounts` · `GET` | create (operator) · list accounts |
//! | `GET /api/v1/accounts/me` | who the token belongs to |
//! | `POST /api/v1/accounts/{id}/verify` | verify a utility (operator) |
//! | `POST /api/v1/accounts/{id}/tokens` | issue a token (`{"ttl_s"}` optional) |
//! | `POST /api/v1/tokens/{id}/revoke` | revoke a token |
//! | `POST /api/v1/programs` · `GET ?zone&lat&lon&capacity_kw&segment&kind&resource` | publish (verified utility) · discover |
//! | `GET /api/v1/programs/{id}` | one program |
//! | `PUT /api/v1/programs/{id}/terms` · `POST …/terms/approve` | propose · approve new terms (quorum) |
//! | `POST /api/v1/enrollments` · `GET` · `GET /{id}` · `POST /{id}/cancel` | enroll a resource, list, one, leave |
//! | `POST /api/v1/events` · `GET` · `GET /{id}` | call an event, list, one |
//! | `POST /api/v1/events/{id}/notify` · `/approve` · `/cancel` | send a draft · approve an emergency (quorum) · call off |
//! | `POST /api/v1/events/{id}/confirmations` | confirm / decline / opt out (participant) |
//! | `GET /api/v1/events/{id}/performance` | M&V: baseline, actual, delivered per interval |
//! | `POST /api/v1/events/{id}/settlement` · `/settlement/approve` | statements · approval (quorum) |
//! | `GET /api/v1/settlements?event&account` | statement history |
//! | `GET /api/v1/participants/{id}/metrics` | performance history |
//! | `GET /api/v1/notices` · `GET /api/v1/notices/stream` | the caller's event notices · live (SSE) |
//! | `GET /api/v1/audit?from_seq&limit` · `GET /api/v1/audit/verify` | ledger entries · chain check (operator) |
//!
//! Every route but health and metrics needs `Authorization: Bearer <token>`;
//! the fleet routes (hierarchy, nodes, dispatches) take operators and
//! aggregators, the others check their own rules (`crate::programs`).
//!
//! Every error is `{"error": {"status", "code", "message", "problems"?}}` with
//! a proper status; every rejected input is counted by route and reason. Errors
//! that axum itself produces before a handler runs (body over the limit, wrong
//! method, undecodable path) go through [`json_errors`], so they look and count
//! the same.

mod auth;
mod dispatches;
mod error;
mod hierarchy;
pub(crate) mod meter;
mod nodes;
mod programs;
mod system;
mod views;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tokio::net::TcpListener;

pub use error::AppError;

use crate::node::Node;

/// Shared state of the handlers.
pub(crate) type AppState = Arc<Node>;

/// Parses a JSON body; the error names the field that is wrong
/// (`direction: unknown variant ...`), counted under `route`.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    node: &Node,
    route: &'static str,
    what: &str,
    body: &[u8],
) -> Result<T, AppError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        node.rejections.count(route, "bad_json");
        let path = e.path().to_string();
        if path == "." {
            AppError::bad_request(format!("{what}: {}", e.inner()))
        } else {
            AppError::bad_request(format!("{what}: {path}: {}", e.inner()))
        }
    })
}

/// A query string, or a 400 counted under `route` as `bad_query`.
pub(crate) fn query<T>(
    node: &Node,
    route: &'static str,
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, AppError> {
    q.map(|axum::extract::Query(q)| q).map_err(|e| {
        node.rejections.count(route, "bad_query");
        AppError::bad_request(e.body_text())
    })
}

/// The router over a node.
pub fn router(node: Arc<Node>) -> Router {
    let limit = (node.config().api.max_body_mb * 1024 * 1024) as usize;
    // Fleet routes: a signed-in operator or aggregator (api/auth.rs).
    let fleet = Router::new()
        .route(
            "/api/v1/hierarchy",
            get(hierarchy::get_hierarchy).put(hierarchy::put_hierarchy),
        )
        .route("/api/v1/hierarchy/nodes", post(hierarchy::add_nodes))
        .route(
            "/api/v1/hierarchy/nodes/{id}",
            delete(hierarchy::remove_node),
        )
        .route("/api/v1/nodes/{id}", get(nodes::get_node))
        .route("/api/v1/nodes/{id}/capacity", get(nodes::capacity))
        .route(
            "/api/v1/nodes/{id}/state",
            axum::routing::put(nodes::put_state),
        )
        .route(
            "/api/v1/dispatches",
            post(dispatches::create).get(dispatches::list),
        )
        .route("/api/v1/dispatches/{id}", get(dispatches::get_one))
        .route("/api/v1/dispatches/{id}/cancel", post(dispatches::cancel))
        .route("/api/v1/meter", post(meter::import))
        .route("/api/v1/meter/{site}", get(meter::series))
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            auth::fleet_gate,
        ));
    // The demand-flexibility journey: each action authorises its caller.
    let programs = Router::new()
        .route(
            "/api/v1/accounts",
            post(programs::create_account).get(programs::list_accounts),
        )
        .route("/api/v1/accounts/me", get(programs::me))
        .route(
            "/api/v1/accounts/{id}/verify",
            post(programs::verify_account),
        )
        .route("/api/v1/accounts/{id}/tokens", post(programs::issue_token))
        .route("/api/v1/tokens/{id}/revoke", post(programs::revoke_token))
        .route(
            "/api/v1/programs",
            post(programs::create_program).get(programs::search_programs),
        )
        .route("/api/v1/programs/{id}", get(programs::get_program))
        .route(
            "/api/v1/programs/{id}/terms",
            axum::routing::put(programs::propose_terms),
        )
        .route(
            "/api/v1/programs/{id}/terms/approve",
            post(programs::approve_terms),
        )
        .route(
            "/api/v1/enrollments",
            post(programs::enroll).get(programs::list_enrollments),
        )
        .route("/api/v1/enrollments/{id}", get(programs::get_enrollment))
        .route(
            "/api/v1/enrollments/{id}/cancel",
            post(programs::cancel_enrollment),
        )
        .route(
            "/api/v1/events",
            post(programs::create_event).get(programs::list_events),
        )
        .route("/api/v1/events/{id}", get(programs::get_event))
        .route("/api/v1/events/{id}/notify", post(programs::notify_event))
        .route("/api/v1/events/{id}/approve", post(programs::approve_event))
        .route("/api/v1/events/{id}/cancel", post(programs::cancel_event))
        .route("/api/v1/events/{id}/confirmations", post(programs::confirm))
        .route(
            "/api/v1/events/{id}/performance",
            get(programs::performance),
        )
        .route(
            "/api/v1/events/{id}/settlement",
            post(programs::settle_event),
        )
        .route(
            "/api/v1/events/{id}/settlement/approve",
            post(programs::approve_settlement),
        )
        .route("/api/v1/settlements", get(programs::list_settlements))
        .route(
            "/api/v1/participants/{id}/metrics",
            get(programs::participant_metrics),
        )
        .route("/api/v1/audit", get(programs::audit_entries))
        .route("/api/v1/audit/verify", get(programs::audit_verify))
        .route("/api/v1/notices", get(programs::notices))
        .route("/api/v1/notices/stream", get(programs::notice_stream));
    Router::new()
        .route("/api/v1/cluster", get(system::cluster))
        .merge(fleet)
        .merge(programs)
        // Every route above is a span (`otel.rs`); the probes and the
        // scrape below are not (they would drown the rest).
        .route_layer(middleware::from_fn(trace_request))
        .route("/api/v1/health", get(system::health))
        .route("/api/v1/health/live", get(system::live))
        .route("/api/v1/health/ready", get(system::ready))
        .route("/metrics", get(system::metrics))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(node.clone(), json_errors))
        .layer(middleware::from_fn_with_state(node.clone(), to_leader))
        .with_state(node)
}

/// In a cluster, a follower hands every request but the probes, the cluster
/// view and `/metrics` to the leader (`cluster/proxy.rs`), so that every
/// member gives the same answers and one member runs the orders.
async fn to_leader(State(node): State<AppState>, req: Request, next: Next) -> Response {
    let Some(c) = node.writes().cluster() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let local = path.starts_with("/api/v1/health")
        || path == "/api/v1/cluster"
        || path == "/metrics"
        || req.headers().contains_key(crate::cluster::FORWARDED);
    if local {
        return next.run(req).await;
    }
    let limit = (node.config().api.max_body_mb * 1024 * 1024) as usize;
    c.route_api(req, limit, |req| next.run(req)).await
}

/// One span per request, named `{METHOD} {route}` (the route's pattern, so
/// ids do not make every name new), with the answer's status.
async fn trace_request(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    use tracing::field::Empty;
    use tracing::Instrument as _;
    let route = matched.as_ref().map_or("?", MatchedPath::as_str);
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// Rewrites any error answer that is not already the API's JSON (axum's own
/// rejections: 413 body too large, 400 undecodable path, …) into the API's
/// error shape, and counts it under route `http`.
async fn json_errors(State(node): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let (code, reason, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "body_too_large",
            format!(
                "the request body is larger than api.max_body_mb ({} MiB)",
                node.config().api.max_body_mb
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "method_not_allowed",
            "this route does not take that method; see the README's API tour".to_string(),
        ),
        s if s.is_server_error() => ("internal", "internal", text),
        _ => ("bad_request", "malformed_request", text),
    };
    node.rejections.count("http", reason);
    AppError::new(status, code, message).into_response()
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
}
