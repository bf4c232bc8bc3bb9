//! Dispatch split: how an aggregate divides an order among its children.
//!
//! Every aggregate actor calls [`split`] once per order it receives, with one
//! [`Candidate`] per child, and again through [`resplit`] when children refuse
//! part of their share. Both are plain integer math: no floats, no panics, and
//! at most one sort of the children, so an aggregate with 100k+ children
//! splits in O(n log n) with one or two `Vec`s.
//!
//! ## What every split guarantees
//!
//! Let `total = Σ available_w` over the candidates. Then
//!
//! - `allocated = min(request_w, total)` and `shortfall_w = request_w - allocated`;
//! - `allocations[i] <= candidates[i].available_w` for every `i`;
//! - `Σ allocations == allocated` exactly (intermediate products are `u128`,
//!   so inputs up to `u64::MAX` neither overflow nor round away a watt);
//! - a candidate with `available_w == 0` gets 0; no candidates means the whole
//!   request is shortfall; a request of 0 gives all zeros.
//!
//! ## Strategies
//!
//! - [`Strategy::ProRata`]: each candidate gets `floor(allocated × available_i / total)`,
//!   then the watts still missing (fewer than the number of candidates) go one
//!   each to the candidates with the largest fractional remainders, ties to the
//!   lower index (the largest-remainder method). Each share is within 1 W of the
//!   exact proportional share and never above `available_i`.
//! - [`Strategy::MeritOrder`]: candidates sorted by `cost` ascending (ties: lower
//!   index first), each filled completely before the next gets anything. So no
//!   candidate gets a watt while a strictly cheaper one still has room.
//! - [`Strategy::FairRotation`]: as merit order, but sorted by
//!   `last_dispatched_ms`, least recently dispatched first: `None` (never)
//!   before any `Some`, then ascending time, ties to the lower index.
//!
//! ```text
//!   request 7 W          child 0   child 1   child 2    total 10 W
//!   available_w              5         3         2
//!   cost                    30        10        20
//!   last_dispatched_ms     100      None        50
//!
//!   pro rata   exact share 3.5       2.1       1.4      floors 3+2+1 = 6,
//!              allocation    4         2         1      1 W left → child 0 (.5)
//!   merit      order 1,2,0   2         3         2      (3 + 2 + 2 = 7)
//!   rotation   order 1,2,0   2         3         2      (None, 50, 100)
//!   shortfall 0 in every case; a request of 12 W gives [5, 3, 2], shortfall 2.
//! ```

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

/// Σ `available_w`, W. A `u128` because a million children of up to
/// `u64::MAX` each would overflow a `u64`.
pub fn total_available_w(candidates: &[Candidate]) -> u128 {
    candidates.iter().map(|c| c.available_w as u128).sum()
}

/// Splits `request_w` among `candidates` with `strategy`.
///
/// See the module docs for the guarantees. Never panics; O(n) for pro rata and
/// whenever the request covers everything, O(n log n) for the ordered
/// strategies.
pub fn split(request_w: u64, candidates: &[Candidate], strategy: Strategy) -> Split {
    let total = total_available_w(candidates);
    // `allocated <= request_w`, so it fits in a u64.
    let allocated = (request_w as u128).min(total) as u64;
    let shortfall_w = request_w - allocated;
    let allocations = if allocated == 0 {
        vec![0; candidates.len()]
    } else if allocated as u128 == total {
        // Everyone is filled to the brim whatever the strategy.
        candidates.iter().map(|c| c.available_w).collect()
    } else {
        match strategy {
            Strategy::ProRata => pro_rata(allocated, total, candidates),
            Strategy::MeritOrder => fill_in_order(allocated, candidates, |c| c.cost),
            // `Option`'s order puts `None` before every `Some`: never
            // dispatched counts as the oldest.
            Strategy::FairRotation => {
                fill_in_order(allocated, candidates, |c| c.last_dispatched_ms)
            }
        }
    };
    Split {
        allocations,
        shortfall_w,
    }
}

/// The closed-loop re-split after some children refused (part of) their share.
///
/// Splits `gap_w` (the watts the refusals left unplaced) with `strategy` among
/// the candidates that did not refuse, each limited to its remaining room
/// `available_w - already[i]` (0 if `already[i]` is larger). Returns only the
/// **extra** watts per candidate, on top of `already`; refused candidates get
/// 0, and `shortfall_w` is what of `gap_w` found no room.
///
/// Slices shorter than `candidates` are read as 0 (`already`) and `false`
/// (`refused`) for the missing entries; longer ones are cut. Never panics.
pub fn resplit(
    gap_w: u64,
    candidates: &[Candidate],
    already: &[u64],
    refused: &[bool],
    strategy: Strategy,
) -> Split {
    let rooms: Vec<Candidate> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let refused = refused.get(i).copied().unwrap_or(false);
            let already = already.get(i).copied().unwrap_or(0);
            Candidate {
                available_w: if refused {
                    0
                } else {
                    c.available_w.saturating_sub(already)
                },
                ..*c
            }
        })
        .collect();
    split(gap_w, &rooms, strategy)
}

/// Largest-remainder pro rata; needs `0 < allocated < total`.
fn pro_rata(allocated: u64, total: u128, candidates: &[Candidate]) -> Vec<u64> {
    let allocated = allocated as u128;
    let mut placed: u128 = 0;
    let mut allocations = Vec::with_capacity(candidates.len());
    // (remainder, index) of every candidate whose exact share is not whole:
    // only those can take one more watt without passing their exact share
    // rounded up, which is at most `available_w`.
    let mut remainders: Vec<(u128, usize)> = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        // u64 × u64 always fits in a u128.
        let exact = allocated * c.available_w as u128;
        let share = exact / total;
        let rem = exact % total;
        if rem > 0 {
            remainders.push((rem, i));
        }
        placed += share;
        // share <= allocated < 2^64.
        allocations.push(share as u64);
    }
    // Σ exact / total == allocated, so the watts left are Σ rem / total: a
    // whole number smaller than the number of non-zero remainders.
    let left = (allocated - placed.min(allocated)) as usize;
    let left = left.min(remainders.len());
    if left > 0 {
        // Largest remainder first, then lower index; the key is unique, so an
        // O(n) selection picks exactly the right set without a full sort.
        let by_priority = |a: &(u128, usize), b: &(u128, usize)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if left < remainders.len() {
            remainders.select_nth_unstable_by(left - 1, by_priority);
        }
        for &(_, i) in &remainders[..left] {
            allocations[i] += 1;
        }
    }
    allocations
}

/// Greedy fill in ascending `(key, index)` order: each candidate is filled
/// before the next gets anything. Needs `allocated <= total`.
fn fill_in_order<K: Ord>(
    allocated: u64,
    candidates: &[Candidate],
    key: impl Fn(&Candidate) -> K,
) -> Vec<u64> {
    let mut allocations = vec![0; candidates.len()];
    // Only children with room take part in the sort.
    let mut order: Vec<(K, usize)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.available_w > 0)
        .map(|(i, c)| (key(c), i))
        .collect();
    // The index makes every key unique, so unstable is deterministic.
    order.sort_unstable();
    let mut left = allocated;
    for (_, i) in order {
        if left == 0 {
            break;
        }
        let take = left.min(candidates[i].available_w);
        allocations[i] = take;
        left -= take;
    }
    allocations
}

#[cfg(test)]
mod tests;
