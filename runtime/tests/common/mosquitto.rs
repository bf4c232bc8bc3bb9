//! A real Mosquitto broker as a child process, for tests of the external
//! MQTT transport: a free loopback port, anonymous access, no persistence,
//! SIGKILL and restart on the same port. Killed when dropped.
//!
//! Needs the `mosquitto` binary (Debian/Ubuntu: `apt-get install mosquitto`;
//! `.ci/run` installs it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(15);

pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto on a free loopback port and waits until it accepts.
    pub fn start() -> Mosquitto {
        let bin = find_binary().unwrap_or_else(|| {
            panic!(
                "the mosquitto binary was not found on PATH or in /usr/sbin: \
                 install the `mosquitto` package (apt-get install -y mosquitto mosquitto-clients)"
            )
        });
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n\
                 max_inflight_messages 1000\n\
                 max_queued_messages 100000\n"
            ),
        )
        .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            bin,
        };
        m.spawn();
        m
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no goodbye to its clients, retained messages gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it if it runs, then starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("mosquitto log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "mosquitto exited ({status}) instead of listening on {addr}: {}",
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto not listening on {addr} after {START_DEADLINE:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// What Mosquitto wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A port `p` such that `p` and `p + 1` are both free (a cluster member's
/// RPC port; its actor mesh listens on the next one up).
pub fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let p = a.local_addr().expect("its address").port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mosquitto"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
