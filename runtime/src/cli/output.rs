//! Human-readable output of the CLI (tables and trees in plain text).

use std::collections::HashMap;
use std::fmt::Write;

use anyhow::{anyhow, Result};
use serde_json::Value;
use vpp_domain::units::unit_to_kilo;
use vpp_domain::{Hierarchy, NodeId};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The hierarchy as a tree from `start` (default root), `depth` levels, with
/// DER counts and nameplate per subtree.
pub(crate) fn tree(h: &Hierarchy, start: Option<&str>, depth: usize) -> Result<String> {
    let topo = h
        .validate()
        .map_err(|e| anyhow!("stored hierarchy is invalid: {} problem(s)", e.len()))?;
    let root = match start {
        Some(s) => NodeId::new(s)?,
        None => topo
            .root
            .clone()
            .ok_or_else(|| anyhow!("the hierarchy is empty"))?,
    };
    if !topo.kinds.contains_key(&root) {
        return Err(anyhow!("no node {root} in the hierarchy"));
    }
    // DER count and nameplate (max import / export) per node, bottom-up.
    let mut stats: HashMap<&NodeId, (u64, u64, u64)> = HashMap::new();
    for d in &h.ders {
        stats.insert(&d.id, (1, d.rating.max_import_w, d.rating.max_export_w));
    }
    let order = topo.subtree(topo.root.as_ref().expect("validated"));
    for id in order.iter().rev() {
        let kids = topo.children_of(id);
        if kids.is_empty() {
            continue;
        }
        let mut s = (0, 0, 0);
        for k in kids {
            let c = stats.get(k).copied().unwrap_or_default();
            s = (s.0 + c.0, s.1 + c.1, s.2 + c.2);
        }
        stats.insert(id, s);
    }
    let mut p = TreePrinter {
        topo: &topo,
        stats: &stats,
        out: String::new(),
    };
    p.walk(&root, "", Branch::Top, depth.max(1));
    Ok(p.out)
}

#[derive(Clone, Copy, PartialEq)]
enum Branch {
    Top,
    Mid,
    Last,
}

struct TreePrinter<'a> {
    topo: &'a vpp_domain::Topology,
    stats: &'a HashMap<&'a NodeId, (u64, u64, u64)>,
    out: String,
}

impl TreePrinter<'_> {
    fn walk(&mut self, id: &NodeId, prefix: &str, branch: Branch, depth: usize) {
        let (n, imp, exp) = self.stats.get(id).copied().unwrap_or_default();
        let kind = self.topo.kinds.get(id).map(|k| k.as_str()).unwrap_or("?");
        let mark = match branch {
            Branch::Top => "",
            Branch::Mid => "├─ ",
            Branch::Last => "└─ ",
        };
        let _ = writeln!(
            self.out,
            "{prefix}{mark}{id}  [{kind}]  {n} DER{}  import {:.1} kW  export {:.1} kW",
            if n == 1 { "" } else { "s" },
            unit_to_kilo(imp),
            unit_to_kilo(exp)
        );
        let child_prefix = match branch {
            Branch::Top => String::new(),
            Branch::Mid => format!("{prefix}│  "),
            Branch::Last => format!("{prefix}   "),
        };
        let kids = self.topo.children_of(id);
        if kids.is_empty() {
            return;
        }
        if depth <= 1 {
            let _ = writeln!(self.out, "{child_prefix}└─ … {} more below", kids.len());
            return;
        }
        for (i, k) in kids.iter().enumerate() {
            let b = if i + 1 == kids.len() {
                Branch::Last
            } else {
                Branch::Mid
            };
            self.walk(k, &child_prefix, b, depth - 1);
        }
    }
}

/// A capacity answer as a small report.
pub(crate) fn capacity(v: &Value) -> String {
    let mut o = String::new();
    let env = &v["envelope"]["total"];
    let _ = writeln!(
        o,
        "{} [{}{}]{}",
        v["node"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        v["strategy"]
            .as_str()
            .map(|s| format!(", {s}"))
            .unwrap_or_default(),
        if v["fresh"] == true {
            "  (fresh from every DER)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "  up    {:>12.1} kW  available {:>12.1} kW  committed {:>10.1} kW  {:>12.1} kWh",
        f(&env["up_kw"]),
        f(&v["available_up_kw"]),
        f(&v["committed_up_kw"]),
        f(&env["up_kwh"])
    );
    let _ = writeln!(
        o,
        "  down  {:>12.1} kW  available {:>12.1} kW  committed {:>10.1} kW  {:>12.1} kWh",
        f(&env["down_kw"]),
        f(&v["available_down_kw"]),
        f(&v["committed_down_kw"]),
        f(&env["down_kwh"])
    );
    let _ = writeln!(
        o,
        "  devices online {}/{}   ramp {:.1} kW/min",
        env["online"],
        env["total"],
        f(&env["ramp_kw_per_min"])
    );
    if let Some(kinds) = v["envelope"]["by_kind"].as_object() {
        let _ = writeln!(
            o,
            "  {:<18} {:>12} {:>12} {:>14}",
            "kind", "up kW", "down kW", "online/total"
        );
        for (k, e) in kinds {
            let _ = writeln!(
                o,
                "  {:<18} {:>12.1} {:>12.1} {:>14}",
                k,
                f(&e["up_kw"]),
                f(&e["down_kw"]),
                format!("{}/{}", e["online"], e["total"])
            );
        }
    }
    if let Some(st) = v.get("state") {
        let _ = writeln!(
            o,
            "  state: online {}  power {} kW  soc {}  temp {}  control {}  seq {}",
            st["online"],
            st["power_kw"],
            st["soc_pct"],
            st["temperature_c"],
            st["accepts_control"],
            st["seq"]
        );
    }
    if let Some(sps) = v["setpoints"].as_array() {
        for s in sps {
            let _ = writeln!(
                o,
                "  setpoint {}: {} {} kW → target {} kW",
                s["dispatch"].as_str().unwrap_or("?"),
                s["direction"].as_str().unwrap_or("?"),
                s["power_kw"],
                s["target_power_kw"]
            );
        }
    }
    if let Some(children) = v["children"].as_array() {
        if !children.is_empty() {
            let _ = writeln!(
                o,
                "  {:<28} {:>12} {:>12} {:>14}",
                "child", "up kW", "down kW", "online/total"
            );
            for c in children {
                let _ = writeln!(
                    o,
                    "  {:<28} {:>12.1} {:>12.1} {:>14}{}",
                    c["id"].as_str().unwrap_or("?"),
                    f(&c["up_kw"]),
                    f(&c["down_kw"]),
                    format!("{}/{}", c["online"], c["total"]),
                    if c["failed"] == true { "  FAILED" } else { "" }
                );
            }
            let total = v["children_total"].as_u64().unwrap_or(0);
            if total as usize > children.len() {
                let _ = writeln!(
                    o,
                    "  … and {} more children",
                    total as usize - children.len()
                );
            }
        }
    }
    o
}

fn alloc_lines(o: &mut String, a: &Value, prefix: &str) {
    let short = f(&a["shortfall_kw"]);
    let _ = writeln!(
        o,
        "{prefix}{} [{}]  {:.3} kW{}{}",
        a["node"].as_str().unwrap_or("?"),
        a["kind"].as_str().unwrap_or("?"),
        f(&a["allocated_kw"]),
        if short > 0.0 {
            format!("  shortfall {short:.3} kW")
        } else {
            String::new()
        },
        match a["resplits"].as_u64() {
            Some(r) if r > 0 => format!("  resplits {r}"),
            _ => String::new(),
        }
    );
    if let Some(rs) = a["refusals"].as_array() {
        for r in rs {
            let _ = writeln!(
                o,
                "{prefix}  ! {} refused {:.3} kW: {}",
                r["child"].as_str().unwrap_or("?"),
                f(&r["refused_kw"]),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    let shown = a["children"].as_array().map(Vec::len).unwrap_or(0);
    if let Some(cs) = a["children"].as_array() {
        for c in cs {
            alloc_lines(o, c, &format!("{prefix}  "));
        }
    }
    if let Some(n) = a["children_with_share"].as_u64() {
        if n as usize > shown && shown == 0 {
            let (noun, verb) = if n == 1 {
                ("child", "holds")
            } else {
                ("children", "hold")
            };
            let _ = writeln!(o, "{prefix}  … {n} {noun} {verb} a share");
        }
    }
}

/// An order and its allocation tree.
pub(crate) fn dispatch(v: &Value) -> String {
    let d = &v["dispatch"];
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}: {} {} kW at {} for {} s — {}",
        d["id"].as_str().unwrap_or("?"),
        d["direction"].as_str().unwrap_or("?"),
        d["power_kw"],
        d["target"].as_str().unwrap_or("?"),
        d["duration_s"],
        d["status"].as_str().unwrap_or("?")
    );
    if d.get("allocated_kw").is_some() {
        let _ = writeln!(
            o,
            "  allocated {} kW, shortfall {} kW, {} DERs hold setpoints, {} resplits, split in {} ms",
            d["allocated_kw"], d["shortfall_kw"], d["ders"], d["resplits"], d["split_ms"]
        );
    }
    if v["allocation"].is_object() {
        alloc_lines(&mut o, &v["allocation"], "  ");
    }
    o
}

/// A list of orders as a table.
pub(crate) fn dispatch_list(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<28} {:<20} {:<5} {:>12} {:>12} {:<10}",
        "id", "target", "dir", "power kW", "alloc kW", "status"
    );
    for d in v.as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "{:<28} {:<20} {:<5} {:>12.1} {:>12} {:<10}",
            d["id"].as_str().unwrap_or("?"),
            d["target"].as_str().unwrap_or("?"),
            d["direction"].as_str().unwrap_or("?"),
            f(&d["power_kw"]),
            d.get("allocated_kw")
                .map(|a| format!("{:.1}", f(a)))
                .unwrap_or_else(|| "-".into()),
            d["status"].as_str().unwrap_or("?")
        );
    }
    o
}
