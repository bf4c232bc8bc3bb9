//! Model-based test: random sequences of store operations, including
//! "reboot" (drop every handle and reopen the data dir), checked after every
//! step against plain in-memory maps.
//!
//! Run: `cargo test -p vpp-store --test model`
//! (`PROPTEST_CASES=1000` for a longer run).

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use vpp_domain::{
    AllocationSummary, DerKind, DerRating, DerSpec, DerState, Direction, DispatchId, DispatchOrder,
    DispatchRecord, DispatchStatus, Hierarchy, Location, NodeAllocation, NodeId, Segment, Setpoint,
    SiteSpec, Strategy as SplitStrategy, VirtualDerSpec,
};
use vpp_store::Store;

const DERS: [&str; 6] = ["d0", "d1", "d2", "d3", "d4", "d5"];
const OTHER_NODES: [&str; 3] = ["root", "s0", "s1"];
/// `x1` and `x10` share a prefix: allocations of one must not leak into the other.
const DISPATCHES: [&str; 4] = ["x0", "x1", "x10", "x2"];

fn nid(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn did(s: &str) -> DispatchId {
    DispatchId::new(s).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    ReplaceHierarchy(Hierarchy),
    PutDerStates(Vec<(NodeId, DerState)>),
    PutSetpoints(Vec<(NodeId, Vec<Setpoint>)>),
    PutDispatch {
        record: DispatchRecord,
        durable: bool,
    },
    PutAllocations(Vec<NodeAllocation>),
    Flush,
    Reboot,
}

/// What the store must hold.
#[derive(Debug, Default)]
struct Model {
    hierarchy: Hierarchy,
    der_states: HashMap<NodeId, DerState>,
    setpoints: HashMap<NodeId, Vec<Setpoint>>,
    dispatches: BTreeMap<DispatchId, DispatchRecord>,
    allocations: BTreeMap<(DispatchId, NodeId), NodeAllocation>,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::ReplaceHierarchy(h) => {
                let ids: HashSet<NodeId> = h.nodes().map(|n| n.id().clone()).collect();
                self.hierarchy = h.clone();
                self.der_states.retain(|id, _| ids.contains(id));
                self.setpoints.retain(|id, _| ids.contains(id));
            }
            Op::PutDerStates(items) => {
                for (id, s) in items {
                    self.der_states.insert(id.clone(), s.clone());
                }
            }
            Op::PutSetpoints(items) => {
                for (id, s) in items {
                    if s.is_empty() {
                        self.setpoints.remove(id);
                    } else {
                        self.setpoints.insert(id.clone(), s.clone());
                    }
                }
            }
            Op::PutDispatch { record, .. } => {
                self.dispatches
                    .insert(record.order.id.clone(), record.clone());
            }
            Op::PutAllocations(items) => {
                for a in items {
                    self.allocations
                        .insert((a.dispatch.clone(), a.node.clone()), a.clone());
                }
            }
            Op::Flush | Op::Reboot => {}
        }
    }

    fn check(&self, store: &Store) -> Result<(), TestCaseError> {
        prop_assert_eq!(&store.load_hierarchy().unwrap(), &self.hierarchy);
        prop_assert_eq!(store.hierarchy_len().unwrap(), self.hierarchy.len());
        prop_assert_eq!(&store.load_der_states().unwrap(), &self.der_states);
        prop_assert_eq!(&store.load_setpoints().unwrap(), &self.setpoints);
        for d in DERS.map(nid) {
            prop_assert_eq!(
                store.der_state(&d).unwrap(),
                self.der_states.get(&d).cloned()
            );
            let setpoints = self.setpoints.get(&d).cloned().unwrap_or_default();
            prop_assert_eq!(store.setpoints(&d).unwrap(), setpoints);
        }

        let mut newest_first: Vec<_> = self.dispatches.values().cloned().collect();
        newest_first.sort_by(|a, b| {
            b.order
                .created_ms
                .cmp(&a.order.created_ms)
                .then_with(|| a.order.id.cmp(&b.order.id))
        });
        prop_assert_eq!(&store.list_dispatches(usize::MAX).unwrap(), &newest_first);
        newest_first.truncate(2);
        prop_assert_eq!(&store.list_dispatches(2).unwrap(), &newest_first);

        for d in DISPATCHES.map(did) {
            prop_assert_eq!(
                store.get_dispatch(&d).unwrap(),
                self.dispatches.get(&d).cloned()
            );
            let of_d: Vec<_> = self
                .allocations
                .range((d.clone(), nid("0"))..)
                .take_while(|((x, _), _)| *x == d)
                .map(|(_, a)| a.clone())
                .collect();
            prop_assert_eq!(&store.allocations_of(&d).unwrap(), &of_d);
            for n in DERS.iter().chain(&OTHER_NODES).map(|s| nid(s)) {
                prop_assert_eq!(
                    store.allocation(&d, &n).unwrap(),
                    self.allocations.get(&(d.clone(), n.clone())).cloned()
                );
            }
        }
        Ok(())
    }
}

fn hierarchy() -> impl Strategy<Value = Hierarchy> {
    (
        subsequence(DERS.to_vec(), 0..=DERS.len()).prop_shuffle(),
        proptest::collection::vec(0usize..2, DERS.len()),
        0u32..4,
        any::<bool>(),
    )
        .prop_map(|(ders, sites_of, salt, empty)| {
            if empty {
                return Hierarchy::default();
            }
            let site = |i: usize| SiteSpec {
                id: nid(&format!("s{i}")),
                name: format!("site {i} v{salt}"),
                parent: nid("root"),
                location: Location {
                    lat: 10.0 + i as f64,
                    lon: 20.0,
                    zone: "z".into(),
                    feeder: format!("f{salt}"),
                },
                segment: Segment::Commercial,
                owner: "o".into(),
                strategy: SplitStrategy::FairRotation,
            };
            let mut rating = DerRating::new(DerKind::Battery, 3000, 3000 + u64::from(salt));
            rating.energy_wh = 10_000;
            Hierarchy {
                virtual_ders: vec![VirtualDerSpec {
                    id: nid("root"),
                    name: format!("root v{salt}"),
                    parent: None,
                    strategy: SplitStrategy::MeritOrder,
                }],
                sites: vec![site(1), site(0)],
                ders: ders
                    .iter()
                    .zip(sites_of)
                    .map(|(d, s)| DerSpec {
                        id: nid(d),
                        name: format!("{d} v{salt}"),
                        site: nid(&format!("s{s}")),
                        rating: rating.clone(),
                    })
                    .collect(),
            }
        })
}

fn der_state() -> impl Strategy<Value = DerState> {
    (
        any::<bool>(),
        -10_000i64..10_000,
        proptest::option::of(0.0f32..100.0),
        proptest::option::of(-20.0f32..80.0),
        any::<bool>(),
        0u64..1 << 42,
        any::<u64>(),
    )
        .prop_map(
            |(online, power_w, soc_pct, temperature_c, accepts_control, updated_ms, seq)| {
                DerState {
                    online,
                    power_w,
                    soc_pct,
                    temperature_c,
                    accepts_control,
                    updated_ms,
                    seq,
                }
            },
        )
}

fn setpoint() -> impl Strategy<Value = Setpoint> {
    (select(DISPATCHES.to_vec()), 1u64..5000, 0u64..100).prop_map(|(d, power_w, start)| Setpoint {
        dispatch: did(d),
        direction: Direction::Up,
        power_w,
        target_power_w: -(power_w as i64),
        start_ms: start,
        end_ms: start + 60_000,
        ramp_w_per_min: 1000,
    })
}

fn record() -> impl Strategy<Value = DispatchRecord> {
    (
        select(DISPATCHES.to_vec()),
        0u64..4,
        select(vec![
            DispatchStatus::Accepted,
            DispatchStatus::Allocated,
            DispatchStatus::Cancelled,
        ]),
        proptest::option::of(0u64..10_000),
    )
        .prop_map(|(d, created_ms, status, allocated)| DispatchRecord {
            order: DispatchOrder {
                id: did(d),
                target: nid("root"),
                direction: Direction::Down,
                power_w: 10_000,
                start_ms: created_ms,
                duration_s: 900,
                ramp_w_per_min: None,
                created_ms,
            },
            status,
            updated_ms: created_ms + 1,
            summary: allocated.map(|allocated_w| AllocationSummary {
                allocated_w,
                shortfall_w: 10_000 - allocated_w,
                ders: 3,
                resplits: 1,
                split_ms: 7,
            }),
        })
}

fn allocation() -> impl Strategy<Value = NodeAllocation> {
    let nodes: Vec<&str> = DERS.iter().chain(&OTHER_NODES).copied().collect();
    (select(DISPATCHES.to_vec()), select(nodes), 0u64..1000).prop_map(|(d, n, allocated_w)| {
        NodeAllocation {
            dispatch: did(d),
            node: nid(n),
            requested_w: 1000,
            allocated_w,
            shortfall_w: 1000 - allocated_w,
            children: vec![(nid("d0"), allocated_w)],
            refusals: vec![],
            resplits: 0,
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    // DER states and setpoints may name DERs outside the hierarchy: the store
    // keeps them until the next replacement.
    let der = || select(DERS.to_vec()).prop_map(nid);
    prop_oneof![
        2 => hierarchy().prop_map(Op::ReplaceHierarchy),
        4 => proptest::collection::vec((der(), der_state()), 0..5).prop_map(Op::PutDerStates),
        3 => proptest::collection::vec((der(), proptest::collection::vec(setpoint(), 0..3)), 0..4)
            .prop_map(Op::PutSetpoints),
        3 => (record(), any::<bool>()).prop_map(|(record, durable)| Op::PutDispatch { record, durable }),
        3 => proptest::collection::vec(allocation(), 0..5).prop_map(Op::PutAllocations),
        1 => Just(Op::Flush),
        2 => Just(Op::Reboot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn store_matches_the_model_across_reboots(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path()).unwrap());
        let mut model = Model::default();
        for op in &ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::ReplaceHierarchy(h) => s.replace_hierarchy(h).unwrap(),
                Op::PutDerStates(items) => s.put_der_states(items).unwrap(),
                Op::PutSetpoints(items) => s.put_setpoints(items).unwrap(),
                Op::PutDispatch { record, durable: true } => s.put_dispatch_durable(record).unwrap(),
                Op::PutDispatch { record, durable: false } => s.put_dispatch(record).unwrap(),
                Op::PutAllocations(items) => s.put_allocations(items).unwrap(),
                Op::Flush => {
                    s.flush().unwrap();
                }
                Op::Reboot => {
                    // The lock is released as soon as the last handle is gone.
                    drop(store.take());
                    store = Some(Store::open(dir.path()).unwrap());
                }
            }
            model.apply(op);
            model.check(store.as_ref().unwrap())?;
        }
        // Flush, reboot: everything must still be there.
        store.as_ref().unwrap().flush().unwrap();
        drop(store.take());
        model.check(&Store::open(dir.path()).unwrap())?;
    }
}
