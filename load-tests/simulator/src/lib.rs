//! # vpp-simulator: a fleet of simulated devices speaking protocol v1
//!
//! Simulates sites full of DERs (batteries, EV chargers, HVAC, water
//! heaters, PV, curtailable loads) behind MQTT, for demos (`vpp demo` runs
//! it in-process) and load tests (`vpp-loadgen`, up to a million devices
//! over a couple of thousand connections). Every topic and payload comes
//! from `vpp-protocol`.
//!
//! ```text
//!   Hierarchy ─devices_from_hierarchy─► Vec<SimSite> ─┐
//!   SimConfig (or a scenario file) ───────────────────┴─► start()
//!        plan: sites → connections (whole shards, or whole sites)
//!        per connection:  driver task  (rumqttc EventLoop: connect, reconnect, storms)
//!                           │ Inbound (connected, desired messages)
//!                           ▼
//!                         gateway task (its devices: physics + shadow + ramp)
//!                           │ AsyncClient: telemetry (QoS 0, spread over the interval),
//!                           ▼ acks, reported, status (QoS 1)
//!                         broker ◄──► runtime
//!   SimHandle: stats() · arm_probe()/probe() (per-device ack latency) · stop()
//! ```
//!
//! - **Physics** (`physics/`, one file per kind, pure and unit-tested) and
//!   the device's side of the shadow (`device.rs`: versions, ramp,
//!   accept/reject/applied) know nothing of MQTT or tokio.
//! - **Faults** ([`Faults`]): offline devices, refusing devices, ack
//!   latency, reconnect storms.
//! - **Speed** multiplies physics time (ramps, thermal drift, SoC), not
//!   setpoint windows, which are wall-clock as the runtime writes them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vpp_simulator::SimError> {
//! use vpp_simulator::{devices_from_hierarchy, start, SimConfig};
//! let h = vpp_domain::hierarchy_file::load("examples/small.toml".as_ref())?;
//! let sim = start(SimConfig { speed: 60.0, ..SimConfig::default() }, devices_from_hierarchy(&h)).await?;
//! println!("{:?}", sim.stats());
//! sim.stop().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs, unreachable_pub, unsafe_code)]

mod clock;
mod config;
mod device;
mod driver;
mod error;
mod fleet;
mod gateway;
mod physics;
mod rng;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use rustc_hash::FxHashSet;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

pub use config::{check_gen, Encoding, Faults, FleetSpec, Scenario, SimConfig, MAX_CONNECTIONS};
pub use device::REFUSING_REASON;
pub use error::SimError;
pub use fleet::{devices_from_hierarchy, SimDer, SimSite};
pub use stats::{LatencySummary, ProbeReport, SimStats};

use crate::clock::{now_ms, SimClock};
use crate::device::Device;
use crate::driver::{Driver, Inbound};
use crate::gateway::{Gateway, GwDevice, Shared};
use crate::rng::{pick, SplitMix64};
use crate::stats::{Counters, Probe};

/// Salts for the independent random draws.
const SALT_DEVICE: u64 = 1;
const SALT_OFFLINE: u64 = 2;
const SALT_REFUSING: u64 = 3;
const SALT_CONNECTION: u64 = 4;
const SALT_STORM: u64 = 5;

/// How long [`SimHandle::stop`] waits for goodbyes before aborting.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running simulator. Dropping it without [`SimHandle::stop`] aborts
/// every task at once (no goodbyes).
pub struct SimHandle {
    counters: Arc<Counters>,
    probe: Arc<Probe>,
    connections: usize,
    devices: usize,
    devices_live: usize,
    stop_gateways: watch::Sender<bool>,
    stop_drivers: watch::Sender<bool>,
    gateways: Vec<JoinHandle<()>>,
    drivers: Vec<JoinHandle<()>>,
    storm: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("connections", &self.connections)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// What the simulator has done so far.
    pub fn stats(&self) -> SimStats {
        self.counters
            .snapshot(self.connections, self.devices, self.devices_live)
    }

    /// Starts (or restarts) the latency probe: from now, each device's
    /// first ack and first `applied` are timed.
    pub fn arm_probe(&self) {
        self.probe.arm();
    }

    /// Per-device latencies since [`SimHandle::arm_probe`].
    pub fn probe(&self) -> ProbeReport {
        self.probe.report()
    }

    /// Stops every connection: one-site gateways publish `online: false`,
    /// every connection sends DISCONNECT; whatever is not done after a few
    /// seconds is aborted.
    pub async fn stop(mut self) {
        let _ = self.stop_gateways.send(true);
        let gateways = std::mem::take(&mut self.gateways);
        let drivers = std::mem::take(&mut self.drivers);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for g in gateways {
            let abort = g.abort_handle();
            if tokio::time::timeout_at(deadline, g).await.is_err() {
                abort.abort();
            }
        }
        // Drivers end by themselves once their DISCONNECT is out.
        let mut left = Vec::new();
        for d in drivers {
            let abort = d.abort_handle();
            if tokio::time::timeout_at(deadline, d).await.is_err() {
                left.push(abort);
            }
        }
        let _ = self.stop_drivers.send(true);
        for a in left {
            a.abort();
        }
        if let Some(s) = self.storm.take() {
            s.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for h in self.gateways.iter().chain(&self.drivers).chain(&self.storm) {
            h.abort();
        }
    }
}

/// A connection ready to run.
struct Prepared {
    driver: Driver,
    gateway: Gateway,
    inbound: mpsc::UnboundedReceiver<Inbound>,
}

/// Starts simulating `sites` as `config` says: checks the config, checks
/// the broker answers, then starts every connection (ramped at
/// `connect_per_s`) and returns at once.
pub async fn start(config: SimConfig, sites: Vec<SimSite>) -> Result<SimHandle, SimError> {
    config.validate()?;
    let devices: usize = sites.iter().map(|s| s.ders.len()).sum();
    if devices == 0 {
        return Err(SimError::NoDevices);
    }
    let (host, port) = config::broker_addr(&config.broker)?;
    let reach = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 5 s",
        ))
    });
    if let Err(source) = reach {
        return Err(SimError::Broker {
            addr: config.broker.clone(),
            source,
        });
    }

    let counters = Arc::new(Counters::new());
    let probe = Arc::new(Probe::new(devices));
    let (stop_gateways, _) = watch::channel(false);
    let (stop_drivers, _) = watch::channel(false);
    let now = now_ms();
    let shared = Arc::new(Shared {
        clock: SimClock::new(now, config.speed, config.start_hour),
        encoding: config.encoding,
        site_batch: config.site_batch,
        interval: config.telemetry_interval,
        ack_latency_ms: config.faults.ack_latency_ms,
        counters: counters.clone(),
        probe: probe.clone(),
        gate: gateway::StartGate::new(usize::MAX),
    });
    let build = {
        let (shared, stop_dr) = (shared.clone(), stop_drivers.subscribe());
        let config = config.clone();
        move || prepare(&config, sites, &host, port, now, shared, stop_dr)
    };
    let (prepared, devices_live) = tokio::task::spawn_blocking(build)
        .await
        .map_err(|e| SimError::config("start", format!("building the fleet failed: {e}")))?;

    let connections = prepared.len();
    shared
        .gate
        .expect(prepared.iter().filter(|p| p.driver.gate.is_some()).count());
    let mut gateways = Vec::with_capacity(connections);
    let mut drivers = Vec::with_capacity(connections);
    let mut storms = Vec::with_capacity(connections);
    for p in prepared {
        storms.push(p.driver.storm.clone());
        let stop = stop_gateways.subscribe();
        gateways.push(tokio::spawn(p.gateway.run(p.inbound, stop)));
        drivers.push(tokio::spawn(p.driver.run()));
    }
    let storm = config.faults.storm_every_s.map(|every| {
        tokio::spawn(storm_loop(
            storms,
            Duration::from_secs_f64(every),
            config.faults.storm_share,
            SplitMix64::new(config.seed ^ SALT_STORM),
            counters.clone(),
            stop_drivers.subscribe(),
        ))
    });
    tracing::info!(
        broker = %config.broker,
        connections,
        devices,
        devices_live,
        speed = config.speed,
        "simulator started"
    );
    Ok(SimHandle {
        counters,
        probe,
        connections,
        devices,
        devices_live,
        stop_gateways,
        stop_drivers,
        gateways,
        drivers,
        storm,
    })
}

/// Builds every connection's devices and MQTT client (blocking: a million
/// devices take a while). Returns the connections to start and the number
/// of devices not offline at start.
#[allow(clippy::too_many_arguments)]
fn prepare(
    config: &SimConfig,
    sites: Vec<SimSite>,
    host: &str,
    port: u16,
    now: u64,
    shared: Arc<Shared>,
    stop_drivers: watch::Receiver<bool>,
) -> (Vec<Prepared>, usize) {
    let plans = fleet::plan(&sites, config.connections);
    let f = &config.faults;
    let offline_ids: FxHashSet<&str> = f.offline_ids.iter().map(String::as_str).collect();
    let refusing_ids: FxHashSet<&str> = f.refusing_ids.iter().map(String::as_str).collect();
    let offline_from = f
        .offline_after_s
        .map(|s| now + (s * 1000.0) as u64)
        .unwrap_or(0);
    // Global device index: position in the input order.
    let mut first_global = Vec::with_capacity(sites.len());
    let mut acc = 0u32;
    for s in &sites {
        first_global.push(acc);
        acc += s.ders.len() as u32;
    }
    let mut slots: Vec<Option<SimSite>> = sites.into_iter().map(Some).collect();
    let seq0 = now.saturating_mul(1000);
    let n_plans = plans.len().max(1) as f64;
    let mut live = 0usize;
    let mut out = Vec::with_capacity(plans.len());
    for (ci, plan) in plans.into_iter().enumerate() {
        let mut site_ids = Vec::with_capacity(plan.sites.len());
        let mut devices = Vec::new();
        for &si in &plan.sites {
            let Some(site) = slots[si].take() else {
                continue;
            };
            let local = site_ids.len() as u32;
            for (k, der) in site.ders.into_iter().enumerate() {
                let id = der.id.as_str();
                let rng = SplitMix64::for_name(config.seed, id, SALT_DEVICE);
                let mut device = Device::new(&der.rating, site.lon, rng, now, seq0);
                if offline_ids.contains(id) || pick(config.seed, id, SALT_OFFLINE) < f.offline_share
                {
                    device.silent_from_ms = offline_from;
                }
                device.refusing = refusing_ids.contains(id)
                    || pick(config.seed, id, SALT_REFUSING) < f.refusing_share;
                devices.push(GwDevice {
                    device,
                    telemetry_topic: vpp_protocol::topic::der_topic(
                        site.id.as_str(),
                        id,
                        vpp_protocol::Channel::Telemetry,
                    )
                    .into_boxed_str(),
                    id: der.id,
                    site: local,
                    global: first_global[si] + k as u32,
                    reporting: false,
                });
            }
            site_ids.push(site.id);
        }
        let alive = devices.iter().filter(|d| !d.device.silent(now)).count();
        live += alive;
        if devices.iter().all(|d| d.device.silent_from_ms == 0) {
            // Every device offline from the start: never connect.
            continue;
        }
        let name = format!("{}-{ci}", config.client_prefix);
        let mut opts = MqttOptions::new(name.clone(), host, port);
        opts.set_keep_alive(config.keep_alive);
        opts.set_clean_session(true);
        opts.set_inflight(100);
        opts.set_max_packet_size(64 * 1024, 64 * 1024);
        let lone_site = (site_ids.len() == 1).then(|| site_ids[0].clone());
        if let Some(site) = &lone_site {
            let offline = vpp_protocol::Status {
                v: vpp_protocol::VERSION,
                online: false,
            };
            let payload = match config.encoding {
                Encoding::Json => vpp_protocol::encode_json(&offline),
                Encoding::Binary => vpp_protocol::encode_binary(&offline),
            };
            opts.set_last_will(LastWill::new(
                vpp_protocol::topic::status_topic(site.as_str()),
                payload,
                QoS::AtLeastOnce,
                true,
            ));
        }
        // Room for a burst of acks, reported and telemetry for every device.
        let cap = (devices.len() * 4 + 1024).min(1 << 20);
        let (client, eventloop) = AsyncClient::new(opts, cap);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rng = SplitMix64::for_name(config.seed, &name, SALT_CONNECTION);
        let driver = Driver {
            name: name.clone(),
            eventloop,
            inbound: tx,
            storm: Arc::new(Notify::new()),
            stop: stop_drivers.clone(),
            counters: shared.counters.clone(),
            gate: Some(plan.filters.len().div_ceil(gateway::FILTERS_PER_PACKET))
                .filter(|&packets| packets > 0)
                .map(|packets| (shared.clone(), packets)),
            start_delay: Duration::from_secs_f64(ci as f64 / config.connect_per_s)
                .min(Duration::from_secs_f64(n_plans / config.connect_per_s)),
            rng: SplitMix64::new(rng.next_u64()),
        };
        // Site batches: the site documents (`…/{site}/desired`) instead of
        // the DERs' (`…/{site}/+/desired`), for shard and site filters alike.
        let filters = if config.site_batch {
            plan.filters
                .iter()
                .map(|f| match f.strip_suffix("/+/desired") {
                    Some(head) => format!("{head}/desired"),
                    None => f.clone(),
                })
                .collect()
        } else {
            plan.filters
        };
        let gateway = Gateway::new(
            name,
            client,
            shared.clone(),
            site_ids,
            devices,
            filters,
            lone_site,
            rng,
        );
        out.push(Prepared {
            driver,
            gateway,
            inbound: rx,
        });
    }
    (out, live)
}

/// Every `every`, drops a `share` of the connections at once.
async fn storm_loop(
    links: Vec<Arc<Notify>>,
    every: Duration,
    share: f64,
    mut rng: SplitMix64,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    if links.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut order: Vec<usize> = (0..links.len()).collect();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let k = ((links.len() as f64 * share).ceil() as usize).clamp(1, links.len());
                // Partial Fisher–Yates: k distinct connections.
                for j in 0..k {
                    let r = j + rng.below((links.len() - j) as u64) as usize;
                    order.swap(j, r);
                    links[order[j]].notify_one();
                }
                counters.storms.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(dropped = k, "reconnect storm");
            }
        }
    }
}
