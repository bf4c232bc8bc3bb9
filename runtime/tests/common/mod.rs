//! Shared helpers of the runtime's black-box tests: an in-process node on
//! port 0, a Mosquitto child process, and polling with a deadline (no fixed
//! sleeps).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpp_runtime::client::Client;
use vpp_runtime::config::NodeConfig;
use vpp_runtime::node::Node;

pub mod mosquitto;
pub mod process;

/// The repository root (for `examples/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A node config for tests: API and embedded broker on free ports (tests run
/// in parallel: nothing may want 8080 or 1883), data in `dir`, then `tune`.
fn test_config(dir: &tempfile::TempDir, tune: impl FnOnce(&mut NodeConfig)) -> NodeConfig {
    let mut cfg = NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..NodeConfig::default()
    };
    cfg.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    tune(&mut cfg);
    cfg
}

/// The runtime a test node runs on (its own thread, two workers).
fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A node running in this process on its own runtime thread.
pub struct TestNode {
    pub url: String,
    /// Where devices connect (`host:port`), for nodes started with devices.
    pub mqtt: Option<String>,
    pub dir: tempfile::TempDir,
    /// The first operator's API token (made at first start).
    pub token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestNode {
    pub fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> TestNode {
        Self::start_with(dir, |_| {})
    }

    /// A node whose config `tune` adjusts first.
    pub fn start_with(dir: tempfile::TempDir, tune: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let cfg = test_config(&dir, tune);
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            test_runtime().block_on(async move {
                let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
                let url = format!("http://{}", listener.local_addr().unwrap());
                let node = Node::open(cfg).await.expect("node opens");
                url_tx.send(url).unwrap();
                vpp_runtime::api::serve(listener, node.clone(), async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
                node.shutdown().await;
            });
        });
        let url = url_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("node did not start");
        let token = operator_token(dir.path());
        TestNode {
            url,
            mqtt: None,
            token,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A node as `vpp serve` runs it: MQTT broker (embedded on a free port
    /// unless `tune` picks an external one), device link and ingest, API.
    pub fn start_serving(dir: tempfile::TempDir, tune: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let cfg = test_config(&dir, tune);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            test_runtime().block_on(async move {
                let opts = vpp_runtime::serve::ServeOptions::default();
                let running = vpp_runtime::serve::start(cfg, &opts)
                    .await
                    .expect("node starts");
                tx.send((format!("http://{}", running.api), running.mqtt.clone()))
                    .unwrap();
                let _ = stop_rx.await;
                running.stop().await;
            });
        });
        let (url, mqtt) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("node did not start");
        let token = operator_token(dir.path());
        TestNode {
            url,
            mqtt: Some(mqtt),
            token,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A client signed in as the first operator.
    pub fn client(&self) -> Client {
        Client::new(&self.url).with_token(Some(self.token.clone()))
    }

    /// Stops the node and hands back its data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.halt();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The first operator's token in a data dir (the node writes it at first
/// start); it becomes the default of [`request`].
pub fn operator_token(dir: &Path) -> String {
    let t = std::fs::read_to_string(dir.join(vpp_runtime::programs::OPERATOR_TOKEN_FILE))
        .expect("the node writes operator.token at first start")
        .trim()
        .to_string();
    *DEFAULT_TOKEN.lock().unwrap() = Some(t.clone());
    t
}

/// Token [`request`] sends: the last started node's operator.
static DEFAULT_TOKEN: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Raw request as the last started node's operator: (status, body as JSON
/// or Null).
pub fn request(method: &str, url: &str, body: Option<(&str, Vec<u8>)>) -> (u16, Value) {
    let token = DEFAULT_TOKEN.lock().unwrap().clone();
    request_as(token.as_deref(), method, url, body)
}

/// Raw request with `token` (`None`: no Authorization header).
pub fn request_as(
    token: Option<&str>,
    method: &str,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = match (method, body) {
        ("GET", _) => auth_get(token, agent.get(url)).call(),
        ("DELETE", _) => auth_get(token, agent.delete(url)).call(),
        ("POST", Some((ct, b))) => auth_get(token, agent.post(url))
            .content_type(ct)
            .send(&b[..]),
        ("POST", None) => auth_get(token, agent.post(url)).send_empty(),
        ("PUT", Some((ct, b))) => auth_get(token, agent.put(url))
            .content_type(ct)
            .send(&b[..]),
        ("PUT", None) => auth_get(token, agent.put(url)).send_empty(),
        _ => panic!("method {method}"),
    };
    let mut resp = resp.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn auth_get<B>(token: Option<&str>, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    match token {
        Some(t) => r.header("Authorization", format!("Bearer {t}")),
        None => r,
    }
}

/// Like [`request`] for an upload the server rejects while it is still being
/// sent (over the body limit): the server answers and closes early, so the
/// client may see the connection cut before it reads the answer. Such a
/// transport failure is retried (at most 20 times); any HTTP answer is
/// returned as it is.
pub fn request_oversized(url: &str, body: Vec<u8>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let token = DEFAULT_TOKEN.lock().unwrap().clone();
    let mut last = None;
    for _ in 0..20 {
        match auth_get(token.as_deref(), agent.put(url))
            .content_type("application/toml")
            .send(&body[..])
        {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            Err(e) => last = Some(e),
        }
    }
    panic!("no answer to the oversized upload in 20 tries: {last:?}");
}

/// Polls `f` until it gives `Some`, failing after `secs`.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn small_toml() -> String {
    std::fs::read_to_string(repo().join("examples/small.toml")).unwrap()
}
