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
