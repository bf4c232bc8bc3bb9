//! Fixtures shared by the unit tests.

use vpp_domain::{
    DerKind, DerRating, DerSpec, DerState, Direction, DispatchId, DispatchOrder, DispatchRecord,
    DispatchStatus, Hierarchy, Location, NodeAllocation, NodeId, Segment, Setpoint, SiteSpec,
    Strategy, VirtualDerSpec,
};

use crate::Store;

pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    (dir, store)
}

pub(crate) fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

pub(crate) fn did(s: &str) -> DispatchId {
    DispatchId::new(s).expect("valid id")
}

/// `root` ─ `site` ─ one battery per entry of `ders`, in that order.
pub(crate) fn hierarchy(ders: &[&str]) -> Hierarchy {
    let mut rating = DerRating::new(DerKind::Battery, 5000, 5000);
    rating.energy_wh = 13_500;
    Hierarchy {
        virtual_ders: vec![VirtualDerSpec {
            id: id("root"),
            name: "root".into(),
            parent: None,
            strategy: Strategy::ProRata,
        }],
        sites: vec![SiteSpec {
            id: id("site"),
            name: "site".into(),
            parent: id("root"),
            location: Location {
                lat: 52.0,
                lon: 5.0,
                zone: "nl".into(),
                feeder: "f1".into(),
            },
            segment: Segment::Residential,
            owner: "owner".into(),
            strategy: Strategy::MeritOrder,
        }],
        ders: ders
            .iter()
            .map(|d| DerSpec {
                id: id(d),
                name: format!("battery {d}"),
                site: id("site"),
                rating: rating.clone(),
            })
            .collect(),
    }
}

pub(crate) fn state(seq: u64) -> DerState {
    DerState {
        online: true,
        power_w: -1200,
        soc_pct: Some(55.5),
        temperature_c: None,
        accepts_control: true,
        updated_ms: 1_700_000_000_000 + seq,
        seq,
    }
}

pub(crate) fn setpoint(dispatch: &str) -> Setpoint {
    Setpoint {
        dispatch: did(dispatch),
        direction: Direction::Up,
        power_w: 1000,
        target_power_w: -1000,
        start_ms: 10,
        end_ms: 20,
        ramp_w_per_min: 500,
    }
}

pub(crate) fn record(dispatch: &str, created_ms: u64) -> DispatchRecord {
    DispatchRecord {
        order: DispatchOrder {
            id: did(dispatch),
            target: id("root"),
            direction: Direction::Down,
            power_w: 2000,
            start_ms: created_ms,
            duration_s: 60,
            ramp_w_per_min: Some(100),
            created_ms,
        },
        status: DispatchStatus::Accepted,
        updated_ms: created_ms,
        summary: None,
    }
}

pub(crate) fn allocation(dispatch: &str, node: &str, allocated_w: u64) -> NodeAllocation {
    NodeAllocation {
        dispatch: did(dispatch),
        node: id(node),
        requested_w: 2000,
        allocated_w,
        shortfall_w: 2000 - allocated_w,
        children: vec![(id("child"), allocated_w)],
        refusals: vec![],
        resplits: 0,
    }
}

/// A ledger draft by `ops` about `thing/1`.
pub(crate) fn draft(action: &str) -> vpp_domain::ledger::LedgerDraft {
    vpp_domain::ledger::LedgerDraft {
        actor: "ops".into(),
        action: action.into(),
        subject: "thing/1".into(),
        before: None,
        after: None,
        detail: String::new(),
    }
}
