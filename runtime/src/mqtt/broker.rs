//! [`EmbeddedBroker`]: rumqttd's router and TCP listeners in this process.
//!
//! ```text
//!   start(config, listen?) ── check config, bind every listener once (port 0
//!   │                          becomes a real port; a taken port fails here)
//!   ├─ router thread  (rumqttd Router::spawn; all routing, retained, logs)
//!   ├─ one thread per listener: current-thread tokio runtime running
//!   │  rumqttd's Server until this broker is dropped
//!   └─ wait until every listener is listening (5 s deadline)
//! ```
//!
//! "Listening" is observed, not probed: rumqttd's `Server::start` binds its
//! socket on its first poll (the address is a `SocketAddr`, so nothing
//! before the bind can wait) and then waits for connections, so a first poll
//! that returns `Pending` means the socket is bound and listening. A probe
//! connection would do as well, but rumqttd logs every connection that
//! closes before CONNECT as an error.
//!
//! rumqttd's own `Broker` cannot hand out links while it runs (`start` takes
//! `&mut self` and never returns), has no way to stop, and only logs a
//! listener that failed to bind. So the router and servers are assembled here
//! from rumqttd's public parts, which gives links at any time, a stop, and
//! bind errors as values.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{v4::V4, v5::V5};
use rumqttd::{LinkType, Router, Server};

use super::broker_config::{check, listeners};
use super::MqttError;

/// How long [`EmbeddedBroker::start`] waits for its listeners to listen.
const READY_DEADLINE: Duration = Duration::from_secs(5);

/// MQTT version a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// MQTT 3.1.1 (`[v4.NAME]`).
    V4,
    /// MQTT 5 (`[v5.NAME]`).
    V5,
}

impl std::fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerProtocol::V4 => "MQTT 3.1.1",
            ListenerProtocol::V5 => "MQTT 5",
        })
    }
}

/// A TCP listener of a running broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Its table in the broker config, e.g. `v4.1`.
    pub key: String,
    /// What it speaks.
    pub protocol: ListenerProtocol,
    /// Where it listens (the real port, also when the config said 0).
    pub addr: SocketAddr,
}

type Linker = dyn Fn(&str) -> Result<(LinkTx, LinkRx), String> + Send + Sync;

/// rumqttd running in this process. Dropping it closes its listeners and
/// their connections; the router ends once the last local link is dropped.
pub struct EmbeddedBroker {
    listeners: Vec<Listener>,
    /// Makes local links. A closure because rumqttd does not export the type
    /// of its router channel, so the sender cannot be named as a field.
    linker: Box<Linker>,
    /// Tells each listener thread to stop.
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Starts the broker and returns once every listener accepts connections.
    ///
    /// `listen` replaces the address of the config's MQTT 3.1.1 listener
    /// (the config must then have exactly one `[v4.NAME]`). Port 0, there or
    /// in the config, picks a free port: see [`EmbeddedBroker::listeners`].
    ///
    /// Blocks until the listeners are up (milliseconds; at most 5 s), so
    /// async code should call it through `spawn_blocking`.
    pub fn start(
        config: rumqttd::Config,
        listen: Option<SocketAddr>,
    ) -> Result<EmbeddedBroker, MqttError> {
        check(&config).map_err(|message| MqttError::BrokerConfig {
            origin: "given to the embedded broker".to_string(),
            message,
        })?;
        let plans = plan(&config, listen)?;

        let router_tx = Router::new(config.id, config.router.clone()).spawn();
        let link_tx = router_tx.clone();
        let linker: Box<Linker> = Box::new(move |client_id: &str| {
            LinkBuilder::new(client_id, link_tx.clone())
                .build()
                .map(|(tx, rx, _connack)| (tx, rx))
                .map_err(|e| match e {
                    // The router drops a connection it refuses without a word.
                    LinkError::Recv(_) => {
                        "the router refused the connection (router.max_connections reached?)"
                            .to_string()
                    }
                    e => e.to_string(),
                })
        });
        // From here on, dropping `broker` on an error stops what did start.
        let mut broker = EmbeddedBroker {
            listeners: Vec::new(),
            linker,
            stops: Vec::new(),
            threads: Vec::new(),
        };
        let (up_tx, up_rx) = mpsc::channel();
        for Plan { listener, settings } in plans {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
            let (up, key, router) = (up_tx.clone(), listener.key.clone(), router_tx.clone());
            let protocol = listener.protocol;
            let thread = std::thread::Builder::new()
                .name(format!("mqtt-{key}"))
                .spawn(move || match protocol {
                    ListenerProtocol::V4 => {
                        serve(Server::new(settings, router, V4), key, stop_rx, up)
                    }
                    ListenerProtocol::V5 => {
                        serve(Server::new(settings, router, V5), key, stop_rx, up)
                    }
                })
                .map_err(|e| MqttError::Listen {
                    key: listener.key.clone(),
                    addr: listener.addr,
                    message: format!("cannot start its thread: {e}"),
                })?;
            broker.threads.push(thread);
            broker.stops.push(stop_tx);
            broker.listeners.push(listener);
        }
        drop((router_tx, up_tx));
        wait_until_listening(&broker.listeners, &up_rx)?;
        tracing::info!(
            addresses = ?broker.listeners.iter().map(|l| l.addr).collect::<Vec<_>>(),
            "embedded mqtt broker listening"
        );
        Ok(broker)
    }

    /// Where devices connect: the MQTT 3.1.1 listener (the first by key if
    /// there are several), else the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners
            .iter()
            .find(|l| l.protocol == ListenerProtocol::V4)
            .or(self.listeners.first())
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |l| l.addr)
    }

    /// Every listener with its real address.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// An in-process connection to the router: no TCP, no MQTT encoding.
    /// Blocks until the router accepts it (microseconds; it answers at once).
    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), MqttError> {
        check_client_id(client_id)?;
        (self.linker)(client_id).map_err(|message| MqttError::Link {
            client_id: client_id.to_string(),
            message,
        })
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Checks a client id: 1 to 128 bytes, none of `+ $ # /` (rumqttd's router
/// drops such a connection without an answer) and no control characters.
pub fn check_client_id(client_id: &str) -> Result<(), MqttError> {
    let bad = |message: &str| {
        Err(MqttError::ClientId {
            client_id: client_id.to_string(),
            message: message.to_string(),
        })
    };
    if client_id.is_empty() {
        return bad("must not be empty");
    }
    if client_id.len() > 128 {
        return bad("must be at most 128 bytes");
    }
    if client_id.contains(['+', '$', '#', '/']) || client_id.chars().any(char::is_control) {
        return bad("must not contain + $ # / or control characters");
    }
    Ok(())
}

/// A listener about to start: where, and rumqttd's settings for it.
struct Plan {
    listener: Listener,
    settings: rumqttd::ServerSettings,
}

/// The listeners to start, with the `listen` override applied and every
/// address bound once here: a taken port fails now with a clear error
/// (rumqttd would only log it), and port 0 becomes a real port.
fn plan(config: &rumqttd::Config, listen: Option<SocketAddr>) -> Result<Vec<Plan>, MqttError> {
    let all = listeners(config);
    let v4 = all.iter().filter(|(k, _)| k.starts_with("v4.")).count();
    if listen.is_some() && v4 != 1 {
        return Err(MqttError::BrokerConfig {
            origin: "given to the embedded broker".to_string(),
            message: format!(
                "a listen address override needs exactly one [v4.NAME] listener, found {v4}"
            ),
        });
    }
    let mut plans = Vec::new();
    for (key, settings) in all {
        let protocol = if key.starts_with("v4.") {
            ListenerProtocol::V4
        } else {
            ListenerProtocol::V5
        };
        let wanted = match (protocol, listen) {
            (ListenerProtocol::V4, Some(addr)) => addr,
            _ => settings.listen,
        };
        let addr = TcpListener::bind(wanted)
            .and_then(|l| l.local_addr())
            .map_err(|e| MqttError::Listen {
                key: key.clone(),
                addr: wanted,
                message: e.to_string(),
            })?;
        let mut settings = settings.clone();
        settings.listen = addr;
        plans.push(Plan {
            listener: Listener {
                key,
                protocol,
                addr,
            },
            settings,
        });
    }
    Ok(plans)
}

/// Runs one rumqttd server on its own current-thread runtime until `stop`.
/// Says on `up` once it listens, or why it could not.
fn serve<P>(
    mut server: Server<P>,
    key: String,
    stop: tokio::sync::oneshot::Receiver<()>,
    up: mpsc::Sender<(String, Result<(), String>)>,
) where
    P: rumqttd::protocol::Protocol + Clone + Send + 'static,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = up.send((key, Err(format!("cannot start its runtime: {e}"))));
            return;
        }
    };
    rt.block_on(async move {
        let mut start = std::pin::pin!(server.start(LinkType::Remote));
        // The first poll binds and starts listening, or fails (module doc).
        let first = std::future::poll_fn(|cx| Poll::Ready(start.as_mut().poll(cx))).await;
        if let Poll::Ready(r) = first {
            let why = r
                .err()
                .map_or("stopped at once".to_string(), |e| e.to_string());
            let _ = up.send((key, Err(why)));
            return;
        }
        let _ = up.send((key.clone(), Ok(())));
        tokio::select! {
            r = start => {
                let why = r.err().map_or("stopped accepting".to_string(), |e| e.to_string());
                tracing::error!(listener = %key, error = %why, "mqtt listener stopped");
            }
            _ = stop => {}
        }
    });
}

/// Waits until every listener has said it listens, one says it cannot, or
/// [`READY_DEADLINE`] passes.
fn wait_until_listening(
    listeners: &[Listener],
    up: &mpsc::Receiver<(String, Result<(), String>)>,
) -> Result<(), MqttError> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut waiting: Vec<&Listener> = listeners.iter().collect();
    while let Some(l) = waiting.first() {
        let fail = |key: &str, message: String| {
            let addr = listeners
                .iter()
                .find(|l| l.key == key)
                .map_or(l.addr, |l| l.addr);
            MqttError::Listen {
                key: key.to_string(),
                addr,
                message,
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match up.recv_timeout(left) {
            Ok((key, Ok(()))) => waiting.retain(|l| l.key != key),
            Ok((key, Err(why))) => return Err(fail(&key, why)),
            Err(_) => {
                return Err(fail(
                    &l.key,
                    format!("not listening {} s after start", READY_DEADLINE.as_secs()),
                ))
            }
        }
    }
    Ok(())
}
