//! Where DER actors send desired documents for their devices.
//!
//! The runtime implements [`DeviceLink`] over MQTT (topic and encoding from
//! `vpp-protocol`); tests use [`NoDevices`] or a recording link. Like the
//! [`crate::Journal`], it must not block: sites call it from their handlers.

use vpp_domain::NodeId;
use vpp_protocol::Desired;

/// Delivers desired documents to devices.
pub trait DeviceLink: Send + Sync + 'static {
    /// Publish the desired document of DER `der` at `site` (retained).
    fn desired(&self, site: &NodeId, der: &NodeId, doc: &Desired);

    /// Whether devices get one site document per site (the current desired
    /// document of every DER of the site that has one, device protocol
    /// §3.7) instead of a document per DER. No default: a link that wraps
    /// another must pass this on (a defaulted wrapper once hid it).
    fn site_documents(&self) -> bool;

    /// Publish the site document of `site`: every DER's current document
    /// (retained). Called only when [`DeviceLink::site_documents`] is true.
    fn desired_site(&self, site: &NodeId, docs: &[(&NodeId, Desired)]);
}

/// Reaches no device (fleets without a broker, tests of pure actor logic).
#[derive(Debug, Default)]
pub struct NoDevices;

impl DeviceLink for NoDevices {
    fn desired(&self, _: &NodeId, _: &NodeId, _: &Desired) {}

    fn site_documents(&self) -> bool {
        false
    }

    fn desired_site(&self, _: &NodeId, _: &[(&NodeId, Desired)]) {}
}
