//! Test harness: a Mosquitto child process on a free loopback port, and an
//! MQTT client that records everything it sees.

#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

/// A Mosquitto broker, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts one on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nmax_inflight_messages 0\n"
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("log file");
        let spawn = |bin: &str| {
            Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("log handle"))
                .spawn()
        };
        let child = match spawn("mosquitto") {
            Err(e) if e.kind() == ErrorKind::NotFound => spawn("/usr/sbin/mosquitto"),
            r => r,
        }
        .unwrap_or_else(|e| {
            panic!(
                "cannot start mosquitto ({e}): these tests need the mosquitto broker \
                 installed (apt-get install mosquitto)"
            )
        });
        let mut m = Mosquitto {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("mosquitto exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message the observer saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

/// An MQTT client subscribed to everything, recording what it sees.
pub struct Observer {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    pub seen: Vec<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Connects and subscribes to `vpp/v1/#`; returns once subscribed.
    pub async fn connect(addr: &str, id: &str) -> Self {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut opts = MqttOptions::new(id, host, port.parse().expect("port"));
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Seen {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            at: Instant::now(),
                        });
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client
            .subscribe("vpp/v1/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
            .await
            .expect("suback within 10 s");
        Observer {
            client,
            rx,
            seen: Vec::new(),
            task,
        }
    }

    /// Waits (up to `within`) for a message matching `f`, looking at what
    /// was already seen too; returns it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Seen) -> bool,
    ) -> Seen {
        if let Some(s) = self.seen.iter().find(|s| f(s)) {
            return s.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(s)) => {
                    self.seen.push(s.clone());
                    if f(&s) {
                        return s;
                    }
                }
                _ => panic!(
                    "waited {within:?} for {what}; saw {} messages, last: {:?}",
                    self.seen.len(),
                    self.seen
                        .iter()
                        .rev()
                        .take(5)
                        .map(|s| &s.topic)
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Publishes a retained QoS 1 message.
    pub async fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` every 20 ms until it holds or `within` passes.
pub async fn poll_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
