//! `vpp serve`: open the store, bring the fleet up, serve the API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::config::NodeConfig;
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

/// Runs a node until Ctrl-C or SIGTERM.
pub async fn run(config: NodeConfig, opts: ServeOptions) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let data_dir = config.data_dir.clone();
    let node = Node::open(config)
        .await
        .with_context(|| format!("opening the node on data dir {}", data_dir.display()))?;

    if let Some(path) = &opts.hierarchy {
        let stored = node.store().hierarchy_len()?;
        if stored == 0 || opts.replace {
            let p = path.clone();
            let h =
                tokio::task::spawn_blocking(move || vpp_domain::hierarchy_file::load(&p)).await??;
            let n = node.replace_hierarchy(h).await?;
            println!("imported {} ({n} nodes)", path.display());
        } else {
            println!(
                "data dir already holds a hierarchy of {stored} nodes; not importing {} (use --replace)",
                path.display()
            );
        }
    }

    let api = format!("http://{addr}");
    let info = serde_json::json!({ "api": api, "pid": std::process::id() });
    std::fs::write(data_dir.join(NODE_FILE), info.to_string())
        .with_context(|| format!("writing {}", data_dir.join(NODE_FILE).display()))?;
    match node.fleet().await {
        Ok(f) => println!(
            "vpp node serving {} nodes under {:?} at {api}",
            f.len(),
            f.root().as_str()
        ),
        Err(_) => println!("vpp node at {api}: no hierarchy yet (vpp hierarchy import FILE)"),
    }
    println!("try: curl -s {api}/api/v1/health");
    tracing::info!(%api, data_dir = %data_dir.display(), "serving");

    let node2: Arc<Node> = node.clone();
    crate::api::serve(listener, node2, shutdown_signal()).await?;
    println!("shutting down: flushing the store");
    node.shutdown().await;
    let _ = std::fs::remove_file(data_dir.join(NODE_FILE));
    Ok(())
}

async fn shutdown_signal() {
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
