//! Per-DER live records: last known state and active setpoints.
//!
//! Both are written often (every telemetry message, every dispatch) and both
//! can be rebuilt from devices if the last moments are lost, so they are
//! written as one sled batch per call and not flushed: sled's background
//! flush makes them durable within `flush_every_ms`. Most writers go through
//! [`crate::WriteBehind`], which coalesces them first.

use std::collections::HashMap;

use sled::Batch;
use vpp_domain::{DerState, NodeId, Setpoint};

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::keys::node_id;
use crate::store::{Store, DER_STATE, SETPOINTS};

impl Store {
    /// Stores the state of each DER, replacing what was there, in one atomic
    /// batch (the last entry wins if an id repeats). Not flushed: durable
    /// within `flush_every_ms`, or after the next [`Store::flush`].
    pub fn put_der_states(&self, items: &[(NodeId, DerState)]) -> Result<(), StoreError> {
        let batch = der_state_batch(items.iter().map(|(id, s)| (id, s)))?;
        Ok(self.inner.der_state.apply_batch(batch)?)
    }

    /// Every stored DER state.
    pub fn load_der_states(&self) -> Result<HashMap<NodeId, DerState>, StoreError> {
        // Collected into a Vec first, then into a map of the right size:
        // growing a million-entry map step by step cost a third more time
        // (`Tree::len` would scan the whole tree to size it up front).
        let mut items = Vec::new();
        for kv in self.inner.der_state.iter() {
            let (key, value) = kv?;
            items.push((node_id(DER_STATE, &key)?, decode(DER_STATE, &key, &value)?));
        }
        let mut out = HashMap::with_capacity(items.len());
        out.extend(items);
        Ok(out)
    }

    /// The stored state of one DER, if any.
    pub fn der_state(&self, id: &NodeId) -> Result<Option<DerState>, StoreError> {
        let key = id.as_str().as_bytes();
        match self.inner.der_state.get(key)? {
            None => Ok(None),
            Some(value) => decode(DER_STATE, key, &value).map(Some),
        }
    }

    /// Stores the active setpoints of each DER, replacing what was there; an
    /// empty list deletes the DER's entry. One atomic batch, not flushed.
    pub fn put_setpoints(&self, items: &[(NodeId, Vec<Setpoint>)]) -> Result<(), StoreError> {
        let batch = setpoints_batch(items.iter().map(|(id, s)| (id, s.as_slice())))?;
        Ok(self.inner.setpoints.apply_batch(batch)?)
    }

    /// The active setpoints of one DER (empty if it has none).
    pub fn setpoints(&self, id: &NodeId) -> Result<Vec<Setpoint>, StoreError> {
        let key = id.as_str().as_bytes();
        match self.inner.setpoints.get(key)? {
            None => Ok(Vec::new()),
            Some(value) => decode(SETPOINTS, key, &value),
        }
    }

    /// The active setpoints of every DER that has any.
    pub fn load_setpoints(&self) -> Result<HashMap<NodeId, Vec<Setpoint>>, StoreError> {
        let mut out = HashMap::new();
        for kv in self.inner.setpoints.iter() {
            let (key, value) = kv?;
            out.insert(node_id(SETPOINTS, &key)?, decode(SETPOINTS, &key, &value)?);
        }
        Ok(out)
    }
}

/// One batch for the `der_state` tree.
pub(crate) fn der_state_batch<'a>(
    items: impl Iterator<Item = (&'a NodeId, &'a DerState)>,
) -> Result<Batch, StoreError> {
    let mut batch = Batch::default();
    for (id, state) in items {
        batch.insert(id.as_str().as_bytes(), encode("der state", state)?);
    }
    Ok(batch)
}

/// One batch for the `setpoints` tree; an empty list removes the key.
pub(crate) fn setpoints_batch<'a>(
    items: impl Iterator<Item = (&'a NodeId, &'a [Setpoint])>,
) -> Result<Batch, StoreError> {
    let mut batch = Batch::default();
    for (id, setpoints) in items {
        let key = id.as_str().as_bytes();
        if setpoints.is_empty() {
            batch.remove(key);
        } else {
            batch.insert(key, encode("setpoints", &setpoints)?);
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests;
