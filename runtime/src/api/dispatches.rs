//! `/api/v1/dispatches`: create, list, inspect and cancel orders.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vpp_domain::units::{kilo_to_unit, unit_to_kilo};
use vpp_domain::{Direction, DispatchId, DispatchOrder, DispatchRecord, NodeId};

use super::auth::{audit, in_scope, require_scope, Caller};
use super::views::AllocationView;
use super::{AppError, AppState};

/// Body of `POST /api/v1/dispatches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest {
    /// Optional caller-chosen id (idempotent create); generated otherwise.
    id: Option<String>,
    /// Node to dispatch: a site or virtual DER.
    target: String,
    direction: Direction,
    power_kw: f64,
    /// Start, Unix ms; default now. Give at most one of start_ms / start_in_s.
    start_ms: Option<u64>,
    /// Start, seconds from now.
    start_in_s: Option<u64>,
    duration_s: u64,
    ramp_kw_per_min: Option<f64>,
}

/// An order as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct RecordView {
    id: String,
    target: String,
    direction: Direction,
    power_kw: f64,
    start_ms: u64,
    end_ms: u64,
    duration_s: u64,
    ramp_kw_per_min: Option<f64>,
    created_ms: u64,
    status: vpp_domain::DispatchStatus,
    updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    allocated_kw: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shortfall_kw: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ders: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resplits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    split_ms: Option<u64>,
}

impl From<&DispatchRecord> for RecordView {
    fn from(r: &DispatchRecord) -> Self {
        let o = &r.order;
        let s = r.summary.as_ref();
        RecordView {
            id: o.id.to_string(),
            target: o.target.to_string(),
            direction: o.direction,
            power_kw: unit_to_kilo(o.power_w),
            start_ms: o.start_ms,
            end_ms: o.end_ms(),
            duration_s: o.duration_s,
            ramp_kw_per_min: o.ramp_w_per_min.map(unit_to_kilo),
            created_ms: o.created_ms,
            status: r.status,
            updated_ms: r.updated_ms,
            allocated_kw: s.map(|s| unit_to_kilo(s.allocated_w)),
            shortfall_kw: s.map(|s| unit_to_kilo(s.shortfall_w)),
            ders: s.map(|s| s.ders),
            resplits: s.map(|s| s.resplits),
            split_ms: s.map(|s| s.split_ms),
        }
    }
}

fn generated_id(now: u64) -> DispatchId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    DispatchId::new(format!("d-{now}-{n}")).expect("generated ids are valid")
}

fn order_from(req: CreateRequest, now: u64) -> Result<DispatchOrder, String> {
    let id = match req.id {
        Some(s) => DispatchId::new(&s).map_err(|e| format!("id: {e}"))?,
        None => generated_id(now),
    };
    let target = NodeId::new(&req.target).map_err(|e| format!("target: {e}"))?;
    let power_w = kilo_to_unit(req.power_kw).map_err(|e| format!("power_kw: {e}"))?;
    let start_ms = match (req.start_ms, req.start_in_s) {
        (Some(_), Some(_)) => return Err("give start_ms or start_in_s, not both".into()),
        (Some(ms), None) => ms,
        (None, Some(s)) => {
            if s > 365 * 24 * 3600 {
                return Err("start_in_s: more than a year ahead".into());
            }
            now + s * 1000
        }
        (None, None) => now,
    };
    let ramp_w_per_min = req
        .ramp_kw_per_min
        .map(kilo_to_unit)
        .transpose()
        .map_err(|e| format!("ramp_kw_per_min: {e}"))?;
    Ok(DispatchOrder {
        id,
        target,
        direction: req.direction,
        power_w,
        start_ms,
        duration_s: req.duration_s,
        ramp_w_per_min,
        created_ms: now,
    })
}

/// `POST /api/v1/dispatches` → 202 with the accepted record (200 when the
/// same id and terms were accepted before).
pub(crate) async fn create(
    State(node): State<AppState>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let route = "create_dispatch";
    let req: CreateRequest = super::json_body(&node, route, "dispatch body", &body)?;
    let start_given = req.start_ms.is_some() || req.start_in_s.is_some();
    let order = order_from(req, vpp_actors::now_ms()).map_err(|m| {
        node.rejections.count(route, "bad_value");
        AppError::bad_request(m)
    })?;
    require_scope(&node, &c, &order.target).await?;
    let (rec, created) = node
        .create_dispatch(order, start_given)
        .await
        .inspect_err(|_| {
            node.rejections.count(route, "rejected");
        })?;
    let status = if created {
        let o = &rec.order;
        audit(
            &node,
            &c,
            "dispatch.create",
            format!("dispatch/{}", o.id),
            format!(
                "{:?} {} kW at {}",
                o.direction,
                o.power_w as f64 / 1000.0,
                o.target
            ),
        )
        .await;
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(RecordView::from(&rec))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/dispatches[?limit=N]`
pub(crate) async fn list(
    State(node): State<AppState>,
    Caller(c): Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<RecordView>>, AppError> {
    let Query(q) = q.map_err(|e| AppError::bad_request(e.body_text()))?;
    let recs = node.dispatches(q.limit.unwrap_or(50).min(10_000))?;
    // Aggregators see the orders within what they own.
    let mut out = Vec::with_capacity(recs.len());
    for r in &recs {
        if in_scope(&node, &c, &r.order.target).await {
            out.push(RecordView::from(r));
        }
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetQuery {
    depth: Option<usize>,
}

fn dispatch_id(node: &AppState, route: &'static str, raw: &str) -> Result<DispatchId, AppError> {
    DispatchId::new(raw).map_err(|e| {
        node.rejections.count(route, "bad_id");
        AppError::bad_request(format!("dispatch id: {e}"))
    })
}

/// `GET /api/v1/dispatches/{id}[?depth=N]`: the record and its allocation
/// tree, `depth` levels from the target (default 3, at most 10).
pub(crate) async fn get_one(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q.map_err(|e| AppError::bad_request(e.body_text()))?;
    let id = dispatch_id(&node, "get_dispatch", &id)?;
    let rec = node.dispatch(&id)?;
    require_scope(&node, &c, &rec.order.target).await?;
    let tree = match rec.status {
        vpp_domain::DispatchStatus::Cancelled => None,
        _ => node
            .allocation_tree(&id, q.depth.unwrap_or(3).min(10))
            .await
            .ok()
            .map(|t| AllocationView::from(&t)),
    };
    Ok(Json(json!({
        "dispatch": RecordView::from(&rec),
        "allocation": tree,
    })))
}

/// `POST /api/v1/dispatches/{id}/cancel`
pub(crate) async fn cancel(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Json<RecordView>, AppError> {
    let id = dispatch_id(&node, "cancel_dispatch", &id)?;
    let target = node.dispatch(&id)?.order.target;
    require_scope(&node, &c, &target).await?;
    let rec = node.cancel_dispatch(&id).await?;
    audit(
        &node,
        &c,
        "dispatch.cancel",
        format!("dispatch/{id}"),
        String::new(),
    )
    .await;
    Ok(Json(RecordView::from(&rec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<DispatchOrder, String> {
        let r: CreateRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        order_from(r, 1_000)
    }

    #[test]
    fn builds_orders_and_rejects_bad_values() {
        let o = req(
            r#"{"target":"vpp","direction":"up","power_kw":1.5,"duration_s":60,"start_in_s":10}"#,
        )
        .unwrap();
        assert_eq!((o.power_w, o.start_ms), (1500, 11_000));
        assert!(
            req(r#"{"target":"vpp","direction":"up","power_kw":-1,"duration_s":60}"#)
                .unwrap_err()
                .contains("power_kw")
        );
        assert!(
            req(r#"{"target":"a b","direction":"up","power_kw":1,"duration_s":60}"#)
                .unwrap_err()
                .contains("target")
        );
        assert!(req(r#"{"target":"x","direction":"up","power_kw":1,"duration_s":60,"start_ms":1,"start_in_s":1}"#)
            .unwrap_err()
            .contains("not both"));
        assert!(
            req(r#"{"target":"x","direction":"sideways","power_kw":1,"duration_s":60}"#).is_err()
        );
        assert!(
            req(r#"{"target":"x","direction":"up","power_kw":1,"duration_s":60,"colour":1}"#)
                .is_err()
        );
    }
}
