//! The one error type of the store boundary.

use std::path::PathBuf;

/// Everything that can go wrong between the runtime and its data dir.
///
/// Bad bytes on disk are reported as [`StoreError::Corrupt`], naming the tree
/// and key, so an operator can tell *what* is damaged; the store never panics
/// on what it reads.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the data dir open (sled holds an exclusive file
    /// lock on it for as long as the store is open).
    #[error(
        "data dir {} is in use by another vpp process (stop it, or talk to it with --node URL)",
        dir.display()
    )]
    Locked {
        /// The data dir.
        dir: PathBuf,
    },
    /// The data dir could not be created or read.
    #[error("data dir {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// sled reported an error (I/O inside the database, corruption of its own
    /// log, …).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A record that cannot be decoded: wrong format version, garbage, a key
    /// that is not a valid id, or a key that does not match its value.
    #[error("corrupt record in tree {tree}, key {key:?}: {reason}")]
    Corrupt {
        /// The sled tree.
        tree: &'static str,
        /// The key, as lossy UTF-8.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data dir was written by a build with another schema.
    #[error(
        "data dir has schema version {found}, this build reads version {expected}; \
         use a matching build or start from an empty data dir"
    )]
    SchemaMismatch {
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },
    /// A value could not be encoded (a bug: every stored type encodes).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// What postcard said.
        reason: String,
    },
    /// The write-behind thread could not be started.
    #[error("cannot start the write-behind thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The write-behind thread has stopped, so a flush request cannot be
    /// served; writes queued since its last flush may be lost.
    #[error("the write-behind thread has stopped; writes queued since its last flush may be lost")]
    WriteBehindStopped,
}
