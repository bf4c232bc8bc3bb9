//! Building the live tree from a validated hierarchy and its saved state.
//!
//! The initial roll-up is computed in plain code before any actor exists:
//! nodes are laid out breadth-first (so each node's children are contiguous),
//! DER envelopes are computed from their last state and summed bottom-up.
//! Every actor starts with the envelopes of its children already in hand, so a
//! cold start costs no message storm and the root knows the whole fleet the
//! moment the tree is up. Aggregate actors are then spawned level by level,
//! top-down (a child needs its parent's handle), each level in parallel
//! chunks; each site is spawned with the DER actors it hosts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorRef};
use rustc_hash::FxHashMap;
use vpp_domain::flex::der_envelope;
use vpp_domain::{
    DerSpec, DerState, DispatchId, DispatchOrder, FlexEnvelope, Hierarchy, NodeAllocation, NodeId,
    NodeKind, NodeSpec, Setpoint, SiteSpec, Topology, VirtualDerSpec,
};

use crate::aggregate::{
    AggregateArgs, ChildEnv, ChildSpec, Inbox, Parent, SiteActor, VirtualDerActor,
};
use crate::config::FleetConfig;
use crate::der::{restored_envelope, DerActor};
use crate::devices::DeviceLink;
use crate::journal::Journal;
use crate::messages::AggregateMsg;
use crate::metrics::Metrics;
use crate::remote::RemoteLink;

/// What every actor of one fleet shares.
pub(crate) struct FleetCtx {
    pub(crate) config: FleetConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) devices: Arc<dyn DeviceLink>,
    pub(crate) store: Option<vpp_store::Store>,
    /// Nodes on other cluster members (`None`: every node runs here).
    pub(crate) remote: Option<Arc<dyn RemoteLink>>,
    /// When the fleet started, Unix ms (the floor of desired versions).
    pub(crate) started_ms: u64,
    shutting_down: AtomicBool,
}

impl FleetCtx {
    pub(crate) fn new(
        config: FleetConfig,
        metrics: Arc<Metrics>,
        journal: Arc<dyn Journal>,
        devices: Arc<dyn DeviceLink>,
        store: Option<vpp_store::Store>,
        remote: Option<Arc<dyn RemoteLink>>,
    ) -> Self {
        Self {
            config,
            metrics,
            journal,
            devices,
            store,
            remote,
            started_ms: crate::now_ms(),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The last persisted state and setpoints of a DER at `site`; "offline"
    /// with no setpoints when none are known.
    pub(crate) fn last_record(&self, site: &NodeId, spec: &DerSpec) -> (DerState, Vec<Setpoint>) {
        let found = self
            .store
            .as_ref()
            .and_then(|s| s.site_ders(site).ok())
            .and_then(|ders| ders.into_iter().find(|d| d.id == spec.id));
        match found {
            Some(r) => (r.state, r.setpoints),
            None => (
                DerState {
                    online: false,
                    ..DerState::nominal(&spec.rating)
                },
                Vec::new(),
            ),
        }
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
    /// Allocations of active orders, per virtual DER.
    pub(crate) allocations: HashMap<NodeId, Vec<(Arc<DispatchOrder>, NodeAllocation)>>,
    /// Active orders, to rebuild sites' allocations from DER setpoints.
    pub(crate) orders: HashMap<DispatchId, Arc<DispatchOrder>>,
}

/// A site's allocations of active orders, rebuilt from its DERs' setpoints
/// (sites persist those, not their allocations).
fn site_allocations(
    site: &NodeId,
    ders: &[DerActor],
    orders: &HashMap<DispatchId, Arc<DispatchOrder>>,
) -> Vec<(Arc<DispatchOrder>, NodeAllocation)> {
    let mut by_order: Vec<(Arc<DispatchOrder>, NodeAllocation)> = Vec::new();
    for d in ders {
        for sp in &d.record().setpoints {
            let Some(order) = orders.get(&sp.dispatch) else {
                continue;
            };
            let pos = match by_order.iter().position(|(o, _)| o.id == sp.dispatch) {
                Some(p) => p,
                None => {
                    by_order.push((
                        order.clone(),
                        NodeAllocation::empty(sp.dispatch.clone(), site.clone()),
                    ));
                    by_order.len() - 1
                }
            };
            let a = &mut by_order[pos].1;
            a.requested_w += sp.power_w;
            a.allocated_w += sp.power_w;
            a.children.push((d.spec().id.clone(), sp.power_w));
        }
    }
    by_order
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
    pub(crate) index: FxHashMap<NodeId, NodeHandle>,
    pub(crate) sites: Vec<ActorRef<AggregateMsg>>,
    pub(crate) root_id: NodeId,
}

/// One node of a live fleet: its actor, or for a DER the site actor hosting
/// it and its index there. `actor` is `None` for a node that runs on
/// another cluster member.
#[derive(Clone)]
pub(crate) struct NodeHandle {
    pub(crate) kind: NodeKind,
    pub(crate) parent: Option<NodeId>,
    pub(crate) actor: Option<ActorRef<AggregateMsg>>,
    pub(crate) der_idx: Option<u32>,
    /// For DERs and sites here: the site's number in `Built::sites`
    /// (`u32::MAX` elsewhere).
    pub(crate) site_no: u32,
}

struct Item {
    args: AggregateArgs,
    is_site: bool,
}

/// Lays out, rolls up and spawns the whole tree under `supervisor`.
pub(crate) async fn build(
    mut snap: Snapshot,
    ctx: Arc<FleetCtx>,
    supervisor: ActorCell,
    mut progress: impl FnMut(usize, usize),
) -> Result<Built, String> {
    let t0 = std::time::Instant::now();
    let root_id = snap
        .topology
        .root
        .clone()
        .ok_or_else(|| "the hierarchy has no root".to_string())?;

    // 1. Breadth-first layout.
    let mut strategies: FxHashMap<&NodeId, Spec> =
        FxHashMap::with_capacity_and_hasher(snap.hierarchy.len(), Default::default());
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

    let t_layout = t0.elapsed();
    // 2. Bottom-up roll-up in plain code. Only aggregates keep an envelope
    // here (a DER's is recomputed where needed): at a million DERs that is
    // 500 MB less memory to touch.
    let mut agg_no: Vec<u32> = vec![u32::MAX; slots.len()];
    let mut n_aggs = 0u32;
    for (i, s) in slots.iter().enumerate() {
        if !matches!(s.spec, Spec::Der(_)) {
            agg_no[i] = n_aggs;
            n_aggs += 1;
        }
    }
    let mut envs: Vec<FlexEnvelope> = vec![FlexEnvelope::zero(); n_aggs as usize];
    let setpoints = &snap.setpoints;
    let env_of = |c: usize, envs: &[FlexEnvelope], states: &[Option<DerState>]| -> FlexEnvelope {
        match (&slots[c].spec, &states[c]) {
            (Spec::Der(d), Some(st)) => match setpoints.get(&d.id) {
                Some(sp) => restored_envelope(&d.rating, st, sp),
                None => der_envelope(&d.rating, st),
            },
            (Spec::Der(_), None) => FlexEnvelope::zero(),
            _ => envs[agg_no[c] as usize].clone(),
        }
    };
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
    // Heights (a site 0, a virtual DER one more than its tallest child) set
    // each virtual DER's phase in the roll-up period (`Aggregate::flush_delay`).
    let mut height: Vec<u32> = vec![0; n_aggs as usize];
    for idx in (0..slots.len()).rev() {
        let s = &slots[idx];
        if matches!(s.spec, Spec::Der(_)) {
            continue;
        }
        let (a, n) = (s.first_child as usize, s.n_children as usize);
        let mut sum = FlexEnvelope::zero();
        for c in a..a + n {
            sum.add(&env_of(c, &envs, &states));
        }
        envs[agg_no[idx] as usize] = sum;
        if matches!(s.spec, Spec::Virtual(_)) {
            let tallest = (a..a + n)
                .filter(|&c| agg_no[c] != u32::MAX)
                .map(|c| height[agg_no[c] as usize])
                .max()
                .unwrap_or(0);
            height[agg_no[idx] as usize] = tallest + 1;
        }
    }
    // The tallest virtual DER that reports to a parent (the root does not).
    let tallest = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.parent != u32::MAX && matches!(s.spec, Spec::Virtual(_)))
        .map(|(i, _)| height[agg_no[i] as usize])
        .max()
        .unwrap_or(0);
    let interval = ctx.config.rollup_interval;
    let phase_of = |i: usize| interval * height[agg_no[i] as usize] / (tallest + 1);

    let t_rollup = t0.elapsed() - t_layout;
    // 3. Spawn the aggregates level by level; DERs go to their site.
    let mut refs: Vec<Option<ActorRef<AggregateMsg>>> = vec![None; slots.len()];
    let mut index: FxHashMap<NodeId, NodeHandle> =
        FxHashMap::with_capacity_and_hasher(slots.len(), Default::default());
    let mut sites: Vec<ActorRef<AggregateMsg>> = Vec::new();
    // Each local virtual DER's inbox, for its local children to report into.
    let mut inboxes: Vec<Option<Arc<Inbox>>> = vec![None; slots.len()];
    let mut done = 0usize;
    let chunks = ctx.config.spawn_parallelism.max(1);
    // Which aggregates run on this member (all of them without a cluster).
    let local: Vec<bool> = slots
        .iter()
        .map(|s| match (&s.spec, &ctx.remote) {
            (Spec::Der(_), _) => false,
            (_, None) => true,
            (Spec::Site(_), Some(r)) => r.is_local(&s.id, NodeKind::Site),
            (Spec::Virtual(_), Some(r)) => r.is_local(&s.id, NodeKind::VirtualDer),
        })
        .collect();
    let kind_of = |i: usize| match &slots[i].spec {
        Spec::Site(_) => NodeKind::Site,
        Spec::Virtual(_) => NodeKind::VirtualDer,
        Spec::Der(_) => NodeKind::Der,
    };
    for &(a, b) in &bounds {
        let mut items: Vec<(usize, Item, ActorCell)> = Vec::with_capacity(b - a);
        for idx in a..b {
            let s = &slots[idx];
            if !local[idx] {
                continue;
            }
            let (spec, strategy, is_site) = match &s.spec {
                Spec::Der(_) => continue,
                Spec::Site(site) => (NodeSpec::Site(site.clone()), site.strategy, true),
                Spec::Virtual(v) => (NodeSpec::VirtualDer(v.clone()), v.strategy, false),
            };
            let parent = if s.parent == u32::MAX {
                None
            } else {
                let p = s.parent as usize;
                let my_idx = (idx - slots[p].first_child as usize) as u32;
                if local[p] {
                    let parent_ref = refs[p]
                        .clone()
                        .ok_or_else(|| format!("parent of {} did not start", s.id))?;
                    let inbox = inboxes[p]
                        .clone()
                        .ok_or_else(|| format!("parent of {} has no inbox", s.id))?;
                    Some(Parent::Local(parent_ref, my_idx, inbox))
                } else {
                    Some(Parent::Remote(slots[p].id.clone(), my_idx))
                }
            };
            let sup = match &parent {
                Some(Parent::Local(r, _, _)) => r.get_cell(),
                _ => supervisor.clone(),
            };
            let (f, n) = (s.first_child as usize, s.n_children as usize);
            let mut ders = Vec::new();
            let mut allocations = snap.allocations.remove(&s.id).unwrap_or_default();
            let children = if is_site {
                for c in f..f + n {
                    if let Spec::Der(d) = &slots[c].spec {
                        let state = states[c]
                            .take()
                            .unwrap_or_else(|| DerState::nominal(&d.rating));
                        let sp = snap.setpoints.remove(&slots[c].id).unwrap_or_default();
                        ders.push(DerActor::new(d.clone(), state, sp, &ctx));
                    }
                }
                allocations = site_allocations(&s.id, &ders, &snap.orders);
                (f..f + n)
                    .zip(&ders)
                    .map(|(c, d)| ChildSpec {
                        id: slots[c].id.clone(),
                        kind: NodeKind::Der,
                        env: ChildEnv::Der(d.flex()),
                        remote: false,
                    })
                    .collect()
            } else {
                (f..f + n)
                    .map(|c| ChildSpec {
                        id: slots[c].id.clone(),
                        kind: kind_of(c),
                        // A virtual DER's children are aggregates.
                        env: ChildEnv::node(envs[agg_no[c] as usize].clone()),
                        remote: !local[c],
                    })
                    .collect()
            };
            let inbox = (!is_site).then(|| Arc::new(Inbox::default()));
            inboxes[idx] = inbox.clone();
            let args = AggregateArgs {
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
                ders,
                allocations,
                inbox,
                phase: phase_of(idx),
                ctx: ctx.clone(),
            };
            items.push((idx, Item { args, is_site }, sup));
        }
        if items.is_empty() {
            continue;
        }
        // pre_start runs in the spawning task, so chunks on separate tasks
        // use every core.
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
                let is_site = matches!(s.spec, Spec::Site(_));
                let parent = (s.parent != u32::MAX).then(|| slots[s.parent as usize].id.clone());
                index.insert(
                    s.id.clone(),
                    NodeHandle {
                        kind: if is_site {
                            NodeKind::Site
                        } else {
                            NodeKind::VirtualDer
                        },
                        parent,
                        actor: Some(r.clone()),
                        der_idx: None,
                        site_no: if is_site {
                            sites.len() as u32
                        } else {
                            u32::MAX
                        },
                    },
                );
                if is_site {
                    let site_no = sites.len() as u32;
                    sites.push(r.clone());
                    let (f, n) = (s.first_child as usize, s.n_children as usize);
                    for (k, c) in (f..f + n).enumerate() {
                        index.insert(
                            slots[c].id.clone(),
                            NodeHandle {
                                kind: NodeKind::Der,
                                parent: Some(s.id.clone()),
                                actor: Some(r.clone()),
                                der_idx: Some(k as u32),
                                site_no,
                            },
                        );
                    }
                    done += n;
                }
                refs[idx] = Some(r);
            }
        }
        done += b - a;
        progress(done.min(slots.len()), slots.len());
    }
    drop(envs);
    // Nodes on other members: known by id, reached through the link.
    for (idx, s) in slots.iter().enumerate() {
        if index.contains_key(&s.id) {
            continue;
        }
        index.insert(
            s.id.clone(),
            NodeHandle {
                kind: kind_of(idx),
                parent: (s.parent != u32::MAX).then(|| slots[s.parent as usize].id.clone()),
                actor: None,
                der_idx: matches!(s.spec, Spec::Der(_))
                    .then(|| (idx - slots[s.parent as usize].first_child as usize) as u32),
                site_no: u32::MAX,
            },
        );
    }

    // 4. Hand every virtual DER its children's handles.
    for (idx, s) in slots.iter().enumerate() {
        if !matches!(s.spec, Spec::Virtual(_)) || s.n_children == 0 {
            continue;
        }
        if let Some(agg) = &refs[idx] {
            let (f, n) = (s.first_child as usize, s.n_children as usize);
            let kids: Vec<Option<ActorRef<AggregateMsg>>> = refs[f..f + n].to_vec();
            agg.cast(AggregateMsg::Attach(kids))
                .map_err(|e| format!("attaching children of {}: {e}", s.id))?;
        }
    }
    if local[0] && refs[0].is_none() {
        return Err("root did not start".into());
    }
    tracing::info!(
        nodes = slots.len(),
        layout_ms = t_layout.as_millis() as u64,
        rollup_ms = t_rollup.as_millis() as u64,
        spawn_ms = (t0.elapsed() - t_layout - t_rollup).as_millis() as u64,
        "fleet built"
    );
    Ok(Built {
        index,
        sites,
        root_id,
    })
}

async fn spawn_chunk(
    items: Vec<(usize, Item, ActorCell)>,
) -> Result<Vec<(usize, ActorRef<AggregateMsg>)>, String> {
    let mut out = Vec::with_capacity(items.len());
    for (idx, item, sup) in items {
        let id = item.args.id.clone();
        let r = if item.is_site {
            Actor::spawn_linked(None, SiteActor, item.args, sup).await
        } else {
            Actor::spawn_linked(None, VirtualDerActor, item.args, sup).await
        };
        let (a, _) = r.map_err(|e| format!("spawning {id}: {e}"))?;
        out.push((idx, a));
    }
    Ok(out)
}
