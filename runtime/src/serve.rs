//! `vpp serve`: open the store, bring the fleet up, connect the devices,
//! serve the API.
//!
//! ```text
//!   start: broker (embedded rumqttd, or connect to mqtt://…)
//!        → MQTT session (local link when embedded: no TCP)
//!        → Node::open_with(DesiredOut over the session)   (fleet from sled)
//!        → ingest pump (device messages → fleet), API server
//! ```
//!
//! A cluster member's main session only publishes; a second session
//! subscribes to the topics of the shards the member runs, and is replaced
//! (new filters) each time its shards change (`ingest_shards`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{BrokerChoice, NodeConfig};
use crate::devices::{spawn_pump, DesiredOut, IngestStats};
use crate::mqtt::{BrokerTarget, EmbeddedBroker, MqttSession, Qos};
use crate::node::Node;

/// File in the data dir where a running node says where its API is, so CLI
/// commands given only `--data-dir` can find it.
pub const NODE_FILE: &str = "vpp-node.json";

/// Where the node serving `data_dir` says its API is, if one does.
pub fn discover(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(NODE_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["api"].as_str().map(str::to_string)
}

/// What `serve` was asked to do besides serving.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Import this hierarchy file at start if the store holds none (or always
    /// with `replace`).
    pub hierarchy: Option<PathBuf>,
    /// Replace the stored hierarchy with `hierarchy` even if one is stored.
    pub replace: bool,
}

/// A node that is up: API serving, devices connected.
pub struct Running {
    /// The node.
    pub node: Arc<Node>,
    /// Where the API listens.
    pub api: SocketAddr,
    /// Where devices connect: the embedded broker's MQTT listener, or the
    /// external broker's address as configured.
    pub mqtt: String,
    broker: Option<Arc<EmbeddedBroker>>,
    stop_api: Option<oneshot::Sender<()>>,
    api_task: JoinHandle<std::io::Result<()>>,
    pump_task: JoinHandle<()>,
}

/// Starts a node: broker, devices, fleet, API. Returns once all are up.
pub async fn start(config: NodeConfig, opts: &ServeOptions) -> Result<Running> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let api = listener.local_addr()?;
    let data_dir = config.data_dir.clone();

    let (target, broker, mqtt) = match &config.mqtt.broker {
        BrokerChoice::Embedded => {
            let bc = config.mqtt.load_broker_config()?;
            let listen = config.mqtt.listen;
            let b = tokio::task::spawn_blocking(move || EmbeddedBroker::start(bc, Some(listen)))
                .await?
                .context("starting the embedded MQTT broker")?;
            let b = Arc::new(b);
            let addr = b.local_addr().to_string();
            (BrokerTarget::Embedded(b.clone()), Some(b), addr)
        }
        BrokerChoice::External(url) => (BrokerTarget::External(url.clone()), None, url.to_string()),
    };
    let clustered = !config.cluster.node.is_empty();
    if clustered && matches!(config.mqtt.broker, BrokerChoice::Embedded) {
        // Each member subscribes to its own shards' topics: every member must
        // see every device, so all must use one broker.
        println!(
            "note: cluster member with its own embedded broker at {}: the other members and every device must use this broker too (--broker mqtt://…), or all use one external broker",
            config.mqtt.listen
        );
    }
    let client_id = config.mqtt_client_id();
    // A cluster member subscribes per shard, in its ingest session.
    let filters = if clustered {
        Vec::new()
    } else {
        vpp_protocol::topic::runtime_filters()
    };
    let (publisher, events) = MqttSession::connect(target.clone(), &client_id, filters)
        .await
        .context("connecting to the MQTT broker")?;
    let stats = Arc::new(IngestStats::default());
    let notices = publisher.clone();
    let out = DesiredOut::new(
        move |topic, payload| {
            // Only a stopped session or an invalid topic fails; both are
            // counted by the publisher.
            let _ = publisher.publish(topic, payload, Qos::AtLeastOnce, true);
        },
        stats.clone(),
    )
    .with_site_documents(config.mqtt.site_documents);
    let node = Node::open_with(config, Arc::new(out), stats)
        .await
        .with_context(|| format!("opening the node on data dir {}", data_dir.display()))?;
    // Participants' event notices: retained, so one that connects later
    // still finds the latest (programs/events.rs).
    node.programs().set_mqtt(Box::new(move |topic, payload| {
        if let Err(e) = notices.publish(topic, payload, Qos::AtLeastOnce, true) {
            tracing::warn!(error = %e, "publishing an event notice failed");
        }
    }));

    if let Some(path) = &opts.hierarchy {
        match node.writes().cluster().cloned() {
            None => import_at_start(&node, path, opts.replace).await?,
            // In a cluster the first member imports it, once it has caught
            // up with the others (the import is replicated to them); the
            // start does not wait for a quorum.
            Some(c) if c.is_first_member() => {
                let (node, path, replace) = (node.clone(), path.clone(), opts.replace);
                tokio::spawn(async move {
                    c.caught_up().await;
                    if let Err(e) = import_at_start(&node, &path, replace).await {
                        tracing::error!(file = %path.display(), error = %e, "importing the hierarchy at start failed");
                    }
                });
            }
            Some(_) => println!(
                "cluster member: the first member imports {}; this one gets it through the cluster",
                path.display()
            ),
        }
    }
    if let Some(c) = node.writes().cluster() {
        c.set_api(crate::api::router(node.clone()));
    }
    let pump_task = match node.shard_watch() {
        None => spawn_pump(node.clone(), events),
        Some(shards) => {
            // The publishing session's events: only (re)connections matter.
            spawn_pump(node.clone(), events);
            let all = node.config().cluster.subscribe == "all";
            tokio::spawn(ingest_shards(node.clone(), target, client_id, shards, all))
        }
    };

    let api_url = format!("http://{api}");
    let info = serde_json::json!({ "api": api_url, "mqtt": mqtt, "pid": std::process::id() });
    std::fs::write(data_dir.join(NODE_FILE), info.to_string())
        .with_context(|| format!("writing {}", data_dir.join(NODE_FILE).display()))?;
    let (stop_api, stopped) = oneshot::channel::<()>();
    let api_task = tokio::spawn(crate::api::serve(listener, node.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        node,
        api,
        mqtt,
        broker,
        stop_api: Some(stop_api),
        api_task,
        pump_task,
    })
}

/// A cluster member's device messages: one session subscribed to the
/// topics of the shards it runs, replaced by a new one (new client id, new
/// filters) each time they change; the old one is dropped once the new one
/// is up. Its `Connected` event republishes desired documents, so a member
/// that takes shards over sends their devices its documents at once.
async fn ingest_shards(
    node: Arc<Node>,
    target: BrokerTarget,
    client_id: String,
    mut shards: tokio::sync::watch::Receiver<Vec<u8>>,
    all: bool,
) {
    let mut current: Option<(crate::mqtt::MqttPublisher, JoinHandle<()>)> = None;
    let mut generation = 0u64;
    loop {
        let mine = shards.borrow_and_update().clone();
        let filters: Vec<String> = if all {
            vpp_protocol::topic::runtime_filters()
        } else {
            mine.iter()
                .flat_map(|s| vpp_protocol::topic::shard_filters(*s))
                .collect()
        };
        generation += 1;
        let id = format!("{client_id}-in{generation}");
        match MqttSession::connect(target.clone(), &id, filters).await {
            Ok((publisher, events)) => {
                let pump_task = spawn_pump(node.clone(), events);
                if let Some((_, old)) = current.replace((publisher, pump_task)) {
                    old.abort();
                }
                tracing::info!(shards = mine.len(), client_id = %id, "subscribed to this member's shards");
            }
            Err(e) => tracing::error!(error = %e, "subscribing to this member's shards failed"),
        }
        if shards.changed().await.is_err() {
            break;
        }
    }
    if let Some((_, t)) = current {
        t.abort();
    }
}

/// Imports `path` when the store holds no hierarchy yet (or always with
/// `replace`).
async fn import_at_start(node: &Arc<Node>, path: &Path, replace: bool) -> Result<()> {
    let stored = node.store().hierarchy_len()?;
    if stored == 0 || replace {
        let p = path.to_path_buf();
        let h = tokio::task::spawn_blocking(move || vpp_domain::hierarchy_file::load(&p)).await??;
        let n = node.replace_hierarchy(h).await?;
        println!("imported {} ({n} nodes)", path.display());
    } else {
        println!(
            "data dir already holds a hierarchy of {stored} nodes; not importing {} (use --replace)",
            path.display()
        );
    }
    Ok(())
}

impl Running {
    /// Stops serving, flushes the store, removes the discovery file. A
    /// cluster member that leads hands leadership over first.
    pub async fn stop(mut self) {
        if let Some(c) = self.node.writes().cluster() {
            // Shards first (the others must run them before this one goes),
            // then leadership.
            if c.hand_shards_over(std::time::Duration::from_secs(10)).await {
                println!("draining: this member's shards moved to the others");
            } else {
                println!("draining: the shards did not move in 10 s; the others take them after cluster.detect_ms");
            }
            match c.drain().await {
                Some(leader) => println!("draining: {leader} leads the cluster now"),
                None => println!(
                    "draining: no other member took over; the others elect after their timeout"
                ),
            }
        }
        if let Some(s) = self.stop_api.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.api_task).await;
        self.pump_task.abort();
        self.node.shutdown().await;
        drop(self.broker.take());
        let _ = std::fs::remove_file(self.node.config().data_dir.join(NODE_FILE));
    }
}

/// Runs a node until Ctrl-C or SIGTERM.
pub async fn run(config: NodeConfig, opts: ServeOptions) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let embedded = config.mqtt.broker == BrokerChoice::Embedded;
    let r = start(config, &opts).await?;
    let api = format!("http://{}", r.api);
    match r.node.fleet().await {
        Ok(f) => println!(
            "vpp node serving {} nodes under {:?} at {api}",
            f.len(),
            f.root().as_str()
        ),
        Err(_) => println!("vpp node at {api}: no hierarchy yet (vpp hierarchy import FILE)"),
    }
    if embedded {
        println!("devices: embedded MQTT broker at mqtt://{}", r.mqtt);
    } else {
        println!("devices: MQTT broker {}", r.mqtt);
    }
    println!("try: curl -s {api}/api/v1/health");
    tracing::info!(%api, mqtt = %r.mqtt, data_dir = %data_dir.display(), "serving");
    shutdown_signal().await;
    println!("shutting down: flushing the store");
    r.stop().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
