//! `vpp meter …`: interval meter data of sites, imported from CSV files and
//! read back.
//!
//! ```text
//!   vpp meter import FILE ──► running node: POST /api/v1/meter (its interval, its hierarchy)
//!                         └─► no node:      parse at metering.interval_s (--config), check
//!                                           sites against the stored hierarchy,
//!                                           Store::import_meter (readings + ledger entry)
//!   vpp meter show SITE   ──► GET /api/v1/meter/SITE, or Store::meter_range
//! ```
//!
//! Like `vpp hierarchy import`, both work through the node serving the data
//! dir when there is one (it holds the store's lock), else on the data dir.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde_json::Value;
use vpp_domain::mv::calendar::{format_rfc3339, parse_timestamp};
use vpp_domain::NodeId;
use vpp_store::Store;

use super::{data_dir_or_default, target, token, Target};
use crate::api::meter::{plan_import, ImportError, ImportSummary, MAX_POINTS};
use crate::client::Client;
use crate::config::NodeConfig;

/// Actor recorded in the audit ledger for an import made on the data dir
/// directly (no node, so no signed-in account).
const LOCAL_ACTOR: &str = "cli";

/// `vpp meter …`
#[derive(Debug, Subcommand)]
pub enum MeterCmd {
    /// Import interval meter data from a CSV file, all or nothing.
    ///
    /// The file has a header `site,start,kw` (average kW over the interval;
    /// or `site,start,kwh`, energy over the interval) and one line per site
    /// and interval, e.g. `site-001,2026-07-01T17:00:00Z,3.25`. `start` is
    /// RFC 3339 or Unix ms, on a boundary of the node's interval
    /// (`metering.interval_s`). Every site must be a site of the hierarchy.
    /// A bad line (all are listed, with their numbers) or an unknown site
    /// imports nothing.
    #[command(after_help = "Examples:\n  \
        vpp meter import examples/meter/sites.csv\n  \
        vpp --node http://10.0.0.5:8080 meter import july.csv")]
    Import {
        /// Meter data file (CSV).
        file: PathBuf,
        /// Config file whose `metering.interval_s` the data are in, when no
        /// node serves the data dir (a running node uses its own)
        /// [default: the built-in configuration, 300 s].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A site's readings (average kW per interval).
    #[command(after_help = "Examples:\n  \
        vpp meter show site-001\n  \
        vpp meter show site-001 --from 2026-07-01T00:00:00Z --to 2026-07-02T00:00:00Z")]
    Show {
        /// Site id.
        site: String,
        /// First interval start: RFC 3339 or Unix ms [default: 24 h before --to].
        #[arg(long, value_name = "T", value_parser = parse_timestamp)]
        from: Option<u64>,
        /// End (exclusive): RFC 3339 or Unix ms [default: now].
        #[arg(long, value_name = "T", value_parser = parse_timestamp)]
        to: Option<u64>,
        /// Print JSON (the API's answer).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `vpp meter …`.
pub(super) fn run(data_dir: Option<PathBuf>, node: Option<String>, cmd: MeterCmd) -> Result<()> {
    match cmd {
        MeterCmd::Import { file, config } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let dir = data_dir_or_default(data_dir.clone());
            let s = match target(data_dir, node, false)? {
                Target::Api(c) => {
                    let s = post_csv(&c, token(&dir), text)?;
                    println!("imported {} into the node at {}", file.display(), c.base());
                    s
                }
                Target::Store(store) => {
                    super::refuse_cluster_store(&store)?;
                    let s = import_on_store(&store, &file, &text, config.as_deref())?;
                    println!("imported {} into {}", file.display(), store.dir().display());
                    s
                }
            };
            println!(
                "{} readings for {} site(s), {} .. {} (audit ledger entry {})",
                s.readings,
                s.sites,
                format_rfc3339(s.from_ms, 0),
                format_rfc3339(s.to_ms, 0),
                s.ledger_seq
            );
            Ok(())
        }
        MeterCmd::Show {
            site,
            from,
            to,
            json,
        } => {
            let id = NodeId::new(&site).map_err(|e| anyhow!("site id {site:?}: {e}"))?;
            let mut path = format!("/api/v1/meter/{id}");
            let mut sep = '?';
            for (k, v) in [("from_ms", from), ("to_ms", to)] {
                if let Some(v) = v {
                    path.push_str(&format!("{sep}{k}={v}"));
                    sep = '&';
                }
            }
            let v = match target(data_dir, node, false)? {
                Target::Api(c) => c.get(&path)?,
                Target::Store(s) => show_on_store(&s, &id, from, to)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", table(&v));
            }
            Ok(())
        }
    }
}

/// Parses, checks and imports `text` on a store no node holds.
fn import_on_store(
    store: &Store,
    file: &Path,
    text: &str,
    config: Option<&Path>,
) -> Result<ImportSummary> {
    let cfg = match config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    let h = store.load_hierarchy()?;
    if h.is_empty() {
        bail!(
            "{} holds no hierarchy, so no site to import meter data for; import one first (vpp hierarchy import FILE)",
            store.dir().display()
        );
    }
    let sites: HashSet<&NodeId> = h.sites.iter().map(|s| &s.id).collect();
    let others: HashSet<&NodeId> = h
        .virtual_ders
        .iter()
        .map(|v| &v.id)
        .chain(h.ders.iter().map(|d| &d.id))
        .collect();
    let plan = plan_import(text, cfg.metering.interval_s, LOCAL_ACTOR, |id| {
        if sites.contains(id) {
            None
        } else if others.contains(id) {
            Some("is not a site")
        } else {
            Some("is not in the hierarchy")
        }
    })
    .map_err(|e| match e {
        // Lines named as `FILE:LINE:`, like hierarchy files.
        ImportError::Csv(c) => anyhow!(c.with_path(file.display().to_string())),
        other => anyhow!("{}: {other}", file.display()),
    })?;
    let entry = store.import_meter(&plan.readings, plan.draft)?;
    Ok(ImportSummary {
        ledger_seq: entry.seq,
        ..plan.summary
    })
}

/// The API's answer to `GET /api/v1/meter/{site}`, read from a store.
fn show_on_store(
    store: &Store,
    site: &NodeId,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<Value> {
    let to_ms = to.unwrap_or_else(vpp_actors::now_ms);
    let from_ms = from.unwrap_or(to_ms.saturating_sub(86_400_000));
    if from_ms > to_ms {
        bail!("--from is after --to");
    }
    let mut points = store.meter_range(site, from_ms, to_ms)?;
    let next = points.keys().nth(MAX_POINTS).copied();
    if let Some(n) = next {
        points.split_off(&n);
    }
    let readings: Vec<Value> = points
        .into_iter()
        .map(|(t, w)| serde_json::json!({ "start_ms": t, "kw": w as f64 / 1000.0 }))
        .collect();
    Ok(serde_json::json!({
        "site": site,
        "from_ms": from_ms,
        "to_ms": next.unwrap_or(to_ms),
        "readings": readings,
        "truncated": next.is_some(),
        "next_from_ms": next,
    }))
}

/// Readings as a table: interval start (UTC) and kW.
fn table(v: &Value) -> String {
    let mut out = String::new();
    let readings = v["readings"].as_array().cloned().unwrap_or_default();
    let ms = |k: &str| {
        v[k].as_u64()
            .map(|t| format_rfc3339(t, 0))
            .unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "{}: {} reading(s) in [{}, {})",
        v["site"].as_str().unwrap_or("?"),
        readings.len(),
        ms("from_ms"),
        ms("to_ms"),
    );
    if !readings.is_empty() {
        let _ = writeln!(out, "{:<22} {:>12}", "start (UTC)", "kW");
    }
    for r in &readings {
        let start = r["start_ms"].as_u64().map(|t| format_rfc3339(t, 0));
        let _ = writeln!(
            out,
            "{:<22} {:>12.3}",
            start.unwrap_or_default(),
            r["kw"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(next) = v["next_from_ms"].as_u64() {
        let _ = writeln!(
            out,
            "… more from {} (--from {next})",
            format_rfc3339(next, 0)
        );
    }
    out
}

/// `POST /api/v1/meter` with the CSV as `text/csv`. (The shared client
/// sends JSON and TOML bodies; CSV goes out here, with the same token and
/// the same reading of error answers.)
fn post_csv(c: &Client, token: Option<String>, text: String) -> Result<ImportSummary> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let mut req = agent
        .post(format!("{}/api/v1/meter", c.base()))
        .content_type("text/csv");
    if let Some(t) = token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.send(text).map_err(|e| {
        anyhow!(
            "cannot reach the node at {}: {e}\n(is `vpp serve` running? point at it with --node URL)",
            c.base()
        )
    })?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .context("reading the answer to POST /api/v1/meter")?;
    if status.is_success() {
        return Ok(serde_json::from_str(&body)?);
    }
    // The message lists every bad line with its number.
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let msg = v["error"]["message"].as_str().unwrap_or(body.trim());
    Err(anyhow!("POST /api/v1/meter: {} {msg}", status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_utc_starts_and_kw() {
        let v = serde_json::json!({
            "site": "s1", "from_ms": 0, "to_ms": 600_000,
            "readings": [{"start_ms": 0, "kw": 1.5}, {"start_ms": 300_000, "kw": -0.25}],
            "truncated": true, "next_from_ms": 600_000,
        });
        let t = table(&v);
        assert!(
            t.starts_with("s1: 2 reading(s) in [1970-01-01T00:00:00Z, 1970-01-01T00:10:00Z)"),
            "{t}"
        );
        assert!(t.contains("1970-01-01T00:05:00Z"), "{t}");
        assert!(t.contains("-0.250"), "{t}");
        assert!(t.contains("--from 600000"), "{t}");
    }
}
