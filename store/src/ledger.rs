//! The audit ledger in the `ledger` tree: entries sealed by
//! [`vpp_domain::ledger`], appended in sled transactions, verified offline.
//!
//! ```text
//!   Store::append_ledger(draft)           registry / meter commits
//!     └─ transaction on `ledger`            └─ transaction on (their tree, `ledger`)
//!          └──────────── append_tx(ledger, draft, at_ms) ────────────┘
//!               read head `h` ─► (seq, hash) of the last entry
//!               seal entry seq + 1 with prev = hash
//!               write `e` ‖ seq + 1  and  `h` ─► (seq + 1, new hash)
//! ```
//!
//! | key                    | value                                            |
//! |------------------------|--------------------------------------------------|
//! | `e` ‖ seq (u64 BE)     | the entry's stored form, [`LedgerEntry::to_bytes`] (its own documented encoding, not postcard) |
//! | `h`                    | `0x01` ‖ seq (u64 BE) ‖ hash (32 bytes) of the last entry |
//!
//! Every append reads and writes `h` inside its transaction, so concurrent
//! appenders conflict on it and sled retries the losers: sequence numbers
//! have no gaps and no two entries share one. The head record spares an
//! append a scan, and lets [`Store::verify_ledger`] notice entries removed
//! from (or added to) the end of the chain. An append refuses to overwrite
//! an existing entry if the head record is missing or behind.
//!
//! Entries are stored in their hash encoding (not postcard) so that an
//! auditor can read the raw sled values with nothing but the description in
//! [`vpp_domain::ledger`].

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use vpp_domain::ledger::{
    ChainVerifier, Check, Digest, LedgerDraft, LedgerEntry, VerifyReport, ZERO_DIGEST,
};

use crate::codec::corrupt;
use crate::error::StoreError;
use crate::keys::{ledger_entry_key, ledger_entry_seq, LEDGER_END_KEY, LEDGER_HEAD_KEY};
use crate::raft::APPLIED_KEY;
use crate::store::{now_ms, Store, LEDGER};

/// First byte of the head record.
const HEAD_VERSION: u8 = 1;

/// Appends `draft` inside a caller's sled transaction (the caller writes its
/// own records and the entry atomically). Not flushed: the caller flushes
/// after the transaction commits.
pub(crate) fn append_tx(
    ledger: &TransactionalTree,
    draft: LedgerDraft,
    at_ms: u64,
) -> Result<LedgerEntry, ConflictableTransactionError<StoreError>> {
    let abort = ConflictableTransactionError::Abort;
    let (seq, prev) = match ledger.get(LEDGER_HEAD_KEY)? {
        Some(v) => decode_head(&v).map_err(abort)?,
        None => (0, ZERO_DIGEST),
    };
    let next = seq + 1;
    let key = ledger_entry_key(next);
    if ledger.get(key)?.is_some() {
        return Err(abort(corrupt(
            LEDGER,
            b"h",
            format!(
                "the head record names entry {seq} as the last, but entry {next} exists; \
                 refusing to overwrite it (run `vpp audit verify`)"
            ),
        )));
    }
    let entry = LedgerEntry::seal(draft, next, at_ms, prev);
    ledger.insert(&key[..], entry.to_bytes())?;
    ledger.insert(LEDGER_HEAD_KEY, encode_head(next, &entry.hash))?;
    Ok(entry)
}

fn encode_head(seq: u64, hash: &Digest) -> Vec<u8> {
    let mut v = Vec::with_capacity(41);
    v.push(HEAD_VERSION);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(hash);
    v
}

fn decode_head(v: &[u8]) -> Result<(u64, Digest), StoreError> {
    match v {
        [HEAD_VERSION, rest @ ..] if rest.len() == 40 => {
            let seq = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            Ok((seq, rest[8..].try_into().expect("32 bytes")))
        }
        _ => Err(corrupt(
            LEDGER,
            LEDGER_HEAD_KEY,
            format!(
                "head record of {} bytes, expected {HEAD_VERSION} and 40 bytes",
                v.len()
            ),
        )),
    }
}

/// The name of an entry's key in errors (the raw key is not text).
fn entry_name(seq: u64) -> String {
    format!("entry {seq}")
}

impl Store {
    /// Appends one entry on its own and flushes: durable when it returns
    /// `Ok`, with every entry before it. Stamped with the current time.
    /// Blocks (fsync): from async code call it in `spawn_blocking`.
    pub fn append_ledger(&self, draft: LedgerDraft) -> Result<LedgerEntry, StoreError> {
        let entry = self.append_ledger_at(draft, now_ms(), None)?;
        self.inner.db.flush()?;
        Ok(entry)
    }

    /// [`Store::append_ledger`] stamped `at_ms`, writing `mark` (a replicated
    /// command's position, `raft.rs`) in the same transaction. Not flushed.
    pub(crate) fn append_ledger_at(
        &self,
        draft: LedgerDraft,
        at_ms: u64,
        mark: Option<&[u8]>,
    ) -> Result<LedgerEntry, StoreError> {
        [&self.inner.ledger, &self.inner.raft_meta]
            .transaction(|t| {
                let entry = append_tx(&t[0], draft.clone(), at_ms)?;
                if let Some(m) = mark {
                    t[1].insert(APPLIED_KEY, m)?;
                }
                Ok(entry)
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }

    /// At most `limit` entries from `from_seq` on (1 is the first), in order.
    /// A record that cannot be read, or that is stored under another entry's
    /// key, is [`StoreError::Corrupt`]; the hashes are not checked here (that
    /// is [`Store::verify_ledger`]).
    pub fn ledger_entries(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let start = ledger_entry_key(from_seq.max(1));
        let mut out = Vec::new();
        for kv in self
            .inner
            .ledger
            .range(&start[..]..LEDGER_END_KEY)
            .take(limit)
        {
            let (key, value) = kv?;
            let seq = ledger_entry_seq(&key)
                .ok_or_else(|| corrupt(LEDGER, &key, "not a ledger entry key".into()))?;
            let name = entry_name(seq);
            let entry = LedgerEntry::from_bytes(&value)
                .map_err(|e| corrupt(LEDGER, name.as_bytes(), e.to_string()))?;
            if entry.seq != seq {
                return Err(corrupt(
                    LEDGER,
                    name.as_bytes(),
                    format!("holds entry {}", entry.seq),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Sequence number and hash of the last entry; none while the ledger is
    /// empty.
    pub fn ledger_head(&self) -> Result<Option<(u64, Digest)>, StoreError> {
        self.inner
            .ledger
            .get(LEDGER_HEAD_KEY)?
            .map(|v| decode_head(&v))
            .transpose()
    }

    /// Recomputes the whole chain, in key order, and checks the head record
    /// against its end. Damage is the report's `first_bad`, not an error: a
    /// record that cannot even be decoded, one stored under another entry's
    /// key, a missing, changed or moved entry. `Err` is for failures to read
    /// the database at all.
    pub fn verify_ledger(&self) -> Result<VerifyReport, StoreError> {
        let mut v = ChainVerifier::new();
        for kv in self.inner.ledger.iter() {
            let (key, value) = kv?;
            if key == LEDGER_HEAD_KEY {
                continue;
            }
            let Some(seq) = ledger_entry_seq(&key) else {
                let reason = format!("a record under a key that is not a ledger key: {key:?}");
                v.bad(v.next_seq(), Check::Decode, reason);
                continue;
            };
            match LedgerEntry::from_bytes(&value) {
                Ok(entry) => {
                    if entry.seq != seq {
                        v.bad(
                            seq.min(v.next_seq()),
                            Check::Sequence,
                            format!(
                                "the record stored as entry {seq} is entry {} (entries moved or swapped)",
                                entry.seq
                            ),
                        );
                    }
                    v.push(&entry);
                }
                Err(e) => v.push_undecodable(format!(
                    "the record stored as entry {seq} cannot be read: {e}"
                )),
            }
        }
        let last = v.next_seq() - 1;
        let last_hash = v.report().head;
        match self.inner.ledger.get(LEDGER_HEAD_KEY)? {
            None if last > 0 => v.bad(
                last,
                Check::Head,
                format!("the head record is missing, the ledger has {last} entries"),
            ),
            None => {}
            Some(raw) => match decode_head(&raw) {
                Err(e) => v.bad(last.max(1), Check::Head, e.to_string()),
                Ok((seq, _)) if seq > last => v.bad(
                    last + 1,
                    Check::Head,
                    format!(
                        "entry {} is missing: the head record names entry {seq} as the last, \
                         but the ledger ends at {last} (entries removed from the end)",
                        last + 1
                    ),
                ),
                Ok((seq, _)) if seq < last => v.bad(
                    seq + 1,
                    Check::Head,
                    format!(
                        "entry {} comes after the last one the head record names ({seq}): \
                         written outside the store",
                        seq + 1
                    ),
                ),
                Ok((seq, hash)) if Some(hash) != last_hash => v.bad(
                    seq,
                    Check::Head,
                    format!(
                        "entry {seq} is not the entry the head record names (its hash differs): \
                         replaced"
                    ),
                ),
                Ok(_) => {}
            },
        }
        Ok(v.finish())
    }
}

#[cfg(test)]
mod tests;
