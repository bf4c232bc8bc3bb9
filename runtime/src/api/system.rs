//! Health, metrics and the 404 for unknown routes.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{AppError, AppState};

/// `GET /api/v1/health`
pub(crate) async fn health(State(node): State<AppState>) -> Json<Value> {
    let fleet = node.fleet().await.ok();
    Json(json!({
        "status": "ok",
        "uptime_s": node.uptime_s(),
        "hierarchy_loaded": fleet.is_some(),
        "root": fleet.as_ref().map(|f| f.root().to_string()),
        "nodes": fleet.as_ref().map(|f| f.len()).unwrap_or(0),
        "splits_running": node.splits_running(),
        "data_dir": node.config().data_dir.display().to_string(),
    }))
}

/// `GET /api/v1/health/live`: the process answers (no dependency checked).
pub(crate) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /api/v1/health/ready`: 200 when this node can serve: always for a
/// single node; in a cluster once a leader is known and this member's part
/// of the fleet is built for the placement in force (its shards are
/// loaded). 503 otherwise, saying why.
pub(crate) async fn ready(State(node): State<AppState>) -> (axum::http::StatusCode, Json<Value>) {
    use axum::http::StatusCode;
    let Some(c) = node.writes().cluster() else {
        return (StatusCode::OK, Json(json!({ "status": "ready" })));
    };
    let reason = if !c.ready() {
        "no cluster leader known yet"
    } else if !c.shards_loaded() {
        "this member's shards are still being loaded"
    } else {
        return (StatusCode::OK, Json(json!({ "status": "ready" })));
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "not_ready",
            "reason": reason,
            "cluster": c.status(),
        })),
    )
}

/// `GET /api/v1/cluster` (operators): members, roles, log positions, lag.
pub(crate) async fn cluster(
    State(node): State<AppState>,
    super::auth::Caller(c): super::auth::Caller,
) -> Result<Json<Value>, AppError> {
    super::auth::operator_only(&node, &c, "the cluster view")?;
    Ok(Json(match node.writes().cluster() {
        None => json!({ "mode": "single" }),
        Some(cl) => {
            let mut v = serde_json::to_value(cl.status()).unwrap_or_default();
            v["mode"] = json!("cluster");
            v
        }
    }))
}

/// `GET /metrics` (Prometheus text format).
pub(crate) async fn metrics(State(node): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    for (name, help, v) in node.metrics().snapshot() {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let wb = node.write_behind_stats();
    for (name, help, v) in [
        (
            "vpp_store_write_behind_records_total",
            "records written behind (after coalescing)",
            wb.records_written,
        ),
        (
            "vpp_store_write_behind_batches_total",
            "write-behind batches applied",
            wb.batches_applied,
        ),
        (
            "vpp_store_write_behind_errors_total",
            "write-behind batches or flushes sled refused",
            wb.apply_errors,
        ),
        (
            "vpp_store_write_behind_dropped_total",
            "records queued after the writer stopped",
            wb.dropped,
        ),
        (
            "vpp_store_write_behind_deferred_total",
            "write-behind applies put off for a moment because every core was busy",
            wb.deferred,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let ing = &node.ingest;
    for (name, help, v) in [
        (
            "vpp_mqtt_accepted_total",
            "device messages accepted (each item of a site batch counts as one)",
            ing.accepted.load(Ordering::Relaxed),
        ),
        (
            "vpp_mqtt_site_batches_total",
            "site batches received (MQTT messages carrying several DERs' telemetry or acks)",
            ing.batches.load(Ordering::Relaxed),
        ),
        (
            "vpp_mqtt_no_hierarchy_total",
            "device messages that arrived while no hierarchy was loaded",
            ing.no_fleet.load(Ordering::Relaxed),
        ),
        (
            "vpp_mqtt_elsewhere_total",
            "device messages for sites another cluster member runs (left to it)",
            ing.elsewhere.load(Ordering::Relaxed),
        ),
        (
            "vpp_mqtt_desired_sent_total",
            "desired documents published to the broker",
            ing.desired_out.load(Ordering::Relaxed),
        ),
        (
            "vpp_mqtt_shed_total",
            "telemetry messages dropped on arrival because ingest was a whole channel behind",
            crate::mqtt::shed_total(),
        ),
        (
            "vpp_mqtt_connects_total",
            "connections (and reconnections) to the broker",
            ing.connects.load(Ordering::Relaxed),
        ),
        (
            "vpp_otel_exports_total",
            "batches of spans an OpenTelemetry collector accepted (OTEL_EXPORTER_OTLP_ENDPOINT)",
            crate::otel::exports_total(),
        ),
        (
            "vpp_otel_export_failures_total",
            "batches of spans that could not be delivered to the OpenTelemetry collector",
            crate::otel::export_failures_total(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    if let Some(c) = node.writes().cluster() {
        for (name, help, kind, v) in c.counters() {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out.push_str(&c.timings());
    }
    let m = node.metering();
    for (name, help, v) in [
        (
            "vpp_metering_samples_total",
            "telemetry values integrated into meter intervals",
            m.samples(),
        ),
        (
            "vpp_metering_readings_written_total",
            "interval meter readings written from telemetry",
            m.readings_written(),
        ),
        (
            "vpp_metering_write_errors_total",
            "writes of meter readings the store refused",
            m.write_errors(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP vpp_metering_sites sites metered now\n# TYPE vpp_metering_sites gauge\nvpp_metering_sites {}",
        m.sites()
    );
    let _ = writeln!(
        out,
        "# HELP vpp_mqtt_telemetry_lag_ms age of the newest telemetry in the last batch ingested (device clock), ms\n# TYPE vpp_mqtt_telemetry_lag_ms gauge\nvpp_mqtt_telemetry_lag_ms {}",
        ing.telemetry_lag_ms.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP vpp_mqtt_rejected_total device messages rejected, by reason\n# TYPE vpp_mqtt_rejected_total counter");
    for (reason, v) in ing.rejected(node.metrics()) {
        let _ = writeln!(
            out,
            "vpp_mqtt_rejected_total{{reason=\"{}\"}} {v}",
            reason.as_str()
        );
    }
    let _ = writeln!(out, "# HELP vpp_api_rejected_total requests rejected as bad input, by route and reason\n# TYPE vpp_api_rejected_total counter");
    for ((route, reason), v) in node.rejections.snapshot() {
        let _ = writeln!(
            out,
            "vpp_api_rejected_total{{route=\"{route}\",reason=\"{reason}\"}} {v}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Any route that does not exist.
pub(crate) async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::not_found(format!(
        "no route {uri}; see GET /api/v1/health and the README's API tour"
    ))
}

/// A route that exists, with a method it does not take (the body is filled
/// in by `json_errors`).
pub(crate) async fn method_not_allowed() -> axum::http::StatusCode {
    axum::http::StatusCode::METHOD_NOT_ALLOWED
}
