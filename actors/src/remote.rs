//! Nodes placed on other cluster members.
//!
//! In a cluster every member runs only the aggregates placed on it: the
//! sites of the device-protocol shards it owns (with the DERs they host) and
//! the virtual DERs hashed to it. A parent whose child lives elsewhere, or a
//! child whose parent does, reaches it through a [`RemoteLink`]: the runtime
//! implements it over the cluster mesh (ractor_cluster); tests route between
//! fleets in one process.
//!
//! ```text
//!   member A                                  member B
//!   VirtualDer ──RemoteCall::Dispatch──► link ──► Fleet::serve_call ──► Site
//!       ▲                                                                 │
//!       └─ Fleet::serve_cast ◄── link ◄──RemoteCast::ChildReport──────────┘
//! ```
//!
//! Every message is idempotent, so a lost or repeated one does no harm:
//! reports carry the whole envelope (a child checks every
//! `FleetConfig::remote_report_interval` whether the link lost anything since
//! its last report, `RemoteLink::losses`, and sends it again if so), dispatch shares are totals per order, cancels and refusals name
//! the order and carry the child's allocation epoch. A call that cannot be
//! delivered is retried until its deadline.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use vpp_domain::{
    DerState, DispatchId, DispatchOrder, FlexEnvelope, NodeAllocation, NodeId, NodeKind,
};

use crate::build::FleetCtx;
use crate::messages::{DispatchOutcome, NodeView, StateRejected};

/// A one-way message to a node on another member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteCast {
    /// A child's envelope for its parent `to` (child number `idx` there).
    ChildReport {
        /// The parent.
        to: NodeId,
        /// The child's index in the parent's child table.
        idx: u32,
        /// The child's whole envelope.
        env: Box<FlexEnvelope>,
    },
    /// A child could no longer hold part of its share of an order.
    ShareRefused {
        /// The parent.
        to: NodeId,
        /// The child's index in the parent's child table.
        idx: u32,
        /// The order.
        dispatch: DispatchId,
        /// What the child still holds (absolute).
        holds_w: u64,
        /// The child's allocation epoch after the change.
        epoch: u64,
        /// Why.
        reason: String,
    },
}

impl RemoteCast {
    /// The node it is for.
    pub fn to(&self) -> &NodeId {
        match self {
            RemoteCast::ChildReport { to, .. } | RemoteCast::ShareRefused { to, .. } => to,
        }
    }
}

/// A request to a node on another member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteCall {
    /// Hold `share_w` (total) of `order`; answer within `timeout_ms`.
    Dispatch {
        /// The aggregate.
        to: NodeId,
        /// The order.
        order: DispatchOrder,
        /// Its total share.
        share_w: u64,
        /// How long the caller waits.
        timeout_ms: u64,
        /// Ask holders below again first (`DispatchShare::reassert`).
        reassert: bool,
    },
    /// Withdraw an order from the node and below.
    Cancel {
        /// The aggregate.
        to: NodeId,
        /// The order.
        id: DispatchId,
    },
    /// The aggregate's envelope pulled fresh from below.
    Refresh {
        /// The aggregate.
        to: NodeId,
    },
    /// What the node (aggregate or DER) says about itself.
    View {
        /// The node.
        to: NodeId,
    },
    /// What the aggregate holds for an order.
    Allocation {
        /// The aggregate.
        to: NodeId,
        /// The order.
        id: DispatchId,
    },
    /// A new state for a DER.
    SetState {
        /// The DER.
        to: NodeId,
        /// Its state.
        state: DerState,
    },
}

impl RemoteCall {
    /// The node it is for.
    pub fn to(&self) -> &NodeId {
        match self {
            RemoteCall::Dispatch { to, .. }
            | RemoteCall::Cancel { to, .. }
            | RemoteCall::Refresh { to }
            | RemoteCall::View { to }
            | RemoteCall::Allocation { to, .. }
            | RemoteCall::SetState { to, .. } => to,
        }
    }
}

/// The answer to a [`RemoteCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteReply {
    /// To `Dispatch`.
    Outcome(DispatchOutcome),
    /// To `Cancel`.
    Done,
    /// To `Refresh`.
    Envelope(Box<FlexEnvelope>),
    /// To `View`.
    View(Box<NodeView>),
    /// To `Allocation`.
    Allocation(Option<NodeAllocation>),
    /// To `SetState`.
    State(Result<(), StateRejected>),
    /// The member could not answer (the node is not placed there, or its
    /// actor did not answer).
    Failed(String),
}

/// Where a node runs and how to reach it there.
pub trait RemoteLink: Send + Sync + 'static {
    /// Whether this member runs aggregate `id` (a site or a virtual DER;
    /// DERs run with their site).
    fn is_local(&self, id: &NodeId, kind: NodeKind) -> bool;

    /// Sends `msg` to the member running aggregate `(to, kind)`. Never
    /// blocks; a message that cannot be sent is counted and dropped (every
    /// cast is repeated or repaired by its sender).
    fn cast(&self, kind: NodeKind, msg: RemoteCast);

    /// Grows whenever a message sent earlier may have been lost (a peer
    /// reconnected, a cast could not be sent). An aggregate with a remote
    /// parent sends its report again when this changed since its last one;
    /// in steady state nothing is re-sent.
    fn losses(&self) -> u64 {
        0
    }

    /// Asks the member running aggregate `route` (for a DER: its site) and
    /// waits up to `timeout` for the answer.
    fn call(
        &self,
        route: (&NodeId, NodeKind),
        msg: RemoteCall,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RemoteReply, String>>;
}

/// Calls `route` through the fleet's link, retrying a call that could not
/// be delivered (a member reconnecting or still rebuilding its part of the
/// tree) every 100 ms until `timeout` has passed, or at once once the fleet
/// is stopping (a rebuild must not wait for a member that is gone).
pub(crate) async fn call_until(
    ctx: &FleetCtx,
    route: (&NodeId, NodeKind),
    msg: RemoteCall,
    timeout: Duration,
) -> Result<RemoteReply, String> {
    let Some(link) = &ctx.remote else {
        return Err(format!(
            "{} runs on another member, and there is no link",
            route.0
        ));
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let err = match link.call(route, msg.clone(), left).await {
            Ok(RemoteReply::Failed(why)) => why,
            Ok(r) => return Ok(r),
            Err(why) => why,
        };
        if ctx.is_shutting_down() {
            return Err(format!(
                "{} on another member: {err} (fleet stopping)",
                route.0
            ));
        }
        if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
            return Err(format!("{} on another member: {err}", route.0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
