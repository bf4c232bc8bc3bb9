//! Who is calling: bearer tokens → accounts, and the role gate in front of
//! the fleet routes (hierarchy, nodes, dispatches).
//!
//! | routes                                   | roles                      |
//! |------------------------------------------|----------------------------|
//! | `/api/v1/health`, `/metrics`             | anyone (liveness, scrapes) |
//! | hierarchy, nodes, capacity, dispatches   | operator, aggregator       |
//! | programs, enrollments, events, …         | per action (`programs.rs`) |
//!
//! Every refusal is a 401 (no or bad credentials) or 403 (not allowed) with
//! the reason, counted in `vpp_api_rejected_total{route="auth"}`.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use vpp_domain::account::{Account, Need, Role};
use vpp_domain::NodeId;

use super::{AppError, AppState};
use crate::programs::accounts_auth;

/// The authenticated caller of a route.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Account);

fn authenticate(node: &AppState, parts: &Parts) -> Result<Account, AppError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    accounts_auth(node.store(), header).map_err(|(reason, e)| {
        node.rejections.count("auth", reason);
        AppError::from(e)
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, node: &AppState) -> Result<Self, AppError> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        authenticate(node, parts).map(Caller)
    }
}

/// Roles that may use the fleet routes.
const FLEET_ROLES: &[Role] = &[Role::Operator, Role::Aggregator];

/// Middleware of the fleet routes: a signed-in operator or aggregator.
pub(crate) async fn fleet_gate(State(node): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let account = match authenticate(&node, &parts) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if let Err(why) = account.require(Need::Roles(FLEET_ROLES)) {
        node.rejections.count("auth", "forbidden");
        return AppError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response();
    }
    parts.extensions.insert(Caller(account));
    next.run(Request::from_parts(parts, body)).await
}

/// 403 for `why`, counted like the gate's refusals.
pub(crate) fn forbid(node: &AppState, why: String) -> AppError {
    node.rejections.count("auth", "forbidden");
    AppError::new(StatusCode::FORBIDDEN, "forbidden", why)
}

/// Operators only (fleet-wide writes: replacing the hierarchy, setting a
/// device's state by hand, importing meter data).
pub(crate) fn operator_only(node: &AppState, c: &Account, what: &str) -> Result<(), AppError> {
    if c.role == Role::Operator {
        Ok(())
    } else {
        Err(forbid(
            node,
            format!("{what} is for operators; {} is a {}", c.id, c.role),
        ))
    }
}

/// Whether `c` may act on node `id`: operators anywhere, aggregators at or
/// under a resource they own.
pub(crate) async fn in_scope(node: &AppState, c: &Account, id: &NodeId) -> bool {
    if c.role == Role::Operator {
        return true;
    }
    let Ok(fleet) = node.fleet().await else {
        return false;
    };
    let mut cur = Some(id.clone());
    while let Some(n) = cur {
        if c.resources.contains(&n) {
            return true;
        }
        cur = fleet.node(&n).and_then(|(_, p)| p.cloned());
    }
    false
}

/// [`in_scope`] or a 403 naming the node.
pub(crate) async fn require_scope(
    node: &AppState,
    c: &Account,
    id: &NodeId,
) -> Result<(), AppError> {
    if in_scope(node, c, id).await {
        Ok(())
    } else {
        Err(forbid(
            node,
            format!(
                "{id} is outside what {} owns ({})",
                c.id,
                c.resources
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// Records a fleet change in the audit ledger (after it was made durable).
/// A failure is logged, not returned: the change itself stands.
pub(crate) async fn audit(
    node: &AppState,
    c: &Account,
    action: &str,
    subject: String,
    detail: String,
) {
    let draft = vpp_domain::ledger::LedgerDraft {
        actor: c.id.to_string(),
        action: action.to_string(),
        subject,
        before: None,
        after: None,
        detail,
    };
    let cmd = vpp_store::Command::AppendLedger {
        draft,
        at_ms: vpp_actors::now_ms(),
    };
    if let Err(e) = node.writes().write(cmd).await {
        tracing::error!(error = %e, action, "recording a fleet change in the audit ledger failed")
    }
}
