//! Synthetic hierarchies for load tests, benchmarks and demos.
//!
//! [`generate`] builds a deterministic fleet from a [`GenSpec`]: the same spec
//! (seed included) always gives the same hierarchy, on every platform, so a
//! load test can be re-run against exactly the fleet that showed a problem.
//!
//! ```text
//!   level 1            vpp                       root virtual DER
//!   level 2        v2-0    v2-1    …             regions (zone = region)
//!    …               │                           levels - 2 virtual DER levels
//!   level L-1      site-… site-… …               sites (feeder = lowest virtual DER)
//!   level L        DERs (1 ..= 2·avg - 1 per site, exactly sites · avg in all)
//! ```
//!
//! Sites spread evenly over the lowest virtual DERs; each virtual DER level
//! multiplies the node count by the fan-out (never more nodes than sites, so
//! no virtual DER is empty). Ratings are drawn per segment and kind from
//! plausible ranges: homes with PV, batteries, EV chargers, heat pumps and
//! water heaters; shops and offices adding sheddable load and bigger plant;
//! factories with MW-scale curtailable process load. Costs differ per kind
//! (cheap water-heater shifts, dear industrial sheds) so merit order matters.
//!
//! The generator is linear in the number of nodes and allocates little beyond
//! the nodes themselves: 1 M DERs take under a second in a release build.

use crate::der::{DerKind, DerRating};
use crate::dispatch::Strategy;
use crate::hierarchy::{DerSpec, Hierarchy, SiteSpec, VirtualDerSpec, MAX_DEPTH};
use crate::id::NodeId;
use crate::site::{Location, Segment};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenSpec {
    /// Number of sites.
    pub sites: usize,
    /// Average DERs per site. Counts vary from 1 to `2 · avg - 1` but the
    /// total is exactly `sites · ders_per_site`, so tests can predict it.
    pub ders_per_site: usize,
    /// Levels in all, counting the root, the site level and the DER level
    /// (so `levels - 2` levels of virtual DERs). Clamped to `3..=MAX_DEPTH`.
    pub levels: usize,
    /// Children per virtual DER; `None` picks the smallest fan-out that
    /// spreads the sites evenly over the virtual DER levels.
    pub fanout: Option<usize>,
    /// Seed of the pseudo-random draws.
    pub seed: u64,
}

impl Default for GenSpec {
    fn default() -> Self {
        Self {
            sites: 100,
            ders_per_site: 2,
            levels: 5,
            fanout: None,
            seed: 1,
        }
    }
}

/// splitmix64: tiny, fast and good enough for synthetic data; written out so
/// the output never changes with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Index drawn with the given weights.
    fn weighted(&mut self, weights: &[u64]) -> usize {
        let mut r = self.below(weights.iter().sum());
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        weights.len() - 1
    }
}

/// Kilowatts (or kWh) drawn in `[lo, hi)`, rounded to 100 W as nameplates are.
fn kw(rng: &mut SplitMix64, lo: f64, hi: f64) -> u64 {
    ((rng.range(lo, hi) * 10.0).round() as u64).max(1) * 100
}

/// Currency per kWh drawn in `[lo, hi)`, in whole tenths of a cent.
fn cost(rng: &mut SplitMix64, lo: f64, hi: f64) -> u64 {
    (rng.range(lo, hi) * 1000.0).round() as u64 * 1000
}

/// Smallest fan-out `f >= 2` with `f^levels >= sites`.
fn auto_fanout(sites: usize, vlevels: usize) -> usize {
    let mut f = 2usize;
    loop {
        let mut reach = 1usize;
        for _ in 0..vlevels {
            reach = reach.saturating_mul(f);
        }
        if reach >= sites {
            return f;
        }
        f += 1;
    }
}

fn node_id(s: impl AsRef<str>) -> NodeId {
    // Every id built here is short ASCII from the allowed set.
    NodeId::new(s).expect("generated ids are valid")
}

const OWNERS: [&str; 8] = [
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "stark", "wayne",
];

/// A bounding box the size of a small country (lat, lon).
const LAT: (f64, f64) = (50.8, 53.5);
const LON: (f64, f64) = (3.4, 7.2);

/// Builds the hierarchy described by `spec`. It always passes
/// [`Hierarchy::validate`]; its depth is `levels` (clamped) when there is at
/// least one site with a DER.
pub fn generate(spec: &GenSpec) -> Hierarchy {
    let mut rng = SplitMix64(spec.seed);
    let levels = spec.levels.clamp(3, MAX_DEPTH);
    let vlevels = levels - 2;
    let n_sites = spec.sites;
    let fanout = spec
        .fanout
        .unwrap_or_else(|| auto_fanout(n_sites, vlevels))
        .max(1);

    // Node count per virtual DER level: 1, f, f², … never above the site count.
    let mut counts = vec![1usize];
    for _ in 1..vlevels {
        let prev = *counts.last().unwrap_or(&1);
        counts.push(prev.saturating_mul(fanout).min(n_sites.max(1)).max(prev));
    }
    let strategies = [
        Strategy::ProRata,
        Strategy::MeritOrder,
        Strategy::FairRotation,
    ];

    let mut h = Hierarchy::default();
    h.virtual_ders.reserve(counts.iter().sum());
    // ids of the previous level, and the region (level-2 ancestor) of each.
    let mut prev_ids = vec![node_id("vpp")];
    let mut region = vec![0usize];
    h.virtual_ders.push(VirtualDerSpec {
        id: prev_ids[0].clone(),
        name: "Whole fleet".into(),
        parent: None,
        strategy: Strategy::ProRata,
    });
    for (k, pair) in counts.windows(2).enumerate() {
        let (n_up, n) = (pair[0], pair[1]);
        let level = k + 2;
        let mut ids = Vec::with_capacity(n);
        let mut reg = Vec::with_capacity(n);
        for j in 0..n {
            let up = j * n_up / n;
            let id = node_id(format!("v{level}-{j}"));
            reg.push(if level == 2 { j } else { region[up] });
            h.virtual_ders.push(VirtualDerSpec {
                id: id.clone(),
                name: if level == 2 {
                    format!("Region {j}")
                } else {
                    format!("Cluster {level}.{j}")
                },
                parent: Some(prev_ids[up].clone()),
                strategy: strategies[rng.below(3) as usize],
            });
            ids.push(id);
        }
        prev_ids = ids;
        region = reg;
    }

    // A centre per region so sites of one zone sit together on the map.
    let n_regions = region.iter().max().map_or(1, |m| m + 1);
    let centres: Vec<(f64, f64)> = (0..n_regions)
        .map(|_| {
            (
                rng.range(LAT.0 + 0.3, LAT.1 - 0.3),
                rng.range(LON.0 + 0.3, LON.1 - 0.3),
            )
        })
        .collect();

    let bottom = prev_ids.len();
    let avg = spec.ders_per_site;
    h.sites.reserve(n_sites);
    h.ders.reserve(n_sites.saturating_mul(avg));
    let mut carry = 0usize;
    for i in 0..n_sites {
        let b = i * bottom / n_sites;
        let reg = region[b];
        let segment = match rng.below(100) {
            0..=79 => Segment::Residential,
            80..=93 => Segment::Commercial,
            _ => Segment::Industrial,
        };
        let (clat, clon) = centres[reg];
        let site_id = node_id(format!("site-{i:06}"));
        let (name, owner) = match segment {
            Segment::Residential => (format!("Home {i}"), format!("household-{i}")),
            Segment::Commercial => (
                format!("Premises {i}"),
                OWNERS[rng.below(OWNERS.len() as u64) as usize].to_string(),
            ),
            Segment::Industrial => (
                format!("Plant {i}"),
                OWNERS[rng.below(OWNERS.len() as u64) as usize].to_string(),
            ),
        };
        h.sites.push(SiteSpec {
            id: site_id.clone(),
            name,
            parent: prev_ids[b].clone(),
            location: Location {
                lat: (clat + rng.range(-0.25, 0.25)).clamp(LAT.0, LAT.1),
                lon: (clon + rng.range(-0.25, 0.25)).clamp(LON.0, LON.1),
                zone: format!("Z{reg:02}"),
                feeder: format!("F{b:04}"),
            },
            segment,
            owner,
            strategy: if segment == Segment::Residential {
                Strategy::ProRata
            } else {
                Strategy::MeritOrder
            },
        });

        // Pairs of sites share 2·avg DERs: (avg + d, avg - d), so counts vary
        // but the total is exact.
        let n_ders = if avg == 0 {
            0
        } else if i % 2 == 0 && i + 1 < n_sites {
            carry = rng.below(avg as u64) as usize;
            avg + carry
        } else if i % 2 == 1 {
            avg - carry
        } else {
            avg
        };
        for j in 0..n_ders {
            let rating = rating(&mut rng, segment);
            let id = format!("{site_id}-{}{j}", short(rating.kind));
            h.ders.push(DerSpec {
                id: node_id(&id),
                name: id,
                site: site_id.clone(),
                rating,
            });
        }
    }
    h
}

fn short(kind: DerKind) -> &'static str {
    match kind {
        DerKind::Battery => "bat",
        DerKind::EvCharger => "ev",
        DerKind::Hvac => "hvac",
        DerKind::WaterHeater => "wh",
        DerKind::Pv => "pv",
        DerKind::CurtailableLoad => "load",
    }
}

/// A plausible rating for one DER at a site of `segment`.
fn rating(rng: &mut SplitMix64, segment: Segment) -> DerRating {
    use DerKind::*;
    // Weights over [Battery, EvCharger, Hvac, WaterHeater, Pv, CurtailableLoad].
    let weights: [u64; 6] = match segment {
        Segment::Residential => [20, 20, 15, 15, 30, 0],
        Segment::Commercial => [10, 15, 25, 0, 20, 30],
        Segment::Industrial => [20, 0, 10, 0, 20, 50],
    };
    let kind = DerKind::ALL[rng.weighted(&weights)];
    // Size factor: homes 1, premises ~20, plants ~200.
    let scale = match segment {
        Segment::Residential => 1.0,
        Segment::Commercial => 20.0,
        Segment::Industrial => 200.0,
    };
    let mut r = match kind {
        Battery => {
            let p = kw(rng, 3.0 * scale, 10.0 * scale);
            let mut r = DerRating::new(kind, p, p);
            r.energy_wh = (p as f64 * rng.range(1.5, 3.0)).round() as u64;
            r.soc_min_pct = 10;
            r.soc_max_pct = 95;
            r.cost_micros_per_kwh = cost(rng, 0.06, 0.14);
            r
        }
        EvCharger => {
            let p = if segment == Segment::Residential {
                [3_700, 7_400, 11_000][rng.below(3) as usize]
            } else {
                kw(rng, 22.0, 150.0)
            };
            let mut r = DerRating::new(kind, p, 0);
            // The car's pack (homes) or the vehicles behind a hub (premises).
            r.energy_wh = if segment == Segment::Residential {
                kw(rng, 40.0, 80.0)
            } else {
                kw(rng, 100.0, 400.0)
            };
            r.soc_min_pct = 20;
            r.soc_max_pct = 90;
            r.min_on_s = 300;
            r.cost_micros_per_kwh = cost(rng, 0.03, 0.08);
            r
        }
        Hvac => {
            let p = kw(rng, 1.5 * scale, 5.0 * scale);
            let mut r = DerRating::new(kind, p, 0);
            let lo = 19.0 + rng.below(3) as f32;
            r.comfort_c = Some((lo, lo + 4.0));
            r.min_on_s = 300;
            r.min_off_s = 300;
            r.cost_micros_per_kwh = cost(rng, 0.02, 0.06);
            r
        }
        WaterHeater => {
            let p = kw(rng, 2.0, 4.5);
            let mut r = DerRating::new(kind, p, 0);
            r.energy_wh = kw(rng, 5.0, 12.0);
            r.comfort_c = Some((45.0, 65.0));
            r.cost_micros_per_kwh = cost(rng, 0.01, 0.03);
            r
        }
        Pv => {
            let p = kw(rng, 3.0 * scale, 10.0 * scale);
            let mut r = DerRating::new(kind, 0, p);
            r.cost_micros_per_kwh = cost(rng, 0.04, 0.07);
            r
        }
        CurtailableLoad => {
            let p = kw(rng, 1.0 * scale, 25.0 * scale);
            let mut r = DerRating::new(kind, p, 0);
            // Process load comes off in steps: about a fifth per minute.
            r.ramp_w_per_min = (p / 5).max(100);
            r.min_off_s = 900;
            r.max_hold_s = 2 * 3600;
            r.cost_micros_per_kwh = cost(rng, 0.15, 0.45);
            r
        }
    };
    if r.cost_micros_per_kwh == 0 {
        r.cost_micros_per_kwh = 1_000;
    }
    r
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn small_specs_validate_with_expected_shape() {
        for (sites, avg, levels) in [(50, 4, 5), (1, 1, 3), (7, 3, 4), (200, 2, 8), (3, 2, 12)] {
            let spec = GenSpec {
                sites,
                ders_per_site: avg,
                levels,
                fanout: None,
                seed: 42,
            };
            let h = generate(&spec);
            let topo = h.validate().unwrap_or_else(|e| panic!("{spec:?}: {e:?}"));
            assert_eq!(topo.depth, levels, "{spec:?}");
            assert_eq!(h.sites.len(), sites);
            assert_eq!(h.ders.len(), sites * avg, "{spec:?}");
            // Every site has between 1 and 2·avg - 1 DERs.
            for s in &h.sites {
                let n = topo.children_of(&s.id).len();
                assert!((1..=2 * avg - 1).contains(&n), "{}: {n}", s.id);
            }
        }
    }

    #[test]
    fn fixed_fanout_spreads_evenly() {
        let h = generate(&GenSpec {
            sites: 90,
            ders_per_site: 1,
            levels: 5,
            fanout: Some(3),
            seed: 7,
        });
        let topo = h.validate().unwrap();
        let root = topo.root.clone().unwrap();
        assert_eq!(topo.children_of(&root).len(), 3);
        for region in topo.children_of(&root) {
            assert_eq!(topo.children_of(region).len(), 3);
        }
        // 9 lowest virtual DERs, 10 sites each.
        for v in h
            .virtual_ders
            .iter()
            .filter(|v| v.id.as_str().starts_with("v3-"))
        {
            assert_eq!(topo.children_of(&v.id).len(), 10);
        }
    }

    #[test]
    fn deterministic_and_varied() {
        let spec = GenSpec {
            sites: 300,
            ders_per_site: 3,
            ..GenSpec::default()
        };
        assert_eq!(generate(&spec), generate(&spec));
        let other = generate(&GenSpec {
            seed: 2,
            ..spec.clone()
        });
        assert_ne!(generate(&spec), other);
        let h = generate(&spec);
        let kinds: HashSet<DerKind> = h.ders.iter().map(|d| d.rating.kind).collect();
        assert_eq!(kinds.len(), DerKind::COUNT);
        let strategies: HashSet<Strategy> = h.virtual_ders.iter().map(|v| v.strategy).collect();
        assert!(strategies.len() >= 2);
        let segments: HashSet<_> = h.sites.iter().map(|s| s.segment).collect();
        assert_eq!(segments.len(), 3);
    }

    #[test]
    fn degenerate_specs_still_validate() {
        let only_root = generate(&GenSpec {
            sites: 0,
            ..GenSpec::default()
        });
        // The virtual DER levels are there even without sites.
        assert_eq!(only_root.validate().unwrap().depth, 3);
        let no_ders = generate(&GenSpec {
            sites: 5,
            ders_per_site: 0,
            levels: 1,
            fanout: Some(1),
            seed: 0,
        });
        assert_eq!(no_ders.validate().unwrap().depth, 2);
    }
}
