//! Site and virtual-DER actors: aggregates that roll capacity up and split
//! dispatch down.
//!
//! Both kinds run the same [`Aggregate`] logic; they differ in what their
//! children are. A virtual DER's children are site and virtual-DER actors,
//! reached by message. A site's children are the DER actors it hosts
//! ([`crate::der`]): their messages arrive in the site's mailbox and are
//! handed to them by index; a DER handler that panics is caught, counted and
//! the DER restarted from its persisted state, so one bad DER never takes its
//! site down.
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
//! A child on the same member does not send its report as a message: it puts
//! it in the parent's inbox and wakes the parent once per window
//! (`inbox.rs`); a child on another member sends `ChildReport`. A site
//! reports at once, and once per batch of DER inputs, however many of its
//! DERs the batch changed.
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
mod inbox;

pub(crate) use dispatch::Loss;
pub(crate) use inbox::Inbox;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use vpp_domain::{
    DerFlex, DerState, Direction, DispatchId, DispatchOrder, FlexEnvelope, NodeAllocation, NodeId,
    NodeKind, NodeSpec, Strategy,
};
use vpp_protocol::Desired;

use crate::build::FleetCtx;
use crate::der::{DerActor, DeviceRefusal};
use crate::messages::{
    settle, AggregateMsg, ChildView, DeviceInput, DispatchOutcome, NodeView, StateRejected,
};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::remote::{call_until, RemoteCall, RemoteCast, RemoteReply};

/// The actor of a site: its children are DER actors.
pub(crate) struct SiteActor;

/// The actor of a virtual DER: its children are sites and virtual DERs.
pub(crate) struct VirtualDerActor;

/// What [`Aggregate::handle_now`] leaves for the async path.
enum Later {
    Done,
    /// A message whose handling awaits.
    Msg(AggregateMsg),
    /// Shares hosted DERs refused in a batch of device messages.
    Refusals(Vec<(usize, DeviceRefusal)>),
}

/// What a parent keeps of one child's last report.
pub(crate) enum ChildEnv {
    /// A hosted DER: its contribution, one kind and its response (a site
    /// keeps one per DER, so a quarter of a whole envelope's size matters).
    Der(DerFlex),
    /// A site or virtual DER: its whole envelope, as it reported it (shared
    /// with the child).
    Node(Arc<FlexEnvelope>),
}

impl ChildEnv {
    pub(crate) fn node(env: FlexEnvelope) -> Self {
        ChildEnv::Node(Arc::new(env))
    }

    pub(crate) fn available_w(&self, dir: Direction) -> u64 {
        match self {
            ChildEnv::Der(d) => d.available_w(dir),
            ChildEnv::Node(e) => e.available_w(dir),
        }
    }

    pub(crate) fn mean_cost(&self, dir: Direction) -> u64 {
        match self {
            ChildEnv::Der(d) => d.mean_cost(dir),
            ChildEnv::Node(e) => e.mean_cost(dir),
        }
    }

    pub(crate) fn envelope(&self) -> FlexEnvelope {
        match self {
            ChildEnv::Der(d) => d.envelope(),
            ChildEnv::Node(e) => (**e).clone(),
        }
    }

    fn add_to(&self, sum: &mut FlexEnvelope) {
        match self {
            ChildEnv::Der(d) => sum.add_der(d),
            ChildEnv::Node(e) => sum.add(e),
        }
    }

    fn sub_from(&self, sum: &mut FlexEnvelope) {
        match self {
            ChildEnv::Der(d) => sum.sub_der(d),
            ChildEnv::Node(e) => sum.sub(e),
        }
    }
}

/// Replaces child `c`'s report with `new` in `sum` and in `c`.
fn set_child(sum: &mut FlexEnvelope, c: &mut Child, new: ChildEnv) {
    c.env.sub_from(sum);
    new.add_to(sum);
    c.env = new;
}

/// Replaces an aggregate child's envelope (reusing its box).
fn set_node(sum: &mut FlexEnvelope, c: &mut Child, new: Arc<FlexEnvelope>) {
    match &mut c.env {
        ChildEnv::Node(old) => {
            sum.replace(old, &new);
            *old = new;
        }
        ChildEnv::Der(_) => set_child(sum, c, ChildEnv::Node(new)),
    }
}

/// One child as the builder describes it.
pub(crate) struct ChildSpec {
    pub(crate) id: NodeId,
    pub(crate) kind: NodeKind,
    pub(crate) env: ChildEnv,
    /// Runs on another cluster member (reached through `RemoteLink`).
    pub(crate) remote: bool,
}

/// Where an aggregate reports to.
pub(crate) enum Parent {
    /// An actor on this member, this node's index among its children, and
    /// the parent's inbox for reports (see `inbox.rs`).
    Local(ActorRef<AggregateMsg>, u32, Arc<Inbox>),
    /// A virtual DER on another member, and this node's index there.
    Remote(NodeId, u32),
}

/// How to reach one child.
pub(crate) enum Target {
    Local(ActorRef<AggregateMsg>),
    Remote(NodeId, NodeKind),
    Down,
}

pub(crate) struct AggregateArgs {
    pub(crate) id: NodeId,
    pub(crate) kind: NodeKind,
    pub(crate) spec: NodeSpec,
    pub(crate) strategy: Strategy,
    pub(crate) parent: Option<Parent>,
    pub(crate) children: Vec<ChildSpec>,
    /// The DER actors a site hosts, in the order of `children` (empty for
    /// virtual DERs).
    pub(crate) ders: Vec<DerActor>,
    /// Allocations restored from the journal: orders still active.
    pub(crate) allocations: Vec<(Arc<DispatchOrder>, NodeAllocation)>,
    /// Where local children put their reports (virtual DERs; `None` for
    /// sites, whose children are hosted).
    pub(crate) inbox: Option<Arc<Inbox>>,
    /// Where in each roll-up period this node reports (virtual DERs; see
    /// `Aggregate::flush_delay`).
    pub(crate) phase: Duration,
    pub(crate) ctx: Arc<FleetCtx>,
}

pub(crate) struct Child {
    pub(crate) id: NodeId,
    pub(crate) kind: NodeKind,
    /// Runs on another cluster member.
    pub(crate) remote: bool,
    /// The child's actor (virtual DERs' children; `None` for hosted DERs and
    /// for a child actor that is down).
    pub(crate) actor: Option<ActorRef<AggregateMsg>>,
    pub(crate) env: ChildEnv,
    pub(crate) last_dispatched_ms: Option<u64>,
    pub(crate) failed: bool,
}

/// What this node holds for one order.
pub(crate) struct Alloc {
    pub(crate) order: Arc<DispatchOrder>,
    /// Accepted share of each child (index = child index).
    pub(crate) shares: Vec<u64>,
    /// Latest outcome of each child that was asked.
    pub(crate) outcomes: Vec<Option<DispatchOutcome>>,
    /// Children that refused part of their share: not asked again for it.
    pub(crate) refused: Vec<bool>,
    /// Grows with every change of this allocation (see `DispatchOutcome::epoch`).
    pub(crate) epoch: u64,
    pub(crate) record: NodeAllocation,
}

/// The orders a node holds a share of, each under its order's id. A node
/// holds a few at a time, so a short list: a hash map per node cost a table
/// allocation per site in a 1M-DER split (5 % of the workers' time).
#[derive(Default)]
pub(crate) struct Allocs(Vec<Alloc>);

impl Allocs {
    pub(crate) fn get(&self, id: &DispatchId) -> Option<&Alloc> {
        self.0.iter().find(|a| a.order.id == *id)
    }

    pub(crate) fn get_mut(&mut self, id: &DispatchId) -> Option<&mut Alloc> {
        self.0.iter_mut().find(|a| a.order.id == *id)
    }

    pub(crate) fn remove(&mut self, id: &DispatchId) -> Option<Alloc> {
        let i = self.0.iter().position(|a| a.order.id == *id)?;
        Some(self.0.swap_remove(i))
    }

    /// Keeps `alloc` under its order's id, replacing any held there.
    pub(crate) fn insert(&mut self, alloc: Alloc) {
        match self.get_mut(&alloc.order.id) {
            Some(held) => *held = alloc,
            None => {
                self.0.reserve_exact(1);
                self.0.push(alloc);
            }
        }
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&Alloc) -> bool) {
        self.0.retain(keep);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Alloc> {
        self.0.iter()
    }
}

pub(crate) struct Aggregate {
    pub(crate) id: NodeId,
    kind: NodeKind,
    spec: NodeSpec,
    pub(crate) strategy: Strategy,
    pub(crate) parent: Option<Parent>,
    pub(crate) children: Vec<Child>,
    /// Hosted DER actors (sites only), index = child index.
    pub(crate) ders: Vec<DerActor>,
    /// A hosted DER changed state or setpoints since the site record was
    /// last queued for persistence.
    pub(crate) ders_dirty: bool,
    /// Hosted DERs' state changed by telemetry only since the last write
    /// (written by `telemetry_persist_every`, see `FleetConfig`).
    telemetry_dirty: bool,
    /// When the hosted DERs were last written (ms).
    persisted_ms: u64,
    /// A hosted DER's setpoints may have changed: publish desired documents.
    pub(crate) desired_pending: bool,
    /// A sweep for silent devices is scheduled.
    sweep_pending: bool,
    /// `RemoteLink::losses` when the last report went to a remote parent.
    reported_losses: u64,
    by_actor: HashMap<ActorId, usize>,
    pub(crate) sum: FlexEnvelope,
    /// What it last reported; shared with a local parent, which keeps it
    /// as this child's envelope (no copy per report).
    reported: Arc<FlexEnvelope>,
    /// The report before, to reuse once the parent lets go of it.
    spare: Option<Arc<FlexEnvelope>>,
    dirty: bool,
    /// A site is applying a batch of DER inputs: it reports at the end.
    in_batch: bool,
    /// DER states applied in this batch, counted at its end.
    states_uncounted: u64,
    flush_pending: bool,
    /// Where in each roll-up period this node reports (`flush_delay`).
    phase: Duration,
    pub(crate) allocs: Allocs,
    inbox: Option<Arc<Inbox>>,
    /// Reports taken from the inbox (kept to reuse its allocation).
    drained: Vec<(u32, Arc<FlexEnvelope>)>,
    pub(crate) ctx: Arc<FleetCtx>,
}

fn start(a: AggregateArgs) -> Aggregate {
    let children: Vec<Child> = a
        .children
        .into_iter()
        .map(|c| Child {
            id: c.id,
            kind: c.kind,
            remote: c.remote,
            actor: None,
            env: c.env,
            last_dispatched_ms: None,
            failed: false,
        })
        .collect();
    let mut sum = FlexEnvelope::zero();
    for c in &children {
        c.env.add_to(&mut sum);
    }
    let n = children.len();
    let mut allocs = Allocs::default();
    // Most nodes hold no order: no index for them.
    let index: HashMap<&NodeId, usize> = if a.allocations.is_empty() {
        HashMap::new()
    } else {
        children
            .iter()
            .enumerate()
            .map(|(i, c)| (&c.id, i))
            .collect()
    };
    for (order, record) in a.allocations {
        let mut shares = vec![0; n];
        for (cid, w) in &record.children {
            if let Some(&i) = index.get(cid) {
                shares[i] = *w;
            }
        }
        allocs.insert(Alloc {
            order,
            shares,
            outcomes: vec![None; n],
            refused: vec![false; n],
            epoch: 0,
            record,
        });
    }
    Aggregate {
        id: a.id,
        kind: a.kind,
        spec: a.spec,
        strategy: a.strategy,
        parent: a.parent,
        children,
        ders: a.ders,
        ders_dirty: false,
        telemetry_dirty: false,
        persisted_ms: now_ms(),
        desired_pending: false,
        sweep_pending: false,
        reported_losses: 0,
        by_actor: HashMap::new(),
        reported: Arc::new(sum.clone()),
        spare: None,
        sum,
        dirty: false,
        in_batch: false,
        states_uncounted: 0,
        flush_pending: false,
        phase: a.phase,
        allocs,
        inbox: a.inbox,
        drained: Vec::new(),
        ctx: a.ctx,
    }
}

/// Both aggregate actors run the same handlers; only their names (in logs
/// and the supervision tree) and their children differ.
macro_rules! aggregate_actor {
    ($actor:ty) => {
        impl Actor for $actor {
            type Msg = AggregateMsg;
            type State = Aggregate;
            type Arguments = AggregateArgs;

            async fn pre_start(
                &self,
                myself: ActorRef<AggregateMsg>,
                a: AggregateArgs,
            ) -> Result<Aggregate, ActorProcessingErr> {
                let mut agg = start(a);
                agg.arm_sweep(&myself);
                if matches!(agg.parent, Some(Parent::Remote(..))) {
                    // Tell the parent on the other member what this node
                    // holds now, and again every interval (repairs a lost
                    // report; see `remote.rs`).
                    agg.report_up();
                    myself.send_after(agg.ctx.config.remote_report_interval, || {
                        AggregateMsg::Resend
                    });
                }
                Ok(agg)
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

            /// A failed child actor takes its subtree with it; it stays out of
            /// the envelope until the hierarchy is reloaded. (Sites link no
            /// child actors: their DERs are hosted and supervised in place.)
            /// Writes what telemetry changed and is not written yet.
            async fn post_stop(
                &self,
                _: ActorRef<AggregateMsg>,
                agg: &mut Aggregate,
            ) -> Result<(), ActorProcessingErr> {
                if agg.telemetry_dirty {
                    agg.persist_ders();
                }
                Ok(())
            }

            async fn handle_supervisor_evt(
                &self,
                myself: ActorRef<AggregateMsg>,
                evt: SupervisionEvent,
                agg: &mut Aggregate,
            ) -> Result<(), ActorProcessingErr> {
                agg.child_down(&myself, evt);
                Ok(())
            }
        }
    };
}

aggregate_actor!(SiteActor);
aggregate_actor!(VirtualDerActor);

impl Aggregate {
    async fn handle(&mut self, myself: ActorRef<AggregateMsg>, msg: AggregateMsg) {
        match msg {
            // These two decide themselves when to drain (see `inbox.rs`).
            AggregateMsg::ReportsWaiting | AggregateMsg::Flush => {}
            _ => self.drain_reports(),
        }
        // Most messages (reports, telemetry, timers) need no await. The rest
        // (a split, a re-split, a refresh) run in a boxed future: ractor
        // moves an actor's handler future for every message, and with those
        // futures inline every report copied a few KB (the largest item in
        // a profile of the 1M-DER wave).
        match self.handle_now(&myself, msg) {
            Later::Done => {}
            Later::Msg(msg) => Box::pin(self.handle_later(myself, msg)).await,
            Later::Refusals(refusals) => Box::pin(self.refused(myself, refusals)).await,
        }
        if self.ders_dirty || self.telemetry_due() {
            self.persist_ders();
        }
        if self.desired_pending {
            self.publish_desired();
        }
    }

    /// Whether state changed by telemetry alone is due to be written.
    fn telemetry_due(&self) -> bool {
        let every = self.ctx.config.telemetry_persist_every.as_millis() as u64;
        self.telemetry_dirty && now_ms().saturating_sub(self.persisted_ms) >= every
    }

    /// Sends every DER whose setpoints changed its new desired document
    /// (after the site record is queued, so what devices see is journaled).
    fn publish_desired(&mut self) {
        self.desired_pending = false;
        let now = now_ms();
        let docs = self
            .ders
            .iter_mut()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.take_desired(now)?)))
            .collect();
        self.send_documents(docs);
    }

    /// Sends the new documents `docs` (by DER index): one per DER, or, when
    /// the link wants site documents, one for the site holding every DER's
    /// current document, the new ones among them.
    fn send_documents(&mut self, mut docs: Vec<(usize, Desired)>) {
        if docs.is_empty() {
            return;
        }
        Metrics::add(&self.ctx.metrics.desired_published, docs.len() as u64);
        let link = &self.ctx.devices;
        if !link.site_documents() {
            for (i, doc) in &docs {
                link.desired(&self.id, &self.ders[*i].spec().id, doc);
            }
            return;
        }
        let mut all = Vec::with_capacity(self.ders.len());
        let mut new = docs.drain(..).peekable();
        for (i, d) in self.ders.iter().enumerate() {
            let doc = match new.next_if(|(j, _)| *j == i) {
                Some((_, doc)) => Some(doc),
                None => d.current_document(),
            };
            if let Some(doc) = doc {
                all.push((&d.spec().id, doc));
            }
        }
        link.desired_site(&self.id, &all);
    }

    /// Queues one record with every hosted DER's state and setpoints.
    pub(crate) fn persist_ders(&mut self) {
        self.ders_dirty = false;
        self.telemetry_dirty = false;
        self.persisted_ms = now_ms();
        let records = self.ders.iter().map(DerActor::record).collect();
        self.ctx.journal.site_ders(&self.id, records);
    }

    /// Handles a message that needs no await; what does is left for later.
    fn handle_now(&mut self, myself: &ActorRef<AggregateMsg>, msg: AggregateMsg) -> Later {
        match msg {
            AggregateMsg::ChildReport { idx, env } => {
                let Some(c) = self.children.get_mut(idx as usize) else {
                    return Later::Done;
                };
                set_node(&mut self.sum, c, Arc::from(env));
                self.mark_dirty(myself);
            }
            AggregateMsg::ReportsWaiting => {
                if self.parent.is_none() {
                    // The root's sum is current as soon as reports arrive.
                    if let Some(inbox) = &self.inbox {
                        inbox.disarm();
                    }
                    self.drain_reports();
                } else if !self.flush_pending {
                    self.flush_pending = true;
                    myself.send_after(self.flush_delay(), || AggregateMsg::Flush);
                }
            }
            AggregateMsg::Flush => {
                self.flush_pending = false;
                if let Some(inbox) = &self.inbox {
                    inbox.disarm();
                }
                self.drain_reports();
                if self.dirty {
                    self.flush();
                }
            }
            AggregateMsg::Attach(refs) => {
                for (i, r) in refs.into_iter().enumerate() {
                    if let (Some(c), Some(r)) = (self.children.get_mut(i), r) {
                        self.by_actor.insert(r.get_id(), i);
                        c.actor = Some(r);
                    }
                }
            }
            AggregateMsg::Resend => {
                // Only if something may have been lost since the last one.
                let losses = self.ctx.remote.as_ref().map_or(0, |l| l.losses());
                if losses != self.reported_losses {
                    self.report_up();
                }
                myself.send_after(self.ctx.config.remote_report_interval, || {
                    AggregateMsg::Resend
                });
            }
            AggregateMsg::DerState(idx, state, reply) => {
                let r = self.der_state(myself, idx as usize, state, None);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            AggregateMsg::DerStates(batch) => self.as_one_report(|this| {
                for (idx, state) in batch {
                    let _ = this.der_state(myself, idx as usize, state, None);
                }
            }),
            AggregateMsg::DeviceInputs(batch) => {
                let refusals = self.device_inputs(myself, batch);
                if !refusals.is_empty() {
                    return Later::Refusals(refusals);
                }
            }
            AggregateMsg::GatewayStatus(online) => {
                if !online {
                    self.as_one_report(|this| {
                        for i in 0..this.ders.len() {
                            if let Ok(true) = this.with_der(myself, i, |d, _| d.gateway_offline()) {
                                Metrics::inc(&this.ctx.metrics.gateways_offline);
                                this.der_changed(myself, i);
                            }
                        }
                    });
                }
            }
            AggregateMsg::Sweep => {
                self.sweep_pending = false;
                // Devices that went quiet leave no later message to write
                // their last state with.
                self.ders_dirty |= self.telemetry_dirty;
                let cutoff =
                    now_ms().saturating_sub(self.ctx.config.offline_after.as_millis() as u64);
                self.as_one_report(|this| {
                    for i in 0..this.ders.len() {
                        if let Ok(true) = this.with_der(myself, i, |d, _| d.time_out(cutoff)) {
                            Metrics::inc(&this.ctx.metrics.devices_timed_out);
                            this.der_changed(myself, i);
                        }
                    }
                });
                self.arm_sweep(myself);
            }
            AggregateMsg::Republish(unapplied_only) => {
                let now = now_ms();
                let docs = self
                    .ders
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, d)| Some((i, d.republish(now, unapplied_only)?)))
                    .collect();
                self.send_documents(docs);
            }
            #[cfg(test)]
            AggregateMsg::PanicDer(idx, reply) => {
                let r = self.with_der(myself, idx as usize, |_, _| panic!("injected fault"));
                let _ = reply.send(r);
            }
            AggregateMsg::DerView(idx, reply) => {
                let now = now_ms();
                let idx = idx as usize;
                let view = match self.with_der(myself, idx, |d, _| d.expire(now)) {
                    Ok(expired) => {
                        self.ders_dirty |= expired;
                        let env = self.children[idx].env.envelope();
                        self.ders.get(idx).map(|d| d.view(&env))
                    }
                    Err(_) => None,
                };
                let _ = reply.send(view);
            }
            AggregateMsg::View(reply) => {
                self.expire(now_ms());
                let _ = reply.send(self.view());
            }
            AggregateMsg::Allocation(id, reply) => {
                let _ = reply.send(self.allocs.get(&id).map(|a| a.record.clone()));
            }
            msg @ (AggregateMsg::ShareRefused { .. }
            | AggregateMsg::Refresh(_)
            | AggregateMsg::Dispatch(..)
            | AggregateMsg::Cancel(..)) => return Later::Msg(msg),
        }
        Later::Done
    }

    /// The messages that await (asks of children, re-splits).
    async fn handle_later(&mut self, myself: ActorRef<AggregateMsg>, msg: AggregateMsg) {
        match msg {
            AggregateMsg::ShareRefused {
                idx,
                dispatch,
                holds_w,
                epoch,
                reason,
            } => {
                let loss = Loss::Holds { holds_w, epoch };
                self.share_refused(&myself, idx as usize, &dispatch, loss, reason)
                    .await;
            }
            AggregateMsg::Refresh(reply) => {
                self.refresh().await;
                let _ = reply.send(self.sum.clone());
            }
            AggregateMsg::Dispatch(share, reply) => {
                let out = self.dispatch(&myself, share).await;
                let _ = reply.send(out);
            }
            AggregateMsg::Cancel(id, reply) => {
                self.cancel(&myself, &id).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            // `handle_now` handles every other message and never leaves one.
            _ => {}
        }
    }

    /// Tells the parent of the shares hosted DERs refused (after the
    /// site's report of the batch that carried the refusals).
    async fn refused(
        &mut self,
        myself: ActorRef<AggregateMsg>,
        refusals: Vec<(usize, DeviceRefusal)>,
    ) {
        for (i, r) in refusals {
            self.share_refused(&myself, i, &r.dispatch, Loss::Cut(r.power_w), r.reason)
                .await;
        }
    }

    /// Folds the reports waiting in the inbox into the sum. Reports of a
    /// child that has failed since are dropped (it stays out).
    fn drain_reports(&mut self) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        inbox.drain(&mut self.drained);
        for (idx, env) in self.drained.drain(..) {
            if let Some(c) = self.children.get_mut(idx as usize) {
                if !c.failed {
                    set_node(&mut self.sum, c, env);
                    self.dirty = true;
                }
            }
        }
    }

    fn interval(&self) -> Duration {
        self.ctx.config.rollup_interval
    }

    /// How long until this virtual DER reports what has accumulated: until
    /// the next instant of its phase in the roll-up period `T`. Periods are
    /// aligned to the wall clock (so members of a cluster share them, to
    /// within their clocks' skew), and a virtual DER of height `h` (see
    /// `build.rs`) reports `h · T / (H + 1)` into each, `H` the tallest
    /// below the root: children report just before their parents, and a
    /// change climbs every level within one period plus a phase step per
    /// level, under `2T` at any depth (a timer of `T` from the first change
    /// at each level took up to `T` per level). Still one report per node
    /// per period at most.
    fn flush_delay(&self) -> Duration {
        phase_wait(self.interval(), self.phase, wall_clock_us())
    }

    fn mark_dirty(&mut self, myself: &ActorRef<AggregateMsg>) {
        if self.parent.is_none() {
            return; // the root's sum is always current
        }
        self.dirty = true;
        if !self.ders.is_empty() {
            // A site reports at once (before it answers whoever changed a
            // DER, so the parent is current when they hear back), but once
            // per batch of DER states rather than once per DER in it. No
            // timer: its input already arrives batched per site, and a timer
            // per site (a quarter of a million) would cost more than it saves.
            if !self.in_batch {
                self.flush();
            }
            return;
        }
        if self.flush_pending {
            Metrics::inc(&self.ctx.metrics.reports_coalesced);
            return;
        }
        self.flush_pending = true;
        myself.send_after(self.flush_delay(), || AggregateMsg::Flush);
    }

    /// Runs `f`, which changes hosted DERs, as one batch: the site reports
    /// up once at the end, however many of its DERs changed (a report per
    /// DER cloned the envelope into the parent's inbox four times per site
    /// in a 1M-DER split).
    pub(crate) fn as_one_report<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.in_batch = true;
        let r = f(self);
        self.in_batch = false;
        let applied = std::mem::take(&mut self.states_uncounted);
        if applied > 0 {
            self.ctx
                .metrics
                .states_applied
                .fetch_add(applied, std::sync::atomic::Ordering::Relaxed);
        }
        if self.dirty {
            self.flush();
        }
        r
    }

    fn flush(&mut self) {
        self.dirty = false;
        if self.sum == *self.reported {
            return;
        }
        self.renew_report();
        if self.parent.is_some() {
            Metrics::inc(&self.ctx.metrics.reports_sent);
            self.report_up();
        }
    }

    /// Makes `reported` hold the sum, reusing an envelope nobody else holds
    /// any more (the last report's, or the one before, which the parent let
    /// go of when this one arrived): a report allocates only when both are
    /// still held. An allocation per report, freed later on another worker,
    /// sent every site's report through the allocator's slow path (the top
    /// item of a 1M-DER wave's profile).
    fn renew_report(&mut self) {
        if let Some(env) = Arc::get_mut(&mut self.reported) {
            env.clone_from(&self.sum);
            return;
        }
        let fresh = match self.spare.take() {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(env) => {
                    env.clone_from(&self.sum);
                    spare
                }
                None => Arc::new(self.sum.clone()),
            },
            None => Arc::new(self.sum.clone()),
        };
        self.spare = Some(std::mem::replace(&mut self.reported, fresh));
    }

    /// Sends the parent the last reported envelope.
    fn report_up(&mut self) {
        match &self.parent {
            Some(Parent::Local(parent, idx, inbox)) => {
                let first = inbox.put(*idx, Arc::clone(&self.reported));
                if first {
                    // Only the first report since the parent's flush wakes it.
                    let _ = parent.cast(AggregateMsg::ReportsWaiting);
                }
            }
            Some(Parent::Remote(parent, idx)) => {
                if let Some(link) = &self.ctx.remote {
                    self.reported_losses = link.losses();
                    link.cast(
                        NodeKind::VirtualDer,
                        RemoteCast::ChildReport {
                            to: parent.clone(),
                            idx: *idx,
                            env: Box::new((*self.reported).clone()),
                        },
                    );
                }
            }
            None => {}
        }
    }

    /// How to reach child `i`.
    pub(crate) fn target(&self, i: usize) -> Target {
        let c = &self.children[i];
        match (&c.actor, c.remote) {
            (Some(a), _) => Target::Local(a.clone()),
            (None, true) if self.ctx.remote.is_some() => Target::Remote(c.id.clone(), c.kind),
            _ => Target::Down,
        }
    }

    /// Calls child `i` (an aggregate, local or on another member): `local`
    /// builds the message for an actor here, `remote` is the same request
    /// for another member, `unwrap` takes the answer out of its reply.
    pub(crate) fn call_child<T: Send + 'static>(
        &self,
        i: usize,
        local: impl FnOnce(ractor::RpcReplyPort<T>) -> AggregateMsg + Send + 'static,
        remote: RemoteCall,
        unwrap: fn(RemoteReply) -> Option<T>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<T, String>> {
        let target = self.target(i);
        let ctx = self.ctx.clone();
        Box::pin(async move {
            match target {
                Target::Local(a) => settle(a.call(local, Some(timeout)).await),
                Target::Remote(id, kind) => {
                    let r = call_until(&ctx, (&id, kind), remote, timeout).await?;
                    unwrap(r).ok_or_else(|| format!("{id} answered something else"))
                }
                Target::Down => Err("child actor is down".to_string()),
            }
        })
    }

    /// Pulls a fresh envelope from every child now (bypassing coalescing), so
    /// the answer reflects every change made before the call.
    async fn refresh(&mut self) {
        if !self.ders.is_empty() {
            for (c, d) in self.children.iter_mut().zip(&self.ders) {
                set_child(&mut self.sum, c, ChildEnv::Der(d.flex()));
            }
            return;
        }
        let timeout = self.ctx.config.dispatch_timeout;
        let asks = (0..self.children.len()).map(|i| {
            self.call_child(
                i,
                AggregateMsg::Refresh,
                RemoteCall::Refresh {
                    to: self.children[i].id.clone(),
                },
                |r| match r {
                    RemoteReply::Envelope(e) => Some(*e),
                    _ => None,
                },
                timeout,
            )
        });
        let results = futures::future::join_all(asks).await;
        for (c, r) in self.children.iter_mut().zip(results) {
            if let Ok(env) = r {
                set_node(&mut self.sum, c, Arc::new(env));
            }
        }
    }

    pub(crate) fn expire(&mut self, now: u64) {
        self.allocs.retain(|a| a.order.end_ms() > now);
    }

    /// Committed capacity of each child to active orders in `dir`, except `skip`.
    pub(crate) fn committed(&self, dir: Direction, skip: Option<&DispatchId>) -> Vec<u64> {
        let mut c = vec![0u64; self.children.len()];
        for a in self.allocs.iter() {
            if a.order.direction != dir || Some(&a.order.id) == skip {
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
                    envelope: c.env.envelope(),
                    committed_up_w: up[i],
                    committed_down_w: down[i],
                    failed: c.failed,
                })
                .collect(),
            state: None,
            setpoints: Vec::new(),
            active_dispatches: self.allocs.iter().map(|a| a.order.id.clone()).collect(),
            device: None,
        }
    }

    /// A child actor stopped or panicked: take it out of the envelope.
    fn child_down(&mut self, myself: &ActorRef<AggregateMsg>, evt: SupervisionEvent) {
        let (cell, why): (ActorCell, String) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return,
        };
        let Some(idx) = self.by_actor.remove(&cell.get_id()) else {
            return;
        };
        if self.ctx.is_shutting_down() {
            return;
        }
        Metrics::inc(&self.ctx.metrics.actor_failures);
        let c = &mut self.children[idx];
        tracing::warn!(node = %self.id, child = %c.id, reason = %why, "child actor down");
        c.failed = true;
        c.actor = None;
        set_node(&mut self.sum, c, Arc::new(FlexEnvelope::zero()));
        self.mark_dirty(myself);
    }

    /// Runs `f` on hosted DER `idx`, as its actor. A panic in `f` is caught:
    /// the DER is restarted from its persisted state and the caller gets the
    /// failure as an error.
    pub(crate) fn with_der<T>(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        idx: usize,
        f: impl FnOnce(&mut DerActor, &FleetCtx) -> T,
    ) -> Result<T, String> {
        // Borrowed, not cloned: a clone per call bumped the fleet's one
        // reference count from both workers, twice per DER.
        let ctx = &self.ctx;
        let Some(d) = self.ders.get_mut(idx) else {
            return Err(format!("{} hosts no DER number {idx}", self.id));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(d, ctx))) {
            Ok(v) => Ok(v),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                self.restart_der(myself, idx, &msg);
                Err(format!("der failed ({msg}) and was restarted"))
            }
        }
    }

    /// Replaces a failed DER actor with a fresh one built from its last
    /// persisted state and setpoints (offline when none is known).
    fn restart_der(&mut self, myself: &ActorRef<AggregateMsg>, idx: usize, why: &str) {
        Metrics::inc(&self.ctx.metrics.actor_failures);
        let spec = self.ders[idx].spec().clone();
        tracing::warn!(node = %self.id, der = %spec.id, reason = %why, "der actor failed; restarting");
        let (state, setpoints) = self.ctx.last_record(&self.id, &spec);
        let der = DerActor::new(spec, state, setpoints, &self.ctx);
        let flex = der.flex();
        self.ders[idx] = der;
        set_child(&mut self.sum, &mut self.children[idx], ChildEnv::Der(flex));
        Metrics::inc(&self.ctx.metrics.actor_restarts);
        self.mark_dirty(myself);
    }

    /// Applies a state to hosted DER `idx` and folds its new envelope in.
    /// `heard_ms` is set for telemetry.
    fn der_state(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        idx: usize,
        state: DerState,
        heard_ms: Option<u64>,
    ) -> Result<(), StateRejected> {
        let env = match self.with_der(myself, idx, |d, ctx| d.set_state(state, heard_ms, ctx)) {
            Ok(r) => r?,
            Err(_) => return Ok(()), // restarted; the failure is counted
        };
        if heard_ms.is_some() {
            self.telemetry_dirty = true;
        } else {
            self.ders_dirty = true;
        }
        if self.in_batch {
            self.states_uncounted += 1;
        } else {
            Metrics::inc(&self.ctx.metrics.states_applied);
        }
        self.fold_der(myself, idx, env);
        Ok(())
    }

    /// Folds hosted DER `idx`'s new envelope into the sum, if it changed.
    /// A DER's envelope has only its own kind and the response (see
    /// `DerFlex`), so only those are compared, summed and copied: this runs
    /// once per DER per telemetry wave.
    fn fold_der(&mut self, myself: &ActorRef<AggregateMsg>, idx: usize, new: DerFlex) {
        let c = &mut self.children[idx];
        match &mut c.env {
            ChildEnv::Der(old) if *old == new => {}
            ChildEnv::Der(old) => {
                self.sum.replace_der(old, &new);
                *old = new;
                self.mark_dirty(myself);
            }
            ChildEnv::Node(_) => {
                set_child(&mut self.sum, c, ChildEnv::Der(new));
                self.mark_dirty(myself);
            }
        }
    }

    /// Recomputes hosted DER `idx`'s envelope after it changed in place.
    pub(crate) fn der_changed(&mut self, myself: &ActorRef<AggregateMsg>, idx: usize) {
        self.ders_dirty = true;
        if let Some(flex) = self.ders.get(idx).map(DerActor::flex) {
            self.fold_der(myself, idx, flex);
        }
    }

    /// Schedules a sweep for silent devices if one is due and none is pending.
    fn arm_sweep(&mut self, myself: &ActorRef<AggregateMsg>) {
        if self.sweep_pending || !self.ders.iter().any(DerActor::tracked_online) {
            return;
        }
        self.sweep_pending = true;
        myself.send_after(self.ctx.config.offline_after, || AggregateMsg::Sweep);
    }

    /// Telemetry, acks and reports from the devices of hosted DERs.
    /// Applies a batch of device messages; returns the shares refused, to
    /// be passed up once the site has reported the batch.
    fn device_inputs(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        batch: Vec<(u32, DeviceInput)>,
    ) -> Vec<(usize, DeviceRefusal)> {
        let now = now_ms();
        let mut refusals = Vec::new();
        // Report before telling the parent of refusals, so it re-splits with
        // this site's envelope as of the whole batch.
        self.as_one_report(|this| this.apply_device_inputs(myself, batch, now, &mut refusals));
        refusals
    }

    fn apply_device_inputs(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        batch: Vec<(u32, DeviceInput)>,
        now: u64,
        refusals: &mut Vec<(usize, DeviceRefusal)>,
    ) {
        for (idx, input) in batch {
            let i = idx as usize;
            match input {
                DeviceInput::Telemetry(state) => {
                    let ts = state.updated_ms.min(now);
                    if self.der_state(myself, i, state, Some(now)).is_err() {
                        Metrics::inc(&self.ctx.metrics.telemetry_replayed);
                    } else if ts > self.sum.telemetry_ms {
                        // Rides along with the next report; on its own it
                        // is no reason to report (it would make every
                        // telemetry message one).
                        self.sum.telemetry_ms = ts;
                    }
                }
                DeviceInput::Ack(ack) => {
                    match self.with_der(myself, i, |d, ctx| d.ack(&ack, ctx)) {
                        Ok(Ok(gone)) => {
                            self.desired_pending |= !gone.is_empty();
                            refusals.extend(gone.into_iter().map(|r| (i, r)));
                            self.der_changed(myself, i);
                        }
                        Ok(Err(_)) => Metrics::inc(&self.ctx.metrics.acks_unknown_version),
                        Err(_) => {} // restarted; counted
                    }
                }
                DeviceInput::Reported(version) => {
                    match self.with_der(myself, i, |d, _| d.reported(version)) {
                        Ok(Ok(behind)) => self.desired_pending |= behind,
                        Ok(Err(_)) => Metrics::inc(&self.ctx.metrics.acks_unknown_version),
                        Err(_) => {}
                    }
                }
            }
        }
        self.arm_sweep(myself);
    }
}

/// From `now_us` (µs since the Unix epoch) to the next instant `phase` into
/// a period of `period` (periods counted from the epoch); a full period if
/// that instant is now.
fn phase_wait(period: Duration, phase: Duration, now_us: u64) -> Duration {
    let t = period.as_micros() as u64;
    if t == 0 {
        return Duration::ZERO;
    }
    let phase = phase.as_micros() as u64 % t;
    let wait = (phase + t - now_us % t) % t;
    Duration::from_micros(if wait == 0 { t } else { wait })
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
