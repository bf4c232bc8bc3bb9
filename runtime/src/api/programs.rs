//! `/api/v1/accounts`, `/programs`, `/enrollments`, `/events`, `/notices`,
//! `/settlements`, `/participants`: the demand-flexibility journey. Each
//! handler authenticates ([`Caller`]), parses, and calls one action of
//! `crate::programs`, which authorises, validates, commits and audits.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::Caller;
use super::{json_body, query, AppError, AppState};
use crate::node::Node;
use crate::programs::{self as pg, ProgramError};

/// Counts a failed action under `route` and turns it into the API error.
fn answer<T: Serialize>(
    node: &Node,
    route: &'static str,
    r: Result<T, ProgramError>,
) -> Result<Json<T>, AppError> {
    r.map(Json).map_err(|e| {
        let reason = match &e {
            ProgramError::Unauthorized(_) => "unauthorized",
            ProgramError::Forbidden(_) => "forbidden",
            ProgramError::NotFound(_) => "not_found",
            ProgramError::Invalid(_) => "invalid",
            ProgramError::Conflict(_) => "conflict",
            ProgramError::Node(_) | ProgramError::Store(_) => "internal",
        };
        node.rejections.count(route, reason);
        AppError::from(e)
    })
}

fn created<T: Serialize>(
    node: &Node,
    route: &'static str,
    r: Result<T, ProgramError>,
) -> Result<impl IntoResponse, AppError> {
    answer(node, route, r).map(|j| (StatusCode::CREATED, j))
}

fn body<T: DeserializeOwned>(
    node: &Node,
    route: &'static str,
    what: &str,
    b: &Bytes,
) -> Result<T, AppError> {
    json_body(node, route, what, b)
}

/// A handler that calls `$action(&node, &caller, &id)` for a path `…/{id}…`
/// (`await` when the action is async).
macro_rules! by_id {
    ($(#[$m:meta])* $name:ident, $route:literal, $action:path $(, $aw:tt)?) => {
        $(#[$m])*
        pub(crate) async fn $name(
            State(node): State<AppState>,
            Caller(c): Caller,
            Path(id): Path<String>,
        ) -> Result<impl IntoResponse, AppError> {
            answer(&node, $route, $action(&node, &c, &id)$(.$aw)?)
        }
    };
}

/// A handler that lists what `$action(&node, &caller)` lets the caller see.
macro_rules! listing {
    ($(#[$m:meta])* $name:ident, $route:literal, $action:path) => {
        $(#[$m])*
        pub(crate) async fn $name(
            State(node): State<AppState>,
            Caller(c): Caller,
        ) -> Result<impl IntoResponse, AppError> {
            answer(&node, $route, $action(&node, &c))
        }
    };
}

/// A handler that parses a JSON body (`$what` names it in errors) and
/// answers 201 with what `$action(&node, &caller, body)` created.
macro_rules! creating {
    ($(#[$m:meta])* $name:ident, $route:literal, $what:literal, $action:path) => {
        $(#[$m])*
        pub(crate) async fn $name(
            State(node): State<AppState>,
            Caller(c): Caller,
            b: Bytes,
        ) -> Result<impl IntoResponse, AppError> {
            let req = body(&node, $route, $what, &b)?;
            created(&node, $route, $action(&node, &c, req).await)
        }
    };
}

// ---- accounts -------------------------------------------------------------

creating!(
    /// `POST /api/v1/accounts`
    create_account,
    "accounts",
    "account",
    pg::accounts::create_account
);

listing!(
    /// `GET /api/v1/accounts`
    list_accounts, "accounts", pg::accounts::list_accounts);

/// `GET /api/v1/accounts/me`
pub(crate) async fn me(Caller(c): Caller) -> impl IntoResponse {
    Json(c)
}

by_id!(
    /// `POST /api/v1/accounts/{id}/verify`
    verify_account,
    "accounts",
    pg::accounts::verify_utility,
    await
);

/// `POST /api/v1/accounts/{id}/tokens` (body optional: `{"ttl_s": N}`)
pub(crate) async fn issue_token(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let req = if b.iter().all(u8::is_ascii_whitespace) {
        pg::TokenRequest::default()
    } else {
        body(&node, "tokens", "token request", &b)?
    };
    created(
        &node,
        "tokens",
        pg::accounts::issue_token(&node, &c, &id, req).await,
    )
}

/// `POST /api/v1/tokens/{id}/revoke`
pub(crate) async fn revoke_token(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "tokens",
        pg::accounts::revoke_token(&node, &c, &id)
            .await
            .map(|()| serde_json::json!({ "revoked": id })),
    )
}

// ---- programs -------------------------------------------------------------

creating!(
    /// `POST /api/v1/programs`
    create_program,
    "programs",
    "program",
    pg::catalog::create_program
);

/// `GET /api/v1/programs?zone=&lat=&lon=&capacity_kw=&segment=&kind=&resource=`
pub(crate) async fn search_programs(
    State(node): State<AppState>,
    Caller(c): Caller,
    q: Result<Query<pg::SearchRequest>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, AppError> {
    let q = query(&node, "programs", q)?;
    answer(&node, "programs", pg::catalog::search(&node, &c, q).await)
}

by_id!(
    /// `GET /api/v1/programs/{id}`
    get_program, "programs", pg::catalog::get);

/// `PUT /api/v1/programs/{id}/terms`: propose new terms.
pub(crate) async fn propose_terms(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let req = body(&node, "programs", "terms", &b)?;
    answer(
        &node,
        "programs",
        pg::catalog::propose_terms(&node, &c, &id, req).await,
    )
}

by_id!(
    /// `POST /api/v1/programs/{id}/terms/approve`
    approve_terms, "programs", pg::catalog::approve_terms, await);

// ---- enrollments ----------------------------------------------------------

creating!(
    /// `POST /api/v1/enrollments`
    enroll, "enrollments", "enrollment", pg::enrollments::enroll);

listing!(
    /// `GET /api/v1/enrollments`
    list_enrollments, "enrollments", pg::enrollments::list);

by_id!(
    /// `GET /api/v1/enrollments/{id}`
    get_enrollment, "enrollments", pg::enrollments::get);

by_id!(
    /// `POST /api/v1/enrollments/{id}/cancel`
    cancel_enrollment,
    "enrollments",
    pg::enrollments::cancel,
    await
);

// ---- events ---------------------------------------------------------------

creating!(
    /// `POST /api/v1/events`
    create_event, "events", "event", pg::events::create_event);

listing!(
    /// `GET /api/v1/events`
    list_events, "events", pg::events::list);

by_id!(
    /// `GET /api/v1/events/{id}`
    get_event, "events", pg::events::get);

by_id!(
    /// `POST /api/v1/events/{id}/notify`
    notify_event, "events", pg::events::notify_event, await);

by_id!(
    /// `POST /api/v1/events/{id}/approve`
    approve_event, "events", pg::events::approve_event, await);

by_id!(
    /// `POST /api/v1/events/{id}/cancel`
    cancel_event, "events", pg::events::cancel_event, await);

/// `POST /api/v1/events/{id}/confirmations`
pub(crate) async fn confirm(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let req = body(&node, "confirmations", "confirmation", &b)?;
    answer(
        &node,
        "confirmations",
        pg::events::confirm(&node, &c, &id, req).await,
    )
}

listing!(
    /// `GET /api/v1/notices`: the caller's part in every event that called it.
    notices, "notices", pg::events::notices);

/// `GET /api/v1/notices/stream`: new notices as server-sent events
/// (`event: event` or `event: cancelled`, JSON data).
pub(crate) async fn notice_stream(
    State(node): State<AppState>,
    Caller(c): Caller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = node.programs().subscribe();
    let all = c.role == vpp_domain::account::Role::Operator;
    let me = c.id.to_string();
    let stream = futures::stream::unfold(rx, move |mut rx| {
        let me = me.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(n) if all || n.account == me => {
                        let ev = SseEvent::default()
                            .event(n.kind)
                            .json_data(&n)
                            .unwrap_or_else(|_| SseEvent::default().comment("unencodable"));
                        return Some((Ok(ev), rx));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let ev = SseEvent::default().event("lagged").data(format!(
                            "{n} notices were dropped; read GET /api/v1/notices"
                        ));
                        return Some((Ok(ev), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ---- M&V and settlement ---------------------------------------------------

/// `GET /api/v1/events/{id}/performance`: baseline, actual and delivered per
/// participant and interval.
pub(crate) async fn performance(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let r = pg::settle::performance(&node, &c, &id).await.map(|v| {
        v.into_iter()
            .map(|p| {
                let (report, error) = match p.report {
                    Ok(r) => (Some(r), None),
                    Err(e) => (None, Some(e)),
                };
                serde_json::json!({
                    "enrollment": p.enrollment,
                    "account": p.account,
                    "resource": p.resource,
                    "participation": p.participation,
                    "committed_kw": p.committed_kw,
                    "report": report,
                    "error": error,
                })
            })
            .collect::<Vec<_>>()
    });
    answer(&node, "performance", r)
}

/// `POST /api/v1/events/{id}/settlement`: compute the statements.
pub(crate) async fn settle_event(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    created(
        &node,
        "settlements",
        pg::settle::settle_event(&node, &c, &id).await,
    )
}

by_id!(
    /// `POST /api/v1/events/{id}/settlement/approve`
    approve_settlement,
    "settlements",
    pg::settle::approve,
    await
);

/// Query of `GET /api/v1/settlements`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettlementQuery {
    event: Option<String>,
    account: Option<String>,
}

/// `GET /api/v1/settlements[?event=&account=]`: statement history.
pub(crate) async fn list_settlements(
    State(node): State<AppState>,
    Caller(c): Caller,
    q: Result<Query<SettlementQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, AppError> {
    let q = query(&node, "settlements", q)?;
    answer(
        &node,
        "settlements",
        pg::settle::list(&node, &c, q.event.as_deref(), q.account.as_deref()),
    )
}

by_id!(
    /// `GET /api/v1/participants/{id}/metrics`: performance history.
    participant_metrics, "metrics", pg::settle::metrics);

// ---- audit ledger ---------------------------------------------------------

/// Query of `GET /api/v1/audit`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    from_seq: Option<u64>,
    limit: Option<usize>,
}

fn operator_only(node: &Node, c: &vpp_domain::account::Account) -> Result<(), AppError> {
    c.require(vpp_domain::account::Need::Roles(&[
        vpp_domain::account::Role::Operator,
    ]))
    .map_err(|why| {
        node.rejections.count("audit", "forbidden");
        AppError::new(StatusCode::FORBIDDEN, "forbidden", why)
    })
}

/// `GET /api/v1/audit[?from_seq=N&limit=M]`: ledger entries (operators).
pub(crate) async fn audit_entries(
    State(node): State<AppState>,
    Caller(c): Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, AppError> {
    operator_only(&node, &c)?;
    let q = query(&node, "audit", q)?;
    let store = node.store().clone();
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let from = q.from_seq.unwrap_or(1);
    let entries = tokio::task::spawn_blocking(move || store.ledger_entries(from, limit))
        .await
        .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| AppError::from(crate::node::NodeError::Store(e)))?;
    Ok(Json(entries))
}

/// `GET /api/v1/audit/verify`: recomputes the whole chain (operators).
pub(crate) async fn audit_verify(
    State(node): State<AppState>,
    Caller(c): Caller,
) -> Result<impl IntoResponse, AppError> {
    operator_only(&node, &c)?;
    let store = node.store().clone();
    let report = tokio::task::spawn_blocking(move || store.verify_ledger())
        .await
        .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| AppError::from(crate::node::NodeError::Store(e)))?;
    Ok(Json(report))
}
