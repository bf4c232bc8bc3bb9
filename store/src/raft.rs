//! Replicated writes: every write a cluster must not lose is a [`Command`],
//! and [`Store::apply`] is the one place a command touches the store.
//!
//! ```text
//!   single node:  Node ──Command──► Store::apply(cmd, None) ──► sled
//!   cluster:      Node ──Command──► raft log (a majority has it on disk)
//!                                     └─► on every member, in log order:
//!                                         Store::apply(cmd, Some(position))
//! ```
//!
//! Applying is deterministic: a command carries everything it needs,
//! including the time that stamps its ledger entry, so every member writes
//! the same bytes and the audit chains of all members are equal.
//!
//! Applying is exactly-once across crashes. The position of the last applied
//! command (`mark`, an opaque value the cluster layer encodes) is kept under
//! [`APPLIED_KEY`] in the `raft_meta` tree. Commands that append to the
//! ledger write it in the same sled transaction as their records, so after
//! a crash either both are there or neither. The other commands are
//! idempotent (a put of the same value), so applying one twice after a crash
//! between the write and the mark changes nothing.
//!
//! The log itself lives in the `raft_log` tree (key: index, u64 big-endian;
//! value: the cluster layer's encoding of the entry) and the vote and log
//! bounds in `raft_meta`, all in the same sled database as the records, so
//! one flush covers everything.

use serde::{Deserialize, Serialize};
use vpp_domain::ledger::{LedgerDraft, LedgerEntry};
use vpp_domain::{DispatchRecord, Hierarchy, NodeId};

use crate::error::StoreError;
use crate::registry::Change;
use crate::store::Store;

/// Key of the live members in `raft_meta` ([`Store::set_live`]).
const LIVE_KEY: &[u8] = b"live";

/// Key of the last applied command's position in `raft_meta`.
pub(crate) const APPLIED_KEY: &[u8] = b"applied";

/// A write that a cluster replicates. Each variant is one existing store
/// write, with its time fixed by whoever proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// [`Store::replace_hierarchy`].
    ReplaceHierarchy(Hierarchy),
    /// [`Store::put_dispatch`]: a new or changed dispatch record.
    PutDispatch(DispatchRecord),
    /// [`Store::registry_commit`].
    RegistryCommit {
        /// The record writes.
        changes: Vec<Change>,
        /// Their ledger entry.
        draft: LedgerDraft,
        /// When, for the ledger entry.
        at_ms: u64,
    },
    /// [`Store::append_ledger`].
    AppendLedger {
        /// The entry.
        draft: LedgerDraft,
        /// When.
        at_ms: u64,
    },
    /// [`Store::import_meter`].
    ImportMeter {
        /// `(site, interval start ms, average W)`.
        readings: Vec<(NodeId, u64, i64)>,
        /// The import's ledger entry.
        draft: LedgerDraft,
        /// When, for the ledger entry.
        at_ms: u64,
    },
    /// [`Store::put_meter`]: intervals closed from telemetry.
    PutMeter(Vec<(NodeId, u64, i64)>),
    /// [`Store::set_live`]: the members that own shards, as the leader sees
    /// them (the cluster's shard placement follows from it).
    SetLive {
        /// Grows with every change.
        epoch: u64,
        /// Member names.
        members: Vec<String>,
    },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::ReplaceHierarchy(_) => "replace_hierarchy",
            Command::PutDispatch(_) => "put_dispatch",
            Command::RegistryCommit { .. } => "registry_commit",
            Command::AppendLedger { .. } => "append_ledger",
            Command::ImportMeter { .. } => "import_meter",
            Command::PutMeter(_) => "put_meter",
            Command::SetLive { .. } => "set_live",
        }
    }
}

/// What applying a command gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Applied {
    /// Done; nothing to return.
    #[default]
    Done,
    /// The ledger entry the command appended.
    Ledger(Box<LedgerEntry>),
    /// The command was refused; nothing was written (the same on every
    /// member, since applying is deterministic).
    Refused(String),
}

impl Store {
    /// Applies `cmd`. With `mark`, records it as the last applied position
    /// (atomically with ledger appends; see the module doc). Not flushed:
    /// the caller flushes (a cluster flushes once per batch of commands).
    ///
    /// A command that breaks a store rule (e.g. a meter import that is too
    /// big) is answered [`Applied::Refused`] and its mark is still written,
    /// so a replica never retries it. Storage failures are errors.
    pub fn apply(&self, cmd: &Command, mark: Option<&[u8]>) -> Result<Applied, StoreError> {
        let res = match cmd {
            Command::ReplaceHierarchy(h) => self.replace_hierarchy(h).map(|()| Applied::Done),
            Command::PutDispatch(r) => self.put_dispatch(r).map(|()| Applied::Done),
            Command::RegistryCommit {
                changes,
                draft,
                at_ms,
            } => self
                .registry_commit_at(changes, draft.clone(), *at_ms, mark)
                .map(|e| Applied::Ledger(Box::new(e))),
            Command::AppendLedger { draft, at_ms } => self
                .append_ledger_at(draft.clone(), *at_ms, mark)
                .map(|e| Applied::Ledger(Box::new(e))),
            Command::ImportMeter {
                readings,
                draft,
                at_ms,
            } => self
                .import_meter_at(readings, draft.clone(), *at_ms, mark)
                .map(|e| Applied::Ledger(Box::new(e))),
            Command::PutMeter(readings) => self.put_meter(readings).map(|()| Applied::Done),
            Command::SetLive { epoch, members } => {
                self.set_live(*epoch, members).map(|()| Applied::Done)
            }
        };
        let applied = match res {
            Ok(a) => a,
            Err(StoreError::Sled(sled::Error::Unsupported(why))) => Applied::Refused(why),
            Err(e @ StoreError::Encode { .. }) => Applied::Refused(e.to_string()),
            Err(e) => return Err(e),
        };
        if let Some(m) = mark {
            self.inner.raft_meta.insert(APPLIED_KEY, m)?;
        }
        Ok(applied)
    }

    /// Records which members own shards (epoch, names). Not flushed.
    pub fn set_live(&self, epoch: u64, members: &[String]) -> Result<(), StoreError> {
        let v = crate::codec::encode("live members", &(epoch, members.to_vec()))?;
        self.inner.raft_meta.insert(LIVE_KEY, v)?;
        Ok(())
    }

    /// The members that own shards, as last replicated: `(epoch, names)`.
    pub fn live(&self) -> Result<Option<(u64, Vec<String>)>, StoreError> {
        match self.inner.raft_meta.get(LIVE_KEY)? {
            Some(v) => Ok(Some(crate::codec::decode("raft_meta", LIVE_KEY, &v)?)),
            None => Ok(None),
        }
    }

    /// Records `mark` alone (an entry with no command, e.g. a membership
    /// change). Not flushed.
    pub fn apply_mark(&self, mark: &[u8]) -> Result<(), StoreError> {
        self.inner.raft_meta.insert(APPLIED_KEY, mark)?;
        Ok(())
    }

    /// True when this data dir belongs to a cluster member (it holds a Raft
    /// vote or log): writing to it directly would make it differ from the
    /// other members, so offline writers refuse.
    pub fn is_cluster_member(&self) -> Result<bool, StoreError> {
        Ok(self.inner.raft_meta.get(b"vote")?.is_some() || !self.inner.raft_log.is_empty())
    }

    /// The mark of the last applied command, if any.
    pub fn applied_mark(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.raft_meta.get(APPLIED_KEY)?.map(|v| v.to_vec()))
    }

    /// A value of the replication metadata (vote, log bounds), by name.
    pub fn raft_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .raft_meta
            .get(key.as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// Sets a value of the replication metadata and flushes.
    pub fn put_raft_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.raft_meta.insert(key.as_bytes(), value)?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Appends log entries `(index, encoded entry)` in one batch and flushes:
    /// on `Ok` they are on disk.
    pub fn raft_log_append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (i, e) in entries {
            batch.insert(&i.to_be_bytes(), e.as_slice());
        }
        self.inner.raft_log.apply_batch(batch)?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Log entries with index in `from..to`, in order.
    pub fn raft_log_range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.inner
            .raft_log
            .range(from.to_be_bytes()..to.to_be_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((log_index(&k)?, v.to_vec()))
            })
            .collect()
    }

    /// The last log entry, if any.
    pub fn raft_log_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.inner.raft_log.last()? {
            Some((k, v)) => Ok(Some((log_index(&k)?, v.to_vec()))),
            None => Ok(None),
        }
    }

    /// Removes log entries with index `>= from` (a follower's conflicting
    /// tail) and flushes.
    pub fn raft_log_truncate(&self, from: u64) -> Result<(), StoreError> {
        self.remove_log_range(from, u64::MAX)
    }

    /// Removes log entries with index `<= upto` (compaction) and flushes.
    pub fn raft_log_purge(&self, upto: u64) -> Result<(), StoreError> {
        self.remove_log_range(0, upto.saturating_add(1))
    }

    fn remove_log_range(&self, from: u64, to: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for kv in self
            .inner
            .raft_log
            .range(from.to_be_bytes()..to.to_be_bytes())
        {
            batch.remove(kv?.0);
        }
        self.inner.raft_log.apply_batch(batch)?;
        self.inner.db.flush()?;
        Ok(())
    }
}

fn log_index(key: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = key.try_into().map_err(|_| {
        crate::codec::corrupt(
            crate::store::RAFT_LOG,
            key,
            format!("log key of {} bytes, expected 8", key.len()),
        )
    })?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests;
