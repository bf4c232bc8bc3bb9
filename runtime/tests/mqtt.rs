//! MQTT transport and broker, black-box: the embedded broker (local link and
//! TCP), a real Mosquitto for the external transport and its reconnects, and
//! the `vpp broker` command.
//!
//! Run: `cargo nextest run -p vpp-runtime --test mqtt` (needs the
//! `mosquitto` binary for the external tests).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use vpp_runtime::mqtt::{
    default_broker_config, load_broker_config, parse_broker_config, BrokerTarget, BrokerUrl,
    EmbeddedBroker, MqttError, MqttEvent, MqttPublisher, MqttSession, Qos,
};

const WAIT: Duration = Duration::from_secs(20);

fn any_port() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn embedded() -> Arc<EmbeddedBroker> {
    let config = default_broker_config().expect("default broker config");
    Arc::new(EmbeddedBroker::start(config, any_port()).expect("embedded broker starts"))
}

/// The next event `want` accepts, skipping others; fails after [`WAIT`].
async fn expect(
    rx: &mut mpsc::Receiver<MqttEvent>,
    what: &str,
    mut want: impl FnMut(&MqttEvent) -> bool,
) -> MqttEvent {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(ev) = rx.recv().await {
            if want(&ev) {
                return Some(ev);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("session ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {WAIT:?}"),
    }
}

async fn connected(rx: &mut mpsc::Receiver<MqttEvent>) {
    expect(rx, "Connected", |e| *e == MqttEvent::Connected).await;
}

async fn message_on(rx: &mut mpsc::Receiver<MqttEvent>, topic: &str) -> bytes::Bytes {
    match expect(
        rx,
        topic,
        |e| matches!(e, MqttEvent::Message { topic: t, .. } if t == topic),
    )
    .await
    {
        MqttEvent::Message { payload, .. } => payload,
        _ => unreachable!(),
    }
}

/// Polls until `f` holds, failing after [`WAIT`].
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A device over TCP (rumqttc), with what the broker sends it on a channel.
struct TcpClient {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpClient {
    async fn connect(port: u16, id: &str) -> TcpClient {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let (tx, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(pump(eventloop, tx));
        let mut c = TcpClient {
            client,
            incoming,
            task,
        };
        c.next(|p| matches!(p, Packet::ConnAck(_))).await;
        c
    }

    async fn next(&mut self, mut want: impl FnMut(&Packet) -> bool) -> Packet {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.incoming.recv().await {
                    Some(p) if want(&p) => return p,
                    Some(_) => {}
                    None => panic!("tcp client stopped"),
                }
            }
        })
        .await
        .expect("tcp client: packet within the deadline")
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.next(|p| matches!(p, Packet::SubAck(_))).await;
    }

    async fn publish_on(&mut self, topic: &str) -> rumqttc::Publish {
        match self
            .next(|p| matches!(p, Packet::Publish(x) if x.topic == topic))
            .await
        {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    }
}

impl Drop for TcpClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Packet>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(p)) => {
                if tx.send(p).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn publish(p: &MqttPublisher, topic: &str, payload: &[u8], qos: Qos, retain: bool) {
    p.publish(topic.to_string(), payload.to_vec(), qos, retain)
        .expect("publish accepted");
}

// ---------------------------------------------------------------- embedded

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retained_publish_reaches_a_later_tcp_subscriber() {
    let broker = embedded();
    let (publisher, mut events) = MqttSession::connect(
        BrokerTarget::Embedded(broker.clone()),
        "vpp-runtime",
        vec![],
    )
    .await
    .unwrap();
    connected(&mut events).await;

    let topic = "vpp/v1/4e/site-1/der-1/desired";
    publish(
        &publisher,
        topic,
        br#"{"v":1,"version":7}"#,
        Qos::AtLeastOnce,
        true,
    );
    // Sent = in the router's input; the router handles its input in order,
    // so the retained message is stored before the subscription below.
    until("publish sent", || publisher.stats().sent == 1).await;

    let mut device = TcpClient::connect(broker.local_addr().port(), "gw-1").await;
    device
        .subscribe("vpp/v1/4e/site-1/+/desired", QoS::AtLeastOnce)
        .await;
    let p = device.publish_on(topic).await;
    assert!(p.retain, "delivered as a retained message");
    assert_eq!(&p.payload[..], br#"{"v":1,"version":7}"#);
    assert_eq!(p.qos, QoS::AtLeastOnce, "at the subscription's QoS");

    // Later publishes reach the live subscription as ordinary messages.
    publish(
        &publisher,
        topic,
        br#"{"v":1,"version":8}"#,
        Qos::AtLeastOnce,
        true,
    );
    let p = device.publish_on(topic).await;
    assert!(!p.retain);
    assert_eq!(&p.payload[..], br#"{"v":1,"version":8}"#);
    // The router may deliver before the writer has counted.
    until("second publish counted", || publisher.stats().sent == 2).await;
    let s = publisher.stats();
    assert_eq!((s.queued, s.sent, s.failed, s.pending), (2, 2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_tcp_publish_reaches_the_local_link_subscription() {
    let broker = embedded();
    let filters = vec![
        "vpp/v1/+/+/+/telemetry".to_string(),
        "vpp/v1/+/+/+/ack".to_string(),
    ];
    let (_publisher, mut events) = MqttSession::connect(
        BrokerTarget::Embedded(broker.clone()),
        "vpp-runtime",
        filters,
    )
    .await
    .unwrap();
    connected(&mut events).await;

    let device = TcpClient::connect(broker.local_addr().port(), "gw-1").await;
    let ack = "vpp/v1/4e/site-1/der-1/ack";
    device
        .client
        .publish(ack, QoS::AtLeastOnce, false, b"ok".to_vec())
        .await
        .unwrap();
    assert_eq!(&message_on(&mut events, ack).await[..], b"ok");

    // More than rumqttd hands a link per round (~200), so the session must
    // tell the router it is ready again for the rest to arrive.
    const N: usize = 5_000;
    let telemetry = "vpp/v1/4e/site-1/der-1/telemetry";
    for i in 0..N {
        device
            .client
            .publish(
                telemetry,
                QoS::AtMostOnce,
                false,
                i.to_string().into_bytes(),
            )
            .await
            .unwrap();
    }
    for i in 0..N {
        let payload = message_on(&mut events, telemetry).await;
        assert_eq!(
            &payload[..],
            i.to_string().as_bytes(),
            "in order, none lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_session_relinks_when_its_client_id_is_taken() {
    let broker = embedded();
    let filters = vec!["vpp/v1/+/+/+/ack".to_string()];
    let (_publisher, mut events) = MqttSession::connect(
        BrokerTarget::Embedded(broker.clone()),
        "vpp-runtime",
        filters,
    )
    .await
    .unwrap();
    connected(&mut events).await;

    // A TCP client with the same id makes rumqttd drop the local link.
    let intruder = TcpClient::connect(broker.local_addr().port(), "vpp-runtime").await;
    expect(&mut events, "Disconnected", |e| {
        matches!(e, MqttEvent::Disconnected(_))
    })
    .await;
    drop(intruder);
    connected(&mut events).await;

    // Subscriptions are back.
    let device = TcpClient::connect(broker.local_addr().port(), "gw-1").await;
    let ack = "vpp/v1/4e/site-1/der-1/ack";
    device
        .client
        .publish(ack, QoS::AtLeastOnce, false, b"again".to_vec())
        .await
        .unwrap();
    assert_eq!(&message_on(&mut events, ack).await[..], b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refuse_bad_client_ids_filters_and_topics() {
    let broker = embedded();
    let target = BrokerTarget::Embedded(broker);
    let e = MqttSession::connect(target.clone(), "a/b", vec![])
        .await
        .unwrap_err();
    assert!(matches!(e, MqttError::ClientId { .. }), "{e}");
    let e = MqttSession::connect(target.clone(), "ok", vec!["a/#/b".into()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a/#/b"), "{e}");
    let (p, _events) = MqttSession::connect(target, "ok", vec![]).await.unwrap();
    let e = p
        .publish("a/+".into(), vec![], Qos::AtMostOnce, false)
        .unwrap_err();
    assert!(matches!(e, MqttError::Topic { .. }), "{e}");
    assert_eq!(p.stats().failed, 1);
}

#[test]
fn broker_on_a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = EmbeddedBroker::start(default_broker_config().unwrap(), Some(addr)).unwrap_err();
    let m = e.to_string();
    assert!(m.contains(&addr.to_string()) && m.contains("v4.1"), "{m}");
}

#[test]
fn broker_starts_every_listener_and_port_zero_gets_a_real_port() {
    let text = format!(
        "{}\n[v5.1]\nname = \"v5-1\"\nlisten = \"127.0.0.1:0\"\nnext_connection_delay_ms = 0\n\
         [v5.1.connections]\nconnection_timeout_ms = 1000\nmax_payload_size = 20480\nmax_inflight_count = 100\n",
        default_config_text()
    );
    let config = parse_broker_config("two.toml", &text).unwrap();
    let broker = EmbeddedBroker::start(config, any_port()).unwrap();
    let l = broker.listeners();
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(l.iter().all(|l| l.addr.port() != 0), "{l:?}");
    assert_ne!(l[0].addr, l[1].addr);
    assert_eq!(broker.local_addr(), l[0].addr, "v4.1 sorts first");
    for l in l {
        std::net::TcpStream::connect(l.addr).unwrap();
    }
}

#[test]
fn bad_broker_config_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    let text = default_config_text().replace("dynamic_filters = true", "dynamic_filter = true");
    std::fs::write(&typo, text).unwrap();
    let m = load_broker_config(&typo).unwrap_err().to_string();
    assert!(
        m.contains("typo.toml") && m.contains("unknown key v4.1.connections.dynamic_filter"),
        "{m}"
    );

    // rumqttd itself would panic on this one (a segment under 1 KiB).
    let tiny = dir.path().join("tiny.toml");
    let text =
        default_config_text().replace("max_segment_size = 16777216", "max_segment_size = 10");
    std::fs::write(&tiny, text).unwrap();
    for (file, needle) in [
        (&typo, "dynamic_filter"),
        (&tiny, "router.max_segment_size"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
            .args(["broker", "--listen", "127.0.0.1:0", "--config"])
            .arg(file)
            .env("VPP_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("error: broker config") && stderr.contains(needle),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let missing = dir.path().join("missing.toml");
    let m = load_broker_config(&missing).unwrap_err().to_string();
    assert!(m.contains("missing.toml"), "{m}");
}

fn default_config_text() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["config", "broker"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn config_broker_prints_a_config_that_loads() {
    let text = default_config_text();
    let c = parse_broker_config("stdout", &text).unwrap();
    assert!(c.router.max_connections >= 10_010);
}

#[test]
fn broker_command_serves_until_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["broker", "--listen", "127.0.0.1:0"])
        .env("VPP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr: SocketAddr = first
        .split("mqtt://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    assert_ne!(addr.port(), 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut a = TcpClient::connect(addr.port(), "a").await;
        a.subscribe("t/#", QoS::AtMostOnce).await;
        let b = TcpClient::connect(addr.port(), "b").await;
        b.client
            .publish("t/1", QoS::AtMostOnce, false, b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(&a.publish_on("t/1").await.payload[..], b"x");
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "vpp broker still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopping")), "{rest:?}");
}

// ---------------------------------------------------------------- external

fn external(m: &Mosquitto) -> BrokerTarget {
    BrokerTarget::External(m.url().parse::<BrokerUrl>().unwrap())
}

type Session = (MqttPublisher, mpsc::Receiver<MqttEvent>);

/// A runtime session subscribed to `filters` and a device session with none,
/// both on `m` and connected.
async fn runtime_and_device(m: &Mosquitto, filters: &[&str]) -> (Session, Session) {
    let filters = filters.iter().map(|f| f.to_string()).collect();
    let mut runtime = MqttSession::connect(external(m), "vpp-runtime", filters)
        .await
        .unwrap();
    let mut device = MqttSession::connect(external(m), "gw-1", vec![])
        .await
        .unwrap();
    connected(&mut runtime.1).await;
    connected(&mut device.1).await;
    (runtime, device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_session_publishes_subscribes_and_retains_through_mosquitto() {
    let mosquitto = Mosquitto::start();
    let ((_p, mut runtime_events), (device, _device_events)) =
        runtime_and_device(&mosquitto, &["vpp/v1/+/+/+/ack"]).await;

    let ack = "vpp/v1/4e/site-1/der-1/ack";
    publish(&device, ack, b"ok", Qos::AtLeastOnce, false);
    assert_eq!(&message_on(&mut runtime_events, ack).await[..], b"ok");

    let desired = "vpp/v1/4e/site-1/der-1/desired";
    publish(&device, desired, b"doc", Qos::AtLeastOnce, true);
    until("publish sent", || device.stats().sent == 2).await;
    // Whether it arrives before the subscription (retained) or after (live),
    // the late subscriber gets it.
    let (_l, mut late) = MqttSession::connect(
        external(&mosquitto),
        "gw-2",
        vec!["vpp/v1/4e/site-1/+/desired".to_string()],
    )
    .await
    .unwrap();
    connected(&mut late).await;
    assert_eq!(&message_on(&mut late, desired).await[..], b"doc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_session_reconnects_and_resubscribes_after_mosquitto_restart() {
    let mut mosquitto = Mosquitto::start();
    let ack = "vpp/v1/4e/site-1/der-1/ack";
    let ((_p, mut runtime), (device, mut device_events)) =
        runtime_and_device(&mosquitto, &[ack]).await;
    publish(&device, ack, b"before", Qos::AtLeastOnce, false);
    assert_eq!(&message_on(&mut runtime, ack).await[..], b"before");

    mosquitto.kill();
    expect(&mut runtime, "Disconnected", |e| {
        matches!(e, MqttEvent::Disconnected(_))
    })
    .await;
    expect(&mut device_events, "Disconnected", |e| {
        matches!(e, MqttEvent::Disconnected(_))
    })
    .await;
    // Accepted while the broker is away; goes out after the reconnect.
    let desired = "vpp/v1/4e/site-1/der-1/desired";
    publish(&device, desired, b"while-down", Qos::AtLeastOnce, true);

    mosquitto.restart();
    // Each session's reading connection says Connected again, and its
    // publishing connection PublisherReconnected (the broker may have lost
    // retained messages): in either order.
    for events in [&mut runtime, &mut device_events] {
        let (mut connected_again, mut publisher_back) = (false, false);
        while !(connected_again && publisher_back) {
            match expect(events, "Connected and PublisherReconnected", |e| {
                matches!(e, MqttEvent::Connected | MqttEvent::PublisherReconnected)
            })
            .await
            {
                MqttEvent::Connected => connected_again = true,
                _ => publisher_back = true,
            }
        }
    }

    // The subscription was restored: messages published after the restart
    // arrive. Publish until one does (the device may reconnect before the
    // runtime has subscribed again).
    let deadline = Instant::now() + WAIT;
    let got = loop {
        publish(&device, ack, b"after", Qos::AtLeastOnce, false);
        match tokio::time::timeout(Duration::from_millis(500), message_on(&mut runtime, ack)).await
        {
            Ok(p) => break p,
            Err(_) => assert!(Instant::now() < deadline, "no message after the restart"),
        }
    };
    assert_eq!(&got[..], b"after");

    // "after" came through the device's connection behind "while-down", so
    // Mosquitto holds that as retained by now.
    let mut late = TcpClient::connect(mosquitto.port(), "gw-2").await;
    late.subscribe("vpp/v1/4e/site-1/+/desired", QoS::AtLeastOnce)
        .await;
    let p = late.publish_on(desired).await;
    assert_eq!(&p.payload[..], b"while-down");
    assert!(p.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_session_sheds_telemetry_when_behind_but_never_an_ack() {
    let mosquitto = Mosquitto::start();
    let telemetry = "vpp/v1/4e/site-1/der-1/telemetry";
    let ack = "vpp/v1/4e/site-1/der-1/ack";
    let ((runtime_out, mut runtime), (device, _device_events)) =
        runtime_and_device(&mosquitto, &[telemetry, ack]).await;

    // The runtime's consumer reads nothing meanwhile: more telemetry than its
    // event channel holds, then one ack.
    let n = vpp_runtime::mqtt::EVENT_CHANNEL_CAPACITY + 5_000;
    for i in 0..n {
        publish(&device, telemetry, &i.to_le_bytes(), Qos::AtMostOnce, false);
    }
    publish(&device, ack, b"accepted", Qos::AtLeastOnce, false);
    until("every publish sent", || device.stats().sent == n as u64 + 1).await;
    until("telemetry shed", || runtime_out.stats().shed > 0).await;
    assert!(vpp_runtime::mqtt::shed_total() >= runtime_out.stats().shed);

    // The ack still arrives, behind whatever telemetry fitted, and the
    // connection never dropped.
    let mut telemetry_seen = 0usize;
    let got = tokio::time::timeout(WAIT, async {
        while let Some(ev) = runtime.recv().await {
            match ev {
                MqttEvent::Message { topic, payload } if topic == ack => return Some(payload),
                MqttEvent::Message { .. } => telemetry_seen += 1,
                MqttEvent::Disconnected(why) => panic!("the session dropped: {why}"),
                MqttEvent::Connected | MqttEvent::PublisherReconnected => {}
            }
        }
        None
    })
    .await
    .expect("the ack arrives within the wait")
    .expect("the session keeps running");
    assert_eq!(&got[..], b"accepted");
    let shed = runtime_out.stats().shed as usize;
    assert!(
        telemetry_seen + shed <= n,
        "{telemetry_seen} seen + {shed} shed > {n} sent"
    );
    assert!(telemetry_seen >= vpp_runtime::mqtt::EVENT_CHANNEL_CAPACITY - 1);
}

/// A member that runs every shard subscribes to 7 × 256 filters: more than
/// one SUBSCRIBE packet may carry (rumqttd takes 20 KiB). The session splits
/// them, reports Connected once every SUBACK is in, and hears every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_session_subscribes_every_shard_of_a_whole_fleet() {
    let broker = embedded();
    let url: BrokerUrl = format!("mqtt://{}", broker.local_addr()).parse().unwrap();
    let filters: Vec<String> = (0..=255u8)
        .flat_map(vpp_protocol::topic::shard_filters)
        .collect();
    assert!(filters.iter().map(|f| f.len() + 3).sum::<usize>() > 20 * 1024);
    let (_runtime, mut events) =
        MqttSession::connect(BrokerTarget::External(url.clone()), "vpp-runtime", filters)
            .await
            .unwrap();
    connected(&mut events).await;
    let (device, mut device_events) =
        MqttSession::connect(BrokerTarget::External(url), "gw-1", vec![])
            .await
            .unwrap();
    connected(&mut device_events).await;
    // Sites whose shards are the first and the last filters subscribed.
    for site in (0..10_000)
        .map(|i| format!("s{i}"))
        .filter(|s| matches!(vpp_protocol::shard_of(s), 0 | 255))
    {
        let topic = vpp_protocol::topic::site_topic(&site, vpp_protocol::Channel::Ack);
        publish(&device, &topic, b"x", Qos::AtLeastOnce, false);
        assert_eq!(&message_on(&mut events, &topic).await[..], b"x");
    }
}
