//! Settlement: what one participant is paid (or charged) for one event,
//! from its measured performance and the program's incentive terms.
//!
//! ```text
//!   IncentiveTerms (program)  ─┐
//!   Performance (M&V: committed W, average delivered W, delivered Wh)
//!                              └─ settle ──► Statement { lines, total }
//!   [(Performance, Statement)] ── metrics ──► ParticipantMetrics
//! ```
//!
//! Money is exact decimal ([`Money`], `rust_decimal`): no float is involved
//! anywhere, and in JSON every amount and rate is a string (`"5.00"`), which
//! is also the only form accepted on input.
//!
//! ## The formula
//!
//! With `committed` in kW, `delivered` = max(0, average delivered kW) and
//! `performance = delivered / committed` (0 when nothing was committed):
//!
//! | line       | quantity                           | rate                   | amount                     |
//! |------------|------------------------------------|------------------------|----------------------------|
//! | `capacity` | min(delivered, committed) kW       | `capacity_per_kw`      | quantity × rate            |
//! | `energy`   | max(0, delivered kWh)              | `energy_per_kwh`       | quantity × rate            |
//! | `penalty`  | committed − delivered kW           | `penalty_per_kw_short` | −(quantity × rate)         |
//! | `cap`      | 1 event                            | the amount             | `max_payment_per_event` − sum of the lines above |
//!
//! - The capacity line is `committed × rate × min(performance, 100 %)`
//!   written without the division: crediting min(delivered, committed) kW is
//!   the same number, exactly. Over-delivery earns no extra capacity payment
//!   (the energy line still pays every kWh).
//! - The penalty line appears only when `performance < penalty_threshold_pct`
//!   (strictly; compared in integers: `delivered W × 100 < committed W ×
//!   threshold`) and charges the whole shortfall below the commitment, not
//!   just the part below the threshold. Nothing committed, no penalty.
//! - The cap line appears only when the sum of the other lines exceeds
//!   `max_payment_per_event`, and brings the total down to the cap, so the
//!   reduction is visible on the statement.
//! - The total is the sum of the lines and can be negative: a participant
//!   whose penalty exceeds its payments owes the difference.
//! - `performance_pct` on the statement is `100 × performance` rounded to
//!   two decimals, not capped at 100 (it shows over-delivery); it is for
//!   people and metrics, no amount is computed from it.
//! - Data quality is M&V's business: `settle` takes the averages as given
//!   and only mentions missing intervals in the capacity line's description.
//!
//! ## Rounding
//!
//! Each line's amount is computed exactly (in 128-bit integers from the
//! watts and the rate's digits) and rounded once, to cents (two decimals),
//! half away from zero (`0.005 → 0.01`, `-0.005 → -0.01`: commercial
//! rounding, what a participant can redo on a calculator). Quantities (kW,
//! kWh: three decimals, exact from W and Wh) and rates are not rounded. The
//! total is the exact sum of the rounded lines, so it never disagrees with
//! them. Every currency is taken to have cents.
//!
//! Worked example: 100 kW committed, 85 kW delivered on average, 170 kWh,
//! terms 5.00/kW, 0.10/kWh, penalty 8.00/kW below 50 %:
//!
//! ```text
//!   capacity  85.000 kW  × 5.00   = 425.00
//!   energy   170.000 kWh × 0.10   =  17.00
//!   (85 % ≥ 50 %: no penalty)       ───────
//!   total                           442.00   performance 85.00 %
//! ```

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// An amount of money (or a rate in money per unit): exact decimal.
pub type Money = Decimal;

/// Highest rate [`IncentiveTerms::validate`] accepts, per kW or kWh.
pub const MAX_RATE: u32 = 1_000_000;

/// Most decimals a rate may have.
pub const MAX_RATE_DECIMALS: u32 = 6;

/// Highest per-event cap accepted.
pub const MAX_CAP: u64 = 1_000_000_000_000;

/// How a program pays: part of the program definition.
///
/// JSON: `{"currency": "USD", "capacity_per_kw": "5.00", "energy_per_kwh":
/// "0.10", "penalty_per_kw_short": "8.00", "penalty_threshold_pct": 50,
/// "max_payment_per_event": "500.00"}`; the penalty fields and the cap may be
/// left out (no penalty, no cap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncentiveTerms {
    /// ISO 4217 code, e.g. `USD`: three capital letters.
    pub currency: String,
    /// Paid per kW committed for the event, scaled by performance (at most
    /// 100 %).
    pub capacity_per_kw: Money,
    /// Paid per kWh delivered.
    pub energy_per_kwh: Money,
    /// Charged per kW of shortfall when performance falls below
    /// `penalty_threshold_pct`.
    #[serde(default)]
    pub penalty_per_kw_short: Money,
    /// Delivering under this share of the commitment, %, triggers the
    /// penalty (0: never).
    #[serde(default)]
    pub penalty_threshold_pct: u32,
    /// Most a participant can earn from one event.
    #[serde(default)]
    pub max_payment_per_event: Option<Money>,
}

impl IncentiveTerms {
    /// Checks the terms once, when a program is defined or changed; the
    /// error names the field. Terms that pass can be settled against any
    /// [`Performance`] without overflow.
    pub fn validate(&self) -> Result<(), String> {
        let c = self.currency.as_bytes();
        if c.len() != 3 || !c.iter().all(u8::is_ascii_uppercase) {
            return Err(format!(
                "currency: {:?} is not a three-letter code like USD",
                self.currency
            ));
        }
        for (name, rate) in [
            ("capacity_per_kw", self.capacity_per_kw),
            ("energy_per_kwh", self.energy_per_kwh),
            ("penalty_per_kw_short", self.penalty_per_kw_short),
        ] {
            if rate.is_sign_negative() && !rate.is_zero() {
                return Err(format!("{name}: must not be negative (got {rate})"));
            }
            if rate > Decimal::from(MAX_RATE) {
                return Err(format!("{name}: {rate} is above {MAX_RATE}"));
            }
            if rate.normalize().scale() > MAX_RATE_DECIMALS {
                return Err(format!(
                    "{name}: {rate} has more than {MAX_RATE_DECIMALS} decimals"
                ));
            }
        }
        if self.penalty_threshold_pct > 100 {
            return Err(format!(
                "penalty_threshold_pct: {} is above 100",
                self.penalty_threshold_pct
            ));
        }
        if let Some(cap) = self.max_payment_per_event {
            if cap.is_sign_negative() && !cap.is_zero() {
                return Err(format!(
                    "max_payment_per_event: must not be negative (got {cap})"
                ));
            }
            if cap > Decimal::from(MAX_CAP) {
                return Err(format!("max_payment_per_event: {cap} is above {MAX_CAP}"));
            }
            if cap.normalize().scale() > 2 {
                return Err(format!(
                    "max_payment_per_event: {cap} has fractions of a cent"
                ));
            }
        }
        Ok(())
    }
}

/// What M&V measured for one participant in one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Performance {
    /// What the participant committed, W.
    pub committed_w: u64,
    /// Average reduction against the baseline over the event, W (negative
    /// when the participant consumed more than its baseline).
    pub avg_delivered_w: i64,
    /// Energy delivered against the baseline over the event, Wh (may be
    /// negative).
    pub delivered_wh: i64,
    /// Intervals with meter data.
    pub measured_intervals: u32,
    /// Intervals of the event without meter data.
    pub missing_intervals: u32,
}

impl Performance {
    /// Average delivered W, floored at 0.
    fn delivered_w(&self) -> u64 {
        self.avg_delivered_w.max(0).unsigned_abs()
    }

    /// `100 × delivered / committed`, rounded to two decimals, floored at 0,
    /// not capped (0 when nothing was committed).
    pub fn performance_pct(&self) -> Decimal {
        if self.committed_w == 0 {
            return two_decimals(Decimal::ZERO);
        }
        two_decimals(
            Decimal::from(self.delivered_w()) * Decimal::ONE_HUNDRED
                / Decimal::from(self.committed_w),
        )
    }
}

/// What a statement line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineCode {
    /// Capacity payment.
    Capacity,
    /// Energy payment.
    Energy,
    /// Penalty for under-delivery (negative amount).
    Penalty,
    /// Reduction down to the per-event cap (negative amount).
    Cap,
}

impl LineCode {
    /// The code as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LineCode::Capacity => "capacity",
            LineCode::Energy => "energy",
            LineCode::Penalty => "penalty",
            LineCode::Cap => "cap",
        }
    }
}

/// One line of a statement: `amount = round(quantity × rate)`, with the
/// sign of the line (penalty and cap lines are negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// What the line is for.
    pub code: LineCode,
    /// The arithmetic in words, for the participant.
    pub description: String,
    /// How much (kW, kWh, or 1 event).
    pub quantity: Decimal,
    /// `kW`, `kWh` or `event`.
    pub unit: String,
    /// Money per unit.
    pub rate: Money,
    /// Money, in cents.
    pub amount: Money,
}

/// The settlement of one participant for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Currency of every amount.
    pub currency: String,
    /// Capacity and energy always, penalty and cap when they apply.
    pub lines: Vec<Line>,
    /// Sum of the lines' amounts (negative: the participant owes it).
    pub total: Money,
    /// See [`Performance::performance_pct`].
    pub performance_pct: Decimal,
}

/// Rounds to cents, half away from zero, and writes two decimals (`0.00`,
/// `5.10`).
pub fn to_cents(amount: Decimal) -> Money {
    two_decimals(amount)
}

fn two_decimals(x: Decimal) -> Decimal {
    let mut r = x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    r.rescale(2);
    r
}

/// `thousandths / 1000 × rate` (W × rate per kW, Wh × rate per kWh) rounded
/// to cents. For a validated rate (at most six decimals, at most
/// [`MAX_RATE`]) this is integer arithmetic on the rate's digits, so it is
/// exact for any `u64` of watts: the product is below 2¹²⁸ and the cents fit
/// a `Decimal`. Other rates fall back to `Decimal` multiplication.
fn amount(thousandths: u64, rate: Decimal) -> Money {
    let r = rate.normalize();
    if !r.is_sign_negative() && r.scale() <= MAX_RATE_DECIMALS {
        if let Ok(mantissa) = u128::try_from(r.mantissa()) {
            // x is in units of 10^-(3 + scale); a cent is 10^-2.
            let per_cent = 10u128.pow(1 + r.scale());
            if let Some(x) = u128::from(thousandths).checked_mul(mantissa) {
                let cents = x / per_cent + u128::from(x % per_cent >= per_cent / 2);
                if let Ok(d) = i128::try_from(cents)
                    .map_err(|_| ())
                    .and_then(|c| Decimal::try_from_i128_with_scale(c, 2).map_err(|_| ()))
                {
                    return d;
                }
            }
        }
    }
    to_cents(kilo(thousandths).saturating_mul(rate))
}

/// W or Wh as kW or kWh, exactly.
fn kilo(w: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(w), 3)
}

/// The statement for `perf` under `terms` (formula in the module doc).
/// `terms` should have passed [`IncentiveTerms::validate`]; for terms that
/// did not, amounts saturate instead of overflowing.
pub fn settle(terms: &IncentiveTerms, perf: &Performance) -> Statement {
    let committed_w = perf.committed_w;
    let delivered_w = perf.delivered_w();
    let credited_w = delivered_w.min(committed_w);
    let performance_pct = perf.performance_pct();
    let mut lines = Vec::with_capacity(4);

    let quantity = kilo(credited_w);
    let missing = match perf.missing_intervals {
        0 => String::new(),
        n => format!(
            "; {n} of {} intervals without meter data",
            perf.measured_intervals.saturating_add(n)
        ),
    };
    lines.push(Line {
        code: LineCode::Capacity,
        description: format!(
            "capacity: {} kW committed × {performance_pct} % performance, credited up to 100 %{missing}",
            kilo(committed_w)
        ),
        quantity,
        unit: "kW".into(),
        rate: terms.capacity_per_kw,
        amount: amount(credited_w, terms.capacity_per_kw),
    });

    let delivered_wh = perf.delivered_wh.max(0).unsigned_abs();
    let quantity = kilo(delivered_wh);
    lines.push(Line {
        code: LineCode::Energy,
        description: format!("energy: {quantity} kWh delivered"),
        quantity,
        unit: "kWh".into(),
        rate: terms.energy_per_kwh,
        amount: amount(delivered_wh, terms.energy_per_kwh),
    });

    let under_threshold = u128::from(delivered_w) * 100
        < u128::from(committed_w) * u128::from(terms.penalty_threshold_pct);
    if committed_w > 0 && under_threshold {
        let short_w = committed_w.saturating_sub(delivered_w);
        let quantity = kilo(short_w);
        lines.push(Line {
            code: LineCode::Penalty,
            description: format!(
                "penalty: {performance_pct} % is below the {} % threshold; {quantity} kW short of the commitment",
                terms.penalty_threshold_pct
            ),
            quantity,
            unit: "kW".into(),
            rate: terms.penalty_per_kw_short,
            // ZERO − x rather than −x: no "-0.00" when the penalty rounds to nothing.
            amount: Decimal::ZERO.saturating_sub(amount(short_w, terms.penalty_per_kw_short)),
        });
    }

    let subtotal = sum(lines.iter().map(|l| l.amount));
    if let Some(cap) = terms.max_payment_per_event {
        let cap = to_cents(cap);
        if subtotal > cap {
            let amount = cap.saturating_sub(subtotal);
            lines.push(Line {
                code: LineCode::Cap,
                description: format!(
                    "cap: at most {cap} {} per event; {subtotal} reduced by {}",
                    terms.currency, -amount
                ),
                quantity: Decimal::ONE,
                unit: "event".into(),
                rate: amount,
                amount,
            });
        }
    }

    Statement {
        currency: terms.currency.clone(),
        total: sum(lines.iter().map(|l| l.amount)),
        lines,
        performance_pct,
    }
}

fn sum(amounts: impl Iterator<Item = Decimal>) -> Decimal {
    amounts.fold(Decimal::ZERO, Decimal::saturating_add)
}

/// A participant's record over the events it was settled for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantMetrics {
    /// Events settled.
    pub events: u32,
    /// Mean of the statements' `performance_pct`, rounded to two decimals
    /// (0 with no events).
    pub avg_performance_pct: Decimal,
    /// `performance_pct` of the last event in the history.
    pub last_performance_pct: Option<Decimal>,
    /// Σ max(0, delivered kWh).
    pub delivered_kwh_total: Decimal,
    /// Σ statement totals (penalties included; may be negative).
    pub paid_total: Money,
}

/// Metrics over `history`, oldest first, all in one currency (a
/// participant's statements of one program or of programs that pay alike).
pub fn metrics(history: &[(Performance, Statement)]) -> ParticipantMetrics {
    let events = u32::try_from(history.len()).unwrap_or(u32::MAX);
    let pct_sum = sum(history.iter().map(|(_, s)| s.performance_pct));
    let avg_performance_pct = if history.is_empty() {
        Decimal::ZERO
    } else {
        two_decimals(pct_sum / Decimal::from(history.len()))
    };
    ParticipantMetrics {
        events,
        avg_performance_pct,
        last_performance_pct: history.last().map(|(_, s)| s.performance_pct),
        delivered_kwh_total: sum(history
            .iter()
            .map(|(p, _)| kilo(p.delivered_wh.max(0).unsigned_abs()))),
        paid_total: sum(history.iter().map(|(_, s)| s.total)),
    }
}

#[cfg(test)]
mod tests;
