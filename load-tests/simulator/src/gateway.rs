//! A gateway: the devices of one MQTT connection and everything they do.
//!
//! ```text
//!   Inbound (from the driver) ──► on_inbound
//!       Connected    → subscribe own filters, status online (one-site
//!                      connections), `reported` for every device
//!       Message      → parse topic, decode Desired, find device
//!                      → now, or after the injected latency (timer) → deliver
//!   deliver: Device::receive → ack accepted / rejected ──► (applied now?) applied + reported + telemetry
//!                                                     ├──► timer: check again when the ramp should be done
//!                                                     └──► timers: telemetry as each setpoint starts and ends
//!   tick (every ~32 devices' worth, at most a tenth of the interval): the
//!        next devices in turn, so each sends telemetry once per interval,
//!        spread evenly over it
//! ```
//!
//! One tokio task owns the devices; it publishes through rumqttc's
//! `AsyncClient`, whose queue the driver task drains. Telemetry is QoS 0
//! and skipped while disconnected; acks, `reported` and status are QoS 1.
//!
//! With `site_batch`, telemetry and acks wait in an [`Outbox`] until the end
//! of the turn (one tick, one run of timers, one batch of inbound messages)
//! and leave as one site batch per site and channel.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use rustc_hash::FxHashMap;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use vpp_domain::NodeId;
use vpp_protocol::topic::{der_topic, site_topic, status_topic};
use vpp_protocol::{
    Ack, AckStatus, BatchItem, Channel, Desired, SiteBatch, Status, Telemetry, Topic,
};

use crate::clock::{now_ms, SimClock};
use crate::config::Encoding;
use crate::device::{Device, Receipt};
use crate::driver::Inbound;
use crate::rng::{fnv1a, SplitMix64};
use crate::stats::{Counters, Probe};

/// Subscription filters per SUBSCRIBE packet.
pub(crate) const FILTERS_PER_PACKET: usize = 100;
/// Devices handled per telemetry tick, roughly.
const TICK_BATCH: f64 = 32.0;
/// Shortest and longest telemetry tick.
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);
/// Inbound messages handled before the loop looks at its timers again.
const INBOUND_BATCH: usize = 1024;

/// Most items per site batch: well inside the protocol's limits
/// (`MAX_BATCH_ITEMS`, and `MAX_BATCH_PAYLOAD` at up to ~300 bytes an item).
const MAX_ITEMS_PER_BATCH: usize = 40;

/// Longest a connection holds its devices' first messages back, waiting
/// for every other connection to subscribe (see [`StartGate`]).
const START_GATE_MAX: Duration = Duration::from_secs(60);

/// Holds every device's first publish until every connection has its
/// subscriptions acknowledged (or [`START_GATE_MAX`] has passed).
///
/// A broker that indexes topics and filters poorly pays for each new
/// filter in proportion to the topics and retained messages it already
/// holds (rumqttd scans them all on its one router thread: see
/// `runtime/src/mqtt.rs`). Subscribing first, while the broker holds
/// nothing, keeps a million-device start from stalling the broker for
/// minutes and timing connections out. Reconnects later pay as any
/// device would.
#[derive(Debug)]
pub(crate) struct StartGate {
    pending: AtomicUsize,
    open: watch::Sender<bool>,
}

impl StartGate {
    pub(crate) fn new(connections: usize) -> Self {
        Self {
            pending: AtomicUsize::new(connections),
            open: watch::Sender::new(connections == 0),
        }
    }

    /// One connection has every subscription acknowledged.
    pub(crate) fn subscribed(&self) {
        if self.pending.fetch_sub(1, Relaxed) == 1 {
            self.open.send_replace(true);
            tracing::info!("every connection subscribed; devices start publishing");
        }
    }

    /// Sets how many connections the gate waits for (once they are built).
    pub(crate) fn expect(&self, connections: usize) {
        self.pending.store(connections, Relaxed);
        if connections == 0 {
            self.open.send_replace(true);
        }
    }

    async fn wait(&self) {
        let mut open = self.open.subscribe();
        if tokio::time::timeout(START_GATE_MAX, open.wait_for(|o| *o))
            .await
            .is_err()
        {
            tracing::warn!(
                waiting = self.pending.load(Relaxed),
                "not every connection subscribed within {} s; publishing anyway",
                START_GATE_MAX.as_secs()
            );
        }
    }
}

/// What every gateway shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) clock: SimClock,
    pub(crate) encoding: Encoding,
    /// Telemetry and acks go out as site batches.
    pub(crate) site_batch: bool,
    pub(crate) interval: Duration,
    pub(crate) ack_latency_ms: [u64; 2],
    pub(crate) counters: Arc<Counters>,
    pub(crate) probe: Arc<Probe>,
    pub(crate) gate: StartGate,
}

/// A device as its gateway holds it.
#[derive(Debug)]
pub(crate) struct GwDevice {
    pub(crate) device: Device,
    pub(crate) id: NodeId,
    /// Index into the gateway's sites.
    pub(crate) site: u32,
    /// Index over the whole fleet (for the probe).
    pub(crate) global: u32,
    /// Has sent telemetry at least once.
    pub(crate) reporting: bool,
    /// Its telemetry topic, built once: it is used every few seconds.
    pub(crate) telemetry_topic: Box<str>,
}

#[derive(Debug)]
enum TimerKind {
    /// Handle a desired document (after injected latency).
    Deliver {
        dev: usize,
        desired: Desired,
        received: Instant,
    },
    /// See whether the held version is applied yet.
    Check {
        dev: usize,
        version: u64,
        wait: Duration,
    },
    /// A setpoint of the held version starts or ends: telemetry now.
    Edge { dev: usize, version: u64 },
}

/// Setpoint edges further ahead than this get no prompt telemetry of their
/// own (the regular round covers them).
const MAX_EDGE_AHEAD_MS: u64 = 7 * 24 * 3_600_000;

#[derive(Debug)]
struct Timer {
    due: Instant,
    seq: u64,
    kind: TimerKind,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    // Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// Telemetry and acks held for site batches until the end of the turn, in
/// the order they were made, with the index of their site.
#[derive(Debug, Default)]
struct Outbox {
    telemetry: Vec<(u32, BatchItem<Telemetry>)>,
    acks: Vec<(u32, BatchItem<Ack>)>,
    /// Sites whose `reported` site document is due (every device's).
    reported: Vec<u32>,
}

/// The devices of one connection.
pub(crate) struct Gateway {
    pub(crate) name: String,
    pub(crate) client: AsyncClient,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sites: Vec<NodeId>,
    pub(crate) devices: Vec<GwDevice>,
    /// Device index by a hash of its id (see [`Gateway::find`]).
    by_id: FxHashMap<u64, u32>,
    /// Devices whose id hash collided with another's (searched by id).
    collided: Vec<u32>,
    /// Index of each site's first device (devices are grouped by site),
    /// and the device count at the end.
    site_first: Vec<u32>,
    pub(crate) filters: Vec<String>,
    /// The one site of a one-site connection (it has a last will).
    pub(crate) lone_site: Option<NodeId>,
    pub(crate) rng: SplitMix64,
    connected: bool,
    /// Has not connected yet: the first connect waits at the start gate.
    first_connect: bool,
    timers: BinaryHeap<Timer>,
    timer_seq: u64,
    cursor: usize,
    budget: f64,
    outbox: Outbox,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        client: AsyncClient,
        shared: Arc<Shared>,
        sites: Vec<NodeId>,
        devices: Vec<GwDevice>,
        filters: Vec<String>,
        lone_site: Option<NodeId>,
        rng: SplitMix64,
    ) -> Self {
        let mut by_id = FxHashMap::default();
        by_id.reserve(devices.len());
        let mut collided = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            match by_id.entry(fnv1a(d.id.as_str())) {
                Entry::Vacant(e) => {
                    e.insert(i as u32);
                }
                // The first keeps the slot; this one is searched by id.
                Entry::Occupied(_) => collided.push(i as u32),
            }
        }
        let mut site_first = Vec::with_capacity(sites.len() + 1);
        for (i, d) in devices.iter().enumerate() {
            while site_first.len() <= d.site as usize {
                site_first.push(i as u32);
            }
        }
        while site_first.len() <= sites.len() {
            site_first.push(devices.len() as u32);
        }
        Self {
            name,
            client,
            shared,
            sites,
            devices,
            by_id,
            collided,
            site_first,
            filters,
            lone_site,
            rng,
            connected: false,
            first_connect: true,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            cursor: 0,
            budget: 0.0,
            outbox: Outbox::default(),
        }
    }

    /// Runs until stopped or the driver ends.
    pub(crate) async fn run(
        mut self,
        mut inbound: mpsc::UnboundedReceiver<Inbound>,
        mut stop: watch::Receiver<bool>,
    ) {
        let n = self.devices.len().max(1);
        let interval = self.shared.interval;
        // About TICK_BATCH devices per tick: a batch of publishes wakes the
        // driver once instead of once per message. Ticks stay within a tenth
        // of the interval, so the spread over the interval stays even.
        let tick_len = interval
            .mul_f64(TICK_BATCH / n as f64)
            .clamp(MIN_TICK, (interval / 10).clamp(MIN_TICK, MAX_TICK));
        let phase = tick_len.mul_f64(self.rng.unit());
        let mut tick = tokio::time::interval_at(Instant::now() + phase, tick_len);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        // One timer, reset to the earliest due one (cheaper than a new
        // sleep every turn).
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let sleep = tokio::time::sleep_until(far);
        tokio::pin!(sleep);
        let mut armed_for = far;
        let stop = async move {
            let _ = stop.changed().await;
        };
        tokio::pin!(stop);
        loop {
            let next_timer = self.timers.peek().map(|t| t.due);
            let due = next_timer.unwrap_or(far);
            if due != armed_for {
                sleep.as_mut().reset(due);
                armed_for = due;
            }
            tokio::select! {
                biased;
                _ = &mut stop => break,
                m = inbound.recv() => {
                    let Some(m) = m else { break };
                    self.on_inbound(m).await;
                    for _ in 0..INBOUND_BATCH {
                        match inbound.try_recv() {
                            Ok(m) => self.on_inbound(m).await,
                            Err(_) => break,
                        }
                    }
                }
                _ = &mut sleep, if next_timer.is_some() => {
                    armed_for = far;
                    self.on_timers().await;
                }
                t = tick.tick() => {
                    // Budget from elapsed time, so a late tick catches up.
                    let elapsed = t.saturating_duration_since(last_tick);
                    last_tick = t;
                    self.budget = (self.budget
                        + n as f64 * elapsed.as_secs_f64() / interval.as_secs_f64())
                    .min(n as f64);
                    self.on_tick().await;
                }
            }
            self.flush().await;
        }
        self.flush().await;
        self.goodbye().await;
    }

    fn encode<T: Serialize>(&self, msg: &T) -> Vec<u8> {
        match self.shared.encoding {
            Encoding::Json => vpp_protocol::encode_json(msg),
            Encoding::Binary => vpp_protocol::encode_binary(msg),
        }
    }

    async fn publish(&self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        match self.client.publish(topic, qos, retain, payload).await {
            Ok(()) => true,
            Err(_) => {
                self.shared.counters.publish_errors.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Sends an ack of device `i`: now on its own topic, or into the
    /// outbox for a site batch.
    async fn send_ack(&mut self, i: usize, ack: Ack) -> bool {
        if self.shared.site_batch {
            let d = &self.devices[i];
            let item = BatchItem {
                der: d.id.as_str().to_string(),
                msg: ack,
            };
            self.outbox.acks.push((d.site, item));
            return true;
        }
        let payload = self.encode(&ack);
        self.publish(
            self.topic(i, Channel::Ack),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
    }

    /// Publishes what the outbox holds: per site and channel, in order,
    /// site batches of at most [`MAX_ITEMS_PER_BATCH`] items.
    async fn flush(&mut self) {
        if !self.outbox.telemetry.is_empty() {
            let items = std::mem::take(&mut self.outbox.telemetry);
            self.publish_batches(items, Channel::Telemetry, QoS::AtMostOnce)
                .await;
        }
        if !self.outbox.acks.is_empty() {
            let items = std::mem::take(&mut self.outbox.acks);
            self.publish_batches(items, Channel::Ack, QoS::AtLeastOnce)
                .await;
        }
        if !self.outbox.reported.is_empty() {
            let mut sites = std::mem::take(&mut self.outbox.reported);
            sites.sort_unstable();
            sites.dedup();
            self.publish_site_reported(&sites).await;
        }
    }

    /// The retained `reported` site document of each of `sites`: what every
    /// live device of the site holds.
    async fn publish_site_reported(&mut self, sites: &[u32]) {
        let now = now_ms();
        let clock = self.shared.clock;
        for &site in sites {
            let (a, b) = (
                self.site_first[site as usize] as usize,
                self.site_first[site as usize + 1] as usize,
            );
            let mut batch = SiteBatch::new();
            for d in &self.devices[a..b] {
                if !d.device.silent(now) {
                    batch.items.push(BatchItem {
                        der: d.id.as_str().to_string(),
                        msg: d.device.reported(&clock, now),
                    });
                }
            }
            if batch.items.is_empty() {
                continue;
            }
            let n = batch.items.len() as u64;
            let topic = site_topic(self.sites[site as usize].as_str(), Channel::Reported);
            let payload = self.encode(&batch);
            if self.publish(topic, QoS::AtLeastOnce, true, payload).await {
                let c = &self.shared.counters;
                c.batches_sent.fetch_add(1, Relaxed);
                c.reported_sent.fetch_add(n, Relaxed);
            }
        }
    }

    async fn publish_batches<T: Serialize>(
        &mut self,
        mut items: Vec<(u32, BatchItem<T>)>,
        channel: Channel,
        qos: QoS,
    ) {
        // Stable: a device's items keep their order.
        items.sort_by_key(|(site, _)| *site);
        let mut items = items.into_iter().peekable();
        while let Some((site, first)) = items.next() {
            let mut batch = SiteBatch::new();
            batch.items.push(first);
            while batch.items.len() < MAX_ITEMS_PER_BATCH {
                match items.next_if(|(s, _)| *s == site) {
                    Some((_, item)) => batch.items.push(item),
                    None => break,
                }
            }
            let topic = site_topic(self.sites[site as usize].as_str(), channel);
            let payload = self.encode(&batch);
            if self.publish(topic, qos, false, payload).await {
                self.shared.counters.batches_sent.fetch_add(1, Relaxed);
            }
        }
    }

    fn topic(&self, i: usize, ch: Channel) -> String {
        let d = &self.devices[i];
        der_topic(self.sites[d.site as usize].as_str(), d.id.as_str(), ch)
    }

    async fn on_inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Connected => self.on_connected().await,
            Inbound::Disconnected => self.connected = false,
            Inbound::Message { topic, payload } => self.on_message(&topic, &payload).await,
        }
    }

    async fn on_connected(&mut self) {
        self.connected = true;
        for chunk in self.filters.chunks(FILTERS_PER_PACKET) {
            let filters: Vec<SubscribeFilter> = chunk
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                .collect();
            if self.client.subscribe_many(filters).await.is_err() {
                self.shared.counters.publish_errors.fetch_add(1, Relaxed);
            }
        }
        if std::mem::take(&mut self.first_connect) {
            self.shared.gate.wait().await;
        }
        if let Some(site) = &self.lone_site {
            let online = self.encode(&Status {
                v: vpp_protocol::VERSION,
                online: true,
            });
            self.publish(status_topic(site.as_str()), QoS::AtLeastOnce, true, online)
                .await;
        }
        let now = now_ms();
        for i in 0..self.devices.len() {
            if !self.devices[i].device.silent(now) {
                self.send_reported(i, now).await;
            }
        }
        tracing::debug!(client = %self.name, devices = self.devices.len(), "subscribed and republished");
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let c = &self.shared.counters;
        let (site, der) = match Topic::parse(topic) {
            Ok(Topic {
                channel: Channel::Desired,
                site,
                der,
                ..
            }) => (site, der),
            _ => {
                c.desired_unknown.fetch_add(1, Relaxed);
                return;
            }
        };
        let Some(der) = der else {
            // A site document: every DER's desired document of the site.
            let batch = match vpp_protocol::decode_batch::<Desired>(payload) {
                Ok(b) => b,
                Err(e) => {
                    c.desired_malformed.fetch_add(1, Relaxed);
                    tracing::debug!(topic, reason = %e, "undecodable site document");
                    return;
                }
            };
            for item in batch.items {
                match self.device_at(site, &item.der) {
                    Some(dev) => self.on_desired(dev, item.msg).await,
                    None => {
                        self.shared.counters.desired_unknown.fetch_add(1, Relaxed);
                    }
                }
            }
            return;
        };
        let Some(dev) = self.device_at(site, der) else {
            c.desired_unknown.fetch_add(1, Relaxed);
            return;
        };
        let desired = match vpp_protocol::decode::<Desired>(payload) {
            Ok(d) => d,
            Err(e) => {
                c.desired_malformed.fetch_add(1, Relaxed);
                tracing::debug!(topic, reason = %e, "undecodable desired document");
                return;
            }
        };
        self.on_desired(dev, desired).await;
    }

    /// Device `der` of site `site`, if this gateway has it.
    fn device_at(&self, site: &str, der: &str) -> Option<usize> {
        self.find(der)
            .filter(|&i| self.sites[self.devices[i].site as usize].as_str() == site)
    }

    /// A desired document for device `dev`: now, or after the injected
    /// latency.
    async fn on_desired(&mut self, dev: usize, desired: Desired) {
        self.shared.counters.desired_received.fetch_add(1, Relaxed);
        let received = Instant::now();
        let [lo, hi] = self.shared.ack_latency_ms;
        if hi == 0 {
            self.deliver(dev, desired, received).await;
        } else {
            let ms = lo + self.rng.below(hi - lo + 1);
            self.schedule(
                received + Duration::from_millis(ms),
                TimerKind::Deliver {
                    dev,
                    desired,
                    received,
                },
            );
        }
    }

    /// The device with id `der`.
    fn find(&self, der: &str) -> Option<usize> {
        let hit = self
            .by_id
            .get(&fnv1a(der))
            .map(|&i| i as usize)
            .filter(|&i| self.devices[i].id.as_str() == der);
        hit.or_else(|| {
            self.collided
                .iter()
                .map(|&i| i as usize)
                .find(|&i| self.devices[i].id.as_str() == der)
        })
    }

    fn schedule(&mut self, due: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Timer {
            due,
            seq: self.timer_seq,
            kind,
        });
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|t| t.due <= now) {
            let Some(t) = self.timers.pop() else { break };
            match t.kind {
                TimerKind::Deliver {
                    dev,
                    desired,
                    received,
                } => self.deliver(dev, desired, received).await,
                TimerKind::Check { dev, version, wait } => {
                    self.check_applied(dev, version, wait).await
                }
                TimerKind::Edge { dev, version } => self.on_edge(dev, version).await,
            }
        }
    }

    async fn deliver(&mut self, i: usize, desired: Desired, received: Instant) {
        let now = now_ms();
        let clock = self.shared.clock;
        let d = &mut self.devices[i];
        if d.device.silent(now) {
            return;
        }
        let receipt = d.device.receive(&desired, &clock, now);
        let global = d.global as usize;
        let c = &self.shared.counters;
        let (status, reason) = match &receipt {
            Receipt::Stale => {
                c.desired_stale.fetch_add(1, Relaxed);
                return;
            }
            Receipt::Rejected(r) => (AckStatus::Rejected, Some(r.clone())),
            Receipt::Accepted { .. } => (AckStatus::Accepted, None),
        };
        let rejected = status == AckStatus::Rejected;
        let ack = Ack {
            v: vpp_protocol::VERSION,
            version: desired.version,
            status,
            reason,
        };
        if self.send_ack(i, ack).await {
            let c = &self.shared.counters;
            if rejected {
                c.acks_rejected.fetch_add(1, Relaxed);
            } else {
                c.acks_accepted.fetch_add(1, Relaxed);
            }
            c.ack_latency.record(received.elapsed());
            self.shared.probe.ack(global, rejected);
        }
        if let Receipt::Accepted { .. } = receipt {
            // Prompt telemetry when a setpoint starts or ends.
            let edges: Vec<u64> = desired
                .setpoints
                .iter()
                .flat_map(|s| [s.start_ms, s.end_ms])
                .filter(|&t| t > now && t - now <= MAX_EDGE_AHEAD_MS)
                .collect();
            for t in edges {
                self.schedule(
                    Instant::now() + Duration::from_millis(t - now + 1),
                    TimerKind::Edge {
                        dev: i,
                        version: desired.version,
                    },
                );
            }
        }
        match receipt {
            Receipt::Accepted { applied: true } => self.on_applied(i, now).await,
            Receipt::Accepted { applied: false } => {
                let wait = Duration::from_millis(
                    self.devices[i].device.ms_until_applied(&clock, now).max(20),
                );
                self.schedule(
                    Instant::now() + wait,
                    TimerKind::Check {
                        dev: i,
                        version: desired.version,
                        wait,
                    },
                );
            }
            _ => {}
        }
    }

    /// Looks again whether a held version is applied; backs off (doubling)
    /// until the telemetry round takes over.
    async fn check_applied(&mut self, i: usize, version: u64, wait: Duration) {
        let now = now_ms();
        let clock = self.shared.clock;
        let d = &mut self.devices[i].device;
        if d.held_version() != version || !d.applied_pending() || d.silent(now) {
            return;
        }
        d.advance(&clock, now);
        if d.take_applied(&clock, now) {
            self.on_applied(i, now).await;
            return;
        }
        let estimate = Duration::from_millis(d.ms_until_applied(&clock, now));
        let next = estimate.max(wait * 2).max(Duration::from_millis(50));
        if next <= self.shared.interval {
            self.schedule(
                Instant::now() + next,
                TimerKind::Check {
                    dev: i,
                    version,
                    wait: next,
                },
            );
        }
    }

    /// A setpoint edge of the held version: advance and tell.
    async fn on_edge(&mut self, i: usize, version: u64) {
        let now = now_ms();
        let clock = self.shared.clock;
        let d = &mut self.devices[i].device;
        if d.held_version() != version || d.silent(now) {
            return;
        }
        d.advance(&clock, now);
        if d.take_applied(&clock, now) {
            self.on_applied(i, now).await;
        } else {
            self.send_telemetry(i, now).await;
        }
    }

    async fn on_applied(&mut self, i: usize, now: u64) {
        let version = self.devices[i].device.held_version();
        let ack = Ack {
            v: vpp_protocol::VERSION,
            version,
            status: AckStatus::Applied,
            reason: None,
        };
        if self.send_ack(i, ack).await {
            self.shared.counters.acks_applied.fetch_add(1, Relaxed);
            self.shared.probe.applied(self.devices[i].global as usize);
        }
        self.send_reported(i, now).await;
        self.send_telemetry(i, now).await;
    }

    async fn send_reported(&mut self, i: usize, now: u64) {
        if self.shared.site_batch {
            self.outbox.reported.push(self.devices[i].site);
            return;
        }
        let clock = self.shared.clock;
        let r = self.devices[i].device.reported(&clock, now);
        let payload = self.encode(&r);
        if self
            .publish(
                self.topic(i, Channel::Reported),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .await
        {
            self.shared.counters.reported_sent.fetch_add(1, Relaxed);
        }
    }

    async fn send_telemetry(&mut self, i: usize, now: u64) {
        if !self.connected {
            return;
        }
        let t = self.devices[i].device.telemetry(now);
        let sent = if self.shared.site_batch {
            let d = &self.devices[i];
            let item = BatchItem {
                der: d.id.as_str().to_string(),
                msg: t,
            };
            self.outbox.telemetry.push((d.site, item));
            true
        } else {
            let payload = self.encode(&t);
            let topic = String::from(&*self.devices[i].telemetry_topic);
            self.publish(topic, QoS::AtMostOnce, false, payload).await
        };
        if sent {
            let c = &self.shared.counters;
            c.telemetry_sent.fetch_add(1, Relaxed);
            let d = &mut self.devices[i];
            if !d.reporting {
                d.reporting = true;
                c.devices_reporting.fetch_add(1, Relaxed);
            }
        }
    }

    /// The next devices in turn: advance, telemetry, and `applied` if due.
    async fn on_tick(&mut self) {
        let k = self.budget.floor();
        self.budget -= k;
        if !self.connected || self.devices.is_empty() {
            return;
        }
        let now = now_ms();
        let clock = self.shared.clock;
        for _ in 0..k as usize {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % self.devices.len();
            let d = &mut self.devices[i].device;
            if d.silent(now) {
                continue;
            }
            d.advance(&clock, now);
            if d.take_applied(&clock, now) {
                self.on_applied(i, now).await;
            } else {
                self.send_telemetry(i, now).await;
            }
        }
    }

    /// Graceful end: a one-site gateway says it goes offline, then
    /// DISCONNECT (which the driver waits for).
    async fn goodbye(&mut self) {
        if self.connected {
            if let Some(site) = &self.lone_site {
                let off = self.encode(&Status {
                    v: vpp_protocol::VERSION,
                    online: false,
                });
                self.publish(status_topic(site.as_str()), QoS::AtLeastOnce, true, off)
                    .await;
            }
        }
        let _ = self.client.try_disconnect();
    }
}
