//! After an event: measurement and verification (baseline vs metered load
//! per participant), settlement statements, their approval, and
//! per-participant performance history.
//!
//! ```text
//!   meter tree (telemetry + CSV imports) ──► resource series (sum of its sites)
//!      ──► mv::compute(program.baseline, series, event window, prior event days)
//!      ──► Performance { committed, delivered kW / kWh, intervals }
//!      ──► settlement::settle(program.terms, performance) ──► Statement
//!   POST /events/{id}/settlement   → pending statements (proposer = first approver)
//!   POST /events/{id}/settlement/approve → approved at `programs.quorum`
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vpp_domain::account::{Account, Approvals, Need, Role};
use vpp_domain::meter::MeterSeries;
use vpp_domain::mv::{self, BaselineReport, Date, EventWindow};
use vpp_domain::program::{Event, EventStatus, ParticipationStatus, Program};
use vpp_domain::settlement::{self, ParticipantMetrics, Performance, Statement};
use vpp_domain::{AccountId, EnrollmentId, EventId, NodeId, ProgramId};

use super::catalog::{get_program, may_approve};
use super::enrollments::SiteIndex;
use super::events::get_event;
use super::{commit, draft, keys, now_ms, put, ProgramError, Result};
use crate::node::Node;

/// Where a statement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlementStatus {
    /// Computed, waiting for approvers.
    Pending,
    /// Approved by the quorum: payable.
    Approved,
}

/// One participant's settlement for one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettlementRecord {
    /// The event.
    pub event: EventId,
    /// The enrollment.
    pub enrollment: EnrollmentId,
    /// Its account (the payee).
    pub account: AccountId,
    /// The program.
    pub program: ProgramId,
    /// The program's terms version the statement used.
    pub terms_version: u32,
    /// Measured performance.
    pub performance: Performance,
    /// The statement.
    pub statement: Statement,
    /// Pending or approved.
    pub status: SettlementStatus,
    /// Who approved.
    pub approvals: Approvals,
    /// When computed, Unix ms.
    pub created_ms: u64,
    /// When approved, Unix ms.
    pub approved_ms: Option<u64>,
}

/// A participant's measured result for one event.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantPerformance {
    /// The enrollment.
    pub enrollment: String,
    /// Its account.
    pub account: String,
    /// Its resource.
    pub resource: String,
    /// Its answer.
    pub participation: ParticipationStatus,
    /// Committed, kW.
    pub committed_kw: f64,
    /// The baseline report (per interval: baseline, actual, delivered), or
    /// why there is none.
    pub report: std::result::Result<BaselineReport, String>,
}

/// The metered series of a resource: the sum of its sites, per interval;
/// an interval is present only when every site has it.
fn resource_series(node: &Node, sites: &[NodeId], from_ms: u64, to_ms: u64) -> Result<MeterSeries> {
    let interval_s = node.metering().interval_s();
    let mut sum: BTreeMap<u64, (i64, usize)> = BTreeMap::new();
    for s in sites {
        for (t, w) in node.store().meter_range(s, from_ms, to_ms)? {
            let e = sum.entry(t).or_insert((0, 0));
            e.0 += w;
            e.1 += 1;
        }
    }
    let points = sum
        .into_iter()
        .filter(|(_, (_, n))| *n == sites.len())
        .map(|(t, (w, _))| (t, w))
        .collect();
    Ok(MeterSeries { interval_s, points })
}

/// Local dates of the program's earlier events that called `resource`
/// (excluded from its baseline days).
fn prior_event_days(events: &[Event], p: &Program, e: &Event, resource: &NodeId) -> Vec<Date> {
    events
        .iter()
        .filter(|x| x.program == p.id && x.id != e.id && x.start_ms < e.start_ms)
        .filter(|x| matches!(x.status, EventStatus::Active | EventStatus::Completed))
        .filter(|x| x.participants.iter().any(|q| &q.resource == resource))
        .map(|x| Date::from_unix_ms(x.start_ms, p.utc_offset_min))
        .collect()
}

/// What a report says of a commitment, for the settlement.
fn performance_of(r: &BaselineReport, committed_w: u64) -> Performance {
    Performance {
        committed_w,
        avg_delivered_w: r.avg_delivered_w.unwrap_or(0),
        delivered_wh: r.delivered_wh,
        measured_intervals: r.measured_intervals,
        missing_intervals: r.missing_intervals,
    }
}

/// How far back a baseline may look, ms (the longest lookback of any method
/// plus a day).
const LOOKBACK_MS: u64 = (mv::MAX_LOOKBACK_DAYS as u64 + 2) * 86_400_000;

/// Computes `resource`'s baseline report for event `e` of program `p`.
async fn report(
    node: &Node,
    index: &SiteIndex,
    events: &[Event],
    p: &Program,
    e: &Event,
    resource: &NodeId,
) -> std::result::Result<BaselineReport, String> {
    let sites = index.sites_under(resource);
    if sites.is_empty() {
        return Err(format!("{resource} has no sites"));
    }
    let from = e.start_ms.saturating_sub(LOOKBACK_MS);
    let to = e.end_ms().saturating_add(86_400_000);
    let series = resource_series(node, &sites, from, to).map_err(|x| x.to_string())?;
    let excluded = prior_event_days(events, p, e, resource);
    let window = EventWindow {
        start_ms: e.start_ms,
        end_ms: e.end_ms(),
        utc_offset_min: p.utc_offset_min,
    };
    mv::compute(&p.baseline, &series, &window, &excluded).map_err(|x| x.to_string())
}

/// Expected average load of `resource` over event `e` without it, W: the
/// baseline's mean (for confirmations; meter data before the event only).
pub(crate) async fn expected_baseline_w(
    node: &Node,
    p: &Program,
    e: &Event,
    resource: &NodeId,
) -> std::result::Result<i64, String> {
    let index = SiteIndex::load(node).await.map_err(|x| x.to_string())?;
    let events: Vec<Event> = node
        .store()
        .registry_scan("event/")
        .map_err(|x| x.to_string())?;
    let r = report(node, &index, &events, p, e, resource).await?;
    Ok(r.avg_baseline_w)
}

fn may_read_results(caller: &Account, p: &Program) -> bool {
    caller.role == Role::Operator || caller.id == p.owner
}

/// M&V of every participant of an event: operators and the program's
/// utility see all, participants their own.
pub async fn performance(
    node: &Arc<Node>,
    caller: &Account,
    id: &str,
) -> Result<Vec<ParticipantPerformance>> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let e = get_event(node, id)?;
    let p = get_program(node.store(), e.program.as_str())?;
    let all = may_read_results(caller, &p);
    if !all && !e.participants.iter().any(|x| x.account == caller.id) {
        return Err(ProgramError::Forbidden(format!(
            "event {id} is not visible to {}",
            caller.id
        )));
    }
    let index = SiteIndex::load(node).await?;
    let events: Vec<Event> = node.store().registry_scan("event/")?;
    let mut out = Vec::new();
    for part in &e.participants {
        if !all && part.account != caller.id {
            continue;
        }
        let r = report(node, &index, &events, &p, &e, &part.resource).await;
        out.push(ParticipantPerformance {
            enrollment: part.enrollment.to_string(),
            account: part.account.to_string(),
            resource: part.resource.to_string(),
            participation: part.status,
            committed_kw: part.committed_w as f64 / 1000.0,
            report: r,
        });
    }
    Ok(out)
}

/// Computes the statements of a completed event (the program's utility or
/// an operator); they wait for `programs.quorum` approvers.
pub async fn settle_event(
    node: &Arc<Node>,
    caller: &Account,
    id: &str,
) -> Result<Vec<SettlementRecord>> {
    let _g = node.programs().lock.lock().await;
    let e = get_event(node, id)?;
    let p = get_program(node.store(), e.program.as_str())?;
    may_approve(caller, &p)?;
    if caller.role == Role::Utility && caller.id != p.owner {
        return Err(ProgramError::Forbidden(format!(
            "program {} belongs to {}",
            p.id, p.owner
        )));
    }
    if e.status != EventStatus::Completed {
        return Err(ProgramError::Conflict(format!(
            "event {id} is {:?}; settle it once completed",
            e.status
        )));
    }
    let existing: Vec<SettlementRecord> =
        node.store().registry_scan(&format!("settlement/{id}/"))?;
    if !existing.is_empty() {
        return Err(ProgramError::Conflict(format!(
            "event {id} is already settled ({} statements)",
            existing.len()
        )));
    }
    let index = SiteIndex::load(node).await?;
    let events: Vec<Event> = node.store().registry_scan("event/")?;
    let now = now_ms();
    let mut records = Vec::new();
    let mut problems = Vec::new();
    for part in &e.participants {
        if part.status != ParticipationStatus::Confirmed || part.committed_w == 0 {
            continue;
        }
        match report(node, &index, &events, &p, &e, &part.resource).await {
            Ok(r) => {
                let perf = performance_of(&r, part.committed_w);
                records.push(SettlementRecord {
                    event: e.id.clone(),
                    enrollment: part.enrollment.clone(),
                    account: part.account.clone(),
                    program: p.id.clone(),
                    terms_version: p.terms_version,
                    statement: settlement::settle(&p.terms, &perf),
                    performance: perf,
                    status: SettlementStatus::Pending,
                    approvals: Approvals::proposed(node.programs().quorum, caller.id.clone()),
                    created_ms: now,
                    approved_ms: None,
                });
            }
            Err(why) => problems.push(format!("{}: {why}", part.enrollment)),
        }
    }
    if !problems.is_empty() {
        return Err(ProgramError::Invalid(problems));
    }
    for r in &mut records {
        if r.approvals.complete() {
            r.status = SettlementStatus::Approved;
            r.approved_ms = Some(now);
        }
    }
    let changes = records
        .iter()
        .map(|r| put(keys::settlement(&r.event, &r.enrollment), r))
        .collect::<Result<Vec<_>>>()?;
    commit(
        node,
        changes,
        draft(
            caller,
            "settlement.compute",
            keys::event(&e.id),
            format!("{} statements", records.len()),
        ),
    )
    .await?;
    Ok(records)
}

/// Approves every pending statement of an event; at quorum they are
/// approved.
pub async fn approve(
    node: &Arc<Node>,
    caller: &Account,
    id: &str,
) -> Result<Vec<SettlementRecord>> {
    let _g = node.programs().lock.lock().await;
    let e = get_event(node, id)?;
    let p = get_program(node.store(), e.program.as_str())?;
    may_approve(caller, &p)?;
    let mut records: Vec<SettlementRecord> =
        node.store().registry_scan(&format!("settlement/{id}/"))?;
    if records.is_empty() {
        return Err(ProgramError::Conflict(format!(
            "event {id} has no statements yet: POST /api/v1/events/{id}/settlement first"
        )));
    }
    let now = now_ms();
    let mut changed = Vec::new();
    for r in &mut records {
        if r.status == SettlementStatus::Approved {
            continue;
        }
        r.approvals
            .add(caller.id.clone())
            .map_err(ProgramError::Forbidden)?;
        if r.approvals.complete() {
            r.status = SettlementStatus::Approved;
            r.approved_ms = Some(now);
        }
        changed.push(put(keys::settlement(&r.event, &r.enrollment), r)?);
    }
    if changed.is_empty() {
        return Ok(records);
    }
    commit(
        node,
        changed,
        draft(
            caller,
            "settlement.approve",
            keys::event(&e.id),
            String::new(),
        ),
    )
    .await?;
    Ok(records)
}

/// Statements the caller may see: operators all, utilities those of their
/// programs, others their own. Optionally of one event or account.
pub fn list(
    node: &Node,
    caller: &Account,
    event: Option<&str>,
    account: Option<&str>,
) -> Result<Vec<SettlementRecord>> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let prefix = match event {
        Some(e) => format!("settlement/{e}/"),
        None => "settlement/".to_string(),
    };
    let all: Vec<SettlementRecord> = node.store().registry_scan(&prefix)?;
    let programs: Vec<Program> = node.store().registry_scan("program/")?;
    Ok(all
        .into_iter()
        .filter(|r| account.is_none_or(|a| r.account.as_str() == a))
        .filter(|r| {
            caller.role == Role::Operator
                || r.account == caller.id
                || programs
                    .iter()
                    .any(|p| p.id == r.program && p.owner == caller.id)
        })
        .collect())
}

/// A participant's performance history from its approved statements.
pub fn metrics(node: &Node, caller: &Account, account: &str) -> Result<ParticipantMetrics> {
    super::accounts::get_account(node.store(), account)?;
    if caller.role != Role::Operator && caller.id.as_str() != account {
        // Utilities see the metrics of participants in their programs.
        let mine: Vec<SettlementRecord> = list(node, caller, None, Some(account))?;
        if mine.is_empty() {
            return Err(ProgramError::Forbidden(format!(
                "{} may not read {account}'s metrics",
                caller.id
            )));
        }
    }
    let history: Vec<(Performance, Statement)> = list(node, caller, None, Some(account))?
        .into_iter()
        .filter(|r| r.status == SettlementStatus::Approved)
        .map(|r| (r.performance, r.statement))
        .collect();
    Ok(settlement::metrics(&history))
}
