//! The registry: accounts, tokens, programs, enrollments, events and
//! settlements, each change committed together with its audit-ledger entry.
//!
//! ```text
//!   Store::registry_commit(changes, draft)
//!     └─ one sled transaction over (registry, ledger):
//!          read the old value of every key   ─► before digest
//!          write / delete every key          ─► after digest
//!          seal and append the ledger entry  (ledger.rs)
//!     └─ flush: durable when it returns Ok
//! ```
//!
//! Keys are `<kind>/<id>` (`account/ops`, `event/ev-1`,
//! `settlement/ev-1/en-7`). Values are JSON, not the postcard envelope of
//! the other trees: these records are few and small, their types use
//! tagged enums and optional fields that postcard cannot read back, and an
//! auditor can read them with any tool. (The format is as stable as the
//! API's JSON: a field added later must have a default.)
//! The before and after digests of a ledger entry are SHA-256 over the
//! changed keys and their old or new value bytes (`key ‖ 0x00 ‖ len u64 BE ‖
//! value`, absent values as length `u64::MAX`), so an auditor holding a copy
//! of a record can check it against the ledger.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sled::transaction::TransactionError;
use sled::Transactional;
use vpp_domain::ledger::{LedgerDraft, LedgerEntry};

use crate::codec::corrupt;
use crate::error::StoreError;
use crate::ledger::append_tx;
use crate::raft::APPLIED_KEY;
use crate::store::{now_ms, Store, REGISTRY};

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    key: String,
    value: Option<Vec<u8>>,
}

impl Change {
    /// Puts `value` at `key`.
    pub fn put<T: Serialize>(key: impl Into<String>, value: &T) -> Result<Change, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Encode {
            what: "registry record",
            reason: e.to_string(),
        })?;
        Ok(Change {
            key: key.into(),
            value: Some(bytes),
        })
    }

    /// Deletes `key`.
    pub fn delete(key: impl Into<String>) -> Change {
        Change {
            key: key.into(),
            value: None,
        }
    }
}

fn hash_into(h: &mut Sha256, key: &str, value: Option<&[u8]>) {
    h.update(key.as_bytes());
    h.update([0u8]);
    match value {
        Some(v) => {
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
        None => h.update(u64::MAX.to_be_bytes()),
    }
}

impl Store {
    /// One registry record.
    pub fn registry_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.inner.registry.get(key.as_bytes())? {
            Some(v) => Ok(Some(decode_json(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn registry_scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.inner
            .registry
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                decode_json(&k, &v)
            })
            .collect()
    }

    /// Applies `changes` and appends `draft` (its digests filled in) to the
    /// audit ledger in one transaction, then flushes: when it returns `Ok`
    /// the changes and their ledger entry are durable together; on any error
    /// nothing was written. Blocks (fsync): call it from `spawn_blocking`.
    pub fn registry_commit(
        &self,
        changes: &[Change],
        draft: LedgerDraft,
    ) -> Result<LedgerEntry, StoreError> {
        let entry = self.registry_commit_at(changes, draft, now_ms(), None)?;
        self.inner.db.flush()?;
        Ok(entry)
    }

    /// [`Store::registry_commit`] stamped `at_ms`, writing `mark` (a
    /// replicated command's position, `raft.rs`) in the same transaction.
    /// Not flushed.
    pub(crate) fn registry_commit_at(
        &self,
        changes: &[Change],
        draft: LedgerDraft,
        at_ms: u64,
        mark: Option<&[u8]>,
    ) -> Result<LedgerEntry, StoreError> {
        let trees = [
            &self.inner.registry,
            &self.inner.ledger,
            &self.inner.raft_meta,
        ];
        let res = trees.transaction(|t| {
            let (reg, ledger) = (&t[0], &t[1]);
            let mut before = Sha256::new();
            let mut after = Sha256::new();
            for c in changes {
                let old = reg.get(c.key.as_bytes())?;
                hash_into(&mut before, &c.key, old.as_deref());
                hash_into(&mut after, &c.key, c.value.as_deref());
                match &c.value {
                    Some(v) => {
                        reg.insert(c.key.as_bytes(), v.as_slice())?;
                    }
                    None => {
                        reg.remove(c.key.as_bytes())?;
                    }
                }
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
}

fn decode_json<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(REGISTRY, key, format!("json: {e}")))
}

#[cfg(test)]
mod tests;
