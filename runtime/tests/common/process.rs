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
        Self::start_env(dir, flags, &[])
    }

    /// As [`NodeProcess::start_with`], with more environment variables.
    pub fn start_env(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let mut child = serve_command(dir, flags, env)
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

/// `vpp serve` over `dir` on free ports (API and embedded broker), with
/// `flags` and `env`, logging warnings only.
fn serve_command(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vpp"));
    c.arg("--data-dir")
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
        .envs(env.iter().copied());
    c
}

/// Runs `vpp serve` over `dir` with `env`, expecting it to refuse to start,
/// and returns what it printed on stderr. A node that starts anyway is
/// killed after 20 s and the test fails.
pub fn serve_refused(dir: &Path, env: &[(&str, &str)]) -> String {
    let mut child = serve_command(dir, &[], env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vpp starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let status = status.unwrap_or_else(|| panic!("vpp serve with {env:?} kept serving: {err}"));
    assert!(!status.success(), "vpp serve with {env:?} exited 0: {err}");
    err
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
