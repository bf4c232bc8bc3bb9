//! Writing a hierarchy back out as a file.
//!
//! Figures are written as the shortest decimal that reads back to the same
//! `f64` (Rust's `{:?}`), so `W / 1000` comes back as exactly the same watts:
//! for any integer below 2^51 the division, the shortest print, the parse and
//! the `× 1000` rounding lose less than half a unit between them. Fields
//! equal to their default are left out to keep big exports small.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::der::DerRating;
use crate::hierarchy::{DerSpec, Hierarchy, SiteSpec, VirtualDerSpec};
use crate::units;

/// Writes `h` in the file format. For a hierarchy that passes
/// [`Hierarchy::validate`] with figures inside the file's limits,
/// [`super::parse`] gives back an equal hierarchy, except that DERs come
/// back grouped by site (in site order), as the format nests them.
///
/// DERs whose site is not in `h` cannot be nested anywhere; they are listed
/// in comments at the end rather than silently dropped.
pub fn to_toml(h: &Hierarchy) -> String {
    let mut by_site: HashMap<&str, Vec<&DerSpec>> = HashMap::with_capacity(h.sites.len());
    for d in &h.ders {
        by_site.entry(d.site.as_str()).or_default().push(d);
    }
    // About 350 bytes per DER and 250 per site in practice.
    let mut out = String::with_capacity(256 + h.sites.len() * 250 + h.ders.len() * 350);
    let _ = writeln!(
        out,
        "# Hierarchy: {} virtual DERs, {} sites, {} DERs.\n\
         # Units: kW, kWh, currency per kWh. Format: vpp_domain::hierarchy_file.",
        h.virtual_ders.len(),
        h.sites.len(),
        h.ders.len()
    );
    for v in &h.virtual_ders {
        write_virtual_der(&mut out, v);
    }
    for s in &h.sites {
        write_site(&mut out, s);
        for d in by_site.remove(s.id.as_str()).unwrap_or_default() {
            write_der(&mut out, d);
        }
    }
    let mut orphans: Vec<&DerSpec> = by_site.into_values().flatten().collect();
    if !orphans.is_empty() {
        orphans.sort_by(|a, b| a.id.cmp(&b.id));
        out.push_str("\n# DERs left out: their site is not in the hierarchy.\n");
        for d in orphans {
            let _ = writeln!(out, "#   {} (site {})", d.id, d.site);
        }
    }
    out
}

fn write_virtual_der(out: &mut String, v: &VirtualDerSpec) {
    out.push_str("\n[[virtual_der]]\n");
    key_str(out, "", "id", v.id.as_str());
    if v.name != v.id.as_str() {
        key_str(out, "", "name", &v.name);
    }
    if let Some(p) = &v.parent {
        key_str(out, "", "parent", p.as_str());
    }
    key_str(out, "", "strategy", v.strategy.as_str());
}

fn write_site(out: &mut String, s: &SiteSpec) {
    out.push_str("\n[[site]]\n");
    key_str(out, "", "id", s.id.as_str());
    key_str(out, "", "parent", s.parent.as_str());
    if s.name != s.id.as_str() {
        key_str(out, "", "name", &s.name);
    }
    key_f64(out, "", "lat", s.location.lat);
    key_f64(out, "", "lon", s.location.lon);
    key_str(out, "", "zone", &s.location.zone);
    key_str(out, "", "feeder", &s.location.feeder);
    let segment = match s.segment {
        crate::site::Segment::Residential => "residential",
        crate::site::Segment::Commercial => "commercial",
        crate::site::Segment::Industrial => "industrial",
    };
    key_str(out, "", "segment", segment);
    key_str(out, "", "owner", &s.owner);
    key_str(out, "", "strategy", s.strategy.as_str());
}

fn write_der(out: &mut String, d: &DerSpec) {
    const I: &str = "  ";
    let r: &DerRating = &d.rating;
    out.push_str("\n  [[site.der]]\n");
    key_str(out, I, "id", d.id.as_str());
    key_str(out, I, "kind", r.kind.as_str());
    if d.name != d.id.as_str() {
        key_str(out, I, "name", &d.name);
    }
    for (key, w) in [
        ("max_import_kw", r.max_import_w),
        ("max_export_kw", r.max_export_w),
        ("energy_kwh", r.energy_wh),
    ] {
        if w != 0 {
            key_f64(out, I, key, units::unit_to_kilo(w));
        }
    }
    if r.soc_min_pct != 0 {
        let _ = writeln!(out, "{I}soc_min_pct = {}", r.soc_min_pct);
    }
    if r.soc_max_pct != 100 {
        let _ = writeln!(out, "{I}soc_max_pct = {}", r.soc_max_pct);
    }
    if r.ramp_w_per_min != r.max_import_w.max(r.max_export_w) {
        key_f64(
            out,
            I,
            "ramp_kw_per_min",
            units::unit_to_kilo(r.ramp_w_per_min),
        );
    }
    if let Some((lo, hi)) = r.comfort_c {
        key_f64(out, I, "comfort_min_c", f32_for_file(lo));
        key_f64(out, I, "comfort_max_c", f32_for_file(hi));
    }
    for (key, s) in [
        ("min_on_s", r.min_on_s),
        ("min_off_s", r.min_off_s),
        ("max_hold_s", r.max_hold_s),
    ] {
        if s != 0 {
            let _ = writeln!(out, "{I}{key} = {s}");
        }
    }
    if r.cost_micros_per_kwh != 0 {
        key_f64(
            out,
            I,
            "cost_per_kwh",
            units::micros_to_cost(r.cost_micros_per_kwh),
        );
    }
}

fn key_f64(out: &mut String, indent: &str, key: &str, v: f64) {
    if v.is_finite() {
        // The common case, without the intermediate String of `toml_float`.
        let _ = writeln!(out, "{indent}{key} = {v:?}");
    } else {
        let _ = writeln!(out, "{indent}{key} = {}", toml_float(v));
    }
}

/// A float as TOML: `{:?}` is the shortest text that reads back to the same
/// value and always has a `.` or an exponent, both valid TOML floats.
pub(super) fn toml_float(v: f64) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else if v.is_nan() {
        "nan".into()
    } else if v > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

/// An `f32` as the `f64` whose file text reads back (through `f64` and `as
/// f32`) to the same `f32`. The short `f32` text almost always does; when
/// double rounding would bite, the exact widened value is written instead.
fn f32_for_file(v: f32) -> f64 {
    let short: f64 = format!("{v}").parse().unwrap_or(f64::from(v));
    if short as f32 == v {
        short
    } else {
        f64::from(v)
    }
}

fn key_str(out: &mut String, indent: &str, key: &str, v: &str) {
    out.push_str(indent);
    out.push_str(key);
    out.push_str(" = ");
    push_toml_string(out, v);
    out.push('\n');
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn push_toml_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
