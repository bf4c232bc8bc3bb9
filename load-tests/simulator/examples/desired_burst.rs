//! The simulator's side of a dispatch, without a node: a burst of desired
//! documents, one per device, published from one MQTT client, and how fast
//! the simulated fleet answers.
//!
//! Run (a broker on 127.0.0.1:1883):
//!
//! ```sh
//! cargo run --release -p vpp-simulator --example desired_burst -- 127.0.0.1:1883 2500
//! ```
//!
//! Prints per-device time from the start of the burst to each device's
//! first ack and `applied`, like `vpp-loadgen --api` does with a real node.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use vpp_domain::generate::{generate, GenSpec};
use vpp_domain::Direction;
use vpp_protocol::topic::der_topic;
use vpp_protocol::{encode_json, Channel, Desired, DesiredSetpoint};
use vpp_simulator::{devices_from_hierarchy, start, SimConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut a = std::env::args().skip(1);
    let broker = a.next().unwrap_or_else(|| "127.0.0.1:1883".into());
    let sites: usize = a.next().map(|s| s.parse()).transpose()?.unwrap_or(2500);
    let h = generate(&GenSpec {
        sites,
        ders_per_site: 4,
        ..GenSpec::default()
    });
    let fleet = devices_from_hierarchy(&h);
    let targets: Vec<(String, String)> = fleet
        .iter()
        .flat_map(|s| s.ders.iter().map(|d| (s.id.to_string(), d.id.to_string())))
        .collect();
    let config = SimConfig {
        broker: broker.clone(),
        connections: targets.len().div_ceil(500).clamp(1, 2000),
        client_prefix: "burst-sim".into(),
        ..SimConfig::default()
    };
    let sim = start(config, fleet).await?;
    let t = Instant::now();
    while sim.stats().devices_reporting < targets.len() {
        if t.elapsed() > Duration::from_secs(120) {
            return Err("the fleet did not come up within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} devices on {} connections publishing after {:.1} s",
        targets.len(),
        sim.stats().connections,
        t.elapsed().as_secs_f64()
    );

    let (host, port) = broker.rsplit_once(':').ok_or("broker is host:port")?;
    let mut opts = MqttOptions::new("burst-publisher", host, port.parse()?);
    opts.set_inflight(1000);
    let (client, mut el) = AsyncClient::new(opts, 100_000);
    tokio::spawn(async move {
        loop {
            if let Err(e) = el.poll().await {
                eprintln!("publisher: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    sim.arm_probe();
    let burst = Instant::now();
    for (site, der) in &targets {
        let d = Desired {
            v: 1,
            version: now,
            setpoints: vec![DesiredSetpoint {
                dispatch: "burst".into(),
                direction: Direction::Up,
                power_w: 100,
                target_power_w: 0,
                start_ms: now,
                end_ms: now + 600_000,
                ramp_w_per_min: 0,
            }],
        };
        client
            .publish(
                der_topic(site, der, Channel::Desired),
                QoS::AtLeastOnce,
                true,
                encode_json(&d),
            )
            .await?;
    }
    let queued = burst.elapsed();
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = sim.probe().acked.len();
        if n != last.0 {
            last = (n, Instant::now());
        }
        if n >= targets.len() || last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let p = sim.probe();
    let q = |v: &mut Vec<Duration>, f: f64| {
        v.sort_unstable();
        v.get(((v.len() as f64 * f).ceil() as usize).clamp(1, v.len().max(1)) - 1)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    let (mut acked, mut applied) = (p.acked.clone(), p.applied.clone());
    println!(
        "burst of {} desired documents queued in {:.0} ms",
        targets.len(),
        queued.as_secs_f64() * 1e3
    );
    println!(
        "first ack: {} devices ({} rejected)  p50 {:.0} ms  p99 {:.0} ms  last {:.0} ms",
        acked.len(),
        p.rejected,
        q(&mut acked, 0.5),
        q(&mut acked, 0.99),
        q(&mut acked, 1.0)
    );
    println!(
        "applied: {} devices  p50 {:.0} ms  p99 {:.0} ms  last {:.0} ms",
        applied.len(),
        q(&mut applied, 0.5),
        q(&mut applied, 0.99),
        q(&mut applied, 1.0)
    );
    sim.stop().await;
    Ok(())
}
