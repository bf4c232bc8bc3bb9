//! OpenTelemetry traces over OTLP/HTTP.
//!
//! Off unless the operator names a collector with the standard variable
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://collector:4318`; spans go to
//! `…/v1/traces`) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL);
//! plain `http://` only for now (a collector beside the node).
//! Then `vpp serve` sends its spans, batched in the background (every
//! `OTEL_BSP_SCHEDULE_DELAY` ms, 5,000 by default), as protobuf:
//!
//! | span                 | where                                      |
//! |----------------------|--------------------------------------------|
//! | `{METHOD} {route}`   | every API request (`api.rs`), with status  |
//! | `dispatch`           | an order's split down the tree (`vpp_actors::fleet`) |
//! | `registry write`     | a replicated write, call to applied (`cluster.rs`) |
//!
//! The service is `vpp` (or `OTEL_SERVICE_NAME`). Which spans are sent is
//! chosen by `VPP_TRACES` (a filter like `VPP_LOG`'s; [`DEFAULT_FILTER`]
//! when unset), apart from the log's `VPP_LOG`. A collector that cannot be reached
//! costs nothing but the batch: exports that fail are counted
//! (`vpp_otel_export_failures_total` in `/metrics`) and logged once per
//! outage, and the node carries on. A malformed endpoint stops `vpp serve`
//! before it starts, naming the variable; so do a `VPP_TRACES` that is not
//! a filter and an `OTEL_BSP_SCHEDULE_DELAY` that is not a number of ms.
//!
//! Spans are sent with the node's own HTTP client (ureq) on the batch
//! processor's thread: no second HTTP stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{anyhow, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The spans sent when `VPP_TRACES` is unset: the runtime's and the
/// actors' at info (API requests, dispatches, registry writes).
pub const DEFAULT_FILTER: &str = "warn,vpp_runtime=info,vpp_actors=info";

/// The variables that name a collector, in the order they are read.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

static EXPORTS: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// Whether the last export failed (so an outage is logged once).
static FAILING: AtomicBool = AtomicBool::new(false);

/// Batches of spans the collector accepted.
pub fn exports_total() -> u64 {
    EXPORTS.load(Ordering::Relaxed)
}

/// Batches of spans that could not be delivered (collector unreachable or
/// refusing).
pub fn export_failures_total() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// Tracing to a collector: the tracer for the `tracing` layer, and the
/// provider to [`Traces::shutdown`] on exit (it sends what is batched).
pub struct Traces {
    /// For `tracing_opentelemetry::layer().with_tracer`.
    pub tracer: SdkTracer,
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sends the spans still batched (waits at most the export timeout).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("OpenTelemetry: sending the last spans: {e}");
        }
    }
}

/// Tracing to the collector the environment names, `None` if it names none.
/// An endpoint that is not a URL is an error naming the variable.
pub fn from_env() -> Result<Option<Traces>> {
    let Some((var, endpoint)) = ENDPOINT_VARS.iter().find_map(|v| {
        std::env::var(v)
            .ok()
            .filter(|e| !e.trim().is_empty())
            .map(|e| (*v, e))
    }) else {
        return Ok(None);
    };
    let bad = |why: String| anyhow!("{var}={endpoint:?}: {why}");
    let uri: ureq::http::Uri = endpoint
        .trim()
        .parse()
        .map_err(|e| bad(format!("not a URL ({e})")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => {}
        (Some("https"), _) => {
            return Err(bad(
                "only plain http:// collectors are supported (e.g. a collector on the node's network); TLS to the collector is not built yet".into(),
            ))
        }
        _ => return Err(bad("expected http://host:port".into())),
    }
    if let Ok(ms) = std::env::var("OTEL_BSP_SCHEDULE_DELAY") {
        if ms.trim().parse::<u64>().is_err() {
            return Err(anyhow!(
                "OTEL_BSP_SCHEDULE_DELAY={ms:?}: expected the batch interval in ms, e.g. 5000"
            ));
        }
    }
    // The exporter reads the variables itself (and adds `/v1/traces` to the
    // general one); it is handed our client.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(UreqClient::new())
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name("vpp").build()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("vpp");
    Ok(Some(Traces { tracer, provider }))
}

/// OTLP over the node's ureq. The batch processor calls it on its own
/// thread, so blocking inside the future is fine.
#[derive(Debug)]
struct UreqClient {
    agent: ureq::Agent,
}

impl UreqClient {
    fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        Self { agent }
    }

    fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, body.to_vec());
        let mut response = self.agent.run(request)?;
        let status = response.status();
        let body = response.body_mut().read_to_vec()?;
        Ok(Response::builder().status(status).body(Bytes::from(body))?)
    }
}

impl HttpClient for UreqClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let result = self.send(request);
        let delivered = matches!(&result, Ok(r) if r.status().is_success());
        if delivered {
            EXPORTS.fetch_add(1, Ordering::Relaxed);
            if FAILING.swap(false, Ordering::Relaxed) {
                tracing::info!("OpenTelemetry: the collector takes spans again");
            }
        } else {
            FAILURES.fetch_add(1, Ordering::Relaxed);
            if !FAILING.swap(true, Ordering::Relaxed) {
                let why = match &result {
                    Ok(r) => format!("answered {}", r.status()),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(
                    "OpenTelemetry: spans not delivered to the collector ({why}); counting in vpp_otel_export_failures_total until it takes them again"
                );
            }
        }
        Box::pin(std::future::ready(result))
    }
}
