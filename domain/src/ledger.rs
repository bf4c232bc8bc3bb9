//! The audit ledger: an append-only chain of entries, each sealed with the
//! SHA-256 hash of its contents and of the entry before it.
//!
//! Every state-changing action (who, what, when, the digests of the state
//! before and after) becomes one [`LedgerEntry`]. Changing, removing,
//! reordering or inserting an entry anywhere breaks the chain at that entry,
//! and [`verify`] names the first one that does not fit.
//!
//! ```text
//!   LedgerDraft (actor, action, subject, before, after, detail)
//!     └─ seal(seq, at_ms, prev) ──► LedgerEntry { …, prev, hash }
//!
//!   entry 1            entry 2            entry 3
//!   prev = 00…00 ◄─┐   prev = hash 1 ◄─┐  prev = hash 2
//!   hash 1 ────────┘   hash 2 ─────────┘  hash 3  ◄── head
//! ```
//!
//! The chain proves that the entries have not been changed *relative to each
//! other*. Whoever can write the data dir could rewrite the whole chain from
//! the altered entry on, so an auditor keeps the head (`seq`, `hash`) of
//! every export: a later ledger is genuine only if its entry `seq` still has
//! that hash.
//!
//! ## Hash encoding (version 1)
//!
//! `hash = SHA-256(preimage)`, where the preimage is the concatenation of the
//! fields below, in this order, with no padding or separators. Integers are
//! unsigned and fixed-width big-endian; a *string* is its UTF-8 byte length
//! as u64 followed by the bytes; an *optional digest* is one byte `0x00`
//! (absent) or `0x01` followed by the 32 digest bytes.
//!
//! | field     | encoding                                    |
//! |-----------|---------------------------------------------|
//! | version   | u8, always `0x01`                           |
//! | `seq`     | u64                                         |
//! | `at_ms`   | u64 (Unix time, milliseconds)               |
//! | `actor`   | string                                      |
//! | `action`  | string                                      |
//! | `subject` | string                                      |
//! | `before`  | optional digest                             |
//! | `after`   | optional digest                             |
//! | `detail`  | string                                      |
//! | `prev`    | 32 bytes (all zero for `seq` 1)             |
//!
//! For example the entry `seq` 1, `at_ms` 1700000000000, actor `ops`, action
//! `account.create`, subject `account/alice`, no before, after =
//! SHA-256(`alice`), detail `{"role":"participant"}`, prev all zero, hashes
//! to `7affb3d78434f4fdb6a1e932cfc7928479755d43a349d5d0fd4d8b13caf7b8d2`
//! (checked by a test). The same in Python, as a reference an auditor can
//! run:
//!
//! ```text
//! import hashlib, struct
//! def s(x): b = x.encode(); return struct.pack('>Q', len(b)) + b
//! def d(x): return b'\x00' if x is None else b'\x01' + x
//! pre = (b'\x01' + struct.pack('>QQ', 1, 1700000000000)
//!        + s('ops') + s('account.create') + s('account/alice')
//!        + d(None) + d(hashlib.sha256(b'alice').digest())
//!        + s('{"role":"participant"}') + bytes(32))
//! print(hashlib.sha256(pre).hexdigest())
//! ```
//!
//! The stored form of an entry ([`LedgerEntry::to_bytes`]) is the preimage
//! followed by the 32 bytes of `hash`: an auditor reading the raw records
//! needs this one description and nothing else (no serde format).
//!
//! In JSON, digests are lowercase hex strings of 64 characters.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The `prev` of entry 1.
pub const ZERO_DIGEST: Digest = [0; 32];

/// The first byte of every preimage and stored entry.
pub const ENCODING_VERSION: u8 = 1;

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Lowercase hex, 64 characters.
pub fn to_hex(d: &Digest) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// Why a string is not a hex digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256 digest (64 hex characters)")]
pub struct BadHex(pub String);

/// Parses 64 hex characters (either case) back into a digest.
pub fn from_hex(s: &str) -> Result<Digest, BadHex> {
    let bad = || BadHex(s.chars().take(80).collect());
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(bad());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut d = ZERO_DIGEST;
    for (i, out) in d.iter_mut().enumerate() {
        let hi = nibble(b[2 * i]).ok_or_else(bad)?;
        let lo = nibble(b[2 * i + 1]).ok_or_else(bad)?;
        *out = hi << 4 | lo;
    }
    Ok(d)
}

/// Serde of a [`Digest`] as a hex string (`#[serde(with = "hex")]`).
pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{from_hex, to_hex, Digest};

    /// Writes the digest as 64 lowercase hex characters.
    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(d))
    }

    /// Reads 64 hex characters.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde of an `Option<Digest>` as a hex string or null
/// (`#[serde(with = "hex_opt")]`).
pub mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{from_hex, to_hex, Digest};

    /// Writes the digest as hex, or none.
    pub fn serialize<S: Serializer>(d: &Option<Digest>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&to_hex(d)),
            None => s.serialize_none(),
        }
    }

    /// Reads hex or none.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Digest>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| from_hex(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// What a caller records; the store gives it its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerDraft {
    /// Who acted: an account id, or `system` for the runtime itself.
    pub actor: String,
    /// What was done, `<kind>.<verb>`, e.g. `event.create`.
    pub action: String,
    /// What it was done to, e.g. `event/ev-1`.
    pub subject: String,
    /// Digest of the state before (none when there was nothing).
    #[serde(with = "hex_opt")]
    pub before: Option<Digest>,
    /// Digest of the state after (none when it was removed).
    #[serde(with = "hex_opt")]
    pub after: Option<Digest>,
    /// Short human text or JSON: enough to read the entry without the records.
    pub detail: String,
}

/// One sealed entry of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the chain: 1 for the first entry, no gaps.
    pub seq: u64,
    /// When it was appended, Unix ms (the appender's clock: not checked for
    /// order, clocks step back).
    pub at_ms: u64,
    /// See [`LedgerDraft::actor`].
    pub actor: String,
    /// See [`LedgerDraft::action`].
    pub action: String,
    /// See [`LedgerDraft::subject`].
    pub subject: String,
    /// See [`LedgerDraft::before`].
    #[serde(with = "hex_opt")]
    pub before: Option<Digest>,
    /// See [`LedgerDraft::after`].
    #[serde(with = "hex_opt")]
    pub after: Option<Digest>,
    /// See [`LedgerDraft::detail`].
    pub detail: String,
    /// `hash` of entry `seq - 1`; all zero for entry 1.
    #[serde(with = "hex")]
    pub prev: Digest,
    /// SHA-256 of the preimage of every other field (module doc).
    #[serde(with = "hex")]
    pub hash: Digest,
}

impl LedgerEntry {
    /// Gives `draft` its place `seq` after the entry whose hash is `prev`,
    /// and hashes it.
    pub fn seal(draft: LedgerDraft, seq: u64, at_ms: u64, prev: Digest) -> LedgerEntry {
        let mut entry = LedgerEntry {
            seq,
            at_ms,
            actor: draft.actor,
            action: draft.action,
            subject: draft.subject,
            before: draft.before,
            after: draft.after,
            detail: draft.detail,
            prev,
            hash: ZERO_DIGEST,
        };
        entry.hash = entry.computed_hash();
        entry
    }

    /// The hash the contents call for (equal to `hash` unless the entry was
    /// changed).
    pub fn computed_hash(&self) -> Digest {
        digest(&self.preimage())
    }

    /// The bytes that are hashed (module doc).
    pub fn preimage(&self) -> Vec<u8> {
        let strings = self.actor.len() + self.action.len() + self.subject.len() + self.detail.len();
        let mut out = Vec::with_capacity(1 + 16 + 4 * 8 + strings + 2 * 33 + 32 + 32);
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        put_str(&mut out, &self.actor);
        put_str(&mut out, &self.action);
        put_str(&mut out, &self.subject);
        put_digest(&mut out, self.before.as_ref());
        put_digest(&mut out, self.after.as_ref());
        put_str(&mut out, &self.detail);
        out.extend_from_slice(&self.prev);
        out
    }

    /// The stored form: the preimage, then `hash`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.preimage();
        out.extend_from_slice(&self.hash);
        out
    }

    /// Reads the stored form back. Checks the layout only, not the hash:
    /// that is [`verify`]'s job, which must see a changed entry to name it.
    pub fn from_bytes(bytes: &[u8]) -> Result<LedgerEntry, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.take(1, "version")?[0];
        if version != ENCODING_VERSION {
            return Err(DecodeError(format!(
                "encoding version {version}, this build reads version {ENCODING_VERSION}"
            )));
        }
        let entry = LedgerEntry {
            seq: r.u64("seq")?,
            at_ms: r.u64("at_ms")?,
            actor: r.string("actor")?,
            action: r.string("action")?,
            subject: r.string("subject")?,
            before: r.opt_digest("before")?,
            after: r.opt_digest("after")?,
            detail: r.string("detail")?,
            prev: r.digest("prev")?,
            hash: r.digest("hash")?,
        };
        if r.at != bytes.len() {
            return Err(DecodeError(format!(
                "{} bytes after the hash",
                bytes.len() - r.at
            )));
        }
        Ok(entry)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_digest(out: &mut Vec<u8>, d: Option<&Digest>) {
    match d {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            out.extend_from_slice(d);
        }
    }
}

/// Why stored bytes are not a ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(DecodeError(format!(
                "truncated in {field} ({} bytes left, {n} needed)",
                self.bytes.len() - self.at
            )));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        let len = self.u64(field)?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError(format!("{field}: length {len} is too large")))?;
        let b = self.take(len, field)?;
        String::from_utf8(b.to_vec()).map_err(|e| DecodeError(format!("{field}: {e}")))
    }

    fn digest(&mut self, field: &str) -> Result<Digest, DecodeError> {
        Ok(self.take(32, field)?.try_into().expect("32 bytes"))
    }

    fn opt_digest(&mut self, field: &str) -> Result<Option<Digest>, DecodeError> {
        match self.take(1, field)?[0] {
            0 => Ok(None),
            1 => self.digest(field).map(Some),
            t => Err(DecodeError(format!(
                "{field}: presence byte {t}, expected 0 or 1"
            ))),
        }
    }
}

/// Which check an entry failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Not the entry expected at this place: one is missing, duplicated or
    /// moved.
    Sequence,
    /// The stored hash is not the hash of the contents: a field or the hash
    /// was changed.
    Hash,
    /// `prev` is not the hash of the entry before: this entry or the one
    /// before was replaced by one sealed elsewhere.
    Link,
    /// The stored record cannot be read at all.
    Decode,
    /// The store's head record does not name the last entry: entries at the
    /// end were removed or added behind the store's back.
    Head,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::Sequence => "sequence",
            Check::Hash => "hash",
            Check::Link => "link",
            Check::Decode => "decode",
            Check::Head => "head",
        })
    }
}

/// The first entry that does not fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadEntry {
    /// Its place in the chain (for a missing entry: the one missing).
    pub seq: u64,
    /// Which check failed.
    pub check: Check,
    /// What is wrong, for people.
    pub reason: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// How many entries were read (all of them, also those after a bad one).
    pub entries: u64,
    /// The hash stored in the last entry that could be read; none for an
    /// empty ledger.
    #[serde(with = "hex_opt")]
    pub head: Option<Digest>,
    /// The first entry that failed a check; none when the chain is whole.
    pub first_bad: Option<BadEntry>,
}

impl VerifyReport {
    /// Whether every entry passed.
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Checks a ledger from entry 1 on: sequence numbers 1, 2, 3… without gaps,
/// each entry's hash against its contents, and each `prev` against the hash
/// of the entry before.
pub fn verify<I: IntoIterator<Item = LedgerEntry>>(entries: I) -> VerifyReport {
    let mut v = ChainVerifier::new();
    for e in entries {
        v.push(&e);
    }
    v.finish()
}

/// [`verify`] one entry at a time, for callers that read entries from
/// somewhere that can also hand them records it cannot decode.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    prev: Digest,
    report: VerifyReport,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// A verifier expecting entry 1.
    pub fn new() -> ChainVerifier {
        ChainVerifier {
            next_seq: 1,
            prev: ZERO_DIGEST,
            report: VerifyReport {
                entries: 0,
                head: None,
                first_bad: None,
            },
        }
    }

    /// The seq the next entry should have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Checks the next entry.
    pub fn push(&mut self, e: &LedgerEntry) {
        let want = self.next_seq;
        if e.seq != want {
            let reason = if e.seq > want {
                format!("entry {want} is missing: the next entry found is {}", e.seq)
            } else {
                format!(
                    "entry {} found where entry {want} was expected (duplicated or moved)",
                    e.seq
                )
            };
            self.bad(want, Check::Sequence, reason);
        } else if e.computed_hash() != e.hash {
            self.bad(
                want,
                Check::Hash,
                "its stored hash is not the hash of its contents: a field or the hash was changed"
                    .into(),
            );
        } else if e.prev != self.prev {
            let reason = if want == 1 {
                "entry 1 must have an all-zero prev".to_string()
            } else {
                format!(
                    "its prev is not the hash of entry {}: one of the two was replaced",
                    want - 1
                )
            };
            self.bad(want, Check::Link, reason);
        }
        self.advance(Some(e.hash));
    }

    /// Counts a record at the next place that could not be read.
    pub fn push_undecodable(&mut self, reason: String) {
        self.bad(self.next_seq, Check::Decode, reason);
        self.advance(None);
    }

    /// Records a failure found outside the entries themselves (a stored
    /// record at the wrong key, a head record that disagrees); only the
    /// first failure is kept.
    pub fn bad(&mut self, seq: u64, check: Check, reason: String) {
        if self.report.first_bad.is_none() {
            self.report.first_bad = Some(BadEntry { seq, check, reason });
        }
    }

    fn advance(&mut self, hash: Option<Digest>) {
        self.report.entries += 1;
        self.next_seq += 1;
        if let Some(h) = hash {
            self.report.head = Some(h);
        }
        self.prev = hash.unwrap_or(ZERO_DIGEST);
    }

    /// The report so far.
    pub fn report(&self) -> &VerifyReport {
        &self.report
    }

    /// The report.
    pub fn finish(self) -> VerifyReport {
        self.report
    }
}

#[cfg(test)]
mod tests;
