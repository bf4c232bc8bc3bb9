//! Helpers shared by the actor tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use vpp_domain::{
    DerKind, DerRating, DerSpec, Direction, DispatchId, DispatchOrder, Hierarchy, Location, NodeId,
    Segment, SiteSpec, Strategy, VirtualDerSpec,
};

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Polls `f` until it returns `Some`, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 2 regions × 2 districts × 3 sites × 3 curtailable loads. Load `k` at a
/// site draws a different power so pro-rata shares are uneven.
pub fn five_levels(strategy: Strategy) -> Hierarchy {
    let mut h = Hierarchy::default();
    h.virtual_ders.push(VirtualDerSpec {
        id: id("root"),
        name: "root".into(),
        parent: None,
        strategy,
    });
    for r in 0..2 {
        let region = format!("r{r}");
        h.virtual_ders.push(VirtualDerSpec {
            id: id(&region),
            name: region.clone(),
            parent: Some(id("root")),
            strategy,
        });
        for d in 0..2 {
            let district = format!("{region}d{d}");
            h.virtual_ders.push(VirtualDerSpec {
                id: id(&district),
                name: district.clone(),
                parent: Some(id(&region)),
                strategy,
            });
            for s in 0..3 {
                let site = format!("{district}s{s}");
                h.sites.push(SiteSpec {
                    id: id(&site),
                    name: site.clone(),
                    parent: id(&district),
                    location: Location {
                        lat: 50.0,
                        lon: 5.0,
                        zone: format!("z{r}"),
                        feeder: format!("f{d}"),
                    },
                    segment: Segment::Commercial,
                    owner: "owner".into(),
                    strategy,
                });
                for k in 0..3u64 {
                    let mut rating =
                        DerRating::new(DerKind::CurtailableLoad, 10_000 + 1_000 * k, 0);
                    rating.cost_micros_per_kwh = 100_000 * (k + 1) + 10_000 * s;
                    h.ders.push(DerSpec {
                        id: id(&format!("{site}l{k}")),
                        name: String::new(),
                        site: id(&site),
                        rating,
                    });
                }
            }
        }
    }
    h
}

/// An hour-long upward order of `power_w` at `target`, starting now.
pub fn order(id_: &str, target: &str, power_w: u64) -> Arc<DispatchOrder> {
    Arc::new(DispatchOrder {
        id: DispatchId::new(id_).unwrap(),
        target: id(target),
        direction: Direction::Up,
        power_w,
        start_ms: vpp_actors::now_ms(),
        duration_s: 3600,
        ramp_w_per_min: None,
        created_ms: vpp_actors::now_ms(),
    })
}
