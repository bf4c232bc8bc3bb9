//! Dispatch split: how an aggregate divides an order among its children.
//! (Being written.)
use crate::dispatch::Strategy;

/// One child as the split sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// What the child can still take in the order's direction, W.
    pub available_w: u64,
    /// The child's capacity-weighted cost, micro-currency per kWh.
    pub cost: u64,
    /// When the child was last dispatched, Unix ms (`None` = never).
    pub last_dispatched_ms: Option<u64>,
}

/// The result of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Watts for each candidate, same order as the input.
    pub allocations: Vec<u64>,
    /// What could not be placed, W.
    pub shortfall_w: u64,
}

/// Splits `request_w` among `candidates` with `strategy`.
pub fn split(request_w: u64, candidates: &[Candidate], strategy: Strategy) -> Split {
    let _ = strategy;
    let mut allocations = vec![0; candidates.len()];
    let mut left = request_w;
    for (a, c) in allocations.iter_mut().zip(candidates) {
        let take = left.min(c.available_w);
        *a = take;
        left -= take;
    }
    Split {
        allocations,
        shortfall_w: left,
    }
}
