//! A session on an external broker over TCP: rumqttc 0.25 (MQTT 3.1.1),
//! as two connections.
//!
//! ```text
//!   publish queue ──► writer task ──AsyncClient (bounded, 8,192)──┐
//!                                                                 ▼
//!                     out connection `{id}-out`: event-loop task; publishes, their acks
//!
//!   events ◄──────── in connection `{id}`: event-loop task; ConnAck → subscribe;
//!                    SubAck → Connected; Publish → Message; error →
//!                    Disconnected, back-off, poll again
//! ```
//!
//! Why two: a node ingests far more than it publishes (a million devices
//! send ~100,000 messages a second). On one connection the broker's PUBACKs
//! for the node's own QoS 1 publishes, and its PINGRESPs, queue behind
//! seconds of telemetry: the in-flight window stays full, desired documents
//! trickle out, and the keep-alive check fails. Measured at 1M devices
//! through Mosquitto: 1,369 of 280,962 devices acked a dispatch, and the
//! connection dropped twice on "Last pingreq isn't acked".
//!
//! Telemetry (QoS 0) is shed on arrival while the consumer is a whole event
//! channel behind ([`super::PublisherStats::shed`], `vpp_mqtt_shed_total`):
//! the next reading replaces it anyway, and waiting for room would stop this
//! loop reading, so acks queued behind the telemetry would wait too and the
//! keep-alive would fail (the broker's PINGRESP sits unread). QoS 1
//! messages (acks, reported, status) are never shed: they wait for room.
//!
//! Every connection is a clean session, so after a reconnect the broker knows
//! nothing of the client: the filters are subscribed again. rumqttc moves
//! unacknowledged and still-queued publishes aside when a connection fails
//! and, on a clean session, throws them away at the next ConnAck; they are
//! kept here instead and sent again. So a publish accepted while the broker
//! is away goes out once it is back (at least once for QoS 1; QoS 0 ones
//! already written to a dying socket are lost, as MQTT allows). `Connected`
//! comes from the in connection; `PublisherReconnected` from the out
//! connection when it comes back after a loss (the broker may have lost
//! retained messages then, and only then). What the owner publishes goes
//! out on the out connection as soon as that one is up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, Request, Subscribe, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;

use super::session::{next_backoff, Counters, Io, Outbound};
use super::{BrokerUrl, MqttEvent, Qos, RECONNECT_MIN};

/// rumqttc's request channel: how many publishes may wait inside rumqttc.
/// Large enough that the writer rarely waits, small enough that what is
/// pending stays visible in [`super::PublisherStats::pending`].
const REQUEST_CHANNEL: usize = 8192;

/// Filters per SUBSCRIBE packet: ~5 KB at most, far under any broker's
/// packet limit.
const FILTERS_PER_SUBSCRIBE: usize = 128;

/// Unacknowledged QoS 1 publishes in flight (rumqttc's packet-id window).
const INFLIGHT: u16 = 1000;

/// Largest packet read from the broker. Larger than anything the device
/// protocol sends; a bigger one would make rumqttc drop the connection.
const MAX_INCOMING: usize = 1 << 20;

/// Largest packet written.
const MAX_OUTGOING: usize = super::MAX_PAYLOAD_LEN + super::MAX_TOPIC_LEN + 16;

/// Keep-alive: a dead broker is noticed within 1.5 × this.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Spawns writer and both event loops on the MQTT I/O runtime
/// ([`super::io_runtime`]): a thread of its own, not the actors' runtime.
pub(super) fn start(url: BrokerUrl, io: Io) {
    let rt = super::io_runtime();
    let Io {
        client_id,
        filters,
        queue,
        counters,
        events,
    } = io;
    let options = |id: &str| {
        let mut o = MqttOptions::new(id, url.host(), url.port());
        o.set_clean_session(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_inflight(INFLIGHT)
            .set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
        o
    };
    let out_id = out_client_id(&client_id);
    let (client, eventloop) = AsyncClient::new(options(&out_id), REQUEST_CHANNEL);
    let writer_done = Arc::new(AtomicBool::new(false));
    rt.spawn(write(
        queue,
        client.clone(),
        counters.clone(),
        writer_done.clone(),
    ));
    rt.spawn(run(
        eventloop,
        client,
        Session {
            url: url.clone(),
            client_id: out_id,
            filters: Vec::new(),
            events: events.clone(),
            publishes_only: true,
            counters: counters.clone(),
            writer_done,
        },
    ));
    // The in connection publishes nothing: its request channel only carries
    // the subscriptions.
    let (client, eventloop) = AsyncClient::new(options(&client_id), 16);
    rt.spawn(run(
        eventloop,
        client,
        Session {
            url,
            client_id,
            filters,
            events,
            publishes_only: false,
            counters,
            writer_done: Arc::new(AtomicBool::new(true)),
        },
    ));
}

/// The out connection's client id: the session's with `-out`, cut so that
/// it stays within the 128 bytes [`super::check_client_id`] allows.
pub(super) fn out_client_id(client_id: &str) -> String {
    let mut base = client_id;
    while base.len() > 124 {
        let mut end = base.len() - 1;
        while !base.is_char_boundary(end) {
            end -= 1;
        }
        base = &base[..end];
    }
    format!("{base}-out")
}

/// What the event loop needs besides rumqttc.
struct Session {
    url: BrokerUrl,
    client_id: String,
    filters: Vec<String>,
    /// Where to report.
    events: mpsc::Sender<MqttEvent>,
    /// The out connection: reports only `PublisherReconnected`.
    publishes_only: bool,
    counters: Arc<Counters>,
    writer_done: Arc<AtomicBool>,
}

/// The writer task: drains the publish queue into rumqttc.
async fn write(
    mut queue: mpsc::UnboundedReceiver<Outbound>,
    client: AsyncClient,
    counters: Arc<Counters>,
    done: Arc<AtomicBool>,
) {
    while let Some(o) = queue.recv().await {
        let qos = match o.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        match client
            .publish_bytes(o.topic, qos, o.retain, Bytes::from(o.payload))
            .await
        {
            Ok(()) => counters.sent(1),
            Err(_) => {
                // The event loop is gone: nothing will ever be sent again.
                queue.close();
                let mut n = 1;
                while queue.try_recv().is_ok() {
                    n += 1;
                }
                counters.dropped(n);
                break;
            }
        }
    }
    done.store(true, Ordering::Release);
}

/// The event-loop task: connection, subscriptions, incoming messages,
/// reconnects.
async fn run(mut eventloop: EventLoop, client: AsyncClient, s: Session) {
    let mut backoff = RECONNECT_MIN;
    // Connected has been reported for the current connection.
    let mut up = false;
    // Disconnected has been reported since the last Connected (or start).
    let mut down_reported = false;
    // Publishes rumqttc set aside when the last connection failed.
    let mut carried: Vec<Request> = Vec::new();
    // Has been up before (the out connection reports only comebacks).
    let mut ever_up = false;
    // SUBACKs still to come for the current connection's SUBSCRIBEs.
    let mut subacks_due = 0usize;
    loop {
        if s.events.is_closed() && s.writer_done.load(Ordering::Acquire) {
            break;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                backoff = RECONNECT_MIN;
                // Several SUBSCRIBE packets: one with every filter of a member
                // that runs many shards (7 filters each) is larger than a
                // broker takes (rumqttd's default: 20 KiB).
                subacks_due = 0;
                for chunk in s.filters.chunks(FILTERS_PER_SUBSCRIBE) {
                    let filters = chunk
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    eventloop
                        .pending
                        .push_back(Request::Subscribe(Subscribe::new_many(filters)));
                    subacks_due += 1;
                }
                eventloop.pending.extend(carried.drain(..));
                if s.filters.is_empty() {
                    up = true;
                    down_reported = false;
                    if !s.publishes_only {
                        emit(&s.events, MqttEvent::Connected).await;
                    } else if ever_up {
                        tracing::info!(client_id = %s.client_id, url = %s.url, "mqtt publishing connection back");
                        emit(&s.events, MqttEvent::PublisherReconnected).await;
                    }
                    ever_up = true;
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| **c == SubscribeReasonCode::Failure)
                    .count();
                if refused > 0 {
                    tracing::error!(client_id = %s.client_id, refused, pkid = ack.pkid, "broker refused subscriptions");
                }
                subacks_due = subacks_due.saturating_sub(1);
                if !up && subacks_due == 0 {
                    up = true;
                    down_reported = false;
                    tracing::info!(client_id = %s.client_id, url = %s.url, "mqtt connected");
                    emit(&s.events, MqttEvent::Connected).await;
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if !s.events.is_closed() {
                    let qos = p.qos;
                    let message = MqttEvent::Message {
                        topic: p.topic,
                        payload: p.payload,
                    };
                    if qos == QoS::AtMostOnce {
                        // Telemetry: shed when the consumer is a whole
                        // channel behind, so this loop keeps reading and the
                        // acks behind it (and the PINGRESP) are not held up.
                        if let Err(mpsc::error::TrySendError::Full(_)) = s.events.try_send(message)
                        {
                            s.counters.shed(1);
                        }
                    } else {
                        // Waits while the consumer is behind; the broker and
                        // the socket buffer hold the rest meanwhile.
                        emit(&s.events, message).await;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                carried.extend(set_aside(&mut eventloop));
                let why = format!("{}: {e}", s.url);
                if up || !down_reported {
                    tracing::warn!(client_id = %s.client_id, reason = %why, "mqtt disconnected; reconnecting");
                    if !s.publishes_only {
                        emit(&s.events, MqttEvent::Disconnected(why)).await;
                    }
                    down_reported = true;
                } else {
                    tracing::debug!(client_id = %s.client_id, reason = %why, "mqtt reconnect failed");
                }
                up = false;
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
    }
    // Say goodbye properly (no will, no error on the broker's side).
    if up && client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(ev) = eventloop.poll().await {
                if ev == Event::Outgoing(rumqttc::Outgoing::Disconnect) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Takes the publishes rumqttc moved aside on a failed connection, with
/// fresh packet ids to be assigned on the next one.
fn set_aside(eventloop: &mut EventLoop) -> Vec<Request> {
    let collided = eventloop.state.collision.take().map(Request::Publish);
    collided
        .into_iter()
        .chain(eventloop.pending.drain(..))
        .filter_map(|r| match r {
            Request::Publish(mut p) => {
                p.pkid = 0;
                p.dup = false;
                Some(Request::Publish(p))
            }
            // Acks, pings and subscriptions belong to the dead connection.
            _ => None,
        })
        .collect()
}

/// Sends an event unless nobody listens any more.
async fn emit(events: &mpsc::Sender<MqttEvent>, event: MqttEvent) {
    let _ = events.send(event).await;
}
