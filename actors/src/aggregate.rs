//! Site and virtual-DER actors: aggregates that roll capacity up and split
//! dispatch down.
//!
//! Both kinds run the same [`Aggregate`] logic; they differ in what their
//! children are (DERs for a site; sites and virtual DERs for a virtual DER) and
//! in that a site restarts a DER actor that fails.
//!
//! Roll-up coalescing (per aggregate, `rollup_interval` = T):
//!
//! ```text
//!   child reports:  x  x x x x            x
//!   upward flush:   |------T----> F       |------T----> F
//!                   (one report per window, T after the first change in it,
//!                    carrying the sum of everything that arrived meanwhile)
//! ```
//!
//! The root has no parent: its sum is current the moment a report arrives.
//!
//! Dispatch (the closed loop), for one share of one order:
//!
//! ```text
//!   room_i  = available_i - committed_i (other active orders)
//!   round 0: extra = split(share, room)            ── ask children (concurrently)
//!   round k: gap = share - Σ accepted_i            ── children that took less
//!            extra = resplit(gap, room, accepted,      than asked are "refused"
//!                            refused)                 and not asked again
//!   stop when gap = 0, nobody has room, or max_resplits is reached
//! ```

mod dispatch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use vpp_domain::{
    DerSpec, Direction, DispatchId, DispatchOrder, FlexEnvelope, NodeAllocation, NodeId, NodeKind,
    NodeSpec, Strategy,
};

use crate::build::FleetCtx;
use crate::der::{DerActor, DerArgs};
use crate::messages::{
    settle, AggregateMsg, ChildRef, ChildView, DerMsg, DispatchOutcome, NodeView,
};
use crate::metrics::Metrics;
use crate::now_ms;

/// The actor of a site: its children are DER actors.
pub(crate) struct SiteActor;

/// The actor of a virtual DER: its children are sites and virtual DERs.
pub(crate) struct VirtualDerActor;

/// One child as the builder describes it.
pub(crate) struct ChildSpec {
    pub(crate) id: NodeId,
    pub(crate) env: FlexEnvelope,
    /// Set for DER children, so the site can restart them.
    pub(crate) der: Option<Arc<DerSpec>>,
}

pub(crate) struct AggregateArgs {
    pub(crate) id: NodeId,
    pub(crate) kind: NodeKind,
    pub(crate) spec: NodeSpec,
    pub(crate) strategy: Strategy,
    pub(crate) parent: Option<(ActorRef<AggregateMsg>, u32)>,
    pub(crate) children: Vec<ChildSpec>,
    /// Allocations restored from the journal: orders still active.
    pub(crate) allocations: Vec<(Arc<DispatchOrder>, NodeAllocation)>,
    pub(crate) ctx: Arc<FleetCtx>,
}

pub(crate) struct Child {
    pub(crate) id: NodeId,
    pub(crate) actor: Option<ChildRef>,
    pub(crate) env: FlexEnvelope,
    pub(crate) last_dispatched_ms: Option<u64>,
    pub(crate) failed: bool,
    der: Option<Arc<DerSpec>>,
}

/// What this node holds for one order.
pub(crate) struct Alloc {
    pub(crate) order: Arc<DispatchOrder>,
    /// Accepted share of each child (index = child index).
    pub(crate) shares: Vec<u64>,
    /// Latest outcome of each child that was asked.
    pub(crate) outcomes: Vec<Option<DispatchOutcome>>,
    pub(crate) record: NodeAllocation,
}

pub(crate) struct Aggregate {
    pub(crate) id: NodeId,
    kind: NodeKind,
    spec: NodeSpec,
    pub(crate) strategy: Strategy,
    parent: Option<(ActorRef<AggregateMsg>, u32)>,
    pub(crate) children: Vec<Child>,
    by_actor: HashMap<ActorId, usize>,
    pub(crate) sum: FlexEnvelope,
    reported: FlexEnvelope,
    dirty: bool,
    flush_pending: bool,
    pub(crate) allocs: HashMap<DispatchId, Alloc>,
    pub(crate) ctx: Arc<FleetCtx>,
}

fn start(a: AggregateArgs) -> Aggregate {
    let children: Vec<Child> = a
        .children
        .into_iter()
        .map(|c| Child {
            id: c.id,
            actor: None,
            env: c.env,
            last_dispatched_ms: None,
            failed: false,
            der: c.der,
        })
        .collect();
    let sum = FlexEnvelope::sum(children.iter().map(|c| &c.env));
    let index: HashMap<&NodeId, usize> = children
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.id, i))
        .collect();
    let n = children.len();
    let mut allocs = HashMap::new();
    for (order, record) in a.allocations {
        let mut shares = vec![0; n];
        for (cid, w) in &record.children {
            if let Some(&i) = index.get(cid) {
                shares[i] = *w;
            }
        }
        allocs.insert(
            order.id.clone(),
            Alloc {
                order,
                shares,
                outcomes: vec![None; n],
                record,
            },
        );
    }
    Aggregate {
        id: a.id,
        kind: a.kind,
        spec: a.spec,
        strategy: a.strategy,
        parent: a.parent,
        children,
        by_actor: HashMap::new(),
        reported: sum.clone(),
        sum,
        dirty: false,
        flush_pending: false,
        allocs,
        ctx: a.ctx,
    }
}

impl Actor for SiteActor {
    type Msg = AggregateMsg;
    type State = Aggregate;
    type Arguments = AggregateArgs;

    async fn pre_start(
        &self,
        _: ActorRef<AggregateMsg>,
        a: AggregateArgs,
    ) -> Result<Aggregate, ActorProcessingErr> {
        Ok(start(a))
    }

    async fn handle(
        &self,
        myself: ActorRef<AggregateMsg>,
        msg: AggregateMsg,
        agg: &mut Aggregate,
    ) -> Result<(), ActorProcessingErr> {
        agg.handle(myself, msg).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AggregateMsg>,
        evt: SupervisionEvent,
        agg: &mut Aggregate,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(idx) = agg.child_down(&myself, evt) {
            agg.restart_der(&myself, idx).await;
        }
        Ok(())
    }
}

impl Actor for VirtualDerActor {
    type Msg = AggregateMsg;
    type State = Aggregate;
    type Arguments = AggregateArgs;

    async fn pre_start(
        &self,
        _: ActorRef<AggregateMsg>,
        a: AggregateArgs,
    ) -> Result<Aggregate, ActorProcessingErr> {
        Ok(start(a))
    }

    async fn handle(
        &self,
        myself: ActorRef<AggregateMsg>,
        msg: AggregateMsg,
        agg: &mut Aggregate,
    ) -> Result<(), ActorProcessingErr> {
        agg.handle(myself, msg).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AggregateMsg>,
        evt: SupervisionEvent,
        agg: &mut Aggregate,
    ) -> Result<(), ActorProcessingErr> {
        // A failed site or virtual DER takes its subtree with it; it stays out
        // of the envelope until the hierarchy is reloaded.
        agg.child_down(&myself, evt);
        Ok(())
    }
}

impl Aggregate {
    async fn handle(&mut self, myself: ActorRef<AggregateMsg>, msg: AggregateMsg) {
        match msg {
            AggregateMsg::ChildReport { idx, env } => {
                let Some(c) = self.children.get_mut(idx as usize) else {
                    return;
                };
                self.sum.replace(&c.env, &env);
                c.env = *env;
                self.mark_dirty(&myself);
            }
            AggregateMsg::Flush => {
                self.flush_pending = false;
                if self.dirty {
                    self.flush();
                }
            }
            AggregateMsg::Attach(refs) => {
                for (i, r) in refs.into_iter().enumerate() {
                    if let Some(c) = self.children.get_mut(i) {
                        self.by_actor.insert(r.cell().get_id(), i);
                        c.actor = Some(r);
                    }
                }
            }
            AggregateMsg::View(reply) => {
                self.expire(now_ms());
                let _ = reply.send(self.view());
            }
            AggregateMsg::Refresh(reply) => {
                self.refresh().await;
                let _ = reply.send(self.sum.clone());
            }
            AggregateMsg::Dispatch(share, reply) => {
                let out = self.dispatch(share).await;
                let _ = reply.send(out);
            }
            AggregateMsg::Cancel(id, reply) => {
                self.cancel(&id).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            AggregateMsg::Allocation(id, reply) => {
                let _ = reply.send(self.allocs.get(&id).map(|a| a.record.clone()));
            }
        }
    }

    fn interval(&self) -> Duration {
        self.ctx.config.rollup_interval
    }

    fn mark_dirty(&mut self, myself: &ActorRef<AggregateMsg>) {
        if self.parent.is_none() {
            return; // the root's sum is always current
        }
        self.dirty = true;
        if self.flush_pending {
            Metrics::inc(&self.ctx.metrics.reports_coalesced);
            return;
        }
        self.flush_pending = true;
        myself.send_after(self.interval(), || AggregateMsg::Flush);
    }

    fn flush(&mut self) {
        self.dirty = false;
        if self.sum == self.reported {
            return;
        }
        self.reported = self.sum.clone();
        if let Some((parent, idx)) = &self.parent {
            Metrics::inc(&self.ctx.metrics.reports_sent);
            let _ = parent.cast(AggregateMsg::ChildReport {
                idx: *idx,
                env: Box::new(self.sum.clone()),
            });
        }
    }

    /// Pulls a fresh envelope from every child now (bypassing coalescing), so
    /// the answer reflects every change made before the call.
    async fn refresh(&mut self) {
        let timeout = self.ctx.config.dispatch_timeout;
        let asks = self.children.iter().map(|c| {
            let actor = c.actor.clone();
            async move {
                match actor {
                    Some(ChildRef::Der(a)) => settle(a.call(DerMsg::Refresh, Some(timeout)).await),
                    Some(ChildRef::Aggregate(a)) => {
                        settle(a.call(AggregateMsg::Refresh, Some(timeout)).await)
                    }
                    None => Err("child actor is down".to_string()),
                }
            }
        });
        let results = futures::future::join_all(asks).await;
        for (c, r) in self.children.iter_mut().zip(results) {
            if let Ok(env) = r {
                self.sum.replace(&c.env, &env);
                c.env = env;
            }
        }
    }

    pub(crate) fn expire(&mut self, now: u64) {
        self.allocs.retain(|_, a| a.order.end_ms() > now);
    }

    /// Committed capacity of each child to active orders in `dir`, except `skip`.
    pub(crate) fn committed(&self, dir: Direction, skip: Option<&DispatchId>) -> Vec<u64> {
        let mut c = vec![0u64; self.children.len()];
        for (id, a) in &self.allocs {
            if a.order.direction != dir || Some(id) == skip {
                continue;
            }
            for (ci, s) in c.iter_mut().zip(&a.shares) {
                *ci += s;
            }
        }
        c
    }

    fn view(&self) -> NodeView {
        let up = self.committed(Direction::Up, None);
        let down = self.committed(Direction::Down, None);
        NodeView {
            id: self.id.clone(),
            kind: self.kind,
            spec: self.spec.clone(),
            envelope: self.sum.clone(),
            committed_up_w: up.iter().sum(),
            committed_down_w: down.iter().sum(),
            strategy: Some(self.strategy),
            children: self
                .children
                .iter()
                .enumerate()
                .map(|(i, c)| ChildView {
                    id: c.id.clone(),
                    envelope: c.env.clone(),
                    committed_up_w: up[i],
                    committed_down_w: down[i],
                    failed: c.failed,
                })
                .collect(),
            state: None,
            setpoints: Vec::new(),
            active_dispatches: self.allocs.keys().cloned().collect(),
        }
    }

    /// A child stopped or panicked: take it out of the envelope. Returns its
    /// index when it was a DER that should be restarted.
    fn child_down(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        evt: SupervisionEvent,
    ) -> Option<usize> {
        let (cell, why): (ActorCell, String) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return None,
        };
        let idx = self.by_actor.remove(&cell.get_id())?;
        if self.ctx.is_shutting_down() {
            return None;
        }
        Metrics::inc(&self.ctx.metrics.actor_failures);
        let c = &mut self.children[idx];
        tracing::warn!(node = %self.id, child = %c.id, reason = %why, "child actor down");
        c.failed = true;
        c.actor = None;
        let zero = FlexEnvelope::zero();
        self.sum.replace(&c.env, &zero);
        c.env = zero;
        self.mark_dirty(myself);
        c_is_der(&self.children[idx]).then_some(idx)
    }

    /// Brings a failed DER actor back with its last persisted state (offline
    /// until telemetry says otherwise when none is known).
    async fn restart_der(&mut self, myself: &ActorRef<AggregateMsg>, idx: usize) {
        let Some(spec) = self.children[idx].der.clone() else {
            return;
        };
        let state = self.ctx.last_state(&spec);
        let setpoints = self.ctx.last_setpoints(&spec.id);
        let env = vpp_domain::flex::der_envelope(&spec.rating, &state);
        let args = DerArgs {
            spec,
            state,
            setpoints,
            parent: myself.clone(),
            idx: idx as u32,
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, DerActor, args, myself.get_cell()).await {
            Ok((der, _)) => {
                Metrics::inc(&self.ctx.metrics.actor_restarts);
                self.by_actor.insert(der.get_id(), idx);
                let c = &mut self.children[idx];
                c.failed = false;
                c.actor = Some(ChildRef::Der(der));
                self.sum.replace(&c.env, &env);
                c.env = env;
                tracing::info!(node = %self.id, child = %c.id, "der actor restarted");
                self.mark_dirty(myself);
            }
            Err(e) => {
                tracing::error!(node = %self.id, child = %self.children[idx].id, error = %e, "der restart failed");
            }
        }
    }
}

fn c_is_der(c: &Child) -> bool {
    c.der.is_some()
}
