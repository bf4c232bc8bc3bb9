//! Programs: publishing, discovery, and changes of terms (which need a
//! second approver).

use std::sync::Arc;

use serde::Deserialize;
use vpp_domain::account::{Account, Approvals, Need, Role};
use vpp_domain::mv::BaselineSpec;
use vpp_domain::program::{Area, PendingTerms, Program, ProgramKind, ProgramQuery, Season};
use vpp_domain::settlement::IncentiveTerms;
use vpp_domain::units::kilo_to_unit;
use vpp_domain::{DerKind, ProgramId, Segment};
use vpp_store::Store;

use super::{commit, draft, keys, now_ms, put, ProgramError, Result};
use crate::node::Node;

/// Body of `POST /api/v1/programs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramRequest {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// capacity, economic or emergency.
    pub kind: ProgramKind,
    /// Zones it runs in (within the utility's jurisdiction).
    pub zones: Vec<String>,
    /// Areas for searches by lat/lon.
    #[serde(default)]
    pub coverage: Vec<Area>,
    /// Eligible segments (default all).
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// Eligible DER kinds (default all).
    #[serde(default)]
    pub kinds: Vec<DerKind>,
    /// Smallest commitment, kW.
    #[serde(default)]
    pub min_kw: f64,
    /// Payments and penalties.
    pub terms: IncentiveTerms,
    /// Least notice before an event, s.
    pub notice_s: u64,
    /// Most events per season.
    pub max_events_per_season: u32,
    /// Most event hours per season.
    pub max_hours_per_season: u32,
    /// Longest event, s.
    pub max_event_duration_s: u64,
    /// The season (default: from now for a year).
    pub season: Option<Season>,
    /// Local time offset, minutes (default 0).
    #[serde(default)]
    pub utc_offset_min: i32,
    /// How performance is measured.
    pub baseline: BaselineSpec,
}

/// Query of `GET /api/v1/programs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Runs in this zone.
    pub zone: Option<String>,
    /// Covers this latitude (with `lon`).
    pub lat: Option<f64>,
    /// Covers this longitude (with `lat`).
    pub lon: Option<f64>,
    /// Accepts this much, kW.
    pub capacity_kw: Option<f64>,
    /// Takes this segment.
    pub segment: Option<Segment>,
    /// Takes this DER kind.
    pub kind: Option<DerKind>,
    /// Everything the given resource (site or virtual DER) qualifies for:
    /// its zones, segments, kinds and capacity.
    pub resource: Option<String>,
}

/// Body of `PUT /api/v1/programs/{id}/terms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermsRequest {
    /// The new terms.
    pub terms: IncentiveTerms,
}

pub(crate) fn get_program(store: &Store, id: &str) -> Result<Program> {
    store
        .registry_get(&keys::program(id))?
        .ok_or_else(|| ProgramError::NotFound(format!("no program {id}")))
}

/// Publishes a program: a verified utility, in its jurisdiction.
pub async fn create_program(
    node: &Arc<Node>,
    caller: &Account,
    req: ProgramRequest,
) -> Result<Program> {
    caller
        .require(Need::VerifiedUtility)
        .map_err(ProgramError::Forbidden)?;
    if caller.role != Role::Utility {
        return Err(ProgramError::Forbidden(format!(
            "programs are published by utilities; {} is a {}",
            caller.id, caller.role
        )));
    }
    caller
        .covers_zones(&req.zones)
        .map_err(ProgramError::Forbidden)?;
    let id = ProgramId::new(&req.id).map_err(|e| ProgramError::invalid(format!("id: {e}")))?;
    let min_w =
        kilo_to_unit(req.min_kw).map_err(|e| ProgramError::invalid(format!("min_kw: {e}")))?;
    let now = now_ms();
    let p = Program {
        id: id.clone(),
        name: req.name,
        kind: req.kind,
        owner: caller.id.clone(),
        zones: req.zones,
        coverage: req.coverage,
        segments: req.segments,
        kinds: req.kinds,
        min_w,
        terms: req.terms,
        notice_s: req.notice_s,
        max_events_per_season: req.max_events_per_season,
        max_hours_per_season: req.max_hours_per_season,
        max_event_duration_s: req.max_event_duration_s,
        season: req.season.unwrap_or(Season {
            start_ms: now,
            end_ms: now + 365 * 24 * 3600 * 1000,
        }),
        utc_offset_min: req.utc_offset_min,
        baseline: req.baseline,
        pending_terms: None,
        terms_version: 1,
        created_ms: now,
    };
    p.validate().map_err(ProgramError::invalid)?;
    let store = node.store();
    let _g = node.programs().lock.lock().await;
    if store
        .registry_get::<Program>(&keys::program(&id))?
        .is_some()
    {
        return Err(ProgramError::Conflict(format!("program {id} exists")));
    }
    commit(
        node,
        vec![put(keys::program(&id), &p)?],
        draft(
            caller,
            "program.publish",
            keys::program(&id),
            format!("{:?} in {}", p.kind, p.zones.join(",")),
        ),
    )
    .await?;
    Ok(p)
}

/// Discovery: programs matching a search, any signed-in account.
pub async fn search(node: &Arc<Node>, caller: &Account, q: SearchRequest) -> Result<Vec<Program>> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let mut query = ProgramQuery {
        zone: q.zone,
        segment: q.segment,
        kind: q.kind,
        ..ProgramQuery::default()
    };
    match (q.lat, q.lon) {
        (Some(lat), Some(lon)) => {
            if !(lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0) {
                return Err(ProgramError::invalid("lat/lon: not a place on Earth"));
            }
            query.lat_lon = Some((lat, lon));
        }
        (None, None) => {}
        _ => return Err(ProgramError::invalid("give lat and lon together")),
    }
    if let Some(kw) = q.capacity_kw {
        query.capacity_w =
            Some(kilo_to_unit(kw).map_err(|e| ProgramError::invalid(format!("capacity_kw: {e}")))?);
    }
    let all: Vec<Program> = node.store().registry_scan("program/")?;
    let Some(resource) = q.resource else {
        return Ok(all.into_iter().filter(|p| p.matches(&query)).collect());
    };
    // By resource: every program it could enroll in.
    let facts = super::enrollments::resource_facts(node, &resource, None).await?;
    Ok(all
        .into_iter()
        .filter(|p| p.matches(&query))
        .filter(|p| {
            let f = super::enrollments::facts_for(&facts, p);
            p.check_resource(&f).is_ok() && f.up_w >= p.min_w
        })
        .collect())
}

/// One program, any signed-in account.
pub fn get(node: &Node, caller: &Account, id: &str) -> Result<Program> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    get_program(node.store(), id)
}

/// Whether `caller` may approve a critical action on `p`: an operator, or
/// the program's own (verified) utility within its jurisdiction. Another
/// utility of the same zones may not: it has no stake in this program's
/// terms, events or payments.
pub(crate) fn may_approve(caller: &Account, p: &Program) -> Result<()> {
    caller
        .require(Need::VerifiedUtility)
        .map_err(ProgramError::Forbidden)?;
    if caller.role == Role::Utility && caller.id != p.owner {
        return Err(ProgramError::Forbidden(format!(
            "program {} belongs to {}; {} may not approve its actions",
            p.id, p.owner, caller.id
        )));
    }
    caller
        .covers_zones(&p.zones)
        .map_err(ProgramError::Forbidden)
}

/// Proposes new terms (the program's utility or an operator); they apply
/// once `auth.quorum` distinct accounts have approved.
pub async fn propose_terms(
    node: &Arc<Node>,
    caller: &Account,
    id: &str,
    req: TermsRequest,
) -> Result<Program> {
    let store = node.store();
    let _g = node.programs().lock.lock().await;
    let mut p = get_program(store, id)?;
    may_approve(caller, &p)?;
    req.terms
        .validate()
        .map_err(|e| ProgramError::invalid(format!("terms: {e}")))?;
    if p.pending_terms.is_some() {
        return Err(ProgramError::Conflict(format!(
            "program {id} already has a change of terms waiting for approval"
        )));
    }
    let approvals = Approvals::proposed(node.programs().quorum, caller.id.clone());
    let action = if approvals.complete() {
        p.terms = req.terms;
        p.terms_version += 1;
        "program.terms_change"
    } else {
        p.pending_terms = Some(PendingTerms {
            terms: req.terms,
            approvals,
            proposed_ms: now_ms(),
        });
        "program.terms_propose"
    };
    commit(
        node,
        vec![put(keys::program(&p.id), &p)?],
        draft(caller, action, keys::program(&p.id), String::new()),
    )
    .await?;
    Ok(p)
}

/// Approves a pending change of terms; applies it at quorum.
pub async fn approve_terms(node: &Arc<Node>, caller: &Account, id: &str) -> Result<Program> {
    let store = node.store();
    let _g = node.programs().lock.lock().await;
    let mut p = get_program(store, id)?;
    may_approve(caller, &p)?;
    let Some(mut pending) = p.pending_terms.take() else {
        return Err(ProgramError::Conflict(format!(
            "program {id} has no change of terms waiting"
        )));
    };
    pending
        .approvals
        .add(caller.id.clone())
        .map_err(ProgramError::Forbidden)?;
    let action = if pending.approvals.complete() {
        p.terms = pending.terms;
        p.terms_version += 1;
        "program.terms_change"
    } else {
        p.pending_terms = Some(pending);
        "program.terms_approve"
    };
    commit(
        node,
        vec![put(keys::program(&p.id), &p)?],
        draft(caller, action, keys::program(&p.id), String::new()),
    )
    .await?;
    Ok(p)
}
