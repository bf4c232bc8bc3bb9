//! Per-site records of DER state and setpoints.
//!
//! The runtime persists what its DERs know one record per **site**: the last
//! state and active setpoints of each DER at the site. A telemetry wave or a
//! fleet-wide dispatch then writes one record per site instead of one or two
//! per DER: sled takes roughly 100k small inserts a second on two cores, so
//! at a million DERs that is the difference between seconds and tens of
//! seconds of write-behind (BENCHMARKS.md). Like the per-DER trees, records
//! are written as one batch per call and are durable within
//! `flush_every_ms`, or at once after a flush.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sled::Batch;
use vpp_domain::{DerState, NodeId, Setpoint};

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::keys::node_id;
use crate::store::{Store, SITE_DERS};

/// What is persisted of one DER, inside its site's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerRecord {
    /// The DER.
    pub id: NodeId,
    /// Its last known state.
    pub state: DerState,
    /// Its active setpoints.
    pub setpoints: Vec<Setpoint>,
}

impl Store {
    /// Stores the record of each site, replacing what was there; an empty list
    /// deletes the site's record. One atomic batch, not flushed.
    pub fn put_site_ders(&self, items: &[(NodeId, Vec<DerRecord>)]) -> Result<(), StoreError> {
        let batch = site_ders_batch(items.iter().map(|(id, d)| (id, d.as_slice())))?;
        Ok(self.inner.site_ders.apply_batch(batch)?)
    }

    /// The record of one site (empty when none is stored).
    pub fn site_ders(&self, site: &NodeId) -> Result<Vec<DerRecord>, StoreError> {
        let key = site.as_str().as_bytes();
        match self.inner.site_ders.get(key)? {
            None => Ok(Vec::new()),
            Some(value) => decode(SITE_DERS, key, &value),
        }
    }

    /// Every site's record.
    pub fn load_site_ders(&self) -> Result<HashMap<NodeId, Vec<DerRecord>>, StoreError> {
        let tree = &self.inner.site_ders;
        let mut out = HashMap::with_capacity(tree.len());
        for kv in tree.iter() {
            let (key, value) = kv?;
            out.insert(node_id(SITE_DERS, &key)?, decode(SITE_DERS, &key, &value)?);
        }
        Ok(out)
    }
}

/// One batch for the `site_ders` tree; an empty list removes the key.
pub(crate) fn site_ders_batch<'a>(
    items: impl Iterator<Item = (&'a NodeId, &'a [DerRecord])>,
) -> Result<Batch, StoreError> {
    let mut batch = Batch::default();
    for (id, ders) in items {
        if ders.is_empty() {
            batch.remove(id.as_str().as_bytes());
        } else {
            batch.insert(id.as_str().as_bytes(), encode("site ders", &ders)?);
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests;
