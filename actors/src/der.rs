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
//! A state change recomputes the envelope ([`vpp_domain::flex::der_envelope`]
//! and [`vpp_domain::flex::der_response`]); the site folds the change into
//! its sum. A dispatch share is accepted up to what the device can do now
//! beyond its other commitments; the rest is refused with a reason, and the
//! site re-splits it. A handler that panics is caught by the site, which
//! restarts the DER from its persisted state.
//!
//! The twin is also the runtime's half of the device shadow (protocol v1,
//! `docs/device-protocol.md`):
//!
//! ```text
//!   setpoints change ──► desired {version↑, all setpoints} ──► device (retained)
//!   device ack(version, accepted | applied) ──► setpoints up to version acked
//!   device ack(version, rejected, reason)   ──► pending setpoints up to version
//!                                               dropped and handed back to the
//!                                               site, which re-splits them
//!   telemetry(seq↑) ──► state, envelope, measured response
//!   silence > offline_after ──► offline: leaves the envelope
//! ```

use std::sync::Arc;

use vpp_domain::flex::{der_envelope, der_flex, der_response};
use vpp_domain::{
    DerFlex, DerRating, DerSpec, DerState, Direction, DispatchId, DispatchOrder, FlexEnvelope,
    NodeKind, NodeSpec, Setpoint,
};
use vpp_protocol::{Ack, AckStatus, Desired, DesiredSetpoint, Reject};

use crate::build::FleetCtx;
use crate::journal::DerRecord;
use crate::messages::{AckState, DeviceView, DispatchOutcome, NodeView, StateRejected};
use crate::metrics::Metrics;

/// A setpoint and what the device said about it.
#[derive(Debug, Clone)]
struct Held {
    sp: Setpoint,
    /// The first desired version that carried it.
    since_version: u64,
    ack: AckState,
}

/// A setpoint the device rejected: the site re-splits it.
#[derive(Debug, Clone)]
pub(crate) struct DeviceRefusal {
    pub(crate) dispatch: DispatchId,
    pub(crate) power_w: u64,
    pub(crate) reason: String,
}

/// One DER, hosted by its site actor.
pub(crate) struct DerActor {
    spec: Arc<DerSpec>,
    state: DerState,
    held: Vec<Held>,
    /// Net import before the first setpoint now held (for measured response).
    baseline_w: i64,
    /// Version of the last desired document (or the fleet's start time, so
    /// versions keep growing across restarts without being stored).
    desired_version: u64,
    /// A desired document was published for it since the fleet started.
    published: bool,
    /// Setpoints changed since the last desired document was published.
    pub(crate) desired_dirty: bool,
    /// The device is behind: send the current document again, same version
    /// (a new version would make a device that is merely slow look behind
    /// again, forever).
    resend: bool,
    /// Version the device last reported holding.
    reported_version: u64,
    /// When the runtime last heard from the device (runtime clock, ms);
    /// `None` for DERs that are not tracked by telemetry.
    heard_ms: Option<u64>,
}

fn signed(s: &Setpoint) -> i64 {
    match s.direction {
        Direction::Up => s.power_w as i64,
        Direction::Down => -(s.power_w as i64),
    }
}

/// Net import before a setpoint was taken, from the setpoint itself.
fn implied_baseline(s: &Setpoint) -> i64 {
    s.target_power_w + signed(s)
}

/// The envelope of a DER restored with `setpoints` none of which the device
/// has acknowledged yet: what [`DerActor::new`] followed by
/// [`DerActor::flex`] gives (as an envelope), without building the actor.
pub(crate) fn restored_envelope(
    rating: &DerRating,
    state: &DerState,
    setpoints: &[Setpoint],
) -> FlexEnvelope {
    let mut env = der_envelope(rating, state);
    let baseline = setpoints.first().map(implied_baseline).unwrap_or(0);
    env.response = der_response(
        state,
        baseline,
        setpoints.iter().map(|s| (signed(s), false, false)),
    );
    env
}

impl DerActor {
    pub(crate) fn new(
        spec: Arc<DerSpec>,
        state: DerState,
        setpoints: Vec<Setpoint>,
        ctx: &FleetCtx,
    ) -> Self {
        let baseline_w = setpoints
            .first()
            .map(implied_baseline)
            .unwrap_or(state.power_w);
        // An observed state ages out like fresh telemetry would.
        let heard_ms = (state.seq > 0 && state.online).then_some(ctx.started_ms);
        Self {
            spec,
            baseline_w,
            held: setpoints
                .into_iter()
                .map(|sp| Held {
                    sp,
                    since_version: ctx.started_ms,
                    ack: AckState::Pending,
                })
                .collect(),
            state,
            desired_version: ctx.started_ms,
            published: false,
            desired_dirty: false,
            resend: false,
            reported_version: 0,
            heard_ms,
        }
    }

    pub(crate) fn spec(&self) -> &Arc<DerSpec> {
        &self.spec
    }

    /// What the DER contributes to its site's envelope now (the envelope
    /// without its empty kinds).
    pub(crate) fn flex(&self) -> DerFlex {
        let response = der_response(
            &self.state,
            self.baseline_w,
            self.held.iter().map(|h| {
                (
                    signed(&h.sp),
                    h.ack != AckState::Pending,
                    h.ack == AckState::Applied,
                )
            }),
        );
        DerFlex {
            kind: self.spec.rating.kind,
            flex: der_flex(&self.spec.rating, &self.state),
            response,
        }
    }

    /// Applies a newer state; returns the new envelope. Older or equal
    /// sequence numbers (except 0, "unsequenced") are refused. `heard_ms` is
    /// set for telemetry (the DER then goes offline when it falls silent).
    pub(crate) fn set_state(
        &mut self,
        state: DerState,
        heard_ms: Option<u64>,
        ctx: &FleetCtx,
    ) -> Result<DerFlex, StateRejected> {
        if state.seq != 0 && state.seq <= self.state.seq {
            Metrics::inc(&ctx.metrics.states_rejected_stale);
            return Err(StateRejected::Stale {
                got: state.seq,
                have: self.state.seq,
            });
        }
        if self.held.is_empty() {
            self.baseline_w = state.power_w;
        }
        self.state = state;
        if heard_ms.is_some() {
            self.heard_ms = heard_ms;
        }
        // Counted by the site (once per batch: a shared counter bumped per
        // DER bounced its cache line between the workers).
        Ok(self.flex())
    }

    /// Marks the DER offline if its device has been silent since `cutoff_ms`;
    /// true if it went offline. Telemetry brings it back.
    pub(crate) fn time_out(&mut self, cutoff_ms: u64) -> bool {
        match self.heard_ms {
            Some(h) if h < cutoff_ms && self.state.online => {
                self.state.online = false;
                true
            }
            _ => false,
        }
    }

    /// The gateway of its site went offline (its last will).
    pub(crate) fn gateway_offline(&mut self) -> bool {
        let was = self.state.online;
        self.state.online = false;
        was
    }

    /// Still waiting to hear from a device that is online by telemetry.
    pub(crate) fn tracked_online(&self) -> bool {
        self.heard_ms.is_some() && self.state.online
    }

    /// Drops setpoints whose order has ended; true if any was dropped.
    /// (The device drops them by itself at their end: no document is sent.)
    pub(crate) fn expire(&mut self, now: u64) -> bool {
        let before = self.held.len();
        self.held.retain(|h| h.sp.end_ms > now);
        self.held.len() != before
    }

    /// What is persisted of this DER (its site writes one record for all).
    pub(crate) fn record(&self) -> DerRecord {
        DerRecord {
            id: self.spec.id.clone(),
            state: self.state.clone(),
            setpoints: self.setpoints(),
        }
    }

    pub(crate) fn setpoints(&self) -> Vec<Setpoint> {
        self.held.iter().map(|h| h.sp.clone()).collect()
    }

    fn committed(&self, dir: Direction, except: &DispatchId) -> u64 {
        self.held
            .iter()
            .filter(|h| h.sp.direction == dir && &h.sp.dispatch != except)
            .map(|h| h.sp.power_w)
            .sum()
    }

    fn set_setpoint(&mut self, sp: Option<Setpoint>, id: &DispatchId) {
        let before = self.held.iter().find(|h| &h.sp.dispatch == id).cloned();
        self.held.retain(|h| &h.sp.dispatch != id);
        if self.held.is_empty() && sp.is_some() {
            self.baseline_w = self.state.power_w;
        }
        if let Some(sp) = sp {
            let unchanged = before.as_ref().is_some_and(|b| b.sp == sp);
            // A DER holds one order or two: room for four (what a first
            // push reserves) cost ~360 B per DER in a 1M-DER split.
            self.held.reserve_exact(1);
            self.held.push(match before {
                Some(b) if unchanged => b,
                _ => Held {
                    sp,
                    since_version: u64::MAX, // set when published
                    ack: AckState::Pending,
                },
            });
            self.desired_dirty |= !unchanged;
        } else {
            self.desired_dirty |= before.is_some();
        }
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
        let sp = (accepted > 0).then(|| {
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
            Setpoint {
                dispatch: order.id.clone(),
                direction: dir,
                power_w: accepted,
                target_power_w: target,
                start_ms: order.start_ms,
                end_ms: order.end_ms(),
                ramp_w_per_min: ramp,
            }
        });
        self.set_setpoint(sp, &order.id);
        Metrics::inc(&ctx.metrics.dispatch_shares);
        DispatchOutcome {
            accepted_w: accepted,
            ders: u64::from(accepted > 0),
            resplits: 0,
            reason,
            epoch: 0,
        }
    }

    /// Withdraws the setpoint of an order, if any; true if there was one.
    pub(crate) fn cancel(&mut self, id: &DispatchId) -> bool {
        let had = self.held.iter().any(|h| &h.sp.dispatch == id);
        self.set_setpoint(None, id);
        had
    }

    /// The next desired document, if the setpoints changed since the last
    /// one; marks new setpoints as carried by its version.
    pub(crate) fn take_desired(&mut self, now_ms: u64) -> Option<Desired> {
        let resend = std::mem::take(&mut self.resend);
        if self.desired_dirty {
            self.desired_dirty = false;
            return Some(self.publish(now_ms));
        }
        resend.then(|| self.document(self.desired_version))
    }

    /// The document last published, if any (unchanged: same version).
    pub(crate) fn current_document(&self) -> Option<Desired> {
        self.published.then(|| self.document(self.desired_version))
    }

    fn document(&self, version: u64) -> Desired {
        Desired {
            v: vpp_protocol::VERSION,
            version,
            setpoints: self
                .held
                .iter()
                .map(|h| DesiredSetpoint::from(&h.sp))
                .collect(),
        }
    }

    /// The current desired document again (after a broker reconnect), if
    /// there is anything the device should know; with `unapplied_only`, only
    /// if a setpoint it holds is not yet acked as applied.
    pub(crate) fn republish(&mut self, now_ms: u64, unapplied_only: bool) -> Option<Desired> {
        let due = if unapplied_only {
            self.held.iter().any(|h| h.ack != AckState::Applied)
        } else {
            self.published || !self.held.is_empty()
        };
        due.then(|| self.publish(now_ms))
    }

    fn publish(&mut self, now_ms: u64) -> Desired {
        self.desired_version = (self.desired_version + 1).max(now_ms);
        self.published = true;
        let v = self.desired_version;
        for h in &mut self.held {
            h.since_version = h.since_version.min(v);
        }
        self.document(v)
    }

    /// Applies a device ack. Returns the setpoints the device rejected (to be
    /// re-split by the site), or why the ack itself is rejected.
    pub(crate) fn ack(&mut self, ack: &Ack, ctx: &FleetCtx) -> Result<Vec<DeviceRefusal>, Reject> {
        if ack.version > self.desired_version || !self.published {
            return Err(Reject::UnknownVersion);
        }
        let covered = |h: &Held| h.since_version <= ack.version;
        let m = &ctx.metrics;
        match ack.status {
            AckStatus::Accepted => {
                Metrics::inc(&m.acks_accepted);
                for h in self.held.iter_mut().filter(|h| covered(h)) {
                    if h.ack == AckState::Pending {
                        h.ack = AckState::Accepted;
                    }
                }
                Ok(Vec::new())
            }
            AckStatus::Applied => {
                Metrics::inc(&m.acks_applied);
                self.reported_version = self.reported_version.max(ack.version);
                for h in self.held.iter_mut().filter(|h| covered(h)) {
                    h.ack = AckState::Applied;
                }
                Ok(Vec::new())
            }
            AckStatus::Rejected => {
                Metrics::inc(&m.acks_rejected);
                let reason: String = ack
                    .reason
                    .as_deref()
                    .unwrap_or("no reason given")
                    .chars()
                    .take(200)
                    .collect();
                let (gone, kept): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|h| covered(h) && h.ack == AckState::Pending);
                self.held = kept;
                self.desired_dirty |= !gone.is_empty();
                Ok(gone
                    .into_iter()
                    .map(|h| DeviceRefusal {
                        dispatch: h.sp.dispatch,
                        power_w: h.sp.power_w,
                        reason: format!("device rejected: {reason}"),
                    })
                    .collect())
            }
        }
    }

    /// The device reported the desired version it holds. A device that
    /// holds an older one than the latest published (it reconnected, and the
    /// broker did not deliver the retained document) is sent it again: true.
    pub(crate) fn reported(&mut self, version: u64) -> Result<bool, Reject> {
        if self.published && version > self.desired_version {
            return Err(Reject::UnknownVersion);
        }
        self.reported_version = version;
        let behind = self.published && version < self.desired_version;
        self.resend |= behind;
        Ok(behind)
    }

    pub(crate) fn view(&self, env: &FlexEnvelope) -> NodeView {
        let c = |d| {
            self.held
                .iter()
                .filter(|h| h.sp.direction == d)
                .map(|h| h.sp.power_w)
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
            setpoints: self.setpoints(),
            active_dispatches: self.held.iter().map(|h| h.sp.dispatch.clone()).collect(),
            device: Some(DeviceView {
                desired_version: self.published.then_some(self.desired_version),
                reported_version: self.reported_version,
                acks: self
                    .held
                    .iter()
                    .map(|h| (h.sp.dispatch.clone(), h.ack))
                    .collect(),
                heard_ms: self.heard_ms,
            }),
        }
    }
}
