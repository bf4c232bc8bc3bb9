//! What a baseline computation reports: the baseline and the delivered
//! reduction per interval, the days and windows it rests on, and totals.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::calendar::{format_time_of_day, Date};
use super::div_round;

/// A span of time, `[start_ms, end_ms)`, Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// First instant.
    pub start_ms: u64,
    /// First instant after it.
    pub end_ms: u64,
}

/// One interval of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalResult {
    /// Interval start, Unix ms.
    pub start_ms: u64,
    /// What the load would have been, average W.
    pub baseline_w: i64,
    /// Metered load, average W; `None` when the interval has no reading.
    pub actual_w: Option<i64>,
    /// Baseline − actual, W (positive = less load than the baseline);
    /// `None` without a reading (a missing reading is not a zero).
    pub delivered_w: Option<i64>,
}

/// Why a day before the event is not among the days averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    /// A weekend day for a weekday event, or the other way round.
    DayType {
        /// The skipped day is a Saturday or Sunday.
        weekend: bool,
    },
    /// In the excluded days (an earlier event, a holiday).
    Excluded,
    /// Readings missing in the event's hours on that day.
    MissingEventIntervals {
        /// How many are missing.
        missing: u32,
        /// Intervals in the window.
        of: u32,
    },
    /// Readings missing in the adjustment window on that day.
    MissingAdjustmentIntervals {
        /// How many are missing.
        missing: u32,
        /// Intervals in the window.
        of: u32,
    },
    /// Eligible, but not among the X highest-load days of the Y.
    LowerLoad,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::DayType { weekend: true } => f.write_str("weekend day"),
            SkipReason::DayType { weekend: false } => f.write_str("weekday"),
            SkipReason::Excluded => f.write_str("excluded"),
            SkipReason::MissingEventIntervals { missing, of } => {
                write!(f, "{missing} of {of} readings missing in the event hours")
            }
            SkipReason::MissingAdjustmentIntervals { missing, of } => {
                write!(
                    f,
                    "{missing} of {of} readings missing in the adjustment window"
                )
            }
            SkipReason::LowerLoad => f.write_str("lower load than the days used"),
        }
    }
}

/// A day not used, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedDay {
    /// The local day.
    pub date: Date,
    /// Why.
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// How the day-of adjustment came out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdjustmentOutcome {
    /// Baseline × `factor`.
    Multiplicative {
        /// The factor applied (after the cap).
        factor: f64,
        /// Event-day average / baseline average before the cap; `None`
        /// when the baseline average is 0 or negative (a ratio means
        /// nothing there, and the factor is then 1).
        uncapped_factor: Option<f64>,
        /// The cap limited the factor.
        capped: bool,
    },
    /// Baseline + `offset_w`.
    Additive {
        /// The offset added, W (never negative).
        offset_w: i64,
        /// Event-day average − baseline average, W, before the floor at 0.
        uncapped_offset_w: i64,
        /// The difference was negative and became 0.
        capped: bool,
    },
}

/// The day-of adjustment applied to an X-of-Y baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AppliedAdjustment {
    /// Factor or offset.
    #[serde(flatten)]
    pub outcome: AdjustmentOutcome,
    /// The window on the event day.
    pub window: Window,
    /// Average metered load in the window on the event day, W.
    pub event_day_avg_w: i64,
    /// Average of the unadjusted baseline over the same intervals, W.
    pub baseline_avg_w: i64,
    /// Event-day readings missing in the window (the averages use the
    /// intervals that have one).
    pub missing_intervals: u32,
}

/// What a same-day baseline averaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SameDayBasis {
    /// The windows before and after the event that were averaged.
    pub windows: Vec<Window>,
    /// Readings found in them.
    pub readings: u32,
    /// Intervals in them without a reading (left out of the average).
    pub missing_intervals: u32,
    /// Their average, W: the baseline of every event interval.
    pub avg_w: i64,
}

/// The result of a baseline computation for one series and one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineReport {
    /// The method, as a human label.
    pub method: String,
    /// Interval length, s.
    pub interval_s: u32,
    /// The event, Unix ms.
    pub event: Window,
    /// Offset of local time from UTC, minutes (days are local).
    pub utc_offset_min: i32,
    /// The local day of the event start.
    pub event_day: Date,
    /// X-of-Y: the days averaged, oldest first (empty for same-day).
    pub days_used: Vec<Date>,
    /// X-of-Y: the days looked at and not used, oldest first.
    pub days_skipped: Vec<SkippedDay>,
    /// X-of-Y: the day-of adjustment, when the method has one.
    pub adjustment: Option<AppliedAdjustment>,
    /// Same-day: what was averaged.
    pub same_day: Option<SameDayBasis>,
    /// One entry per interval of the event, in time order.
    pub intervals: Vec<IntervalResult>,
    /// Intervals with a reading.
    pub measured_intervals: u32,
    /// Intervals without one (no actual, no delivered).
    pub missing_intervals: u32,
    /// Average baseline over all event intervals, W.
    pub avg_baseline_w: i64,
    /// Average delivered over the measured intervals, W; `None` when none
    /// was measured.
    pub avg_delivered_w: Option<i64>,
    /// Delivered energy over the measured intervals, Wh: Σ delivered W ×
    /// interval_s / 3600, rounded once at the end.
    pub delivered_wh: i64,
}

impl BaselineReport {
    /// Fills the intervals and totals from a baseline per interval and the
    /// event day's readings.
    pub(super) fn totals(
        &mut self,
        baseline_w: &[(u64, i64)],
        actual: impl Fn(u64) -> Option<i64>,
    ) {
        let mut delivered_sum: i128 = 0;
        let mut baseline_sum: i128 = 0;
        let (mut measured, mut missing) = (0u32, 0u32);
        self.intervals = baseline_w
            .iter()
            .map(|&(start_ms, b)| {
                baseline_sum += i128::from(b);
                let actual_w = actual(start_ms);
                let delivered_w = actual_w.map(|a| b - a);
                match delivered_w {
                    Some(d) => {
                        measured += 1;
                        delivered_sum += i128::from(d);
                    }
                    None => missing += 1,
                }
                IntervalResult {
                    start_ms,
                    baseline_w: b,
                    actual_w,
                    delivered_w,
                }
            })
            .collect();
        self.measured_intervals = measured;
        self.missing_intervals = missing;
        self.avg_baseline_w = div_round(baseline_sum, baseline_w.len().max(1) as i128) as i64;
        self.avg_delivered_w =
            (measured > 0).then(|| div_round(delivered_sum, i128::from(measured)) as i64);
        self.delivered_wh = div_round(delivered_sum * i128::from(self.interval_s), 3600) as i64;
    }

    /// Average delivered over the measured intervals as a percentage of
    /// `committed_w`: Σ delivered / measured / committed × 100. `None` when
    /// nothing was committed or nothing measured.
    pub fn performance_pct(&self, committed_w: u64) -> Option<f64> {
        if committed_w == 0 || self.measured_intervals == 0 {
            return None;
        }
        let sum: i128 = self
            .intervals
            .iter()
            .filter_map(|i| i.delivered_w.map(i128::from))
            .sum();
        Some(sum as f64 / f64::from(self.measured_intervals) / committed_w as f64 * 100.0)
    }

    /// Average delivered over the measured intervals, kW, unrounded.
    pub fn avg_delivered_kw(&self) -> Option<f64> {
        if self.measured_intervals == 0 {
            return None;
        }
        let sum: i128 = self
            .intervals
            .iter()
            .filter_map(|i| i.delivered_w.map(i128::from))
            .sum();
        Some(sum as f64 / f64::from(self.measured_intervals) / 1000.0)
    }

    /// A one-line account of the adjustment, e.g. `factor 1.083 (capped
    /// from 1.412) over 13:00–16:00`, or `none`.
    pub fn adjustment_summary(&self) -> String {
        let Some(a) = &self.adjustment else {
            return "none".into();
        };
        let window = format!(
            "{}–{}",
            format_time_of_day(a.window.start_ms, self.utc_offset_min),
            format_time_of_day(a.window.end_ms, self.utc_offset_min)
        );
        let what = match a.outcome {
            AdjustmentOutcome::Multiplicative {
                factor,
                uncapped_factor: Some(raw),
                capped: true,
            } => format!("factor {factor:.4} (capped from {raw:.4})"),
            AdjustmentOutcome::Multiplicative {
                factor,
                uncapped_factor: None,
                ..
            } => format!("factor {factor:.4} (baseline average not positive: no ratio)"),
            AdjustmentOutcome::Multiplicative { factor, .. } => format!("factor {factor:.4}"),
            AdjustmentOutcome::Additive {
                offset_w,
                uncapped_offset_w,
                capped: true,
            } => format!(
                "offset {:+.3} kW (difference {:+.3} kW raised to 0)",
                offset_w as f64 / 1000.0,
                uncapped_offset_w as f64 / 1000.0
            ),
            AdjustmentOutcome::Additive { offset_w, .. } => {
                format!("offset {:+.3} kW", offset_w as f64 / 1000.0)
            }
        };
        let missing = if a.missing_intervals > 0 {
            format!(", {} readings missing", a.missing_intervals)
        } else {
            String::new()
        };
        format!(
            "{what} over {window} (event day {:.3} kW, baseline {:.3} kW{missing})",
            a.event_day_avg_w as f64 / 1000.0,
            a.baseline_avg_w as f64 / 1000.0
        )
    }
}

/// Counts of skipped days per reason, with the first dates of each, for
/// messages: `4 weekend days (2026-06-27, 2026-06-28, 2026-07-04, …); 1
/// excluded (2026-07-03)`.
pub fn skip_summary(skipped: &[SkippedDay]) -> String {
    let mut groups: Vec<(String, Vec<Date>)> = Vec::new();
    for s in skipped {
        let key = match s.reason {
            SkipReason::DayType { weekend: true } => "weekend days".to_string(),
            SkipReason::DayType { weekend: false } => "weekdays".to_string(),
            SkipReason::Excluded => "excluded".to_string(),
            SkipReason::MissingEventIntervals { .. } => {
                "with readings missing in the event hours".to_string()
            }
            SkipReason::MissingAdjustmentIntervals { .. } => {
                "with readings missing in the adjustment window".to_string()
            }
            SkipReason::LowerLoad => "with lower load".to_string(),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, dates)) => dates.push(s.date),
            None => groups.push((key, vec![s.date])),
        }
    }
    groups
        .iter()
        .map(|(k, dates)| {
            let mut shown: Vec<String> = dates.iter().take(3).map(Date::to_string).collect();
            if dates.len() > 3 {
                shown.push("…".into());
            }
            format!("{} {k} ({})", dates.len(), shown.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
