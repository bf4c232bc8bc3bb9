//! Measurement and verification (M&V): what a participant's load would have
//! been without the event (the *baseline*) and how much it delivered.
//!
//! ```text
//!   MeterSeries (one site or resource, avg W per interval)
//!     + EventWindow (start, end, local offset) + excluded days
//!     + BaselineSpec ──compute──► BaselineReport
//!                                   per interval: baseline W, actual W?, delivered W?
//!                                   days used / skipped (why), adjustment, totals
//!
//!   X-of-Y:   prior local days ──eligible?──► Y most recent ──rank by event-hours load──► X highest
//!               (day type, excluded,            ──average per interval──► day-of adjustment?
//!                no missing reading)
//!   same-day: windows before / after the event ──average──► flat baseline
//! ```
//!
//! **Delivered** = baseline − actual, per interval: positive means the
//! participant used less than it would have. An event interval without a
//! reading has no actual and no delivered figure (it is *missing*, not zero);
//! the averages and the energy count only measured intervals, and the report
//! says how many were missing.
//!
//! **Days** are local days at a fixed offset from UTC
//! ([`EventWindow::utc_offset_min`]); the same hours *k* days earlier are the
//! event's instants minus *k* × 24 h. The event day is the local day of the
//! event start. Events last at most 24 h and start and end on interval
//! boundaries.
//!
//! **Arithmetic** is exact: readings are summed in `i128`, a factor is kept as
//! a fraction of two integers, and each baseline value is rounded to the
//! nearest watt once, at the end (halves away from zero). Figures shown as
//! decimals (a factor, a percentage) are for people, not for the sums.
//!
//! The methods and their formulas are documented on [`compute`].

pub mod calendar;
mod report;
mod same_day;
mod spec;
mod x_of_y;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::meter::{check_interval_s, MeterSeries};

pub use calendar::{Date, Weekday, MS_PER_DAY};
pub use report::{
    skip_summary, AdjustmentOutcome, AppliedAdjustment, BaselineReport, IntervalResult,
    SameDayBasis, SkipReason, SkippedDay, Window,
};
pub use spec::{
    Adjustment, BaselineSpec, SameDaySpec, XOfYSpec, DEFAULT_LOOKBACK_DAYS, MAX_LOOKBACK_DAYS,
    MAX_WINDOW_HOURS, MAX_Y,
};

/// Longest event, ms: one day.
pub const MAX_EVENT_MS: u64 = MS_PER_DAY;

/// Largest reading a computation accepts, W (10 TW). Far above any real
/// resource (a site is limited to 100 MW on import, a resource sums sites);
/// it keeps every intermediate sum well inside `i128`.
pub const MAX_READING_W: i64 = 10_000_000_000_000;

const HOUR_MS: u64 = 3_600_000;

/// The event a baseline is computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventWindow {
    /// Start, Unix ms: an interval start.
    pub start_ms: u64,
    /// End (exclusive), Unix ms: an interval start, after `start_ms`, at most
    /// 24 h later.
    pub end_ms: u64,
    /// Offset of local time from UTC, minutes (±14 h): which instants make a
    /// day, and so which days are weekdays.
    pub utc_offset_min: i32,
}

/// Why a baseline could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MvError {
    /// The method's parameters are not acceptable.
    #[error("{field}: {message}")]
    InvalidSpec {
        /// The parameter (`x`, `adjustment.cap_pct`, …).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The event window is not acceptable for the series.
    #[error("event: {0}")]
    InvalidEvent(String),
    /// The series is not usable (interval length, absurd readings).
    #[error("meter series: {0}")]
    InvalidSeries(String),
    /// Fewer eligible days than the X an X-of-Y baseline averages.
    #[error(
        "insufficient data: {found} eligible day(s) found, {needed} needed ({needed} of {wanted}), \
         looking back {looked_back_days} day(s){}",
        if skipped.is_empty() { String::new() } else { format!("; skipped {}", report::skip_summary(skipped)) }
    )]
    InsufficientData {
        /// Eligible days found.
        found: u32,
        /// Least needed: the method's X.
        needed: u32,
        /// Days the method would like: its Y.
        wanted: u32,
        /// Days before the event day that were looked at (the search stops
        /// at the first reading of the series or at the lookback limit).
        looked_back_days: u32,
        /// The days looked at and not eligible, oldest first.
        skipped: Vec<SkippedDay>,
    },
    /// A window the method averages has no reading at all.
    #[error("no readings {0}")]
    NoReadings(String),
}

/// `num / den` rounded to the nearest integer, halves away from zero.
/// `den` must be positive.
pub(crate) fn div_round(num: i128, den: i128) -> i128 {
    let den = den.max(1);
    let (q, r) = (num / den, num % den);
    if 2 * r.abs() >= den {
        q + num.signum()
    } else {
        q
    }
}

impl EventWindow {
    /// Checks the window for a series of `interval_s`-second intervals:
    /// start before end, at most 24 h, both on interval boundaries, offset
    /// within ±14 h.
    pub fn validate(&self, interval_s: u32) -> Result<(), MvError> {
        check_interval_s(interval_s).map_err(|e| MvError::InvalidSeries(e.to_string()))?;
        let len = u64::from(interval_s) * 1000;
        if self.end_ms <= self.start_ms {
            return Err(MvError::InvalidEvent(
                "the end is not after the start".into(),
            ));
        }
        if self.end_ms - self.start_ms > MAX_EVENT_MS {
            return Err(MvError::InvalidEvent("longer than 24 h".into()));
        }
        for (what, t) in [("start", self.start_ms), ("end", self.end_ms)] {
            if t % len != 0 {
                return Err(MvError::InvalidEvent(format!(
                    "{what} {} is not on a {} s interval boundary",
                    calendar::format_rfc3339(t, self.utc_offset_min),
                    interval_s
                )));
            }
        }
        if self.utc_offset_min.abs() > calendar::MAX_UTC_OFFSET_MIN {
            return Err(MvError::InvalidEvent(format!(
                "utc_offset_min {} is beyond ±14 h",
                self.utc_offset_min
            )));
        }
        Ok(())
    }
}

/// Computes the baseline of `series` for `event` by `spec`, and what was
/// delivered.
///
/// # X-of-Y (`high X of Y`; `10 of 10` when X = Y)
///
/// Candidate days are the local days before the event day, most recent
/// first, at most `max_lookback_days` back (and not before the series' first
/// reading). A day is **eligible** unless
/// * `same_day_type` is on and it is a weekend day (Saturday, Sunday) for a
///   weekday event or a weekday for a weekend event;
/// * it is in `excluded_days` (earlier event days, holidays);
/// * it lacks a reading in the event's hours, or, with an adjustment, in the
///   adjustment window.
///
/// The Y most recent eligible days are ranked by their load over the event's
/// hours (Σ readings; ties go to the more recent day) and the X highest,
/// the set *D*, are averaged interval by interval:
///
/// ```text
///   baseline(t) = Σ_{d∈D} load_d(t) / X
/// ```
///
/// When fewer than Y eligible days exist the ones found are used, provided
/// there are at least X (the X highest of them); with fewer than X the
/// result is [`MvError::InsufficientData`], which lists the skipped days.
///
/// # Day-of adjustment (X-of-Y only)
///
/// Over the window *W* of `hours` ending `gap_hours` before the event start,
/// using the intervals of *W* that have a reading on the event day (none
/// is [`MvError::NoReadings`]):
///
/// ```text
///   actual_avg   = Σ_{t∈W} actual(t) / |W|
///   baseline_avg = Σ_{t∈W} baseline(t) / |W|          (unadjusted)
///   multiplicative: baseline'(t) = baseline(t) × clamp(actual_avg / baseline_avg, 1 − cap, 1 + cap)
///   additive:       baseline'(t) = baseline(t) + max(0, actual_avg − baseline_avg)
/// ```
///
/// A multiplicative factor is the exact fraction (Σ actual × X) /
/// (Σ_{d∈D} Σ_{t∈W} load_d(t)); when its denominator is 0 or negative (a
/// net exporter) no ratio exists and the factor is 1.
///
/// # Same-day
///
/// The average of every reading in the window of `before_hours` ending
/// `gap_before_hours` before the event start and the window of
/// `after_hours` starting `gap_after_hours` after its end (intervals without
/// a reading are left out; none at all is [`MvError::NoReadings`]); the
/// baseline is that average in every event interval.
///
/// # Delivered
///
/// ```text
///   delivered(t)    = baseline(t) − actual(t)            (intervals with a reading)
///   avg delivered   = Σ delivered / measured intervals
///   delivered Wh    = Σ delivered × interval_s / 3600
///   performance %   = avg delivered / committed × 100     (BaselineReport::performance_pct)
/// ```
pub fn compute(
    spec: &BaselineSpec,
    series: &MeterSeries,
    event: &EventWindow,
    excluded_days: &[Date],
) -> Result<BaselineReport, MvError> {
    spec.validate()?;
    event.validate(series.interval_s)?;
    check_readings(spec, series, event)?;
    let mut report = BaselineReport {
        method: spec.to_string(),
        interval_s: series.interval_s,
        event: Window {
            start_ms: event.start_ms,
            end_ms: event.end_ms,
        },
        utc_offset_min: event.utc_offset_min,
        event_day: Date::from_unix_ms(event.start_ms, event.utc_offset_min),
        days_used: Vec::new(),
        days_skipped: Vec::new(),
        adjustment: None,
        same_day: None,
        intervals: Vec::new(),
        measured_intervals: 0,
        missing_intervals: 0,
        avg_baseline_w: 0,
        avg_delivered_w: None,
        delivered_wh: 0,
    };
    let baseline = match spec {
        BaselineSpec::XOfY(s) => x_of_y::baseline(s, series, event, excluded_days, &mut report)?,
        BaselineSpec::SameDay(s) => same_day::baseline(s, series, event, &mut report)?,
    };
    report.totals(&baseline, |t| series.get(t));
    Ok(report)
}

/// Rejects readings beyond [`MAX_READING_W`] in the span a method may read.
fn check_readings(
    spec: &BaselineSpec,
    series: &MeterSeries,
    event: &EventWindow,
) -> Result<(), MvError> {
    let (before, after) = match spec {
        BaselineSpec::XOfY(s) => ((u64::from(s.max_lookback_days) + 1) * MS_PER_DAY, 0),
        BaselineSpec::SameDay(s) => (
            u64::from(s.before_hours + s.gap_before_hours) * HOUR_MS,
            u64::from(s.after_hours + s.gap_after_hours) * HOUR_MS,
        ),
    };
    let from = event.start_ms.saturating_sub(before);
    let to = event.end_ms.saturating_add(after);
    if let Some((&t, &w)) = series
        .points
        .range(from..to)
        .find(|(_, w)| w.unsigned_abs() > MAX_READING_W as u64)
    {
        return Err(MvError::InvalidSeries(format!(
            "{w} W at {} is beyond any real load",
            calendar::format_rfc3339(t, event.utc_offset_min)
        )));
    }
    Ok(())
}
