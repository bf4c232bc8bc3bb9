//! Where actors send what should be persisted, without waiting for it.

use vpp_domain::{NodeAllocation, NodeId};
pub(crate) use vpp_store::DerRecord;

/// Write-behind sink for actor state. Implementations must not block: actors
/// call these from their message handlers.
pub trait Journal: Send + Sync + 'static {
    /// The state and setpoints of every DER at a site, after any of them
    /// changed (one record per site: see `vpp_store::DerRecord`).
    fn site_ders(&self, site: &NodeId, ders: Vec<DerRecord>);
    /// What a virtual DER did with an order (a site's is rebuilt from its
    /// DERs' setpoints).
    fn allocation(&self, allocation: &NodeAllocation);
}

/// Persists nothing (tests of pure actor behaviour).
#[derive(Debug, Default)]
pub struct NullJournal;

impl Journal for NullJournal {
    fn site_ders(&self, _: &NodeId, _: Vec<DerRecord>) {}
    fn allocation(&self, _: &NodeAllocation) {}
}

/// The store's write-behind thread is the production journal.
impl Journal for vpp_store::WriteBehindHandle {
    fn site_ders(&self, site: &NodeId, ders: Vec<DerRecord>) {
        self.queue_site_ders(site.clone(), ders);
    }
    fn allocation(&self, allocation: &NodeAllocation) {
        self.queue_allocation(allocation.clone());
    }
}
