//! `vpp broker`: the embedded MQTT broker on its own, for devices and nodes
//! that connect with `--broker mqtt://host:port`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::mqtt::{default_broker_config, load_broker_config, EmbeddedBroker};

/// `vpp broker`
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// rumqttd config file [default: the shipped one, see `vpp config broker`].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the MQTT 3.1.1 listener, replacing the config's; port 0
    /// picks a free port [default: the config's, 127.0.0.1:1883].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Runs the broker until Ctrl-C or SIGTERM.
pub(super) fn run(args: BrokerArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => load_broker_config(path)?,
        None => default_broker_config()?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Catch the signals before saying where we listen, so a supervisor that
    // stops us as soon as it reads the address gets a clean stop.
    let stop = {
        let _in_runtime = rt.enter();
        Shutdown::listen()?
    };
    let broker = EmbeddedBroker::start(config, args.listen)?;
    for l in broker.listeners() {
        println!(
            "vpp broker listening on mqtt://{} ({}, {})",
            l.addr, l.protocol, l.key
        );
    }
    rt.block_on(stop.wait());
    println!("vpp broker stopping");
    drop(broker);
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment it is made.
#[cfg(unix)]
struct Shutdown {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Shutdown {
    fn listen() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Shutdown {
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
        }
    }
}

/// Ctrl-C where there are no Unix signals.
#[cfg(not(unix))]
struct Shutdown;

#[cfg(not(unix))]
impl Shutdown {
    fn listen() -> Result<Self> {
        Ok(Shutdown)
    }

    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
