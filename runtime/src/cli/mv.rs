//! `vpp mv …`: measurement and verification offline, from a meter CSV file
//! (no node, no store): the baseline and the delivered reduction per site
//! for one event, by the same code the node settles events with
//! (`vpp_domain::mv`).
//!
//! ```text
//!   --meter FILE ──parse_csv──► series per site ──mv::compute(spec, event, excluded)──► table / JSON
//!   --method + --adjust … ──► BaselineSpec
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use vpp_domain::meter::{check_interval_s, parse_csv, MeterSeries};
use vpp_domain::mv::calendar::{format_rfc3339, parse_timestamp};
use vpp_domain::mv::{
    self, skip_summary, Adjustment, BaselineReport, BaselineSpec, Date, EventWindow, MvError,
};
use vpp_domain::units::kilo_to_unit;
use vpp_domain::NodeId;

/// `vpp mv …`
#[derive(Debug, Subcommand)]
pub enum MvCmd {
    /// Baseline and delivered reduction of every site (or one) over an
    /// event, from a meter CSV file.
    ///
    /// The meter file has a header `site,start,kw` (average kW over the
    /// interval; or `site,start,kwh`, energy over the interval) and one line
    /// per site and interval, e.g. `site-001,2026-07-01T17:00:00Z,3.25`.
    /// `start` is RFC 3339 or Unix ms; blank lines and `#` comments are
    /// ignored. Delivered = baseline − actual (positive = less load than
    /// the baseline); an interval without a reading is missing, not zero.
    #[command(after_help = "Examples:\n  \
        vpp mv baseline --method high-5-of-10 --meter examples/meter/sites.csv \\\n      \
        --event-start 2026-07-10T16:00:00Z --event-end 2026-07-10T18:00:00Z \\\n      \
        --adjust multiplicative --cap-pct 20 --exclude-day 2026-07-03 --committed-kw 10\n  \
        vpp mv baseline --method same-day --meter m.csv --site site-001 \\\n      \
        --event-start 1783702800000 --event-end 1783710000000 --format json")]
    Baseline(BaselineArgs),
}

/// How to print a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// One table per site, with totals.
    Table,
    /// The reports as JSON (W, Wh, Unix ms).
    Json,
}

/// The day-of adjustment of an X-of-Y baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdjustKind {
    /// Scale by event-day / baseline load in the window, capped by --cap-pct.
    Multiplicative,
    /// Add event-day − baseline load in the window, when positive.
    Additive,
}

/// `vpp mv baseline`
#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Baseline method: `10-of-10`, `high-5-of-10`, `3-of-5` (the X
    /// highest-load of the Y most recent eligible days), `same-day`, or a
    /// JSON spec as stored in a program, e.g.
    /// '{"method":"x_of_y","x":5,"y":10}'.
    #[arg(long, value_name = "M")]
    pub method: String,
    /// Meter data file (CSV, see above).
    #[arg(long, value_name = "FILE")]
    pub meter: PathBuf,
    /// Event start: RFC 3339 (2026-07-10T17:00:00Z, 2026-07-10T19:00:00+02:00)
    /// or Unix ms; on an interval boundary.
    #[arg(long, value_name = "T", value_parser = parse_timestamp)]
    pub event_start: u64,
    /// Event end (exclusive), as --event-start; at most 24 h after it.
    #[arg(long, value_name = "T", value_parser = parse_timestamp)]
    pub event_end: u64,
    /// Only this site [default: every site in the file].
    #[arg(long, value_name = "ID")]
    pub site: Option<String>,
    /// Interval length of the meter data, s (must divide a day: 300, 900, 3600…).
    #[arg(long, value_name = "S", default_value_t = 900)]
    pub interval_s: u32,
    /// Day-of adjustment of an X-of-Y baseline, over a window shortly before
    /// the event [default: none, or the JSON spec's].
    #[arg(long, value_enum, value_name = "KIND")]
    pub adjust: Option<AdjustKind>,
    /// Multiplicative adjustment: the factor stays within 1 ± this, % [default: 20].
    #[arg(long, value_name = "PCT")]
    pub cap_pct: Option<u32>,
    /// Adjustment window length, hours [default: 3].
    #[arg(long, value_name = "H")]
    pub adjust_hours: Option<u32>,
    /// Hours between the adjustment window's end and the event start [default: 1].
    #[arg(long, value_name = "H")]
    pub adjust_gap_hours: Option<u32>,
    /// A day not to use as a baseline day (an earlier event, a holiday),
    /// YYYY-MM-DD local; repeat the flag or separate days with commas.
    #[arg(long, value_name = "DATE", value_delimiter = ',', value_parser = parse_date)]
    pub exclude_day: Vec<Date>,
    /// Offset of local time from UTC, minutes (e.g. 120, -300): days and
    /// weekends are local, and times are printed at this offset.
    #[arg(
        long,
        value_name = "MIN",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub utc_offset_min: i32,
    /// X-of-Y: days of either type count (weekend days for a weekday event
    /// and the other way round).
    #[arg(long)]
    pub any_day_type: bool,
    /// X-of-Y: how many days back to search for eligible days [default: 45].
    #[arg(long, value_name = "DAYS")]
    pub lookback_days: Option<u32>,
    /// Same-day: hours averaged before the event [default: 2].
    #[arg(long, value_name = "H")]
    pub before_hours: Option<u32>,
    /// Same-day: hours skipped between that window and the event [default: 0].
    #[arg(long, value_name = "H")]
    pub gap_before_hours: Option<u32>,
    /// Same-day: hours averaged after the event [default: 2].
    #[arg(long, value_name = "H")]
    pub after_hours: Option<u32>,
    /// Same-day: hours skipped between the event and that window [default: 0].
    #[arg(long, value_name = "H")]
    pub gap_after_hours: Option<u32>,
    /// Committed reduction per site, kW: adds performance (average delivered
    /// / committed) to the totals.
    #[arg(long, value_name = "KW", allow_negative_numbers = true)]
    pub committed_kw: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

fn parse_date(s: &str) -> Result<Date, String> {
    s.trim().parse()
}

/// Runs `vpp mv …`.
pub(super) fn run(cmd: MvCmd) -> Result<()> {
    match cmd {
        MvCmd::Baseline(a) => baseline(&a),
    }
}

/// The flag that sets a spec field, for messages.
fn flag_of(field: &str) -> &'static str {
    match field {
        "adjustment.cap_pct" => "--cap-pct",
        "adjustment.hours" => "--adjust-hours",
        "adjustment.gap_hours" => "--adjust-gap-hours",
        "max_lookback_days" => "--lookback-days",
        "before_hours" => "--before-hours",
        "gap_before_hours" => "--gap-before-hours",
        "after_hours" => "--after-hours",
        "gap_after_hours" => "--gap-after-hours",
        _ => "--method",
    }
}

fn spec_error(e: MvError) -> anyhow::Error {
    match &e {
        MvError::InvalidSpec { field, .. } => anyhow!("{}: {e}", flag_of(field)),
        _ => anyhow!("--method: {e}"),
    }
}

/// The spec from `--method` and the flags that refine it.
fn spec(a: &BaselineArgs) -> Result<BaselineSpec> {
    let mut spec: BaselineSpec = if a.method.trim_start().starts_with('{') {
        serde_json::from_str(&a.method)
            .map_err(|e| anyhow!("--method: not a baseline spec: {e}"))?
    } else {
        a.method.parse().map_err(spec_error)?
    };
    let adjust_flags = [
        ("--adjust", a.adjust.is_some()),
        ("--cap-pct", a.cap_pct.is_some()),
        ("--adjust-hours", a.adjust_hours.is_some()),
        ("--adjust-gap-hours", a.adjust_gap_hours.is_some()),
        ("--any-day-type", a.any_day_type),
        ("--lookback-days", a.lookback_days.is_some()),
    ];
    let same_day_flags = [
        ("--before-hours", a.before_hours.is_some()),
        ("--gap-before-hours", a.gap_before_hours.is_some()),
        ("--after-hours", a.after_hours.is_some()),
        ("--gap-after-hours", a.gap_after_hours.is_some()),
    ];
    match &mut spec {
        BaselineSpec::XOfY(s) => {
            if let Some((flag, _)) = same_day_flags.iter().find(|(_, set)| *set) {
                bail!("{flag}: applies to --method same-day only");
            }
            if a.any_day_type {
                s.same_day_type = false;
            }
            if let Some(d) = a.lookback_days {
                s.max_lookback_days = d;
            }
            let (hours, gap) = s.adjustment.map_or((3, 1), |x| x.window_hours());
            let hours = a.adjust_hours.unwrap_or(hours);
            let gap_hours = a.adjust_gap_hours.unwrap_or(gap);
            let kind = match (a.adjust, s.adjustment) {
                (Some(k), _) => Some(k),
                (None, Some(Adjustment::Multiplicative { .. })) => Some(AdjustKind::Multiplicative),
                (None, Some(Adjustment::Additive { .. })) => Some(AdjustKind::Additive),
                (None, None) => None,
            };
            s.adjustment = match kind {
                Some(AdjustKind::Multiplicative) => {
                    let cap = match s.adjustment {
                        Some(Adjustment::Multiplicative { cap_pct, .. }) => cap_pct,
                        _ => 20,
                    };
                    Some(Adjustment::Multiplicative {
                        cap_pct: a.cap_pct.unwrap_or(cap),
                        hours,
                        gap_hours,
                    })
                }
                Some(AdjustKind::Additive) => {
                    if a.cap_pct.is_some() {
                        bail!("--cap-pct: applies to --adjust multiplicative only");
                    }
                    Some(Adjustment::Additive { hours, gap_hours })
                }
                None => {
                    if let Some((flag, _)) = adjust_flags[1..4].iter().find(|(_, set)| *set) {
                        bail!("{flag}: needs --adjust multiplicative or --adjust additive");
                    }
                    None
                }
            };
        }
        BaselineSpec::SameDay(s) => {
            if let Some((flag, _)) = adjust_flags.iter().find(|(_, set)| *set) {
                bail!("{flag}: applies to X-of-Y methods, not same-day");
            }
            s.before_hours = a.before_hours.unwrap_or(s.before_hours);
            s.gap_before_hours = a.gap_before_hours.unwrap_or(s.gap_before_hours);
            s.after_hours = a.after_hours.unwrap_or(s.after_hours);
            s.gap_after_hours = a.gap_after_hours.unwrap_or(s.gap_after_hours);
        }
    }
    spec.validate().map_err(spec_error)?;
    Ok(spec)
}

/// One site's outcome.
struct SiteResult {
    site: NodeId,
    report: std::result::Result<BaselineReport, MvError>,
}

fn baseline(a: &BaselineArgs) -> Result<()> {
    let spec = spec(a)?;
    let committed_w = a
        .committed_kw
        .map(|kw| kilo_to_unit(kw).map_err(|e| anyhow!("--committed-kw: {e}")))
        .transpose()?;
    let event = EventWindow {
        start_ms: a.event_start,
        end_ms: a.event_end,
        utc_offset_min: a.utc_offset_min,
    };
    check_interval_s(a.interval_s).map_err(|e| anyhow!("--interval-s: {e}"))?;
    event.validate(a.interval_s).map_err(|e| match e {
        MvError::InvalidEvent(m) => anyhow!("--event-start/--event-end: {m}"),
        other => anyhow!("{other}"),
    })?;
    let path = a.meter.display().to_string();
    let text =
        std::fs::read_to_string(&a.meter).with_context(|| format!("--meter: reading {path}"))?;
    let mut sites = parse_csv(&text, a.interval_s).map_err(|e| e.with_path(path.clone()))?;
    if let Some(only) = &a.site {
        let id = NodeId::new(only).map_err(|e| anyhow!("--site: {e}"))?;
        let Some(series) = sites.remove(&id) else {
            let known: Vec<String> = sites.keys().take(10).map(NodeId::to_string).collect();
            bail!(
                "--site: {only} has no data in {path} (sites there: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            );
        };
        sites = BTreeMap::from([(id, series)]);
    }
    if sites.is_empty() {
        bail!("{path}: no meter readings");
    }
    let results: Vec<SiteResult> = sites
        .iter()
        .map(|(site, series): (&NodeId, &MeterSeries)| SiteResult {
            site: site.clone(),
            report: mv::compute(&spec, series, &event, &a.exclude_day),
        })
        .collect();
    match a.format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&as_json(&spec, &event, committed_w, &results))?
        ),
        ReportFormat::Table => {
            let mut first = true;
            for r in &results {
                if let Ok(report) = &r.report {
                    if !first {
                        println!();
                    }
                    first = false;
                    print!("{}", table(&r.site, report, committed_w));
                }
            }
        }
    }
    let failed: Vec<&SiteResult> = results.iter().filter(|r| r.report.is_err()).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [one] if results.len() == 1 => {
            let e = one
                .report
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            bail!("{}: {e}", one.site)
        }
        many => {
            if a.format == ReportFormat::Table {
                for r in many {
                    if let Err(e) = &r.report {
                        eprintln!("{}: {e}", r.site);
                    }
                }
            }
            let names: Vec<String> = many.iter().take(5).map(|r| r.site.to_string()).collect();
            bail!(
                "no baseline for {} of {} sites ({}{})",
                many.len(),
                results.len(),
                names.join(", "),
                if many.len() > 5 { ", …" } else { "" }
            )
        }
    }
}

fn as_json(
    spec: &BaselineSpec,
    event: &EventWindow,
    committed_w: Option<u64>,
    results: &[SiteResult],
) -> Value {
    let sites: Vec<Value> = results
        .iter()
        .map(|r| match &r.report {
            Ok(report) => json!({
                "site": r.site,
                "report": report,
                "performance_pct": committed_w.and_then(|c| report.performance_pct(c)),
            }),
            Err(e) => json!({ "site": r.site, "error": e.to_string() }),
        })
        .collect();
    json!({
        "spec": spec,
        "event": event,
        "committed_w": committed_w,
        "sites": sites,
    })
}

fn kw(w: i64) -> String {
    format!("{:.3}", w as f64 / 1000.0)
}

/// One site's report as text.
fn table(site: &NodeId, r: &BaselineReport, committed_w: Option<u64>) -> String {
    let off = r.utc_offset_min;
    let mut out = String::new();
    let _ = writeln!(out, "{site}: {}", r.method);
    let _ = writeln!(
        out,
        "  event       {} – {} (local day {}, {:?})",
        format_rfc3339(r.event.start_ms, off),
        format_rfc3339(r.event.end_ms, off),
        r.event_day,
        r.event_day.weekday()
    );
    if let Some(b) = &r.same_day {
        let windows: Vec<String> = b
            .windows
            .iter()
            .map(|w| {
                format!(
                    "{} – {}",
                    format_rfc3339(w.start_ms, off),
                    format_rfc3339(w.end_ms, off)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  averaged    {} ({} readings, {} missing): {} kW",
            windows.join(" and "),
            b.readings,
            b.missing_intervals,
            kw(b.avg_w)
        );
    } else {
        let used: Vec<String> = r.days_used.iter().map(Date::to_string).collect();
        let _ = writeln!(out, "  days used   {} ({})", used.join(", "), used.len());
        if !r.days_skipped.is_empty() {
            let _ = writeln!(out, "  skipped     {}", skip_summary(&r.days_skipped));
        }
        let _ = writeln!(out, "  adjustment  {}", r.adjustment_summary());
    }
    let _ = writeln!(out);
    let width = format_rfc3339(r.event.start_ms, off).len().max(5);
    let _ = writeln!(
        out,
        "  {:<width$}  {:>12}  {:>12}  {:>12}",
        "start", "baseline kW", "actual kW", "delivered kW"
    );
    for i in &r.intervals {
        let dash = || "–".to_string();
        let _ = writeln!(
            out,
            "  {:<width$}  {:>12}  {:>12}  {:>12}",
            format_rfc3339(i.start_ms, off),
            kw(i.baseline_w),
            i.actual_w.map_or_else(dash, kw),
            i.delivered_w.map_or_else(dash, kw),
        );
    }
    let _ = writeln!(out);
    let avg = r.avg_delivered_kw().map_or_else(
        || "– (nothing metered)".to_string(),
        |k| format!("{k:.3} kW"),
    );
    let _ = write!(
        out,
        "  avg delivered {avg} · {:.3} kWh · baseline {} kW · missing {} of {} intervals",
        r.delivered_wh as f64 / 1000.0,
        kw(r.avg_baseline_w),
        r.missing_intervals,
        r.intervals.len()
    );
    if let Some(c) = committed_w {
        match r.performance_pct(c) {
            Some(p) => {
                let _ = write!(
                    out,
                    " · performance {p:.1} % of {:.3} kW",
                    c as f64 / 1000.0
                );
            }
            None => {
                let _ = write!(
                    out,
                    " · performance – ({:.3} kW committed)",
                    c as f64 / 1000.0
                );
            }
        }
    }
    let _ = writeln!(out);
    out
}
