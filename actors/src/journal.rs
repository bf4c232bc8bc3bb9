//! Where actors send what should be persisted, without waiting for it.

use vpp_domain::{DerState, NodeAllocation, NodeId, Setpoint};

/// Write-behind sink for actor state. Implementations must not block: actors
/// call these from their message handlers.
pub trait Journal: Send + Sync + 'static {
    /// A DER's latest state.
    fn der_state(&self, id: &NodeId, state: &DerState);
    /// A DER's active setpoints (empty = none).
    fn setpoints(&self, id: &NodeId, setpoints: &[Setpoint]);
    /// What a node did with an order.
    fn allocation(&self, allocation: &NodeAllocation);
}

/// Persists nothing (tests of pure actor behaviour).
#[derive(Debug, Default)]
pub struct NullJournal;

impl Journal for NullJournal {
    fn der_state(&self, _: &NodeId, _: &DerState) {}
    fn setpoints(&self, _: &NodeId, _: &[Setpoint]) {}
    fn allocation(&self, _: &NodeAllocation) {}
}

/// The store's write-behind thread is the production journal.
pub type StoreJournal = vpp_store::WriteBehindHandle;

impl Journal for vpp_store::WriteBehindHandle {
    fn der_state(&self, id: &NodeId, state: &DerState) {
        self.queue_der_state(id.clone(), state.clone());
    }
    fn setpoints(&self, id: &NodeId, setpoints: &[Setpoint]) {
        self.queue_setpoints(id.clone(), setpoints.to_vec());
    }
    fn allocation(&self, allocation: &NodeAllocation) {
        self.queue_allocation(allocation.clone());
    }
}
