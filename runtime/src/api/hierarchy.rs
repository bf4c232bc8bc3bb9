//! `/api/v1/hierarchy`: read, replace, add to and prune the hierarchy.
//!
//! Uploads use the hierarchy file format (TOML, see `examples/small.toml`),
//! so what works with `vpp hierarchy import FILE` works over HTTP and errors
//! come back with line numbers.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use vpp_domain::hierarchy_file::{parse, to_toml};
use vpp_domain::NodeId;

use super::auth::{audit, operator_only, require_scope, Caller};
use super::{AppError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Format {
    format: Option<String>,
}

fn text_body(route: &'static str, node: &AppState, body: &Bytes) -> Result<String, AppError> {
    match std::str::from_utf8(body) {
        Ok(s) if !s.trim().is_empty() => Ok(s.to_string()),
        Ok(_) => {
            node.rejections.count(route, "empty_body");
            Err(AppError::bad_request(
                "the body is empty: send a hierarchy file (TOML) as the body",
            ))
        }
        Err(e) => {
            node.rejections.count(route, "not_utf8");
            Err(AppError::bad_request(format!(
                "the body is not UTF-8 text: {e}"
            )))
        }
    }
}

/// `GET /api/v1/hierarchy[?format=toml]`
pub(crate) async fn get_hierarchy(
    State(node): State<AppState>,
    q: Result<Query<Format>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = q.map_err(|e| AppError::bad_request(e.body_text()))?;
    let h = node.hierarchy().await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(h).into_response()),
        Some("toml") => Ok((
            [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
            to_toml(&h),
        )
            .into_response()),
        Some(other) => Err(AppError::bad_request(format!(
            "format {other:?} is not one of json, toml"
        ))),
    }
}

/// `PUT /api/v1/hierarchy` with a hierarchy file as the body.
pub(crate) async fn put_hierarchy(
    State(node): State<AppState>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let route = "put_hierarchy";
    operator_only(&node, &c, "replacing the whole hierarchy")?;
    let text = text_body(route, &node, &body)?;
    let h = tokio::task::spawn_blocking(move || parse("request body", &text))
        .await
        .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .inspect_err(|_| node.rejections.count(route, "invalid_hierarchy"))?;
    let counts = (h.virtual_ders.len(), h.sites.len(), h.ders.len());
    let n = node.replace_hierarchy(h).await?;
    audit(
        &node,
        &c,
        "hierarchy.replace",
        "hierarchy".into(),
        format!("{n} nodes"),
    )
    .await;
    Ok(Json(json!({
        "nodes": n,
        "virtual_ders": counts.0,
        "sites": counts.1,
        "ders": counts.2,
    })))
}

/// `POST /api/v1/hierarchy/nodes` with a fragment in the file format: new
/// `[[virtual_der]]` and `[[site]]` (with their `[[site.der]]`) tables whose
/// parents exist already or come in the same fragment.
pub(crate) async fn add_nodes(
    State(node): State<AppState>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let route = "add_nodes";
    let fragment = text_body(route, &node, &body)?;
    let current = node.hierarchy().await?;
    let before = current.len();
    // Parse the current hierarchy and the fragment as one file, so every
    // rule (unique ids, parents, cycles) is checked against the whole; report
    // lines relative to the fragment.
    let base = to_toml(&current);
    let offset = base.lines().count() + 1;
    let combined = format!("{base}\n{fragment}");
    let parsed = tokio::task::spawn_blocking(move || parse("request body", &combined))
        .await
        .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let h = match parsed {
        Ok(h) => h,
        Err(mut e) => {
            node.rejections.count(route, "invalid_hierarchy");
            for p in &mut e.problems {
                p.line = p.line.and_then(|l| l.checked_sub(offset));
            }
            return Err(e.into());
        }
    };
    let added = h.len() - before;
    // An aggregator adds only under what it owns (or under nodes it adds).
    let old: std::collections::HashSet<&NodeId> = current.nodes_ids().collect();
    let new: std::collections::HashSet<&NodeId> =
        h.nodes_ids().filter(|id| !old.contains(id)).collect();
    let parents = h
        .virtual_ders
        .iter()
        .filter(|v| new.contains(&v.id))
        .filter_map(|v| v.parent.clone())
        .chain(
            h.sites
                .iter()
                .filter(|s| new.contains(&s.id))
                .map(|s| s.parent.clone()),
        );
    for p in parents.collect::<Vec<_>>() {
        if !new.contains(&p) {
            require_scope(&node, &c, &p).await?;
        }
    }
    node.replace_hierarchy(h).await?;
    audit(
        &node,
        &c,
        "hierarchy.add",
        "hierarchy".into(),
        format!("{added} nodes"),
    )
    .await;
    Ok((StatusCode::CREATED, Json(json!({ "added": added }))))
}

/// `DELETE /api/v1/hierarchy/nodes/{id}`: the node and its subtree.
pub(crate) async fn remove_node(
    State(node): State<AppState>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = NodeId::new(&id).map_err(|e| {
        node.rejections.count("remove_node", "bad_id");
        AppError::bad_request(format!("node id: {e}"))
    })?;
    require_scope(&node, &c, &id).await?;
    let removed = node.remove_subtree(&id).await?;
    audit(
        &node,
        &c,
        "hierarchy.remove",
        format!("node/{id}"),
        format!("{removed} nodes"),
    )
    .await;
    Ok(Json(json!({ "removed": removed })))
}
