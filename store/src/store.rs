//! [`Store`]: one sled database per data dir, its trees, opening and flushing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sled::Tree;

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::keys::SCHEMA_VERSION_KEY;

/// Schema version of the data dir: bumped when a tree or key layout changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Most writes per sled batch where atomicity is not needed (write-behind,
/// clean-up): sled's memory grows steeply with the size of one batch (1M
/// inserts in batches of 10k peaked at 2.1 GB of RSS, in batches of 1k at
/// 0.3 GB).
pub(crate) const MAX_BATCH: usize = 1000;

/// How long `open` waits for a held lock before reporting it.
const LOCK_WAIT: Duration = Duration::from_secs(1);

pub(crate) const META: &str = "meta";
pub(crate) const NODES: &str = "nodes";
pub(crate) const DER_STATE: &str = "der_state";
pub(crate) const SETPOINTS: &str = "setpoints";
pub(crate) const SITE_DERS: &str = "site_ders";
pub(crate) const DISPATCHES: &str = "dispatches";
pub(crate) const ALLOCATIONS: &str = "allocations";
pub(crate) const REGISTRY: &str = "registry";
pub(crate) const LEDGER: &str = "ledger";
pub(crate) const METER: &str = "meter";
pub(crate) const RAFT_LOG: &str = "raft_log";
pub(crate) const RAFT_META: &str = "raft_meta";

/// How to open a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Size of sled's page cache, bytes (approximate: sled's RSS runs above
    /// it). 256 MiB holds the records of a million-DER hierarchy (~150 MB).
    pub cache_bytes: u64,
    /// How often sled's background thread writes and fsyncs what is not yet
    /// on disk, ms. This bounds how much un-flushed work a crash can lose;
    /// `None` means only explicit flushes make writes durable.
    pub flush_every_ms: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 256 * 1024 * 1024,
            flush_every_ms: Some(500),
        }
    }
}

/// The runtime's persistence: hierarchy, DER state, setpoints and the
/// dispatch journal, in one sled database.
///
/// Cheap to clone (every clone shares the same database) and `Send + Sync`.
/// The database closes, flushing what it holds, when the last clone is
/// dropped.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) meta: Tree,
    pub(crate) nodes: Tree,
    pub(crate) der_state: Tree,
    pub(crate) setpoints: Tree,
    pub(crate) site_ders: Tree,
    pub(crate) dispatches: Tree,
    pub(crate) allocations: Tree,
    /// Accounts, programs, enrollments, events, settlements (`registry.rs`).
    pub(crate) registry: Tree,
    /// The hash-chained audit ledger (`ledger.rs`).
    pub(crate) ledger: Tree,
    /// Interval meter data per site (`meter.rs`).
    pub(crate) meter: Tree,
    /// The replicated command log of a cluster node (`raft.rs`).
    pub(crate) raft_log: Tree,
    /// A cluster node's vote, log bounds and last applied command (`raft.rs`).
    pub(crate) raft_meta: Tree,
    /// Readers of the hierarchy share it; a replacement takes it alone, so a
    /// reader never scans a generation that is being swept away under it.
    pub(crate) hierarchy_lock: RwLock<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Fails with [`StoreError::Locked`] when another process (or another
    /// open [`Store`] of this one) still has `dir` open after a wait of one
    /// second,
    /// and with [`StoreError::SchemaMismatch`] when `dir` was written with
    /// another schema. Finishes a hierarchy replacement that a crash
    /// interrupted (see [`Store::replace_hierarchy`]) before returning.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(options.flush_every_ms);
        // sled's background threads can hold the file lock for a moment after
        // the last handle of a store in this process is dropped, so a reopen
        // right after a close may find it held; a real second owner still
        // holds it when the wait is over.
        let give_up = Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open().map_err(|e| open_error(dir, e)) {
                Err(StoreError::Locked { .. }) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => break other?,
            }
        };
        let inner = Inner {
            dir: dir.to_path_buf(),
            meta: db.open_tree(META)?,
            nodes: db.open_tree(NODES)?,
            der_state: db.open_tree(DER_STATE)?,
            setpoints: db.open_tree(SETPOINTS)?,
            site_ders: db.open_tree(SITE_DERS)?,
            dispatches: db.open_tree(DISPATCHES)?,
            allocations: db.open_tree(ALLOCATIONS)?,
            registry: db.open_tree(REGISTRY)?,
            ledger: db.open_tree(LEDGER)?,
            meter: db.open_tree(METER)?,
            raft_log: db.open_tree(RAFT_LOG)?,
            raft_meta: db.open_tree(RAFT_META)?,
            db,
            hierarchy_lock: RwLock::new(()),
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        store.check_schema()?;
        store.recover_hierarchy()?;
        tracing::debug!(dir = %dir.display(), "store opened");
        Ok(store)
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes everything not yet on disk and fsyncs. When it returns `Ok`,
    /// every write made before the call survives a crash. Returns the number
    /// of bytes written. Blocks; from async code use [`Store::flush_async`].
    pub fn flush(&self) -> Result<usize, StoreError> {
        Ok(self.inner.db.flush()?)
    }

    /// [`Store::flush`] without blocking the caller: the fsync runs on sled's
    /// own thread pool. Needs no particular async runtime.
    pub async fn flush_async(&self) -> Result<usize, StoreError> {
        Ok(self.inner.db.flush_async().await?)
    }

    /// Bytes the database takes on disk (metrics).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let meta = &self.inner.meta;
        match meta.get(SCHEMA_VERSION_KEY)? {
            Some(v) => {
                let found: u32 = decode(META, SCHEMA_VERSION_KEY, &v)?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                meta.insert(
                    SCHEMA_VERSION_KEY,
                    encode("schema version", &SCHEMA_VERSION)?,
                )?;
                meta.flush()?;
            }
        }
        Ok(())
    }
}

/// Now, Unix ms (ledger entries, meter imports); 0 if the clock is before 1970.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// sled reports a held lock as an `Other` I/O error whose text says so
/// (`could not acquire lock on "…/db": …WouldBlock…`).
fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &e {
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock")
        {
            return StoreError::Locked {
                dir: dir.to_path_buf(),
            };
        }
    }
    StoreError::Sled(e)
}

#[cfg(test)]
mod tests;
