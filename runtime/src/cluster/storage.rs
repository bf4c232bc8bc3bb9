//! The Raft log and state machine, both in the node's sled store.
//!
//! | what                  | where (`vpp_store::raft`)            | encoding        |
//! |-----------------------|--------------------------------------|-----------------|
//! | log entry `i`         | `raft_log` tree, key `i` (u64 BE)    | postcard(Entry) |
//! | vote                  | `raft_meta` `vote`                   | postcard(Vote)  |
//! | committed log id      | `raft_meta` `committed`              | postcard        |
//! | last purged log id    | `raft_meta` `purged`                 | postcard        |
//! | last applied + membership | `raft_meta` `applied` (the mark) | postcard(Mark)  |
//!
//! Every log append and vote is flushed before openraft hears it is done.
//! Applying writes the records and the mark (atomically where the command
//! appends to the ledger; `vpp_store::raft`), then flushes once per batch.

// openraft's traits fix the error type (`StorageError`, 224 bytes); the
// closures that build it cannot box it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::watch;
use vpp_store::{Applied, Command, Store, StoreError};

use super::TypeConfig;

type SE = StorageError<u64>;

fn io(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, AnyError> {
    postcard::to_stdvec(v).map_err(io)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, AnyError> {
    postcard::from_bytes(b).map_err(io)
}

/// The log, in the `raft_log` tree.
/// Log appends on this member, until flushed (`/metrics`).
pub(super) static LOG_APPENDS: super::Timing = super::Timing::new();
/// Batches of committed entries applied on this member, flush included.
pub(super) static APPLIES: super::Timing = super::Timing::new();

#[derive(Clone)]
pub(super) struct LogStore {
    store: Store,
}

impl LogStore {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AnyError> {
        match self.store.raft_meta(key).map_err(io)? {
            Some(b) => Ok(Some(dec(&b)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), AnyError> {
        self.store.put_raft_meta(key, &enc(v)?).map_err(io)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SE> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        let rows = self
            .store
            .raft_log_range(from, to)
            .map_err(|e| StorageIOError::read_logs(io(e)))?;
        rows.iter()
            .map(|(_, b)| dec(b).map_err(|e| StorageIOError::read_logs(e).into()))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SE> {
        let purged: Option<LogId<u64>> = self.meta("purged").map_err(StorageIOError::read_logs)?;
        let last = match self
            .store
            .raft_log_last()
            .map_err(|e| StorageIOError::read_logs(io(e)))?
        {
            Some((_, b)) => {
                let e: Entry<TypeConfig> = dec(&b).map_err(StorageIOError::read_logs)?;
                Some(e.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SE> {
        self.put_meta("vote", vote)
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SE> {
        self.meta("vote")
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SE> {
        self.put_meta("committed", &committed)
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SE> {
        Ok(self
            .meta::<Option<LogId<u64>>>("committed")
            .map_err(StorageIOError::read)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, enc(&e).map_err(StorageIOError::write_logs)?));
        }
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || store.raft_log_append(&rows))
            .await
            .map_err(|e| StorageIOError::write_logs(io(e)))?;
        LOG_APPENDS.record(started.elapsed());
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(StorageIOError::write_logs(io(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SE> {
        self.store
            .raft_log_truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(io(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SE> {
        self.put_meta("purged", &Some(log_id))
            .map_err(StorageIOError::write_logs)?;
        self.store
            .raft_log_purge(log_id.index)
            .map_err(|e| StorageIOError::write_logs(io(e)).into())
    }
}

/// The mark written with each applied command (`vpp_store::raft`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Mark {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// The state machine: the node's store.
pub(super) struct StateMachine {
    store: Store,
    mark: Mark,
    /// Counts hierarchy replacements applied, so the node rebuilds its fleet.
    hierarchies: watch::Sender<u64>,
    /// Counts live-member changes applied, so shards move.
    lives: watch::Sender<u64>,
}

impl StateMachine {
    pub(super) fn open(
        store: Store,
        hierarchies: watch::Sender<u64>,
        lives: watch::Sender<u64>,
    ) -> anyhow::Result<Self> {
        let mark = match store.applied_mark()? {
            Some(b) => postcard::from_bytes(&b)
                .map_err(|e| anyhow::anyhow!("raft_meta/applied is unreadable: {e}"))?,
            None => Mark::default(),
        };
        Ok(Self {
            store,
            mark,
            hierarchies,
            lives,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        Err(StorageIOError::write_snapshot(
            None,
            AnyError::error("snapshots are not supported yet: the log is kept whole"),
        )
        .into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SE> {
        Ok((self.mark.applied, self.mark.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let store = self.store.clone();
        let mut mark = self.mark.clone();
        let started = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(entries.len());
            let mut hierarchies = 0u64;
            let mut lives = 0u64;
            for e in entries {
                let already = mark.applied.is_some_and(|a| a.index >= e.log_id.index);
                mark.applied = Some(e.log_id);
                if let EntryPayload::Membership(m) = &e.payload {
                    mark.membership = StoredMembership::new(Some(e.log_id), m.clone());
                }
                let bytes = postcard::to_stdvec(&mark).map_err(|x| (e.log_id, io(x)))?;
                let applied = match &e.payload {
                    // Applied before a crash (the mark says so): answer
                    // without writing twice.
                    EntryPayload::Normal(_) if already => Applied::Done,
                    EntryPayload::Normal(cmd) => {
                        match cmd {
                            Command::ReplaceHierarchy(_) => hierarchies += 1,
                            Command::SetLive { .. } => lives += 1,
                            _ => {}
                        }
                        store
                            .apply(cmd, Some(&bytes))
                            .map_err(|x| (e.log_id, io(x)))?
                    }
                    EntryPayload::Blank | EntryPayload::Membership(_) => {
                        store
                            .apply_mark(&bytes)
                            .map_err(|x: StoreError| (e.log_id, io(x)))?;
                        Applied::Done
                    }
                };
                out.push(applied);
            }
            store
                .flush()
                .map_err(|x| (mark.applied.unwrap_or_default(), io(x)))?;
            Ok::<_, (LogId<u64>, AnyError)>((out, mark, hierarchies, lives))
        })
        .await
        .map_err(|e| StorageIOError::write_state_machine(io(e)))?;
        APPLIES.record(started.elapsed());
        match res {
            Ok((out, mark, hierarchies, lives)) => {
                self.mark = mark;
                if hierarchies > 0 {
                    self.hierarchies.send_modify(|n| *n += hierarchies);
                }
                if lives > 0 {
                    self.lives.send_modify(|n| *n += lives);
                }
                Ok(out)
            }
            Err((log_id, e)) => Err(StorageIOError::apply(log_id, e).into()),
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            store: self.store.clone(),
            mark: self.mark.clone(),
            hierarchies: self.hierarchies.clone(),
            lives: self.lives.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SE> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SE> {
        Err(StorageIOError::write_snapshot(
            None,
            AnyError::error("snapshots are not supported yet: the log is kept whole"),
        )
        .into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SE> {
        Ok(None)
    }
}
