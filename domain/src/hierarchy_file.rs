//! Hierarchy files: the TOML format an aggregator writes its fleet in.
//!
//! ```text
//!   text ──toml + serde (spans)──► raw tables ──convert──► Hierarchy ──validate──┐
//!     │        syntax, unknown key,     │  kW → W, ids, figures,                 │
//!     │        bad enum value           │  kind rules (each at its own line)     │
//!     └──────────── every problem located: file, line, id ◄──────────────────────┘
//! ```
//!
//! [`load`] reads a file and [`parse`] checks its text; both return a
//! [`Hierarchy`] that has passed [`Hierarchy::validate`], or a [`FileError`]
//! listing every problem found (up to [`MAX_REPORTED_ERRORS`]), each with the
//! line and the id it is about, so a file is fixed in one round:
//!
//! ```text
//! hierarchy file fleet.toml: 2 problems
//!   fleet.toml:14: site-007: parent nort does not exist
//!   fleet.toml:31: site-007-pv: max_export_kw: -4 is negative
//! ```
//!
//! [`to_toml`] writes a hierarchy back out (nested, defaults left out);
//! parsing its output gives the same hierarchy back.
//!
//! # Format
//!
//! A file is a list of `[[virtual_der]]` tables and a list of `[[site]]`
//! tables, each site followed by its `[[site.der]]` tables. Order does not
//! matter between virtual DERs and sites, except that it is the order in
//! which children are listed. Keys are snake_case; a key that is not listed
//! here is an error (so a misspelling is caught, not ignored). Comments
//! (`# …`) are welcome anywhere. See `examples/small.toml` for a full
//! example and `examples/bad/` for the errors.
//!
//! Ids are 1 to 64 characters from `A-Z a-z 0-9 - _ . :` and unique across
//! virtual DERs, sites and DERs together.
//!
//! Units: power in kW, energy in kWh, ramp in kW per minute, temperature in
//! °C, times in whole seconds, cost in currency per kWh (the currency is the
//! deployment's). Internally figures are integer W, Wh and micro-currency;
//! kW are rounded to the nearest watt. A power or energy must be finite,
//! non-negative and at most [`MAX_POWER_KW`](crate::units::MAX_POWER_KW)
//! (100 GW); a cost at most 1 000 000 per kWh. An integer is accepted where a
//! decimal is expected (`5` for `5.0`).
//!
//! ## `[[virtual_der]]`: an aggregate
//!
//! | key        | type   | required | meaning |
//! |------------|--------|----------|---------|
//! | `id`       | string | yes      | unique id |
//! | `name`     | string | no       | human name (default: the id) |
//! | `parent`   | string | no       | id of the enclosing virtual DER; left out for the root, and exactly one virtual DER is the root |
//! | `strategy` | string | no       | how orders are split among its children: `pro_rata` (default), `merit_order` (cheapest first) or `fair_rotation` (least recently used first) |
//!
//! ## `[[site]]`: one grid connection
//!
//! | key        | type   | required | meaning |
//! |------------|--------|----------|---------|
//! | `id`       | string | yes      | unique id |
//! | `parent`   | string | yes      | id of the virtual DER the site belongs to |
//! | `name`     | string | no       | human name (default: the id) |
//! | `lat`      | float  | yes      | latitude, degrees, -90..=90 |
//! | `lon`      | float  | yes      | longitude, degrees, -180..=180 |
//! | `zone`     | string | yes      | grid (pricing / balancing) zone, at most 64 characters |
//! | `feeder`   | string | yes      | distribution feeder within the zone, at most 64 characters |
//! | `segment`  | string | yes      | `residential`, `commercial` or `industrial` |
//! | `owner`    | string | yes      | who owns the site, at most 128 characters |
//! | `strategy` | string | no       | how orders are split among its DERs (as above; default `pro_rata`) |
//!
//! ## `[[site.der]]`: one device at the site above it
//!
//! | key               | type    | default | meaning |
//! |-------------------|---------|---------|---------|
//! | `id`              | string  | required | unique id |
//! | `kind`            | string  | required | `battery`, `ev_charger`, `hvac`, `water_heater`, `pv` or `curtailable_load` |
//! | `name`            | string  | the id  | human name |
//! | `max_import_kw`   | float   | 0       | most it can draw (charge, heat, charge a car) |
//! | `max_export_kw`   | float   | 0       | most it can feed in (discharge, generate) |
//! | `energy_kwh`      | float   | 0       | usable storage (battery, EV pack, tank equivalent) |
//! | `soc_min_pct`     | integer | 0       | lowest state of charge allowed, 0..=100 |
//! | `soc_max_pct`     | integer | 100     | highest state of charge allowed, 0..=100 |
//! | `ramp_kw_per_min` | float   | the larger of import and export, per minute | fastest change of power |
//! | `comfort_min_c`   | float   | none    | comfort (hvac) or tank (water_heater) band, low end; give both ends or neither |
//! | `comfort_max_c`   | float   | none    | … high end; -50 <= low < high <= 80 |
//! | `min_on_s`        | integer | 0       | once on, stay on at least this long (0 = no constraint) |
//! | `min_off_s`       | integer | 0       | once off, stay off at least this long (0 = no constraint) |
//! | `max_hold_s`      | integer | 0       | how long a shed or push can be held; 0 = the kind's default |
//! | `cost_per_kwh`    | float   | 0       | cost of using the DER, for `merit_order` |
//!
//! Rules per kind: every DER needs `max_import_kw` or `max_export_kw` above
//! zero; a `battery` or `ev_charger` needs `energy_kwh` above zero;
//! `ev_charger`, `hvac`, `water_heater` and `curtailable_load` cannot export;
//! `pv` cannot import; `soc_min_pct < soc_max_pct`.
//!
//! ## Example
//!
//! ```toml
//! [[virtual_der]]
//! id = "vpp"
//! name = "Whole fleet"
//! strategy = "pro_rata"
//!
//! [[virtual_der]]
//! id = "north"
//! parent = "vpp"
//! strategy = "merit_order"
//!
//! [[site]]
//! id = "site-001"
//! parent = "north"
//! lat = 52.37
//! lon = 4.89
//! zone = "NL-north"
//! feeder = "F12"
//! segment = "residential"
//! owner = "alice"
//!
//!   [[site.der]]
//!   id = "site-001-bat"
//!   kind = "battery"
//!   max_import_kw = 5.0
//!   max_export_kw = 5.0
//!   energy_kwh = 13.5
//!   soc_min_pct = 10
//!   soc_max_pct = 95
//!   cost_per_kwh = 0.12
//! ```
//!
//! # Where problems are reported
//!
//! - syntax errors, unknown keys, wrong types and bad enum values: the line
//!   and column of the offending text, with the id of the enclosing table
//!   when it has one;
//! - a bad figure: the line of that figure; a kind rule: the line of the
//!   figure it is about (or of `kind`);
//! - a malformed id: the line of that id;
//! - an unknown or wrong parent, or a cycle: the `parent` line of the child
//!   (a DER's line is its `id` line: its parent is the site above it);
//! - a duplicate id: the line of the second occurrence;
//! - names, owners and locations: the line of that key;
//! - no root: no line.
//!
//! Checking is linear in the size of the file; files above
//! [`MAX_FILE_BYTES`] are refused before they are read.

use std::collections::HashSet;
use std::fmt;
use std::io::Read as _;
use std::path::Path;

use serde::Serialize;

use crate::hierarchy::{Hierarchy, HierarchyError, MAX_REPORTED_ERRORS};
use crate::id::NodeId;

mod export;
mod raw;

pub use export::to_toml;

use raw::{Converted, Located, NodeRef, RawFile};

/// Largest file [`load`] reads: 512 MiB (a few million DERs).
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// One problem in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based line it is about, when it is about a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), given for syntax and type errors.
    pub column: Option<usize>,
    /// The node it is about, when known.
    pub id: Option<NodeId>,
    /// What is wrong.
    pub message: String,
}

/// Why a hierarchy file was not accepted: every problem found, or why it
/// could not be read. Displays as a compiler-like report, one problem per
/// line.
#[derive(Debug, thiserror::Error)]
#[error("{}", Report::new(.path, .problems))]
pub struct FileError {
    /// The file, as given.
    pub path: String,
    /// What is wrong, in line order; never empty.
    pub problems: Vec<Problem>,
    /// The read failure, when the file could not be read at all (the
    /// problems then hold one entry describing it).
    #[source]
    pub io: Option<std::io::Error>,
}

impl FileError {
    /// The file could not be read.
    pub fn io(path: &str, err: std::io::Error) -> Self {
        let message = if err.kind() == std::io::ErrorKind::InvalidData {
            "cannot read: the file is not UTF-8 text".to_string()
        } else {
            format!("cannot read: {err}")
        };
        Self {
            path: path.to_string(),
            problems: vec![Problem {
                line: None,
                column: None,
                id: None,
                message,
            }],
            io: Some(err),
        }
    }

    fn too_large(path: &str, bytes: u64) -> Self {
        Self::new(
            path,
            vec![Problem {
                line: None,
                column: None,
                id: None,
                message: format!(
                    "the file is {bytes} bytes; hierarchy files are limited to 512 MiB \
                     ({MAX_FILE_BYTES} bytes)"
                ),
            }],
        )
    }

    fn new(path: &str, problems: Vec<Problem>) -> Self {
        Self {
            path: path.to_string(),
            problems,
            io: None,
        }
    }
}

struct Report<'a> {
    path: &'a str,
    problems: &'a [Problem],
}

impl<'a> Report<'a> {
    fn new(path: &'a str, problems: &'a [Problem]) -> Self {
        Self { path, problems }
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let s = if n == 1 { "" } else { "s" };
        write!(f, "hierarchy file {}: {n} problem{s}", self.path)?;
        for p in self.problems {
            write!(f, "\n  {}", self.path)?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
                if let Some(col) = p.column {
                    write!(f, ":{col}")?;
                }
            }
            if let Some(id) = &p.id {
                write!(f, ": {id}")?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

/// Reads and checks the hierarchy file at `path` (see [`parse`]).
pub fn load(path: &Path) -> Result<Hierarchy, FileError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| FileError::io(&shown, e))?;
    let size = file.metadata().map_err(|e| FileError::io(&shown, e))?.len();
    if size > MAX_FILE_BYTES {
        return Err(FileError::too_large(&shown, size));
    }
    let mut text = String::with_capacity(size as usize);
    // The file may grow between the size check and the read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| FileError::io(&shown, e))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::too_large(&shown, text.len() as u64));
    }
    parse(&shown, &text)
}

/// Checks `text` as a hierarchy file and returns the validated hierarchy.
/// `path_for_messages` only names the file in the problems.
pub fn parse(path_for_messages: &str, text: &str) -> Result<Hierarchy, FileError> {
    let mut raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let lines = Lines::new(text);
            let at = e.span().map(|s| s.start);
            let (line, column) = at.map(|a| lines.line_col(text, a)).unzip();
            let problem = Problem {
                line,
                column,
                id: at.and_then(|a| enclosing_id(text, a)),
                message: e.message().trim().replace('\n', "; "),
            };
            return Err(FileError::new(path_for_messages, vec![problem]));
        }
    };
    let conv = raw::convert(&mut raw);
    let errors = match conv.hierarchy.validate() {
        Ok(_) if conv.sink.list.is_empty() => return Ok(conv.hierarchy),
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    };
    let lines = Lines::new(text);
    let mut overflowed = conv.sink.overflowed;
    let mut found = locate_validation(&raw, &conv, errors, &lines, text, &mut overflowed);
    found.extend(conv.sink.list);
    let mut problems: Vec<Problem> = found
        .into_iter()
        .map(|p| {
            let line = p.at.map(|a| lines.line_col(text, a).0);
            Problem {
                line,
                column: None,
                id: p.id,
                message: p.message,
            }
        })
        .collect();
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    if problems.len() > MAX_REPORTED_ERRORS {
        problems.truncate(MAX_REPORTED_ERRORS);
        overflowed = true;
    }
    if overflowed {
        problems.push(Problem {
            line: None,
            column: None,
            id: None,
            message: HierarchyError::TooMany.to_string(),
        });
    }
    Err(FileError::new(path_for_messages, problems))
}

/// Gives each validation error the place it is about, leaving out the ones
/// that only follow from a problem conversion already reported.
fn locate_validation(
    raw: &RawFile,
    conv: &Converted,
    errors: Vec<HierarchyError>,
    lines: &Lines,
    text: &str,
    overflowed: &mut bool,
) -> Vec<Located> {
    // With an id used twice, "which kind is it" has no single answer; the
    // duplicate is the report that matters.
    let duplicated: HashSet<NodeId> = errors
        .iter()
        .filter_map(|e| match e {
            HierarchyError::DuplicateId { id } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let errors: Vec<HierarchyError> = errors
        .into_iter()
        .filter(|e| match e {
            HierarchyError::WrongParentKind { id, parent, .. } => {
                !duplicated.contains(id) && !duplicated.contains(parent)
            }
            // Conversion ran the same rating checks, each at its own line.
            HierarchyError::BadField { field, .. } => *field != "rating",
            HierarchyError::UnknownParent { parent, .. } => {
                !conv.left_out.contains(parent.as_str())
            }
            HierarchyError::NoRoot => !conv.left_out_root,
            HierarchyError::TooMany => {
                *overflowed = true;
                false
            }
            _ => true,
        })
        .collect();
    let wanted: HashSet<&str> = errors
        .iter()
        .filter_map(|e| e.id())
        .map(NodeId::as_str)
        .collect();
    let places = raw.locate(&wanted);
    let line_of = |at: usize| lines.line_col(text, at).0;

    errors
        .into_iter()
        .map(|e| {
            let Some(id) = e.id().cloned() else {
                let message = match e {
                    HierarchyError::NoRoot if raw.virtual_der.is_empty() => {
                        format!("{e} (the file has no [[virtual_der]] table)")
                    }
                    _ => e.to_string(),
                };
                return Located {
                    at: None,
                    id: None,
                    message,
                };
            };
            let refs: &[NodeRef] = places.get(id.as_str()).map_or(&[], Vec::as_slice);
            let text_of = e.to_string();
            let mut message = text_of
                .strip_prefix(&format!("{id}: "))
                .unwrap_or(&text_of)
                .to_string();
            let at = match (&e, refs) {
                (_, []) => None,
                (HierarchyError::DuplicateId { .. }, [first, second, ..]) => {
                    message.push_str(&format!(
                        " (first defined on line {})",
                        line_of(raw.id_at(*first))
                    ));
                    Some(raw.id_at(*second))
                }
                (
                    HierarchyError::UnknownParent { .. }
                    | HierarchyError::WrongParentKind { .. }
                    | HierarchyError::Cycle { .. },
                    [r, ..],
                ) => Some(raw.field_at(*r, "parent").unwrap_or_else(|| raw.id_at(*r))),
                (HierarchyError::BadField { field, reason, .. }, [r, ..]) => {
                    // A location problem names its key first ("lat 95 is …").
                    let key = if *field == "location" {
                        reason.split_whitespace().next().unwrap_or(field)
                    } else {
                        field
                    };
                    Some(raw.field_at(*r, key).unwrap_or_else(|| raw.id_at(*r)))
                }
                (_, [r, ..]) => Some(raw.id_at(*r)),
            };
            Located {
                at,
                id: Some(id),
                message,
            }
        })
        .collect()
}

/// Byte offset → line and column, built once per report.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    fn line_col(&self, text: &str, at: usize) -> (usize, usize) {
        let at = at.min(text.len());
        let line = self.starts.partition_point(|s| *s <= at).max(1);
        let start = self.starts[line - 1];
        let column = text
            .get(start..at)
            .map_or(at - start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

/// The id of the table around byte offset `at`, for errors serde reports
/// before any id is known: the `id = "…"` line after the nearest table
/// header at or above `at`. A hint only; `None` when there is no such line.
fn enclosing_id(text: &str, at: usize) -> Option<NodeId> {
    let at = (0..=at.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))?;
    let line_start = |end: usize| text[..end].rfind('\n').map_or(0, |i| i + 1);
    let mut start = line_start(at);
    loop {
        let line = text[start..].lines().next().unwrap_or("");
        if line.trim_start().starts_with('[') {
            break;
        }
        if start == 0 {
            return None;
        }
        start = line_start(start - 1);
    }
    for line in text[start..].lines().skip(1) {
        let line = line.trim_start();
        if line.starts_with('[') {
            break;
        }
        let Some(value) = line
            .strip_prefix("id")
            .map(str::trim_start)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::trim)
        else {
            continue;
        };
        let quote = value.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let inner = &value[1..];
        return NodeId::new(&inner[..inner.find(quote)?]).ok();
    }
    None
}

#[cfg(test)]
mod tests;
