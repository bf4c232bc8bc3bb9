//! # vpp-domain: the pure core of the VPP runtime
//!
//! Plain types and plain functions, no async runtime, no I/O. Everything that is
//! *math* about a virtual power plant lives here so it can be tested (and
//! property-tested) without actors or a store:
//!
//! ```text
//!   hierarchy file ──parse──► Hierarchy ──validate──► tree of specs
//!                                                        │
//!   DerRating + DerState ──der_envelope──► FlexEnvelope  │  (flex.rs: roll-up math)
//!   FlexEnvelope + FlexEnvelope ──add──► FlexEnvelope ◄──┘
//!
//!   DispatchOrder ──split(strategy, candidates)──► per-child watts + shortfall
//!                                                   (split.rs: dispatch split)
//! ```
//!
//! Units: every internal quantity is an integer: watts (W), watt-hours (Wh),
//! W/min, micro-currency per kWh. Integer sums are exact and independent of
//! the order in which children report, which is what lets a parent keep a
//! running total (subtract a child's old envelope, add its new one) without
//! drift. Files and the HTTP API speak kW/kWh; conversion happens at the
//! boundary with [`units`].

#![deny(missing_docs, unreachable_pub, unsafe_code)]

pub mod account;
pub mod der;
pub mod dispatch;
pub mod flex;
pub mod generate;
pub mod hierarchy;
pub mod hierarchy_file;
pub mod id;
pub mod ledger;
pub mod meter;
pub mod mv;
pub mod program;
pub mod settlement;
pub mod site;
pub mod split;
pub mod units;

pub use der::{DerKind, DerRating, DerState};
pub use dispatch::{
    AllocationSummary, Direction, DispatchOrder, DispatchRecord, DispatchStatus, NodeAllocation,
    Refusal, Setpoint, Strategy,
};
pub use flex::{DerFlex, FlexEnvelope, KindFlex, Response};
pub use hierarchy::{
    DerSpec, Hierarchy, HierarchyError, NodeKind, NodeSpec, SiteSpec, Topology, VirtualDerSpec,
};
pub use id::{AccountId, DispatchId, EnrollmentId, EventId, IdError, NodeId, ProgramId};
pub use site::{Location, Segment};
