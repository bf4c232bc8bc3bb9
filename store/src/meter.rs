//! Interval meter data: one average power per site per interval.
//!
//! ```text
//!   metering (telemetry)  ── Store::put_meter ────► meter   (one batch, flushed within
//!                                                            flush_every_ms)
//!   CSV import            ── Store::import_meter ─► meter + ledger  (one transaction,
//!                                                                   then flush)
//!   M&V, API              ◄─ Store::meter_range ─── meter   (one site, [from, to))
//! ```
//!
//! Key: site id ‖ 0x00 ‖ interval start, Unix ms (u64 BE). Ids never hold
//! 0x00 and the start is big-endian, so a site's readings are one contiguous
//! key range in time order and `a` never reaches into the readings of `ab`.
//!
//! Value: the interval's average power, W (net import, negative = export),
//! as 8 bytes of i64 big-endian, *not* the usual versioned postcard envelope:
//! a reading is one fixed-size number whose layout has nothing to evolve,
//! and the meter tree is the biggest tree of a node that keeps months of
//! 5-minute data (1,000 sites × 1 year ≈ 10⁸ readings), where one byte in
//! nine is worth saving. Should the layout ever change, `SCHEMA_VERSION`
//! changes with it. Anything that is not exactly 8 bytes reads as
//! [`StoreError::Corrupt`].
//!
//! An import's ledger entry carries two SHA-256 digests over the touched
//! readings in key order (duplicates in one import: the last one wins):
//! `before` over what was stored, `after` over what the import wrote. Each
//! reading contributes `key length (u64 BE) ‖ key ‖ value length (u64 BE) ‖
//! value`, an absent value counted as length `u64::MAX` and no bytes, so
//! anyone holding the imported file and the tree can check them.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};
use sled::transaction::TransactionError;
use sled::{Batch, Transactional};
use vpp_domain::ledger::{LedgerDraft, LedgerEntry};
use vpp_domain::NodeId;

use crate::codec::corrupt;
use crate::error::StoreError;
use crate::ledger::append_tx;
use crate::raft::APPLIED_KEY;
use crate::store::{now_ms, Store, METER};

/// Most readings one [`Store::import_meter`] takes: a sled transaction holds
/// all of its writes in memory until it commits (about 200 bytes each).
pub const MAX_IMPORT_READINGS: usize = 1_000_000;

/// Length of the suffix after a site id: 0x00 and the start (u64 BE).
const SUFFIX_LEN: usize = 9;

/// Key of the reading of `site` for the interval starting at `start_ms`.
fn meter_key(site: &NodeId, start_ms: u64) -> Vec<u8> {
    let id = site.as_str().as_bytes();
    let mut key = Vec::with_capacity(id.len() + SUFFIX_LEN);
    key.extend_from_slice(id);
    key.push(0);
    key.extend_from_slice(&start_ms.to_be_bytes());
    key
}

/// The interval start of a key of `site`'s range.
fn start_of(site: &NodeId, key: &[u8]) -> Result<u64, StoreError> {
    let id = site.as_str().as_bytes();
    match key.strip_prefix(id).and_then(|r| r.strip_prefix(&[0])) {
        Some(rest) if rest.len() == 8 => {
            let mut b = [0; 8];
            b.copy_from_slice(rest);
            Ok(u64::from_be_bytes(b))
        }
        _ => Err(corrupt(
            METER,
            key,
            format!("not a meter key of site {site}"),
        )),
    }
}

fn decode_w(key: &[u8], value: &[u8]) -> Result<i64, StoreError> {
    let b: [u8; 8] = value.try_into().map_err(|_| {
        corrupt(
            METER,
            key,
            format!("value of {} bytes, a reading has 8", value.len()),
        )
    })?;
    Ok(i64::from_be_bytes(b))
}

fn hash_into(h: &mut Sha256, key: &[u8], value: Option<&[u8]>) {
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    match value {
        Some(v) => {
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
        None => h.update(u64::MAX.to_be_bytes()),
    }
}

impl Store {
    /// Stores readings `(site, interval start ms, average W)`, each replacing
    /// the one of the same site and start. One atomic batch, visible at
    /// once, durable within `flush_every_ms` (promise 4). Blocks on sled.
    pub fn put_meter(&self, readings: &[(NodeId, u64, i64)]) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for (site, start_ms, w) in readings {
            batch.insert(meter_key(site, *start_ms), &w.to_be_bytes());
        }
        Ok(self.inner.meter.apply_batch(batch)?)
    }

    /// Stores imported readings together with one audit-ledger entry
    /// (`draft`, its digests filled in as the module doc says) in one sled
    /// transaction, then flushes: when it returns `Ok` the readings and
    /// their entry are durable together; on any error nothing was written.
    /// At most [`MAX_IMPORT_READINGS`] readings (more is refused before
    /// anything is written). Blocks (fsync): from async code call it in
    /// `spawn_blocking`.
    pub fn import_meter(
        &self,
        readings: &[(NodeId, u64, i64)],
        draft: LedgerDraft,
    ) -> Result<LedgerEntry, StoreError> {
        let entry = self.import_meter_at(readings, draft, now_ms(), None)?;
        self.inner.db.flush()?;
        Ok(entry)
    }

    /// [`Store::import_meter`] stamped `at_ms`, writing `mark` (a replicated
    /// command's position, `raft.rs`) in the same transaction. Not flushed.
    pub(crate) fn import_meter_at(
        &self,
        readings: &[(NodeId, u64, i64)],
        draft: LedgerDraft,
        at_ms: u64,
        mark: Option<&[u8]>,
    ) -> Result<LedgerEntry, StoreError> {
        if readings.len() > MAX_IMPORT_READINGS {
            return Err(StoreError::Sled(sled::Error::Unsupported(format!(
                "a meter import takes at most {MAX_IMPORT_READINGS} readings, this one has {}; split it",
                readings.len()
            ))));
        }
        // Key order, last duplicate wins: the digests do not depend on the
        // order of the file's lines.
        let writes: BTreeMap<Vec<u8>, [u8; 8]> = readings
            .iter()
            .map(|(site, start_ms, w)| (meter_key(site, *start_ms), w.to_be_bytes()))
            .collect();
        let trees = [&self.inner.meter, &self.inner.ledger, &self.inner.raft_meta];
        let res = trees.transaction(|t| {
            let (meter, ledger) = (&t[0], &t[1]);
            let mut before = Sha256::new();
            let mut after = Sha256::new();
            for (key, value) in &writes {
                let old = meter.insert(key.as_slice(), value.as_slice())?;
                hash_into(&mut before, key, old.as_deref());
                hash_into(&mut after, key, Some(value));
            }
            let mut d = draft.clone();
            d.before = Some(before.finalize().into());
            d.after = Some(after.finalize().into());
            let entry = append_tx(ledger, d, at_ms)?;
            if let Some(m) = mark {
                t[2].insert(APPLIED_KEY, m)?;
            }
            Ok(entry)
        });
        match res {
            Ok(e) => Ok(e),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
    }

    /// The readings of `site` whose interval starts in `[from_ms, to_ms)`,
    /// by start.
    pub fn meter_range(
        &self,
        site: &NodeId,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<u64, i64>, StoreError> {
        let mut out = BTreeMap::new();
        if from_ms >= to_ms {
            return Ok(out);
        }
        for kv in self
            .inner
            .meter
            .range(meter_key(site, from_ms)..meter_key(site, to_ms))
        {
            let (key, value) = kv?;
            out.insert(start_of(site, &key)?, decode_w(&key, &value)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
