//! Demand-flexibility programs: what a utility offers, who enrolls, the
//! events it calls and who takes part.
//!
//! ```text
//!   Program (utility, zones, terms, rules)
//!     └─ Enrollment (participant's resource, committed kW, windows, notice)
//!   Event (program, zones, start, duration, requested kW, price, grid context)
//!     draft ──notify──► notified ──start──► active ──end──► completed
//!       └──────────────────┴─────cancel────────┴──► cancelled
//!     └─ Participation per eligible enrollment: pending → confirmed /
//!        declined / opted_out; confirmed ones are dispatched at start
//! ```
//!
//! Every rule that needs only these records is a plain function here; the
//! runtime gathers the facts (what the hierarchy says a resource can do,
//! who is calling) and stores the results.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::account::{check_label, Approvals};
use crate::der::DerKind;
use crate::id::{AccountId, DispatchId, EnrollmentId, EventId, NodeId, ProgramId};
use crate::mv::BaselineSpec;
use crate::settlement::IncentiveTerms;
use crate::site::Segment;

/// Longest event a program may allow: one day.
pub const MAX_EVENT_S: u64 = 24 * 3600;

/// What kind of program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramKind {
    /// Paid for committed capacity, called a few times a season.
    Capacity,
    /// Paid per kWh at the event's price.
    Economic,
    /// Called when the grid is in danger: calling one needs a second approver.
    Emergency,
}

/// A circle on the map a program covers (for searches by lat/lon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Area {
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lon: f64,
    /// Radius, km.
    pub radius_km: f64,
}

impl Area {
    /// Whether (lat, lon) lies inside (great-circle distance).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        distance_km(self.lat, self.lon, lat, lon) <= self.radius_km
    }
}

/// Great-circle distance, km (haversine).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().min(1.0).asin()
}

/// A season: the period the per-season limits count over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Season {
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End (exclusive), Unix ms.
    pub end_ms: u64,
}

/// A published program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// Unique id.
    pub id: ProgramId,
    /// Display name.
    pub name: String,
    /// What kind.
    pub kind: ProgramKind,
    /// The utility that published it.
    pub owner: AccountId,
    /// Grid zones it runs in.
    pub zones: Vec<String>,
    /// Areas for searches by location (optional; zones always count).
    pub coverage: Vec<Area>,
    /// Eligible segments (empty = all).
    pub segments: Vec<Segment>,
    /// Eligible DER kinds (empty = all).
    pub kinds: Vec<DerKind>,
    /// Smallest commitment accepted, W.
    pub min_w: u64,
    /// Payments and penalties.
    pub terms: IncentiveTerms,
    /// Least notice the utility gives before an event, s.
    pub notice_s: u64,
    /// Most events per season.
    pub max_events_per_season: u32,
    /// Most event hours per season.
    pub max_hours_per_season: u32,
    /// Longest event, s.
    pub max_event_duration_s: u64,
    /// The season the limits count over.
    pub season: Season,
    /// Offset of local time from UTC, minutes: availability windows and
    /// baseline days are local.
    pub utc_offset_min: i32,
    /// How performance is measured.
    pub baseline: BaselineSpec,
    /// A change of terms waiting for approval.
    pub pending_terms: Option<PendingTerms>,
    /// Bumped by each approved change of terms.
    pub terms_version: u32,
    /// When published, Unix ms.
    pub created_ms: u64,
}

/// Proposed new terms and who has approved them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingTerms {
    /// The new terms.
    pub terms: IncentiveTerms,
    /// Approvals so far.
    pub approvals: Approvals,
    /// When proposed, Unix ms.
    pub proposed_ms: u64,
}

impl Program {
    /// Checks the program's own fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err("name: must be 1 to 200 characters".into());
        }
        if self.zones.is_empty() {
            return Err("zones: a program runs in at least one zone".into());
        }
        for z in &self.zones {
            check_label("zones", z)?;
        }
        for a in &self.coverage {
            let on_earth = a.lat.is_finite()
                && (-90.0..=90.0).contains(&a.lat)
                && a.lon.is_finite()
                && (-180.0..=180.0).contains(&a.lon);
            let radius_ok = a.radius_km.is_finite() && a.radius_km > 0.0 && a.radius_km <= 20_000.0;
            if !(on_earth && radius_ok) {
                return Err(format!(
                    "coverage: ({}, {}, {} km) is not a place on Earth with a radius of 0 to 20,000 km",
                    a.lat, a.lon, a.radius_km
                ));
            }
        }
        self.terms.validate().map_err(|e| format!("terms: {e}"))?;
        self.baseline
            .validate()
            .map_err(|e| format!("baseline: {e}"))?;
        if self.max_event_duration_s == 0 || self.max_event_duration_s > MAX_EVENT_S {
            return Err(format!(
                "max_event_duration_s: must be 1 to {MAX_EVENT_S} (one day)"
            ));
        }
        if self.notice_s > 30 * 24 * 3600 {
            return Err("notice_s: more than 30 days".into());
        }
        if self.max_events_per_season == 0 || self.max_hours_per_season == 0 {
            return Err("max_events_per_season and max_hours_per_season must be above 0".into());
        }
        if self.season.end_ms <= self.season.start_ms {
            return Err("season: end_ms must be after start_ms".into());
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_min) {
            return Err("utc_offset_min: must be within ±14 h".into());
        }
        Ok(())
    }

    /// Whether the program matches a discovery query.
    pub fn matches(&self, q: &ProgramQuery) -> bool {
        if let Some(z) = &q.zone {
            if !self.zones.contains(z) {
                return false;
            }
        }
        if let Some((lat, lon)) = q.lat_lon {
            if !self.coverage.iter().any(|a| a.contains(lat, lon)) {
                return false;
            }
        }
        if let Some(s) = q.segment {
            if !self.segments.is_empty() && !self.segments.contains(&s) {
                return false;
            }
        }
        if let Some(k) = q.kind {
            if !self.kinds.is_empty() && !self.kinds.contains(&k) {
                return false;
            }
        }
        if let Some(w) = q.capacity_w {
            if w < self.min_w {
                return false;
            }
        }
        true
    }

    /// Whether a DER kind counts for this program.
    pub fn eligible_kind(&self, k: DerKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&k)
    }

    /// Checks that a resource may enroll: in the program's zones, of an
    /// eligible segment, with eligible DERs. Every problem is listed.
    pub fn check_resource(&self, r: &ResourceFacts) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let outside: Vec<&String> = r.zones.iter().filter(|z| !self.zones.contains(z)).collect();
        if r.zones.is_empty() {
            problems.push(format!("{} has no sites", r.id));
        } else if !outside.is_empty() {
            problems.push(format!(
                "{} has sites in zone(s) {} outside the program's zones ({})",
                r.id,
                join(&outside),
                self.zones.join(", ")
            ));
        }
        if !self.segments.is_empty() {
            let bad: Vec<&Segment> = r
                .segments
                .iter()
                .filter(|s| !self.segments.contains(s))
                .collect();
            if !bad.is_empty() {
                problems.push(format!(
                    "{} has {:?} sites; the program takes {:?}",
                    r.id, bad, self.segments
                ));
            }
        }
        if !r.kinds.iter().any(|k| self.eligible_kind(*k)) {
            problems.push(format!(
                "{} has no DER of an eligible kind ({:?})",
                r.id, self.kinds
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// A discovery search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgramQuery {
    /// Runs in this zone.
    pub zone: Option<String>,
    /// Covers this point.
    pub lat_lon: Option<(f64, f64)>,
    /// Takes this much (min commitment at most this), W.
    pub capacity_w: Option<u64>,
    /// Takes this segment.
    pub segment: Option<Segment>,
    /// Takes this DER kind.
    pub kind: Option<DerKind>,
}

/// What the hierarchy says about a resource (a site or a virtual DER).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceFacts {
    /// The resource.
    pub id: NodeId,
    /// Zones of its sites.
    pub zones: BTreeSet<String>,
    /// Feeders of its sites.
    pub feeders: BTreeSet<String>,
    /// Segments of its sites.
    pub segments: BTreeSet<Segment>,
    /// DER kinds it has.
    pub kinds: BTreeSet<DerKind>,
    /// Its sites.
    pub sites: Vec<NodeId>,
    /// Locations of its sites.
    pub locations: Vec<(f64, f64)>,
    /// How much it can shed or add now with eligible kinds, W (upward
    /// flexibility of its envelope).
    pub up_w: u64,
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Day {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Day {
    /// The day of a count of days since 1970-01-01 (a Thursday).
    pub fn of_epoch_day(day: i64) -> Day {
        const DAYS: [Day; 7] = [
            Day::Thu,
            Day::Fri,
            Day::Sat,
            Day::Sun,
            Day::Mon,
            Day::Tue,
            Day::Wed,
        ];
        DAYS[day.rem_euclid(7) as usize]
    }
}

/// A time of day, minutes after local midnight; written `"HH:MM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeOfDay(pub u16);

impl TryFrom<String> for TimeOfDay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time of day HH:MM (00:00 to 24:00)");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl From<TimeOfDay> for String {
    fn from(t: TimeOfDay) -> String {
        format!("{:02}:{:02}", t.0 / 60, t.0 % 60)
    }
}

/// When a resource is available: on these days, between these times (local).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days of the week.
    pub days: Vec<Day>,
    /// From (local time).
    pub from: TimeOfDay,
    /// To (local time, after `from`).
    pub to: TimeOfDay,
}

impl Window {
    /// Whether an event from `start_ms` to `end_ms` lies wholly inside this
    /// window on the event's local day.
    pub fn covers(&self, start_ms: u64, end_ms: u64, utc_offset_min: i32) -> bool {
        let local = |ms: u64| ms as i64 + utc_offset_min as i64 * 60_000;
        let (s, e) = (local(start_ms), local(end_ms));
        let day = s.div_euclid(86_400_000);
        if !self.days.contains(&Day::of_epoch_day(day)) {
            return false;
        }
        let midnight = day * 86_400_000;
        s >= midnight + self.from.0 as i64 * 60_000 && e <= midnight + self.to.0 as i64 * 60_000
    }
}

/// Is an enrollment in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentStatus {
    /// Takes part in events.
    Active,
    /// Left the program.
    Cancelled,
}

/// A resource enrolled in a program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    /// Unique id.
    pub id: EnrollmentId,
    /// The program.
    pub program: ProgramId,
    /// The site or virtual DER enrolled.
    pub resource: NodeId,
    /// The account that enrolled it (gets the notices and statements).
    pub account: AccountId,
    /// Committed reduction, W.
    pub committed_w: u64,
    /// When it is available (empty = always).
    pub windows: Vec<Window>,
    /// Notice it needs before an event, s.
    pub notice_s: u64,
    /// Confirm every event at once with the committed kW (fully automated
    /// resources).
    pub auto_confirm: bool,
    /// Events it may opt out of per season without penalty.
    pub max_opt_outs_per_season: u32,
    /// In force or not.
    pub status: EnrollmentStatus,
    /// When enrolled, Unix ms.
    pub created_ms: u64,
}

impl Enrollment {
    /// Checks the enrollment against its program and what the hierarchy
    /// says of the resource. Every problem is listed.
    pub fn check(&self, p: &Program, r: &ResourceFacts) -> Result<(), Vec<String>> {
        let mut problems = p.check_resource(r).err().unwrap_or_default();
        if self.committed_w < p.min_w || self.committed_w == 0 {
            problems.push(format!(
                "committed_kw {} is below the program's minimum of {} kW",
                self.committed_w as f64 / 1000.0,
                p.min_w.max(1) as f64 / 1000.0
            ));
        }
        if self.committed_w > r.up_w {
            problems.push(format!(
                "committed_kw {} is more than {} can do now with eligible DERs ({} kW)",
                self.committed_w as f64 / 1000.0,
                r.id,
                r.up_w as f64 / 1000.0
            ));
        }
        if self.notice_s > p.notice_s {
            problems.push(format!(
                "notice_s {} is more than the program gives ({} s)",
                self.notice_s, p.notice_s
            ));
        }
        for w in &self.windows {
            if w.days.is_empty() || w.to <= w.from {
                problems.push(format!(
                    "windows: {} to {} on {} days: a window needs at least one day and `to` after `from`",
                    String::from(w.from),
                    String::from(w.to),
                    w.days.len()
                ));
            }
        }
        if self.windows.len() > 50 {
            problems.push("windows: at most 50".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Whether the resource is available for an event in these hours.
    pub fn available(&self, start_ms: u64, end_ms: u64, utc_offset_min: i32) -> bool {
        self.windows.is_empty()
            || self
                .windows
                .iter()
                .any(|w| w.covers(start_ms, end_ms, utc_offset_min))
    }
}

/// Grid context sent with an event.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridContext {
    /// Why the event is called.
    pub reason: String,
    /// System frequency, Hz.
    pub frequency_hz: Option<f64>,
    /// Loading of the constrained element, %.
    pub loading_pct: Option<f64>,
}

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Created, not yet sent (an emergency waits here for its approver).
    Draft,
    /// Sent to participants; they confirm or decline.
    Notified,
    /// Running: confirmed commitments are dispatched.
    Active,
    /// Over.
    Completed,
    /// Called off.
    Cancelled,
}

/// A demand-response event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id.
    pub id: EventId,
    /// The program.
    pub program: ProgramId,
    /// Zones called.
    pub zones: Vec<String>,
    /// Feeders called (empty = every feeder of the zones).
    pub feeders: Vec<String>,
    /// Start, Unix ms.
    pub start_ms: u64,
    /// Length, s.
    pub duration_s: u64,
    /// Ramp, W/min.
    pub ramp_w_per_min: Option<u64>,
    /// Reduction asked for, W.
    pub requested_w: u64,
    /// Price signal, per kWh, decimal text in the program's currency.
    pub price_per_kwh: Option<String>,
    /// Why and how stressed the grid is.
    pub grid: GridContext,
    /// Where it is in its life.
    pub status: EventStatus,
    /// Who called it.
    pub created_by: AccountId,
    /// When created, Unix ms.
    pub created_ms: u64,
    /// When each status was reached, Unix ms.
    pub times: EventTimes,
    /// Approvals (emergency events).
    pub approvals: Option<Approvals>,
    /// One per notified enrollment.
    pub participants: Vec<Participation>,
}

/// When an event reached each status, Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventTimes {
    /// Notified.
    pub notified_ms: Option<u64>,
    /// Started.
    pub active_ms: Option<u64>,
    /// Completed.
    pub completed_ms: Option<u64>,
    /// Cancelled.
    pub cancelled_ms: Option<u64>,
}

impl Event {
    /// End, Unix ms.
    pub fn end_ms(&self) -> u64 {
        self.start_ms
            .saturating_add(self.duration_s.saturating_mul(1000))
    }

    /// Checks the event against its program: zones, duration, notice and the
    /// season's limits (`used` = events and seconds already called this
    /// season, this one excluded).
    pub fn check(&self, p: &Program, now_ms: u64, used: SeasonUse) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.zones.is_empty() {
            problems.push("zones: call at least one zone".into());
        }
        let outside: Vec<&String> = self.zones.iter().filter(|z| !p.zones.contains(z)).collect();
        if !outside.is_empty() {
            problems.push(format!(
                "zones {} are not in program {} ({})",
                join(&outside),
                p.id,
                p.zones.join(", ")
            ));
        }
        if self.requested_w == 0 {
            problems.push("requested_kw must be above zero".into());
        }
        if self.duration_s == 0 || self.duration_s > p.max_event_duration_s {
            problems.push(format!(
                "duration_s {} is outside 1..={} (the program's longest event)",
                self.duration_s, p.max_event_duration_s
            ));
        }
        if self.start_ms < now_ms.saturating_add(p.notice_s * 1000) {
            problems.push(format!(
                "start is less than the program's notice of {} s away",
                p.notice_s
            ));
        }
        if self.start_ms < p.season.start_ms || self.start_ms >= p.season.end_ms {
            problems.push("start is outside the program's season".into());
        }
        if used.events + 1 > p.max_events_per_season {
            problems.push(format!(
                "the program allows {} events per season and {} are called",
                p.max_events_per_season, used.events
            ));
        }
        if used.seconds + self.duration_s > p.max_hours_per_season as u64 * 3600 {
            problems.push(format!(
                "the program allows {} event hours per season; {:.2} h are used and this adds {:.2} h",
                p.max_hours_per_season,
                used.seconds as f64 / 3600.0,
                self.duration_s as f64 / 3600.0
            ));
        }
        if let Some(price) = &self.price_per_kwh {
            if price.parse::<rust_decimal::Decimal>().is_err() {
                problems.push(format!("price_per_kwh {price:?} is not a decimal number"));
            }
        }
        if self.grid.reason.len() > 500 {
            problems.push("grid.reason: at most 500 characters".into());
        }
        for f in self
            .grid
            .frequency_hz
            .iter()
            .chain(self.grid.loading_pct.iter())
        {
            if !f.is_finite() || *f < 0.0 || *f > 1000.0 {
                problems.push(format!("grid: {f} is not a sane figure"));
            }
        }
        for z in self.zones.iter().chain(self.feeders.iter()) {
            if let Err(e) = check_label("zones/feeders", z) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Whether a resource is called by this event (its sites in the zones
    /// and, if feeders are named, on one of them).
    pub fn calls(&self, r: &ResourceFacts) -> bool {
        r.zones.iter().any(|z| self.zones.contains(z))
            && (self.feeders.is_empty() || r.feeders.iter().any(|f| self.feeders.contains(f)))
    }
}

/// Events and seconds already called in a season.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeasonUse {
    /// Events.
    pub events: u32,
    /// Seconds.
    pub seconds: u64,
}

/// How a participant answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipationStatus {
    /// Notified, no answer yet.
    Pending,
    /// Will deliver `committed_w`.
    Confirmed,
    /// Will not take part.
    Declined,
    /// Confirmed, then withdrew before the start.
    OptedOut,
}

/// One enrollment's part in an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participation {
    /// The enrollment.
    pub enrollment: EnrollmentId,
    /// Its account.
    pub account: AccountId,
    /// Its resource.
    pub resource: NodeId,
    /// What the event asks of it, W (its pro-rata share).
    pub requested_w: u64,
    /// The answer.
    pub status: ParticipationStatus,
    /// Confirmed reduction, W.
    pub committed_w: u64,
    /// Confidence the participant gives, %.
    pub confidence_pct: u8,
    /// Expected load over the event without it, W (from the baseline).
    pub baseline_w: Option<i64>,
    /// Load it aims for, W (baseline − committed).
    pub target_w: Option<i64>,
    /// Confirmed automatically (auto_confirm enrollment).
    pub auto: bool,
    /// When answered, Unix ms.
    pub responded_ms: Option<u64>,
    /// The dispatch order sent at the start.
    pub dispatch: Option<DispatchId>,
}

/// Splits an event's request among enrollments pro rata to their
/// commitments, never above a commitment: returns W per enrollment, in
/// order. Integer largest-remainder so the shares add up exactly to
/// min(requested, Σ committed).
pub fn shares(requested_w: u64, committed_w: &[u64]) -> Vec<u64> {
    let total: u128 = committed_w.iter().map(|&c| c as u128).sum();
    if total == 0 {
        return vec![0; committed_w.len()];
    }
    let want = (requested_w as u128).min(total);
    let mut out: Vec<u64> = committed_w
        .iter()
        .map(|&c| (want * c as u128 / total) as u64)
        .collect();
    let mut left = want as u64 - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..committed_w.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((want * committed_w[i] as u128) % total));
    for i in order {
        if left == 0 {
            break;
        }
        if out[i] < committed_w[i] {
            out[i] += 1;
            left -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
