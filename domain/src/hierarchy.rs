//! The hierarchy: virtual DERs over sites over DERs, and its validation.
//!
//! ```text
//!   VirtualDer (root, exactly one, no parent)
//!    ├─ VirtualDer ─ … any depth …
//!    │   └─ Site ─┬─ Der
//!    │            └─ Der
//!    └─ Site ── Der
//! ```
//!
//! Rules ([`Hierarchy::validate`]): ids unique across all nodes; exactly one
//! root; a virtual DER's parent is a virtual DER, a site's parent is a virtual
//! DER, a DER's site is a site; no cycles; ratings, coordinates and names are
//! sane. Validation reports every problem it finds (up to a limit), each naming
//! the id, so a file with several mistakes is fixed in one round.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use serde::{Deserialize, Serialize};

use crate::dispatch::Strategy;
use crate::id::NodeId;
use crate::site::{Location, Segment};
use crate::DerRating;

/// Most problems one validation reports.
pub const MAX_REPORTED_ERRORS: usize = 50;
/// Deepest hierarchy accepted (root = depth 1, DERs included).
pub const MAX_DEPTH: usize = 32;
/// Longest name or owner accepted, bytes.
pub const MAX_NAME_LEN: usize = 128;

/// What kind of node an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// An aggregate of sites and/or other virtual DERs.
    VirtualDer,
    /// A site holding DERs.
    Site,
    /// A device.
    Der,
}

impl NodeKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::VirtualDer => "virtual_der",
            NodeKind::Site => "site",
            NodeKind::Der => "der",
        }
    }
}

/// A virtual DER: an aggregate defined by an aggregator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualDerSpec {
    /// Unique id.
    pub id: NodeId,
    /// Human name.
    pub name: String,
    /// The enclosing virtual DER; `None` for the root.
    pub parent: Option<NodeId>,
    /// How orders are split among the children.
    pub strategy: Strategy,
}

/// A site: one grid connection with DERs behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSpec {
    /// Unique id.
    pub id: NodeId,
    /// Human name.
    pub name: String,
    /// The virtual DER the site belongs to.
    pub parent: NodeId,
    /// Where it is.
    pub location: Location,
    /// Customer segment.
    pub segment: Segment,
    /// Who owns it.
    pub owner: String,
    /// How orders are split among its DERs.
    pub strategy: Strategy,
}

/// A DER at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerSpec {
    /// Unique id.
    pub id: NodeId,
    /// Human name.
    pub name: String,
    /// The site it is at.
    pub site: NodeId,
    /// Nameplate and constraints.
    pub rating: DerRating,
}

/// Any node, as stored one record per id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeSpec {
    /// A virtual DER.
    VirtualDer(VirtualDerSpec),
    /// A site.
    Site(SiteSpec),
    /// A DER.
    Der(DerSpec),
}

impl NodeSpec {
    /// The node's id.
    pub fn id(&self) -> &NodeId {
        match self {
            NodeSpec::VirtualDer(v) => &v.id,
            NodeSpec::Site(s) => &s.id,
            NodeSpec::Der(d) => &d.id,
        }
    }

    /// The node's parent (`None` only for the root).
    pub fn parent(&self) -> Option<&NodeId> {
        match self {
            NodeSpec::VirtualDer(v) => v.parent.as_ref(),
            NodeSpec::Site(s) => Some(&s.parent),
            NodeSpec::Der(d) => Some(&d.site),
        }
    }

    /// What kind of node it is.
    pub fn kind(&self) -> NodeKind {
        match self {
            NodeSpec::VirtualDer(_) => NodeKind::VirtualDer,
            NodeSpec::Site(_) => NodeKind::Site,
            NodeSpec::Der(_) => NodeKind::Der,
        }
    }
}

/// One problem found in a hierarchy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HierarchyError {
    /// Two nodes share an id.
    #[error("duplicate id {id}: ids must be unique across virtual DERs, sites and DERs")]
    DuplicateId {
        /// The id.
        id: NodeId,
    },
    /// A parent id that no node has.
    #[error("{id}: parent {parent} does not exist")]
    UnknownParent {
        /// The child.
        id: NodeId,
        /// The missing parent.
        parent: NodeId,
    },
    /// A parent of the wrong kind (a site under a DER, …).
    #[error(
        "{id}: a {kind} cannot be under {parent}, which is a {parent_kind} (expected a {expected})"
    )]
    WrongParentKind {
        /// The child.
        id: NodeId,
        /// The child's kind.
        kind: &'static str,
        /// The parent.
        parent: NodeId,
        /// The parent's kind.
        parent_kind: &'static str,
        /// What the parent should be.
        expected: &'static str,
    },
    /// Virtual DERs that are their own ancestors.
    #[error("{id}: cycle in parents: {}", path.iter().map(NodeId::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// A node on the cycle.
        id: NodeId,
        /// The cycle, starting and ending at `id`.
        path: Vec<NodeId>,
    },
    /// No virtual DER without a parent.
    #[error("no root: exactly one virtual DER must have no parent")]
    NoRoot,
    /// More than one virtual DER without a parent.
    #[error("{id}: more than one root ({}): exactly one virtual DER may have no parent", others.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", "))]
    MultipleRoots {
        /// The second root found.
        id: NodeId,
        /// All roots.
        others: Vec<NodeId>,
    },
    /// Too deep.
    #[error("{id}: hierarchy is deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// A node past the limit.
        id: NodeId,
    },
    /// A field with a bad value.
    #[error("{id}: {field}: {reason}")]
    BadField {
        /// The node.
        id: NodeId,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The rest was not reported.
    #[error("… and more problems (only the first {MAX_REPORTED_ERRORS} are listed)")]
    TooMany,
}

impl HierarchyError {
    /// The node the problem is about, if any.
    pub fn id(&self) -> Option<&NodeId> {
        match self {
            HierarchyError::DuplicateId { id }
            | HierarchyError::UnknownParent { id, .. }
            | HierarchyError::WrongParentKind { id, .. }
            | HierarchyError::Cycle { id, .. }
            | HierarchyError::MultipleRoots { id, .. }
            | HierarchyError::TooDeep { id }
            | HierarchyError::BadField { id, .. } => Some(id),
            HierarchyError::NoRoot | HierarchyError::TooMany => None,
        }
    }
}

/// A whole hierarchy, as written in a file or stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// Aggregates.
    pub virtual_ders: Vec<VirtualDerSpec>,
    /// Sites.
    pub sites: Vec<SiteSpec>,
    /// Devices.
    pub ders: Vec<DerSpec>,
}

/// The shape of a validated hierarchy: who is under whom, in file order.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// The root virtual DER.
    pub root: Option<NodeId>,
    /// Children of every virtual DER and site, in file order.
    pub children: HashMap<NodeId, Vec<NodeId>>,
    /// Kind of every node.
    pub kinds: HashMap<NodeId, NodeKind>,
    /// Number of levels, root = 1.
    pub depth: usize,
}

impl Topology {
    /// Children of `id` (empty for DERs and unknown ids).
    pub fn children_of(&self, id: &NodeId) -> &[NodeId] {
        self.children.get(id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `id` and every node under it, parents before children.
    pub fn subtree(&self, id: &NodeId) -> Vec<NodeId> {
        let mut out = vec![id.clone()];
        let mut i = 0;
        while i < out.len() {
            let kids = self.children_of(&out[i]).to_vec();
            out.extend(kids);
            i += 1;
        }
        out
    }
}

struct Errors(Vec<HierarchyError>);

impl Errors {
    fn push(&mut self, e: HierarchyError) {
        if self.0.len() < MAX_REPORTED_ERRORS {
            self.0.push(e);
        } else if self.0.last() != Some(&HierarchyError::TooMany) {
            self.0.push(HierarchyError::TooMany);
        }
    }
}

fn check_name(errs: &mut Errors, id: &NodeId, field: &'static str, v: &str) {
    if v.len() > MAX_NAME_LEN || v.chars().any(char::is_control) {
        errs.push(HierarchyError::BadField {
            id: id.clone(),
            field,
            reason: format!("must be at most {MAX_NAME_LEN} printable characters"),
        });
    }
}

impl Hierarchy {
    /// Number of nodes of all kinds.
    pub fn len(&self) -> usize {
        self.virtual_ders.len() + self.sites.len() + self.ders.len()
    }

    /// True when there are no nodes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every node as a [`NodeSpec`], virtual DERs first, then sites, then DERs.
    pub fn nodes(&self) -> impl Iterator<Item = NodeSpec> + '_ {
        self.virtual_ders
            .iter()
            .cloned()
            .map(NodeSpec::VirtualDer)
            .chain(self.sites.iter().cloned().map(NodeSpec::Site))
            .chain(self.ders.iter().cloned().map(NodeSpec::Der))
    }

    /// Every node's id: virtual DERs, sites, DERs.
    pub fn nodes_ids(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.virtual_ders
            .iter()
            .map(|v| &v.id)
            .chain(self.sites.iter().map(|s| &s.id))
            .chain(self.ders.iter().map(|d| &d.id))
    }

    /// Rebuilds a hierarchy from stored records (any order).
    pub fn from_nodes(nodes: impl IntoIterator<Item = NodeSpec>) -> Self {
        let mut h = Hierarchy::default();
        for n in nodes {
            h.push(n);
        }
        h
    }

    /// Adds one node (not validated).
    pub fn push(&mut self, node: NodeSpec) {
        match node {
            NodeSpec::VirtualDer(v) => self.virtual_ders.push(v),
            NodeSpec::Site(s) => self.sites.push(s),
            NodeSpec::Der(d) => self.ders.push(d),
        }
    }

    /// Removes `ids` (all kinds). Returns how many were removed.
    pub fn remove<S: std::hash::BuildHasher>(
        &mut self,
        ids: &std::collections::HashSet<NodeId, S>,
    ) -> usize {
        let before = self.len();
        self.virtual_ders.retain(|v| !ids.contains(&v.id));
        self.sites.retain(|s| !ids.contains(&s.id));
        self.ders.retain(|d| !ids.contains(&d.id));
        before - self.len()
    }

    /// Checks every rule in the module docs. On success returns the
    /// [`Topology`]; otherwise every problem found (at most
    /// [`MAX_REPORTED_ERRORS`]).
    pub fn validate(&self) -> Result<Topology, Vec<HierarchyError>> {
        let mut errs = Errors(Vec::new());
        let mut kinds: HashMap<NodeId, NodeKind> =
            HashMap::with_capacity_and_hasher(self.len(), Default::default());
        let mut seen_dup = HashSet::default();
        let mut note = |id: &NodeId, k: NodeKind, errs: &mut Errors| {
            if kinds.insert(id.clone(), k).is_some() && seen_dup.insert(id.clone()) {
                errs.push(HierarchyError::DuplicateId { id: id.clone() });
            }
        };
        for v in &self.virtual_ders {
            note(&v.id, NodeKind::VirtualDer, &mut errs);
        }
        for s in &self.sites {
            note(&s.id, NodeKind::Site, &mut errs);
        }
        for d in &self.ders {
            note(&d.id, NodeKind::Der, &mut errs);
        }

        let check_parent = |id: &NodeId,
                            kind: NodeKind,
                            parent: &NodeId,
                            expected: NodeKind,
                            errs: &mut Errors| {
            match kinds.get(parent) {
                None => errs.push(HierarchyError::UnknownParent {
                    id: id.clone(),
                    parent: parent.clone(),
                }),
                Some(pk) if *pk != expected => errs.push(HierarchyError::WrongParentKind {
                    id: id.clone(),
                    kind: kind.as_str(),
                    parent: parent.clone(),
                    parent_kind: pk.as_str(),
                    expected: expected.as_str(),
                }),
                Some(_) => {}
            }
        };

        let mut roots = Vec::new();
        for v in &self.virtual_ders {
            check_name(&mut errs, &v.id, "name", &v.name);
            match &v.parent {
                None => roots.push(v.id.clone()),
                Some(p) => check_parent(
                    &v.id,
                    NodeKind::VirtualDer,
                    p,
                    NodeKind::VirtualDer,
                    &mut errs,
                ),
            }
        }
        for s in &self.sites {
            check_name(&mut errs, &s.id, "name", &s.name);
            check_name(&mut errs, &s.id, "owner", &s.owner);
            if let Err(reason) = s.location.validate() {
                errs.push(HierarchyError::BadField {
                    id: s.id.clone(),
                    field: "location",
                    reason,
                });
            }
            check_parent(
                &s.id,
                NodeKind::Site,
                &s.parent,
                NodeKind::VirtualDer,
                &mut errs,
            );
        }
        for d in &self.ders {
            check_name(&mut errs, &d.id, "name", &d.name);
            if let Err(e) = d.rating.validate() {
                errs.push(HierarchyError::BadField {
                    id: d.id.clone(),
                    field: "rating",
                    reason: e.to_string(),
                });
            }
            check_parent(&d.id, NodeKind::Der, &d.site, NodeKind::Site, &mut errs);
        }
        match roots.len() {
            0 => errs.push(HierarchyError::NoRoot),
            1 => {}
            _ => errs.push(HierarchyError::MultipleRoots {
                id: roots[1].clone(),
                others: roots.clone(),
            }),
        }

        // Cycles can only run through virtual DERs (sites and DERs hang below
        // them). Walk up from each one, colouring nodes already proven to reach
        // the root (or a reported cycle) so the whole pass is linear.
        let vparent: HashMap<&NodeId, Option<&NodeId>> = self
            .virtual_ders
            .iter()
            .map(|v| (&v.id, v.parent.as_ref()))
            .collect();
        let mut done: HashSet<&NodeId> = HashSet::default();
        for v in &self.virtual_ders {
            let mut path: Vec<&NodeId> = Vec::new();
            let mut on_path: HashSet<&NodeId> = HashSet::default();
            let mut cur = Some(&v.id);
            while let Some(c) = cur {
                if done.contains(c) {
                    break;
                }
                if !on_path.insert(c) {
                    let start = path.iter().position(|p| *p == c).unwrap_or(0);
                    let mut cyc: Vec<NodeId> = path[start..].iter().map(|n| (*n).clone()).collect();
                    cyc.push(c.clone());
                    errs.push(HierarchyError::Cycle {
                        id: c.clone(),
                        path: cyc,
                    });
                    break;
                }
                path.push(c);
                cur = vparent.get(c).copied().flatten();
            }
            done.extend(path);
        }

        if !errs.0.is_empty() {
            return Err(errs.0);
        }

        let mut children: HashMap<NodeId, Vec<NodeId>> = HashMap::default();
        for v in &self.virtual_ders {
            if let Some(p) = &v.parent {
                children.entry(p.clone()).or_default().push(v.id.clone());
            }
        }
        for s in &self.sites {
            children
                .entry(s.parent.clone())
                .or_default()
                .push(s.id.clone());
        }
        for d in &self.ders {
            children
                .entry(d.site.clone())
                .or_default()
                .push(d.id.clone());
        }
        let mut topo = Topology {
            root: roots.pop(),
            children,
            kinds,
            depth: 0,
        };
        // Depth by breadth-first walk from the root.
        if let Some(root) = topo.root.clone() {
            let mut level = vec![root];
            while !level.is_empty() {
                topo.depth += 1;
                if topo.depth > MAX_DEPTH {
                    return Err(vec![HierarchyError::TooDeep {
                        id: level[0].clone(),
                    }]);
                }
                level = level
                    .iter()
                    .flat_map(|n| topo.children_of(n).iter().cloned())
                    .collect();
            }
        }
        Ok(topo)
    }
}

#[cfg(test)]
mod tests;
