//! The HTTP API under `/api/v1`, plus `/metrics`.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/health` | liveness and a summary |
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
//! | `GET /metrics` | Prometheus text |
//!
//! Every error is `{"error": {"status", "code", "message", "problems"?}}` with
//! a proper status; every rejected input is counted by route and reason.

mod dispatches;
mod error;
mod hierarchy;
mod nodes;
mod system;
mod views;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
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

/// The router over a node.
pub fn router(node: Arc<Node>) -> Router {
    let limit = (node.config().api.max_body_mb * 1024 * 1024) as usize;
    Router::new()
        .route("/api/v1/health", get(system::health))
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
        .route("/metrics", get(system::metrics))
        .fallback(system::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(node)
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
