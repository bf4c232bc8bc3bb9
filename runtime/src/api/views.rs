//! JSON shapes of the API: kW and kWh for people, ids as strings.

use std::collections::BTreeMap;

use serde::Serialize;
use vpp_actors::NodeView;
use vpp_domain::units::{micros_to_cost, unit_to_kilo, unit_to_kilo_signed};
use vpp_domain::{DerKind, DerState, FlexEnvelope, KindFlex, NodeAllocation, Setpoint};

use crate::node::AllocationTree;

/// Flexibility in display units.
#[derive(Debug, Serialize)]
pub(crate) struct FlexView {
    up_kw: f64,
    down_kw: f64,
    up_kwh: f64,
    down_kwh: f64,
    ramp_kw_per_min: f64,
    online: u64,
    total: u64,
    up_cost_per_kwh: f64,
    down_cost_per_kwh: f64,
}

impl From<&KindFlex> for FlexView {
    fn from(k: &KindFlex) -> Self {
        let mean = |w: u64, weight: u128| {
            if w == 0 {
                0.0
            } else {
                micros_to_cost((weight / w as u128) as u64)
            }
        };
        FlexView {
            up_kw: unit_to_kilo(k.up_w),
            down_kw: unit_to_kilo(k.down_w),
            up_kwh: unit_to_kilo(k.up_wh),
            down_kwh: unit_to_kilo(k.down_wh),
            ramp_kw_per_min: unit_to_kilo(k.ramp_w_per_min),
            online: k.online,
            total: k.total,
            up_cost_per_kwh: mean(k.up_w, k.up_cost_weight),
            down_cost_per_kwh: mean(k.down_w, k.down_cost_weight),
        }
    }
}

/// How the devices under a node answer the orders they hold (kW: up +).
#[derive(Debug, Serialize)]
pub(crate) struct ResponseView {
    /// DERs holding a setpoint.
    commanded: u64,
    /// Of those, DERs whose device acknowledged every setpoint.
    acked: u64,
    /// Of those, DERs whose device holds the target.
    applied: u64,
    requested_kw: f64,
    acked_kw: f64,
    /// Measured from telemetry: power before the order minus power now.
    delivered_kw: f64,
}

impl From<&vpp_domain::Response> for ResponseView {
    fn from(r: &vpp_domain::Response) -> Self {
        ResponseView {
            commanded: r.commanded,
            acked: r.acked,
            applied: r.applied,
            requested_kw: unit_to_kilo_signed(r.requested_w),
            acked_kw: unit_to_kilo_signed(r.acked_w),
            delivered_kw: unit_to_kilo_signed(r.delivered_w),
        }
    }
}

/// Total and per-kind breakdown (kinds with no devices left out), and the
/// response to active orders.
#[derive(Debug, Serialize)]
pub(crate) struct EnvelopeView {
    total: FlexView,
    by_kind: BTreeMap<&'static str, FlexView>,
    response: ResponseView,
    /// Timestamp of the newest telemetry reflected (null before any).
    telemetry_ms: Option<u64>,
}

impl From<&FlexEnvelope> for EnvelopeView {
    fn from(e: &FlexEnvelope) -> Self {
        EnvelopeView {
            total: FlexView::from(&e.total()),
            by_kind: DerKind::ALL
                .iter()
                .filter(|k| e.kind(**k).total > 0)
                .map(|k| (k.as_str(), FlexView::from(e.kind(*k))))
                .collect(),
            response: ResponseView::from(&e.response),
            telemetry_ms: (e.telemetry_ms > 0).then_some(e.telemetry_ms),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ChildCapacity {
    id: String,
    up_kw: f64,
    down_kw: f64,
    committed_up_kw: f64,
    committed_down_kw: f64,
    online: u64,
    total: u64,
    failed: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct StateView {
    online: bool,
    power_kw: f64,
    soc_pct: Option<f32>,
    temperature_c: Option<f32>,
    accepts_control: bool,
    updated_ms: u64,
    seq: u64,
}

impl From<&DerState> for StateView {
    fn from(s: &DerState) -> Self {
        StateView {
            online: s.online,
            power_kw: unit_to_kilo_signed(s.power_w),
            soc_pct: s.soc_pct,
            temperature_c: s.temperature_c,
            accepts_control: s.accepts_control,
            updated_ms: s.updated_ms,
            seq: s.seq,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SetpointView {
    dispatch: String,
    direction: vpp_domain::Direction,
    power_kw: f64,
    target_power_kw: f64,
    start_ms: u64,
    end_ms: u64,
    ramp_kw_per_min: f64,
}

impl From<&Setpoint> for SetpointView {
    fn from(s: &Setpoint) -> Self {
        SetpointView {
            dispatch: s.dispatch.to_string(),
            direction: s.direction,
            power_kw: unit_to_kilo(s.power_w),
            target_power_kw: unit_to_kilo_signed(s.target_power_w),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            ramp_kw_per_min: unit_to_kilo(s.ramp_w_per_min),
        }
    }
}

/// "What can you do now".
#[derive(Debug, Serialize)]
pub(crate) struct CapacityView {
    node: String,
    kind: vpp_domain::NodeKind,
    fresh: bool,
    as_of_ms: u64,
    envelope: EnvelopeView,
    /// `as_of_ms` minus the timestamp of the newest telemetry the envelope
    /// reflects: how far the roll-up lags the devices (null before any).
    staleness_ms: Option<u64>,
    committed_up_kw: f64,
    committed_down_kw: f64,
    /// Envelope minus commitments: what a new order could get.
    available_up_kw: f64,
    available_down_kw: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<vpp_domain::Strategy>,
    children_total: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    children: Vec<ChildCapacity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<StateView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    setpoints: Vec<SetpointView>,
    active_dispatches: Vec<String>,
    /// The device shadow (DERs).
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<vpp_actors::DeviceView>,
}

impl CapacityView {
    pub(crate) fn new(v: &NodeView, fresh: bool, max_children: usize) -> Self {
        let t = v.envelope.total();
        let as_of_ms = vpp_actors::now_ms();
        let newest = v.envelope.telemetry_ms;
        CapacityView {
            node: v.id.to_string(),
            kind: v.kind,
            fresh,
            as_of_ms,
            envelope: EnvelopeView::from(&v.envelope),
            staleness_ms: (newest > 0).then(|| as_of_ms.saturating_sub(newest)),
            committed_up_kw: unit_to_kilo(v.committed_up_w),
            committed_down_kw: unit_to_kilo(v.committed_down_w),
            available_up_kw: unit_to_kilo(t.up_w.saturating_sub(v.committed_up_w)),
            available_down_kw: unit_to_kilo(t.down_w.saturating_sub(v.committed_down_w)),
            strategy: v.strategy,
            children_total: v.children.len(),
            children: v
                .children
                .iter()
                .take(max_children)
                .map(|c| {
                    let t = c.envelope.total();
                    ChildCapacity {
                        id: c.id.to_string(),
                        up_kw: unit_to_kilo(t.up_w),
                        down_kw: unit_to_kilo(t.down_w),
                        committed_up_kw: unit_to_kilo(c.committed_up_w),
                        committed_down_kw: unit_to_kilo(c.committed_down_w),
                        online: t.online,
                        total: t.total,
                        failed: c.failed,
                    }
                })
                .collect(),
            state: v.state.as_ref().map(StateView::from),
            setpoints: v.setpoints.iter().map(SetpointView::from).collect(),
            active_dispatches: v.active_dispatches.iter().map(|d| d.to_string()).collect(),
            device: v.device.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct RefusalView {
    child: String,
    refused_kw: f64,
    reason: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct AllocationView {
    node: String,
    kind: vpp_domain::NodeKind,
    allocated_kw: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_kw: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shortfall_kw: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resplits: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refusals: Vec<RefusalView>,
    /// Children holding a share that are not expanded (below `depth`).
    #[serde(skip_serializing_if = "Option::is_none")]
    children_with_share: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    children: Vec<AllocationView>,
}

impl From<&AllocationTree> for AllocationView {
    fn from(t: &AllocationTree) -> Self {
        let a: Option<&NodeAllocation> = t.allocation.as_ref();
        AllocationView {
            node: t.node.to_string(),
            kind: t.kind,
            allocated_kw: unit_to_kilo(t.allocated_w),
            requested_kw: a.map(|a| unit_to_kilo(a.requested_w)),
            shortfall_kw: a.map(|a| unit_to_kilo(a.shortfall_w)),
            resplits: a.map(|a| a.resplits),
            refusals: a
                .map(|a| {
                    a.refusals
                        .iter()
                        .map(|r| RefusalView {
                            child: r.child.to_string(),
                            refused_kw: unit_to_kilo(r.refused_w),
                            reason: r.reason.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            children_with_share: a.map(|a| a.children.len()),
            children: t.children.iter().map(AllocationView::from).collect(),
        }
    }
}
