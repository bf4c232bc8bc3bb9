//! The runtime's side of device protocol v1 (`docs/device-protocol.md`):
//! desired documents out, device messages in.
//!
//! ```text
//!   DER actor ──desired──► DesiredOut ──JSON, QoS 1, retained──► broker ──► device
//!   device ──telemetry/ack/reported/status──► broker ──► Ingest::route
//!        (a site batch carries several DERs' telemetry or acks: one item each)
//!        ──(decode, check, address)──► Fleet::send_device_inputs (one message per site)
//!        └─ rejected: counted per reason, logged at most once per reason per 10 s
//!        └─ accepted telemetry of metered sites ──► Metering::sample (metering.rs)
//! ```
//!
//! Every check that needs no actor happens here (topic, shard, size, encoding,
//! version, ranges, whether the DER exists at that site); the DER actor then
//! drops replayed sequence numbers and acks for versions it never published
//! (counted in the fleet's metrics, merged into the same reason counter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vpp_actors::{DerAddr, DeviceInput, DeviceLink, Fleet, Metrics};
use vpp_domain::NodeId;
use vpp_protocol::topic::{der_topic, site_topic};
use vpp_protocol::{
    decode, decode_batch, encode_json, Ack, BatchItem, Channel, Desired, Reject, Reported,
    SiteBatch, Status, Telemetry, Topic, MAX_BATCH_ITEMS, MAX_BATCH_PAYLOAD,
};

use crate::metering::Metering;

/// Publishes a desired document: `(topic, payload)`, QoS 1, retained.
pub type PublishFn = dyn Fn(String, Vec<u8>) + Send + Sync;

/// The [`DeviceLink`] over MQTT.
pub struct DesiredOut {
    publish: Box<PublishFn>,
    stats: Arc<IngestStats>,
    site_documents: bool,
}

impl DesiredOut {
    /// Sends documents through `publish` (must not block), counting them.
    pub fn new(
        publish: impl Fn(String, Vec<u8>) + Send + Sync + 'static,
        stats: Arc<IngestStats>,
    ) -> Self {
        Self {
            publish: Box::new(publish),
            stats,
            site_documents: false,
        }
    }

    /// One site document per site instead of a document per DER
    /// (`mqtt.site_documents`).
    pub fn with_site_documents(mut self, on: bool) -> Self {
        self.site_documents = on;
        self
    }
}

impl DeviceLink for DesiredOut {
    fn desired(&self, site: &NodeId, der: &NodeId, doc: &Desired) {
        self.stats.desired_out.fetch_add(1, Ordering::Relaxed);
        (self.publish)(
            der_topic(site.as_str(), der.as_str(), Channel::Desired),
            encode_json(doc),
        );
    }

    fn site_documents(&self) -> bool {
        self.site_documents
    }

    /// One retained message for the site. A site whose document would not
    /// fit a site batch ([`MAX_BATCH_PAYLOAD`], [`MAX_BATCH_ITEMS`]) gets a
    /// document per DER instead, and a warning: its gateway must subscribe
    /// to those too.
    fn desired_site(&self, site: &NodeId, docs: &[(&NodeId, Desired)]) {
        let batch = SiteBatch {
            v: vpp_protocol::VERSION,
            items: docs
                .iter()
                .map(|(der, doc)| BatchItem {
                    der: der.to_string(),
                    msg: doc,
                })
                .collect(),
        };
        let payload = encode_json(&batch);
        if payload.len() > MAX_BATCH_PAYLOAD || docs.len() > MAX_BATCH_ITEMS {
            tracing::warn!(%site, bytes = payload.len(), ders = docs.len(), "site document too large for one message; publishing a document per DER");
            for (der, doc) in docs {
                self.desired(site, der, doc);
            }
            return;
        }
        self.stats.desired_out.fetch_add(1, Ordering::Relaxed);
        (self.publish)(site_topic(site.as_str(), Channel::Desired), payload);
    }
}

/// What a valid device message turns into.
#[derive(Debug)]
pub enum Routed {
    /// For one DER's actor.
    Der(DerAddr, DeviceInput),
    /// A site batch: the items that passed, each with its DER id, and the
    /// reason of each item that did not.
    Batch {
        /// For the DERs' actors, in the batch's order.
        items: Vec<(DerAddr, DeviceInput, String)>,
        /// Why each refused item was refused.
        rejected: Vec<Reject>,
    },
    /// A site gateway's status (site number, online).
    Gateway(u32, bool),
    /// For a site another cluster member runs (its shard moved, or this
    /// member subscribes to every shard): not this member's, not an error.
    Elsewhere,
}

/// Counters of device messages, by outcome.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Accepted and handed to the fleet (each item of a site batch counts).
    pub accepted: AtomicU64,
    /// Site batches received (whatever became of their items).
    pub batches: AtomicU64,
    /// How old the newest telemetry of the last ingested batch was when
    /// ingest took it (node clock minus the device's `ts`), ms: how far
    /// ingest runs behind the devices.
    pub telemetry_lag_ms: AtomicU64,
    /// Rejected here, by [`Reject::index`].
    rejected: [AtomicU64; Reject::ALL.len()],
    /// Arrived while no hierarchy was loaded.
    pub no_fleet: AtomicU64,
    /// For sites another cluster member runs (left alone).
    pub elsewhere: AtomicU64,
    /// Desired documents published.
    pub desired_out: AtomicU64,
    /// (Re)connections to the broker.
    pub connects: AtomicU64,
    last_log: Mutex<[Option<Instant>; Reject::ALL.len()]>,
    suppressed: [AtomicU64; Reject::ALL.len()],
}

/// One warning per reason per this long; the rest are counted as suppressed.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl IngestStats {
    /// Counts a rejection and logs it, at most once per reason per 10 s.
    pub fn reject(&self, reason: Reject, topic: &str) {
        let i = reason.index();
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let due = match self.last_log.lock() {
            Ok(mut last) => {
                let due = last[i].is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
                if due {
                    last[i] = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            let suppressed = self.suppressed[i].swap(0, Ordering::Relaxed);
            let topic: String = topic.chars().take(200).collect();
            tracing::warn!(reason = reason.as_str(), %topic, suppressed, "device message rejected: {reason}");
        } else {
            self.suppressed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rejections per reason, including those the DER actors counted
    /// (replayed sequence numbers, unknown desired versions).
    pub fn rejected(&self, fleet: &Metrics) -> Vec<(Reject, u64)> {
        Reject::ALL
            .iter()
            .map(|r| {
                let mut n = self.rejected[r.index()].load(Ordering::Relaxed);
                n += match r {
                    Reject::Replayed => fleet.telemetry_replayed.load(Ordering::Relaxed),
                    Reject::UnknownVersion => fleet.acks_unknown_version.load(Ordering::Relaxed),
                    _ => 0,
                };
                (*r, n)
            })
            .collect()
    }
}

/// Decodes, checks and addresses one device message.
pub fn route(fleet: &Fleet, topic: &str, payload: &[u8]) -> Result<Routed, Reject> {
    let t = Topic::parse(topic)?;
    match (t.channel, t.der) {
        (Channel::Status, _) => {
            let Some(site) = fleet.locate_site(t.site) else {
                return elsewhere(fleet, t.site);
            };
            let s: Status = decode(payload)?;
            Ok(Routed::Gateway(site, s.online))
        }
        (Channel::Desired, _) => Err(Reject::ReadOnly),
        (Channel::Telemetry, None) => route_batch(fleet, t.site, payload, telemetry_input),
        (Channel::Ack, None) => route_batch(fleet, t.site, payload, ack_input),
        (Channel::Reported, None) => route_batch(fleet, t.site, payload, reported_input),
        (channel, Some(der)) => {
            let Some(addr) = fleet.locate_der(t.site, der) else {
                return elsewhere(fleet, t.site);
            };
            let input = match channel {
                Channel::Telemetry => telemetry_input(decode(payload)?)?,
                Channel::Ack => ack_input(decode(payload)?)?,
                Channel::Reported => reported_input(decode(payload)?)?,
                Channel::Status | Channel::Desired => return Err(Reject::Topic),
            };
            Ok(Routed::Der(addr, input))
        }
    }
}

/// Checks a telemetry message (alone or in a site batch).
fn telemetry_input(m: Telemetry) -> Result<DeviceInput, Reject> {
    m.validate()?;
    Ok(DeviceInput::Telemetry(m.to_state()))
}

/// Checks an ack (alone or in a site batch).
fn ack_input(m: Ack) -> Result<DeviceInput, Reject> {
    if m.version == 0 || m.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(Reject::OutOfRange);
    }
    Ok(DeviceInput::Ack(m))
}

/// A reported document (alone or in a site batch).
fn reported_input(m: Reported) -> Result<DeviceInput, Reject> {
    Ok(DeviceInput::Reported(m.version))
}

/// A site batch of `site`: decoded whole (a batch that does not decode is
/// one rejection), then checked item by item like single messages.
fn route_batch<T: serde::de::DeserializeOwned>(
    fleet: &Fleet,
    site: &str,
    payload: &[u8],
    check: fn(T) -> Result<DeviceInput, Reject>,
) -> Result<Routed, Reject> {
    if fleet.locate_site(site).is_none() {
        return elsewhere(fleet, site);
    }
    let batch = decode_batch::<T>(payload)?;
    let mut items = Vec::with_capacity(batch.items.len());
    let mut rejected = Vec::new();
    for BatchItem { der, msg } in batch.items {
        let Some(addr) = fleet.locate_der(site, &der) else {
            rejected.push(Reject::UnknownDevice);
            continue;
        };
        match check(msg) {
            Ok(input) => items.push((addr, input, der)),
            Err(r) => rejected.push(r),
        }
    }
    Ok(Routed::Batch { items, rejected })
}

/// A message for `site` that this member does not run: another member's
/// (the fleet knows the site) or an unknown device.
fn elsewhere(fleet: &Fleet, site: &str) -> Result<Routed, Reject> {
    if fleet.runs_elsewhere(site) {
        Ok(Routed::Elsewhere)
    } else {
        Err(Reject::UnknownDevice)
    }
}

/// Routes a batch of messages and hands the valid ones to the fleet, one
/// actor message per site; accepted telemetry also feeds `metering`.
pub fn ingest_batch(
    fleet: &Fleet,
    stats: &IngestStats,
    metering: Option<&Metering>,
    batch: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<[u8]>)>,
) {
    let metering = metering.filter(|m| m.is_active());
    let now = vpp_actors::now_ms();
    let mut inputs = Vec::new();
    for (topic, payload) in batch {
        let topic = topic.as_ref();
        match route(fleet, topic, payload.as_ref()) {
            Ok(Routed::Der(addr, input)) => {
                if let (Some(m), DeviceInput::Telemetry(state)) = (metering, &input) {
                    // `route` checked the topic; parsing it again is cheap
                    // and only done while some site is metered.
                    let t = Topic::parse(topic).ok();
                    if let Some((site, der)) = t.and_then(|t| Some((t.site, t.der?))) {
                        m.sample(site, der, state.power_w, now);
                    }
                }
                inputs.push((addr, input));
            }
            Ok(Routed::Batch { items, rejected }) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                for r in rejected {
                    stats.reject(r, topic);
                }
                stats
                    .accepted
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                let site = metering
                    .and_then(|_| Topic::parse(topic).ok())
                    .map(|t| t.site);
                for (addr, input, der) in items {
                    if let (Some(m), Some(site), DeviceInput::Telemetry(state)) =
                        (metering, site, &input)
                    {
                        m.sample(site, &der, state.power_w, now);
                    }
                    inputs.push((addr, input));
                }
                continue;
            }
            Ok(Routed::Gateway(site, online)) => fleet.gateway_status(site, online),
            Ok(Routed::Elsewhere) => {
                stats.elsewhere.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(r) => {
                stats.reject(r, topic);
                continue;
            }
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
    }
    let newest = inputs
        .iter()
        .filter_map(|(_, i)| match i {
            DeviceInput::Telemetry(s) => Some(s.updated_ms),
            _ => None,
        })
        .max();
    if let Some(ts) = newest {
        let lag = now.saturating_sub(ts);
        stats.telemetry_lag_ms.store(lag, Ordering::Relaxed);
    }
    if !inputs.is_empty() {
        fleet.send_device_inputs(inputs);
    }
}

/// Starts [`pump`] on a thread of its own (the `vpp-ingest` runtime), so that
/// reading device messages never waits behind the actors' tasks: after a
/// burst the shared runtime's queue can hold a million of them, and a pump
/// that gets one turn per pass through that queue ingests a batch per pass.
pub fn spawn_pump(
    node: Arc<crate::node::Node>,
    events: tokio::sync::mpsc::Receiver<crate::mqtt::MqttEvent>,
) -> tokio::task::JoinHandle<()> {
    static RT: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    RT.get_or_init(|| crate::mqtt::dedicated_runtime("vpp-ingest"))
        .clone()
        .unwrap_or_else(tokio::runtime::Handle::current)
        .spawn(pump(node, events))
}

/// Every DER with a document publishes it again, or (`unapplied_only`)
/// every DER holding a setpoint not yet acked as applied.
async fn republish(node: &crate::node::Node, unapplied_only: bool) {
    if let Ok(f) = node.fleet().await {
        if unapplied_only {
            f.republish_unapplied();
        } else {
            f.republish_desired();
        }
    }
}

/// Most messages handed to the fleet at once.
const BATCH: usize = 4096;

/// Reads the MQTT session's events until it ends: device messages go to the
/// fleet in batches (one actor message per site per batch). The first
/// connection publishes the desired documents, and so does every comeback
/// of the publishing connection, since an external broker may have
/// restarted and lost its retained messages. A reconnect of the reading
/// connection alone republishes only for DERs whose device has not acked
/// its setpoints as applied (acks sent meanwhile are lost): at a million
/// devices that connection drops when the broker falls behind, and
/// republishing all ~280k documents then fed the overload.
pub async fn pump(
    node: Arc<crate::node::Node>,
    mut events: tokio::sync::mpsc::Receiver<crate::mqtt::MqttEvent>,
) {
    use crate::mqtt::MqttEvent;
    let stats = node.ingest.clone();
    let mut batch: Vec<(String, bytes::Bytes)> = Vec::with_capacity(BATCH);
    let mut first_connect = true;
    while let Some(first) = events.recv().await {
        let mut next = Some(first);
        while let Some(ev) = next.take() {
            match ev {
                MqttEvent::Message { topic, payload } => batch.push((topic, payload)),
                MqttEvent::Connected => {
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                    if std::mem::replace(&mut first_connect, false) {
                        tracing::info!(
                            "connected to the MQTT broker; publishing desired documents"
                        );
                        republish(&node, false).await;
                    } else {
                        tracing::info!(
                            "connected to the MQTT broker again; asking for acks that may be lost"
                        );
                        republish(&node, true).await;
                    }
                }
                MqttEvent::PublisherReconnected => {
                    tracing::info!("publishing connection back; republishing desired documents (the broker may have restarted)");
                    republish(&node, false).await;
                }
                MqttEvent::Disconnected(why) => {
                    tracing::warn!(%why, "lost the MQTT broker; reconnecting");
                }
            }
            if batch.len() < BATCH {
                next = events.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        match node.fleet().await {
            Ok(f) => ingest_batch(&f, &stats, Some(node.metering()), batch.drain(..)),
            Err(_) => {
                stats
                    .no_fleet
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
        }
        // Let the actors run between batches on a busy node.
        tokio::task::yield_now().await;
    }
}
