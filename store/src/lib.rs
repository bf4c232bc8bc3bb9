//! # vpp-store: persistence of the VPP runtime in sled
//!
//! One sled database per data dir holds everything the runtime must find
//! again after a restart: the hierarchy, the last known state and active
//! setpoints of every DER, and the dispatch journal.
//!
//! ```text
//!   actors / API
//!     │ replace_hierarchy ─────────────────► nodes  (whole generations)
//!     │                                      meta   (schema version, pointer
//!     │                                              to current generation)
//!     │ put_dispatch_durable ──────────────► dispatches
//!     │ put_site_ders (what the runtime uses:
//!     │   one record per site) ────────────► site_ders
//!     │ put_der_states / put_setpoints /
//!     │ put_allocations ───────────────────► der_state / setpoints / allocations
//!     │ put_meter (telemetry intervals) ───► meter
//!     │ import_meter (CSV, with its audit
//!     │   ledger entry) ───────────────────► meter + ledger
//!     │ WriteBehindHandle::queue_* ──► [write-behind thread: latest per key]
//!     │                                   └── batches every 200 ms ──┘
//!     ▼
//!   Store (Clone, Send + Sync) ── sled::Db ── data dir (exclusive file lock)
//!                                     └── background flush every 500 ms
//! ```
//!
//! | tree          | key                             | value                   |
//! |---------------|---------------------------------|-------------------------|
//! | `meta`        | name                            | schema version, pointer |
//! | `nodes`       | generation ‖ record number      | `Vec<NodeSpec>` (≤ 256) |
//! | `der_state`   | DER id                          | `DerState`              |
//! | `setpoints`   | DER id                          | `Vec<Setpoint>`         |
//! | `site_ders`   | site id                         | `Vec<DerRecord>`        |
//! | `dispatches`  | dispatch id                     | `DispatchRecord`        |
//! | `allocations` | dispatch id ‖ 0x00 ‖ node id    | `NodeAllocation`        |
//! | `ledger`      | `e` ‖ seq (u64 BE); `h` (head)  | entry / (seq, hash)     |
//! | `meter`       | site id ‖ 0x00 ‖ start ms (BE)  | avg W, i64 BE (8 bytes) |
//!
//! Values are postcard behind a format-version byte (`codec.rs`), except
//! meter readings: one fixed 8-byte number each (`meter.rs` says why). Why the
//! hierarchy is stored as whole generations behind a pointer, in records of
//! 256 nodes, rather than in one sled transaction is explained in
//! `hierarchy.rs`: a transaction over 1M nodes took 50 s and 5.4 GB of RSS.
//! Audit-ledger entries are stored in the hash encoding documented in
//! [`vpp_domain::ledger`], not postcard, so an auditor can read the raw
//! records with that description alone (`ledger.rs`).
//!
//! ## Durability promises
//!
//! "Durable" means: survives the process being killed, or the machine losing
//! power, at any instant, provided the disk honours fsync. (The kill tests
//! exercise the first half; the second rests on sled calling fsync when it
//! flushes.)
//!
//! 1. **Hierarchy.** When [`Store::replace_hierarchy`] returns `Ok`, the new
//!    hierarchy is durable. A crash at any moment leaves either the old
//!    hierarchy or the new one, whole, never a mix; and once the store is
//!    open again there is no DER state or setpoint list of a node that the
//!    hierarchy does not contain (unless written after the replacement).
//! 2. **Accepted orders.** When [`Store::put_dispatch_durable`] returns `Ok`,
//!    the record is durable.
//! 3. **Flush.** When [`Store::flush`] or [`Store::flush_async`] returns `Ok`,
//!    every write that returned before the call is durable.
//! 4. **Everything else** ([`Store::put_site_ders`], [`Store::put_der_states`],
//!    [`Store::put_setpoints`], [`Store::put_allocations`],
//!    [`Store::put_dispatch`], [`Store::put_meter`]) is visible to
//!    readers at once and durable within [`StoreOptions::flush_every_ms`]
//!    (500 ms by default); a crash loses at most that window. One call is one
//!    atomic batch: after a crash you find all of it or none of it.
//! 5. **Write-behind.** A record queued on a [`WriteBehindHandle`] reaches
//!    sled within [`WriteBehindOptions::interval`] (200 ms), so it is durable
//!    within that plus `flush_every_ms`. When a flush request
//!    ([`WriteBehindHandle::flush_then`] / [`WriteBehindHandle::flush_blocking`])
//!    reports `Ok`, every record queued before the request is durable.
//!    [`WriteBehind::shutdown`] and dropping the [`WriteBehind`] write and
//!    flush everything queued before them.
//! 6. **Clean close.** Dropping the last clone of a [`Store`] flushes it.
//! 7. **One owner.** While a process has a data dir open, opening it again
//!    (from another process or the same one) fails with
//!    [`StoreError::Locked`] after waiting up to a second for the lock;
//!    nothing is written.
//! 8. **Damage is reported, not hidden.** A record that cannot be decoded is
//!    an error ([`StoreError::Corrupt`], naming tree and key), never a panic
//!    and never silently skipped; a data dir of another schema version is
//!    refused at open ([`StoreError::SchemaMismatch`]).
//! 9. **Meter imports.** When [`Store::import_meter`] returns `Ok`, its
//!    readings and its audit-ledger entry are durable together. A crash at
//!    any moment leaves all of an import (readings and entry) or none of it;
//!    an import that fails leaves nothing.
//! 10. **Audit ledger.** When [`Store::append_ledger`] returns `Ok`, the
//!     entry is durable, and so is every entry before it. An entry is written
//!     with the head record in one transaction, so a crash never leaves a
//!     gap or a half-written chain; concurrent appends get consecutive
//!     sequence numbers. Tested by a kill test (`tests/kill.rs`) and by
//!     threads appending at once (`ledger/tests.rs`).
//!
//! Each promise has a test: 1, 2, 5 and 9 kill a child process mid-write
//! with SIGKILL and reopen (`tests/kill.rs`); 3, 4 and 6 are checked against
//! an in-memory model with random operations and reboots (`tests/model.rs`);
//! 7 across processes (`tests/kill.rs`) and within one (`store/tests.rs`);
//! 8 in `codec/tests.rs` and `store/tests.rs`.

#![deny(missing_docs, unreachable_pub, unsafe_code)]

mod codec;
mod der_state;
mod error;
mod hierarchy;
mod journal;
mod keys;
mod ledger;
mod meter;
mod raft;
mod registry;
mod site_ders;
mod store;
#[cfg(test)]
mod test_support;
mod write_behind;

pub use error::StoreError;
pub use meter::MAX_IMPORT_READINGS;
pub use raft::{Applied, Command};
pub use registry::Change;
pub use site_ders::DerRecord;
pub use store::{Store, StoreOptions, SCHEMA_VERSION};
pub use vpp_domain::ledger::{LedgerDraft, LedgerEntry, VerifyReport};
pub use write_behind::{WriteBehind, WriteBehindHandle, WriteBehindOptions, WriteBehindStats};
