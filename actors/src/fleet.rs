//! [`Fleet`]: the handle the runtime holds on a live hierarchy.
//!
//! It owns the index from node id to actor, starts the tree (from a
//! [`Hierarchy`] or from the store), and turns requests into messages:
//! "what can you do now", dispatch, cancel, DER state updates.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use vpp_domain::{
    DerState, DispatchId, DispatchOrder, DispatchStatus, FlexEnvelope, Hierarchy, HierarchyError,
    NodeAllocation, NodeId, NodeKind,
};

use crate::build::{build, Built, FleetCtx, NodeHandle, Snapshot};
use crate::config::FleetConfig;
use crate::devices::DeviceLink;
use crate::journal::Journal;
use crate::messages::{
    settle, AggregateMsg, DerAddr, DeviceInput, DispatchOutcome, DispatchShare, NodeView,
    StateRejected,
};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::remote::{RemoteCall, RemoteCast, RemoteLink, RemoteReply};

/// Why a fleet request failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No node has that id.
    #[error("no node {0} in the hierarchy")]
    UnknownNode(NodeId),
    /// Orders go to aggregates.
    #[error("{0} is a {1}; dispatch orders go to sites or virtual DERs")]
    NotAnAggregate(NodeId, &'static str),
    /// State updates go to DERs.
    #[error("{0} is a {1}; state updates go to DERs")]
    NotADer(NodeId, &'static str),
    /// The node's actor did not answer.
    #[error("node {0} did not answer: {1}")]
    Unavailable(NodeId, String),
    /// The hierarchy is not valid.
    #[error("invalid hierarchy: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<HierarchyError>),
    /// The tree could not be started.
    #[error("starting the fleet: {0}")]
    Start(String),
    /// Reading saved state failed.
    #[error(transparent)]
    Store(#[from] vpp_store::StoreError),
    /// A DER refused a state update.
    #[error(transparent)]
    Rejected(#[from] StateRejected),
}

/// Watches the root of the tree; logs when it goes down.
struct FleetSupervisor;

impl Actor for FleetSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        evt: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = evt {
            tracing::error!(actor = %who.get_id(), error = %err, "root of the fleet failed");
        }
        Ok(())
    }
}

/// What a fleet is started with besides its nodes.
struct Parts {
    config: FleetConfig,
    journal: Arc<dyn Journal>,
    devices: Arc<dyn DeviceLink>,
    metrics: Arc<Metrics>,
    store: Option<vpp_store::Store>,
    remote: Option<Arc<dyn RemoteLink>>,
}

struct Inner {
    index: rustc_hash::FxHashMap<NodeId, NodeHandle>,
    /// Site actors by number (`NodeHandle::site_no`).
    sites: Vec<ActorRef<AggregateMsg>>,
    root_id: NodeId,
    supervisor: ActorRef<()>,
    ctx: Arc<FleetCtx>,
}

/// A live hierarchy of actors. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    /// Starts a fleet for `hierarchy` with every DER at its nominal state.
    pub async fn start(
        hierarchy: Hierarchy,
        config: FleetConfig,
        journal: Arc<dyn Journal>,
        devices: Arc<dyn DeviceLink>,
        metrics: Arc<Metrics>,
    ) -> Result<Fleet, FleetError> {
        Self::start_linked(hierarchy, config, journal, devices, metrics, None).await
    }

    /// [`Fleet::start`] of this member's part of a fleet spread over
    /// cluster members: only the aggregates `remote` places here run here.
    pub async fn start_linked(
        hierarchy: Hierarchy,
        config: FleetConfig,
        journal: Arc<dyn Journal>,
        devices: Arc<dyn DeviceLink>,
        metrics: Arc<Metrics>,
        remote: Option<Arc<dyn RemoteLink>>,
    ) -> Result<Fleet, FleetError> {
        let topology = hierarchy.validate().map_err(FleetError::Invalid)?;
        let snap = Snapshot {
            hierarchy,
            topology,
            states: HashMap::new(),
            setpoints: HashMap::new(),
            allocations: HashMap::new(),
            orders: HashMap::new(),
        };
        let parts = Parts {
            config,
            journal,
            devices,
            metrics,
            store: None,
            remote,
        };
        Self::start_snapshot(snap, parts, |_, _| {}).await
    }

    /// Rebuilds the fleet from what the store holds: hierarchy, last DER
    /// states, setpoints and the allocations of orders still active.
    /// `progress(done, total)` is called after each level is up.
    pub async fn start_from_store(
        store: vpp_store::Store,
        config: FleetConfig,
        journal: Arc<dyn Journal>,
        devices: Arc<dyn DeviceLink>,
        metrics: Arc<Metrics>,
        progress: impl FnMut(usize, usize),
    ) -> Result<Fleet, FleetError> {
        Self::start_from_store_linked(store, config, journal, devices, metrics, None, progress)
            .await
    }

    /// [`Fleet::start_from_store`] of this member's part of a fleet spread
    /// over cluster members (see [`Fleet::start_linked`]).
    pub async fn start_from_store_linked(
        store: vpp_store::Store,
        config: FleetConfig,
        journal: Arc<dyn Journal>,
        devices: Arc<dyn DeviceLink>,
        metrics: Arc<Metrics>,
        remote: Option<Arc<dyn RemoteLink>>,
        progress: impl FnMut(usize, usize),
    ) -> Result<Fleet, FleetError> {
        let s = store.clone();
        let t = std::time::Instant::now();
        let snap = tokio::task::spawn_blocking(move || load_snapshot(&s))
            .await
            .map_err(|e| FleetError::Start(e.to_string()))??;
        tracing::info!(
            nodes = snap.hierarchy.len(),
            states = snap.states.len(),
            ms = t.elapsed().as_millis() as u64,
            "loaded from store"
        );
        let parts = Parts {
            config,
            journal,
            devices,
            metrics,
            store: Some(store),
            remote,
        };
        Self::start_snapshot(snap, parts, progress).await
    }

    async fn start_snapshot(
        snap: Snapshot,
        p: Parts,
        progress: impl FnMut(usize, usize),
    ) -> Result<Fleet, FleetError> {
        let (supervisor, _) = Actor::spawn(None, FleetSupervisor, ())
            .await
            .map_err(|e| FleetError::Start(e.to_string()))?;
        let ctx = Arc::new(FleetCtx::new(
            p.config, p.metrics, p.journal, p.devices, p.store, p.remote,
        ));
        let Built {
            index,
            sites,
            root_id,
        } = match build(snap, ctx.clone(), supervisor.get_cell(), progress).await {
            Ok(b) => b,
            Err(e) => {
                ctx.begin_shutdown();
                supervisor.stop(None);
                return Err(FleetError::Start(e));
            }
        };
        Ok(Fleet {
            inner: Arc::new(Inner {
                index,
                sites,
                root_id,
                supervisor,
                ctx,
            }),
        })
    }

    /// The root virtual DER.
    pub fn root(&self) -> &NodeId {
        &self.inner.root_id
    }

    /// Number of nodes of all kinds.
    pub fn len(&self) -> usize {
        self.inner.index.len()
    }

    /// True when the fleet has no nodes (never, once started).
    pub fn is_empty(&self) -> bool {
        self.inner.index.is_empty()
    }

    /// Kind and parent of a node.
    pub fn node(&self, id: &NodeId) -> Option<(NodeKind, Option<&NodeId>)> {
        self.inner
            .index
            .get(id)
            .map(|h| (h.kind, h.parent.as_ref()))
    }

    /// The fleet's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.ctx.metrics
    }

    fn handle(&self, id: &NodeId) -> Result<&NodeHandle, FleetError> {
        self.inner
            .index
            .get(id)
            .ok_or_else(|| FleetError::UnknownNode(id.clone()))
    }

    fn timeout(&self) -> Duration {
        self.inner.ctx.config.dispatch_timeout
    }

    /// "What can you do now": the node's envelope, commitments and children
    /// as it currently knows them (roll-up may lag by `rollup_interval` per
    /// level).
    pub async fn view(&self, id: &NodeId) -> Result<NodeView, FleetError> {
        let h = self.handle(id)?;
        let t = Some(self.timeout());
        let Some(actor) = &h.actor else {
            let call = RemoteCall::View { to: id.clone() };
            return match self.remote(id, call).await? {
                RemoteReply::View(v) => Ok(*v),
                other => Err(unexpected(id, other)),
            };
        };
        match h.der_idx {
            Some(i) => answer(id, actor.call(|rp| AggregateMsg::DerView(i, rp), t).await)?
                .ok_or_else(|| FleetError::Unavailable(id.clone(), "der is restarting".into())),
            None => answer(id, actor.call(AggregateMsg::View, t).await),
        }
    }

    /// Where requests for node `id` go when it runs on another member: the
    /// aggregate itself, or a DER's site.
    fn route<'a>(&'a self, id: &'a NodeId, h: &'a NodeHandle) -> (&'a NodeId, NodeKind) {
        match (h.kind, &h.parent) {
            (NodeKind::Der, Some(site)) => (site, NodeKind::Site),
            (kind, _) => (id, kind),
        }
    }

    /// Sends `call` for node `id` to the member it runs on.
    async fn remote(&self, id: &NodeId, call: RemoteCall) -> Result<RemoteReply, FleetError> {
        let h = self.handle(id)?;
        crate::remote::call_until(&self.inner.ctx, self.route(id, h), call, self.timeout())
            .await
            .map_err(|e| FleetError::Unavailable(id.clone(), e))
    }

    /// Whether node `id` runs on this member (DERs: their site).
    pub fn is_here(&self, id: &NodeId) -> bool {
        self.inner.index.get(id).is_some_and(|h| h.actor.is_some())
    }

    /// Whether `site` is a site of the hierarchy that runs on another
    /// member (the device-ingest path: no allocation).
    pub fn runs_elsewhere(&self, site: &str) -> bool {
        self.inner
            .index
            .get(site)
            .is_some_and(|h| h.kind == NodeKind::Site && h.actor.is_none())
    }

    /// Answers a request another member sent for a node that runs here
    /// (never forwards it again: a node not here is `Failed`).
    pub async fn serve_call(&self, call: RemoteCall) -> RemoteReply {
        let id = call.to().clone();
        if !self.is_here(&id) {
            return RemoteReply::Failed(format!("{id} does not run on this member"));
        }
        let r = match call {
            RemoteCall::Dispatch {
                order,
                share_w,
                timeout_ms,
                reassert,
                ..
            } => {
                let timeout = Duration::from_millis(timeout_ms);
                self.dispatch_share(&id, Arc::new(order), share_w, timeout, reassert)
                    .await
                    .map(RemoteReply::Outcome)
            }
            RemoteCall::Cancel { id: order, .. } => {
                self.cancel_at(&id, &order).await.map(|_| RemoteReply::Done)
            }
            RemoteCall::Refresh { .. } => self
                .refresh(&id)
                .await
                .map(|e| RemoteReply::Envelope(Box::new(e))),
            RemoteCall::View { .. } => self.view(&id).await.map(|v| RemoteReply::View(Box::new(v))),
            RemoteCall::Allocation { id: order, .. } => self
                .allocation(&order, &id)
                .await
                .map(RemoteReply::Allocation),
            RemoteCall::SetState { state, .. } => match self.set_state(&id, state).await {
                Ok(()) => Ok(RemoteReply::State(Ok(()))),
                Err(FleetError::Rejected(r)) => Ok(RemoteReply::State(Err(r))),
                Err(e) => Err(e),
            },
        };
        r.unwrap_or_else(|e| RemoteReply::Failed(e.to_string()))
    }

    /// Delivers a message another member sent to an aggregate that runs
    /// here (dropped when it does not: the sender repeats it).
    pub fn serve_cast(&self, cast: RemoteCast) {
        let Some(actor) = self
            .inner
            .index
            .get(cast.to())
            .and_then(|h| h.actor.clone())
        else {
            return;
        };
        let msg = match cast {
            RemoteCast::ChildReport { idx, env, .. } => AggregateMsg::ChildReport { idx, env },
            RemoteCast::ShareRefused {
                idx,
                dispatch,
                holds_w,
                epoch,
                reason,
                ..
            } => AggregateMsg::ShareRefused {
                idx,
                dispatch,
                holds_w,
                epoch,
                reason,
            },
        };
        let _ = actor.cast(msg);
    }

    /// The node's envelope pulled fresh from every DER below it now.
    pub async fn refresh(&self, id: &NodeId) -> Result<FlexEnvelope, FleetError> {
        let h = self.handle(id)?;
        if h.der_idx.is_some() {
            return Ok(self.view(id).await?.envelope);
        }
        let Some(actor) = &h.actor else {
            return match self
                .remote(id, RemoteCall::Refresh { to: id.clone() })
                .await?
            {
                RemoteReply::Envelope(e) => Ok(*e),
                other => Err(unexpected(id, other)),
            };
        };
        answer(
            id,
            actor
                .call(AggregateMsg::Refresh, Some(self.timeout()))
                .await,
        )
    }

    /// The site actor hosting DER `id` (`None`: on another member), and the
    /// DER's index there.
    fn der(&self, id: &NodeId) -> Result<(Option<&ActorRef<AggregateMsg>>, u32), FleetError> {
        let h = self.handle(id)?;
        match h.der_idx {
            Some(i) => Ok((h.actor.as_ref(), i)),
            None => Err(FleetError::NotADer(id.clone(), h.kind.as_str())),
        }
    }

    /// Applies a new state to a DER and waits until it is applied.
    pub async fn set_state(&self, id: &NodeId, state: DerState) -> Result<(), FleetError> {
        let (site, i) = self.der(id)?;
        let Some(site) = site else {
            let call = RemoteCall::SetState {
                to: id.clone(),
                state,
            };
            return match self.remote(id, call).await? {
                RemoteReply::State(r) => r.map_err(FleetError::from),
                other => Err(unexpected(id, other)),
            };
        };
        let r = site
            .call(
                |rp| AggregateMsg::DerState(i, state, Some(rp)),
                Some(self.timeout()),
            )
            .await;
        answer(id, r)?.map_err(FleetError::from)
    }

    /// Applies a new state to a DER without waiting (telemetry path).
    pub fn send_state(&self, id: &NodeId, state: DerState) -> Result<(), FleetError> {
        let (site, i) = self.der(id)?;
        let site = site.ok_or_else(|| {
            FleetError::Unavailable(id.clone(), "its site runs on another member".into())
        })?;
        site.cast(AggregateMsg::DerState(i, state, None))
            .map_err(|e| FleetError::Unavailable(id.clone(), e.to_string()))
    }

    /// Applies many DER states without waiting (the telemetry path for
    /// batches). Consecutive states of one site go out as one message as
    /// soon as the run ends, so sites start work while later ids are still
    /// being looked up: a caller that passes states grouped by site sends
    /// one message per site. Unknown ids and non-DERs are returned, not
    /// applied.
    pub fn send_states<I: Borrow<NodeId>>(
        &self,
        states: impl IntoIterator<Item = (I, DerState)>,
    ) -> Vec<(NodeId, FleetError)> {
        let mut rejected = Vec::new();
        let mut run: Vec<(u32, DerState)> = Vec::new();
        let mut run_site = u32::MAX;
        for (id, st) in states {
            let id = id.borrow();
            match self.handle(id) {
                Ok(NodeHandle {
                    der_idx: Some(i),
                    site_no,
                    actor: Some(_),
                    ..
                }) => {
                    if *site_no != run_site {
                        self.cast_run(run_site, std::mem::take(&mut run));
                        run_site = *site_no;
                    }
                    run.push((*i, st));
                }
                Ok(h) => {
                    let kind = h.kind.as_str();
                    rejected.push((id.clone(), FleetError::NotADer(id.clone(), kind)))
                }
                Err(e) => rejected.push((id.clone(), e)),
            }
        }
        self.cast_run(run_site, run);
        rejected
    }

    /// Casts site `site_no` the states of one run (nothing if it is empty).
    fn cast_run(&self, site_no: u32, run: Vec<(u32, DerState)>) {
        if !run.is_empty() {
            self.cast_site(site_no, AggregateMsg::DerStates(run));
        }
    }

    /// Casts site `site_no` one message. A site that is gone is counted by
    /// its parent; nothing to add here.
    fn cast_site(&self, site_no: u32, msg: AggregateMsg) {
        if let Some(site) = self.inner.sites.get(site_no as usize) {
            let _ = site.cast(msg);
        }
    }

    /// Where DER `der` of site `site` lives, if the hierarchy has it there
    /// (the device telemetry path: no allocation).
    pub fn locate_der(&self, site: &str, der: &str) -> Option<DerAddr> {
        let h = self.inner.index.get(der)?;
        let i = h.der_idx?;
        h.actor.as_ref()?;
        (h.parent.as_ref().map(NodeId::as_str) == Some(site)).then_some(DerAddr {
            site_no: h.site_no,
            idx: i,
        })
    }

    /// The number of site `site`, if it is one.
    pub fn locate_site(&self, site: &str) -> Option<u32> {
        let h = self.inner.index.get(site)?;
        (h.kind == NodeKind::Site && h.actor.is_some()).then_some(h.site_no)
    }

    /// Hands device messages to their DERs without waiting, one message per
    /// site. Telemetry goes through the same sequence check as any state.
    pub fn send_device_inputs(&self, inputs: impl IntoIterator<Item = (DerAddr, DeviceInput)>) {
        let mut by_site: rustc_hash::FxHashMap<u32, Vec<(u32, DeviceInput)>> = Default::default();
        for (addr, input) in inputs {
            by_site
                .entry(addr.site_no)
                .or_default()
                .push((addr.idx, input));
        }
        for (site_no, batch) in by_site {
            self.cast_site(site_no, AggregateMsg::DeviceInputs(batch));
        }
    }

    /// A site's gateway went offline (its last will) or came back online.
    pub fn gateway_status(&self, site_no: u32, online: bool) {
        if let Some(site) = self.inner.sites.get(site_no as usize) {
            let _ = site.cast(AggregateMsg::GatewayStatus(online));
        }
    }

    /// Every DER publishes its desired document again (after the device
    /// link reconnected to a broker that may have lost retained messages).
    pub fn republish_desired(&self) {
        for site in &self.inner.sites {
            let _ = site.cast(AggregateMsg::Republish(false));
        }
    }

    /// DERs holding a setpoint not yet acked as applied publish their
    /// desired document again, with a new version (after the device link's
    /// reading side reconnected: acks sent meanwhile are lost, and this asks
    /// for them again without resending every document).
    pub fn republish_unapplied(&self) {
        for site in &self.inner.sites {
            let _ = site.cast(AggregateMsg::Republish(true));
        }
    }

    /// The site actor hosting DER `id` (tests of supervision).
    #[cfg(test)]
    pub(crate) fn site_actor(&self, id: &NodeId) -> Result<ActorRef<AggregateMsg>, FleetError> {
        self.der(id)?
            .0
            .cloned()
            .ok_or_else(|| FleetError::Unavailable(id.clone(), "not here".into()))
    }

    /// The actor of aggregate `id`: `None` when it runs on another member.
    fn aggregate(&self, id: &NodeId) -> Result<Option<&ActorRef<AggregateMsg>>, FleetError> {
        let h = self.handle(id)?;
        match h.der_idx {
            None => Ok(h.actor.as_ref()),
            Some(_) => Err(FleetError::NotAnAggregate(id.clone(), h.kind.as_str())),
        }
    }

    /// Splits `order` from its target down to every DER and waits for the
    /// whole tree to answer.
    pub async fn dispatch(&self, order: Arc<DispatchOrder>) -> Result<DispatchOutcome, FleetError> {
        let target = order.target.clone();
        let span = tracing::info_span!("dispatch", order = %order.id, target = %target, power_w = order.power_w);
        let share = order.power_w;
        // Instrumented, not entered: a guard held across the await would
        // leave the span entered for whatever else runs on this thread.
        tracing::Instrument::instrument(
            self.dispatch_share(&target, order, share, self.timeout(), false),
            span,
        )
        .await
    }

    /// [`Fleet::dispatch`] of an order already split, after the tree was
    /// rebuilt (shards moved, a new leader): every node that holds a share
    /// is asked for it again, so a node rebuilt elsewhere without it takes
    /// it up; what is missing is placed as usual.
    pub async fn reassert(&self, order: Arc<DispatchOrder>) -> Result<DispatchOutcome, FleetError> {
        let target = order.target.clone();
        let share = order.power_w;
        self.dispatch_share(&target, order, share, self.timeout(), true)
            .await
    }

    /// Asks aggregate `at` to hold `share_w` (total) of `order` within
    /// `timeout`, wherever it runs.
    async fn dispatch_share(
        &self,
        at: &NodeId,
        order: Arc<DispatchOrder>,
        share_w: u64,
        timeout: Duration,
        reassert: bool,
    ) -> Result<DispatchOutcome, FleetError> {
        let Some(a) = self.aggregate(at)? else {
            let call = RemoteCall::Dispatch {
                to: at.clone(),
                order: (*order).clone(),
                share_w,
                timeout_ms: timeout.as_millis() as u64,
                reassert,
            };
            return match self.remote(at, call).await? {
                RemoteReply::Outcome(o) => Ok(o),
                other => Err(unexpected(at, other)),
            };
        };
        let share = DispatchShare {
            share_w,
            order,
            deadline: Instant::now() + timeout,
            reassert,
        };
        let r = a
            .call(
                |rp| AggregateMsg::Dispatch(share, rp),
                Some(timeout + Duration::from_secs(1)),
            )
            .await;
        answer(at, r)
    }

    /// Withdraws an order from its target and every node below.
    pub async fn cancel(&self, order: &DispatchOrder) -> Result<(), FleetError> {
        self.cancel_at(&order.target, &order.id).await
    }

    async fn cancel_at(&self, at: &NodeId, id: &DispatchId) -> Result<(), FleetError> {
        let Some(a) = self.aggregate(at)? else {
            let call = RemoteCall::Cancel {
                to: at.clone(),
                id: id.clone(),
            };
            return match self.remote(at, call).await? {
                RemoteReply::Done => Ok(()),
                other => Err(unexpected(at, other)),
            };
        };
        let id = id.clone();
        let r = a
            .call(
                |rp| AggregateMsg::Cancel(id, Some(rp)),
                Some(self.timeout()),
            )
            .await;
        answer(at, r)
    }

    /// What `node` holds for an order (aggregates only).
    pub async fn allocation(
        &self,
        dispatch: &DispatchId,
        node: &NodeId,
    ) -> Result<Option<NodeAllocation>, FleetError> {
        let Some(a) = self.aggregate(node)? else {
            let call = RemoteCall::Allocation {
                to: node.clone(),
                id: dispatch.clone(),
            };
            return match self.remote(node, call).await? {
                RemoteReply::Allocation(a) => Ok(a),
                other => Err(unexpected(node, other)),
            };
        };
        let d = dispatch.clone();
        let r = a
            .call(|rp| AggregateMsg::Allocation(d, rp), Some(self.timeout()))
            .await;
        answer(node, r)
    }

    /// Stops every actor and waits until the last one is gone, so that
    /// nothing of this fleet writes to the journal or holds the store after
    /// this returns. (ractor stops a supervisor's descendants asynchronously;
    /// every actor holds the fleet context, so its count says when they are
    /// all dropped.)
    pub async fn stop(&self) {
        self.inner.ctx.begin_shutdown();
        let _ = self
            .inner
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(60)))
            .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut wait = Duration::from_millis(1);
        while Arc::strong_count(&self.inner.ctx) > 1 {
            if Instant::now() > deadline {
                tracing::warn!(
                    left = Arc::strong_count(&self.inner.ctx) - 1,
                    "actors still stopping after 120 s"
                );
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(50));
        }
    }
}

fn unexpected(id: &NodeId, r: RemoteReply) -> FleetError {
    match r {
        RemoteReply::Failed(why) => FleetError::Unavailable(id.clone(), why),
        other => FleetError::Unavailable(id.clone(), format!("unexpected answer {other:?}")),
    }
}

fn answer<T, M>(
    id: &NodeId,
    r: Result<ractor::rpc::CallResult<T>, ractor::MessagingErr<M>>,
) -> Result<T, FleetError> {
    settle(r).map_err(|e| FleetError::Unavailable(id.clone(), e))
}

/// Reads everything a cold start needs (blocking; run off the async workers).
/// The three independent parts load on their own threads: on two cores that
/// nearly halves a million-DER cold start.
fn load_snapshot(store: &vpp_store::Store) -> Result<Snapshot, FleetError> {
    let now = now_ms();
    let (hier, states, journal) = std::thread::scope(|s| {
        let hier = s.spawn(|| -> Result<_, FleetError> {
            let hierarchy = store.load_hierarchy()?;
            let topology = hierarchy.validate().map_err(FleetError::Invalid)?;
            Ok((hierarchy, topology))
        });
        let states = s.spawn(|| store.load_site_ders());
        let journal = s.spawn(|| -> Result<_, FleetError> {
            let mut allocations: HashMap<NodeId, Vec<(Arc<DispatchOrder>, NodeAllocation)>> =
                HashMap::new();
            let mut orders = HashMap::new();
            for rec in store.list_dispatches(usize::MAX)? {
                if rec.status == DispatchStatus::Cancelled || rec.order.end_ms() <= now {
                    continue;
                }
                let order = Arc::new(rec.order);
                orders.insert(order.id.clone(), order.clone());
                for a in store.allocations_of(&order.id)? {
                    allocations
                        .entry(a.node.clone())
                        .or_default()
                        .push((order.clone(), a));
                }
            }
            Ok((allocations, orders))
        });
        let join = |e: Box<dyn std::any::Any + Send>| {
            FleetError::Start(format!("loading thread panicked: {e:?}"))
        };
        (
            hier.join().map_err(join),
            states.join().map_err(join),
            journal.join().map_err(join),
        )
    });
    let (hierarchy, topology) = hier??;
    let sites = states??;
    let (allocations, orders) = journal??;
    let mut states = HashMap::with_capacity(sites.len() * 4);
    let mut setpoints = HashMap::new();
    for (_, ders) in sites {
        for mut d in ders {
            // A setpoint whose order was cancelled (or has ended) may still be
            // on disk if the process died before the withdrawal was written
            // behind: the journal is the authority.
            d.setpoints
                .retain(|s| orders.contains_key(&s.dispatch) && s.end_ms > now);
            if !d.setpoints.is_empty() {
                setpoints.insert(d.id.clone(), d.setpoints);
            }
            states.insert(d.id, d.state);
        }
    }
    Ok(Snapshot {
        hierarchy,
        topology,
        states,
        setpoints,
        allocations,
        orders,
    })
}
