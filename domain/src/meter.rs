//! Interval meter data: the metered load of a site, one average power per
//! fixed-length interval, and the CSV files utilities deliver it in.
//!
//! ```text
//!   CSV text ──parse_csv(text, interval_s)──► BTreeMap<site, MeterSeries> ──► mv::compute
//!     every bad line listed (line, column, what is wrong), up to 20
//! ```
//!
//! A [`MeterSeries`] holds one site's readings: the *average* net import over
//! each interval in integer W (negative = export), keyed by the interval's
//! start in Unix ms. An interval with no reading is absent, never zero, so a
//! gap in the data is never mistaken for a load that dropped to nothing.
//!
//! Interval starts are aligned to the interval length counted from the Unix
//! epoch (a 15-minute series starts at :00, :15, :30, :45 UTC). The length
//! must divide a day (300 s and 900 s in practice; 1 s or 2 s in tests of the
//! live system), so every day holds whole intervals and the same clock time
//! on another day is an interval start too.
//!
//! # CSV format
//!
//! ```text
//! # site-001: 15-minute data from the utility's MDM export
//! site,start,kw
//! site-001,2026-07-01T17:00:00Z,3.250
//! site-001,2026-07-01T19:15:00+02:00,3.100
//! site-002,1782925200000,-1.5
//! ```
//!
//! * The first line that is neither blank nor a comment is the header. It
//!   names the columns, in any order: `site`, `start`, and either `kw`
//!   (average power over the interval, kW) or `kwh` (energy over the
//!   interval, kWh, converted to average power: kW = kWh × 3600 / interval_s).
//!   Any other column is an error.
//! * `site` is a node id (1 to 64 characters of `A-Z a-z 0-9 - _ . :`).
//! * `start` is the start of the interval: RFC 3339 with `Z` or an offset
//!   (`2026-07-01T17:00:00Z`, `2026-07-01T19:00:00+02:00`) or Unix
//!   milliseconds. It must be a multiple of the interval length since the
//!   epoch.
//! * The value is a decimal number, net import (negative = export),
//!   rounded to the nearest watt; NaN, infinities and magnitudes above
//!   100 MW (100 000 kW, per site) are rejected.
//! * Blank lines and lines starting with `#` are ignored; fields are trimmed
//!   and may be wrapped in double quotes (`"site-001"`), but there is no
//!   escaping: ids, times and numbers never contain commas.
//! * The same (site, start) twice is accepted when both lines give the same
//!   value (a re-sent file) and an error when they differ.
//!
//! Errors name the 1-based line and the column, e.g.
//! `meter.csv:7: kw: "3,2" is not a number`; every problem is listed (up to
//! [`MAX_CSV_PROBLEMS`]) so a file is fixed in one round.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::mv::calendar::{format_rfc3339, parse_timestamp};

#[cfg(test)]
mod tests;

/// Largest average power accepted for one site, W: 100 MW. A bigger figure is
/// a unit mix-up (W read as kW), not a real meter.
pub const MAX_SITE_W: i64 = 100_000_000;

/// Most problems one CSV error lists.
pub const MAX_CSV_PROBLEMS: usize = 20;

/// One site's metered load: average net import per interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterSeries {
    /// Length of every interval, s. At least 1 and a divisor of 86 400, so a
    /// day holds whole intervals (checked by [`MeterSeries::new`] and by
    /// every computation that uses the series).
    pub interval_s: u32,
    /// Average net import over the interval, W (negative = export), keyed by
    /// the interval's start, Unix ms, a multiple of `interval_s` × 1000. An
    /// interval without a reading is absent (not zero).
    pub points: BTreeMap<u64, i64>,
}

/// Why a reading or an interval length was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    /// Interval length that is 0 or does not divide a day.
    #[error("interval of {0} s: must be at least 1 s and divide a day (86400 s), e.g. 300 or 900")]
    BadInterval(u32),
    /// A start that is not the start of an interval.
    #[error("{} is not the start of a {interval_s} s interval", format_rfc3339(*start_ms, 0))]
    NotAligned {
        /// The start given, Unix ms.
        start_ms: u64,
        /// The interval length, s.
        interval_s: u32,
    },
    /// An average power above [`MAX_SITE_W`] in magnitude.
    #[error("{0} W is absurd for one site (limit ±100 MW)")]
    Absurd(i64),
}

/// Checks an interval length: at least 1 s and a divisor of 86 400.
pub fn check_interval_s(interval_s: u32) -> Result<(), MeterError> {
    if interval_s == 0 || 86_400 % interval_s != 0 {
        return Err(MeterError::BadInterval(interval_s));
    }
    Ok(())
}

impl MeterSeries {
    /// An empty series of `interval_s`-second intervals.
    pub fn new(interval_s: u32) -> Result<Self, MeterError> {
        check_interval_s(interval_s)?;
        Ok(MeterSeries {
            interval_s,
            points: BTreeMap::new(),
        })
    }

    /// Length of an interval, ms.
    pub fn interval_ms(&self) -> u64 {
        u64::from(self.interval_s) * 1000
    }

    /// Whether `start_ms` is the start of an interval.
    pub fn is_aligned(&self, start_ms: u64) -> bool {
        self.interval_s != 0 && start_ms.is_multiple_of(self.interval_ms())
    }

    /// Records the average power `w` over the interval starting at
    /// `start_ms`; returns the reading it replaces.
    pub fn insert(&mut self, start_ms: u64, w: i64) -> Result<Option<i64>, MeterError> {
        check_interval_s(self.interval_s)?;
        if !self.is_aligned(start_ms) {
            return Err(MeterError::NotAligned {
                start_ms,
                interval_s: self.interval_s,
            });
        }
        if w.unsigned_abs() > MAX_SITE_W as u64 {
            return Err(MeterError::Absurd(w));
        }
        Ok(self.points.insert(start_ms, w))
    }

    /// The reading of the interval starting at `start_ms`, if there is one.
    pub fn get(&self, start_ms: u64) -> Option<i64> {
        self.points.get(&start_ms).copied()
    }

    /// Starts of the whole intervals inside `[from_ms, to_ms)`, read or not.
    pub fn starts(&self, from_ms: u64, to_ms: u64) -> impl Iterator<Item = u64> {
        let len = self.interval_ms().max(1);
        let first = from_ms.div_ceil(len).checked_mul(len);
        let mut next = first;
        std::iter::from_fn(move || {
            let s = next?;
            let end = s.checked_add(len)?;
            if end > to_ms {
                return None;
            }
            next = Some(end);
            Some(s)
        })
    }

    /// Start of the earliest reading.
    pub fn first_start(&self) -> Option<u64> {
        self.points.keys().next().copied()
    }
}

/// One problem with one line of a meter CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvProblem {
    /// 1-based line number.
    pub line: usize,
    /// The column it is about (`site`, `start`, `kw`, `kwh`), when it is
    /// about one.
    pub column: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Why a meter CSV file was not accepted: every problem found, in line
/// order, up to [`MAX_CSV_PROBLEMS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CsvError {
    /// The file, for messages (`file.csv:7: …`); `None` gives `line 7: …`.
    pub path: Option<String>,
    /// The problems; never empty.
    pub problems: Vec<CsvProblem>,
    /// There were more problems than listed.
    pub truncated: bool,
}

impl CsvError {
    /// The same error, naming `path` in its messages.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let more = if self.truncated { " (first ones)" } else { "" };
        let s = if n == 1 { "" } else { "s" };
        match &self.path {
            Some(p) => write!(f, "meter data {p}: {n} problem{s}{more}")?,
            None => write!(f, "meter data: {n} problem{s}{more}")?,
        }
        for p in &self.problems {
            match &self.path {
                Some(path) => write!(f, "\n  {path}:{}: ", p.line)?,
                None => write!(f, "\n  line {}: ", p.line)?,
            }
            if let Some(c) = &p.column {
                write!(f, "{c}: ")?;
            }
            f.write_str(&p.message)?;
        }
        if self.truncated {
            write!(f, "\n  … and more; stopped after {MAX_CSV_PROBLEMS}")?;
        }
        Ok(())
    }
}

/// What the value column holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// Average power, kW.
    Kw,
    /// Energy over the interval, kWh.
    Kwh,
}

impl ValueKind {
    fn name(self) -> &'static str {
        match self {
            ValueKind::Kw => "kw",
            ValueKind::Kwh => "kwh",
        }
    }
}

/// Positions of the columns, from the header.
struct Columns {
    count: usize,
    site: usize,
    start: usize,
    value: usize,
    kind: ValueKind,
}

/// Collects problems up to the limit.
struct Problems {
    list: Vec<CsvProblem>,
    truncated: bool,
}

impl Problems {
    fn add(&mut self, line: usize, column: Option<&str>, message: impl Into<String>) {
        if self.list.len() >= MAX_CSV_PROBLEMS {
            self.truncated = true;
            return;
        }
        self.list.push(CsvProblem {
            line,
            column: column.map(str::to_string),
            message: message.into(),
        });
    }

    fn full(&self) -> bool {
        self.truncated
    }
}

/// Splits a line into trimmed fields, unwrapping `"…"`.
fn fields(line: &str) -> Vec<&str> {
    line.split(',')
        .map(|f| {
            let f = f.trim();
            f.strip_prefix('"')
                .and_then(|g| g.strip_suffix('"'))
                .unwrap_or(f)
                .trim()
        })
        .collect()
}

/// A field shortened for messages (a hostile file may have huge fields).
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

fn header(line_no: usize, line: &str, problems: &mut Problems) -> Option<Columns> {
    let names = fields(line);
    let known =
        |n: &&str| ["site", "start", "kw", "kwh"].contains(&n.to_ascii_lowercase().as_str());
    if !names.iter().any(known) {
        problems.add(
            line_no,
            None,
            format!(
                "expected the header site,start,kw (or site,start,kwh), found {}",
                shown(line)
            ),
        );
        return None;
    }
    let before = problems.list.len();
    let (mut site, mut start, mut kw, mut kwh) = (None, None, None, None);
    for (i, raw) in names.iter().enumerate() {
        let name = raw.to_ascii_lowercase();
        let slot = match name.as_str() {
            "site" => &mut site,
            "start" => &mut start,
            "kw" => &mut kw,
            "kwh" => &mut kwh,
            _ => {
                problems.add(
                    line_no,
                    None,
                    format!(
                        "unknown column {} (column {}); the header is site,start,kw or site,start,kwh",
                        shown(raw),
                        i + 1
                    ),
                );
                continue;
            }
        };
        if slot.replace(i).is_some() {
            problems.add(line_no, Some(&name), "column named twice");
        }
    }
    if kw.is_some() && kwh.is_some() {
        problems.add(line_no, None, "give a kw or a kwh column, not both");
    }
    let value = kw
        .map(|i| (i, ValueKind::Kw))
        .or(kwh.map(|i| (i, ValueKind::Kwh)));
    for (missing, what) in [
        (site.is_none(), "site"),
        (start.is_none(), "start"),
        (value.is_none(), "kw (or kwh)"),
    ] {
        if missing {
            problems.add(
                line_no,
                None,
                format!("the header has no {what} column; it is site,start,kw or site,start,kwh"),
            );
        }
    }
    match (site, start, value) {
        (Some(site), Some(start), Some((value, kind))) if problems.list.len() == before => {
            Some(Columns {
                count: names.len(),
                site,
                start,
                value,
                kind,
            })
        }
        _ => None,
    }
}

/// Parses a number of kW (or kWh) into average W over an interval.
fn value_w(text: &str, kind: ValueKind, interval_s: u32) -> Result<i64, String> {
    if text.is_empty() {
        return Err("empty; a number is needed".into());
    }
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{} is not a number", shown(text)))?;
    if v.is_nan() {
        return Err(format!("{} is not a number (NaN)", shown(text)));
    }
    if v.is_infinite() {
        return Err(format!("{} is infinite", shown(text)));
    }
    let w = match kind {
        ValueKind::Kw => v * 1000.0,
        ValueKind::Kwh => v * 3_600_000.0 / f64::from(interval_s),
    };
    if w.abs() > MAX_SITE_W as f64 {
        let what = match kind {
            ValueKind::Kw => String::new(),
            ValueKind::Kwh => format!(" (= {:.0} kW average)", w / 1000.0),
        };
        return Err(format!(
            "{}{what} is absurd for one site (limit ±100000 kW)",
            shown(text)
        ));
    }
    Ok(w.round() as i64)
}

/// Parses meter CSV text (see the module docs) into one series per site,
/// every series of `interval_s`-second intervals.
pub fn parse_csv(text: &str, interval_s: u32) -> Result<BTreeMap<NodeId, MeterSeries>, CsvError> {
    let mut problems = Problems {
        list: Vec::new(),
        truncated: false,
    };
    if let Err(e) = check_interval_s(interval_s) {
        problems.add(0, None, e.to_string());
        return Err(CsvError {
            path: None,
            problems: problems.list,
            truncated: false,
        });
    }
    let interval_ms = u64::from(interval_s) * 1000;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut columns: Option<Columns> = None;
    // Per site: start → (W, line it came from), to name both lines of a
    // conflicting duplicate.
    let mut sites: BTreeMap<NodeId, BTreeMap<u64, (i64, usize)>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if problems.full() {
            break;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some(cols) = &columns else {
            match header(line_no, trimmed, &mut problems) {
                Some(c) => columns = Some(c),
                // Without a header no line can be read.
                None => break,
            }
            continue;
        };
        let f = fields(trimmed);
        if f.len() != cols.count {
            problems.add(
                line_no,
                None,
                format!("{} fields where the header has {}", f.len(), cols.count),
            );
            continue;
        }
        let site = match NodeId::new(f[cols.site]) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.add(line_no, Some("site"), e.to_string());
                None
            }
        };
        let start = match parse_timestamp(f[cols.start]) {
            Ok(t) if t % interval_ms == 0 => Some(t),
            Ok(t) => {
                problems.add(
                    line_no,
                    Some("start"),
                    format!(
                        "{} ({}) is not the start of a {interval_s} s interval",
                        shown(f[cols.start]),
                        format_rfc3339(t, 0)
                    ),
                );
                None
            }
            Err(e) => {
                problems.add(line_no, Some("start"), e);
                None
            }
        };
        let w = match value_w(f[cols.value], cols.kind, interval_s) {
            Ok(w) => Some(w),
            Err(e) => {
                problems.add(line_no, Some(cols.kind.name()), e);
                None
            }
        };
        let (Some(site), Some(start), Some(w)) = (site, start, w) else {
            continue;
        };
        match sites.entry(site.clone()).or_default().entry(start) {
            Entry::Vacant(v) => {
                v.insert((w, line_no));
            }
            Entry::Occupied(o) => {
                let (old, old_line) = *o.get();
                if old != w {
                    problems.add(
                        line_no,
                        Some(cols.kind.name()),
                        format!(
                            "{site} at {} is given twice with different values: {} kW here, {} kW on line {old_line}",
                            format_rfc3339(start, 0),
                            w as f64 / 1000.0,
                            old as f64 / 1000.0
                        ),
                    );
                }
            }
        }
    }
    if columns.is_none() && problems.list.is_empty() {
        problems.add(
            1,
            None,
            "no header line; the file starts with site,start,kw (or site,start,kwh)",
        );
    }
    if !problems.list.is_empty() {
        return Err(CsvError {
            path: None,
            problems: problems.list,
            truncated: problems.truncated,
        });
    }
    Ok(sites
        .into_iter()
        .map(|(site, points)| {
            let series = MeterSeries {
                interval_s,
                points: points.into_iter().map(|(t, (w, _))| (t, w)).collect(),
            };
            (site, series)
        })
        .collect())
}

/// Writes series as meter CSV (`site,start,kw`, RFC 3339 in UTC, kW to the
/// watt); [`parse_csv`] reads it back unchanged.
pub fn to_csv<'a>(series: impl IntoIterator<Item = (&'a NodeId, &'a MeterSeries)>) -> String {
    let mut out = String::from("site,start,kw\n");
    for (site, s) in series {
        for (&t, &w) in &s.points {
            out.push_str(&format!("{site},{},{}\n", format_rfc3339(t, 0), kw_text(w)));
        }
    }
    out
}

/// W as kW text with at most three decimals, exact (no float rounding).
fn kw_text(w: i64) -> String {
    let sign = if w < 0 { "-" } else { "" };
    let a = w.unsigned_abs();
    let (whole, frac) = (a / 1000, a % 1000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let f = format!("{frac:03}");
        format!("{sign}{whole}.{}", f.trim_end_matches('0'))
    }
}
