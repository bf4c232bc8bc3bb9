//! `/api/v1/meter`: interval meter data per site, imported from CSV files or
//! metered from telemetry (`metering.rs`), read back for M&V.
//!
//! ```text
//!   POST /api/v1/meter (CSV) ─► parse_csv at metering.interval_s ─► every site a site
//!     of the hierarchy? ─► Store::import_meter (readings + ledger entry,
//!     one transaction, flushed) ─► 200 {readings, sites, from_ms, to_ms, ledger_seq}
//!   GET /api/v1/meter/{site}?from_ms=&to_ms= ─► Store::meter_range ─► kW per interval
//! ```
//!
//! An import is all or nothing: a bad line (every one is listed with its
//! line number) or a site the hierarchy does not have is a 400 and nothing
//! is stored.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use vpp_domain::ledger::LedgerDraft;
use vpp_domain::meter::{parse_csv, CsvError};
use vpp_domain::{NodeId, NodeKind};
use vpp_store::MAX_IMPORT_READINGS;

use super::error::Problem;
use super::nodes::node_id;
use super::{AppError, AppState};
use crate::metering::Reading;
use crate::node::{Node, NodeError};

/// Rejections are counted under this route.
const ROUTE: &str = "meter";

/// Most readings one `GET` answers with (35 days of 5-minute data); the
/// answer says where to continue.
pub(crate) const MAX_POINTS: usize = 10_000;

/// What `GET` covers when not told: the last 24 hours.
const DEFAULT_SPAN_MS: u64 = 86_400_000;

/// Most unknown sites named in one error.
const MAX_NAMED: usize = 20;

/// Answer to an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImportSummary {
    /// Readings stored.
    pub(crate) readings: usize,
    /// Sites they belong to.
    pub(crate) sites: usize,
    /// Start of the earliest interval, Unix ms.
    pub(crate) from_ms: u64,
    /// End of the latest interval (exclusive), Unix ms.
    pub(crate) to_ms: u64,
    /// The import's audit-ledger entry (0 until stored).
    pub(crate) ledger_seq: u64,
}

/// A checked import, ready for [`vpp_store::Store::import_meter`].
#[derive(Debug)]
pub(crate) struct ImportPlan {
    /// `(site, interval start ms, average W)`.
    pub(crate) readings: Vec<Reading>,
    /// The audit-ledger entry to write with them.
    pub(crate) draft: LedgerDraft,
    /// What the answer says.
    pub(crate) summary: ImportSummary,
}

/// Why an import was refused; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// Bad lines, each with its number.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// A header and nothing else.
    #[error("the file holds no readings: after the header site,start,kw come lines like site-001,2026-07-01T17:00:00Z,3.25")]
    NoReadings,
    /// More than one transaction may hold.
    #[error("{0} readings in one import; at most {MAX_IMPORT_READINGS}: split the file")]
    TooMany(usize),
    /// Ids that are not sites of the hierarchy, and why.
    #[error(
        "meter data for {} id(s) that are not sites of the hierarchy: {}; nothing was imported",
        .0.len(),
        named(.0)
    )]
    NotSites(Vec<(NodeId, &'static str)>),
}

impl ImportError {
    /// The reason counted in `vpp_api_rejected_total{route="meter"}`.
    fn reason(&self) -> &'static str {
        match self {
            ImportError::Csv(_) => "invalid_csv",
            ImportError::NoReadings => "no_readings",
            ImportError::TooMany(_) => "too_many_readings",
            ImportError::NotSites(_) => "unknown_site",
        }
    }
}

fn named(bad: &[(NodeId, &'static str)]) -> String {
    let mut s: Vec<String> = bad
        .iter()
        .take(MAX_NAMED)
        .map(|(id, _)| id.to_string())
        .collect();
    if bad.len() > MAX_NAMED {
        s.push(format!("and {} more", bad.len() - MAX_NAMED));
    }
    s.join(", ")
}

impl From<ImportError> for AppError {
    fn from(e: ImportError) -> Self {
        let message = e.to_string();
        match e {
            ImportError::Csv(csv) => {
                let mut a = AppError::bad_request(message);
                a.code = "invalid_meter_data";
                a.problems = csv
                    .problems
                    .into_iter()
                    .map(|p| Problem {
                        line: Some(p.line),
                        id: None,
                        message: match p.column {
                            Some(c) => format!("{c}: {}", p.message),
                            None => p.message,
                        },
                    })
                    .collect();
                a
            }
            ImportError::NoReadings => AppError::bad_request(message),
            ImportError::TooMany(_) => {
                AppError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_readings", message)
            }
            ImportError::NotSites(bad) => {
                let mut a = AppError::bad_request(message);
                a.code = "unknown_site";
                a.problems = bad
                    .into_iter()
                    .take(MAX_NAMED)
                    .map(|(site, why)| Problem {
                        line: None,
                        message: format!("{site} {why}"),
                        id: Some(site.to_string()),
                    })
                    .collect();
                a
            }
        }
    }
}

/// Parses meter CSV `text` at `interval_s` and checks it: at least one
/// reading, at most [`MAX_IMPORT_READINGS`], and every id a site
/// (`not_a_site` says why an id is not: `None` when it is one). The ledger
/// draft names `actor` (an account id). Pure: used by the API and by
/// `vpp meter import` on a data dir.
pub(crate) fn plan_import(
    text: &str,
    interval_s: u32,
    actor: &str,
    not_a_site: impl Fn(&NodeId) -> Option<&'static str>,
) -> Result<ImportPlan, ImportError> {
    let series = parse_csv(text, interval_s)?;
    let n: usize = series.values().map(|s| s.points.len()).sum();
    if n == 0 {
        return Err(ImportError::NoReadings);
    }
    if n > MAX_IMPORT_READINGS {
        return Err(ImportError::TooMany(n));
    }
    let bad: Vec<_> = series
        .keys()
        .filter_map(|site| not_a_site(site).map(|why| (site.clone(), why)))
        .collect();
    if !bad.is_empty() {
        return Err(ImportError::NotSites(bad));
    }
    let mut readings = Vec::with_capacity(n);
    for (site, s) in &series {
        readings.extend(s.points.iter().map(|(&t, &w)| (site.clone(), t, w)));
    }
    let from_ms = readings.iter().map(|r| r.1).min().unwrap_or(0);
    let to_ms = readings.iter().map(|r| r.1).max().unwrap_or(0) + u64::from(interval_s) * 1000;
    let k = series.len();
    let subject = match series.keys().next() {
        Some(site) if k == 1 => format!("meter/{site}"),
        _ => "meter".to_string(),
    };
    let draft = LedgerDraft {
        actor: actor.to_string(),
        action: "meter.import".to_string(),
        subject,
        before: None,
        after: None,
        detail: format!(
            "{n} readings of {interval_s} s for {k} site(s) in [{from_ms}, {to_ms}) ms; \
             digests over the readings in key order"
        ),
    };
    Ok(ImportPlan {
        readings,
        draft,
        summary: ImportSummary {
            readings: n,
            sites: k,
            from_ms,
            to_ms,
            ledger_seq: 0,
        },
    })
}

/// Imports meter CSV `text` as `actor` (an account id, recorded in the
/// audit ledger): parse at the node's interval, check every site against
/// the hierarchy, store readings and ledger entry in one transaction.
/// Rejections are counted under route `meter`.
pub(crate) async fn import_csv(
    node: &Node,
    actor: &str,
    text: String,
) -> Result<ImportSummary, AppError> {
    let fleet = node.fleet().await.inspect_err(|_| {
        node.rejections.count(ROUTE, "no_hierarchy");
    })?;
    let interval_s = node.metering().interval_s();
    let actor_owned = actor.to_string();
    let plan = tokio::task::spawn_blocking(move || {
        plan_import(&text, interval_s, &actor_owned, |id| match fleet.node(id) {
            Some((NodeKind::Site, _)) => None,
            Some(_) => Some("is not a site"),
            None => Some("is not in the hierarchy"),
        })
    })
    .await
    .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| {
        node.rejections.count(ROUTE, e.reason());
        AppError::from(e)
    })?;
    let ImportPlan {
        readings,
        draft,
        mut summary,
    } = plan;
    let cmd = vpp_store::Command::ImportMeter {
        readings,
        draft,
        at_ms: vpp_actors::now_ms(),
    };
    let entry = node
        .writes()
        .write_ledger(cmd)
        .await
        .map_err(NodeError::from)?;
    summary.ledger_seq = entry.seq;
    tracing::info!(
        readings = summary.readings,
        sites = summary.sites,
        actor,
        ledger_seq = entry.seq,
        "meter data imported"
    );
    Ok(summary)
}

/// `POST /api/v1/meter` with meter CSV as the body.
pub(crate) async fn import(
    State(node): State<AppState>,
    super::auth::Caller(caller): super::auth::Caller,
    body: Bytes,
) -> Result<Json<ImportSummary>, AppError> {
    // Payments are computed from meter data: only the operator (neutral to
    // utility and participant) imports it.
    super::auth::operator_only(&node, &caller, "importing meter data")?;
    let text = match String::from_utf8(body.to_vec()) {
        Ok(s) if !s.trim().is_empty() => s,
        Ok(_) => {
            node.rejections.count(ROUTE, "empty_body");
            return Err(AppError::bad_request(
                "the body is empty: send meter CSV (site,start,kw) as the body",
            ));
        }
        Err(e) => {
            node.rejections.count(ROUTE, "not_utf8");
            return Err(AppError::bad_request(format!(
                "the body is not UTF-8 text: {e}"
            )));
        }
    };
    Ok(Json(import_csv(&node, caller.id.as_str(), text).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RangeQuery {
    from_ms: Option<u64>,
    to_ms: Option<u64>,
}

/// One interval's reading in an answer.
#[derive(Debug, Serialize)]
pub(crate) struct ReadingView {
    start_ms: u64,
    kw: f64,
}

/// Answer to a read.
#[derive(Debug, Serialize)]
pub(crate) struct SeriesView {
    site: NodeId,
    interval_s: u32,
    from_ms: u64,
    to_ms: u64,
    readings: Vec<ReadingView>,
    /// More readings follow: ask again from `next_from_ms`.
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_from_ms: Option<u64>,
}

/// `GET /api/v1/meter/{site}[?from_ms=&to_ms=]`: readings whose interval
/// starts in `[from_ms, to_ms)` (default: the last 24 h), at most
/// [`MAX_POINTS`].
pub(crate) async fn series(
    State(node): State<AppState>,
    super::auth::Caller(caller): super::auth::Caller,
    Path(site): Path<String>,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SeriesView>, AppError> {
    let Query(q) = q.map_err(|e| {
        node.rejections.count(ROUTE, "bad_query");
        AppError::bad_request(e.body_text())
    })?;
    let site = node_id(&node, ROUTE, &site)?;
    super::auth::require_scope(&node, &caller, &site).await?;
    let to_ms = q.to_ms.unwrap_or_else(vpp_actors::now_ms);
    let from_ms = q.from_ms.unwrap_or(to_ms.saturating_sub(DEFAULT_SPAN_MS));
    if from_ms > to_ms {
        node.rejections.count(ROUTE, "bad_range");
        return Err(AppError::bad_request(format!(
            "from_ms {from_ms} is after to_ms {to_ms}"
        )));
    }
    match node.fleet().await?.node(&site) {
        Some((NodeKind::Site, _)) => {}
        Some(_) => {
            node.rejections.count(ROUTE, "not_a_site");
            return Err(AppError::bad_request(format!(
                "{site} is not a site; meter data are kept per site"
            )));
        }
        None => return Err(NodeError::UnknownNode(site).into()),
    }
    // Read at most MAX_POINTS + 1 intervals' worth (one more tells whether
    // the answer is whole), whatever range was asked for.
    let interval_ms = node.metering().interval_ms();
    let window_end = to_ms.min(from_ms.saturating_add((MAX_POINTS as u64 + 1) * interval_ms));
    let store = node.store().clone();
    let s = site.clone();
    let mut points =
        tokio::task::spawn_blocking(move || store.meter_range(&s, from_ms, window_end))
            .await
            .map_err(|e| {
                AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(NodeError::Store)?;
    let mut next_from_ms = points.keys().nth(MAX_POINTS).copied();
    match next_from_ms {
        Some(next) => {
            points.split_off(&next);
        }
        None if window_end < to_ms => next_from_ms = Some(window_end),
        None => {}
    }
    Ok(Json(SeriesView {
        site,
        interval_s: node.metering().interval_s(),
        from_ms,
        to_ms: next_from_ms.unwrap_or(to_ms),
        readings: points
            .into_iter()
            .map(|(start_ms, w)| ReadingView {
                start_ms,
                kw: w as f64 / 1000.0,
            })
            .collect(),
        truncated: next_from_ms.is_some(),
        next_from_ms,
    }))
}

#[cfg(test)]
mod tests;
