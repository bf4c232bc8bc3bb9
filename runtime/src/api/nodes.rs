//! `/api/v1/nodes/{id}`: any node's spec and capacity; DER state.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vpp_domain::units::kilo_to_unit_signed;
use vpp_domain::NodeId;

use super::auth::{audit, operator_only, require_scope, Caller};
use super::views::CapacityView;
use super::{query, AppError, AppState};

/// Children listed in a capacity answer unless `?children=N` says otherwise.
const DEFAULT_CHILDREN: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CapacityQuery {
    #[serde(default)]
    fresh: bool,
    children: Option<usize>,
}

pub(crate) fn node_id(node: &AppState, route: &'static str, raw: &str) -> Result<NodeId, AppError> {
    NodeId::new(raw).map_err(|e| {
        node.rejections.count(route, "bad_id");
        AppError::bad_request(format!("node id: {e}"))
    })
}

/// `GET /api/v1/nodes/{id}/capacity[?fresh=true][&children=N]`
pub(crate) async fn capacity(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
    q: Result<Query<CapacityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CapacityView>, AppError> {
    let q = query(&node, "capacity", q)?;
    let id = node_id(&node, "capacity", &id)?;
    require_scope(&node, &c, &id).await?;
    let v = node.capacity(&id, q.fresh).await?;
    Ok(Json(CapacityView::new(
        &v,
        q.fresh,
        q.children.unwrap_or(DEFAULT_CHILDREN),
    )))
}

/// `GET /api/v1/nodes/{id}`: the stored spec plus current capacity.
pub(crate) async fn get_node(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let id = node_id(&node, "get_node", &id)?;
    require_scope(&node, &c, &id).await?;
    let v = node.capacity(&id, false).await?;
    let spec = v.spec.clone();
    let parent = spec.parent().map(|p| p.to_string());
    Ok(Json(json!({
        "id": id.to_string(),
        "kind": spec.kind(),
        "parent": parent,
        "spec": spec,
        "capacity": CapacityView::new(&v, false, DEFAULT_CHILDREN),
    })))
}

/// Body of `PUT /api/v1/nodes/{id}/state`: fields left out keep their value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateRequest {
    online: Option<bool>,
    power_kw: Option<f64>,
    soc_pct: Option<f32>,
    temperature_c: Option<f32>,
    accepts_control: Option<bool>,
    /// Sequence number; default: one more than the current one.
    seq: Option<u64>,
}

/// `PUT /api/v1/nodes/{id}/state`
pub(crate) async fn put_state(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let route = "put_state";
    // A hand-set state feeds the envelope enrollments are checked against
    // and the payments computed from: an operator's tool only.
    operator_only(&node, &c, "setting a DER's state by hand")?;
    let id = node_id(&node, route, &id)?;
    let req: StateRequest = super::json_body(&node, route, "state body", &body)?;
    let bad = |node: &AppState, m: String| {
        node.rejections.count(route, "bad_value");
        AppError::bad_request(m)
    };
    let current = node.capacity(&id, false).await?;
    let Some(mut st) = current.state else {
        node.rejections.count(route, "not_a_der");
        return Err(AppError::bad_request(format!(
            "{id} is a {}; state is set on DERs",
            current.kind.as_str()
        )));
    };
    if let Some(p) = req.power_kw {
        st.power_w = kilo_to_unit_signed(p).map_err(|e| bad(&node, format!("power_kw: {e}")))?;
    }
    if let Some(s) = req.soc_pct {
        if !(s.is_finite() && (0.0..=100.0).contains(&s)) {
            return Err(bad(&node, format!("soc_pct: {s} is outside 0..=100")));
        }
        st.soc_pct = Some(s);
    }
    if let Some(t) = req.temperature_c {
        if !(t.is_finite() && (-100.0..=200.0).contains(&t)) {
            return Err(bad(
                &node,
                format!("temperature_c: {t} is outside -100..=200"),
            ));
        }
        st.temperature_c = Some(t);
    }
    if let Some(o) = req.online {
        st.online = o;
    }
    if let Some(a) = req.accepts_control {
        st.accepts_control = a;
    }
    st.seq = req.seq.unwrap_or(st.seq + 1);
    st.updated_ms = vpp_actors::now_ms();
    node.set_der_state(&id, st.clone()).await.inspect_err(|_| {
        node.rejections.count(route, "rejected");
    })?;
    audit(
        &node,
        &c,
        "der.set_state",
        format!("node/{id}"),
        format!("seq {}", st.seq),
    )
    .await;
    Ok(Json(
        json!({ "id": id.to_string(), "seq": st.seq, "applied": true }),
    ))
}
