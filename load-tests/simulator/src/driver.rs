//! The driver of one MQTT connection: polls rumqttc's event loop and
//! nothing else.
//!
//! ```text
//!   broker ◄──TCP──► EventLoop ◄──poll── driver task ──Inbound──► gateway task
//!                        ▲                   ▲    ▲                    │
//!                        └── request channel ┼────┼── AsyncClient ◄────┘ (publish, subscribe)
//!                                 storm: Notify   stop: watch
//! ```
//!
//! The event loop must be polled without pause or the client's request
//! channel stops draining, so it lives in a task of its own that never
//! waits on the gateway (the inbound channel is unbounded; what arrives is
//! bounded by what the broker sends). Messages and connection changes go to
//! the gateway in order.
//!
//! A reconnect storm drops the connection abruptly (`EventLoop::clean`
//! closes the socket without DISCONNECT, so a last will fires) and polls
//! again at once, which reconnects. After an error it backs off (100 ms
//! doubling to 5 s, with jitter) before polling again. Sessions are clean:
//! the gateway resubscribes on every `Connected`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{ConnectionError, Event, EventLoop, Incoming, Outgoing};
use tokio::sync::{mpsc, watch, Notify};

use crate::gateway::Shared;
use crate::rng::SplitMix64;
use crate::stats::Counters;

/// What the driver tells its gateway.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Connected (again): subscribe and republish.
    Connected,
    /// The connection is down; the driver is reconnecting.
    Disconnected,
    /// A message on a subscribed topic.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
    },
}

/// One connection's driver.
pub(crate) struct Driver {
    pub(crate) name: String,
    pub(crate) eventloop: EventLoop,
    pub(crate) inbound: mpsc::UnboundedSender<Inbound>,
    pub(crate) storm: Arc<Notify>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) counters: Arc<Counters>,
    /// Until the first connect's subscriptions are all acknowledged: the
    /// start gate and how many SUBACKs are still to come.
    pub(crate) gate: Option<(Arc<Shared>, usize)>,
    pub(crate) start_delay: Duration,
    pub(crate) rng: SplitMix64,
}

impl Driver {
    /// Runs until stopped, until the gateway drops its client (after a
    /// graceful DISCONNECT), or until the gateway is gone.
    pub(crate) async fn run(mut self) {
        // Long-lived futures for the rare events, so the hot path (one
        // loop turn per packet) does not build and drop them every time.
        let mut stop_rx = self.stop.clone();
        let stop = async move {
            let _ = stop_rx.changed().await;
        };
        tokio::pin!(stop);
        let storm_notify = self.storm.clone();
        let arm = move || {
            let n = storm_notify.clone();
            Box::pin(async move { n.notified().await })
        };
        let mut storm = arm();
        if !self.start_delay.is_zero() {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.start_delay) => {}
            }
        }
        let mut connected = false;
        let mut ever_connected = false;
        let mut failures: u32 = 0;
        loop {
            let event = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = &mut storm => {
                    storm = arm();
                    if connected {
                        // Closes the socket without DISCONNECT: last wills fire.
                        self.eventloop.clean();
                        connected = false;
                        self.counters.connected.fetch_sub(1, Relaxed);
                        self.counters.disconnects.fetch_add(1, Relaxed);
                        if self.inbound.send(Inbound::Disconnected).is_err() {
                            break;
                        }
                    }
                    continue;
                }
                ev = self.eventloop.poll() => ev,
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    if !connected {
                        self.counters.connected.fetch_add(1, Relaxed);
                    }
                    if ever_connected {
                        self.counters.reconnects.fetch_add(1, Relaxed);
                    }
                    connected = true;
                    ever_connected = true;
                    failures = 0;
                    tracing::debug!(client = %self.name, "connected");
                    if self.inbound.send(Inbound::Connected).is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let m = Inbound::Message {
                        topic: p.topic,
                        payload: p.payload,
                    };
                    if self.inbound.send(m).is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some((shared, left)) = &mut self.gate {
                        *left = left.saturating_sub(1);
                        if *left == 0 {
                            shared.gate.subscribed();
                            self.gate = None;
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => break,
                Err(e) => {
                    if connected {
                        connected = false;
                        self.counters.connected.fetch_sub(1, Relaxed);
                        self.counters.disconnects.fetch_add(1, Relaxed);
                        tracing::warn!(client = %self.name, error = %e, "connection lost; reconnecting");
                        if self.inbound.send(Inbound::Disconnected).is_err() {
                            break;
                        }
                    } else if failures == 0 {
                        tracing::warn!(client = %self.name, error = %e, "cannot connect; retrying");
                    } else {
                        tracing::debug!(client = %self.name, error = %e, failures, "cannot connect");
                    }
                    failures = failures.saturating_add(1);
                    let base = 100u64 << failures.min(6);
                    let wait =
                        Duration::from_millis(base.min(5_000)).mul_f64(0.5 + self.rng.unit());
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        if connected {
            self.counters.connected.fetch_sub(1, Relaxed);
        }
    }
}
