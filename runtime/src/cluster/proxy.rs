//! API requests a follower hands to the leader.
//!
//! ```text
//!   client ─► follower API ─(to_leader middleware)─► leader's cluster port
//!             POST/GET/… /cluster/v1/api/<original path and query>
//!             (cookie, the caller's own headers and body, streamed both ways)
//!                                   └─► the leader's API router, as if called directly
//! ```
//!
//! The leader runs the fleet that splits orders and talks to devices, and
//! serialises program changes, so every member answers the same and no two
//! members act on the same order. A forwarded request carries
//! [`FORWARDED`]: a member never forwards it again (no loops while a new
//! leader is being elected; the old one answers from its own state or says
//! it cannot).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Header marking a request a member forwarded.
pub const FORWARDED: &str = "x-vpp-forwarded";
/// Prefix of forwarded API routes on the cluster port.
pub(super) const PREFIX: &str = "/cluster/v1/api";

/// Sends `req` to the leader at `addr` (its cluster port) and streams the
/// answer back. `Err` when the leader could not be reached at all (the
/// request was not sent, so it may be sent again).
pub(super) async fn forward(
    addr: &str,
    cookie: &str,
    tls: Option<&super::tls::Tls>,
    mut req: Request,
) -> Result<Response, String> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let uri: Uri = match format!("{PREFIX}{pq}").parse() {
        Ok(u) => u,
        Err(e) => return Ok(unavailable(format!("cannot forward {pq}: {e}"))),
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    match HeaderValue::from_str(cookie) {
        Ok(v) => {
            headers.insert(super::network::COOKIE_HEADER, v);
        }
        Err(e) => {
            return Ok(unavailable(format!(
                "cluster cookie is not a header value: {e}"
            )))
        }
    }
    if let Ok(host) = HeaderValue::from_str(addr) {
        headers.insert(axum::http::header::HOST, host);
    }
    let unreachable = |e| format!("the leader at {addr} is unreachable: {e}");
    let mut sender = match tls {
        Some(tls) => open(tls.connect(addr).await.map_err(unreachable)?, addr).await?,
        None => {
            open(
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?,
                addr,
            )
            .await?
        }
    };
    Ok(match sender.send_request(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => unavailable(format!("the leader at {addr} did not answer: {e}")),
    })
}

/// An HTTP/1 connection over `stream`, driven in its own task.
async fn open<S>(
    stream: S,
    addr: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("the leader at {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "forwarded request connection closed");
        }
    });
    Ok(sender)
}

/// The API router's answer to a forwarded request (prefix removed).
pub(super) async fn serve_forwarded(api: axum::Router, req: Request) -> Response {
    // A fresh request: the cluster router's own path parameters (in the
    // extensions) must not reach the API's extractors.
    let (parts, body) = req.into_parts();
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.headers_mut() = parts.headers;
    *req.version_mut() = parts.version;
    *req.uri_mut() = parts.uri;
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let rest = pq.strip_prefix(PREFIX).unwrap_or(&pq);
    match rest.parse::<Uri>() {
        Ok(u) => *req.uri_mut() = u,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad path: {e}")).into_response(),
    }
    use tower::ServiceExt;
    match api.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

pub(super) fn unavailable(message: String) -> Response {
    let body = serde_json::json!({"error": {
        "status": 503, "code": "unavailable", "message": message,
    }});
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// 413 for a body that could not be read within `limit` bytes.
pub(super) fn too_large(limit: usize, e: axum::Error) -> Response {
    let body = serde_json::json!({"error": {
        "status": 413, "code": "body_too_large",
        "message": format!("request body not read within {} MiB (api.max_body_mb): {e}", limit / (1024 * 1024)),
    }});
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}
