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
use super::{json_body, AppError, AppState};
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

fn query<T>(
    node: &Node,
    route: &'static str,
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, AppError> {
    q.map(|Query(q)| q).map_err(|e| {
        node.rejections.count(route, "bad_query");
        AppError::bad_request(e.body_text())
    })
}

// ---- accounts -------------------------------------------------------------

/// `POST /api/v1/accounts`
pub(crate) async fn create_account(
    State(node): State<AppState>,
    Caller(c): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let req = body(&node, "accounts", "account", &b)?;
    created(
        &node,
        "accounts",
        pg::accounts::create_account(&node, &c, req).await,
    )
}

/// `GET /api/v1/accounts`
pub(crate) async fn list_accounts(
    State(node): State<AppState>,
    Caller(c): Caller,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "accounts", pg::accounts::list_accounts(&node, &c))
}

/// `GET /api/v1/accounts/me`
pub(crate) async fn me(Caller(c): Caller) -> impl IntoResponse {
    Json(c)
}

/// `POST /api/v1/accounts/{id}/verify`
pub(crate) async fn verify_account(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "accounts",
        pg::accounts::verify_utility(&node, &c, &id).await,
    )
}

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

/// `POST /api/v1/programs`
pub(crate) async fn create_program(
    State(node): State<AppState>,
    Caller(c): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let req = body(&node, "programs", "program", &b)?;
    created(
        &node,
        "programs",
        pg::catalog::create_program(&node, &c, req).await,
    )
}

/// `GET /api/v1/programs?zone=&lat=&lon=&capacity_kw=&segment=&kind=&resource=`
pub(crate) async fn search_programs(
    State(node): State<AppState>,
    Caller(c): Caller,
    q: Result<Query<pg::SearchRequest>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, AppError> {
    let q = query(&node, "programs", q)?;
    answer(&node, "programs", pg::catalog::search(&node, &c, q).await)
}

/// `GET /api/v1/programs/{id}`
pub(crate) async fn get_program(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "programs", pg::catalog::get(&node, &c, &id))
}

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

/// `POST /api/v1/programs/{id}/terms/approve`
pub(crate) async fn approve_terms(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "programs",
        pg::catalog::approve_terms(&node, &c, &id).await,
    )
}

// ---- enrollments ----------------------------------------------------------

/// `POST /api/v1/enrollments`
pub(crate) async fn enroll(
    State(node): State<AppState>,
    Caller(c): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let req = body(&node, "enrollments", "enrollment", &b)?;
    created(
        &node,
        "enrollments",
        pg::enrollments::enroll(&node, &c, req).await,
    )
}

/// `GET /api/v1/enrollments`
pub(crate) async fn list_enrollments(
    State(node): State<AppState>,
    Caller(c): Caller,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "enrollments", pg::enrollments::list(&node, &c))
}

/// `GET /api/v1/enrollments/{id}`
pub(crate) async fn get_enrollment(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "enrollments", pg::enrollments::get(&node, &c, &id))
}

/// `POST /api/v1/enrollments/{id}/cancel`
pub(crate) async fn cancel_enrollment(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "enrollments",
        pg::enrollments::cancel(&node, &c, &id).await,
    )
}

// ---- events ---------------------------------------------------------------

/// `POST /api/v1/events`
pub(crate) async fn create_event(
    State(node): State<AppState>,
    Caller(c): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let req = body(&node, "events", "event", &b)?;
    created(
        &node,
        "events",
        pg::events::create_event(&node, &c, req).await,
    )
}

/// `GET /api/v1/events`
pub(crate) async fn list_events(
    State(node): State<AppState>,
    Caller(c): Caller,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "events", pg::events::list(&node, &c))
}

/// `GET /api/v1/events/{id}`
pub(crate) async fn get_event(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "events", pg::events::get(&node, &c, &id))
}

/// `POST /api/v1/events/{id}/notify`
pub(crate) async fn notify_event(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "events",
        pg::events::notify_event(&node, &c, &id).await,
    )
}

/// `POST /api/v1/events/{id}/approve`
pub(crate) async fn approve_event(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "events",
        pg::events::approve_event(&node, &c, &id).await,
    )
}

/// `POST /api/v1/events/{id}/cancel`
pub(crate) async fn cancel_event(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "events",
        pg::events::cancel_event(&node, &c, &id).await,
    )
}

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

/// `GET /api/v1/notices`: the caller's part in every event that called it.
pub(crate) async fn notices(
    State(node): State<AppState>,
    Caller(c): Caller,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "notices", pg::events::notices(&node, &c))
}

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

/// `POST /api/v1/events/{id}/settlement/approve`
pub(crate) async fn approve_settlement(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(
        &node,
        "settlements",
        pg::settle::approve(&node, &c, &id).await,
    )
}

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

/// `GET /api/v1/participants/{id}/metrics`: performance history.
pub(crate) async fn participant_metrics(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    answer(&node, "metrics", pg::settle::metrics(&node, &c, &id))
}

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
