//! Events: calling, notifying, confirming, starting (dispatch through the
//! hierarchy), completing and cancelling.
//!
//! Notices go to each participant over MQTT, retained at
//! `vpp-programs/v1/{account}/events/{event}` (QoS 1, so a participant that
//! connects later still gets the latest), and to `GET
//! /api/v1/notices/stream` (server-sent events).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vpp_domain::account::{Account, Approvals, Need, Role};
use vpp_domain::program::{
    shares, Enrollment, EnrollmentStatus, Event, EventStatus, EventTimes, GridContext,
    Participation, ParticipationStatus, Program, ProgramKind, SeasonUse,
};
use vpp_domain::units::kilo_to_unit;
use vpp_domain::{Direction, DispatchId, DispatchOrder, EnrollmentId, EventId};

use super::catalog::{get_program, may_approve};
use super::enrollments::{facts_for, get_enrollment, resource_facts, SiteIndex};
use super::{commit, draft, keys, now_ms, put, system_draft, ProgramError, Result};
use crate::node::Node;

/// Body of `POST /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Unique id (generated when absent).
    pub id: Option<String>,
    /// The program.
    pub program: String,
    /// Zones called.
    pub zones: Vec<String>,
    /// Feeders called (default: all in the zones).
    #[serde(default)]
    pub feeders: Vec<String>,
    /// Start, Unix ms (give this or `start_in_s`).
    pub start_ms: Option<u64>,
    /// Start, seconds from now.
    pub start_in_s: Option<u64>,
    /// Length, s.
    pub duration_s: u64,
    /// Ramp, kW/min.
    pub ramp_kw_per_min: Option<f64>,
    /// Reduction asked for, kW.
    pub requested_kw: f64,
    /// Price signal per kWh (decimal text).
    pub price_per_kwh: Option<String>,
    /// Grid context.
    #[serde(default)]
    pub grid: GridContext,
    /// Notify at once (default true); false keeps it a draft.
    pub notify: Option<bool>,
}

/// Body of `POST /api/v1/events/{id}/confirmations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The enrollment answering.
    pub enrollment: String,
    /// confirm, decline or opt_out.
    pub answer: Answer,
    /// Reduction committed, kW (default: the share asked for).
    pub committed_kw: Option<f64>,
    /// Confidence, % (default 100).
    pub confidence_pct: Option<u8>,
}

/// A participant's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Will deliver.
    Confirm,
    /// Will not take part.
    Decline,
    /// Withdraws a confirmation before the start.
    OptOut,
}

/// What a participant is told.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// To whom.
    pub account: String,
    /// `event` (called or changed) or `cancelled`.
    pub kind: &'static str,
    /// The event, as participants see it.
    pub event: EventNotice,
}

/// An event as a participant sees it: timing, ramp, grid, price and its own
/// part.
#[derive(Debug, Clone, Serialize)]
pub struct EventNotice {
    /// Event id.
    pub id: String,
    /// Program id.
    pub program: String,
    /// Status.
    pub status: EventStatus,
    /// Zones called.
    pub zones: Vec<String>,
    /// Feeders called.
    pub feeders: Vec<String>,
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End, Unix ms.
    pub end_ms: u64,
    /// Ramp, kW/min.
    pub ramp_kw_per_min: Option<f64>,
    /// Price per kWh.
    pub price_per_kwh: Option<String>,
    /// Grid context.
    pub grid: GridContext,
    /// The enrollment concerned.
    pub enrollment: String,
    /// Its resource.
    pub resource: String,
    /// What is asked of it, kW.
    pub requested_kw: f64,
    /// Its answer so far.
    pub participation: ParticipationStatus,
    /// Its committed kW.
    pub committed_kw: f64,
    /// Expected load without the event, kW.
    pub baseline_kw: Option<f64>,
    /// Load to aim for, kW.
    pub target_kw: Option<f64>,
}

fn kw(w: u64) -> f64 {
    w as f64 / 1000.0
}

fn notice(kind: &'static str, e: &Event, p: &Participation) -> Notice {
    Notice {
        account: p.account.to_string(),
        kind,
        event: EventNotice {
            id: e.id.to_string(),
            program: e.program.to_string(),
            status: e.status,
            zones: e.zones.clone(),
            feeders: e.feeders.clone(),
            start_ms: e.start_ms,
            end_ms: e.end_ms(),
            ramp_kw_per_min: e.ramp_w_per_min.map(kw),
            price_per_kwh: e.price_per_kwh.clone(),
            grid: e.grid.clone(),
            enrollment: p.enrollment.to_string(),
            resource: p.resource.to_string(),
            requested_kw: kw(p.requested_w),
            participation: p.status,
            committed_kw: kw(p.committed_w),
            baseline_kw: p.baseline_w.map(|w| w as f64 / 1000.0),
            target_kw: p.target_w.map(|w| w as f64 / 1000.0),
        },
    }
}

/// Sends notices for every participant of `e` (after the commit).
fn send_notices(node: &Node, kind: &'static str, e: &Event) {
    let programs = node.programs();
    for p in &e.participants {
        let n = notice(kind, e, p);
        if let Some(mqtt) = programs.mqtt.get() {
            let topic = format!("vpp-programs/v1/{}/events/{}", n.account, e.id);
            mqtt(topic, serde_json::to_vec(&n).unwrap_or_default());
        }
        let _ = programs.notices.send(n);
    }
}

pub(crate) fn get_event(node: &Node, id: &str) -> Result<Event> {
    node.store()
        .registry_get(&keys::event(id))?
        .ok_or_else(|| ProgramError::NotFound(format!("no event {id}")))
}

/// Events and seconds already called in `p`'s season (cancelled drafts do
/// not count).
fn season_use(events: &[Event], p: &Program, except: &EventId) -> SeasonUse {
    let mut u = SeasonUse::default();
    for e in events {
        if e.program == p.id
            && &e.id != except
            && e.start_ms >= p.season.start_ms
            && e.start_ms < p.season.end_ms
            && !(e.status == EventStatus::Cancelled && e.times.notified_ms.is_none())
        {
            u.events += 1;
            u.seconds += e.duration_s;
        }
    }
    u
}

/// Whether `caller` may call events: only verified utilities start events
/// (an operator may cancel them, see [`may_cancel`]).
fn may_call(caller: &Account, p: &Program, zones: &[String]) -> Result<()> {
    if caller.role != Role::Utility {
        return Err(ProgramError::Forbidden(format!(
            "only the program's utility calls events; {} is a {}",
            caller.id, caller.role
        )));
    }
    may_cancel(caller, p, zones)
}

/// Whether `caller` may cancel events of `p`: its utility (within its
/// jurisdiction) or an operator.
fn may_cancel(caller: &Account, p: &Program, zones: &[String]) -> Result<()> {
    caller
        .require(Need::VerifiedUtility)
        .map_err(ProgramError::Forbidden)?;
    if caller.role == Role::Utility && caller.id != p.owner {
        return Err(ProgramError::Forbidden(format!(
            "program {} belongs to {}",
            p.id, p.owner
        )));
    }
    caller.covers_zones(zones).map_err(ProgramError::Forbidden)
}

fn generated_id(now: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("ev-{now}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Calls an event. Emergency events wait as drafts for `auth.quorum`
/// approvers; others are notified at once unless `notify` is false.
pub async fn create_event(node: &Arc<Node>, caller: &Account, req: EventRequest) -> Result<Event> {
    if caller.role != Role::Utility {
        return Err(ProgramError::Forbidden(format!(
            "only utilities call events; {} is a {}",
            caller.id, caller.role
        )));
    }
    let store = node.store();
    let program = get_program(store, &req.program)
        .map_err(|_| ProgramError::invalid(format!("program: no program {}", req.program)))?;
    may_call(caller, &program, &req.zones)?;
    let now = now_ms();
    let id = EventId::new(req.id.unwrap_or_else(|| generated_id(now)))
        .map_err(|e| ProgramError::invalid(format!("id: {e}")))?;
    let start_ms = match (req.start_ms, req.start_in_s) {
        (Some(_), Some(_)) => {
            return Err(ProgramError::invalid(
                "give start_ms or start_in_s, not both",
            ))
        }
        (Some(ms), None) => ms,
        (None, Some(s)) if s <= 366 * 24 * 3600 => now + s * 1000,
        (None, Some(_)) => return Err(ProgramError::invalid("start_in_s: more than a year ahead")),
        (None, None) => return Err(ProgramError::invalid("give start_ms or start_in_s")),
    };
    let requested_w = kilo_to_unit(req.requested_kw)
        .map_err(|e| ProgramError::invalid(format!("requested_kw: {e}")))?;
    let ramp_w_per_min = req
        .ramp_kw_per_min
        .map(kilo_to_unit)
        .transpose()
        .map_err(|e| ProgramError::invalid(format!("ramp_kw_per_min: {e}")))?;
    let mut e = Event {
        id: id.clone(),
        program: program.id.clone(),
        zones: req.zones,
        feeders: req.feeders,
        start_ms,
        duration_s: req.duration_s,
        ramp_w_per_min,
        requested_w,
        price_per_kwh: req.price_per_kwh,
        grid: req.grid,
        status: EventStatus::Draft,
        created_by: caller.id.clone(),
        created_ms: now,
        times: EventTimes::default(),
        approvals: None,
        participants: Vec::new(),
    };
    let _g = node.programs().lock.lock().await;
    if store.registry_get::<Event>(&keys::event(&id))?.is_some() {
        return Err(ProgramError::Conflict(format!("event {id} exists")));
    }
    let events: Vec<Event> = store.registry_scan("event/")?;
    e.check(&program, now, season_use(&events, &program, &id))
        .map_err(ProgramError::Invalid)?;
    let mut action = "event.create";
    if program.kind == ProgramKind::Emergency {
        let a = Approvals::proposed(node.programs().quorum, caller.id.clone());
        let complete = a.complete();
        e.approvals = Some(a);
        if complete && req.notify != Some(false) {
            fill_participants(node, &program, &mut e, now).await?;
            action = "event.create_notify";
        }
    } else if req.notify != Some(false) {
        fill_participants(node, &program, &mut e, now).await?;
        action = "event.create_notify";
    }
    commit(
        node,
        vec![put(keys::event(&id), &e)?],
        draft(
            caller,
            action,
            keys::event(&id),
            format!(
                "{} kW in {} from {} for {} s",
                kw(e.requested_w),
                e.zones.join(","),
                e.start_ms,
                e.duration_s
            ),
        ),
    )
    .await?;
    drop(_g);
    if e.status == EventStatus::Notified {
        send_notices(node, "event", &e);
    }
    Ok(e)
}

/// Finds the enrollments an event calls, gives each its share and
/// confirms the automatic ones; moves the event to `notified`.
async fn fill_participants(node: &Node, p: &Program, e: &mut Event, now: u64) -> Result<()> {
    let enrollments: Vec<Enrollment> = node.store().registry_scan("enrollment/")?;
    let index = SiteIndex::load(node).await?;
    let mut called: Vec<Enrollment> = Vec::new();
    for en in enrollments {
        if en.program != p.id || en.status != EnrollmentStatus::Active {
            continue;
        }
        let Ok(raw) = resource_facts(node, en.resource.as_str(), Some(&index)).await else {
            continue; // resource left the hierarchy
        };
        let facts = facts_for(&raw, p);
        if !e.calls(&facts)
            || !en.available(e.start_ms, e.end_ms(), p.utc_offset_min)
            || e.start_ms < now.saturating_add(en.notice_s * 1000)
        {
            continue;
        }
        called.push(en);
    }
    let committed: Vec<u64> = called.iter().map(|c| c.committed_w).collect();
    let share = shares(e.requested_w, &committed);
    e.participants = Vec::with_capacity(called.len());
    for (en, w) in called.iter().zip(share) {
        let mut part = Participation {
            enrollment: en.id.clone(),
            account: en.account.clone(),
            resource: en.resource.clone(),
            requested_w: w,
            status: ParticipationStatus::Pending,
            committed_w: 0,
            confidence_pct: 0,
            baseline_w: None,
            target_w: None,
            auto: false,
            responded_ms: None,
            dispatch: None,
        };
        if en.auto_confirm && w > 0 {
            part.status = ParticipationStatus::Confirmed;
            part.committed_w = w;
            part.confidence_pct = 100;
            part.auto = true;
            part.responded_ms = Some(now);
            set_baseline(node, p, e, &mut part).await;
        }
        e.participants.push(part);
    }
    e.status = EventStatus::Notified;
    e.times.notified_ms = Some(now);
    Ok(())
}

/// Fills the expected baseline and the target load of a confirmation
/// (none when meter data are too thin for the program's method).
async fn set_baseline(node: &Node, p: &Program, e: &Event, part: &mut Participation) {
    match super::settle::expected_baseline_w(node, p, e, &part.resource).await {
        Ok(b) => {
            part.baseline_w = Some(b);
            part.target_w = Some(b - part.committed_w as i64);
        }
        Err(why) => {
            tracing::debug!(event = %e.id, resource = %part.resource, %why, "no baseline at confirmation");
            part.baseline_w = None;
            part.target_w = None;
        }
    }
}

/// Approves an emergency event; at quorum it is notified.
pub async fn approve_event(node: &Arc<Node>, caller: &Account, id: &str) -> Result<Event> {
    let _g = node.programs().lock.lock().await;
    let mut e = get_event(node, id)?;
    let p = get_program(node.store(), e.program.as_str())?;
    may_approve(caller, &p)?;
    if e.status != EventStatus::Draft {
        return Err(ProgramError::Conflict(format!(
            "event {id} is {:?}; only drafts wait for approval",
            e.status
        )));
    }
    let a = e
        .approvals
        .get_or_insert_with(|| Approvals::proposed(node.programs().quorum, e.created_by.clone()));
    a.add(caller.id.clone()).map_err(ProgramError::Forbidden)?;
    let now = now_ms();
    let action = if a.complete() {
        if e.start_ms <= now {
            return Err(ProgramError::Conflict(format!(
                "event {id} was due to start before it was approved; call a new one"
            )));
        }
        fill_participants(node, &p, &mut e, now).await?;
        "event.approve_notify"
    } else {
        "event.approve"
    };
    commit(
        node,
        vec![put(keys::event(&e.id), &e)?],
        draft(caller, action, keys::event(&e.id), String::new()),
    )
    .await?;
    drop(_g);
    if e.status == EventStatus::Notified {
        send_notices(node, "event", &e);
    }
    Ok(e)
}

/// Sends a draft (non-emergency) event out.
pub async fn notify_event(node: &Arc<Node>, caller: &Account, id: &str) -> Result<Event> {
    let _g = node.programs().lock.lock().await;
    let mut e = get_event(node, id)?;
    let p = get_program(node.store(), e.program.as_str())?;
    may_call(caller, &p, &e.zones)?;
    if e.status != EventStatus::Draft {
        return Err(ProgramError::Conflict(format!(
            "event {id} is {:?}, not a draft",
            e.status
        )));
    }
    if p.kind == ProgramKind::Emergency && !e.approvals.as_ref().is_some_and(Approvals::complete) {
        return Err(ProgramError::Forbidden(format!(
            "event {id} is an emergency event: it needs {} approvers (POST /api/v1/events/{id}/approve)",
            node.programs().quorum
        )));
    }
    let now = now_ms();
    if e.start_ms < now.saturating_add(p.notice_s * 1000) {
        return Err(ProgramError::invalid(format!(
            "start is less than the program's notice of {} s away",
            p.notice_s
        )));
    }
    fill_participants(node, &p, &mut e, now).await?;
    commit(
        node,
        vec![put(keys::event(&e.id), &e)?],
        draft(caller, "event.notify", keys::event(&e.id), String::new()),
    )
    .await?;
    drop(_g);
    send_notices(node, "event", &e);
    Ok(e)
}

/// A participant answers: confirm (with kW and confidence), decline, or
/// opt out of a confirmation, all before the start.
pub async fn confirm(
    node: &Arc<Node>,
    caller: &Account,
    id: &str,
    req: ConfirmRequest,
) -> Result<Event> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let _g = node.programs().lock.lock().await;
    let mut e = get_event(node, id)?;
    let en = get_enrollment(node, &req.enrollment).map_err(|_| {
        ProgramError::invalid(format!("enrollment: no enrollment {}", req.enrollment))
    })?;
    if caller.role != Role::Operator && caller.id != en.account {
        return Err(ProgramError::Forbidden(format!(
            "enrollment {} is not {}'s",
            en.id, caller.id
        )));
    }
    if en.status != EnrollmentStatus::Active && req.answer == Answer::Confirm {
        return Err(ProgramError::Conflict(format!(
            "enrollment {} has left the program; it cannot confirm",
            en.id
        )));
    }
    let now = now_ms();
    if e.status != EventStatus::Notified || now >= e.start_ms {
        return Err(ProgramError::Conflict(format!(
            "event {id} is {:?}{}; answers are taken between notification and start",
            e.status,
            if now >= e.start_ms {
                " and has started"
            } else {
                ""
            }
        )));
    }
    let p = get_program(node.store(), e.program.as_str())?;
    let Some(i) = e.participants.iter().position(|x| x.enrollment == en.id) else {
        return Err(ProgramError::invalid(format!(
            "enrollment {} was not called by event {id}",
            en.id
        )));
    };
    let mut part = e.participants[i].clone();
    match req.answer {
        Answer::Confirm => {
            let w = match req.committed_kw {
                Some(k) => kilo_to_unit(k)
                    .map_err(|err| ProgramError::invalid(format!("committed_kw: {err}")))?,
                None => part.requested_w,
            };
            if w == 0 || w > en.committed_w {
                return Err(ProgramError::invalid(format!(
                    "committed_kw {} must be above 0 and at most the enrollment's {} kW",
                    kw(w),
                    kw(en.committed_w)
                )));
            }
            let c = req.confidence_pct.unwrap_or(100);
            if c > 100 {
                return Err(ProgramError::invalid("confidence_pct: 0 to 100"));
            }
            part.status = ParticipationStatus::Confirmed;
            part.committed_w = w;
            part.confidence_pct = c;
            set_baseline(node, &p, &e, &mut part).await;
        }
        Answer::Decline => {
            if part.status == ParticipationStatus::Confirmed {
                return Err(ProgramError::Conflict(
                    "already confirmed: answer opt_out to withdraw".into(),
                ));
            }
            part.status = ParticipationStatus::Declined;
            part.committed_w = 0;
        }
        Answer::OptOut => {
            if part.status != ParticipationStatus::Confirmed {
                return Err(ProgramError::Conflict(
                    "only a confirmation can be opted out of; answer decline instead".into(),
                ));
            }
            // The enrollment's opt-out terms: beyond its allowance the
            // confirmation stands (and non-delivery settles as such).
            let used = opt_outs_this_season(node, &p, &en.id)?;
            if used >= en.max_opt_outs_per_season {
                return Err(ProgramError::Conflict(format!(
                    "enrollment {} has used {used} of its {} opt-outs this season; the confirmation stands",
                    en.id, en.max_opt_outs_per_season
                )));
            }
            part.status = ParticipationStatus::OptedOut;
            part.committed_w = 0;
        }
    }
    part.auto = false;
    part.responded_ms = Some(now);
    e.participants[i] = part;
    let action = match req.answer {
        Answer::Confirm => "event.confirm",
        Answer::Decline => "event.decline",
        Answer::OptOut => "event.opt_out",
    };
    commit(
        node,
        vec![put(keys::event(&e.id), &e)?],
        draft(
            caller,
            action,
            keys::event(&e.id),
            format!("enrollment {}", en.id),
        ),
    )
    .await?;
    Ok(e)
}

/// Events of `p`'s season in which enrollment `en` opted out.
fn opt_outs_this_season(node: &Node, p: &Program, en: &EnrollmentId) -> Result<u32> {
    let events: Vec<Event> = node.store().registry_scan("event/")?;
    Ok(events
        .iter()
        .filter(|e| {
            e.program == p.id && e.start_ms >= p.season.start_ms && e.start_ms < p.season.end_ms
        })
        .filter(|e| {
            e.participants
                .iter()
                .any(|x| &x.enrollment == en && x.status == ParticipationStatus::OptedOut)
        })
        .count() as u32)
}

/// Calls an event off: its utility or an operator. Dispatches already sent
/// are cancelled.
pub async fn cancel_event(node: &Arc<Node>, caller: &Account, id: &str) -> Result<Event> {
    let _g = node.programs().lock.lock().await;
    let mut e = get_event(node, id)?;
    let p = get_program(node.store(), e.program.as_str())?;
    may_cancel(caller, &p, &e.zones)?;
    match e.status {
        EventStatus::Cancelled => return Ok(e),
        EventStatus::Completed => {
            return Err(ProgramError::Conflict(format!("event {id} is over")));
        }
        _ => {}
    }
    e.status = EventStatus::Cancelled;
    e.times.cancelled_ms = Some(now_ms());
    commit(
        node,
        vec![put(keys::event(&e.id), &e)?],
        draft(caller, "event.cancel", keys::event(&e.id), String::new()),
    )
    .await?;
    drop(_g);
    for part in &e.participants {
        if let Some(d) = &part.dispatch {
            if let Err(err) = node.cancel_dispatch(d).await {
                tracing::warn!(event = %e.id, dispatch = %d, error = %err, "cancelling an event's dispatch failed");
            }
        }
    }
    send_notices(node, "cancelled", &e);
    Ok(e)
}

/// Whether `caller` may see `e`: operators, the program's utility, or a
/// participant of it.
fn may_see(caller: &Account, e: &Event, p: Option<&Program>) -> bool {
    caller.role == Role::Operator
        || p.is_some_and(|p| p.owner == caller.id)
        || e.participants.iter().any(|x| x.account == caller.id)
}

/// Events the caller may see.
pub fn list(node: &Node, caller: &Account) -> Result<Vec<Event>> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let events: Vec<Event> = node.store().registry_scan("event/")?;
    let programs: Vec<Program> = node.store().registry_scan("program/")?;
    Ok(events
        .into_iter()
        .filter(|e| may_see(caller, e, programs.iter().find(|p| p.id == e.program)))
        .collect())
}

/// One event, if the caller may see it.
pub fn get(node: &Node, caller: &Account, id: &str) -> Result<Event> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let e = get_event(node, id)?;
    let p = get_program(node.store(), e.program.as_str()).ok();
    if !may_see(caller, &e, p.as_ref()) {
        return Err(ProgramError::Forbidden(format!(
            "event {id} is not visible to {}",
            caller.id
        )));
    }
    Ok(e)
}

/// The caller's notices: its part in every event that called it.
pub fn notices(node: &Node, caller: &Account) -> Result<Vec<Notice>> {
    caller.require(Need::Any).map_err(ProgramError::Forbidden)?;
    let events: Vec<Event> = node.store().registry_scan("event/")?;
    Ok(events
        .iter()
        .flat_map(|e| {
            e.participants
                .iter()
                .filter(|p| caller.role == Role::Operator || p.account == caller.id)
                .map(move |p| {
                    notice(
                        if e.status == EventStatus::Cancelled {
                            "cancelled"
                        } else {
                            "event"
                        },
                        e,
                        p,
                    )
                })
        })
        .collect())
}

/// The dispatch order id of participant `i` of event `e`.
fn dispatch_id(e: &EventId, i: usize) -> DispatchId {
    let s = format!("{e}.{i}");
    DispatchId::new(&s).unwrap_or_else(|_| {
        let d = vpp_domain::ledger::digest(s.as_bytes());
        DispatchId::new(format!(
            "ev-{}",
            vpp_domain::ledger::to_hex(&d)[..24].to_owned()
        ))
        .expect("hex ids are valid")
    })
}

/// One lifecycle step at `now`: starts due events (dispatching confirmed
/// commitments), completes finished ones, drops drafts whose start passed.
/// Dispatch creation is idempotent, so a crash between the status change
/// and the orders is repaired by the next step.
pub async fn step(node: &Arc<Node>, now: u64) -> Result<()> {
    let events: Vec<Event> = node.store().registry_scan("event/")?;
    for e in events {
        match e.status {
            EventStatus::Draft if e.start_ms <= now => {
                let _g = node.programs().lock.lock().await;
                let mut e = get_event(node, e.id.as_str())?;
                if e.status != EventStatus::Draft {
                    continue;
                }
                e.status = EventStatus::Cancelled;
                e.times.cancelled_ms = Some(now);
                commit(
                    node,
                    vec![put(keys::event(&e.id), &e)?],
                    system_draft(
                        "event.expire",
                        keys::event(&e.id),
                        "start passed before it was notified".into(),
                    ),
                )
                .await?;
            }
            EventStatus::Notified if e.start_ms <= now => start(node, &e.id, now).await?,
            EventStatus::Active => {
                ensure_dispatched(node, &e).await;
                if e.end_ms() <= now {
                    let _g = node.programs().lock.lock().await;
                    let mut e = get_event(node, e.id.as_str())?;
                    if e.status != EventStatus::Active {
                        continue;
                    }
                    e.status = EventStatus::Completed;
                    e.times.completed_ms = Some(now);
                    commit(
                        node,
                        vec![put(keys::event(&e.id), &e)?],
                        system_draft("event.complete", keys::event(&e.id), String::new()),
                    )
                    .await?;
                    drop(_g);
                    send_notices(node, "event", &e);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

async fn start(node: &Arc<Node>, id: &EventId, now: u64) -> Result<()> {
    let _g = node.programs().lock.lock().await;
    let mut e = get_event(node, id.as_str())?;
    if e.status != EventStatus::Notified {
        return Ok(());
    }
    e.status = EventStatus::Active;
    e.times.active_ms = Some(now);
    for (i, p) in e.participants.iter_mut().enumerate() {
        if p.status == ParticipationStatus::Confirmed && p.committed_w > 0 {
            p.dispatch = Some(dispatch_id(&e.id, i));
        }
    }
    commit(
        node,
        vec![put(keys::event(&e.id), &e)?],
        system_draft(
            "event.start",
            keys::event(&e.id),
            format!(
                "{} confirmed, {} kW",
                e.participants
                    .iter()
                    .filter(|p| p.dispatch.is_some())
                    .count(),
                kw(e.participants.iter().map(|p| p.committed_w).sum())
            ),
        ),
    )
    .await?;
    drop(_g);
    ensure_dispatched(node, &e).await;
    send_notices(node, "event", &e);
    Ok(())
}

/// Creates the dispatch order of every confirmed participant of an active
/// event that has none in the journal yet.
async fn ensure_dispatched(node: &Arc<Node>, e: &Event) {
    let now = now_ms();
    if e.end_ms() <= now {
        return;
    }
    for p in &e.participants {
        let Some(d) = &p.dispatch else { continue };
        if node.dispatch(d).is_ok() {
            continue;
        }
        let order = DispatchOrder {
            id: d.clone(),
            target: p.resource.clone(),
            direction: Direction::Up,
            power_w: p.committed_w,
            start_ms: now,
            duration_s: (e.end_ms() - now).div_ceil(1000),
            ramp_w_per_min: e.ramp_w_per_min,
            created_ms: now,
        };
        match node.create_dispatch(order, true).await {
            Ok(_) => {
                tracing::info!(event = %e.id, dispatch = %d, resource = %p.resource, kw = kw(p.committed_w), "event dispatched")
            }
            Err(err) => {
                tracing::warn!(event = %e.id, dispatch = %d, error = %err, "dispatching an event commitment failed; retrying next step")
            }
        }
    }
}

/// Runs [`step`] every `tick` until the node shuts down.
pub async fn run_lifecycle(node: Arc<Node>, tick: Duration) {
    let mut t = tokio::time::interval(tick);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        // In a cluster only the leader advances events (and dispatches them).
        if node.writes().cluster().is_some_and(|c| !c.is_leader()) {
            continue;
        }
        if let Err(e) = step(&node, now_ms()).await {
            tracing::warn!(error = %e, "event lifecycle step failed");
        }
    }
}
