//! # vpp-actors: the live hierarchy
//!
//! Every node of the hierarchy is an actor. Virtual DERs and sites are
//! [ractor] actors; each site hosts the DER actors of its DERs (see
//! `der.rs` for why). The tree of actors mirrors the hierarchy and is also
//! the supervision tree:
//!
//! ```text
//!   FleetSupervisor
//!    └─ VirtualDerActor "vpp"            (root: the whole fleet)
//!        ├─ VirtualDerActor "north"      (any depth of virtual DERs)
//!        │   └─ SiteActor "site-001"     hosts and supervises:
//!        │        [DerActor "site-001-bat", DerActor "site-001-pv"]
//!        └─ SiteActor "site-002" …
//! ```
//!
//! Two flows run through it:
//!
//! - **Roll-up** (up): a DER actor recomputes its [`FlexEnvelope`] when its
//!   state changes; its site folds it into a running sum (`sum - old + new`,
//!   exact integer math from `vpp_domain::flex`) and reports upward after
//!   each message it handles. Virtual DERs report at most once per
//!   `rollup_interval` (one interval after the first change of a window), so
//!   a burst of a million leaf changes becomes one message per site and one
//!   per virtual DER per interval above.
//! - **Dispatch** (down, calls): an order sent to any aggregate is split with
//!   its strategy (`vpp_domain::split`) among its children's *uncommitted*
//!   capacity; each child answers with what it accepted. Shortfalls from
//!   refusing, failing or silent children are re-split among the others
//!   (closed loop) until placed or no room is left. Every aggregate records a
//!   `NodeAllocation`; every DER ends with a `Setpoint`.
//!
//! Persistence is write-behind through a [`Journal`]: actors never wait on disk.
//! What must be durable before a caller is told "yes" (imported hierarchy,
//! accepted order) is written by the runtime before it calls into the fleet.
//!
//! [`FlexEnvelope`]: vpp_domain::FlexEnvelope

#![deny(missing_docs, unreachable_pub, unsafe_code)]

mod aggregate;
mod build;
mod config;
mod der;
mod devices;
mod fleet;
mod journal;
mod messages;
mod metrics;
mod remote;

pub use config::FleetConfig;
pub use devices::{DeviceLink, NoDevices};
pub use fleet::{Fleet, FleetError};
pub use journal::{Journal, NullJournal};
pub use messages::{
    AckState, ChildView, DerAddr, DeviceInput, DeviceView, DispatchOutcome, NodeView, StateRejected,
};
pub use metrics::Metrics;
pub use remote::{RemoteCall, RemoteCast, RemoteLink, RemoteReply};

/// Now, Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
