//! `vpp mv baseline` end to end: the built binary on meter CSV files, the
//! sample in `examples/meter/`, and every kind of bad input.
//!
//! Run: `cargo nextest run -p vpp-runtime --test mv_cli`
//! (`VPP_WRITE_EXAMPLES=1` rewrites `examples/meter/sites.csv` from
//! [`sample_csv`] when the generator changes.)

mod common;

use std::path::{Path, PathBuf};

use common::process::vpp;
use common::repo;
use serde_json::Value;

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn sample() -> PathBuf {
    repo().join("examples/meter/sites.csv")
}

// ------------------------------------------------------------ the sample

/// Unix ms of 2026-06-29T00:00:00Z, a Monday: the sample's first day.
const FIRST_DAY_MS: u64 = 1_782_691_200_000;
const DAY_MS: u64 = 86_400_000;
const Q_MS: u64 = 900_000;

/// A deterministic noise in [-1, 1] (splitmix64 of the inputs).
fn noise(site: u64, t: u64) -> f64 {
    let mut z = t ^ (site.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % 2001) as f64 / 1000.0 - 1.0
}

/// The sample meter file: three sites, 12 days (Mon 29 June to Fri 10 July
/// 2026, UTC), 15-minute average kW.
///
/// * `site-home-01`: a house with air conditioning, evening peak.
/// * `site-office-02`: an office, busy on weekdays 08:00–18:00; its 16:30
///   reading on 7 July is missing.
/// * `site-solar-03`: a house with rooftop PV, exporting at midday.
///
/// Events at 16:00–18:00 on Fri 3 July (exclude it from baselines) and Fri
/// 10 July (the one to measure): every site sheds load then. 10 July is
/// hot: loads are 8 % higher all day (what a day-of adjustment corrects).
/// The house's 17:15 reading on 10 July is missing.
fn sample_csv() -> String {
    let mut out = String::from(
        "# Sample meter data for `vpp mv baseline` (see runtime/tests/mv_cli.rs, which generates it).\n\
         # Events: 2026-07-03 and 2026-07-10, 16:00-18:00 UTC.\n\
         site,start,kw\n",
    );
    let sites = ["site-home-01", "site-office-02", "site-solar-03"];
    for (si, site) in sites.iter().enumerate() {
        for day in 0..12u64 {
            let weekend = matches!(day % 7, 5 | 6);
            let event_day = day == 4 || day == 11;
            let hot = if day == 11 { 1.08 } else { 1.0 };
            for q in 0..96u64 {
                let t = FIRST_DAY_MS + day * DAY_MS + q * Q_MS;
                let h = q as f64 / 4.0;
                let in_event = event_day && (64..72).contains(&q);
                let n = noise(si as u64, t);
                let kw = match si {
                    0 => {
                        let evening = if (17.0..21.0).contains(&h) { 2.2 } else { 0.0 };
                        let afternoon = if (13.0..17.0).contains(&h) { 1.2 } else { 0.0 };
                        let mut kw = (0.6 + evening + afternoon) * hot + 0.15 * n;
                        if in_event {
                            kw -= 1.4;
                        }
                        kw
                    }
                    1 => {
                        let busy = !weekend && (8.0..18.0).contains(&h);
                        let mut kw = if busy { 45.0 + 2.0 * (h - 8.0) } else { 11.0 };
                        kw = kw * hot + 1.5 * n;
                        if in_event {
                            kw -= 14.0;
                        }
                        kw
                    }
                    _ => {
                        let pv = if (6.0..20.0).contains(&h) {
                            5.0 * (std::f64::consts::PI * (h - 6.0) / 14.0).sin()
                        } else {
                            0.0
                        };
                        let load = if (16.0..22.0).contains(&h) { 2.4 } else { 0.9 };
                        let mut kw = load * hot - pv + 0.1 * n;
                        if in_event {
                            kw -= 0.9;
                        }
                        kw
                    }
                };
                let missing = (si == 1 && day == 8 && q == 66) || (si == 0 && day == 11 && q == 69);
                if missing {
                    continue;
                }
                out.push_str(&format!("{site},{},{:.3}\n", rfc3339(t), kw));
            }
        }
    }
    out
}

/// Unix ms → `YYYY-MM-DDTHH:MM:SSZ` (within the sample's days).
fn rfc3339(t: u64) -> String {
    vpp_domain::mv::calendar::format_rfc3339(t, 0)
}

#[test]
fn sample_file_is_generated_and_small() {
    let want = sample_csv();
    let path = sample();
    if std::env::var_os("VPP_WRITE_EXAMPLES").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is not what the generator writes; run with VPP_WRITE_EXAMPLES=1",
        path.display()
    );
    assert!(want.len() < 300 * 1024, "{} bytes", want.len());
}

// --------------------------------------------------------------- results

fn baseline(extra: &[&str]) -> std::process::Output {
    let meter = sample();
    let mut args = vec![
        "mv",
        "baseline",
        "--meter",
        meter.to_str().unwrap(),
        "--event-start",
        "2026-07-10T16:00:00Z",
        "--event-end",
        "2026-07-10T18:00:00Z",
    ];
    args.extend_from_slice(extra);
    vpp(&args)
}

#[test]
fn table_for_every_site_of_the_sample() {
    let out = baseline(&[
        "--method",
        "high-5-of-10",
        "--exclude-day",
        "2026-07-03",
        "--adjust",
        "multiplicative",
        "--cap-pct",
        "20",
        "--committed-kw",
        "1",
    ]);
    let (stdout, stderr) = (s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    for site in ["site-home-01", "site-office-02", "site-solar-03"] {
        assert!(
            stdout.contains(&format!(
                "{site}: high 5 of 10, multiplicative adjustment (cap ±20 %"
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains("days used   "), "{stdout}");
    assert!(stdout.contains("1 excluded (2026-07-03)"), "{stdout}");
    // The office's 7 July lacks a reading at 16:30.
    assert!(
        stdout.contains("1 with readings missing in the event hours (2026-07-07)"),
        "{stdout}"
    );
    // The house's 17:15 reading is missing on the event day.
    assert!(stdout.contains("missing 1 of 8 intervals"), "{stdout}");
    assert!(
        stdout.contains("2026-07-10T17:15:00Z") && stdout.contains("–"),
        "{stdout}"
    );
    assert!(stdout.contains("performance "), "{stdout}");
}

#[test]
fn json_report_of_one_site() {
    let out = baseline(&[
        "--method",
        "high-5-of-10",
        "--exclude-day",
        "2026-07-03",
        "--site",
        "site-office-02",
        "--adjust",
        "additive",
        "--committed-kw",
        "10",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1);
    let r = &sites[0]["report"];
    assert_eq!(sites[0]["site"], "site-office-02");
    // Weekdays before 10 July in the file: 9; 3 July excluded, 7 July has a
    // gap: 7 eligible, the 5 highest used.
    assert_eq!(r["days_used"].as_array().unwrap().len(), 5);
    assert_eq!(r["intervals"].as_array().unwrap().len(), 8);
    assert_eq!(r["adjustment"]["kind"], "additive");
    assert_eq!(v["spec"]["adjustment"]["kind"], "additive");
    // The office sheds about 14 kW.
    let avg = r["avg_delivered_w"].as_i64().unwrap();
    assert!((10_000..25_000).contains(&avg), "{avg}");
    assert!(sites[0]["performance_pct"].as_f64().unwrap() > 100.0);
}

/// Writes `text` to a temporary CSV file.
fn csv(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn hand_computed_hourly_example() {
    // Hourly data. 2 of 2 over Thu 9 (4 kW) and Wed 8 (6 kW) July at
    // 17:00 → (4 + 6)/2 = 5 kW; the event day reads 2 kW → 3 kW delivered,
    // 3 kWh; committed 4 kW → 75 %.
    let dir = tempfile::tempdir().unwrap();
    let f = csv(
        dir.path(),
        "h.csv",
        "site,start,kw\n\
         a,2026-07-08T17:00:00Z,6\n\
         a,2026-07-09T19:00:00+02:00,4\n\
         a,1783702800000,2\n",
    );
    let out = vpp(&[
        "mv",
        "baseline",
        "--method",
        "2-of-2",
        "--meter",
        &f,
        "--interval-s",
        "3600",
        "--event-start",
        "2026-07-10T17:00:00Z",
        "--event-end",
        "1783706400000",
        "--committed-kw",
        "4",
    ]);
    let stdout = s(&out.stdout);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(stdout.contains("a: 2 of 2\n"), "{stdout}");
    assert!(
        stdout.contains("days used   2026-07-08, 2026-07-09 (2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2026-07-10T17:00:00Z         5.000         2.000         3.000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("avg delivered 3.000 kW · 3.000 kWh"),
        "{stdout}"
    );
    assert!(
        stdout.contains("performance 75.0 % of 4.000 kW"),
        "{stdout}"
    );

    // Same-day at +02:00: the event 19:00–20:00 local; 2 h before it
    // (17:00, 18:00 local) read 7 and 9 kW → 8 kW baseline.
    let f = csv(
        dir.path(),
        "sd.csv",
        "site,start,kwh\n\
         b,2026-07-10T15:00:00Z,7\n\
         b,2026-07-10T16:00:00Z,9\n\
         b,2026-07-10T17:00:00Z,5\n",
    );
    let out = vpp(&[
        "mv",
        "baseline",
        "--method",
        "same-day",
        "--after-hours",
        "0",
        "--meter",
        &f,
        "--interval-s",
        "3600",
        "--utc-offset-min",
        "120",
        "--event-start",
        "2026-07-10T19:00:00+02:00",
        "--event-end",
        "2026-07-10T20:00:00+02:00",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v["sites"][0]["report"];
    assert_eq!(r["intervals"][0]["baseline_w"], 8000);
    assert_eq!(r["intervals"][0]["delivered_w"], 3000);
    assert_eq!(r["event_day"], "2026-07-10");
}

// ---------------------------------------------------------------- errors

/// Runs and expects failure with `needle` in stderr (and no panic).
fn fails(args: &[&str], needle: &str) {
    let out = vpp(args);
    let err = s(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        s(&out.stdout)
    );
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn errors_name_the_flag_or_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = csv(
        dir.path(),
        "bad.csv",
        "site,start,kw\na,2026-07-10T17:00:00Z,1\na,2026-07-10T17:15:00Z,x\nb c,2026-07-10T17:07:00Z,1\n",
    );
    let meter = sample();
    let m = meter.to_str().unwrap();
    let ev = [
        "--event-start",
        "2026-07-10T16:00:00Z",
        "--event-end",
        "2026-07-10T18:00:00Z",
    ];
    let with = |extra: &[&'static str], file: &str| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "mv".into(),
            "baseline".into(),
            "--meter".into(),
            file.into(),
        ];
        v.extend(ev.iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&'static str], file: &str, needle: &str| {
        let v = with(extra, file);
        let args: Vec<&str> = v.iter().map(String::as_str).collect();
        fails(&args, needle);
    };
    run(
        &["--method", "10-of-10"],
        &bad,
        "bad.csv:3: kw: \"x\" is not a number",
    );
    run(&["--method", "10-of-10"], &bad, "bad.csv:4: site:");
    run(&["--method", "10-of-10"], &bad, "bad.csv:4: start:");
    run(
        &["--method", "10-of-10"],
        "/no/such/meter.csv",
        "--meter: reading /no/such/meter.csv",
    );
    run(
        &["--method", "11-of-10"],
        m,
        "--method: x: 11 must be 1 to y (10) days",
    );
    run(
        &["--method", "best-of-all"],
        m,
        "--method: method: unknown baseline method",
    );
    run(
        &["--method", "{\"method\":\"x_of_y\"}"],
        m,
        "--method: not a baseline spec",
    );
    run(
        &[
            "--method",
            "3-of-5",
            "--adjust",
            "multiplicative",
            "--cap-pct",
            "150",
        ],
        m,
        "--cap-pct: adjustment.cap_pct: 150 must be 0 to 100 %",
    );
    run(
        &[
            "--method",
            "3-of-5",
            "--adjust",
            "additive",
            "--cap-pct",
            "20",
        ],
        m,
        "--cap-pct: applies to --adjust multiplicative only",
    );
    run(
        &["--method", "3-of-5", "--cap-pct", "20"],
        m,
        "--cap-pct: needs --adjust",
    );
    run(
        &["--method", "same-day", "--adjust", "additive"],
        m,
        "--adjust: applies to X-of-Y methods",
    );
    run(
        &["--method", "3-of-5", "--before-hours", "1"],
        m,
        "--before-hours: applies to --method same-day only",
    );
    run(
        &["--method", "3-of-5", "--exclude-day", "2026-02-30"],
        m,
        "--exclude-day",
    );
    run(
        &["--method", "3-of-5", "--site", "nobody"],
        m,
        "--site: nobody has no data",
    );
    run(
        &["--method", "3-of-5", "--interval-s", "7"],
        m,
        "--interval-s: interval of 7 s",
    );
    run(
        &["--method", "3-of-5", "--committed-kw", "-1"],
        m,
        "--committed-kw",
    );
    // 9 weekdays in the file, 3 July excluded: 10 of 10 cannot be had.
    run(
        &[
            "--method",
            "10-of-10",
            "--exclude-day",
            "2026-07-03",
            "--site",
            "site-home-01",
        ],
        m,
        "site-home-01: insufficient data: 8 eligible day(s) found, 10 needed",
    );
    run(&["--method", "10-of-10"], m, "no baseline for 3 of 3 sites");

    // Event times: parse errors, boundaries, order.
    let base = ["mv", "baseline", "--method", "3-of-5", "--meter", m];
    let times = |a: &'static str, b: &'static str| {
        let mut v = base.to_vec();
        v.extend(["--event-start", a, "--event-end", b]);
        v
    };
    fails(&times("tomorrow", "2026-07-10T18:00:00Z"), "--event-start");
    fails(
        &times("2026-07-10T16:05:00Z", "2026-07-10T18:00:00Z"),
        "--event-start/--event-end: start 2026-07-10T16:05:00Z is not on a 900 s interval boundary",
    );
    fails(
        &times("2026-07-10T18:00:00Z", "2026-07-10T16:00:00Z"),
        "the end is not after the start",
    );
    // A required flag missing is clap's error.
    fails(&["mv", "baseline", "--meter", m], "--method");
}

#[test]
fn help_documents_every_flag() {
    let out = vpp(&["mv", "baseline", "--help"]);
    assert!(out.status.success());
    let help = s(&out.stdout);
    for flag in [
        "--method",
        "--meter",
        "--event-start",
        "--event-end",
        "--site",
        "--interval-s",
        "--adjust",
        "--cap-pct",
        "--adjust-hours",
        "--adjust-gap-hours",
        "--exclude-day",
        "--utc-offset-min",
        "--any-day-type",
        "--lookback-days",
        "--before-hours",
        "--gap-before-hours",
        "--after-hours",
        "--gap-after-hours",
        "--committed-kw",
        "--format",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("site,start,kw"), "{help}");
    let top = s(&vpp(&["--help"]).stdout);
    assert!(top.contains("mv "), "{top}");
}
