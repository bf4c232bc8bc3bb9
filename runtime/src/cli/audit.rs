//! `vpp audit verify` and `vpp audit export`: the audit ledger, offline on
//! the data dir, for operators and auditors.
//!
//! ```text
//!   --data-dir ── Store::open ──┬─ verify_ledger ──► entries, head, ok | first bad entry
//!   (no node running:           │                      (+ --anchor SEQ:HASH checks)
//!    sled's lock says so)       └─ ledger_entries (pages of 1000) ──► JSONL | CSV
//! ```
//!
//! Both need the store to themselves: while a node runs, it holds the lock,
//! and the ledger is the node's API's business.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use vpp_domain::ledger::{from_hex, to_hex, Digest, LedgerEntry};
use vpp_store::{Store, StoreError};

use crate::serve::discover;

/// Exit code of `verify` when the chain is broken or an anchor does not hold.
const EXIT_BROKEN: i32 = 1;
/// Exit code of `verify` when the ledger could not be read at all.
const EXIT_UNREADABLE: i32 = 2;

/// Entries read per page.
const PAGE: usize = 1000;

/// Ledgers at least this long get a progress bar (on a terminal).
const PROGRESS_FROM: u64 = 10_000;

/// `vpp audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Recompute the audit ledger's hash chain and name the first entry that
    /// was altered, removed, moved or added.
    #[command(after_help = "\
Exit codes:
  0  the ledger is whole (and every --anchor holds)
  1  the ledger is broken: stdout says `ledger broken at entry N: <reason>`
  2  the ledger could not be checked (bad arguments, no store, a node holds it, I/O): stderr says why")]
    Verify {
        /// An entry and the hash it had when you last looked, `SEQ:HASH` (an
        /// export prints its head this way). A chain rewritten from that
        /// entry on is whole again, so only an anchor kept elsewhere catches
        /// it. Repeatable.
        #[arg(long, value_parser = parse_anchor)]
        anchor: Vec<(u64, Digest)>,
        /// Print the report as JSON instead (same exit codes).
        #[arg(long)]
        json: bool,
    },
    /// Write every entry with all its fields, digests in hex, one per line.
    /// Exports what is stored without checking it: run `verify` for that.
    Export {
        /// Output file, written whole or not at all [default: stdout].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Output format: `jsonl` (one JSON object per line) or `csv` (with a
        /// header line; before/after empty when absent).
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// First entry to export.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
}

/// How `export` writes entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, RFC 4180 quoting, a header line.
    Csv,
}

/// Parses `SEQ:HASH`.
fn parse_anchor(s: &str) -> Result<(u64, Digest), String> {
    let (seq, hash) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not SEQ:HASH"))?;
    let seq = seq
        .parse()
        .map_err(|_| format!("{seq:?} is not an entry number"))?;
    Ok((seq, from_hex(hash).map_err(|e| e.to_string())?))
}

/// Runs an audit command on the store in `dir`.
pub(super) fn run(dir: &Path, cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Verify { anchor, json } => {
            let code = match verify(dir, &anchor, json) {
                Ok(true) => return Ok(()),
                Ok(false) => EXIT_BROKEN,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    EXIT_UNREADABLE
                }
            };
            // The store is closed by now (verify returned); nothing is left
            // to flush or drop.
            std::process::exit(code)
        }
        AuditCmd::Export {
            output,
            format,
            from,
        } => export(dir, output.as_deref(), format, from),
    }
}

/// Opens the store for an offline audit: it must exist, and no node may
/// hold it.
fn open(dir: &Path) -> Result<Store> {
    // Store::open would create an empty store, which verifies as "ok".
    if !dir.join("db").exists() {
        bail!("no store in {} (pass the node's --data-dir)", dir.display());
    }
    Store::open(dir).map_err(|e| match e {
        StoreError::Locked { .. } => {
            let api = discover(dir)
                .map(|url| format!(" (API at {url})"))
                .unwrap_or_default();
            anyhow!(
                "the node serving {}{api} holds the store; stop it or use the API",
                dir.display()
            )
        }
        e => anyhow!(e).context(format!("opening the store in {}", dir.display())),
    })
}

/// Prints the report; whether the ledger is whole and every anchor holds.
fn verify(dir: &Path, anchors: &[(u64, Digest)], json: bool) -> Result<bool> {
    let store = open(dir)?;
    let mut report = store.verify_ledger()?;
    if report.first_bad.is_none() {
        report.first_bad = check_anchors(&store, anchors)?;
    }
    drop(store);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(report.is_ok());
    }
    println!("entries checked: {}", report.entries);
    match (&report.first_bad, &report.head) {
        (None, Some(h)) => println!("head: {}:{}", report.entries, to_hex(h)),
        (None, None) => println!("head: none (the ledger is empty)"),
        (Some(_), Some(h)) => println!("hash of the last entry read: {}", to_hex(h)),
        (Some(_), None) => {}
    }
    match &report.first_bad {
        None => {
            println!("ok");
            Ok(true)
        }
        Some(bad) => {
            println!(
                "ledger broken at entry {}: {} ({} check)",
                bad.seq, bad.reason, bad.check
            );
            Ok(false)
        }
    }
}

/// The first anchor that does not hold, as a bad entry.
fn check_anchors(
    store: &Store,
    anchors: &[(u64, Digest)],
) -> Result<Option<vpp_domain::ledger::BadEntry>> {
    use vpp_domain::ledger::{BadEntry, Check};
    let mut sorted = anchors.to_vec();
    sorted.sort();
    for (seq, want) in sorted {
        let reason = match store.ledger_entries(seq, 1)?.first() {
            Some(e) if e.seq == seq && e.hash == want => continue,
            Some(e) if e.seq == seq => format!(
                "its hash is {}, the anchor says {}: the ledger was rewritten from here on",
                to_hex(&e.hash),
                to_hex(&want)
            ),
            _ => "the anchor names it, but the ledger does not have it".to_string(),
        };
        return Ok(Some(BadEntry {
            seq,
            check: Check::Hash,
            reason,
        }));
    }
    Ok(None)
}

fn export(dir: &Path, output: Option<&Path>, format: ExportFormat, from: u64) -> Result<()> {
    let store = open(dir)?;
    let total = store.ledger_head()?.map_or(0, |(seq, _)| seq);
    let from = from.max(1);
    let todo = (total + 1).saturating_sub(from);
    let progress = (todo >= PROGRESS_FROM).then(|| {
        let pb = ProgressBar::new(todo);
        pb.set_style(
            ProgressStyle::with_template("    {bar:40} {pos}/{len} entries [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    });

    // To a file: write beside it and rename at the end, so a failed export
    // never leaves something that looks complete.
    let (mut out, tmp): (Box<dyn Write>, Option<PathBuf>) = match output {
        Some(path) => {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            (Box::new(std::io::BufWriter::new(f)), Some(tmp))
        }
        None => (
            Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            None,
        ),
    };

    let result = write_entries(&store, &mut out, format, from, progress.as_ref());
    if let Some(pb) = &progress {
        pb.finish_and_clear();
    }
    let written = match result.and_then(|n| out.flush().map(|()| n).map_err(Into::into)) {
        Ok(w) => w,
        // `| head` closed the pipe: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => return Ok(()),
        Err(e) => {
            if let Some(tmp) = &tmp {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
    };
    drop(out);
    if let (Some(tmp), Some(path)) = (&tmp, output) {
        std::fs::rename(tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    match written.last {
        Some((seq, hash)) => eprintln!(
            "exported {} entries ({}..={seq}); keep the head to check later exports: --anchor {seq}:{}",
            written.count,
            written.first.unwrap_or(seq),
            to_hex(&hash)
        ),
        None => eprintln!("exported 0 entries"),
    }
    Ok(())
}

#[derive(Default)]
struct Written {
    count: u64,
    first: Option<u64>,
    last: Option<(u64, Digest)>,
}

fn write_entries(
    store: &Store,
    out: &mut dyn Write,
    format: ExportFormat,
    from: u64,
    progress: Option<&ProgressBar>,
) -> Result<Written> {
    if format == ExportFormat::Csv {
        writeln!(out, "{}", CSV_HEADER.join(","))?;
    }
    let mut w = Written::default();
    let mut next = from;
    loop {
        let page = store.ledger_entries(next, PAGE)?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for e in &page {
            match format {
                ExportFormat::Jsonl => {
                    serde_json::to_writer(&mut *out, e)?;
                    out.write_all(b"\n")?;
                }
                ExportFormat::Csv => writeln!(out, "{}", csv_row(e))?,
            }
            w.count += 1;
            w.first.get_or_insert(e.seq);
            w.last = Some((e.seq, e.hash));
        }
        if let Some(pb) = progress {
            pb.inc(page.len() as u64);
        }
    }
    Ok(w)
}

/// The CSV columns, in the order of the hash encoding.
const CSV_HEADER: [&str; 10] = [
    "seq", "at_ms", "actor", "action", "subject", "before", "after", "detail", "prev", "hash",
];

fn csv_row(e: &LedgerEntry) -> String {
    let hex_opt = |d: &Option<Digest>| d.as_ref().map(to_hex).unwrap_or_default();
    [
        e.seq.to_string(),
        e.at_ms.to_string(),
        csv_field(&e.actor),
        csv_field(&e.action),
        csv_field(&e.subject),
        hex_opt(&e.before),
        hex_opt(&e.after),
        csv_field(&e.detail),
        to_hex(&e.prev),
        to_hex(&e.hash),
    ]
    .join(",")
}

/// RFC 4180: quoted when it holds a comma, quote or line break; quotes
/// doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_parse() {
        let h = to_hex(&[0xab; 32]);
        assert_eq!(parse_anchor(&format!("7:{h}")), Ok((7, [0xab; 32])));
        assert!(parse_anchor(&h).is_err());
        assert!(parse_anchor(&format!("x:{h}")).is_err());
        assert!(parse_anchor("7:abc").is_err());
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("ops"), "ops");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field(r#"{"k":"v"}"#), r#""{""k"":""v""}""#);
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
