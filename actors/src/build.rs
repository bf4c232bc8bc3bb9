//! Building the live tree from a validated hierarchy and its saved state.
//!
//! The initial roll-up is computed in plain code before any actor exists:
//! nodes are laid out breadth-first (so each node's children are contiguous),
//! DER envelopes are computed from their last state and summed bottom-up.
//! Every actor starts with the envelopes of its children already in hand, so a
//! cold start costs no message storm and the root knows the whole fleet the
//! moment the tree is up. Actors are then spawned level by level, top-down
//! (a child needs its parent's handle), each level in parallel chunks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorRef};
use vpp_domain::flex::der_envelope;
use vpp_domain::{
    DerSpec, DerState, DispatchOrder, FlexEnvelope, Hierarchy, NodeAllocation, NodeId, NodeKind,
    NodeSpec, Setpoint, SiteSpec, Topology, VirtualDerSpec,
};

use crate::aggregate::{AggregateArgs, ChildSpec, SiteActor, VirtualDerActor};
use crate::config::FleetConfig;
use crate::der::{DerActor, DerArgs};
use crate::journal::Journal;
use crate::messages::{AggregateMsg, ChildRef};
use crate::metrics::Metrics;

/// What every actor of one fleet shares.
pub(crate) struct FleetCtx {
    pub(crate) config: FleetConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) store: Option<vpp_store::Store>,
    shutting_down: AtomicBool,
}

impl FleetCtx {
    pub(crate) fn new(
        config: FleetConfig,
        metrics: Arc<Metrics>,
        journal: Arc<dyn Journal>,
        store: Option<vpp_store::Store>,
    ) -> Self {
        Self {
            config,
            metrics,
            journal,
            store,
            shutting_down: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The last persisted state of a DER, or "offline" when none is known.
    pub(crate) fn last_state(&self, spec: &DerSpec) -> DerState {
        self.store
            .as_ref()
            .and_then(|s| s.der_state(&spec.id).ok().flatten())
            .unwrap_or_else(|| DerState {
                online: false,
                ..DerState::nominal(&spec.rating)
            })
    }

    /// The last persisted setpoints of a DER.
    pub(crate) fn last_setpoints(&self, id: &NodeId) -> Vec<Setpoint> {
        self.store
            .as_ref()
            .and_then(|s| s.setpoints(id).ok())
            .unwrap_or_default()
    }
}

/// Everything needed to bring a fleet up.
pub(crate) struct Snapshot {
    pub(crate) hierarchy: Hierarchy,
    pub(crate) topology: Topology,
    /// Last known DER states; missing ones start at [`DerState::nominal`].
    pub(crate) states: HashMap<NodeId, DerState>,
    /// Active setpoints per DER.
    pub(crate) setpoints: HashMap<NodeId, Vec<Setpoint>>,
    /// Allocations of active orders, per aggregate.
    pub(crate) allocations: HashMap<NodeId, Vec<(Arc<DispatchOrder>, NodeAllocation)>>,
}

enum Spec {
    Virtual(VirtualDerSpec),
    Site(SiteSpec),
    Der(Arc<DerSpec>),
}

struct Slot {
    id: NodeId,
    spec: Spec,
    parent: u32,
    first_child: u32,
    n_children: u32,
}

/// The handle of every node, by id, and how they hang together.
pub(crate) struct Built {
    pub(crate) index: HashMap<NodeId, NodeHandle>,
    pub(crate) root: ActorRef<AggregateMsg>,
    pub(crate) root_id: NodeId,
}

/// One node of a live fleet.
#[derive(Clone)]
pub(crate) struct NodeHandle {
    pub(crate) kind: NodeKind,
    pub(crate) parent: Option<NodeId>,
    pub(crate) actor: ChildRef,
}

enum Item {
    Der(DerArgs),
    Agg(AggregateArgs, bool),
}

/// Lays out, rolls up and spawns the whole tree under `supervisor`.
pub(crate) async fn build(
    mut snap: Snapshot,
    ctx: Arc<FleetCtx>,
    supervisor: ActorCell,
    mut progress: impl FnMut(usize, usize),
) -> Result<Built, String> {
    let root_id = snap
        .topology
        .root
        .clone()
        .ok_or_else(|| "the hierarchy has no root".to_string())?;

    // 1. Breadth-first layout.
    let mut strategies: HashMap<&NodeId, Spec> = HashMap::with_capacity(snap.hierarchy.len());
    for v in &snap.hierarchy.virtual_ders {
        strategies.insert(&v.id, Spec::Virtual(v.clone()));
    }
    for s in &snap.hierarchy.sites {
        strategies.insert(&s.id, Spec::Site(s.clone()));
    }
    for d in &snap.hierarchy.ders {
        strategies.insert(&d.id, Spec::Der(Arc::new(d.clone())));
    }
    let total = snap.hierarchy.len();
    let mut slots: Vec<Slot> = Vec::with_capacity(total);
    let root_spec = strategies
        .remove(&root_id)
        .ok_or_else(|| format!("root {root_id} is not in the hierarchy"))?;
    slots.push(Slot {
        id: root_id.clone(),
        spec: root_spec,
        parent: u32::MAX,
        first_child: 0,
        n_children: 0,
    });
    let mut i = 0;
    while i < slots.len() {
        let kids = snap.topology.children_of(&slots[i].id);
        slots[i].first_child = slots.len() as u32;
        slots[i].n_children = kids.len() as u32;
        for k in kids {
            let spec = strategies
                .remove(k)
                .ok_or_else(|| format!("node {k} appears twice in the tree"))?;
            slots.push(Slot {
                id: k.clone(),
                spec,
                parent: i as u32,
                first_child: 0,
                n_children: 0,
            });
        }
        i += 1;
    }
    drop(strategies);
    // Level boundaries: a level ends where the children of its last node end.
    let mut start = 0usize;
    let mut end = 1usize;
    let mut bounds = Vec::new();
    while start < end {
        bounds.push((start, end));
        let next_end = slots[start..end]
            .iter()
            .map(|s| (s.first_child + s.n_children) as usize)
            .max()
            .unwrap_or(end)
            .max(end);
        start = end;
        end = next_end;
    }

    // 2. Bottom-up roll-up in plain code.
    let mut envs: Vec<FlexEnvelope> = vec![FlexEnvelope::zero(); slots.len()];
    let mut states: Vec<Option<DerState>> = Vec::with_capacity(slots.len());
    for s in &slots {
        states.push(match &s.spec {
            Spec::Der(d) => Some(
                snap.states
                    .remove(&d.id)
                    .unwrap_or_else(|| DerState::nominal(&d.rating)),
            ),
            _ => None,
        });
    }
    for idx in (0..slots.len()).rev() {
        let s = &slots[idx];
        let env = match &s.spec {
            Spec::Der(d) => der_envelope(&d.rating, states[idx].as_ref().expect("der has state")),
            _ => {
                let (a, n) = (s.first_child as usize, s.n_children as usize);
                FlexEnvelope::sum(&envs[a..a + n])
            }
        };
        envs[idx] = env;
    }

    // 3. Spawn level by level.
    let mut refs: Vec<Option<ChildRef>> = vec![None; slots.len()];
    let mut index: HashMap<NodeId, NodeHandle> = HashMap::with_capacity(slots.len());
    let mut done = 0usize;
    let chunks = ctx.config.spawn_parallelism.max(1);
    for &(a, b) in &bounds {
        let mut items: Vec<(usize, Item, Option<ActorCell>)> = Vec::with_capacity(b - a);
        for idx in a..b {
            let s = &slots[idx];
            let parent = if s.parent == u32::MAX {
                None
            } else {
                let p = s.parent as usize;
                let parent_ref = match refs[p].as_ref() {
                    Some(ChildRef::Aggregate(r)) => r.clone(),
                    _ => return Err(format!("parent of {} did not start", s.id)),
                };
                Some((parent_ref, (idx - slots[p].first_child as usize) as u32))
            };
            let sup = parent
                .as_ref()
                .map(|(r, _)| r.get_cell())
                .or_else(|| Some(supervisor.clone()));
            let item = match &s.spec {
                Spec::Der(d) => {
                    let (parent, idx_in_parent) =
                        parent.ok_or_else(|| format!("der {} has no site", s.id))?;
                    Item::Der(DerArgs {
                        spec: d.clone(),
                        state: states[idx]
                            .take()
                            .unwrap_or_else(|| DerState::nominal(&d.rating)),
                        setpoints: snap.setpoints.remove(&s.id).unwrap_or_default(),
                        parent,
                        idx: idx_in_parent,
                        ctx: ctx.clone(),
                    })
                }
                Spec::Virtual(_) | Spec::Site(_) => {
                    let (f, n) = (s.first_child as usize, s.n_children as usize);
                    let children = (f..f + n)
                        .map(|c| ChildSpec {
                            id: slots[c].id.clone(),
                            env: envs[c].clone(),
                            der: match &slots[c].spec {
                                Spec::Der(d) => Some(d.clone()),
                                _ => None,
                            },
                        })
                        .collect();
                    let (is_site, spec, strategy) = match &s.spec {
                        Spec::Site(site) => (true, NodeSpec::Site(site.clone()), site.strategy),
                        Spec::Virtual(v) => (false, NodeSpec::VirtualDer(v.clone()), v.strategy),
                        Spec::Der(_) => unreachable!("matched above"),
                    };
                    Item::Agg(
                        AggregateArgs {
                            id: s.id.clone(),
                            kind: if is_site {
                                NodeKind::Site
                            } else {
                                NodeKind::VirtualDer
                            },
                            spec,
                            strategy,
                            parent,
                            children,
                            allocations: snap.allocations.remove(&s.id).unwrap_or_default(),
                            ctx: ctx.clone(),
                        },
                        is_site,
                    )
                }
            };
            items.push((idx, item, sup));
        }
        // Spawn the level in parallel chunks (pre_start runs in the spawning
        // task, so chunks on separate tasks use every core).
        let per = items.len().div_ceil(chunks).max(1);
        let mut tasks = Vec::new();
        while !items.is_empty() {
            let rest = items.split_off(per.min(items.len()));
            let chunk = std::mem::replace(&mut items, rest);
            tasks.push(tokio::spawn(spawn_chunk(chunk)));
        }
        for t in tasks {
            let spawned = t.await.map_err(|e| format!("spawn task failed: {e}"))??;
            for (idx, r) in spawned {
                let s = &slots[idx];
                let kind = match s.spec {
                    Spec::Der(_) => NodeKind::Der,
                    Spec::Site(_) => NodeKind::Site,
                    Spec::Virtual(_) => NodeKind::VirtualDer,
                };
                let parent = (s.parent != u32::MAX).then(|| slots[s.parent as usize].id.clone());
                index.insert(
                    s.id.clone(),
                    NodeHandle {
                        kind,
                        parent,
                        actor: r.clone(),
                    },
                );
                refs[idx] = Some(r);
            }
        }
        done += b - a;
        progress(done, slots.len());
    }
    drop(envs);

    // 4. Hand every aggregate its children's handles.
    for (idx, s) in slots.iter().enumerate() {
        if s.n_children == 0 {
            continue;
        }
        if let Some(ChildRef::Aggregate(agg)) = &refs[idx] {
            let (f, n) = (s.first_child as usize, s.n_children as usize);
            let kids: Vec<ChildRef> = refs[f..f + n].iter().flatten().cloned().collect();
            agg.cast(AggregateMsg::Attach(kids))
                .map_err(|e| format!("attaching children of {}: {e}", s.id))?;
        }
    }
    let root = match refs[0].take() {
        Some(ChildRef::Aggregate(r)) => r,
        _ => return Err("root did not start".into()),
    };
    Ok(Built {
        index,
        root,
        root_id,
    })
}

async fn spawn_chunk(
    items: Vec<(usize, Item, Option<ActorCell>)>,
) -> Result<Vec<(usize, ChildRef)>, String> {
    let mut out = Vec::with_capacity(items.len());
    for (idx, item, sup) in items {
        let sup = sup.ok_or("no supervisor")?;
        let r = match item {
            Item::Der(args) => {
                let id = args.spec.id.clone();
                let (a, _) = Actor::spawn_linked(None, DerActor, args, sup)
                    .await
                    .map_err(|e| format!("spawning der {id}: {e}"))?;
                ChildRef::Der(a)
            }
            Item::Agg(args, true) => {
                let id = args.id.clone();
                let (a, _) = Actor::spawn_linked(None, SiteActor, args, sup)
                    .await
                    .map_err(|e| format!("spawning site {id}: {e}"))?;
                ChildRef::Aggregate(a)
            }
            Item::Agg(args, false) => {
                let id = args.id.clone();
                let (a, _) = Actor::spawn_linked(None, VirtualDerActor, args, sup)
                    .await
                    .map_err(|e| format!("spawning virtual der {id}: {e}"))?;
                ChildRef::Aggregate(a)
            }
        };
        out.push((idx, r));
    }
    Ok(out)
}
