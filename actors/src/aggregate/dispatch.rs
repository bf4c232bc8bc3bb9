//! The closed-loop dispatch split of one aggregate (see the parent module).

use std::sync::Arc;

use std::time::Duration;

use ractor::ActorRef;

use tokio::time::Instant;
use vpp_domain::split::{resplit, Candidate};
use vpp_domain::{DispatchId, DispatchOrder, NodeAllocation, NodeKind, Refusal};

use super::{Aggregate, Alloc, Parent, Target};
use crate::build::FleetCtx;
use crate::messages::{settle, AggregateMsg, DispatchOutcome, DispatchShare};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::remote::{call_until, RemoteCall, RemoteCast, RemoteReply};

/// What a child lost of its share, as reported to its parent.
pub(crate) enum Loss {
    /// A hosted DER dropped this much (its device rejected the setpoint).
    Cut(u64),
    /// A child aggregate now holds `holds_w`, as of its allocation `epoch`.
    Holds { holds_w: u64, epoch: u64 },
}

/// Asks one child (here or on another member) to hold `share_w` of
/// `order`, answering by `deadline`.
async fn ask(
    child: Target,
    ctx: Arc<FleetCtx>,
    order: Arc<DispatchOrder>,
    share_w: u64,
    deadline: Instant,
    reassert: bool,
) -> Result<DispatchOutcome, String> {
    let now = Instant::now();
    let timeout = deadline.saturating_duration_since(now);
    // Give the child's own children a smaller window than ours, so that a
    // silent grandchild is detected below us before we give up on the child.
    let inner = timeout.mul_f32(0.75);
    match child {
        Target::Local(a) => {
            let share = DispatchShare {
                order,
                share_w,
                deadline: now + inner,
                reassert,
            };
            settle(
                a.call(|rp| AggregateMsg::Dispatch(share, rp), Some(timeout))
                    .await,
            )
        }
        Target::Remote(id, kind) => {
            let call = RemoteCall::Dispatch {
                to: id.clone(),
                order: (*order).clone(),
                share_w,
                timeout_ms: inner.as_millis() as u64,
                reassert,
            };
            match call_until(&ctx, (&id, kind), call, timeout).await? {
                RemoteReply::Outcome(o) => Ok(o),
                other => Err(format!("{id} answered {other:?}")),
            }
        }
        Target::Down => Err("child actor is down".into()),
    }
}

/// Withdraws `id` from a child without waiting for it.
fn withdraw(child: Target, ctx: Arc<FleetCtx>, id: DispatchId, timeout: Duration) {
    match child {
        Target::Local(a) => {
            let _ = a.cast(AggregateMsg::Cancel(id, None));
        }
        Target::Remote(to, kind) => {
            tokio::spawn(async move {
                let call = RemoteCall::Cancel { to: to.clone(), id };
                if let Err(e) = call_until(&ctx, (&to, kind), call, timeout).await {
                    tracing::warn!(node = %to, error = %e, "withdrawing a share failed");
                }
            });
        }
        Target::Down => {}
    }
}

impl Aggregate {
    /// Places `share.share_w` of the order on the children (total, not
    /// increment; see [`DispatchShare`]).
    pub(crate) async fn dispatch(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        share: DispatchShare,
    ) -> DispatchOutcome {
        let span = tracing::debug_span!("dispatch", node = %self.id, order = %share.order.id, share_w = share.share_w);
        // Instrumented, not entered across the awaits (see Fleet::dispatch).
        tracing::Instrument::instrument(self.place(myself, share), span).await
    }

    async fn place(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        share: DispatchShare,
    ) -> DispatchOutcome {
        let order = share.order.clone();
        self.expire(now_ms());
        let n = self.children.len();

        // A smaller share than already placed: start over for this order.
        if let Some(a) = self.allocs.get(&order.id) {
            if share.share_w < a.shares.iter().sum::<u64>() {
                self.cancel(myself, &order.id).await;
            }
        }
        let dir = order.direction;
        let committed = self.committed(dir, Some(&order.id));
        let candidates: Vec<Candidate> = self
            .children
            .iter()
            .zip(&committed)
            .map(|(c, used)| Candidate {
                available_w: if c.failed {
                    0
                } else {
                    c.env.available_w(dir).saturating_sub(*used)
                },
                cost: c.env.mean_cost(dir),
                last_dispatched_ms: c.last_dispatched_ms,
            })
            .collect();

        let mut alloc = self.allocs.remove(&order.id).unwrap_or_else(|| Alloc {
            order: order.clone(),
            shares: vec![0; n],
            outcomes: vec![None; n],
            refused: vec![false; n],
            epoch: 0,
            record: NodeAllocation::empty(order.id.clone(), self.id.clone()),
        });
        let mut refused = std::mem::take(&mut alloc.refused);
        let mut rounds = 0u32;
        let mut withdrawn: Vec<usize> = Vec::new();
        // A reassert first asks every holder for what it holds (no new
        // placement), then places the gap as usual.
        let mut confirming = share.reassert;
        loop {
            let placed: u64 = alloc.shares.iter().sum();
            let gap = share.share_w.saturating_sub(placed);
            let (asks, extra): (Vec<usize>, Vec<u64>) = if confirming {
                let holders = (0..n).filter(|&i| alloc.shares[i] > 0).collect();
                (holders, vec![0; n])
            } else {
                if gap == 0 {
                    break;
                }
                let extra =
                    resplit(gap, &candidates, &alloc.shares, &refused, self.strategy).allocations;
                ((0..n).filter(|&i| extra[i] > 0).collect(), extra)
            };
            let confirm_round = std::mem::take(&mut confirming);
            if asks.is_empty() {
                if confirm_round {
                    continue;
                }
                break;
            }
            if rounds > 0 && !confirm_round {
                Metrics::inc(&self.ctx.metrics.resplits);
            }
            let answers: Vec<Result<DispatchOutcome, String>> = if self.ders.is_empty() {
                let futs = asks.iter().map(|&i| {
                    ask(
                        self.target(i),
                        self.ctx.clone(),
                        order.clone(),
                        alloc.shares[i] + extra[i],
                        share.deadline,
                        share.reassert,
                    )
                });
                futures::future::join_all(futs).await
            } else {
                // Hosted DER actors answer at once.
                let now = now_ms();
                let mut out = Vec::with_capacity(asks.len());
                self.as_one_report(|this| {
                    for &i in &asks {
                        let want = alloc.shares[i] + extra[i];
                        let available = this.children[i].env.available_w(order.direction);
                        out.push(this.with_der(myself, i, |d, ctx| {
                            d.expire(now);
                            d.dispatch(&order, want, available, ctx)
                        }));
                        this.der_changed(myself, i);
                    }
                });
                self.ders_dirty = true;
                self.desired_pending = true;
                out
            };
            let now = now_ms();
            for (&i, answer) in asks.iter().zip(answers) {
                let asked = alloc.shares[i] + extra[i];
                let child = &mut self.children[i];
                child.last_dispatched_ms = Some(now);
                match answer {
                    Ok(out) => {
                        if out.accepted_w < asked {
                            refused[i] = true;
                            Metrics::inc(&self.ctx.metrics.dispatch_refusals);
                            alloc.record.refusals.push(Refusal {
                                child: child.id.clone(),
                                refused_w: asked - out.accepted_w,
                                reason: out.reason.clone().unwrap_or_else(|| "refused".into()),
                            });
                        }
                        alloc.shares[i] = out.accepted_w.min(asked);
                        alloc.outcomes[i] = Some(out);
                    }
                    Err(reason) => {
                        refused[i] = true;
                        Metrics::inc(&self.ctx.metrics.dispatch_child_failures);
                        tracing::warn!(node = %self.id, child = %child.id, %reason, "dispatch share failed");
                        withdrawn.push(i);
                        alloc.record.refusals.push(Refusal {
                            child: child.id.clone(),
                            refused_w: asked,
                            reason,
                        });
                        alloc.shares[i] = 0;
                        alloc.outcomes[i] = None;
                    }
                }
            }
            // A child that failed may still act on its share later:
            // withdraw it.
            for i in withdrawn.drain(..) {
                let timeout = self.ctx.config.dispatch_timeout;
                withdraw(self.target(i), self.ctx.clone(), order.id.clone(), timeout);
            }
            if confirm_round {
                continue;
            }
            if rounds >= self.ctx.config.max_resplits {
                break;
            }
            rounds += 1;
        }

        alloc.refused = refused;
        let placed: u64 = alloc.shares.iter().sum();
        let rec = &mut alloc.record;
        rec.requested_w = share.share_w;
        rec.allocated_w = placed;
        rec.shortfall_w = share.share_w.saturating_sub(placed);
        rec.resplits += rounds.saturating_sub(1);
        rec.children = self
            .children
            .iter()
            .zip(&alloc.shares)
            .filter(|(_, w)| **w > 0)
            .map(|(c, w)| (c.id.clone(), *w))
            .collect();
        // A site's allocation is its DERs' setpoints, persisted with them.
        if self.ders.is_empty() {
            self.ctx.journal.allocation(rec);
        }
        let ders = alloc.outcomes.iter().flatten().map(|o| o.ders).sum();
        let sub_resplits: u64 = alloc.outcomes.iter().flatten().map(|o| o.resplits).sum();
        let reason = (rec.shortfall_w > 0).then(|| {
            if rec.refusals.is_empty() {
                format!("only {placed} W of {} W available", share.share_w)
            } else {
                format!(
                    "short {} W after {} refusal(s), first: {}: {}",
                    rec.shortfall_w,
                    rec.refusals.len(),
                    rec.refusals[0].child,
                    rec.refusals[0].reason
                )
            }
        });
        alloc.epoch += 1;
        let out = DispatchOutcome {
            accepted_w: placed,
            ders,
            resplits: u64::from(rec.resplits) + sub_resplits,
            reason,
            epoch: alloc.epoch,
        };
        // Kept while it places anything, or to show who refused and why.
        if placed > 0 || !alloc.record.refusals.is_empty() {
            self.allocs.insert(alloc);
        }
        out
    }

    /// Withdraws an order from this node and every child that holds a share.
    pub(crate) async fn cancel(&mut self, myself: &ActorRef<AggregateMsg>, id: &DispatchId) {
        let Some(alloc) = self.allocs.remove(id) else {
            return;
        };
        let holders: Vec<usize> = (0..alloc.shares.len())
            .filter(|&i| alloc.shares[i] > 0)
            .collect();
        if !self.ders.is_empty() {
            self.as_one_report(|this| {
                for i in holders {
                    let _ = this.with_der(myself, i, |d, _| d.cancel(id));
                    this.der_changed(myself, i);
                }
            });
            self.ders_dirty = true;
            self.desired_pending = true;
            return;
        }
        let timeout = self.ctx.config.dispatch_timeout;
        let futs = holders.into_iter().map(|i| {
            let local_id = id.clone();
            self.call_child(
                i,
                move |rp| AggregateMsg::Cancel(local_id, Some(rp)),
                RemoteCall::Cancel {
                    to: self.children[i].id.clone(),
                    id: id.clone(),
                },
                |r| matches!(r, RemoteReply::Done).then_some(()),
                timeout,
            )
        });
        futures::future::join_all(futs).await;
    }

    /// Child `idx` can no longer hold `refused_w` of its share of order `id`
    /// (a device rejected its setpoint after the split): take it off the
    /// child, re-split it among the others, and pass what still cannot be
    /// placed on to the parent.
    pub(crate) async fn share_refused(
        &mut self,
        myself: &ActorRef<AggregateMsg>,
        idx: usize,
        id: &DispatchId,
        loss: Loss,
        reason: String,
    ) {
        let Some(alloc) = self.allocs.get_mut(id) else {
            return; // ended or cancelled meanwhile
        };
        if idx >= alloc.shares.len() {
            return;
        }
        let before: u64 = alloc.shares.iter().sum();
        let cut = match loss {
            Loss::Cut(w) => w.min(alloc.shares[idx]),
            Loss::Holds { holds_w, epoch } => {
                // We asked the child again after it sent this: its answer
                // then already said what it holds.
                let seen = alloc.outcomes[idx].as_ref().map_or(0, |o| o.epoch);
                if epoch <= seen {
                    return;
                }
                if let Some(o) = alloc.outcomes[idx].as_mut() {
                    o.epoch = epoch;
                    o.accepted_w = holds_w;
                }
                alloc.shares[idx].saturating_sub(holds_w)
            }
        };
        if cut == 0 {
            return;
        }
        alloc.shares[idx] -= cut;
        alloc.refused[idx] = true;
        Metrics::inc(&self.ctx.metrics.late_refusals);
        tracing::info!(node = %self.id, child = %self.children[idx].id, order = %id, refused_w = cut, %reason, "share refused after the split; re-splitting");
        alloc.record.refusals.push(Refusal {
            child: self.children[idx].id.clone(),
            refused_w: cut,
            reason: reason.clone(),
        });
        // Re-place only what the parent counts on (`before`), not the whole
        // request: a shortfall at split time was already re-split above us,
        // and taking it back here would overshoot the order.
        let requested = alloc.record.requested_w;
        let share = DispatchShare {
            order: alloc.order.clone(),
            share_w: before,
            deadline: Instant::now() + self.ctx.config.dispatch_timeout,
            reassert: false,
        };
        let out = self.dispatch(myself, share).await;
        if let Some(a) = self.allocs.get_mut(id) {
            a.record.requested_w = requested;
            a.record.shortfall_w = requested.saturating_sub(a.record.allocated_w);
            if self.ders.is_empty() {
                self.ctx.journal.allocation(&a.record);
            }
        }
        if out.accepted_w >= before {
            return;
        }
        let reason = out.reason.unwrap_or(reason);
        match &self.parent {
            Some(Parent::Local(parent, my_idx, _)) => {
                let _ = parent.cast(AggregateMsg::ShareRefused {
                    idx: *my_idx,
                    dispatch: id.clone(),
                    holds_w: out.accepted_w,
                    epoch: out.epoch,
                    reason,
                });
            }
            Some(Parent::Remote(parent, my_idx)) => {
                if let Some(link) = &self.ctx.remote {
                    link.cast(
                        NodeKind::VirtualDer,
                        RemoteCast::ShareRefused {
                            to: parent.clone(),
                            idx: *my_idx,
                            dispatch: id.clone(),
                            holds_w: out.accepted_w,
                            epoch: out.epoch,
                            reason,
                        },
                    );
                }
            }
            None => {}
        }
    }
}
