//! The flexibility envelope and the roll-up math.
//!
//! A [`FlexEnvelope`] says what a node of the hierarchy can do *now*: how many
//! watts it can move up (shed load / add generation) or down, how much energy it
//! can sustain each way, how fast it can ramp, and how many devices are online,
//! broken down per [`DerKind`]. A DER computes its envelope from its rating and
//! last state ([`der_envelope`]); every aggregate's envelope is the plain sum of
//! its children's ([`FlexEnvelope::add`]). Because all fields are integers the
//! sum is exact, so a parent keeps a running total and applies each child
//! report as `total - old + new` in O(1).
//!
//! ```text
//!   DER (rating, state) ──der_envelope──► env_d
//!   site    = Σ env_d            (per kind)
//!   virtual = Σ env_site | env_virtual
//!   root    = whole fleet
//! ```
//!
//! Beside the per-kind flexibility, every envelope carries a [`Response`]:
//! how much of the active orders the devices under the node were asked for,
//! acknowledged and measurably deliver (from telemetry). It rolls up the same
//! way, so the root's "delivered" figure moves as devices respond.

use serde::{Deserialize, Serialize};

use crate::der::{DerKind, DerRating, DerState};
use crate::dispatch::Direction;

/// Flexibility of the devices of one kind under a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindFlex {
    /// Power that can be moved up (less import / more export), W.
    pub up_w: u64,
    /// Power that can be moved down (more import / less export), W.
    pub down_w: u64,
    /// Energy that can be delivered upward before limits bite, Wh.
    pub up_wh: u64,
    /// Energy that can be absorbed downward before limits bite, Wh.
    pub down_wh: u64,
    /// Sum of the ramp rates of online devices, W/min.
    pub ramp_w_per_min: u64,
    /// Devices online.
    pub online: u64,
    /// Devices in total.
    pub total: u64,
    /// Σ cost × up_w (micro-currency/kWh × W): divide by `up_w` for the
    /// capacity-weighted cost of moving up. Kept as a sum so it rolls up exactly.
    pub up_cost_weight: u128,
    /// Σ cost × down_w, as `up_cost_weight` for the down direction.
    pub down_cost_weight: u128,
}

impl KindFlex {
    fn add(&mut self, o: &KindFlex) {
        self.up_w += o.up_w;
        self.down_w += o.down_w;
        self.up_wh += o.up_wh;
        self.down_wh += o.down_wh;
        self.ramp_w_per_min += o.ramp_w_per_min;
        self.online += o.online;
        self.total += o.total;
        self.up_cost_weight += o.up_cost_weight;
        self.down_cost_weight += o.down_cost_weight;
    }

    // Saturating so that a bug elsewhere can at worst under-report, never wrap.
    fn sub(&mut self, o: &KindFlex) {
        self.up_w = self.up_w.saturating_sub(o.up_w);
        self.down_w = self.down_w.saturating_sub(o.down_w);
        self.up_wh = self.up_wh.saturating_sub(o.up_wh);
        self.down_wh = self.down_wh.saturating_sub(o.down_wh);
        self.ramp_w_per_min = self.ramp_w_per_min.saturating_sub(o.ramp_w_per_min);
        self.online = self.online.saturating_sub(o.online);
        self.total = self.total.saturating_sub(o.total);
        self.up_cost_weight = self.up_cost_weight.saturating_sub(o.up_cost_weight);
        self.down_cost_weight = self.down_cost_weight.saturating_sub(o.down_cost_weight);
    }

    /// Power available in `dir`, W.
    pub fn available_w(&self, dir: Direction) -> u64 {
        match dir {
            Direction::Up => self.up_w,
            Direction::Down => self.down_w,
        }
    }

    /// Capacity-weighted cost of moving in `dir`, micro-currency per kWh
    /// (0 when nothing is available).
    pub fn mean_cost(&self, dir: Direction) -> u64 {
        let (w, weight) = match dir {
            Direction::Up => (self.up_w, self.up_cost_weight),
            Direction::Down => (self.down_w, self.down_cost_weight),
        };
        if w == 0 {
            0
        } else {
            (weight / w as u128) as u64
        }
    }
}

/// How the devices under a node answer the orders they hold: requested,
/// acknowledged and measured response. Signed watts, positive = up (less
/// import / more export), summed over DERs like the rest of the envelope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// DERs holding at least one setpoint.
    pub commanded: u64,
    /// Of those, DERs whose device acknowledged every setpoint it holds.
    pub acked: u64,
    /// Of those, DERs whose device says it holds the target.
    pub applied: u64,
    /// Σ setpoints held, W (up +).
    pub requested_w: i64,
    /// Σ setpoints the device acknowledged, W (up +).
    pub acked_w: i64,
    /// Σ measured response: power before the order minus power now, from
    /// telemetry, W (up +). Zero until telemetry arrives.
    pub delivered_w: i64,
}

impl Response {
    fn add(&mut self, o: &Response) {
        self.commanded += o.commanded;
        self.acked += o.acked;
        self.applied += o.applied;
        self.requested_w += o.requested_w;
        self.acked_w += o.acked_w;
        self.delivered_w += o.delivered_w;
    }

    fn sub(&mut self, o: &Response) {
        self.commanded = self.commanded.saturating_sub(o.commanded);
        self.acked = self.acked.saturating_sub(o.acked);
        self.applied = self.applied.saturating_sub(o.applied);
        self.requested_w -= o.requested_w;
        self.acked_w -= o.acked_w;
        self.delivered_w -= o.delivered_w;
    }
}

/// What a node can do now, per DER kind, and how it answers the orders it
/// holds. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlexEnvelope {
    /// Indexed by [`DerKind::index`].
    pub by_kind: [KindFlex; DerKind::COUNT],
    /// Response to active orders.
    #[serde(default)]
    pub response: Response,
    /// Timestamp (Unix ms, device clock, never ahead of the node's) of the
    /// newest telemetry this envelope reflects; 0 before any. A maximum,
    /// not a sum: [`FlexEnvelope::add`] keeps the larger, `sub` leaves it.
    /// At the root, now minus this is the roll-up's staleness.
    #[serde(default)]
    pub telemetry_ms: u64,
}

impl FlexEnvelope {
    /// The envelope of nothing.
    pub fn zero() -> Self {
        Self::default()
    }

    /// Adds `other` into `self` (roll-up).
    ///
    /// A kind with no devices (`total == 0`) is all zeros, being a sum of
    /// nothing, so it is skipped: a DER's envelope has one kind, a site's a
    /// few, and the roll-up adds and removes millions of them.
    pub fn add(&mut self, other: &FlexEnvelope) {
        for (a, b) in self.by_kind.iter_mut().zip(other.by_kind.iter()) {
            if b.total != 0 {
                a.add(b);
            }
        }
        self.response.add(&other.response);
        self.telemetry_ms = self.telemetry_ms.max(other.telemetry_ms);
    }

    /// Removes `other` from `self` (a child's previous report). Kinds with
    /// no devices are skipped, as in [`FlexEnvelope::add`]. `telemetry_ms`
    /// stays: telemetry once reflected does not get older.
    pub fn sub(&mut self, other: &FlexEnvelope) {
        for (a, b) in self.by_kind.iter_mut().zip(other.by_kind.iter()) {
            if b.total != 0 {
                a.sub(b);
            }
        }
        self.response.sub(&other.response);
    }

    /// Replaces a child's contribution: `self - old + new`.
    pub fn replace(&mut self, old: &FlexEnvelope, new: &FlexEnvelope) {
        self.sub(old);
        self.add(new);
    }

    /// Replaces one DER's contribution, as [`FlexEnvelope::replace`] but
    /// touching only its kind and the response.
    pub fn replace_der(&mut self, old: &DerFlex, new: &DerFlex) {
        self.sub_der(old);
        self.add_der(new);
    }

    /// Adds one DER's contribution.
    pub fn add_der(&mut self, d: &DerFlex) {
        self.by_kind[d.kind.index()].add(&d.flex);
        self.response.add(&d.response);
    }

    /// Removes one DER's contribution.
    pub fn sub_der(&mut self, d: &DerFlex) {
        self.by_kind[d.kind.index()].sub(&d.flex);
        self.response.sub(&d.response);
    }

    /// All kinds summed.
    pub fn total(&self) -> KindFlex {
        let mut t = KindFlex::default();
        for k in &self.by_kind {
            t.add(k);
        }
        t
    }

    /// The flexibility of one kind.
    pub fn kind(&self, kind: DerKind) -> &KindFlex {
        &self.by_kind[kind.index()]
    }

    /// Power available in `dir` over all kinds, W.
    pub fn available_w(&self, dir: Direction) -> u64 {
        self.by_kind.iter().map(|k| k.available_w(dir)).sum()
    }

    /// Capacity-weighted cost of moving in `dir`, micro-currency per kWh
    /// (0 when nothing is available).
    pub fn mean_cost(&self, dir: Direction) -> u64 {
        self.total().mean_cost(dir)
    }

    /// Sums any number of envelopes.
    pub fn sum<'a>(items: impl IntoIterator<Item = &'a FlexEnvelope>) -> FlexEnvelope {
        let mut s = FlexEnvelope::zero();
        for e in items {
            s.add(e);
        }
        s
    }
}

fn clamp_u(v: i64) -> u64 {
    v.max(0) as u64
}

/// Wh of stored energy between `soc` and `limit` (percent) in a store of
/// `energy_wh`.
fn soc_energy(energy_wh: u64, from_pct: f32, to_pct: f32) -> u64 {
    let span = (to_pct - from_pct).max(0.0) as f64 / 100.0;
    (energy_wh as f64 * span).round() as u64
}

/// What one DER contributes to an envelope: its own kind's flexibility and
/// its response, nothing else (a tenth of a [`FlexEnvelope`], so the
/// telemetry path moves and compares this instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerFlex {
    /// The DER's kind: the only one it contributes to.
    pub kind: DerKind,
    /// Its flexibility ([`der_flex`]).
    pub flex: KindFlex,
    /// Its response to the orders it holds ([`der_response`]).
    pub response: Response,
}

impl DerFlex {
    /// Power available in `dir`, W (as [`FlexEnvelope::available_w`]).
    pub fn available_w(&self, dir: Direction) -> u64 {
        self.flex.available_w(dir)
    }

    /// Cost of moving in `dir` (as [`FlexEnvelope::mean_cost`]).
    pub fn mean_cost(&self, dir: Direction) -> u64 {
        self.flex.mean_cost(dir)
    }

    /// As a whole envelope.
    pub fn envelope(&self) -> FlexEnvelope {
        let mut env = FlexEnvelope::zero();
        env.by_kind[self.kind.index()] = self.flex;
        env.response = self.response;
        env
    }
}

/// One DER's [`Response`]. `baseline_w` is its net import before it took
/// its first active setpoint; `held` lists its setpoints as (signed W with up
/// positive, acknowledged, applied).
pub fn der_response(
    state: &DerState,
    baseline_w: i64,
    held: impl IntoIterator<Item = (i64, bool, bool)>,
) -> Response {
    let mut r = Response::default();
    let mut n = 0;
    let (mut all_acked, mut all_applied) = (true, true);
    for (w, acked, applied) in held {
        n += 1;
        r.requested_w += w;
        if acked || applied {
            r.acked_w += w;
        }
        all_acked &= acked || applied;
        all_applied &= applied;
    }
    if n == 0 {
        return Response::default();
    }
    r.commanded = 1;
    r.acked = u64::from(all_acked);
    r.applied = u64::from(all_applied);
    if state.online {
        r.delivered_w = baseline_w - state.power_w;
    }
    r
}

/// The envelope of one DER: what its physics allow from its current state.
///
/// - battery: from `power_w` it can go down to `-max_export` (up) or up to
///   `max_import` (down); energy between SoC and the owner's limits.
/// - EV charger: can pause charging (up) or charge at full rate (down);
///   energy: what is left to charge (down), charging it can forgo for the hold time (up).
/// - HVAC / water heater: can switch off (up) while inside the comfort band,
///   or run at full power (down); energy = power × hold time.
/// - PV: cannot generate more than it does (MPPT), can curtail (down).
/// - curtailable load: can shed what it draws (up); no down.
///
/// Offline DERs offer nothing but still count in `total`; DERs whose owner
/// has taken local control count as online but offer nothing.
pub fn der_envelope(rating: &DerRating, state: &DerState) -> FlexEnvelope {
    let mut env = FlexEnvelope::zero();
    env.by_kind[rating.kind.index()] = der_flex(rating, state);
    env
}

/// The flexibility of one DER in its own kind: [`der_envelope`] without the
/// other (empty) kinds.
pub fn der_flex(rating: &DerRating, state: &DerState) -> KindFlex {
    let mut kf = KindFlex::default();
    let k = &mut kf;
    k.total = 1;
    if !state.online {
        return kf;
    }
    k.online = 1;
    if !state.accepts_control {
        return kf;
    }
    let imp = rating.max_import_w as i64;
    let exp = rating.max_export_w as i64;
    // Clamp the reported power into what the rating allows, so a noisy meter
    // cannot inflate the envelope.
    let p = state.power_w.clamp(-exp, imp);
    let hold_h = rating.hold_s() as f64 / 3600.0;
    let held = |w: u64| (w as f64 * hold_h).round() as u64;
    match rating.kind {
        DerKind::Battery => {
            let soc = state.soc_pct.unwrap_or(50.0).clamp(0.0, 100.0);
            let (lo, hi) = (rating.soc_min_pct as f32, rating.soc_max_pct as f32);
            k.up_wh = soc_energy(rating.energy_wh, lo, soc);
            k.down_wh = soc_energy(rating.energy_wh, soc, hi);
            k.up_w = if k.up_wh > 0 { clamp_u(p + exp) } else { 0 };
            k.down_w = if k.down_wh > 0 { clamp_u(imp - p) } else { 0 };
        }
        DerKind::EvCharger => {
            let soc = state.soc_pct.unwrap_or(50.0).clamp(0.0, 100.0);
            let need = soc_energy(rating.energy_wh, soc, rating.soc_max_pct as f32);
            k.up_w = if need > 0 { clamp_u(p) } else { 0 };
            k.up_wh = held(k.up_w).min(need);
            k.down_w = if need > 0 { clamp_u(imp - p) } else { 0 };
            k.down_wh = need;
        }
        DerKind::Hvac | DerKind::WaterHeater => {
            let in_band = match (rating.comfort_c, state.temperature_c) {
                (Some((lo, hi)), Some(t)) => lo <= t && t <= hi,
                _ => true,
            };
            k.up_w = if in_band { clamp_u(p) } else { 0 };
            k.down_w = if in_band { clamp_u(imp - p) } else { 0 };
            k.up_wh = held(k.up_w);
            k.down_wh = held(k.down_w);
        }
        DerKind::Pv => {
            k.up_w = 0;
            k.down_w = clamp_u(-p);
            k.down_wh = held(k.down_w);
        }
        DerKind::CurtailableLoad => {
            k.up_w = clamp_u(p);
            k.up_wh = held(k.up_w);
        }
    }
    if k.up_w > 0 || k.down_w > 0 {
        k.ramp_w_per_min = rating.ramp_w_per_min;
    }
    let cost = rating.cost_micros_per_kwh as u128;
    k.up_cost_weight = cost * k.up_w as u128;
    k.down_cost_weight = cost * k.down_w as u128;
    kf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn battery() -> DerRating {
        let mut r = DerRating::new(DerKind::Battery, 5000, 5000);
        r.energy_wh = 10_000;
        r.soc_min_pct = 10;
        r.soc_max_pct = 90;
        r.cost_micros_per_kwh = 100_000;
        r
    }

    #[test]
    fn idle_battery_at_half_charge() {
        let r = battery();
        let s = DerState::nominal(&r);
        let e = der_envelope(&r, &s);
        let b = e.kind(DerKind::Battery);
        assert_eq!((b.up_w, b.down_w), (5000, 5000));
        assert_eq!((b.up_wh, b.down_wh), (4000, 4000));
        assert_eq!((b.online, b.total), (1, 1));
        assert_eq!(e.mean_cost(Direction::Up), 100_000);
    }

    /// DER `kind`'s contribution, when `e` is the envelope of one DER.
    fn der_part(e: &FlexEnvelope, kind: DerKind) -> DerFlex {
        DerFlex {
            kind,
            flex: e.by_kind[kind.index()],
            response: e.response,
        }
    }

    #[test]
    fn replace_der_and_sparse_sums_match_the_full_sum() {
        // A sum over DERs of every kind, then each DER's state changes.
        let ders: Vec<DerRating> = DerKind::ALL
            .iter()
            .map(|&k| {
                let mut r = DerRating::new(k, 7_000, 3_000);
                r.energy_wh = 20_000;
                r.cost_micros_per_kwh = 50_000;
                r
            })
            .collect();
        let before: Vec<FlexEnvelope> = ders
            .iter()
            .map(|r| der_envelope(r, &DerState::nominal(r)))
            .collect();
        let mut sum = FlexEnvelope::sum(before.iter());
        let mut after = Vec::new();
        for (r, old) in ders.iter().zip(&before) {
            let mut s = DerState::nominal(r);
            s.power_w /= 2;
            let mut new = der_envelope(r, &s);
            new.response.requested_w = 1_000;
            sum.replace_der(&der_part(old, r.kind), &der_part(&new, r.kind));
            let part = der_part(&new, r.kind);
            assert_eq!(part.envelope(), new);
            for dir in [Direction::Up, Direction::Down] {
                assert_eq!(part.available_w(dir), new.available_w(dir));
                assert_eq!(part.mean_cost(dir), new.mean_cost(dir));
            }
            after.push(new);
        }
        assert_eq!(sum, FlexEnvelope::sum(after.iter()));
        for e in &after {
            sum.sub(e);
        }
        assert_eq!(sum, FlexEnvelope::zero());
    }

    #[test]
    fn offline_counts_but_offers_nothing() {
        let r = battery();
        let mut s = DerState::nominal(&r);
        s.online = false;
        let b = *der_envelope(&r, &s).kind(DerKind::Battery);
        assert_eq!(
            b,
            KindFlex {
                total: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn empty_battery_cannot_go_up() {
        let r = battery();
        let mut s = DerState::nominal(&r);
        s.soc_pct = Some(10.0);
        let b = *der_envelope(&r, &s).kind(DerKind::Battery);
        assert_eq!(b.up_w, 0);
        assert_eq!(b.down_w, 5000);
    }

    #[test]
    fn pv_curtails_only() {
        let r = DerRating::new(DerKind::Pv, 0, 4000);
        let s = DerState::nominal(&r);
        let p = *der_envelope(&r, &s).kind(DerKind::Pv);
        assert_eq!((p.up_w, p.down_w), (0, 2400));
    }

    #[test]
    fn response_rolls_up() {
        let r = battery();
        let mut s = DerState::nominal(&r);
        s.power_w = -1500; // discharging 1.5 kW after an up order of 2 kW
        let a = der_response(&s, 0, [(2000, true, false)]);
        assert_eq!(
            (
                a.commanded,
                a.acked,
                a.applied,
                a.requested_w,
                a.acked_w,
                a.delivered_w
            ),
            (1, 1, 0, 2000, 2000, 1500)
        );
        let b = der_response(&s, 0, [(1000, false, false), (-500, true, true)]);
        assert_eq!((b.acked, b.acked_w, b.requested_w), (0, -500, 500));
        assert_eq!(der_response(&s, 0, []), Response::default());
        let mut e = FlexEnvelope::zero();
        e.response = a;
        let mut total = FlexEnvelope::zero();
        total.add(&e);
        total.add(&e);
        assert_eq!(total.response.delivered_w, 3000);
        total.sub(&e);
        assert_eq!(total.response, a);
    }

    #[test]
    fn roll_up_replace_is_exact() {
        let r = battery();
        let a = der_envelope(&r, &DerState::nominal(&r));
        let mut s2 = DerState::nominal(&r);
        s2.power_w = -2000;
        let b = der_envelope(&r, &s2);
        let mut total = FlexEnvelope::sum([&a, &a, &a]);
        total.replace(&a, &b);
        assert_eq!(total, FlexEnvelope::sum([&a, &a, &b]));
    }
}
