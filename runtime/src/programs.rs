//! Demand-flexibility programs on a node: accounts and tokens, programs and
//! discovery, enrollments, events with notification and confirmation,
//! M&V and settlement, with multi-party approval of critical actions.
//!
//! ```text
//!   API handler ──(Caller: authenticated Account)──► programs::<action>(node, caller, request)
//!      1. authorise: role, verification, jurisdiction, ownership  → 403 with the reason
//!      2. validate against the records and the hierarchy          → 400 listing problems
//!      3. Store::registry_commit(changes, ledger draft)           → durable + audited together
//!      4. side effects after the commit: notices (MQTT + SSE), dispatch orders
//!
//!   lifecycle task (every programs.tick_ms):
//!      notified ──start──► active: dispatch each confirmed commitment to its resource
//!      active ──end──► completed
//! ```
//!
//! Every mutation runs under one async lock ([`Programs::lock`]): records are
//! read, checked and rewritten as a whole, and the lock keeps two callers
//! from both reading the same old version. Mutations are rare (people and
//! utilities, not devices), so one lock costs nothing that matters.
//!
//! Where the rules live: the pure checks are in `vpp_domain::account` and
//! `vpp_domain::program`, baselines in `vpp_domain::mv`, money in
//! `vpp_domain::settlement`, the ledger in `vpp_domain::ledger`.

pub mod accounts;
pub mod catalog;
pub mod enrollments;
pub mod events;
pub mod settle;

use std::sync::OnceLock;

use serde::Serialize;
use tokio::sync::{broadcast, Mutex};
use vpp_domain::account::Account;
use vpp_domain::ledger::{LedgerDraft, LedgerEntry};
use vpp_store::{Change, StoreError};

pub use accounts::{
    authenticate as accounts_auth, bootstrap_operator, AccountRequest, TokenIssued, TokenRequest,
    OPERATOR_TOKEN_FILE,
};
pub use catalog::{ProgramRequest, SearchRequest, TermsRequest};
pub use enrollments::EnrollRequest;
pub use events::{run_lifecycle, ConfirmRequest, EventRequest, Notice};
pub use settle::{ParticipantPerformance, SettlementRecord, SettlementStatus};

use crate::node::NodeError;

/// Why a program action failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// No valid credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Signed in but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such record (404).
    #[error("{0}")]
    NotFound(String),
    /// The request breaks a rule (400); every problem listed.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The record exists or is in the wrong state (409).
    #[error("{0}")]
    Conflict(String),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProgramError {
    /// A 400 with one problem.
    pub fn invalid(p: impl Into<String>) -> Self {
        ProgramError::Invalid(vec![p.into()])
    }
}

/// Result of a program action.
pub type Result<T, E = ProgramError> = std::result::Result<T, E>;

/// Publishes `(topic, payload)` on the MQTT broker (QoS 1, retained).
pub type NotifyFn = dyn Fn(String, Vec<u8>) + Send + Sync;

/// Program state shared by the handlers and the lifecycle task.
pub struct Programs {
    /// Serialises every mutation (see the module doc).
    pub(crate) lock: Mutex<()>,
    /// Distinct approvers a critical action needs (`auth.quorum`).
    pub(crate) quorum: u32,
    /// Live notices for `GET /api/v1/notices/stream`.
    pub(crate) notices: broadcast::Sender<Notice>,
    /// Where notices go over MQTT, once the node has a broker.
    pub(crate) mqtt: OnceLock<Box<NotifyFn>>,
}

impl Programs {
    /// A fresh service needing `quorum` approvers for critical actions.
    pub fn new(quorum: u32) -> Programs {
        Programs {
            lock: Mutex::new(()),
            quorum: quorum.max(1),
            notices: broadcast::channel(4096).0,
            mqtt: OnceLock::new(),
        }
    }

    /// Sends notices over MQTT from now on (set once, by `serve`).
    pub fn set_mqtt(&self, publish: Box<NotifyFn>) {
        let _ = self.mqtt.set(publish);
    }

    /// Live notices (the SSE stream subscribes here).
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}

/// Commits changes and their ledger entry (replicated in a cluster).
pub(crate) async fn commit(
    node: &crate::node::Node,
    changes: Vec<Change>,
    draft: LedgerDraft,
) -> Result<LedgerEntry> {
    let cmd = vpp_store::Command::RegistryCommit {
        changes,
        draft,
        at_ms: now_ms(),
    };
    Ok(node
        .writes()
        .write_ledger(cmd)
        .await
        .map_err(NodeError::from)?)
}

/// A ledger draft by `actor` (digests are filled in by the store).
pub(crate) fn draft(actor: &Account, action: &str, subject: String, detail: String) -> LedgerDraft {
    LedgerDraft {
        actor: actor.id.to_string(),
        action: action.to_string(),
        subject,
        before: None,
        after: None,
        detail,
    }
}

/// A ledger draft by the runtime itself (lifecycle steps).
pub(crate) fn system_draft(action: &str, subject: String, detail: String) -> LedgerDraft {
    LedgerDraft {
        actor: "system".to_string(),
        action: action.to_string(),
        subject,
        before: None,
        after: None,
        detail,
    }
}

/// A record put, as a [`Change`].
pub(crate) fn put<T: Serialize>(key: String, value: &T) -> Result<Change> {
    Ok(Change::put(key, value)?)
}

/// Registry keys, one place.
pub(crate) mod keys {
    use std::fmt::Display;

    /// `account/<id>`
    pub(crate) fn account(id: impl Display) -> String {
        format!("account/{id}")
    }
    /// `token/<id>`
    pub(crate) fn token(id: impl Display) -> String {
        format!("token/{id}")
    }
    /// `program/<id>`
    pub(crate) fn program(id: impl Display) -> String {
        format!("program/{id}")
    }
    /// `enrollment/<id>`
    pub(crate) fn enrollment(id: impl Display) -> String {
        format!("enrollment/{id}")
    }
    /// `event/<id>`
    pub(crate) fn event(id: impl Display) -> String {
        format!("event/{id}")
    }
    /// `settlement/<event>/<enrollment>`
    pub(crate) fn settlement(event: impl Display, enrollment: impl Display) -> String {
        format!("settlement/{event}/{enrollment}")
    }
}

/// Now, Unix ms.
pub(crate) fn now_ms() -> u64 {
    vpp_actors::now_ms()
}
