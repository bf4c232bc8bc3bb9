//! Running the real `vpp` binary as a child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A `vpp serve` child and the URL it printed.
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
    /// The embedded broker's `host:port`, once the node printed it.
    pub mqtt: std::sync::mpsc::Receiver<String>,
}

impl NodeProcess {
    /// Starts `vpp serve` on port 0 over `dir` and waits for its address.
    pub fn start(dir: &Path) -> NodeProcess {
        Self::start_with(dir, &[])
    }

    /// As [`NodeProcess::start`], with more `vpp serve` flags (`--config F`).
    pub fn start_with(dir: &Path, flags: &[&str]) -> NodeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vpp"))
            .arg("--data-dir")
            .arg(dir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
            ])
            .args(flags)
            .env("VPP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("vpp starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (mqtt_tx, mqtt) = std::sync::mpsc::channel();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(i) = line.find("mqtt://") {
                    let _ = mqtt_tx.send(line[i + 7..].trim().to_string());
                }
                if let Some(i) = line.find("http://") {
                    let url: String = line[i..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches(':')
                        .to_string();
                    let _ = tx.send(url);
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("vpp printed its address");
        super::operator_token(dir);
        NodeProcess { child, url, mqtt }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI to completion.
pub fn vpp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(args)
        .env("VPP_LOG", "warn")
        .env_remove("VPP_NODE")
        .env_remove("VPP_DATA_DIR")
        .output()
        .expect("vpp runs")
}
