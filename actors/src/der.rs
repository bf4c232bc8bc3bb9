//! The DER actor: the digital twin of one device, hosted by its site.
//!
//! A DER actor holds the DER's rating, last known state and active setpoints,
//! and handles its messages one at a time like any actor. It does not have a
//! tokio task and mailboxes of its own: its [`crate::aggregate`] site actor
//! hosts it and delivers its messages, the way sharded-entity systems host
//! many entities per process unit. Measured reason (ARCHITECTURE.md): a
//! ractor actor costs ~6.7 KB and 7–23 µs to spawn, which alone breaks the
//! 1M-DER memory, spawn and split targets; a hosted DER costs a few hundred
//! bytes and is reached with a function call from its site.
//!
//! A state change recomputes the envelope ([`vpp_domain::flex::der_envelope`]);
//! the site folds the change into its sum. A dispatch share is accepted up to
//! what the device can do now beyond its other commitments; the rest is
//! refused with a reason, and the site re-splits it. A handler that panics is
//! caught by the site, which restarts the DER from its persisted state.

use std::sync::Arc;

use vpp_domain::flex::der_envelope;
use vpp_domain::{
    DerSpec, DerState, Direction, DispatchId, DispatchOrder, FlexEnvelope, NodeKind, NodeSpec,
    Setpoint,
};

use crate::build::FleetCtx;
use crate::journal::DerRecord;
use crate::messages::{DispatchOutcome, NodeView, StateRejected};
use crate::metrics::Metrics;

/// One DER, hosted by its site actor.
pub(crate) struct DerActor {
    spec: Arc<DerSpec>,
    state: DerState,
    setpoints: Vec<Setpoint>,
}

impl DerActor {
    pub(crate) fn new(spec: Arc<DerSpec>, state: DerState, setpoints: Vec<Setpoint>) -> Self {
        Self {
            spec,
            state,
            setpoints,
        }
    }

    pub(crate) fn spec(&self) -> &Arc<DerSpec> {
        &self.spec
    }

    /// The DER's envelope now.
    pub(crate) fn envelope(&self) -> FlexEnvelope {
        der_envelope(&self.spec.rating, &self.state)
    }

    /// Applies a newer state; returns the new envelope. Older or equal
    /// sequence numbers (except 0, "unsequenced") are refused.
    pub(crate) fn set_state(
        &mut self,
        state: DerState,
        ctx: &FleetCtx,
    ) -> Result<FlexEnvelope, StateRejected> {
        if state.seq != 0 && state.seq <= self.state.seq {
            Metrics::inc(&ctx.metrics.states_rejected_stale);
            return Err(StateRejected::Stale {
                got: state.seq,
                have: self.state.seq,
            });
        }
        self.state = state;
        Metrics::inc(&ctx.metrics.states_applied);
        Ok(self.envelope())
    }

    /// Drops setpoints whose order has ended; true if any was dropped.
    pub(crate) fn expire(&mut self, now: u64) -> bool {
        let before = self.setpoints.len();
        self.setpoints.retain(|s| s.end_ms > now);
        self.setpoints.len() != before
    }

    /// What is persisted of this DER (its site writes one record for all).
    pub(crate) fn record(&self) -> DerRecord {
        DerRecord {
            id: self.spec.id.clone(),
            state: self.state.clone(),
            setpoints: self.setpoints.clone(),
        }
    }

    fn committed(&self, dir: Direction, except: &DispatchId) -> u64 {
        self.setpoints
            .iter()
            .filter(|s| s.direction == dir && &s.dispatch != except)
            .map(|s| s.power_w)
            .sum()
    }

    /// Takes up to `share_w` of `order` (its total share, not an increment),
    /// given what its envelope offers in the order's direction.
    pub(crate) fn dispatch(
        &mut self,
        order: &DispatchOrder,
        share_w: u64,
        available_w: u64,
        ctx: &FleetCtx,
    ) -> DispatchOutcome {
        let dir = order.direction;
        let rating = &self.spec.rating;
        let (room, why) = if !self.state.online {
            (0, Some("device offline".to_string()))
        } else if !self.state.accepts_control {
            (0, Some("owner has taken local control".to_string()))
        } else {
            let room = available_w.saturating_sub(self.committed(dir, &order.id));
            (room, None)
        };
        let accepted = share_w.min(room);
        let reason =
            (accepted < share_w).then(|| why.unwrap_or_else(|| format!("only {room} W available")));
        self.setpoints.retain(|s| s.dispatch != order.id);
        if accepted > 0 {
            let delta = accepted as i64;
            let target = match dir {
                Direction::Up => self.state.power_w - delta,
                Direction::Down => self.state.power_w + delta,
            }
            .clamp(-(rating.max_export_w as i64), rating.max_import_w as i64);
            // The order's ramp limit is shared in proportion to the share taken.
            let ramp = match order.ramp_w_per_min {
                Some(r) => {
                    let part =
                        (r as u128 * accepted as u128).div_ceil(order.power_w.max(1) as u128);
                    (part as u64).clamp(1, rating.ramp_w_per_min.max(1))
                }
                None => rating.ramp_w_per_min,
            };
            self.setpoints.push(Setpoint {
                dispatch: order.id.clone(),
                direction: dir,
                power_w: accepted,
                target_power_w: target,
                start_ms: order.start_ms,
                end_ms: order.end_ms(),
                ramp_w_per_min: ramp,
            });
        }
        Metrics::inc(&ctx.metrics.dispatch_shares);
        DispatchOutcome {
            accepted_w: accepted,
            ders: u64::from(accepted > 0),
            resplits: 0,
            reason,
        }
    }

    /// Withdraws the setpoint of an order, if any; true if there was one.
    pub(crate) fn cancel(&mut self, id: &DispatchId) -> bool {
        let before = self.setpoints.len();
        self.setpoints.retain(|s| &s.dispatch != id);
        before != self.setpoints.len()
    }

    pub(crate) fn view(&self, env: &FlexEnvelope) -> NodeView {
        let c = |d| {
            self.setpoints
                .iter()
                .filter(|s| s.direction == d)
                .map(|s| s.power_w)
                .sum()
        };
        NodeView {
            id: self.spec.id.clone(),
            kind: NodeKind::Der,
            spec: NodeSpec::Der((*self.spec).clone()),
            envelope: env.clone(),
            committed_up_w: c(Direction::Up),
            committed_down_w: c(Direction::Down),
            strategy: None,
            children: Vec::new(),
            state: Some(self.state.clone()),
            setpoints: self.setpoints.clone(),
            active_dispatches: self.setpoints.iter().map(|s| s.dispatch.clone()).collect(),
        }
    }
}
