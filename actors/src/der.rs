//! The DER actor: the digital twin of one device.
//!
//! Holds the DER's rating, last known state and active setpoints. A state
//! change recomputes the envelope ([`vpp_domain::flex::der_envelope`]) and,
//! when it differs, reports it to the site. A dispatch share is accepted up to
//! what the device can do now beyond its other commitments; the rest is
//! refused with a reason, and the site re-splits it.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use vpp_domain::flex::der_envelope;
use vpp_domain::{
    DerSpec, DerState, Direction, DispatchId, FlexEnvelope, NodeId, NodeKind, NodeSpec, Setpoint,
};

use crate::build::FleetCtx;
use crate::messages::{
    AggregateMsg, DerMsg, DispatchOutcome, DispatchShare, NodeView, StateRejected,
};
use crate::metrics::Metrics;
use crate::now_ms;

/// The actor of one DER. Spawned by the fleet builder under its site.
pub(crate) struct DerActor;

pub(crate) struct DerArgs {
    pub(crate) spec: Arc<DerSpec>,
    pub(crate) state: DerState,
    pub(crate) setpoints: Vec<Setpoint>,
    pub(crate) parent: ActorRef<AggregateMsg>,
    pub(crate) idx: u32,
    pub(crate) ctx: Arc<FleetCtx>,
}

pub(crate) struct Der {
    spec: Arc<DerSpec>,
    state: DerState,
    env: FlexEnvelope,
    setpoints: Vec<Setpoint>,
    parent: ActorRef<AggregateMsg>,
    idx: u32,
    ctx: Arc<FleetCtx>,
}

impl Actor for DerActor {
    type Msg = DerMsg;
    type State = Der;
    type Arguments = DerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DerMsg>,
        a: DerArgs,
    ) -> Result<Der, ActorProcessingErr> {
        let env = der_envelope(&a.spec.rating, &a.state);
        Ok(Der {
            spec: a.spec,
            state: a.state,
            env,
            setpoints: a.setpoints,
            parent: a.parent,
            idx: a.idx,
            ctx: a.ctx,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DerMsg>,
        msg: DerMsg,
        der: &mut Der,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DerMsg::SetState(state, reply) => {
                let r = der.set_state(state);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            DerMsg::View(reply) => {
                der.expire(now_ms());
                let _ = reply.send(der.view());
            }
            DerMsg::Refresh(reply) => {
                let _ = reply.send(der.env.clone());
            }
            DerMsg::Dispatch(share, reply) => {
                let _ = reply.send(der.dispatch(share));
            }
            DerMsg::Cancel(id, reply) => {
                der.cancel(&id);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
        Ok(())
    }
}

impl Der {
    fn id(&self) -> &NodeId {
        &self.spec.id
    }

    fn set_state(&mut self, state: DerState) -> Result<(), StateRejected> {
        if state.seq != 0 && state.seq <= self.state.seq {
            Metrics::inc(&self.ctx.metrics.states_rejected_stale);
            return Err(StateRejected::Stale {
                got: state.seq,
                have: self.state.seq,
            });
        }
        self.state = state;
        Metrics::inc(&self.ctx.metrics.states_applied);
        self.ctx.journal.der_state(&self.spec.id, &self.state);
        let env = der_envelope(&self.spec.rating, &self.state);
        if env != self.env {
            self.env = env;
            self.report();
        }
        Ok(())
    }

    fn report(&self) {
        Metrics::inc(&self.ctx.metrics.reports_sent);
        // A dead parent means the tree is being torn down; nothing to do.
        let _ = self.parent.cast(AggregateMsg::ChildReport {
            idx: self.idx,
            env: Box::new(self.env.clone()),
        });
    }

    /// Drops setpoints whose order has ended.
    fn expire(&mut self, now: u64) {
        let before = self.setpoints.len();
        self.setpoints.retain(|s| s.end_ms > now);
        if self.setpoints.len() != before {
            self.ctx.journal.setpoints(self.id(), &self.setpoints);
        }
    }

    fn committed(&self, dir: Direction, except: &DispatchId) -> u64 {
        self.setpoints
            .iter()
            .filter(|s| s.direction == dir && &s.dispatch != except)
            .map(|s| s.power_w)
            .sum()
    }

    fn dispatch(&mut self, share: DispatchShare) -> DispatchOutcome {
        let order = &share.order;
        self.expire(now_ms());
        let dir = order.direction;
        let rating = &self.spec.rating;
        let (room, why) = if !self.state.online {
            (0, Some("device offline".to_string()))
        } else if !self.state.accepts_control {
            (0, Some("owner has taken local control".to_string()))
        } else {
            let room = self
                .env
                .available_w(dir)
                .saturating_sub(self.committed(dir, &order.id));
            (room, None)
        };
        let accepted = share.share_w.min(room);
        let reason = if accepted < share.share_w {
            Metrics::inc(&self.ctx.metrics.dispatch_refusals);
            Some(why.unwrap_or_else(|| format!("only {room} W available")))
        } else {
            None
        };
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
        Metrics::inc(&self.ctx.metrics.dispatch_shares);
        self.ctx.journal.setpoints(self.id(), &self.setpoints);
        DispatchOutcome {
            accepted_w: accepted,
            ders: u64::from(accepted > 0),
            resplits: 0,
            reason,
        }
    }

    fn cancel(&mut self, id: &DispatchId) {
        let before = self.setpoints.len();
        self.setpoints.retain(|s| &s.dispatch != id);
        if before != self.setpoints.len() {
            self.ctx.journal.setpoints(self.id(), &self.setpoints);
        }
    }

    fn view(&self) -> NodeView {
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
            envelope: self.env.clone(),
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
