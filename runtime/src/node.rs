//! The node: store + live fleet + the rules that tie them together.
//!
//! ```text
//!   API / CLI ──► Node ──(durable first)──► Store (sled)
//!                  │
//!                  └──(then)──► Fleet (actors) ──write-behind──► Store
//! ```
//!
//! The order of operations is the durability contract (ARCHITECTURE.md):
//! a hierarchy import is written and flushed before the fleet is rebuilt and
//! before the caller hears "ok"; a dispatch order is written and flushed
//! before the caller hears "accepted" and before any actor sees it. If the
//! process dies after the acknowledgement, start-up finds the order in the
//! journal and finishes the split (splits are idempotent: shares are totals).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::RwLock;
use vpp_actors::{DeviceLink, Fleet, FleetError, Metrics, NoDevices, NodeView};
use vpp_domain::{
    AllocationSummary, DerState, DispatchId, DispatchOrder, DispatchRecord, DispatchStatus,
    FlexEnvelope, Hierarchy, HierarchyError, NodeAllocation, NodeId, NodeKind, NodeSpec,
};
use vpp_store::{
    Command, Store, StoreError, StoreOptions, WriteBehind, WriteBehindHandle, WriteBehindOptions,
};

use crate::cluster::{Cluster, WriteError, Writer};
use crate::config::NodeConfig;
use crate::devices::IngestStats;
use crate::metering::Metering;
use gate::Gate;

mod gate;

/// Why a node operation failed. The API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Nothing imported yet.
    #[error("no hierarchy has been imported yet: import one with `vpp hierarchy import FILE` or PUT /api/v1/hierarchy")]
    NoHierarchy,
    /// Unknown id.
    #[error("no node {0} in the hierarchy")]
    UnknownNode(NodeId),
    /// Unknown dispatch.
    #[error("no dispatch {0}")]
    UnknownDispatch(DispatchId),
    /// The request is malformed or breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// The hierarchy is not valid.
    #[error("invalid hierarchy: {} problem(s)", .0.len())]
    InvalidHierarchy(Vec<HierarchyError>),
    /// The same dispatch id with a different order.
    #[error("dispatch {0} already exists with different terms; use a new id")]
    Conflict(DispatchId),
    /// The fleet failed to answer.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster could not take a write (no leader or quorum in time).
    #[error("{0}")]
    Unavailable(String),
}

impl From<WriteError> for NodeError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Store(s) => NodeError::Store(s),
            WriteError::Refused(why) => NodeError::Invalid(why),
            e @ WriteError::NoLeader(_) => NodeError::Unavailable(e.to_string()),
        }
    }
}

/// Counters of rejected input, by route and reason.
#[derive(Debug, Default)]
pub struct Rejections(Mutex<HashMap<(&'static str, &'static str), u64>>);

impl Rejections {
    /// Counts one rejection.
    pub fn count(&self, route: &'static str, reason: &'static str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry((route, reason)).or_default() += 1;
        }
    }

    /// All counts.
    pub fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        let mut v: Vec<_> = self
            .0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// One level of an allocation tree, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationTree {
    /// The node.
    pub node: NodeId,
    /// What it is.
    pub kind: NodeKind,
    /// What it holds, W.
    pub allocated_w: u64,
    /// The node's own record (aggregates within the requested depth).
    pub allocation: Option<NodeAllocation>,
    /// Children that hold a share (within the requested depth).
    pub children: Vec<AllocationTree>,
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    store: Store,
    /// Where durable writes go: this store, or the cluster (`cluster.rs`).
    writes: Writer,
    /// Replicated hierarchy replacements the fleet has been rebuilt for.
    hierarchies_loaded: AtomicU64,
    /// Between the DER actors and the devices: open for a single node; in a
    /// cluster while it acts for its shards (`Cluster::acting`), holding
    /// what they publish meanwhile (`node/gate.rs`).
    gate: Arc<Gate>,
    /// The device-protocol shards this member runs, after each rebuild of
    /// its part of the fleet (a cluster member subscribes to their topics).
    shards: tokio::sync::watch::Sender<Vec<u8>>,
    /// Owns the write-behind thread; `None` once shut down.
    write_behind: std::sync::Mutex<Option<WriteBehind>>,
    writer: WriteBehindHandle,
    fleet: RwLock<Option<Fleet>>,
    /// Where DER actors send desired documents (MQTT, or nowhere).
    devices: Arc<dyn DeviceLink>,
    metrics: Arc<Metrics>,
    /// Rejected input, by route and reason.
    pub rejections: Rejections,
    /// Device messages in and desired documents out.
    pub ingest: Arc<IngestStats>,
    splits_running: AtomicU64,
    started: Instant,
    /// Telemetry integrated into interval meter data (`metering.rs`).
    metering: Arc<Metering>,
    /// The task writing closed meter intervals, stopped at shutdown.
    metering_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Accounts, programs, events (`programs.rs`).
    programs: crate::programs::Programs,
    /// The event lifecycle task, stopped at shutdown.
    lifecycle: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Node {
    /// Opens the store and brings the fleet up from it (if a hierarchy was
    /// imported before), then finishes any split that was accepted but not
    /// completed before a crash.
    pub async fn open(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        Self::open_with(config, Arc::new(NoDevices), Arc::default()).await
    }

    /// [`Node::open`] with DER actors reaching their devices through
    /// `devices`, counting device traffic in `ingest`.
    pub async fn open_with(
        config: NodeConfig,
        devices: Arc<dyn DeviceLink>,
        ingest: Arc<IngestStats>,
    ) -> Result<Arc<Node>, NodeError> {
        let opts = StoreOptions {
            cache_bytes: config.store.cache_mb * 1024 * 1024,
            flush_every_ms: Some(config.store.flush_every_ms),
        };
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_with(&dir, opts))
            .await
            .map_err(|e| NodeError::Invalid(e.to_string()))??;
        let wb = WriteBehind::start(
            store.clone(),
            WriteBehindOptions {
                interval: std::time::Duration::from_millis(config.store.write_behind_ms),
                nice: config.store.write_behind_nice,
                max_defer: std::time::Duration::from_millis(config.store.write_behind_defer_ms),
                ..WriteBehindOptions::default()
            },
        )?;
        let writer = wb.handle();
        let gate = Arc::new(Gate::new(devices, config.cluster.node.is_empty()));
        let devices: Arc<dyn DeviceLink> = gate.clone();
        let writes = if config.cluster.node.is_empty() {
            Writer::Local(store.clone())
        } else {
            let c = Cluster::start(&config.cluster, store.clone())
                .await
                .map_err(|e| NodeError::Invalid(format!("joining the cluster: {e:#}")))?;
            Writer::Cluster(c)
        };
        let metering = Arc::new(Metering::new(&config.metering));
        let node_quorum = config.programs.quorum;
        let node = Arc::new(Node {
            config,
            store,
            writes,
            hierarchies_loaded: AtomicU64::new(0),
            gate,
            shards: tokio::sync::watch::channel(Vec::new()).0,
            write_behind: std::sync::Mutex::new(Some(wb)),
            writer,
            fleet: RwLock::new(None),
            devices,
            metrics: Arc::new(Metrics::default()),
            rejections: Rejections::default(),
            ingest,
            splits_running: AtomicU64::new(0),
            started: Instant::now(),
            metering,
            metering_task: std::sync::Mutex::new(None),
            programs: crate::programs::Programs::new(node_quorum),
            lifecycle: std::sync::Mutex::new(None),
        });
        node.reload_fleet().await?;
        match node.writes.cluster() {
            // A cluster's leader runs the orders (`lead`).
            Some(c) => {
                tokio::spawn(follow_hierarchy(Arc::downgrade(&node), c.hierarchies()));
                tokio::spawn(follow_placement(Arc::downgrade(&node), c.lives()));
                tokio::spawn(lead(Arc::downgrade(&node), c.leadership()));
                tokio::spawn(gate_devices(Arc::downgrade(&node)));
            }
            None => node.resume_splits(false).await?,
        }
        node.bootstrap_accounts().await?;
        let task = tokio::spawn(crate::programs::run_lifecycle(
            node.clone(),
            std::time::Duration::from_millis(node.config.programs.tick_ms),
        ));
        if let Ok(mut slot) = node.lifecycle.lock() {
            *slot = Some(task);
        }
        // Last: a task started before a failed step would hold the store.
        let task = tokio::spawn(crate::metering::run(
            node.metering.clone(),
            node.writes.clone(),
        ));
        if let Ok(mut slot) = node.metering_task.lock() {
            *slot = Some(task);
        }
        Ok(node)
    }

    /// The configuration in force.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where durable writes go (every write a cluster replicates).
    pub fn writes(&self) -> &Writer {
        &self.writes
    }

    /// Actor counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Write-behind counters.
    pub fn write_behind_stats(&self) -> vpp_store::WriteBehindStats {
        self.writer.stats()
    }

    /// Interval meter data from telemetry.
    pub fn metering(&self) -> &Arc<Metering> {
        &self.metering
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Splits under way.
    pub fn splits_running(&self) -> u64 {
        self.splits_running.load(Ordering::Relaxed)
    }

    /// Accounts, programs and events.
    pub fn programs(&self) -> &crate::programs::Programs {
        &self.programs
    }

    /// Makes the first operator account (and its token file) on a store
    /// that has none, and starts metering the enrolled sites.
    async fn bootstrap_accounts(self: &Arc<Self>) -> Result<(), NodeError> {
        match self.writes.cluster() {
            None => {
                let made = crate::programs::bootstrap_operator(self)
                    .await
                    .map_err(|e| {
                        NodeError::Invalid(format!("making the first operator account: {e}"))
                    })?;
                if let Some(path) = made {
                    tracing::info!(file = %path.display(), "made the first operator account; its API token is in this file");
                }
            }
            // In a cluster the first member makes it, once a leader is
            // known and this store has caught up, so that no member makes
            // a second one (`cluster.rs`).
            Some(c) if c.is_first_member() => {
                let node = Arc::downgrade(self);
                let c = c.clone();
                tokio::spawn(async move {
                    c.caught_up().await;
                    let Some(node) = node.upgrade() else { return };
                    match crate::programs::bootstrap_operator(&node).await {
                        Ok(Some(path)) => {
                            tracing::info!(file = %path.display(), "made the cluster's first operator account; its API token is in this file")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "making the cluster's first operator account failed")
                        }
                    }
                });
            }
            Some(_) => {}
        }
        crate::programs::enrollments::watch_enrolled_sites(self).await;
        Ok(())
    }

    /// The live fleet, or [`NodeError::NoHierarchy`].
    pub async fn fleet(&self) -> Result<Fleet, NodeError> {
        self.fleet
            .read()
            .await
            .clone()
            .ok_or(NodeError::NoHierarchy)
    }

    /// The shards this member runs, after each rebuild (cluster members).
    pub fn shard_watch(&self) -> Option<tokio::sync::watch::Receiver<Vec<u8>>> {
        self.writes.cluster().map(|_| self.shards.subscribe())
    }

    async fn reload_fleet(&self) -> Result<(), NodeError> {
        let mut slot = self.fleet.write().await;
        let cluster = self.writes.cluster();
        let placement = cluster.map(|c| c.placement());
        if let Some(c) = cluster {
            c.serve_fleet(None, 0);
        }
        if let Some(old) = slot.take() {
            old.stop().await;
        }
        // Everything the old actors wrote behind must land before the new
        // ones read it.
        let w = self.writer.clone();
        tokio::task::spawn_blocking(move || w.flush_blocking())
            .await
            .map_err(|e| NodeError::Invalid(e.to_string()))??;
        if self.store.hierarchy_len()? == 0 {
            if let (Some(c), Some(p)) = (cluster, &placement) {
                c.serve_fleet(None, p.epoch);
            }
            return Ok(());
        }
        let t = Instant::now();
        let fleet = Fleet::start_from_store_linked(
            self.store.clone(),
            self.config.fleet(),
            Arc::new(self.writer.clone()),
            self.devices.clone(),
            self.metrics.clone(),
            cluster.map(|c| c.remote_link()),
            |done, total| tracing::debug!(done, total, "spawning actors"),
        )
        .await?;
        tracing::info!(nodes = fleet.len(), root = %fleet.root(), ms = t.elapsed().as_millis() as u64, "fleet up");
        if let (Some(c), Some(p)) = (cluster, &placement) {
            c.serve_fleet(Some(fleet.clone()), p.epoch);
            tracing::info!(
                epoch = p.epoch,
                shards = p.mine().len(),
                "this member's shards are loaded"
            );
            // Only a change of shards renews the MQTT subscriptions.
            let mine = p.mine();
            self.shards.send_if_modified(|s| {
                let changed = *s != mine;
                *s = mine;
                changed
            });
        }
        *slot = Some(fleet);
        Ok(())
    }

    /// Replaces the whole hierarchy: validate, write and flush, then rebuild
    /// the actors. Returns the number of nodes.
    pub async fn replace_hierarchy(&self, h: Hierarchy) -> Result<usize, NodeError> {
        h.validate().map_err(NodeError::InvalidHierarchy)?;
        let n = h.len();
        self.writes.write(Command::ReplaceHierarchy(h)).await?;
        if let Some(c) = self.writes.cluster() {
            // Applied here already (Cluster::write waits): rebuild for it
            // now, so `follow_hierarchy` need not.
            let seen = *c.hierarchies().borrow();
            self.hierarchies_loaded.fetch_max(seen, Ordering::SeqCst);
        }
        self.reload_fleet().await?;
        Ok(n)
    }

    /// The stored hierarchy.
    pub async fn hierarchy(&self) -> Result<Hierarchy, NodeError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.load_hierarchy())
            .await
            .map_err(|e| NodeError::Invalid(e.to_string()))??)
    }

    /// Adds nodes to the stored hierarchy (validated as a whole).
    pub async fn add_nodes(&self, nodes: Vec<NodeSpec>) -> Result<usize, NodeError> {
        let mut h = self.hierarchy().await?;
        let n = nodes.len();
        for node in nodes {
            h.push(node);
        }
        self.replace_hierarchy(h).await?;
        Ok(n)
    }

    /// Removes a node and everything under it.
    pub async fn remove_subtree(&self, id: &NodeId) -> Result<usize, NodeError> {
        let mut h = self.hierarchy().await?;
        let topo = h.validate().map_err(NodeError::InvalidHierarchy)?;
        if !topo.kinds.contains_key(id) {
            return Err(NodeError::UnknownNode(id.clone()));
        }
        if topo.root.as_ref() == Some(id) {
            return Err(NodeError::Invalid(format!(
                "{id} is the root; import an empty hierarchy instead of deleting the root"
            )));
        }
        let gone: std::collections::HashSet<NodeId> = topo.subtree(id).into_iter().collect();
        let n = h.remove(&gone);
        self.replace_hierarchy(h).await?;
        Ok(n)
    }

    /// "What can you do now" for any node; `fresh` pulls from every DER first.
    pub async fn capacity(&self, id: &NodeId, fresh: bool) -> Result<NodeView, NodeError> {
        let fleet = self.fleet().await?;
        if fleet.node(id).is_none() {
            return Err(NodeError::UnknownNode(id.clone()));
        }
        if fresh {
            let _: FlexEnvelope = fleet.refresh(id).await?;
        }
        Ok(fleet.view(id).await?)
    }

    /// Applies a DER state (an operator's or a telemetry bridge's).
    pub async fn set_der_state(&self, id: &NodeId, state: DerState) -> Result<(), NodeError> {
        Ok(self.fleet().await?.set_state(id, state).await?)
    }

    /// Accepts an order: checks it, makes it durable, then starts the split in
    /// the background. Creating the same id again with the same terms returns
    /// the existing record (idempotent); with other terms it is a conflict.
    /// When the caller gave no start time (`start_given` false) the start is
    /// not part of the terms compared.
    pub async fn create_dispatch(
        self: &Arc<Self>,
        order: DispatchOrder,
        start_given: bool,
    ) -> Result<(DispatchRecord, bool), NodeError> {
        order.validate().map_err(NodeError::Invalid)?;
        let fleet = self.fleet().await?;
        match fleet.node(&order.target) {
            None => return Err(NodeError::UnknownNode(order.target.clone())),
            Some((NodeKind::Der, _)) => {
                return Err(NodeError::Invalid(format!(
                    "{} is a der; dispatch orders go to sites or virtual DERs",
                    order.target
                )))
            }
            Some(_) => {}
        }
        if let Some(existing) = self.store.get_dispatch(&order.id)? {
            let same = DispatchOrder {
                created_ms: existing.order.created_ms,
                start_ms: if start_given {
                    order.start_ms
                } else {
                    existing.order.start_ms
                },
                ..order.clone()
            } == existing.order;
            return if same {
                Ok((existing, false))
            } else {
                Err(NodeError::Conflict(order.id))
            };
        }
        let rec = DispatchRecord {
            updated_ms: order.created_ms,
            order,
            status: DispatchStatus::Accepted,
            summary: None,
        };
        self.writes.write(Command::PutDispatch(rec.clone())).await?;
        self.spawn_split(fleet, rec.order.clone(), false);
        Ok((rec, true))
    }

    /// Splits `order` in the background and records the result; with
    /// `reassert`, every node holding a share is asked for it again first
    /// (`Fleet::reassert`: after a takeover).
    fn spawn_split(self: &Arc<Self>, fleet: Fleet, order: DispatchOrder, reassert: bool) {
        let node = self.clone();
        node.splits_running.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let t = Instant::now();
            let id = order.id.clone();
            let order = Arc::new(order);
            let res = if reassert {
                fleet.reassert(order.clone()).await
            } else {
                fleet.dispatch(order.clone()).await
            };
            node.splits_running.fetch_sub(1, Ordering::Relaxed);
            match res {
                Ok(out) => {
                    let summary = AllocationSummary {
                        allocated_w: out.accepted_w,
                        shortfall_w: order.power_w.saturating_sub(out.accepted_w),
                        ders: out.ders,
                        resplits: out.resplits,
                        split_ms: t.elapsed().as_millis() as u64,
                    };
                    tracing::info!(order = %id, allocated_w = summary.allocated_w, shortfall_w = summary.shortfall_w, ders = summary.ders, ms = summary.split_ms, "dispatch split");
                    if let Err(e) = node.finish_split(&fleet, &order, summary).await {
                        tracing::error!(order = %id, error = %e, "recording split result failed");
                    }
                }
                Err(e) => tracing::error!(order = %id, error = %e, "dispatch split failed"),
            }
        });
    }

    async fn finish_split(
        &self,
        fleet: &Fleet,
        order: &DispatchOrder,
        summary: AllocationSummary,
    ) -> Result<(), NodeError> {
        let Some(mut rec) = self.store.get_dispatch(&order.id)? else {
            return Ok(());
        };
        if rec.status == DispatchStatus::Cancelled {
            // Cancelled while splitting: withdraw what the split placed.
            fleet.cancel(order).await?;
            return Ok(());
        }
        // The split's allocations and setpoints went out write-behind; make
        // them durable before the journal says "allocated", so that status
        // always means the whole split survives a crash. (A crash before this
        // leaves the order "accepted", and start-up splits it again.)
        self.flush_write_behind().await?;
        rec.status = DispatchStatus::Allocated;
        rec.updated_ms = vpp_actors::now_ms();
        rec.summary = Some(summary);
        self.writes.write(Command::PutDispatch(rec)).await?;
        Ok(())
    }

    /// Waits until everything queued write-behind so far is on disk.
    async fn flush_write_behind(&self) -> Result<(), NodeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.flush_then(move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| NodeError::Store(StoreError::WriteBehindStopped))??;
        Ok(())
    }

    /// Splits again the orders in the journal that are still in their
    /// window: those accepted but not split (after a restart), and with
    /// `allocated` also those split (a new cluster leader takes them over;
    /// shares are totals, so this is idempotent).
    async fn resume_splits(self: &Arc<Self>, allocated: bool) -> Result<(), NodeError> {
        let Ok(fleet) = self.fleet().await else {
            return Ok(());
        };
        let now = vpp_actors::now_ms();
        for rec in self.store.list_dispatches(usize::MAX)? {
            let take = rec.status == DispatchStatus::Accepted
                || (allocated && rec.status == DispatchStatus::Allocated);
            if take && rec.order.end_ms() > now {
                if fleet.node(&rec.order.target).is_none() {
                    continue;
                }
                tracing::info!(order = %rec.order.id, "resuming split accepted before restart");
                self.spawn_split(fleet.clone(), rec.order, allocated);
            }
        }
        Ok(())
    }

    /// Cancels an order: durable first, then withdrawn from the actors.
    pub async fn cancel_dispatch(&self, id: &DispatchId) -> Result<DispatchRecord, NodeError> {
        let mut rec = self
            .store
            .get_dispatch(id)?
            .ok_or_else(|| NodeError::UnknownDispatch(id.clone()))?;
        if rec.status == DispatchStatus::Cancelled {
            return Ok(rec);
        }
        rec.status = DispatchStatus::Cancelled;
        rec.updated_ms = vpp_actors::now_ms();
        self.writes.write(Command::PutDispatch(rec.clone())).await?;
        if let Ok(fleet) = self.fleet().await {
            if fleet.node(&rec.order.target).is_some() {
                fleet.cancel(&rec.order).await?;
            }
        }
        Ok(rec)
    }

    /// One order from the journal.
    pub fn dispatch(&self, id: &DispatchId) -> Result<DispatchRecord, NodeError> {
        self.store
            .get_dispatch(id)?
            .ok_or_else(|| NodeError::UnknownDispatch(id.clone()))
    }

    /// The newest orders, newest first.
    pub fn dispatches(&self, limit: usize) -> Result<Vec<DispatchRecord>, NodeError> {
        Ok(self.store.list_dispatches(limit)?)
    }

    /// The allocation tree of an order from its target, `depth` levels down
    /// (1 = the target alone), expanded breadth-first and at most
    /// [`MAX_TREE_NODES`] nodes in all, so a deep request on a big fleet stays
    /// a bounded answer (unexpanded nodes still say how many children hold a
    /// share).
    pub async fn allocation_tree(
        &self,
        id: &DispatchId,
        depth: usize,
    ) -> Result<AllocationTree, NodeError> {
        let rec = self.dispatch(id)?;
        let fleet = self.fleet().await?;
        let target = rec.order.target.clone();
        // Breadth-first into an arena, then assembled.
        let mut arena: Vec<(Option<AllocationTree>, Vec<usize>)> = Vec::new();
        // The target's share is what its own record says it placed.
        let mut queue =
            std::collections::VecDeque::from([(target, None::<u64>, 1usize, None::<usize>)]);
        while let Some((node, allocated_w, level, parent)) = queue.pop_front() {
            let kind = fleet.node(&node).map(|(k, _)| k).unwrap_or(NodeKind::Der);
            let allocation = if kind == NodeKind::Der {
                None
            } else {
                fleet.allocation(id, &node).await.ok().flatten()
            };
            let me = arena.len();
            if let Some(a) = &allocation {
                if level < depth.max(1) {
                    for (c, w) in &a.children {
                        if arena.len() + queue.len() >= MAX_TREE_NODES {
                            break;
                        }
                        queue.push_back((c.clone(), Some(*w), level + 1, Some(me)));
                    }
                    // Children that refused everything hold no share, but
                    // their records say why: show them too.
                    let mut shown: Vec<&NodeId> = a.children.iter().map(|(c, _)| c).collect();
                    for r in &a.refusals {
                        if shown.contains(&&r.child) {
                            continue;
                        }
                        if arena.len() + queue.len() >= MAX_TREE_NODES {
                            break;
                        }
                        shown.push(&r.child);
                        queue.push_back((r.child.clone(), Some(0), level + 1, Some(me)));
                    }
                }
            }
            arena.push((
                Some(AllocationTree {
                    node,
                    kind,
                    allocated_w: allocated_w
                        .or_else(|| allocation.as_ref().map(|a| a.allocated_w))
                        .unwrap_or(0),
                    allocation,
                    children: Vec::new(),
                }),
                Vec::new(),
            ));
            if let Some(p) = parent {
                arena[p].1.push(me);
            }
        }
        // Children always come after their parent: assemble from the back.
        let mut built: Vec<Option<AllocationTree>> = arena.iter().map(|_| None).collect();
        for i in (0..arena.len()).rev() {
            let kids: Vec<AllocationTree> =
                arena[i].1.iter().filter_map(|&k| built[k].take()).collect();
            if let Some(mut t) = arena[i].0.take() {
                t.children = kids;
                built[i] = Some(t);
            }
        }
        built
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| NodeError::UnknownDispatch(id.clone()))
    }
}

/// Most nodes one allocation-tree answer expands.
pub const MAX_TREE_NODES: usize = 2_000;

impl Node {
    /// Stops the actors and flushes everything written behind.
    pub async fn shutdown(&self) {
        if let Some(t) = self.lifecycle.lock().ok().and_then(|mut g| g.take()) {
            t.abort();
        }
        if let Some(f) = self.fleet.write().await.take() {
            f.stop().await;
        }
        // Intervals that ended since the task's last pass are written too.
        if let Some(t) = self.metering_task.lock().ok().and_then(|mut g| g.take()) {
            t.abort();
        }
        crate::metering::write_due(&self.metering, &self.writes, vpp_actors::now_ms()).await;
        let wb = self.write_behind.lock().ok().and_then(|mut g| g.take());
        if let Some(wb) = wb {
            let _ = tokio::task::spawn_blocking(move || wb.shutdown()).await;
        }
        if let Some(c) = self.writes.cluster() {
            c.shutdown().await;
        }
        let _ = self.store.flush_async().await;
    }
}

/// Takes over the orders each time this member becomes the cluster's leader:
/// devices hear from this member from now on (`Node::gate`), and
/// every order still in its window is split here again.
async fn lead(node: std::sync::Weak<Node>, mut leads: tokio::sync::watch::Receiver<bool>) {
    loop {
        let now_leading = *leads.borrow_and_update();
        let Some(n) = node.upgrade() else { return };
        if now_leading {
            tracing::info!("this member leads the cluster: taking over the orders in their window");
            if let Err(e) = n.resume_splits(true).await {
                tracing::error!(error = %e, "taking over the orders failed");
            }
        }
        drop(n);
        if leads.changed().await.is_err() {
            return;
        }
    }
}

/// Lets this member's DER actors publish only while it acts for its shards
/// (`Cluster::acting`: it hears from the leader), checked every 100 ms.
async fn gate_devices(node: std::sync::Weak<Node>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        if let Some(c) = n.writes.cluster() {
            let acting = c.acting();
            if acting != n.gate.is_open() {
                if acting {
                    // What the actors made meanwhile goes out now, for the
                    // sites this member runs (`node/gate.rs`).
                    let mine = n.shards.borrow().clone();
                    let (sent, dropped) = n.gate.open(
                        |site| mine.contains(&vpp_protocol::shard_of(site.as_str())),
                        std::time::Duration::from_millis(n.config.cluster.detect_ms),
                    );
                    tracing::info!(
                        acting,
                        held_sent = sent,
                        held_dropped = dropped,
                        "this member's devices are in its hands"
                    );
                } else {
                    n.gate.close();
                    tracing::info!(acting, "this member's devices are out of its hands");
                }
            }
        }
        drop(n);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Moves shards when the replicated live set changes: rebuilds this
/// member's part of the fleet for the new placement; the leader then splits
/// every order in its window again, once the others have rebuilt too, so
/// the sites' new owners hold their shares (shares are totals: idempotent).
async fn follow_placement(
    node: std::sync::Weak<Node>,
    mut lives: tokio::sync::watch::Receiver<u64>,
) {
    // The leader's re-split after a move waits for the others' rebuilds; a
    // newer move replaces it.
    let mut resplit: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let Some(n) = node.upgrade() else { return };
        if let Some(c) = n.writes.cluster().cloned() {
            match c.refresh_placement() {
                Ok(Some(p)) => {
                    let t = Instant::now();
                    tracing::info!(epoch = p.epoch, live = ?p.live, "placement changed: rebuilding this member's part of the fleet");
                    if let Some(r) = resplit.take() {
                        r.abort();
                    }
                    if let Err(e) = n.reload_fleet().await {
                        tracing::error!(error = %e, "rebuilding the fleet for the new placement failed");
                    }
                    tracing::info!(
                        epoch = p.epoch,
                        ms = t.elapsed().as_millis() as u64,
                        "shards moved here"
                    );
                    if c.is_leader() {
                        let n = n.clone();
                        let patience = std::time::Duration::from_millis(n.config.cluster.detect_ms);
                        resplit = Some(tokio::spawn(async move {
                            let behind = c.wait_members_at(p.epoch, patience).await;
                            if !behind.is_empty() {
                                tracing::warn!(
                                    ?behind,
                                    "members still rebuilding; splitting anyway"
                                );
                            }
                            if let Err(e) = n.resume_splits(true).await {
                                tracing::error!(error = %e, "re-splitting after the shards moved failed");
                            }
                        }));
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "reading the live members failed"),
            }
        }
        drop(n);
        if lives.changed().await.is_err() {
            return;
        }
    }
}

/// Rebuilds the fleet when another member replaced the hierarchy (the
/// replacement reached this store through the replicated log).
async fn follow_hierarchy(
    node: std::sync::Weak<Node>,
    mut applied: tokio::sync::watch::Receiver<u64>,
) {
    while applied.changed().await.is_ok() {
        let n = *applied.borrow_and_update();
        let Some(node) = node.upgrade() else { return };
        if node.hierarchies_loaded.fetch_max(n, Ordering::SeqCst) >= n {
            continue;
        }
        tracing::info!("hierarchy replaced through the cluster: rebuilding the fleet");
        if let Err(e) = node.reload_fleet().await {
            tracing::error!(error = %e, "rebuilding the fleet after a replicated hierarchy change failed");
        }
    }
}
