//! [`MqttSession`]: one client over either transport, and the
//! [`MqttPublisher`] handle that actors publish through.
//!
//! Both transports share the shape: publishes go into an unbounded queue that
//! a writer drains into the connection; a reader turns what the broker sends
//! into [`MqttEvent`]s on a bounded channel. The transport-specific halves
//! live in `embedded.rs` (threads on rumqttd's blocking local link) and
//! `external.rs` (tokio tasks around rumqttc's event loop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::broker::check_client_id;
use super::{
    embedded, external, BrokerTarget, MqttError, MqttEvent, Qos, EVENT_CHANNEL_CAPACITY,
    MAX_PAYLOAD_LEN, MAX_TOPIC_LEN,
};

/// A publish waiting in the queue.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) qos: Qos,
    pub(super) retain: bool,
}

/// Shared by a publisher's clones and its writer.
#[derive(Debug, Default)]
pub(super) struct Counters {
    queued: AtomicU64,
    sent: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    shed: AtomicU64,
}

/// QoS 0 messages shed by every session of this process (for `/metrics`).
static SHED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// QoS 0 messages (telemetry) every session of this process has shed
/// because its consumer was a whole event channel behind.
pub fn shed_total() -> u64 {
    SHED_TOTAL.load(Ordering::Relaxed)
}

impl Counters {
    pub(super) fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn shed(&self, n: u64) {
        self.shed.fetch_add(n, Ordering::Relaxed);
        SHED_TOTAL.fetch_add(n, Ordering::Relaxed);
    }
}

/// Counts of a session's publishes, since it was connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublisherStats {
    /// Accepted by [`MqttPublisher::publish`].
    pub queued: u64,
    /// Handed to the broker: appended to the router's input (embedded) or
    /// to rumqttc's request channel (external). A publish queued while the
    /// connection is down is sent after the reconnect.
    pub sent: u64,
    /// Refused by [`MqttPublisher::publish`] (bad topic, too large, session
    /// stopped), or queued and then discarded because the session stopped.
    pub failed: u64,
    /// Queued and not yet sent.
    pub pending: u64,
    /// Received QoS 0 messages (telemetry) dropped on arrival because the
    /// consumer was a whole event channel behind (external broker only).
    pub shed: u64,
}

/// Publishes through a session. Cheap to clone; every clone feeds the same
/// queue. The session's writer stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MqttPublisher {
    queue: mpsc::UnboundedSender<Outbound>,
    counters: Arc<Counters>,
}

impl MqttPublisher {
    /// Queues a publish. Never blocks and needs no async runtime: actor
    /// handlers call it. Fails at once on a topic that is not a valid MQTT
    /// topic name, a payload over [`MAX_PAYLOAD_LEN`], or a stopped session.
    ///
    /// On the embedded broker `qos` has no effect: the local link hands the
    /// message to the router in-process, and subscribers receive it at their
    /// subscription's QoS.
    pub fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        qos: Qos,
        retain: bool,
    ) -> Result<(), MqttError> {
        let checked = check_topic(&topic).and_then(|()| {
            if payload.len() > MAX_PAYLOAD_LEN {
                Err(MqttError::PayloadTooLarge {
                    topic: topic.clone(),
                    len: payload.len(),
                    max: MAX_PAYLOAD_LEN,
                })
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let outbound = Outbound {
            topic,
            payload,
            qos,
            retain,
        };
        // Count first so a writer never reports more sent than queued.
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.queue.send(outbound).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(MqttError::Closed);
        }
        Ok(())
    }

    /// Counts so far.
    pub fn stats(&self) -> PublisherStats {
        let c = &self.counters;
        let queued = c.queued.load(Ordering::Relaxed);
        let sent = c.sent.load(Ordering::Relaxed);
        let dropped = c.dropped.load(Ordering::Relaxed);
        PublisherStats {
            queued,
            sent,
            failed: c.rejected.load(Ordering::Relaxed) + dropped,
            pending: queued.saturating_sub(sent + dropped),
            shed: c.shed.load(Ordering::Relaxed),
        }
    }
}

/// Connects MQTT clients; see [`MqttSession::connect`].
#[derive(Debug)]
pub struct MqttSession;

impl MqttSession {
    /// Connects `client_id` to `target`, subscribing `filters` (QoS 1) now
    /// and after every reconnect, with a clean session each time.
    ///
    /// Embedded: returns once the local link is up (an error if the router
    /// refuses it). External: returns at once and connects in the background;
    /// watch for [`MqttEvent::Connected`]. Either way the session keeps
    /// reconnecting by itself, and stops once the receiver and every
    /// publisher clone are dropped. Must be called inside a tokio runtime.
    pub async fn connect(
        target: BrokerTarget,
        client_id: &str,
        filters: Vec<String>,
    ) -> Result<(MqttPublisher, mpsc::Receiver<MqttEvent>), MqttError> {
        check_client_id(client_id)?;
        for f in &filters {
            check_filter(f)?;
        }
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let counters = Arc::new(Counters::default());
        let io = Io {
            client_id: client_id.to_string(),
            filters,
            queue: queue_rx,
            counters: counters.clone(),
            events: events_tx,
        };
        match target {
            BrokerTarget::Embedded(broker) => embedded::start(broker, io).await?,
            BrokerTarget::External(url) => external::start(url, io),
        }
        Ok((
            MqttPublisher {
                queue: queue_tx,
                counters,
            },
            events_rx,
        ))
    }
}

/// What a transport gets from [`MqttSession::connect`].
pub(super) struct Io {
    pub(super) client_id: String,
    pub(super) filters: Vec<String>,
    pub(super) queue: mpsc::UnboundedReceiver<Outbound>,
    pub(super) counters: Arc<Counters>,
    pub(super) events: mpsc::Sender<MqttEvent>,
}

/// The next wait of a doubling back-off.
pub(super) fn next_backoff(d: std::time::Duration) -> std::time::Duration {
    (d * 2).min(super::RECONNECT_MAX)
}

/// A topic name a broker accepts for PUBLISH.
fn check_topic(topic: &str) -> Result<(), MqttError> {
    let bad = |message: &str| {
        Err(MqttError::Topic {
            topic: topic.to_string(),
            message: message.to_string(),
        })
    };
    if topic.is_empty() {
        return bad("is empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return bad("is longer than 1024 bytes");
    }
    if topic.contains(['+', '#']) {
        return bad("wildcards + and # are for subscriptions, not topics");
    }
    if topic.starts_with('$') {
        return bad("topics starting with $ belong to the broker");
    }
    if topic.contains('\0') {
        return bad("contains a NUL character");
    }
    Ok(())
}

/// A subscription filter a broker accepts.
fn check_filter(filter: &str) -> Result<(), MqttError> {
    let bad = |message: &str| {
        Err(MqttError::Topic {
            topic: filter.to_string(),
            message: message.to_string(),
        })
    };
    if filter.is_empty() {
        return bad("is an empty filter");
    }
    if filter.len() > MAX_TOPIC_LEN {
        return bad("is longer than 1024 bytes");
    }
    if filter.starts_with('$') {
        return bad("filters starting with $ are not supported");
    }
    if filter.contains('\0') {
        return bad("contains a NUL character");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return bad("# must be the whole last level");
        }
        if level.contains('+') && *level != "+" {
            return bad("+ must be a whole level");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(check_topic("vpp/v1/ab/s/d/desired").is_ok());
        for bad in ["", "a/+/b", "a/#", "$SYS/x", "a\0b"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "vpp/v1/+/+/+/telemetry", "vpp/#", "a//b", "/"] {
            assert!(check_filter(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "$SYS/#", "a/##"] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publisher_counts_and_refuses() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let p = MqttPublisher {
            queue: tx,
            counters: Arc::default(),
        };
        p.publish("a/b".into(), vec![1], Qos::AtMostOnce, false)
            .unwrap();
        let e = p
            .publish(
                "a/b".into(),
                vec![0; MAX_PAYLOAD_LEN + 1],
                Qos::AtLeastOnce,
                true,
            )
            .unwrap_err();
        assert!(matches!(e, MqttError::PayloadTooLarge { .. }), "{e}");
        assert!(p
            .publish("a/+".into(), vec![], Qos::AtMostOnce, false)
            .is_err());
        let s = p.stats();
        assert_eq!((s.queued, s.sent, s.failed, s.pending), (1, 0, 2, 1));
        assert_eq!(rx.try_recv().unwrap().topic, "a/b");
        p.counters.sent(1);
        drop(rx);
        assert!(matches!(
            p.publish("a/b".into(), vec![], Qos::AtMostOnce, false),
            Err(MqttError::Closed)
        ));
        let s = p.stats();
        assert_eq!((s.queued, s.sent, s.failed, s.pending), (1, 1, 3, 0));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut d = super::super::RECONNECT_MIN;
        let mut seen = vec![d];
        for _ in 0..8 {
            d = next_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[1].as_millis(), 400);
        assert_eq!(*seen.last().unwrap(), super::super::RECONNECT_MAX);
    }
}
