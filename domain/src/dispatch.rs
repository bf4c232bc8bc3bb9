//! Dispatch orders, what each node did with one, and device setpoints.
//!
//! An order is sent to any node; the node splits it among its children with
//! its [`Strategy`] (see [`crate::split`]), recursively, until every DER holds a
//! [`Setpoint`]. Every node records a [`NodeAllocation`]: what it was asked,
//! what it gave each child, who refused and what could not be placed.

use serde::{Deserialize, Serialize};

use crate::id::{DispatchId, NodeId};

/// Which way power should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Less import / more export (shed load, discharge, generate).
    Up,
    /// More import / less export (soak up surplus, charge, curtail PV).
    Down,
}

/// How an aggregate divides an order among its children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In proportion to each child's available capacity.
    #[default]
    ProRata,
    /// Cheapest child first, each filled before the next is used.
    MeritOrder,
    /// Least recently dispatched child first, each filled before the next.
    FairRotation,
}

impl Strategy {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::ProRata => "pro_rata",
            Strategy::MeritOrder => "merit_order",
            Strategy::FairRotation => "fair_rotation",
        }
    }
}

/// Longest order accepted: one week.
pub const MAX_DURATION_S: u64 = 7 * 24 * 3600;

/// A request to move power at a node of the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchOrder {
    /// Unique id; creating the same id twice is idempotent.
    pub id: DispatchId,
    /// The node the order was sent to.
    pub target: NodeId,
    /// Which way.
    pub direction: Direction,
    /// How much, W.
    pub power_w: u64,
    /// When to start, Unix ms.
    pub start_ms: u64,
    /// How long, s.
    pub duration_s: u64,
    /// Ramp limit for the whole order, W/min (`None` = as fast as devices can).
    pub ramp_w_per_min: Option<u64>,
    /// When the runtime accepted it, Unix ms.
    pub created_ms: u64,
}

impl DispatchOrder {
    /// When the order ends, Unix ms.
    pub fn end_ms(&self) -> u64 {
        self.start_ms
            .saturating_add(self.duration_s.saturating_mul(1000))
    }

    /// Checks the figures of the order (the target is checked by whoever knows
    /// the hierarchy).
    pub fn validate(&self) -> Result<(), String> {
        if self.power_w == 0 {
            return Err("power_kw must be above zero".into());
        }
        if self.duration_s == 0 || self.duration_s > MAX_DURATION_S {
            return Err(format!(
                "duration_s must be between 1 and {MAX_DURATION_S} (one week)"
            ));
        }
        if self.ramp_w_per_min == Some(0) {
            return Err("ramp_kw_per_min must be above zero when given".into());
        }
        Ok(())
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchStatus {
    /// Stored durably; the split is under way.
    Accepted,
    /// Split down to every DER; setpoints are held.
    Allocated,
    /// Cancelled by a caller; setpoints are withdrawn.
    Cancelled,
}

/// Why a child did not take (all of) its share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The child.
    pub child: NodeId,
    /// Watts it was asked for and did not take.
    pub refused_w: u64,
    /// What it said (or "no answer" when it failed).
    pub reason: String,
}

/// What one node did with one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAllocation {
    /// The order.
    pub dispatch: DispatchId,
    /// This node.
    pub node: NodeId,
    /// What its parent (or the caller) asked of it, W.
    pub requested_w: u64,
    /// What it placed (on children, or on the device for a DER), W.
    pub allocated_w: u64,
    /// `requested_w - allocated_w`.
    pub shortfall_w: u64,
    /// The final share of each child that took something, W.
    pub children: Vec<(NodeId, u64)>,
    /// Children that refused or failed, and what was re-split because of them.
    pub refusals: Vec<Refusal>,
    /// How many times the node re-split after refusals.
    pub resplits: u32,
}

impl NodeAllocation {
    /// Nothing placed yet.
    pub fn empty(dispatch: DispatchId, node: NodeId) -> Self {
        Self {
            dispatch,
            node,
            requested_w: 0,
            allocated_w: 0,
            shortfall_w: 0,
            children: Vec::new(),
            refusals: Vec::new(),
            resplits: 0,
        }
    }
}

/// The command a DER holds for one order: move `power_w` in `direction` over
/// `[start_ms, end_ms)`, at most `ramp_w_per_min`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setpoint {
    /// The order this setpoint serves.
    pub dispatch: DispatchId,
    /// Which way.
    pub direction: Direction,
    /// How much to move from the current operating point, W.
    pub power_w: u64,
    /// The net import the device should hold, W (negative = export).
    pub target_power_w: i64,
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End, Unix ms.
    pub end_ms: u64,
    /// Ramp limit, W/min.
    pub ramp_w_per_min: u64,
}

/// Totals of a finished split, kept with the order in the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationSummary {
    /// Placed on DERs, W.
    pub allocated_w: u64,
    /// Could not be placed, W.
    pub shortfall_w: u64,
    /// DERs that hold a setpoint for the order.
    pub ders: u64,
    /// Re-splits after refusals, over the whole tree.
    pub resplits: u64,
    /// Time from acceptance to the last DER's answer, ms.
    pub split_ms: u64,
}

/// An order as kept in the dispatch journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRecord {
    /// The order as accepted.
    pub order: DispatchOrder,
    /// Where it is in its life.
    pub status: DispatchStatus,
    /// Last status change, Unix ms.
    pub updated_ms: u64,
    /// Set once the split has finished.
    pub summary: Option<AllocationSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> DispatchOrder {
        DispatchOrder {
            id: DispatchId::new("d1").unwrap(),
            target: NodeId::new("root").unwrap(),
            direction: Direction::Up,
            power_w: 1000,
            start_ms: 1_000,
            duration_s: 60,
            ramp_w_per_min: None,
            created_ms: 0,
        }
    }

    #[test]
    fn order_validation() {
        assert_eq!(order().validate(), Ok(()));
        assert_eq!(order().end_ms(), 61_000);
        let mut o = order();
        o.power_w = 0;
        assert!(o.validate().is_err());
        let mut o = order();
        o.duration_s = MAX_DURATION_S + 1;
        assert!(o.validate().is_err());
        let mut o = order();
        o.ramp_w_per_min = Some(0);
        assert!(o.validate().is_err());
    }
}
