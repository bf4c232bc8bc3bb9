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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VPP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    match vpp_runtime::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
