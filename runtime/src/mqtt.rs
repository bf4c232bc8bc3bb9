//! MQTT transport: the embedded broker and one client session over two
//! transports. This module moves bytes; what they mean is `vpp-protocol`'s.
//!
//! ```text
//!   devices ──TCP──► ┌─ EmbeddedBroker: rumqttd in this process ─────────┐
//!                    │ listener thread(s) ──► router thread ◄── local link │
//!                    └─────────────────────────────────────────────┬─────┘
//!                                                 Embedded target  │
//!   MqttPublisher::publish ──► unbounded queue ──► writer ──┬──────┘
//!   (sync, never blocks)                                    │ External target
//!                                                           └──► rumqttc ──TCP──► Mosquitto, …
//!   Receiver<MqttEvent> ◄── reader (same link or connection)
//!   (bounded, 65,536)       Connected · Disconnected(why) · Message { topic, payload }
//!                           · PublisherReconnected (external: the out connection is back)
//! ```
//!
//! * [`EmbeddedBroker`] runs rumqttd in this process: its router and one thread
//!   per TCP listener. [`EmbeddedBroker::link`] is an in-process connection to
//!   the router (no TCP, no MQTT encoding).
//! * [`MqttSession::connect`] gives the same pair, a cloneable
//!   [`MqttPublisher`] and a bounded receiver of [`MqttEvent`]s, for either
//!   [`BrokerTarget`]. `Connected` comes on the first connection and after
//!   every reconnect, once the subscriptions are in place; a session
//!   reconnects by itself (back-off 200 ms doubling to 5 s). On an external
//!   broker `PublisherReconnected` says the connection that publishes came
//!   back: only then may the broker have lost the retained messages.
//! * Publishing never blocks: [`MqttPublisher::publish`] checks the topic and
//!   size, then enqueues. Callers are actor handlers, so it is plain sync code.
//!
//! What rumqttd does that callers must know (read from rumqttd 0.20's source,
//! figures from a release build on the 2-core dev VM):
//!
//! * The local link publishes at QoS 0 into the router, which cannot lose it
//!   (same process). Subscribers receive it at **their subscription's QoS**
//!   (rumqttd sets the outgoing QoS from the subscription), so a device that
//!   subscribes to `desired` with QoS 1 gets it with QoS 1.
//! * Retained messages are kept in one map in the router. A **new**
//!   subscription is sent the matching ones once, truncated to
//!   `router.max_outgoing_packet_count` (QoS 0 subscriptions) or to 100 (QoS 1:
//!   rumqttd's fixed outgoing in-flight window); the excess is silently
//!   dropped. Finding them scans every retained message, on the router's one
//!   thread: ~0.75 s per new subscription filter at 1M retained messages,
//!   during which the router routes nothing else.
//! * Each distinct subscription filter gets its own in-memory log
//!   (`router.max_segment_size` × `max_segment_count` of topic + payload,
//!   about 4× that in RAM for small messages) that keeps what matched it,
//!   read or not, until it rotates (room for 1,024 messages, ~240 KB, is
//!   allocated up front and becomes resident as it fills).
//!   A subscriber further behind than the log loses messages, whatever their
//!   QoS. So: few wildcard filters, not one per site or device.
//! * Measured: 1M retained publishes through the local link are in the router
//!   in 1.8 s and stored after 6.8 s (~150k msg/s); TCP devices → local link
//!   ~200k msg/s (QoS 0, 200 connections); local link → one TCP subscriber
//!   ~180k msg/s. Through Mosquitto, QoS 1 session → session: ~55k msg/s
//!   (rumqttc writes and flushes one packet at a time).
//! * rumqttd has no shutdown of its own; [`EmbeddedBroker`] stops its listener
//!   threads when dropped, and the router thread ends when the last link is gone.

mod broker;
mod broker_config;
mod embedded;
mod external;
mod session;
mod url;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use broker::{check_client_id, EmbeddedBroker, Listener, ListenerProtocol};
pub use broker_config::{
    default_broker_config, load_broker_config, parse_broker_config, DEFAULT_BROKER_TOML,
};
pub use session::{shed_total, MqttPublisher, MqttSession, PublisherStats};
pub use url::{BrokerUrl, DEFAULT_PORT};

/// A tokio runtime on a thread of its own, for the external broker's
/// connections. On a node with a million actors the shared runtime's queue
/// can hold a million ready tasks after a burst; a connection task waiting
/// its turn there leaves the socket unread for seconds, and the keep-alive
/// fails ("Last pingreq isn't acked": seen at 1M devices through Mosquitto).
pub(crate) fn io_runtime() -> tokio::runtime::Handle {
    static RT: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    RT.get_or_init(|| dedicated_runtime("vpp-mqtt-io"))
        .clone()
        .unwrap_or_else(tokio::runtime::Handle::current)
}

/// A single-threaded tokio runtime driven by a new thread named `name`;
/// `None` (and a warning) if the OS refuses either, so callers fall back to
/// the current runtime.
pub fn dedicated_runtime(name: &str) -> Option<tokio::runtime::Handle> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(thread = name, error = %e, "no runtime of its own; sharing the main one");
            return None;
        }
    };
    let handle = rt.handle().clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || rt.block_on(std::future::pending::<()>()));
    match spawned {
        Ok(_) => Some(handle),
        Err(e) => {
            tracing::warn!(thread = name, error = %e, "no thread of its own; sharing the main runtime");
            None
        }
    }
}

/// Capacity of a session's incoming event channel. When the consumer falls
/// this far behind, the session stops reading and the broker holds the rest.
pub const EVENT_CHANNEL_CAPACITY: usize = 65_536;

/// Largest payload [`MqttPublisher::publish`] accepts, bytes. Four times the
/// device protocol's limit, and with a topic of at most [`MAX_TOPIC_LEN`]
/// still below the default broker's `max_payload_size` (20,480), so no broker
/// drops the connection over a publish this side accepted.
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;

/// Longest topic [`MqttPublisher::publish`] accepts, bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// First wait before reconnecting; doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);

/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Which broker a session talks to.
#[derive(Clone)]
pub enum BrokerTarget {
    /// The broker running in this process, over its local link.
    Embedded(Arc<EmbeddedBroker>),
    /// Another broker over TCP (MQTT 3.1.1).
    External(BrokerUrl),
}

impl std::fmt::Debug for BrokerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerTarget::Embedded(b) => write!(f, "Embedded({})", b.local_addr()),
            BrokerTarget::External(u) => write!(f, "External({u})"),
        }
    }
}

/// Delivery guarantee of a publish.
///
/// QoS 2 is left out on purpose: the device protocol never uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// At most once (telemetry).
    AtMostOnce,
    /// At least once (desired, ack, reported, status).
    AtLeastOnce,
}

/// What a session reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttEvent {
    /// Connected (first time or again), with every filter subscribed. The
    /// first one is the time to publish retained state the owner has.
    Connected,
    /// External broker: the connection that publishes is back after a loss,
    /// so the broker may have restarted and lost the retained messages the
    /// owner published; publish them again. (A reconnect of the reading
    /// connection alone says nothing of the kind: it may just have fallen
    /// behind. The embedded broker lives in this process and keeps them.)
    PublisherReconnected,
    /// The connection is gone; the session is already trying to reconnect.
    Disconnected(String),
    /// A message on one of the subscribed filters.
    Message {
        /// The topic it was published on.
        topic: String,
        /// Its payload, as received (no copy).
        payload: bytes::Bytes,
    },
}

/// Everything that can go wrong at the MQTT boundary.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A broker config file could not be read.
    #[error("broker config {path}: {source}")]
    BrokerConfigRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A broker config is malformed or asks for something unsupported.
    #[error("broker config {origin}: {message}")]
    BrokerConfig {
        /// File name, or "embedded default".
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A broker listener could not start.
    #[error("broker listener {key} on {addr}: {message}")]
    Listen {
        /// Its table in the broker config, e.g. `v4.1`.
        key: String,
        /// Address it was to listen on.
        addr: SocketAddr,
        /// Why it failed.
        message: String,
    },
    /// A broker URL that is not `mqtt://host:port`.
    #[error("broker URL {url:?}: {message}")]
    Url {
        /// What was given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A client id the broker would refuse.
    #[error("client id {client_id:?}: {message}")]
    ClientId {
        /// What was given.
        client_id: String,
        /// What is wrong with it.
        message: String,
    },
    /// A topic or subscription filter that is not valid MQTT.
    #[error("topic {topic:?}: {message}")]
    Topic {
        /// The topic or filter.
        topic: String,
        /// What is wrong with it.
        message: String,
    },
    /// A payload over [`MAX_PAYLOAD_LEN`].
    #[error("payload of {len} bytes on {topic:?} is over the limit of {max} bytes")]
    PayloadTooLarge {
        /// The topic.
        topic: String,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The embedded broker's router refused a local link.
    #[error("local link {client_id:?} to the embedded broker: {message}")]
    Link {
        /// The link's client id.
        client_id: String,
        /// Why.
        message: String,
    },
    /// The session has stopped (its tasks ended); nothing more can be sent.
    #[error("the MQTT session has stopped")]
    Closed,
}
