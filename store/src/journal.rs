//! The dispatch journal: orders with their status, and what each node did
//! with each order.
//!
//! An order is acknowledged to its caller only after
//! [`Store::put_dispatch_durable`] has returned, so an accepted order
//! survives any crash. Allocations are written in batches as the split
//! progresses and become durable with the next flush.

use sled::Batch;
use vpp_domain::{DispatchId, DispatchRecord, NodeAllocation, NodeId};

use crate::codec::{corrupt, decode, encode};
use crate::error::StoreError;
use crate::keys::{allocation_key, allocation_prefix};
use crate::store::{Store, ALLOCATIONS, DISPATCHES};

impl Store {
    /// Stores `record` under its order id, replacing what was there. Not
    /// flushed: durable within `flush_every_ms` or after the next flush.
    pub fn put_dispatch(&self, record: &DispatchRecord) -> Result<(), StoreError> {
        let key = record.order.id.as_str().as_bytes();
        self.inner
            .dispatches
            .insert(key, encode("dispatch record", record)?)?;
        Ok(())
    }

    /// [`Store::put_dispatch`], then flush: when it returns `Ok` the record
    /// survives a crash. Use it before acknowledging an order.
    pub fn put_dispatch_durable(&self, record: &DispatchRecord) -> Result<(), StoreError> {
        self.put_dispatch(record)?;
        self.flush()?;
        Ok(())
    }

    /// The record of order `id`, if stored.
    pub fn get_dispatch(&self, id: &DispatchId) -> Result<Option<DispatchRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        match self.inner.dispatches.get(key)? {
            None => Ok(None),
            Some(value) => decode_record(key, &value).map(Some),
        }
    }

    /// At most `limit` records, newest first by `created_ms` (ties by id).
    /// Reads and sorts the whole journal: ids are chosen by callers, so key
    /// order says nothing about age.
    pub fn list_dispatches(&self, limit: usize) -> Result<Vec<DispatchRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.dispatches.iter() {
            let (key, value) = kv?;
            out.push(decode_record(&key, &value)?);
        }
        out.sort_by(|a, b| {
            b.order
                .created_ms
                .cmp(&a.order.created_ms)
                .then_with(|| a.order.id.cmp(&b.order.id))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// Stores allocations, each replacing the one of the same dispatch and
    /// node, in one atomic batch. Not flushed.
    pub fn put_allocations(&self, items: &[NodeAllocation]) -> Result<(), StoreError> {
        Ok(self
            .inner
            .allocations
            .apply_batch(allocations_batch(items.iter())?)?)
    }

    /// Every node's allocation of order `dispatch`, by node id.
    pub fn allocations_of(&self, dispatch: &DispatchId) -> Result<Vec<NodeAllocation>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .inner
            .allocations
            .scan_prefix(allocation_prefix(dispatch))
        {
            let (key, value) = kv?;
            out.push(decode_allocation(&key, &value)?);
        }
        Ok(out)
    }

    /// What `node` did with order `dispatch`, if stored.
    pub fn allocation(
        &self,
        dispatch: &DispatchId,
        node: &NodeId,
    ) -> Result<Option<NodeAllocation>, StoreError> {
        let key = allocation_key(dispatch, node);
        match self.inner.allocations.get(&key)? {
            None => Ok(None),
            Some(value) => decode_allocation(&key, &value).map(Some),
        }
    }
}

/// One batch for the `allocations` tree.
pub(crate) fn allocations_batch<'a>(
    items: impl Iterator<Item = &'a NodeAllocation>,
) -> Result<Batch, StoreError> {
    let mut batch = Batch::default();
    for a in items {
        batch.insert(
            allocation_key(&a.dispatch, &a.node),
            encode("node allocation", a)?,
        );
    }
    Ok(batch)
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<DispatchRecord, StoreError> {
    let record: DispatchRecord = decode(DISPATCHES, key, value)?;
    if record.order.id.as_str().as_bytes() != key {
        return Err(corrupt(
            DISPATCHES,
            key,
            format!("holds the record of order {}", record.order.id),
        ));
    }
    Ok(record)
}

fn decode_allocation(key: &[u8], value: &[u8]) -> Result<NodeAllocation, StoreError> {
    let a: NodeAllocation = decode(ALLOCATIONS, key, value)?;
    if allocation_key(&a.dispatch, &a.node) != key {
        return Err(corrupt(
            ALLOCATIONS,
            key,
            format!("holds the allocation of {} for {}", a.node, a.dispatch),
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests;
