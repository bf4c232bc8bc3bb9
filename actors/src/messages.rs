//! The messages actors exchange and the views they answer with.

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use vpp_domain::{
    DerState, DispatchId, DispatchOrder, FlexEnvelope, NodeAllocation, NodeId, NodeKind, NodeSpec,
    Setpoint, Strategy,
};
use vpp_protocol::Ack;

/// A share of an order sent to a child. `share_w` is the child's *total*
/// share of the order, not an increment: sending the same share twice is a
/// no-op, and a larger share tops the child up. That keeps retries safe.
pub(crate) struct DispatchShare {
    pub(crate) order: Arc<DispatchOrder>,
    pub(crate) share_w: u64,
    /// Answer by then; the receiver gives its own children less.
    pub(crate) deadline: Instant,
    /// Ask every child that holds a share of the order for it again, and
    /// so on down, before placing what is missing: after the tree was
    /// rebuilt elsewhere (shards moved), a parent's record of its children's
    /// shares may be more than they hold.
    pub(crate) reassert: bool,
}

/// What a node answers to a dispatch share (for its whole subtree).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchOutcome {
    /// Of the share, how much the subtree took, W.
    pub accepted_w: u64,
    /// DERs under the node holding a setpoint for the order.
    pub ders: u64,
    /// Re-split rounds in the subtree.
    pub resplits: u64,
    /// Why not all of the share was taken, when it was not.
    pub reason: Option<String>,
    /// The node's allocation epoch for the order after answering (grows with
    /// every change), so a parent can tell late reports from fresh ones.
    pub epoch: u64,
}

/// Why a DER state update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateRejected {
    /// Sequence number not newer than the one already applied.
    #[error("sequence number {got} is not newer than {have}")]
    Stale {
        /// What came in.
        got: u64,
        /// What is applied.
        have: u64,
    },
}

/// Messages to a site or virtual-DER actor. The `Der*` messages are for
/// the DER actors a site hosts, by their index in the site.
pub(crate) enum AggregateMsg {
    /// Children on this member have put reports in the inbox (see
    /// `aggregate/inbox.rs`).
    ReportsWaiting,
    /// A child's new envelope (index in the parent's child table), from a
    /// child on another member.
    ChildReport {
        idx: u32,
        env: Box<FlexEnvelope>,
    },
    /// Time to report upward what has accumulated.
    Flush,
    /// The children's handles, in the order of the spawn arguments
    /// (virtual DERs; a site's children are hosted); `None` for a child
    /// running on another member.
    Attach(Vec<Option<ActorRef<AggregateMsg>>>),
    /// Time to send a parent on another member the last report again.
    Resend,
    View(RpcReplyPort<NodeView>),
    Refresh(RpcReplyPort<FlexEnvelope>),
    Dispatch(DispatchShare, RpcReplyPort<DispatchOutcome>),
    Cancel(DispatchId, Option<RpcReplyPort<()>>),
    /// Which allocation this node holds for an order.
    Allocation(DispatchId, RpcReplyPort<Option<NodeAllocation>>),
    /// A new state for one hosted DER.
    DerState(
        u32,
        DerState,
        Option<RpcReplyPort<Result<(), StateRejected>>>,
    ),
    /// New states for several hosted DERs (telemetry batches: the DERs then
    /// time out when their devices fall silent).
    DerStates(Vec<(u32, DerState)>),
    /// What devices of hosted DERs said (telemetry, acks, reported state).
    DeviceInputs(Vec<(u32, DeviceInput)>),
    /// The site's gateway went offline (its last will) or came back.
    GatewayStatus(bool),
    /// Time to take silent devices offline.
    Sweep,
    /// Publish DERs' desired documents again: every DER's (`false`: the
    /// broker may have lost its retained messages), or only those of DERs
    /// holding a setpoint the device has not yet acked as applied (`true`:
    /// the runtime's reading connection was away, so acks may be lost).
    Republish(bool),
    /// A child could no longer hold part of its share of an order (a device
    /// rejected its setpoint after the split): re-split it.
    ShareRefused {
        idx: u32,
        dispatch: DispatchId,
        /// What the child still holds of the order (absolute, not a delta).
        holds_w: u64,
        /// The child's allocation epoch after the change: a parent that has
        /// since heard a newer answer from the child ignores this report.
        epoch: u64,
        reason: String,
    },
    /// What a hosted DER says about itself.
    DerView(u32, RpcReplyPort<Option<NodeView>>),
    /// Makes hosted DER `idx` panic inside its handler (tests of supervision).
    #[cfg(test)]
    PanicDer(u32, RpcReplyPort<Result<(), String>>),
}

// Local only: ractor's `cluster` feature (the runtime's mesh) asks every
// message type to say whether it can cross members; this one does not
// (remote nodes are reached through `RemoteLink`).
impl ractor::Message for AggregateMsg {}

/// One child as seen from its parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildView {
    /// The child.
    pub id: NodeId,
    /// What it reported last.
    pub envelope: FlexEnvelope,
    /// Committed to active orders, up / down, W.
    pub committed_up_w: u64,
    /// See `committed_up_w`.
    pub committed_down_w: u64,
    /// The child actor stopped or panicked and has not come back.
    pub failed: bool,
}

/// One message from a device, decoded and addressed by the runtime.
#[derive(Debug, Clone)]
pub enum DeviceInput {
    /// A measurement (its DER then times out when the device falls silent).
    Telemetry(DerState),
    /// An answer to a desired document.
    Ack(Ack),
    /// The desired version the device holds.
    Reported(u64),
}

/// Where a DER lives in a fleet: its site's number and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DerAddr {
    /// The site's number.
    pub site_no: u32,
    /// The DER's index at its site.
    pub idx: u32,
}

/// What a device said about one setpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckState {
    /// Published (or about to be); no answer yet.
    Pending,
    /// The device will follow it.
    Accepted,
    /// The device holds it.
    Applied,
}

/// A DER's side of the device shadow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    /// Version of the last desired document published (none yet: `None`).
    pub desired_version: Option<u64>,
    /// Version the device last reported or acked as applied.
    pub reported_version: u64,
    /// What the device said about each setpoint it holds.
    pub acks: Vec<(DispatchId, AckState)>,
    /// When telemetry last arrived, Unix ms (runtime clock); `None` if the
    /// DER is not tracked by telemetry.
    pub heard_ms: Option<u64>,
}

/// What any node says about itself: "what can you do now".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// What it is.
    pub kind: NodeKind,
    /// Its definition in the hierarchy.
    pub spec: NodeSpec,
    /// Its envelope (the sum of its children's for aggregates).
    pub envelope: FlexEnvelope,
    /// Capacity already promised to active orders, up, W.
    pub committed_up_w: u64,
    /// Capacity already promised to active orders, down, W.
    pub committed_down_w: u64,
    /// Split strategy (aggregates).
    pub strategy: Option<Strategy>,
    /// Children (aggregates).
    pub children: Vec<ChildView>,
    /// Last known state (DERs).
    pub state: Option<DerState>,
    /// Active setpoints (DERs).
    pub setpoints: Vec<Setpoint>,
    /// Orders this node holds an allocation for.
    pub active_dispatches: Vec<DispatchId>,
    /// The device shadow (DERs).
    pub device: Option<DeviceView>,
}

/// Collapses the layers of a ractor call result into one error string.
pub(crate) fn settle<T, M>(
    r: Result<ractor::rpc::CallResult<T>, ractor::MessagingErr<M>>,
) -> Result<T, String> {
    use ractor::rpc::CallResult;
    match r {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err("no answer in time".into()),
        Ok(CallResult::SenderError) => Err("actor stopped while answering".into()),
        Err(e) => Err(format!("actor unreachable: {e}")),
    }
}
