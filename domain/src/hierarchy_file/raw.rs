//! The file as serde sees it (with the byte span of every table and value),
//! and its conversion into specs with the per-field checks.
//!
//! Conversion goes on after a bad value so one pass reports every problem: a
//! DER with a bad figure still enters the hierarchy (with the figure zeroed)
//! so the structural checks see it; a node whose own id or parent id is
//! malformed is left out, and [`Converted::left_out`] lets the caller drop the
//! follow-on "parent does not exist" reports of its children.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::der::{DerKind, DerRating, RatingError};
use crate::dispatch::Strategy;
use crate::hierarchy::{DerSpec, Hierarchy, SiteSpec, VirtualDerSpec, MAX_REPORTED_ERRORS};
use crate::id::NodeId;
use crate::site::{Location, Segment};
use crate::units;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) virtual_der: Vec<Spanned<RawVirtualDer>>,
    #[serde(default)]
    pub(super) site: Vec<Spanned<RawSite>>,
}

/// One `[[virtual_der]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVirtualDer {
    id: Spanned<String>,
    name: Option<Spanned<String>>,
    parent: Option<Spanned<String>>,
    strategy: Option<Strategy>,
}

/// One `[[site]]` table with its `[[site.der]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSite {
    id: Spanned<String>,
    parent: Spanned<String>,
    name: Option<Spanned<String>>,
    lat: Spanned<f64>,
    lon: Spanned<f64>,
    zone: Spanned<String>,
    feeder: Spanned<String>,
    segment: Segment,
    owner: Spanned<String>,
    strategy: Option<Strategy>,
    #[serde(default)]
    der: Vec<Spanned<RawDer>>,
}

/// One `[[site.der]]` table. Integers are read as `i64` so a negative or
/// oversized value is reported with the DER's id rather than as a bare type
/// error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDer {
    id: Spanned<String>,
    kind: Spanned<DerKind>,
    name: Option<Spanned<String>>,
    max_import_kw: Option<Spanned<f64>>,
    max_export_kw: Option<Spanned<f64>>,
    energy_kwh: Option<Spanned<f64>>,
    soc_min_pct: Option<Spanned<i64>>,
    soc_max_pct: Option<Spanned<i64>>,
    ramp_kw_per_min: Option<Spanned<f64>>,
    comfort_min_c: Option<Spanned<f64>>,
    comfort_max_c: Option<Spanned<f64>>,
    min_on_s: Option<Spanned<i64>>,
    min_off_s: Option<Spanned<i64>>,
    max_hold_s: Option<Spanned<i64>>,
    cost_per_kwh: Option<Spanned<f64>>,
}

/// A problem with the byte offset it is about; lines are worked out only
/// when there is something to report.
#[derive(Debug)]
pub(super) struct Located {
    pub(super) at: Option<usize>,
    pub(super) id: Option<NodeId>,
    pub(super) message: String,
}

/// Collects problems, at most [`MAX_REPORTED_ERRORS`].
#[derive(Debug, Default)]
pub(super) struct Sink {
    pub(super) list: Vec<Located>,
    pub(super) overflowed: bool,
}

impl Sink {
    pub(super) fn push(&mut self, at: Option<usize>, id: Option<&NodeId>, message: String) {
        if self.list.len() < MAX_REPORTED_ERRORS {
            self.list.push(Located {
                at,
                id: id.cloned(),
                message,
            });
        } else {
            self.overflowed = true;
        }
    }
}

/// The result of [`convert`].
pub(super) struct Converted {
    pub(super) hierarchy: Hierarchy,
    pub(super) sink: Sink,
    /// Ids, as written, of nodes left out because their id or parent id is
    /// malformed (already reported).
    pub(super) left_out: HashSet<String>,
    /// A would-be root was left out, so "no root" is a follow-on report.
    pub(super) left_out_root: bool,
}

/// Where a node is in the raw file.
#[derive(Debug, Clone, Copy)]
pub(super) enum NodeRef {
    VirtualDer(usize),
    Site(usize),
    Der(usize, usize),
}

fn start<T>(s: &Spanned<T>) -> usize {
    s.span().start
}

fn node_id(
    sink: &mut Sink,
    value: &Spanned<String>,
    owner: Option<&NodeId>,
    field: &str,
) -> Option<NodeId> {
    match NodeId::new(value.get_ref()) {
        Ok(id) => Some(id),
        Err(e) => {
            let message = if field == "id" {
                e.to_string()
            } else {
                format!("{field}: {e}")
            };
            sink.push(Some(start(value)), owner, message);
            None
        }
    }
}

fn take(s: &mut Spanned<String>) -> String {
    mem::take(s.get_mut())
}

/// Converts `raw` into a hierarchy, checking every figure. Strings are moved
/// out of `raw`; the spans stay for [`RawFile::field_at`].
pub(super) fn convert(raw: &mut RawFile) -> Converted {
    let mut sink = Sink::default();
    let mut left_out = HashSet::new();
    let mut left_out_root = false;
    let n_ders = raw.site.iter().map(|s| s.get_ref().der.len()).sum();
    let mut h = Hierarchy {
        virtual_ders: Vec::with_capacity(raw.virtual_der.len()),
        sites: Vec::with_capacity(raw.site.len()),
        ders: Vec::with_capacity(n_ders),
    };

    for v in &mut raw.virtual_der {
        let v = v.get_mut();
        let id = node_id(&mut sink, &v.id, None, "id");
        let parent = match &v.parent {
            None => Some(None),
            Some(p) => node_id(&mut sink, p, id.as_ref(), "parent").map(Some),
        };
        let (Some(id), Some(parent)) = (id, parent) else {
            left_out.insert(v.id.get_ref().clone());
            left_out_root |= v.parent.is_none();
            continue;
        };
        h.virtual_ders.push(VirtualDerSpec {
            name: v.name.as_mut().map_or_else(|| id.to_string(), take),
            id,
            parent,
            strategy: v.strategy.unwrap_or_default(),
        });
    }

    for s in &mut raw.site {
        let s = s.get_mut();
        let id = node_id(&mut sink, &s.id, None, "id");
        let parent = node_id(&mut sink, &s.parent, id.as_ref(), "parent");
        // A site that is left out still has its DERs checked, so one round
        // reports everything.
        let site = match (id, parent) {
            (Some(id), Some(parent)) => {
                h.sites.push(SiteSpec {
                    name: s.name.as_mut().map_or_else(|| id.to_string(), take),
                    id: id.clone(),
                    parent,
                    location: Location {
                        lat: *s.lat.get_ref(),
                        lon: *s.lon.get_ref(),
                        zone: take(&mut s.zone),
                        feeder: take(&mut s.feeder),
                    },
                    segment: s.segment,
                    owner: take(&mut s.owner),
                    strategy: s.strategy.unwrap_or_default(),
                });
                Some(id)
            }
            _ => {
                left_out.insert(s.id.get_ref().clone());
                None
            }
        };
        for d in &mut s.der {
            if let Some(spec) = convert_der(&mut sink, d.get_mut(), site.as_ref()) {
                h.ders.push(spec);
            }
        }
    }

    Converted {
        hierarchy: h,
        sink,
        left_out,
        left_out_root,
    }
}

/// Checks the figures of one DER, reporting each bad one at its own line.
struct Figures<'a> {
    sink: &'a mut Sink,
    id: Option<NodeId>,
    ok: bool,
}

impl Figures<'_> {
    fn fail(&mut self, at: usize, message: String) {
        self.sink.push(Some(at), self.id.as_ref(), message);
        self.ok = false;
    }

    fn kilo(&mut self, field: &str, v: &Option<Spanned<f64>>) -> u64 {
        let Some(v) = v else { return 0 };
        units::kilo_to_unit(*v.get_ref()).unwrap_or_else(|e| {
            self.fail(start(v), format!("{field}: {e}"));
            0
        })
    }

    fn cost(&mut self, field: &str, v: &Option<Spanned<f64>>) -> u64 {
        let Some(v) = v else { return 0 };
        units::cost_to_micros(*v.get_ref()).unwrap_or_else(|e| {
            self.fail(start(v), format!("{field}: {e}"));
            0
        })
    }

    fn pct(&mut self, field: &str, v: &Option<Spanned<i64>>, default: u8) -> u8 {
        let Some(v) = v else { return default };
        match u8::try_from(*v.get_ref()) {
            Ok(p) if p <= 100 => p,
            _ => {
                self.fail(
                    start(v),
                    format!("{field}: {} must be between 0 and 100", v.get_ref()),
                );
                default
            }
        }
    }

    fn secs(&mut self, field: &str, v: &Option<Spanned<i64>>) -> u32 {
        let Some(v) = v else { return 0 };
        u32::try_from(*v.get_ref()).unwrap_or_else(|_| {
            self.fail(
                start(v),
                format!(
                    "{field}: {} must be between 0 and {}",
                    v.get_ref(),
                    u32::MAX
                ),
            );
            0
        })
    }

    fn celsius(&mut self, field: &str, v: &Spanned<f64>) -> f32 {
        let c = *v.get_ref();
        if c.is_finite() {
            c as f32
        } else {
            self.fail(start(v), format!("{field}: {c} is not a finite number"));
            0.0
        }
    }
}

fn convert_der(sink: &mut Sink, d: &mut RawDer, site: Option<&NodeId>) -> Option<DerSpec> {
    let id = node_id(sink, &d.id, None, "id");
    let mut f = Figures {
        sink,
        id: id.clone(),
        ok: true,
    };
    let max_import_w = f.kilo("max_import_kw", &d.max_import_kw);
    let max_export_w = f.kilo("max_export_kw", &d.max_export_kw);
    let energy_wh = f.kilo("energy_kwh", &d.energy_kwh);
    let ramp_w_per_min = match &d.ramp_kw_per_min {
        None => max_import_w.max(max_export_w),
        some => f.kilo("ramp_kw_per_min", some),
    };
    let soc_min_pct = f.pct("soc_min_pct", &d.soc_min_pct, 0);
    let soc_max_pct = f.pct("soc_max_pct", &d.soc_max_pct, 100);
    let comfort_c = match (&d.comfort_min_c, &d.comfort_max_c) {
        (None, None) => None,
        (Some(lo), Some(hi)) => Some((
            f.celsius("comfort_min_c", lo),
            f.celsius("comfort_max_c", hi),
        )),
        (Some(one), None) | (None, Some(one)) => {
            f.fail(
                start(one),
                "comfort_min_c and comfort_max_c must be given together".into(),
            );
            None
        }
    };
    let rating = DerRating {
        kind: *d.kind.get_ref(),
        max_import_w,
        max_export_w,
        energy_wh,
        soc_min_pct,
        soc_max_pct,
        ramp_w_per_min,
        comfort_c,
        min_on_s: f.secs("min_on_s", &d.min_on_s),
        min_off_s: f.secs("min_off_s", &d.min_off_s),
        max_hold_s: f.secs("max_hold_s", &d.max_hold_s),
        cost_micros_per_kwh: f.cost("cost_per_kwh", &d.cost_per_kwh),
    };
    // The kind rules only make sense once every figure is readable.
    if f.ok {
        if let Err(e) = rating.validate() {
            let at = rating_error_at(d, &e);
            f.fail(at, e.to_string());
        }
    }
    let (id, site) = (id?, site?);
    Some(DerSpec {
        name: d.name.as_mut().map_or_else(|| id.to_string(), take),
        id,
        site: site.clone(),
        rating,
    })
}

/// The line a kind rule is best reported at: the figure it is about, or the
/// `kind` line when that figure was left out.
fn rating_error_at(d: &RawDer, e: &RatingError) -> usize {
    let first = |spans: &[Option<usize>]| spans.iter().flatten().next().copied();
    let s = |v: &Option<Spanned<f64>>| v.as_ref().map(start);
    let i = |v: &Option<Spanned<i64>>| v.as_ref().map(start);
    let at = match e {
        RatingError::NoPower(_) => None,
        RatingError::NoEnergy(_) => s(&d.energy_kwh),
        RatingError::SocLimits(..) => first(&[i(&d.soc_min_pct), i(&d.soc_max_pct)]),
        RatingError::Comfort(..) => first(&[s(&d.comfort_min_c), s(&d.comfort_max_c)]),
        RatingError::WrongDirection { field, .. } => match *field {
            "max_export_kw" => s(&d.max_export_kw),
            "max_import_kw" => s(&d.max_import_kw),
            _ => None,
        },
    };
    at.unwrap_or_else(|| start(&d.kind))
}

impl RawFile {
    /// Where each of `wanted` is defined: up to two places per id (the
    /// second one is where a duplicate is reported).
    pub(super) fn locate(&self, wanted: &HashSet<&str>) -> HashMap<String, Vec<NodeRef>> {
        let mut found: HashMap<String, Vec<NodeRef>> = HashMap::new();
        let mut note = |id: &str, r: NodeRef| {
            if wanted.contains(id) {
                let refs = found.entry(id.to_string()).or_default();
                if refs.len() < 2 {
                    refs.push(r);
                }
            }
        };
        for (i, v) in self.virtual_der.iter().enumerate() {
            note(v.get_ref().id.get_ref(), NodeRef::VirtualDer(i));
        }
        for (i, s) in self.site.iter().enumerate() {
            note(s.get_ref().id.get_ref(), NodeRef::Site(i));
            for (j, d) in s.get_ref().der.iter().enumerate() {
                note(d.get_ref().id.get_ref(), NodeRef::Der(i, j));
            }
        }
        found
    }

    /// Byte offset of the node's `id` value.
    pub(super) fn id_at(&self, r: NodeRef) -> usize {
        match r {
            NodeRef::VirtualDer(i) => start(&self.virtual_der[i].get_ref().id),
            NodeRef::Site(i) => start(&self.site[i].get_ref().id),
            NodeRef::Der(i, j) => start(&self.site[i].get_ref().der[j].get_ref().id),
        }
    }

    /// Byte offset of one of the node's values, when it was written.
    pub(super) fn field_at(&self, r: NodeRef, field: &str) -> Option<usize> {
        let span: Option<Range<usize>> = match r {
            NodeRef::VirtualDer(i) => {
                let v = self.virtual_der[i].get_ref();
                match field {
                    "parent" => v.parent.as_ref().map(Spanned::span),
                    "name" => v.name.as_ref().map(Spanned::span),
                    _ => None,
                }
            }
            NodeRef::Site(i) => {
                let s = self.site[i].get_ref();
                match field {
                    "parent" => Some(s.parent.span()),
                    "name" => s.name.as_ref().map(Spanned::span),
                    "owner" => Some(s.owner.span()),
                    "lat" => Some(s.lat.span()),
                    "lon" => Some(s.lon.span()),
                    "zone" => Some(s.zone.span()),
                    "feeder" => Some(s.feeder.span()),
                    _ => None,
                }
            }
            NodeRef::Der(i, j) => {
                let d = self.site[i].get_ref().der[j].get_ref();
                match field {
                    "name" => d.name.as_ref().map(Spanned::span),
                    _ => None,
                }
            }
        };
        span.map(|s| s.start)
    }
}
