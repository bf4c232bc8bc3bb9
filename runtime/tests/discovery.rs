//! Members from DNS (`cluster/discovery.rs`) against a real DNS server
//! (hickory-server, in this process on 127.0.0.1) whose records change while
//! it runs: discovery waits for every member, refuses bad listings with the
//! reason, and `vpp serve` waits for DNS before it writes anything, then
//! joins with the members it found.
//!
//! Run: `cargo nextest run -p vpp-runtime --test discovery`

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::rr::{Name, RData};
use vpp_runtime::cluster::discovery::{discover, DnsSeeds};

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

const ZONE: &str = "vpp-peers.default.svc.cluster.local.";
const SRV_NAME: &str = "_cluster._tcp.vpp-peers.default.svc.cluster.local";
/// Long enough that a caching resolver would hide later changes.
const TTL: u32 = 30;
const SERIAL: u32 = 1;

/// An authoritative DNS server on 127.0.0.1 (UDP and TCP on one port) whose zone can change
/// while it runs.
struct TestDns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    _server: Server<Catalog>,
}

impl TestDns {
    async fn start() -> Self {
        let origin = Name::from_str(ZONE).unwrap();
        let zone: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str("ns.").unwrap(),
            Name::from_str("admin.").unwrap(),
            SERIAL,
            60,
            60,
            60,
            0,
        );
        assert!(
            zone.upsert(
                Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)),
                SERIAL
            )
            .await
        );
        let zone = Arc::new(zone);

        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let mut server = Server::new(catalog);

        // A random UDP port that is also free for TCP.
        let mut bound = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("no port free for both UDP and TCP");
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        TestDns {
            addr,
            zone,
            _server: server,
        }
    }

    /// Adds `vpp-<i>` as a target of the SRV record (and its A record).
    async fn add_member(&self, i: usize) {
        let target = Name::from_str(&format!("vpp-{i}.{ZONE}")).unwrap();
        self.add_srv(target.clone(), 7070).await;
        let a = A(Ipv4Addr::LOCALHOST);
        assert!(
            self.zone
                .upsert(Record::from_rdata(target, TTL, RData::A(a)), SERIAL)
                .await
        );
    }

    /// Adds `target` (a full name, e.g. `localhost.`) at `port` to the SRV
    /// record.
    async fn add_target(&self, target: &str, port: u16) {
        self.add_srv(Name::from_str(target).unwrap(), port).await;
    }

    /// Adds `target` at `port` to the SRV record.
    async fn add_srv(&self, target: Name, port: u16) {
        let srv = SRV::new(0, 0, port, target);
        let srv_name = Name::from_str(&format!("{SRV_NAME}.")).unwrap();
        assert!(
            self.zone
                .upsert(Record::from_rdata(srv_name, TTL, RData::SRV(srv)), SERIAL)
                .await
        );
    }

    /// The error discovery of `size` members under `SRV_NAME` ends with.
    async fn refusal(&self, size: usize) -> String {
        discover(
            &self.seeds(SRV_NAME, size),
            POLL,
            Duration::from_secs(2),
            &mut |_| {},
        )
        .await
        .unwrap_err()
    }

    fn seeds(&self, srv: &str, size: usize) -> DnsSeeds {
        DnsSeeds {
            srv: srv.to_string(),
            size,
            server: Some(self.addr),
        }
    }
}

fn expected(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("vpp-{i}@vpp-{i}.vpp-peers.default.svc.cluster.local:7070"))
        .collect()
}

const POLL: Duration = Duration::from_millis(50);

#[tokio::test]
async fn finds_all_members() {
    let dns = TestDns::start().await;
    // Added out of order: the result is sorted anyway.
    for i in [2, 0, 1] {
        dns.add_member(i).await;
    }
    let mut messages = Vec::new();
    let members = discover(
        &dns.seeds(SRV_NAME, 3),
        POLL,
        Duration::from_secs(2),
        &mut |m| messages.push(m.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(members, expected(3));
    assert!(messages.is_empty(), "{messages:?}");
}

#[tokio::test]
async fn fully_qualified_name_works_too() {
    let dns = TestDns::start().await;
    dns.add_member(0).await;
    let members = discover(
        &dns.seeds(&format!("{SRV_NAME}."), 1),
        POLL,
        Duration::from_secs(2),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(members, expected(1));
}

#[tokio::test]
async fn waits_for_the_last_member() {
    let dns = Arc::new(TestDns::start().await);
    dns.add_member(0).await;
    dns.add_member(1).await;
    let late = dns.clone();
    let adder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        late.add_member(2).await;
    });

    let started = std::time::Instant::now();
    let mut messages = Vec::new();
    let members = discover(
        &dns.seeds(SRV_NAME, 3),
        POLL,
        Duration::from_secs(3),
        &mut |m| messages.push(m.to_string()),
    )
    .await
    .unwrap();
    adder.await.unwrap();

    assert_eq!(members, expected(3));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Reported once, not on every poll.
    assert_eq!(
        messages,
        vec![format!(
            "dns: {SRV_NAME} lists 2 of 3 members (vpp-0, vpp-1); waiting"
        )]
    );
}

#[tokio::test]
async fn times_out_with_what_it_saw() {
    let dns = TestDns::start().await;
    dns.add_member(0).await;
    let started = std::time::Instant::now();
    let mut messages = Vec::new();
    let err = discover(
        &dns.seeds(SRV_NAME, 3),
        POLL,
        Duration::from_secs(1),
        &mut |m| messages.push(m.to_string()),
    )
    .await
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(err.contains(SRV_NAME), "{err}");
    assert!(err.contains("1 of 3 members (vpp-0)"), "{err}");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("1 of 3"), "{messages:?}");
}

#[tokio::test]
async fn more_targets_than_size_is_an_error() {
    let dns = TestDns::start().await;
    for i in 0..4 {
        dns.add_member(i).await;
    }
    let err = dns.refusal(3).await;
    assert!(err.contains(SRV_NAME), "{err}");
    assert!(
        err.contains("4 members (vpp-0, vpp-1, vpp-2, vpp-3)"),
        "{err}"
    );
    assert!(err.contains("cluster size is 3"), "{err}");
    assert!(err.contains("replicas"), "{err}");
}

#[tokio::test]
async fn missing_name_keeps_waiting_then_times_out() {
    let dns = TestDns::start().await;
    dns.add_member(0).await;
    let srv = "_other._tcp.vpp-peers.default.svc.cluster.local";
    let mut messages = Vec::new();
    let err = discover(&dns.seeds(srv, 3), POLL, Duration::from_secs(1), &mut |m| {
        messages.push(m.to_string())
    })
    .await
    .unwrap_err();
    assert!(err.contains(srv), "{err}");
    assert!(err.contains("0 of 3"), "{err}");
    assert!(err.contains("NXDOMAIN"), "{err}");
    assert_eq!(
        messages,
        vec![format!("dns: {srv} does not exist yet (NXDOMAIN); waiting")]
    );
}

#[tokio::test]
async fn same_first_label_is_an_error() {
    let dns = TestDns::start().await;
    dns.add_member(0).await;
    dns.add_target(&format!("vpp-0.other.{ZONE}"), 7070).await;
    let err = dns.refusal(2).await;
    assert!(err.contains(SRV_NAME), "{err}");
    assert!(err.contains("same first label \"vpp-0\""), "{err}");
}

#[tokio::test]
async fn bad_first_label_is_an_error() {
    let dns = TestDns::start().await;
    // Not a valid host name, so built from raw labels.
    let labels = ["vpp*0", "vpp-peers", "default", "svc", "cluster", "local"];
    let bad = Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap();
    dns.add_srv(bad, 7070).await;
    let err = dns.refusal(1).await;
    assert!(err.contains(SRV_NAME), "{err}");
    assert!(err.contains("not a valid member name"), "{err}");
}

#[tokio::test]
async fn size_zero_and_empty_name_fail_at_once() {
    // No server at all: nothing may be asked.
    let seeds = |srv: &str, size| DnsSeeds {
        srv: srv.to_string(),
        size,
        server: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9)),
    };
    let err = discover(
        &seeds(SRV_NAME, 0),
        POLL,
        Duration::from_secs(5),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.contains(SRV_NAME) && err.contains("size"), "{err}");
    let err = discover(&seeds("  ", 3), POLL, Duration::from_secs(5), &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.contains("SRV record name is empty"), "{err}");
}

/// `vpp serve` with `VPP_CLUSTER_MEMBERS_DNS` pointed at `dns`, in `dir`.
fn serve_from_dns(
    dir: &std::path::Path,
    dns: SocketAddr,
    node: &str,
    size: usize,
    cluster_port: u16,
    api_port: u16,
) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vpp"));
    c.arg("--data-dir")
        .arg(dir)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{api_port}"),
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .env("VPP_LOG", "warn")
        .env("VPP_CLUSTER_NODE", node)
        .env("VPP_CLUSTER_MEMBERS_DNS", SRV_NAME)
        .env("VPP_CLUSTER_SIZE", size.to_string())
        .env("VPP_CLUSTER_DNS_SERVER", dns.to_string())
        .env("VPP_CLUSTER_LISTEN", format!("127.0.0.1:{cluster_port}"))
        .env("VPP_CLUSTER_COOKIE", "dns-test-cookie")
        .env_remove("VPP_NODE")
        .env_remove("VPP_DATA_DIR")
        .env_remove("VPP_CLUSTER_MEMBERS");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_dns_writes_nothing_meanwhile_then_joins_as_listed() {
    use std::io::{BufRead, BufReader};
    let dns = TestDns::start().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let port = common::mosquitto::free_port_pair();
    let api = common::mosquitto::free_port();
    let mut child = serve_from_dns(&dir, dns.addr, "localhost", 1, port, api)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines = out.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(l);
        }
    });
    let printed = |needle: &str| out.lock().unwrap().iter().any(|l| l.contains(needle));
    // The record does not exist yet: the node says so and waits, with
    // nothing written.
    let waiting = tokio::task::block_in_place(|| {
        common::eventually(20, || printed("does not exist yet").then_some(()));
        std::thread::sleep(Duration::from_millis(600));
        child.try_wait().unwrap()
    });
    assert!(waiting.is_none(), "the node waits for DNS");
    assert!(
        !dir.exists(),
        "nothing written before the members are known"
    );
    // The member appears (pointing at this node): it starts and leads.
    dns.add_target("localhost.", port).await;
    let view = tokio::task::block_in_place(|| {
        let token = common::eventually(40, || {
            std::fs::read_to_string(dir.join("operator.token"))
                .ok()
                .filter(|t| !t.trim().is_empty())
        });
        common::eventually(30, || {
            let (s, v) = common::request_as(
                Some(token.trim()),
                "GET",
                &format!("http://127.0.0.1:{api}/api/v1/cluster"),
                None,
            );
            (s == 200 && v["role"] == "leader").then_some(v)
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        printed(&format!("dns: members localhost@localhost:{port}")),
        "{:?}",
        out.lock().unwrap()
    );
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{view}");
    assert_eq!(members[0]["name"], "localhost", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_dns_listing_it_cannot_use_and_writes_nothing() {
    let dns = TestDns::start().await;
    for i in 0..3 {
        dns.add_member(i).await;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    // Three listed, two expected: refused at once, naming them.
    let out = tokio::task::block_in_place(|| {
        serve_from_dns(&dir, dns.addr, "vpp-0", 2, 1, 1)
            .output()
            .unwrap()
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cluster.members_dns") && err.contains("vpp-0, vpp-1, vpp-2"),
        "{err}"
    );
    // Listed, but this node's name is not among them.
    let out = tokio::task::block_in_place(|| {
        serve_from_dns(&dir, dns.addr, "vpp-7", 3, 1, 1)
            .output()
            .unwrap()
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("\"vpp-7\"") && err.contains("not among the members"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing written on a refused start");
}
