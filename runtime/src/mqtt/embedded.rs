//! A session on the embedded broker's local link.
//!
//! rumqttd's local link is blocking (flume channels, a `parking_lot` mutex
//! around each direction's buffer), so it gets two threads, not tasks:
//!
//! ```text
//!   publish queue ──► writer thread: takes up to 1,024 publishes, appends them
//!                     to the link's input buffer, wakes the router once
//!   events ◄────────── reader thread: Forward → Message, SubAck → Connected,
//!                     Unschedule → ready (the router pauses a link after ~200
//!                     undelivered notifications until it says so)
//! ```
//!
//! Publishes are built as `rumqttd::protocol::Publish` with `retain` set
//! (the link's own `publish` cannot retain); topic and payload move into
//! `Bytes` without a copy. If the router drops the link (another connection
//! took the same client id), the reader reports `Disconnected`, makes a new
//! link after the back-off and subscribes again; the writer waits for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, Publish, QoS, RetainForwardRule, Subscribe,
};
use rumqttd::Notification;
use tokio::sync::{mpsc, oneshot};

use super::session::{next_backoff, Counters, Io, Outbound};
use super::{EmbeddedBroker, MqttError, MqttEvent, RECONNECT_MIN};

/// Most publishes handed to the router per wake-up.
const BATCH: usize = 1024;

/// How often the reader looks up from the link to see whether to stop.
const TICK: Duration = Duration::from_millis(250);

/// The current link's sending half, shared by reader (who replaces it) and
/// writer (who uses it).
#[derive(Default)]
struct Slot {
    tx: Mutex<Option<LinkTx>>,
    changed: Condvar,
    /// Set by the writer when every publisher is gone.
    writer_done: AtomicBool,
}

impl Slot {
    fn set(&self, tx: Option<LinkTx>) {
        *self.tx.lock().unwrap_or_else(PoisonError::into_inner) = tx;
        self.changed.notify_all();
    }
}

/// Starts reader and writer; returns once the first link is up.
pub(super) async fn start(broker: Arc<EmbeddedBroker>, io: Io) -> Result<(), MqttError> {
    let Io {
        client_id,
        filters,
        queue,
        counters,
        events,
    } = io;
    let slot = Arc::new(Slot::default());
    let (first_tx, first_rx) = oneshot::channel();
    let reader_slot = slot.clone();
    let reader_id = client_id.clone();
    std::thread::Builder::new()
        .name(format!("mqtt-rx-{client_id}"))
        .spawn(move || read(broker, reader_id, filters, events, reader_slot, first_tx))
        .map_err(|e| link_err(&client_id, format!("cannot start its thread: {e}")))?;
    match first_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(link_err(&client_id, "its reader stopped".to_string())),
    }
    let writer_slot = slot;
    std::thread::Builder::new()
        .name(format!("mqtt-tx-{client_id}"))
        .spawn(move || write(queue, counters, writer_slot))
        .map_err(|e| link_err(&client_id, format!("cannot start its thread: {e}")))?;
    Ok(())
}

fn link_err(client_id: &str, message: String) -> MqttError {
    MqttError::Link {
        client_id: client_id.to_string(),
        message,
    }
}

/// The reader thread: (re)links, subscribes, turns notifications into events.
fn read(
    broker: Arc<EmbeddedBroker>,
    client_id: String,
    filters: Vec<String>,
    events: mpsc::Sender<MqttEvent>,
    slot: Arc<Slot>,
    first: oneshot::Sender<Result<(), MqttError>>,
) {
    let mut first = Some(first);
    let mut backoff = RECONNECT_MIN;
    let mut down_reported = false;
    loop {
        let why = match broker.link(&client_id) {
            Ok((mut tx, rx)) => {
                let subscribed = filters.is_empty() || subscribe(&mut tx, &filters).is_ok();
                slot.set(Some(tx));
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                backoff = RECONNECT_MIN;
                match receive(rx, subscribed, &events, &slot) {
                    Ended::Stop => break,
                    Ended::Lost(why) => {
                        down_reported = false;
                        why
                    }
                }
            }
            Err(e) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e));
                    return;
                }
                e.to_string()
            }
        };
        slot.set(None);
        if !down_reported {
            tracing::warn!(%client_id, reason = %why, "mqtt local link lost; relinking");
            // A full channel must not stall relinking: skip the event then.
            let _ = events.try_send(MqttEvent::Disconnected(why));
            down_reported = true;
        }
        if stopping(&events, &slot) {
            break;
        }
        std::thread::sleep(backoff);
        backoff = next_backoff(backoff);
    }
    // Tell the router we are gone, so it drops the connection and its state.
    if let Some(mut tx) = slot
        .tx
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        let bye = Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        let _ = futures::executor::block_on(tx.send(bye));
    }
}

/// One Subscribe packet for every filter, QoS 0 inside the process.
fn subscribe(tx: &mut LinkTx, filters: &[String]) -> Result<(), String> {
    let filters = filters
        .iter()
        .map(|f| Filter {
            path: f.clone(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        })
        .collect();
    let packet = Packet::Subscribe(Subscribe { pkid: 1, filters }, None);
    futures::executor::block_on(tx.send(packet))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

enum Ended {
    /// Receiver and every publisher are gone.
    Stop,
    /// The link broke, for this reason.
    Lost(String),
}

fn stopping(events: &mpsc::Sender<MqttEvent>, slot: &Slot) -> bool {
    events.is_closed() && slot.writer_done.load(Ordering::Acquire)
}

/// Reads one link until it breaks or the session stops.
fn receive(
    mut rx: LinkRx,
    mut subscribed: bool,
    events: &mpsc::Sender<MqttEvent>,
    slot: &Slot,
) -> Ended {
    if subscribed {
        let _ = events.blocking_send(MqttEvent::Connected);
    }
    loop {
        if stopping(events, slot) {
            return Ended::Stop;
        }
        let notification = match rx.recv_deadline(Instant::now() + TICK) {
            Ok(Some(n)) => n,
            Ok(None) | Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => continue,
            Err(e) => return Ended::Lost(format!("the broker dropped the local link ({e})")),
        };
        match notification {
            Notification::Forward(f) => {
                if events.is_closed() {
                    continue;
                }
                let topic = String::from_utf8(f.publish.topic.to_vec())
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                let message = MqttEvent::Message {
                    topic,
                    payload: f.publish.payload,
                };
                // Blocks while the consumer is behind: the router then keeps
                // the rest in the filter's log.
                let _ = events.blocking_send(message);
            }
            Notification::Unschedule => {
                if let Err(e) = rx.ready() {
                    return Ended::Lost(format!("the router is gone ({e})"));
                }
            }
            Notification::Disconnect(d, _) => {
                return Ended::Lost(format!("the broker closed the link ({:?})", d.reason_code))
            }
            other => {
                if let Some(Packet::SubAck(..)) = Option::<Packet>::from(other) {
                    if !subscribed {
                        subscribed = true;
                        let _ = events.blocking_send(MqttEvent::Connected);
                    }
                }
            }
        }
    }
}

/// The writer thread: drains the publish queue into the current link.
fn write(mut queue: mpsc::UnboundedReceiver<Outbound>, counters: Arc<Counters>, slot: Arc<Slot>) {
    let mut batch: Vec<Packet> = Vec::with_capacity(BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(packet(first));
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(o) => batch.push(packet(o)),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let mut guard = slot.tx.lock().unwrap_or_else(PoisonError::into_inner);
        // While relinking, hold the batch (and everything behind it).
        while guard.is_none() {
            guard = slot
                .changed
                .wait_timeout(guard, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if let Some(tx) = guard.as_mut() {
            let last = batch.pop();
            tx.buffer().extend(batch.drain(..));
            // `send` appends the last one and wakes the router once for all.
            let woke = last.map(|p| {
                futures::executor::block_on(tx.send(p))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            match woke {
                Some(Err(e)) => {
                    // Only when the router itself has ended.
                    tracing::error!(error = %e, "mqtt local link: router gone; publishes dropped");
                    counters.dropped(n);
                }
                _ => counters.sent(n),
            }
        }
        batch.clear();
    }
    slot.writer_done.store(true, Ordering::Release);
}

fn packet(o: Outbound) -> Packet {
    let publish = Publish::new(Bytes::from(o.topic), Bytes::from(o.payload), o.retain);
    Packet::Publish(publish, None)
}
