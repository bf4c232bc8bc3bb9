//! OpenTelemetry: `vpp serve` sends its spans to the OTLP/HTTP collector the
//! environment names (`runtime/src/otel.rs`). The collector here is a small
//! HTTP server on loopback that keeps what it is sent.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::process::{serve_refused, NodeProcess};
use common::{eventually, operator_token, request_as, small_toml};
use serde_json::json;

/// One request the collector received.
#[derive(Clone)]
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Listens on 127.0.0.1, answers 200 to every request, keeps them all.
fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                // Requests one after another on the connection, until it closes.
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (mut len, mut content_type) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            match k.to_ascii_lowercase().as_str() {
                                "content-length" => len = v.trim().parse().unwrap_or(0),
                                "content-type" => content_type = v.trim().to_string(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    keep.lock().unwrap().push(Received {
                        path,
                        content_type,
                        body,
                    });
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (url, got)
}

/// Whether `body` holds a span named `name`: in OTLP's protobuf a span's
/// name is field 5, a length-delimited string (tag 0x2a, then its length).
fn has_span(body: &[u8], name: &str) -> bool {
    let mut needle = vec![0x2a, name.len() as u8];
    needle.extend_from_slice(name.as_bytes());
    body.windows(needle.len()).any(|w| w == needle.as_slice())
}

fn metric(url: &str, name: &str) -> Option<u64> {
    ureq::get(format!("{url}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `vpp serve` with `var` naming `endpoint` as its collector, sending a
/// batch every 100 ms: its data dir, the node and the operator's token.
fn node_tracing_to(var: &str, endpoint: &str) -> (tempfile::TempDir, NodeProcess, String) {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_env(
        dir.path(),
        &[],
        &[(var, endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let token = operator_token(dir.path());
    (dir, node, token)
}

#[test]
fn spans_of_requests_and_dispatches_reach_the_collector_the_environment_names() {
    let (endpoint, got) = collector();
    let (_dir, node, token) = node_tracing_to("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let url = &node.url;
    let (s, v) = request_as(
        Some(&token),
        "PUT",
        &format!("{url}/api/v1/hierarchy"),
        Some(("application/toml", small_toml().into_bytes())),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = request_as(
        Some(&token),
        "POST",
        &format!("{url}/api/v1/dispatches"),
        Some((
            "application/json",
            serde_json::to_vec(&json!({"id": "otel-1", "target": "vpp", "direction": "up", "power_kw": 1.0, "duration_s": 60})).unwrap(),
        )),
    );
    assert!(s == 202 || s == 200, "{s} {v}");
    let wanted = [
        "PUT /api/v1/hierarchy",
        "POST /api/v1/dispatches",
        "dispatch",
    ];
    let batches = eventually(20, || {
        let got = got.lock().unwrap().clone();
        let all: Vec<u8> = got.iter().flat_map(|r| r.body.clone()).collect();
        wanted
            .iter()
            .all(|name| has_span(&all, name))
            .then_some(got)
    });
    for r in &batches {
        assert_eq!(r.path, "/v1/traces");
        assert_eq!(r.content_type, "application/x-protobuf");
    }
    let all: Vec<u8> = batches.iter().flat_map(|r| r.body.clone()).collect();
    assert!(
        all.windows(3).any(|w| w == b"vpp"),
        "the service is named vpp"
    );
    // The probes are not traced.
    assert!(!has_span(&all, "GET /api/v1/health"));
    assert!(metric(url, "vpp_otel_exports_total").is_some_and(|n| n > 0));
    assert_eq!(metric(url, "vpp_otel_export_failures_total"), Some(0));
}

#[test]
fn a_collector_that_cannot_be_reached_is_counted_and_the_node_carries_on() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (_dir, node, token) = node_tracing_to("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint);
    eventually(20, || {
        let (s, _) = request_as(
            Some(&token),
            "GET",
            &format!("{}/api/v1/dispatches", node.url),
            None,
        );
        assert_eq!(s, 200, "the API answers while spans cannot be sent");
        metric(&node.url, "vpp_otel_export_failures_total").filter(|n| *n > 0)
    });
    assert_eq!(metric(&node.url, "vpp_otel_exports_total"), Some(0));
}

#[test]
fn a_bad_span_filter_or_batch_interval_stops_serve_naming_the_variable() {
    for (env, says) in [
        (("VPP_TRACES", "vpp_runtime=loud"), "VPP_TRACES"),
        (
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            "OTEL_BSP_SCHEDULE_DELAY",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = serve_refused(
            dir.path(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                env,
            ],
        );
        assert!(err.contains(says), "{env:?}: {err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{env:?}: nothing written"
        );
    }
}

#[test]
fn a_malformed_collector_endpoint_stops_serve_before_it_writes_anything() {
    for (value, says) in [
        ("not a url", "not a URL"),
        ("https://collector:4318", "http://"),
        ("ftp://collector:4318", "http://host:port"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = serve_refused(dir.path(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", value)]);
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains(says),
            "{value}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{value}: nothing written"
        );
    }
}
