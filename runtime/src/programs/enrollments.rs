//! Enrollments: a participant's or aggregator's resource in a program,
//! checked against the program's rules and against what the hierarchy says
//! the resource can do.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use vpp_domain::account::{Account, Need, Role};
use vpp_domain::program::{Enrollment, EnrollmentStatus, Program, ResourceFacts, Window};
use vpp_domain::units::kilo_to_unit;
use vpp_domain::{DerKind, EnrollmentId, NodeId, NodeKind, NodeSpec};

use super::accounts::owns;
use super::catalog::get_program;
use super::{commit, draft, keys, now_ms, put, ProgramError, Result};
use crate::node::{Node, NodeError};

/// Body of `POST /api/v1/enrollments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Unique id (default: `<program>.<resource>`).
    pub id: Option<String>,
    /// The program.
    pub program: String,
    /// The site or virtual DER.
    pub resource: String,
    /// Committed reduction, kW.
    pub committed_kw: f64,
    /// When available (default: always).
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Notice needed, s (default: the program's).
    pub notice_s: Option<u64>,
    /// Confirm every event automatically.
    #[serde(default)]
    pub auto_confirm: bool,
    /// Opt-outs per season without penalty (default 0).
    #[serde(default)]
    pub max_opt_outs_per_season: u32,
}

/// What the hierarchy says of a resource, with the upward flexibility of
/// each DER kind (so one lookup serves every program's kind filter).
#[derive(Debug, Clone)]
pub(crate) struct RawFacts {
    facts: ResourceFacts,
    up_by_kind: [u64; DerKind::COUNT],
    /// Its ancestors, nearest first (ownership is inherited).
    pub(crate) ancestors: Vec<NodeId>,
}

/// Site specs by id, loaded once for many lookups.
pub(crate) struct SiteIndex {
    sites: HashMap<NodeId, vpp_domain::SiteSpec>,
    ders: HashMap<NodeId, Vec<DerKind>>,
    /// Virtual DERs and sites under each virtual DER.
    children: HashMap<NodeId, Vec<NodeId>>,
}

impl SiteIndex {
    pub(crate) async fn load(node: &Node) -> Result<SiteIndex> {
        let h = node.hierarchy().await?;
        let mut ders: HashMap<NodeId, Vec<DerKind>> = HashMap::new();
        let mut sites = HashMap::new();
        let mut children: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for n in h.nodes() {
            match n {
                NodeSpec::Site(s) => {
                    children
                        .entry(s.parent.clone())
                        .or_default()
                        .push(s.id.clone());
                    sites.insert(s.id.clone(), s);
                }
                NodeSpec::Der(d) => ders.entry(d.site.clone()).or_default().push(d.rating.kind),
                NodeSpec::VirtualDer(v) => {
                    if let Some(p) = &v.parent {
                        children.entry(p.clone()).or_default().push(v.id.clone());
                    }
                }
            }
        }
        Ok(SiteIndex {
            sites,
            ders,
            children,
        })
    }

    /// The sites at or under `id`.
    pub(crate) fn sites_under(&self, id: &NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![id.clone()];
        while let Some(n) = stack.pop() {
            if self.sites.contains_key(&n) {
                out.push(n.clone());
            }
            if let Some(kids) = self.children.get(&n) {
                stack.extend(kids.iter().cloned());
            }
        }
        out.sort();
        out
    }
}

/// Facts of `resource` (a site or virtual DER) from the live fleet and the
/// stored hierarchy.
pub(crate) async fn resource_facts(
    node: &Node,
    resource: &str,
    index: Option<&SiteIndex>,
) -> Result<RawFacts> {
    let id = NodeId::new(resource).map_err(|e| ProgramError::invalid(format!("resource: {e}")))?;
    let fleet = node.fleet().await?;
    let Some((kind, _)) = fleet.node(&id) else {
        return Err(ProgramError::invalid(format!(
            "resource: {id} is not in the hierarchy"
        )));
    };
    if kind == NodeKind::Der {
        return Err(ProgramError::invalid(format!(
            "resource: {id} is a DER; enroll its site or a virtual DER"
        )));
    }
    let mut ancestors = Vec::new();
    let mut cur = id.clone();
    while let Some((_, Some(p))) = fleet.node(&cur) {
        ancestors.push(p.clone());
        cur = p.clone();
    }
    let view = fleet.view(&id).await.map_err(NodeError::from)?;
    let loaded;
    let index = match index {
        Some(i) => i,
        None => {
            loaded = SiteIndex::load(node).await?;
            &loaded
        }
    };
    let sites = index.sites_under(&id);
    let mut facts = ResourceFacts {
        id: id.clone(),
        zones: BTreeSet::new(),
        feeders: BTreeSet::new(),
        segments: BTreeSet::new(),
        kinds: BTreeSet::new(),
        sites: sites.clone(),
        locations: Vec::new(),
        up_w: 0,
    };
    for s in &sites {
        if let Some(spec) = index.sites.get(s) {
            facts.zones.insert(spec.location.zone.clone());
            facts.feeders.insert(spec.location.feeder.clone());
            facts.segments.insert(spec.segment);
            facts.locations.push((spec.location.lat, spec.location.lon));
        }
        for k in index.ders.get(s).into_iter().flatten() {
            facts.kinds.insert(*k);
        }
    }
    let mut up_by_kind = [0u64; DerKind::COUNT];
    for (i, k) in view.envelope.by_kind.iter().enumerate() {
        up_by_kind[i] = k.up_w;
    }
    Ok(RawFacts {
        facts,
        up_by_kind,
        ancestors,
    })
}

/// The facts as program `p` sees them: up_w of its eligible kinds only.
pub(crate) fn facts_for(raw: &RawFacts, p: &Program) -> ResourceFacts {
    let mut f = raw.facts.clone();
    f.up_w = DerKind::ALL
        .iter()
        .filter(|k| p.eligible_kind(**k))
        .map(|k| raw.up_by_kind[k.index()])
        .sum();
    f
}

pub(crate) fn get_enrollment(node: &Node, id: &str) -> Result<Enrollment> {
    node.store()
        .registry_get(&keys::enrollment(id))?
        .ok_or_else(|| ProgramError::NotFound(format!("no enrollment {id}")))
}

/// Enrolls a resource: participants and aggregators their own resources,
/// operators any.
pub async fn enroll(node: &Arc<Node>, caller: &Account, req: EnrollRequest) -> Result<Enrollment> {
    caller
        .require(Need::Roles(&[
            Role::Operator,
            Role::Aggregator,
            Role::Participant,
        ]))
        .map_err(ProgramError::Forbidden)?;
    let store = node.store();
    let program = get_program(store, &req.program)
        .map_err(|_| ProgramError::invalid(format!("program: no program {}", req.program)))?;
    let index = SiteIndex::load(node).await?;
    let raw = resource_facts(node, &req.resource, Some(&index)).await?;
    let resource = raw.facts.id.clone();
    if !owns(caller, &resource, &raw.ancestors) {
        return Err(ProgramError::Forbidden(format!(
            "{} does not own {resource}",
            caller.id
        )));
    }
    let committed_w = kilo_to_unit(req.committed_kw)
        .map_err(|e| ProgramError::invalid(format!("committed_kw: {e}")))?;
    let id = match &req.id {
        Some(s) => EnrollmentId::new(s),
        None => EnrollmentId::new(format!("{}.{}", program.id, resource)),
    }
    .map_err(|e| ProgramError::invalid(format!("id: {e}")))?;
    let e = Enrollment {
        id: id.clone(),
        program: program.id.clone(),
        resource: resource.clone(),
        account: caller.id.clone(),
        committed_w,
        windows: req.windows,
        notice_s: req.notice_s.unwrap_or(program.notice_s),
        auto_confirm: req.auto_confirm,
        max_opt_outs_per_season: req.max_opt_outs_per_season,
        status: EnrollmentStatus::Active,
        created_ms: now_ms(),
    };
    e.check(&program, &facts_for(&raw, &program))
        .map_err(ProgramError::Invalid)?;
    let _g = node.programs().lock.lock().await;
    if store
        .registry_get::<Enrollment>(&keys::enrollment(&id))?
        .is_some()
    {
        return Err(ProgramError::Conflict(format!("enrollment {id} exists")));
    }
    // A site counts once per program: no two active enrollments of one
    // program may share a site (a site and the aggregate above it, say),
    // or its reduction would be paid twice.
    let all: Vec<Enrollment> = store.registry_scan("enrollment/")?;
    let mine: std::collections::HashSet<&NodeId> = raw.facts.sites.iter().collect();
    for x in all
        .iter()
        .filter(|x| x.status == EnrollmentStatus::Active && x.program == e.program)
    {
        let theirs = index.sites_under(&x.resource);
        let shared: Vec<&NodeId> = theirs.iter().filter(|s| mine.contains(s)).collect();
        if !shared.is_empty() {
            return Err(ProgramError::Conflict(format!(
                "{resource} shares site(s) {} with enrollment {} ({}) in {}; a site is enrolled once per program",
                shared
                    .iter()
                    .take(5)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                x.id,
                x.resource,
                e.program
            )));
        }
    }
    commit(
        node,
        vec![put(keys::enrollment(&id), &e)?],
        draft(
            caller,
            "enrollment.create",
            keys::enrollment(&id),
            format!(
                "{resource} in {} for {} kW",
                e.program,
                committed_w as f64 / 1000.0
            ),
        ),
    )
    .await?;
    watch_enrolled_sites(node).await;
    Ok(e)
}

/// Whether `caller` may see or change enrollment `e`.
pub(crate) fn may_see(caller: &Account, e: &Enrollment, program: Option<&Program>) -> bool {
    caller.role == Role::Operator
        || caller.id == e.account
        || program.is_some_and(|p| p.owner == caller.id)
}

/// Enrollments the caller may see: operators all, utilities those of their
/// programs, others their own.
pub fn list(node: &Node, caller: &Account) -> Result<Vec<Enrollment>> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let store = node.store();
    let all: Vec<Enrollment> = store.registry_scan("enrollment/")?;
    let programs: Vec<Program> = store.registry_scan("program/")?;
    Ok(all
        .into_iter()
        .filter(|e| {
            let p = programs.iter().find(|p| p.id == e.program);
            may_see(caller, e, p)
        })
        .collect())
}

/// One enrollment, if the caller may see it.
pub fn get(node: &Node, caller: &Account, id: &str) -> Result<Enrollment> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let e = get_enrollment(node, id)?;
    let p = get_program(node.store(), e.program.as_str()).ok();
    if !may_see(caller, &e, p.as_ref()) {
        return Err(ProgramError::Forbidden(format!(
            "enrollment {id} is not {}'s",
            caller.id
        )));
    }
    Ok(e)
}

/// Leaves a program (the enrolling account or an operator).
pub async fn cancel(node: &Arc<Node>, caller: &Account, id: &str) -> Result<Enrollment> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let _g = node.programs().lock.lock().await;
    let mut e = get_enrollment(node, id)?;
    if caller.role != Role::Operator && caller.id != e.account {
        return Err(ProgramError::Forbidden(format!(
            "enrollment {id} is not {}'s",
            caller.id
        )));
    }
    if e.status == EnrollmentStatus::Cancelled {
        return Ok(e);
    }
    e.status = EnrollmentStatus::Cancelled;
    commit(
        node,
        vec![put(keys::enrollment(&e.id), &e)?],
        draft(
            caller,
            "enrollment.cancel",
            keys::enrollment(&e.id),
            String::new(),
        ),
    )
    .await?;
    drop(_g);
    watch_enrolled_sites(node).await;
    Ok(e)
}

/// Tells metering which sites to meter: those under active enrollments
/// (with `metering.sites = "enrolled"`, the default).
pub(crate) async fn watch_enrolled_sites(node: &Node) {
    let enrollments: Vec<Enrollment> = match node.store().registry_scan("enrollment/") {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "reading enrollments for metering failed");
            return;
        }
    };
    let active: Vec<&Enrollment> = enrollments
        .iter()
        .filter(|e| e.status == EnrollmentStatus::Active)
        .collect();
    let mut sites = std::collections::HashSet::new();
    if !active.is_empty() {
        match SiteIndex::load(node).await {
            Ok(index) => {
                for e in active {
                    sites.extend(index.sites_under(&e.resource));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading the hierarchy for metering failed");
                return;
            }
        }
    }
    node.metering().watch(sites);
}
