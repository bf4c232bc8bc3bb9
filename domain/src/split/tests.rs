use proptest::prelude::{
    any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, TestCaseError,
};
use proptest::strategy::Strategy as _;

use super::*;

const ALL: [Strategy; 3] = [
    Strategy::ProRata,
    Strategy::MeritOrder,
    Strategy::FairRotation,
];

fn c(available_w: u64, cost: u64, last_dispatched_ms: Option<u64>) -> Candidate {
    Candidate {
        available_w,
        cost,
        last_dispatched_ms,
    }
}

/// Candidates that differ only in availability.
fn avail(ws: &[u64]) -> Vec<Candidate> {
    ws.iter().map(|&w| c(w, 0, None)).collect()
}

/// The example drawn in the module docs.
fn doc_example() -> Vec<Candidate> {
    vec![c(5, 30, Some(100)), c(3, 10, None), c(2, 20, Some(50))]
}

fn alloc(request_w: u64, cands: &[Candidate], strategy: Strategy) -> (Vec<u64>, u64) {
    let s = split(request_w, cands, strategy);
    (s.allocations, s.shortfall_w)
}

// ---------------------------------------------------------------- pro rata

#[test]
fn pro_rata_doc_example() {
    // total 10, request 7: exact 7·5/10 = 3.5, 7·3/10 = 2.1, 7·2/10 = 1.4.
    // Floors 3 + 2 + 1 = 6, 1 W left; remainders .5 .1 .4 → child 0.
    assert_eq!(
        alloc(7, &doc_example(), Strategy::ProRata),
        (vec![4, 2, 1], 0)
    );
}

#[test]
fn pro_rata_exact_shares_need_no_remainder() {
    // total 400, request 100: 100·100/400 = 25, 100·300/400 = 75, both whole.
    assert_eq!(
        alloc(100, &avail(&[100, 300]), Strategy::ProRata),
        (vec![25, 75], 0)
    );
}

#[test]
fn pro_rata_remainder_goes_to_largest_fractions() {
    // total 6 + 3 + 1 = 10, request 5: exact 3.0, 1.5, 0.5.
    // Floors 3 + 1 + 0 = 4, 1 W left; remainders 0, .5, .5 → tie, lower index → child 1.
    assert_eq!(
        alloc(5, &avail(&[6, 3, 1]), Strategy::ProRata),
        (vec![3, 2, 0], 0)
    );
    // total 3 + 3 + 3 + 1 = 10, request 7: exact 2.1, 2.1, 2.1, 0.7.
    // Floors 2 + 2 + 2 + 0 = 6, 1 W left; largest remainder .7 → child 3.
    assert_eq!(
        alloc(7, &avail(&[3, 3, 3, 1]), Strategy::ProRata),
        (vec![2, 2, 2, 1], 0)
    );
}

#[test]
fn pro_rata_ties_go_to_lower_index() {
    // total 3, request 2: exact 2/3 each, floors 0, 2 W left; remainders all
    // 2/3 → children 0 and 1.
    assert_eq!(
        alloc(2, &avail(&[1, 1, 1]), Strategy::ProRata),
        (vec![1, 1, 0], 0)
    );
    // total 7·1 = 7, request 3: 3/7 each, 3 W left → children 0, 1, 2.
    assert_eq!(
        alloc(3, &avail(&[1; 7]), Strategy::ProRata),
        (vec![1, 1, 1, 0, 0, 0, 0], 0)
    );
}

#[test]
fn pro_rata_skips_zero_availability() {
    // total 0 + 4 + 0 + 4 = 8, request 5: exact 0, 2.5, 0, 2.5.
    // Floors 0 + 2 + 0 + 2 = 4, 1 W left; tie .5/.5 → child 1.
    assert_eq!(
        alloc(5, &avail(&[0, 4, 0, 4]), Strategy::ProRata),
        (vec![0, 3, 0, 2], 0)
    );
}

// ------------------------------------------------------------ merit order

#[test]
fn merit_order_doc_example() {
    // costs 30, 10, 20 → order 1 (3 W), 2 (2 W), 0 (the last 2 of 7 W).
    assert_eq!(
        alloc(7, &doc_example(), Strategy::MeritOrder),
        (vec![2, 3, 2], 0)
    );
}

#[test]
fn merit_order_fills_cheapest_first_and_breaks_ties_by_index() {
    let cands = vec![c(4, 5, None), c(4, 1, None), c(4, 5, None), c(4, 1, None)];
    // order: 1 (cost 1), 3 (cost 1), 0 (cost 5), 2 (cost 5).
    // request 10: 4 + 4 + 2 → children 1, 3 full, child 0 gets 2.
    assert_eq!(
        alloc(10, &cands, Strategy::MeritOrder),
        (vec![2, 4, 0, 4], 0)
    );
    // request 3: all to child 1.
    assert_eq!(
        alloc(3, &cands, Strategy::MeritOrder),
        (vec![0, 3, 0, 0], 0)
    );
}

#[test]
fn merit_order_passes_over_empty_cheap_children() {
    // child 0 is cheapest but has no room; child 2 (cost 2) before child 1 (cost 3).
    let cands = vec![c(0, 1, None), c(10, 3, None), c(5, 2, None)];
    // request 8: child 2 takes 5, child 1 the other 3.
    assert_eq!(alloc(8, &cands, Strategy::MeritOrder), (vec![0, 3, 5], 0));
}

// ---------------------------------------------------------- fair rotation

#[test]
fn fair_rotation_doc_example() {
    // last dispatched 100, None, 50 → order 1 (never), 2 (50), 0 (100).
    // request 7: 3 + 2 + 2.
    assert_eq!(
        alloc(7, &doc_example(), Strategy::FairRotation),
        (vec![2, 3, 2], 0)
    );
}

#[test]
fn fair_rotation_never_before_oldest_then_index() {
    let cands = vec![
        c(3, 0, Some(0)),
        c(3, 0, None),
        c(3, 0, Some(0)),
        c(3, 0, None),
    ];
    // order: 1 (None), 3 (None), 0 (t=0), 2 (t=0).
    // request 8: 3 + 3 + 2.
    assert_eq!(
        alloc(8, &cands, Strategy::FairRotation),
        (vec![2, 3, 0, 3], 0)
    );
    // request 4: 3 to child 1, 1 to child 3.
    assert_eq!(
        alloc(4, &cands, Strategy::FairRotation),
        (vec![0, 3, 0, 1], 0)
    );
}

// ------------------------------------------------------ every strategy

#[test]
fn request_above_total_fills_everyone() {
    // total 10, request 12: everyone full, shortfall 2.
    for s in ALL {
        assert_eq!(alloc(12, &doc_example(), s), (vec![5, 3, 2], 2), "{s:?}");
        assert_eq!(alloc(10, &doc_example(), s), (vec![5, 3, 2], 0), "{s:?}");
    }
}

#[test]
fn empty_list_is_all_shortfall() {
    for s in ALL {
        assert_eq!(alloc(1234, &[], s), (vec![], 1234), "{s:?}");
        assert_eq!(alloc(0, &[], s), (vec![], 0), "{s:?}");
    }
}

#[test]
fn zero_request_is_all_zeros() {
    for s in ALL {
        assert_eq!(alloc(0, &doc_example(), s), (vec![0, 0, 0], 0), "{s:?}");
    }
}

#[test]
fn nothing_available_is_all_shortfall() {
    for s in ALL {
        assert_eq!(alloc(9, &avail(&[0, 0]), s), (vec![0, 0], 9), "{s:?}");
    }
}

#[test]
fn huge_values_do_not_overflow() {
    // total 3·(2^64 - 1) does not fit in a u64; request u64::MAX - 1.
    let cands = avail(&[u64::MAX; 3]);
    for s in ALL {
        let out = split(u64::MAX - 1, &cands, s);
        let sum: u128 = out.allocations.iter().map(|&a| a as u128).sum();
        assert_eq!(sum, (u64::MAX - 1) as u128, "{s:?}");
        assert_eq!(out.shortfall_w, 0);
    }
    // (2^64 - 2) / 3 = 6148914691236517204 rem 2 → children 0 and 1 get +1.
    let q = (u64::MAX - 1) / 3;
    assert_eq!(
        split(u64::MAX - 1, &cands, Strategy::ProRata).allocations,
        vec![q + 1, q + 1, q]
    );
}

#[test]
fn large_fleet_sums_exactly() {
    // 200k children of 1..=7 W each: no timing here, only correctness at size.
    let cands: Vec<Candidate> = (0..200_000u64)
        .map(|i| c(i % 7 + 1, i % 13, (i % 5 != 0).then_some(i % 11)))
        .collect();
    let total: u64 = cands.iter().map(|c| c.available_w).sum();
    for s in ALL {
        let out = split(total / 3, &cands, s);
        assert_eq!(out.allocations.iter().sum::<u64>(), total / 3, "{s:?}");
        assert_eq!(out.shortfall_w, 0);
    }
}

// ----------------------------------------------------------------- resplit

#[test]
fn resplit_gives_gap_to_the_willing_within_their_room() {
    // available 10, 10, 10; already 8, 5, 0; child 2 refused.
    // room: 2, 5, (refused) 0 = 7; gap 6.
    let cands = avail(&[10, 10, 10]);
    let already = [8, 5, 0];
    let refused = [false, false, true];
    // pro rata: exact 6·2/7 = 1.71, 6·5/7 = 4.29; floors 1 + 4 = 5, 1 W left
    // → largest remainder .71 → child 0.
    assert_eq!(
        resplit(6, &cands, &already, &refused, Strategy::ProRata),
        Split {
            allocations: vec![2, 4, 0],
            shortfall_w: 0
        }
    );
    // merit (all cost 0, index order): child 0 takes its 2, child 1 the other 4.
    assert_eq!(
        resplit(6, &cands, &already, &refused, Strategy::MeritOrder).allocations,
        vec![2, 4, 0]
    );
    // gap 9 > room 7: everyone full, shortfall 2.
    assert_eq!(
        resplit(9, &cands, &already, &refused, Strategy::FairRotation),
        Split {
            allocations: vec![2, 5, 0],
            shortfall_w: 2
        }
    );
}

#[test]
fn resplit_reads_missing_entries_as_zero_and_false() {
    let cands = avail(&[4, 4, 4]);
    // already too long, refused too short, one already above available.
    // room: 4 - 9 → 0, 4 - 1 = 3, 4 (missing → 0, not refused) = 7.
    let out = resplit(5, &cands, &[9, 1], &[false], Strategy::MeritOrder);
    assert_eq!(out.allocations, vec![0, 3, 2]);
    assert_eq!(out.shortfall_w, 0);
    let out = resplit(5, &cands, &[], &[true, true, true, true], Strategy::ProRata);
    assert_eq!(out.allocations, vec![0, 0, 0]);
    assert_eq!(out.shortfall_w, 5);
}

// ------------------------------------------------------ property tests

fn candidate() -> impl proptest::strategy::Strategy<Value = Candidate> {
    // Zero availability often; small ranges of cost and time so ties happen.
    let available = prop_oneof![1 => Just(0u64), 4 => 0u64..=1_000_000_000_000];
    (available, 0u64..10, proptest::option::of(0u64..20)).prop_map(
        |(available_w, cost, last_dispatched_ms)| Candidate {
            available_w,
            cost,
            last_dispatched_ms,
        },
    )
}

fn candidates() -> impl proptest::strategy::Strategy<Value = Vec<Candidate>> {
    proptest::collection::vec(candidate(), 0..200)
}

/// A request that lands below, at and above the total about equally often.
fn request(total: u128, permille: u64, raw: u64, use_raw: bool) -> u64 {
    if use_raw {
        raw
    } else {
        (total * permille as u128 / 1000).min(u64::MAX as u128) as u64
    }
}

fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::ProRata),
        Just(Strategy::MeritOrder),
        Just(Strategy::FairRotation),
    ]
}

/// The guarantees every strategy gives.
fn check_common(request_w: u64, cands: &[Candidate], out: &Split) -> Result<(), TestCaseError> {
    let total = total_available_w(cands);
    let allocated = (request_w as u128).min(total);
    prop_assert_eq!(out.allocations.len(), cands.len());
    let sum: u128 = out.allocations.iter().map(|&a| a as u128).sum();
    prop_assert_eq!(sum, allocated);
    prop_assert_eq!(out.shortfall_w as u128, request_w as u128 - allocated);
    for (a, c) in out.allocations.iter().zip(cands) {
        prop_assert!(*a <= c.available_w);
    }
    Ok(())
}

/// Greedy fill in `key` order: whoever got something, everyone strictly
/// before it in `(key, index)` order is full; put differently, nobody after
/// the first child with room (in that order) got anything.
fn check_greedy<K: Ord>(
    cands: &[Candidate],
    out: &Split,
    key: impl Fn(&Candidate) -> K,
) -> Result<(), TestCaseError> {
    // Smallest (key, index) of a candidate that still has room.
    let first_with_room = cands
        .iter()
        .enumerate()
        .filter(|(i, c)| out.allocations[*i] < c.available_w)
        .map(|(i, c)| (key(c), i))
        .min();
    if let Some(first) = first_with_room {
        for (j, c) in cands.iter().enumerate() {
            if out.allocations[j] > 0 {
                prop_assert!(
                    (key(c), j) <= first,
                    "child {} got watts after a child with room",
                    j
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_strategy_places_exactly_min_of_request_and_total(
        cands in candidates(),
        strategy in strategy(),
        permille in 0u64..=1500,
        raw in any::<u64>(),
        use_raw in any::<bool>(),
    ) {
        let request_w = request(total_available_w(&cands), permille, raw, use_raw);
        let out = split(request_w, &cands, strategy);
        check_common(request_w, &cands, &out)?;
    }

    #[test]
    fn merit_order_never_skips_a_cheaper_child_with_room(
        cands in candidates(),
        permille in 0u64..=1100,
    ) {
        let request_w = request(total_available_w(&cands), permille, 0, false);
        let out = split(request_w, &cands, Strategy::MeritOrder);
        check_common(request_w, &cands, &out)?;
        // The guarantee as stated: cost_i < cost_j and j got something → i is full.
        for (i, ci) in cands.iter().enumerate() {
            for (j, cj) in cands.iter().enumerate() {
                if ci.cost < cj.cost && out.allocations[j] > 0 {
                    prop_assert_eq!(out.allocations[i], ci.available_w);
                }
            }
        }
        // And with the tie-break by index.
        check_greedy(&cands, &out, |c| c.cost)?;
    }

    #[test]
    fn fair_rotation_never_skips_a_less_recent_child_with_room(
        cands in candidates(),
        permille in 0u64..=1100,
    ) {
        let request_w = request(total_available_w(&cands), permille, 0, false);
        let out = split(request_w, &cands, Strategy::FairRotation);
        check_common(request_w, &cands, &out)?;
        for (i, ci) in cands.iter().enumerate() {
            for (j, cj) in cands.iter().enumerate() {
                // None is older than any Some, which is `Option`'s order.
                if ci.last_dispatched_ms < cj.last_dispatched_ms && out.allocations[j] > 0 {
                    prop_assert_eq!(out.allocations[i], ci.available_w);
                }
            }
        }
        check_greedy(&cands, &out, |c| c.last_dispatched_ms)?;
    }

    #[test]
    fn pro_rata_is_within_one_watt_of_the_exact_share(
        cands in candidates(),
        permille in 0u64..=1100,
    ) {
        let total = total_available_w(&cands);
        let request_w = request(total, permille, 0, false);
        let out = split(request_w, &cands, Strategy::ProRata);
        check_common(request_w, &cands, &out)?;
        if total == 0 {
            return Ok(());
        }
        let allocated = (request_w as u128).min(total);
        // exact share = allocated·available/total; |a - exact| < 1 ⇔
        // |a·total - allocated·available| < total. And the +1 watts went to the
        // largest remainders (ties: lower index).
        let mut lowest_bumped: Option<(std::cmp::Reverse<u128>, usize)> = None;
        let mut highest_plain: Option<(std::cmp::Reverse<u128>, usize)> = None;
        for (i, (a, c)) in out.allocations.iter().zip(&cands).enumerate() {
            let scaled = *a as u128 * total;
            let exact = allocated * c.available_w as u128;
            prop_assert!(scaled.abs_diff(exact) < total, "child {} off by a watt or more", i);
            let rem = exact % total;
            let rank = (std::cmp::Reverse(rem), i);
            if scaled > exact {
                lowest_bumped = lowest_bumped.max(Some(rank));
            } else if rem > 0 {
                highest_plain = Some(highest_plain.map_or(rank, |h| h.min(rank)));
            }
        }
        if let (Some(b), Some(p)) = (lowest_bumped, highest_plain) {
            prop_assert!(b < p, "a smaller remainder got the extra watt before a larger one");
        }
    }

    #[test]
    fn resplit_fills_only_the_room_of_the_willing(
        cands in candidates(),
        already in proptest::collection::vec(0u64..=1_200_000_000_000, 0..220),
        refused in proptest::collection::vec(proptest::bool::weighted(0.2), 0..220),
        strategy in strategy(),
        permille in 0u64..=1200,
    ) {
        let room = |i: usize| -> u64 {
            if refused.get(i).copied().unwrap_or(false) {
                0
            } else {
                cands[i].available_w.saturating_sub(already.get(i).copied().unwrap_or(0))
            }
        };
        let total_room: u128 = (0..cands.len()).map(|i| room(i) as u128).sum();
        let gap_w = request(total_room, permille, 0, false);
        let out = resplit(gap_w, &cands, &already, &refused, strategy);
        prop_assert_eq!(out.allocations.len(), cands.len());
        for (i, extra) in out.allocations.iter().enumerate() {
            prop_assert!(*extra <= room(i));
            if refused.get(i).copied().unwrap_or(false) {
                prop_assert_eq!(*extra, 0);
            }
            if let Some(&a) = already.get(i) {
                if a <= cands[i].available_w {
                    prop_assert!(extra + a <= cands[i].available_w);
                }
            }
        }
        let sum: u128 = out.allocations.iter().map(|&a| a as u128).sum();
        prop_assert_eq!(sum, (gap_w as u128).min(total_room));
        prop_assert_eq!(out.shortfall_w as u128, gap_w as u128 - sum);
    }
}
