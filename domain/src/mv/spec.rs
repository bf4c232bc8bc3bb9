//! How a program measures performance: the baseline method and its
//! parameters, as stored in program definitions and given on the command
//! line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::MvError;

/// Most days an X-of-Y baseline may average over (its Y).
pub const MAX_Y: u32 = 30;

/// Most days any baseline looks back for eligible days.
pub const MAX_LOOKBACK_DAYS: u32 = 90;

/// Days an X-of-Y baseline looks back by default.
pub const DEFAULT_LOOKBACK_DAYS: u32 = 45;

/// Longest adjustment or same-day window, and longest gap, hours.
pub const MAX_WINDOW_HOURS: u32 = 12;

/// A baseline method and its parameters. In JSON (inside a program):
///
/// ```json
/// {"method": "x_of_y", "x": 5, "y": 10,
///  "adjustment": {"kind": "multiplicative", "cap_pct": 20}}
/// {"method": "same_day", "before_hours": 2, "after_hours": 2}
/// ```
///
/// On the command line, the short forms `10-of-10`, `high-5-of-10`,
/// `3-of-5` and `same-day` ([`FromStr`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum BaselineSpec {
    /// The highest X of the Y most recent eligible days, optionally adjusted
    /// on the day of the event.
    XOfY(XOfYSpec),
    /// The load just before (and after) the event, on the day itself.
    SameDay(SameDaySpec),
}

/// An X-of-Y baseline: see [`compute`](super::compute) for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XOfYSpec {
    /// How many of the candidate days are averaged: the highest-load ones.
    pub x: u32,
    /// How many eligible days are candidates: the most recent ones.
    pub y: u32,
    /// Only days of the event day's type count (weekdays for a weekday
    /// event, Saturdays and Sundays for a weekend one): loads differ too much
    /// between the two.
    #[serde(default = "yes")]
    pub same_day_type: bool,
    /// How many days before the event day are searched for eligible days.
    #[serde(default = "default_lookback")]
    pub max_lookback_days: u32,
    /// Day-of adjustment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<Adjustment>,
}

/// A day-of adjustment: scales or lifts the X-of-Y baseline so that it
/// matches the event day's load over a window shortly before the event
/// (hot days are hotter than the average of past days).
///
/// The window is `hours` long and ends `gap_hours` before the event start;
/// the gap keeps pre-cooling or notice-driven changes out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Adjustment {
    /// Baseline × factor, factor = event-day average / baseline average
    /// over the window, limited to [1 − cap, 1 + cap].
    Multiplicative {
        /// Largest change of the factor from 1, percent (0 to 100).
        cap_pct: u32,
        /// Window length, hours.
        #[serde(default = "three")]
        hours: u32,
        /// Hours between the window's end and the event start.
        #[serde(default = "one")]
        gap_hours: u32,
    },
    /// Baseline + offset, offset = max(0, event-day average − baseline
    /// average) over the window: it can only raise the baseline.
    Additive {
        /// Window length, hours.
        #[serde(default = "three")]
        hours: u32,
        /// Hours between the window's end and the event start.
        #[serde(default = "one")]
        gap_hours: u32,
    },
}

/// A same-day baseline: the average load in windows around the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SameDaySpec {
    /// Length of the window before the event, hours (0 = none).
    #[serde(default = "two")]
    pub before_hours: u32,
    /// Hours skipped between that window and the event start.
    #[serde(default)]
    pub gap_before_hours: u32,
    /// Length of the window after the event, hours (0 = none).
    #[serde(default = "two")]
    pub after_hours: u32,
    /// Hours skipped between the event end and that window (rebound).
    #[serde(default)]
    pub gap_after_hours: u32,
}

fn yes() -> bool {
    true
}
fn default_lookback() -> u32 {
    DEFAULT_LOOKBACK_DAYS
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

impl XOfYSpec {
    /// Highest `x` of the `y` most recent eligible days of the same day
    /// type, looking back [`DEFAULT_LOOKBACK_DAYS`], no adjustment.
    pub fn new(x: u32, y: u32) -> Self {
        XOfYSpec {
            x,
            y,
            same_day_type: true,
            max_lookback_days: DEFAULT_LOOKBACK_DAYS,
            adjustment: None,
        }
    }
}

impl Default for SameDaySpec {
    fn default() -> Self {
        SameDaySpec {
            before_hours: 2,
            gap_before_hours: 0,
            after_hours: 2,
            gap_after_hours: 0,
        }
    }
}

impl Adjustment {
    /// Window length and gap before the event, hours.
    pub fn window_hours(&self) -> (u32, u32) {
        match *self {
            Adjustment::Multiplicative {
                hours, gap_hours, ..
            }
            | Adjustment::Additive { hours, gap_hours } => (hours, gap_hours),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> MvError {
    MvError::InvalidSpec {
        field,
        message: message.into(),
    }
}

impl BaselineSpec {
    /// Checks the parameters: 1 ≤ x ≤ y ≤ [`MAX_Y`], y ≤ max_lookback_days ≤
    /// [`MAX_LOOKBACK_DAYS`], cap 0 to 100 %, windows 1 to
    /// [`MAX_WINDOW_HOURS`] hours and gaps at most as long.
    pub fn validate(&self) -> Result<(), MvError> {
        match self {
            BaselineSpec::XOfY(s) => {
                if s.y == 0 || s.y > MAX_Y {
                    return Err(invalid("y", format!("{} must be 1 to {MAX_Y} days", s.y)));
                }
                if s.x == 0 || s.x > s.y {
                    return Err(invalid(
                        "x",
                        format!("{} must be 1 to y ({}) days", s.x, s.y),
                    ));
                }
                if s.max_lookback_days < s.y || s.max_lookback_days > MAX_LOOKBACK_DAYS {
                    return Err(invalid(
                        "max_lookback_days",
                        format!(
                            "{} must be y ({}) to {MAX_LOOKBACK_DAYS} days",
                            s.max_lookback_days, s.y
                        ),
                    ));
                }
                if let Some(a) = &s.adjustment {
                    if let Adjustment::Multiplicative { cap_pct, .. } = a {
                        if *cap_pct > 100 {
                            return Err(invalid(
                                "adjustment.cap_pct",
                                format!("{cap_pct} must be 0 to 100 %"),
                            ));
                        }
                    }
                    let (hours, gap) = a.window_hours();
                    if hours == 0 || hours > MAX_WINDOW_HOURS {
                        return Err(invalid(
                            "adjustment.hours",
                            format!("{hours} must be 1 to {MAX_WINDOW_HOURS} hours"),
                        ));
                    }
                    if gap > MAX_WINDOW_HOURS {
                        return Err(invalid(
                            "adjustment.gap_hours",
                            format!("{gap} must be 0 to {MAX_WINDOW_HOURS} hours"),
                        ));
                    }
                }
                Ok(())
            }
            BaselineSpec::SameDay(s) => {
                for (field, v) in [
                    ("before_hours", s.before_hours),
                    ("gap_before_hours", s.gap_before_hours),
                    ("after_hours", s.after_hours),
                    ("gap_after_hours", s.gap_after_hours),
                ] {
                    if v > MAX_WINDOW_HOURS {
                        return Err(invalid(
                            field,
                            format!("{v} must be 0 to {MAX_WINDOW_HOURS} hours"),
                        ));
                    }
                }
                if s.before_hours == 0 && s.after_hours == 0 {
                    return Err(invalid(
                        "before_hours",
                        "before_hours and after_hours are both 0: there is no window to average",
                    ));
                }
                if s.before_hours == 0 && s.gap_before_hours > 0 {
                    return Err(invalid(
                        "gap_before_hours",
                        "a gap before a window of 0 hours means nothing",
                    ));
                }
                if s.after_hours == 0 && s.gap_after_hours > 0 {
                    return Err(invalid(
                        "gap_after_hours",
                        "a gap before a window of 0 hours means nothing",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The same method without its day-of adjustment (for an expected
    /// baseline before the adjustment window has been metered).
    pub fn without_adjustment(&self) -> BaselineSpec {
        match self {
            BaselineSpec::XOfY(s) => BaselineSpec::XOfY(XOfYSpec {
                adjustment: None,
                ..s.clone()
            }),
            other => other.clone(),
        }
    }

    /// The command-line short form: `10-of-10`, `high-5-of-10`, `same-day`
    /// (parameters beyond X and Y are not part of it).
    pub fn short_name(&self) -> String {
        match self {
            BaselineSpec::XOfY(s) if s.x == s.y => format!("{}-of-{}", s.x, s.y),
            BaselineSpec::XOfY(s) => format!("high-{}-of-{}", s.x, s.y),
            BaselineSpec::SameDay(_) => "same-day".into(),
        }
    }
}

/// A human label: `high 5 of 10, multiplicative adjustment (cap ±20 %,
/// 3 h ending 1 h before the event)`, `same day (2 h before, 2 h after)`.
impl fmt::Display for BaselineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaselineSpec::XOfY(s) => {
                if s.x == s.y {
                    write!(f, "{} of {}", s.x, s.y)?;
                } else {
                    write!(f, "high {} of {}", s.x, s.y)?;
                }
                if !s.same_day_type {
                    f.write_str(", any day type")?;
                }
                match s.adjustment {
                    None => Ok(()),
                    Some(Adjustment::Multiplicative {
                        cap_pct,
                        hours,
                        gap_hours,
                    }) => write!(
                        f,
                        ", multiplicative adjustment (cap ±{cap_pct} %, {hours} h ending {gap_hours} h before the event)"
                    ),
                    Some(Adjustment::Additive { hours, gap_hours }) => write!(
                        f,
                        ", additive adjustment (upward only, {hours} h ending {gap_hours} h before the event)"
                    ),
                }
            }
            BaselineSpec::SameDay(s) => {
                f.write_str("same day (")?;
                let mut parts = Vec::new();
                for (h, gap, side) in [
                    (s.before_hours, s.gap_before_hours, "before"),
                    (s.after_hours, s.gap_after_hours, "after"),
                ] {
                    match (h, gap) {
                        (0, _) => {}
                        (h, 0) => parts.push(format!("{h} h {side}")),
                        (h, g) => parts.push(format!("{h} h {side}, {g} h apart")),
                    }
                }
                write!(f, "{})", parts.join("; "))
            }
        }
    }
}

/// Parses the short forms `10-of-10`, `high-5-of-10`, `3-of-5` (always the
/// highest X of Y) and `same-day`, with default parameters (same day type,
/// 45 days' lookback, no adjustment; same day: 2 h before and after).
impl FromStr for BaselineSpec {
    type Err = MvError;

    fn from_str(s: &str) -> Result<Self, MvError> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        let bad = || {
            invalid(
                "method",
                format!(
                    "unknown baseline method {s:?}: use X-of-Y (e.g. 10-of-10, high-5-of-10, 3-of-5) or same-day"
                ),
            )
        };
        if norm == "same-day" {
            return Ok(BaselineSpec::SameDay(SameDaySpec::default()));
        }
        let body = norm.strip_prefix("high-").unwrap_or(&norm);
        let (x, y) = body.split_once("-of-").ok_or_else(bad)?;
        let num = |t: &str| -> Result<u32, MvError> {
            if t.is_empty() || t.len() > 4 || !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        let spec = BaselineSpec::XOfY(XOfYSpec::new(num(x)?, num(y)?));
        spec.validate()?;
        Ok(spec)
    }
}
