//! The fleet to simulate, and how its sites are spread over connections.
//!
//! ```text
//!   Hierarchy ──devices_from_hierarchy──► Vec<SimSite> (site order kept, DERs grouped)
//!   Vec<SimSite> + connections ──plan──► Vec<ConnPlan>
//!       connections >= sites : one site per connection (site filter, last will)
//!       connections <= 256   : whole shards per connection (one shard filter each)
//!       otherwise            : whole sites per connection (one site filter each)
//! ```
//!
//! Either way a connection's subscriptions cover exactly its own devices
//! (a shard holds only sites of that shard), and shards or sites go to the
//! connection with the fewest devices so far, biggest first, so connections
//! carry about the same load.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use vpp_domain::{DerRating, Hierarchy, NodeId};
use vpp_protocol::{shard_of, topic};

/// A DER to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDer {
    /// Its id (the topic segment).
    pub id: NodeId,
    /// What it is rated for: the physics follow it.
    pub rating: DerRating,
}

/// A site to simulate: one gateway with its DERs.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSite {
    /// Its id (the topic segment; its shard follows from it).
    pub id: NodeId,
    /// Longitude, degrees: sets local solar time (PV, temperatures).
    pub lon: f64,
    /// Its DERs.
    pub ders: Vec<SimDer>,
}

/// Every site of `h` with its DERs, in file order.
pub fn devices_from_hierarchy(h: &Hierarchy) -> Vec<SimSite> {
    let mut index: FxHashMap<&NodeId, usize> = FxHashMap::default();
    let mut sites: Vec<SimSite> = h
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            index.insert(&s.id, i);
            SimSite {
                id: s.id.clone(),
                lon: s.location.lon,
                ders: Vec::new(),
            }
        })
        .collect();
    for d in &h.ders {
        if let Some(&i) = index.get(&d.site) {
            sites[i].ders.push(SimDer {
                id: d.id.clone(),
                rating: d.rating.clone(),
            });
        }
    }
    sites
}

/// What one connection carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnPlan {
    /// Indexes into the site list.
    pub(crate) sites: Vec<usize>,
    /// Its subscriptions (desired documents of exactly its devices).
    pub(crate) filters: Vec<String>,
}

/// Spreads `sites` over at most `connections` connections; see the module
/// docs. Never returns an empty connection.
pub(crate) fn plan(sites: &[SimSite], connections: usize) -> Vec<ConnPlan> {
    let connections = connections.max(1);
    let weight = |i: usize| sites[i].ders.len().max(1);
    if sites.is_empty() {
        return Vec::new();
    }
    if connections >= sites.len() {
        return (0..sites.len())
            .map(|i| ConnPlan {
                sites: vec![i],
                filters: vec![topic::site_desired_filter(sites[i].id.as_str())],
            })
            .collect();
    }
    if connections <= usize::from(vpp_protocol::SHARDS) {
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); usize::from(vpp_protocol::SHARDS)];
        for (i, s) in sites.iter().enumerate() {
            shards[usize::from(shard_of(s.id.as_str()))].push(i);
        }
        let groups: Vec<(u8, Vec<usize>)> = shards
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k as u8, v))
            .collect();
        let weights: Vec<usize> = groups
            .iter()
            .map(|(_, v)| v.iter().map(|&i| weight(i)).sum())
            .collect();
        let bins = balance(&weights, connections);
        return bins
            .into_iter()
            .map(|members| {
                let mut p = ConnPlan {
                    sites: Vec::new(),
                    filters: Vec::new(),
                };
                for g in members {
                    let (shard, ref s) = groups[g];
                    p.sites.extend_from_slice(s);
                    p.filters.push(topic::shard_desired_filter(shard));
                }
                p.sites.sort_unstable();
                p
            })
            .collect();
    }
    let weights: Vec<usize> = (0..sites.len()).map(weight).collect();
    balance(&weights, connections)
        .into_iter()
        .map(|mut members| {
            members.sort_unstable();
            ConnPlan {
                filters: members
                    .iter()
                    .map(|&i| topic::site_desired_filter(sites[i].id.as_str()))
                    .collect(),
                sites: members,
            }
        })
        .collect()
}

/// Longest-processing-time-first: items by weight, biggest first, each to
/// the lightest bin. Returns the non-empty bins (item indexes).
fn balance(weights: &[usize], bins: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| (Reverse(weights[i]), i));
    let n = bins.min(weights.len());
    let mut heap: BinaryHeap<Reverse<(usize, usize)>> = (0..n).map(|b| Reverse((0, b))).collect();
    let mut out = vec![Vec::new(); n];
    for i in order {
        if let Some(Reverse((load, b))) = heap.pop() {
            out[b].push(i);
            heap.push(Reverse((load + weights[i], b)));
        }
    }
    out.retain(|b| !b.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use vpp_domain::generate::{generate, GenSpec};

    use super::*;

    fn fleet(sites: usize) -> Vec<SimSite> {
        devices_from_hierarchy(&generate(&GenSpec {
            sites,
            ders_per_site: 3,
            ..GenSpec::default()
        }))
    }

    fn covers_each_site_once(sites: &[SimSite], p: &[ConnPlan]) {
        let mut seen = HashSet::new();
        for c in p {
            assert!(!c.sites.is_empty());
            for &i in &c.sites {
                assert!(seen.insert(i), "site {i} twice");
            }
        }
        assert_eq!(seen.len(), sites.len());
    }

    #[test]
    fn groups_ders_by_site() {
        let s = fleet(20);
        assert_eq!(s.len(), 20);
        assert_eq!(s.iter().map(|s| s.ders.len()).sum::<usize>(), 60);
        for site in &s {
            assert!(site
                .ders
                .iter()
                .all(|d| d.id.as_str().starts_with(site.id.as_str())));
        }
    }

    #[test]
    fn one_site_per_connection_when_there_are_enough() {
        let s = fleet(5);
        let p = plan(&s, 8);
        assert_eq!(p.len(), 5);
        covers_each_site_once(&s, &p);
        assert!(p[0].filters[0].ends_with("/+/desired"));
    }

    #[test]
    fn shard_mode_gives_whole_shards() {
        let s = fleet(3000);
        let p = plan(&s, 16);
        assert_eq!(p.len(), 16);
        covers_each_site_once(&s, &p);
        let mut shards = HashSet::new();
        for c in &p {
            let own: HashSet<u8> = c
                .sites
                .iter()
                .map(|&i| shard_of(s[i].id.as_str()))
                .collect();
            assert_eq!(own.len(), c.filters.len());
            for sh in own {
                assert!(shards.insert(sh), "shard {sh} on two connections");
                assert!(c.filters.contains(&topic::shard_desired_filter(sh)));
            }
        }
        // Balanced within a shard's worth of devices.
        let loads: Vec<usize> = p
            .iter()
            .map(|c| c.sites.iter().map(|&i| s[i].ders.len()).sum())
            .collect();
        let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(hi - lo < 60, "{loads:?}");
    }

    #[test]
    fn site_mode_above_256_connections() {
        let s = fleet(2000);
        let p = plan(&s, 300);
        assert_eq!(p.len(), 300);
        covers_each_site_once(&s, &p);
        for c in &p {
            assert_eq!(c.filters.len(), c.sites.len());
        }
    }

    #[test]
    fn empty_fleet_has_no_connections() {
        assert!(plan(&[], 4).is_empty());
    }
}
