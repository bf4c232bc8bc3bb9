//! A session on an external broker over TCP: rumqttc 0.25 (MQTT 3.1.1).
//!
//! ```text
//!   publish queue ──► writer task ──AsyncClient (bounded, 8,192)──┐
//!                                                                 ▼
//!   events ◄──────── event-loop task: polls EventLoop; ConnAck → subscribe
//!                    (ahead of queued publishes); SubAck → Connected; Publish →
//!                    Message; error → Disconnected, back-off, poll again
//! ```
//!
//! Every connection is a clean session, so after a reconnect the broker knows
//! nothing of the client: the filters are subscribed again before anything
//! else is sent. rumqttc moves unacknowledged and still-queued publishes
//! aside when a connection fails and, on a clean session, throws them away at
//! the next ConnAck; they are kept here instead and sent again, after the
//! subscription. So a publish accepted while the broker is away goes out
//! once it is back (at least once for QoS 1; QoS 0 ones already written to a
//! dying socket are lost, as MQTT allows).

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

/// Unacknowledged QoS 1 publishes in flight (rumqttc's packet-id window).
const INFLIGHT: u16 = 1000;

/// Largest packet read from the broker. Larger than anything the device
/// protocol sends; a bigger one would make rumqttc drop the connection.
const MAX_INCOMING: usize = 1 << 20;

/// Largest packet written.
const MAX_OUTGOING: usize = super::MAX_PAYLOAD_LEN + super::MAX_TOPIC_LEN + 16;

/// Keep-alive: a dead broker is noticed within 1.5 × this.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Spawns writer and event loop on the current tokio runtime.
pub(super) fn start(url: BrokerUrl, io: Io) {
    let Io {
        client_id,
        filters,
        queue,
        counters,
        events,
    } = io;
    let mut options = MqttOptions::new(client_id.clone(), url.host(), url.port());
    options
        .set_clean_session(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_inflight(INFLIGHT)
        .set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
    let writer_done = Arc::new(AtomicBool::new(false));
    tokio::spawn(write(queue, client.clone(), counters, writer_done.clone()));
    tokio::spawn(run(
        eventloop,
        client,
        Session {
            url,
            client_id,
            filters,
            events,
            writer_done,
        },
    ));
}

/// What the event loop needs besides rumqttc.
struct Session {
    url: BrokerUrl,
    client_id: String,
    filters: Vec<String>,
    events: mpsc::Sender<MqttEvent>,
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
    loop {
        if s.events.is_closed() && s.writer_done.load(Ordering::Acquire) {
            break;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                backoff = RECONNECT_MIN;
                if !s.filters.is_empty() {
                    let filters = s
                        .filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    eventloop
                        .pending
                        .push_back(Request::Subscribe(Subscribe::new_many(filters)));
                }
                eventloop.pending.extend(carried.drain(..));
                if s.filters.is_empty() {
                    up = true;
                    down_reported = false;
                    emit(&s.events, MqttEvent::Connected).await;
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                for (code, filter) in ack.return_codes.iter().zip(&s.filters) {
                    if *code == SubscribeReasonCode::Failure {
                        tracing::error!(client_id = %s.client_id, %filter, "broker refused the subscription");
                    }
                }
                if !up {
                    up = true;
                    down_reported = false;
                    tracing::info!(client_id = %s.client_id, url = %s.url, "mqtt connected");
                    emit(&s.events, MqttEvent::Connected).await;
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if !s.events.is_closed() {
                    // Waits while the consumer is behind; the broker and the
                    // socket buffer hold the rest meanwhile.
                    let message = MqttEvent::Message {
                        topic: p.topic,
                        payload: p.payload,
                    };
                    emit(&s.events, message).await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                carried.extend(set_aside(&mut eventloop));
                let why = format!("{}: {e}", s.url);
                if up || !down_reported {
                    tracing::warn!(client_id = %s.client_id, reason = %why, "mqtt disconnected; reconnecting");
                    emit(&s.events, MqttEvent::Disconnected(why)).await;
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
