//! `vpp`: run `vpp --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = vpp_runtime::cli::Cli::parse();
    tracing_subscriber::fmt()
        // rumqttd logs every ordinary client disconnect as an error.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VPP_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,vpp_runtime=info,rumqttd=off")
            }),
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
