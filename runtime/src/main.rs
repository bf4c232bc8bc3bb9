//! `vpp`: run `vpp --help`.

use clap::Parser;

/// mimalloc instead of glibc's malloc: at 1M DERs the split spent ~40 % of
/// its time in glibc malloc (arena lock contention between the worker
/// threads, and fresh pages); see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = vpp_runtime::cli::Cli::parse();
    // rumqttd logs every ordinary client disconnect as an error; the demo
    // prints its own progress, so it keeps to warnings.
    let default = match cli.cmd {
        vpp_runtime::cli::Cmd::Demo(_) => "warn,rumqttd=off,vpp_simulator=error",
        _ => "warn,vpp_runtime=info,rumqttd=off",
    };
    // Spans go to an OpenTelemetry collector only from `vpp serve`, and only
    // if the environment names one (vpp_runtime::otel).
    let traces = match cli.cmd {
        vpp_runtime::cli::Cmd::Serve(_) => match vpp_runtime::otel::from_env() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: OpenTelemetry: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    // Logs follow VPP_LOG; the spans sent to the collector, VPP_TRACES.
    let log_filter = match filter_from_env("VPP_LOG", default) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let otel = match &traces {
        None => None,
        Some(t) => match filter_from_env("VPP_TRACES", vpp_runtime::otel::DEFAULT_FILTER) {
            Ok(f) => Some(
                tracing_opentelemetry::layer()
                    .with_tracer(t.tracer.clone())
                    .with_filter(f),
            ),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(log_filter),
        )
        .init();
    let result = vpp_runtime::cli::run(cli);
    if let Some(t) = traces {
        t.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The filter `var` names (`default` when it is unset or empty); a value
/// that is not a filter is an error naming the variable, rather than being
/// ignored.
fn filter_from_env(var: &str, default: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| {
            format!("{var}={v:?} is not a filter such as \"warn,vpp_runtime=info\": {e}")
        }),
        _ => Ok(tracing_subscriber::EnvFilter::new(default)),
    }
}
