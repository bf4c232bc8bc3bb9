//! Cluster member discovery through DNS SRV records.
//!
//! In Kubernetes a headless Service (e.g. `vpp-peers`, with `publishNotReadyAddresses: true` and a
//! port named `cluster`) publishes one SRV record per pod under
//! `_cluster._tcp.vpp-peers.<namespace>.svc.cluster.local`, whose targets are the pods' stable
//! names (`vpp-0.vpp-peers.<namespace>.svc.cluster.local.`) and whose port is the cluster port.
//!
//! [`discover`] polls that record until it lists exactly the expected number of members and turns
//! it into the same `name@host:port` strings that a static member list uses, e.g.
//! `vpp-0@vpp-0.vpp-peers.default.svc.cluster.local:7070`.
//!
//! Pods appear one by one, so a missing name (NXDOMAIN), an empty record set or a transient lookup
//! error only means "keep waiting"; configuration mistakes (more targets than the cluster size,
//! duplicate or unusable member names) fail at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

/// Where to find the members in DNS.
#[derive(Debug, Clone)]
pub struct DnsSeeds {
    /// SRV record name, e.g. "_cluster._tcp.vpp-peers.default.svc.cluster.local".
    ///
    /// A name without a trailing dot goes through the resolver's search list (so with the system
    /// configuration inside a pod, `_cluster._tcp.vpp-peers` also works); a trailing dot makes it
    /// fully qualified.
    pub srv: String,
    /// How many members the cluster has; discovery waits until it sees exactly this many.
    pub size: usize,
    /// Name server to ask (host:port); None = the system's resolver config (/etc/resolv.conf).
    pub server: Option<SocketAddr>,
}

/// The shortest interval between two lookups, whatever `poll` says.
const MIN_POLL: Duration = Duration::from_millis(10);

/// One cluster member as read from an SRV target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    /// First DNS label of the target (`vpp-0`).
    name: String,
    /// Target without its trailing dot (`vpp-0.vpp-peers.default.svc.cluster.local`).
    host: String,
    /// SRV port.
    port: u16,
}

impl Member {
    /// The member in the static configuration's `name@host:port` form.
    fn seed(&self) -> String {
        format!("{}@{}:{}", self.name, self.host, self.port)
    }
}

/// What one lookup showed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The record exists and lists these members (sorted by name, possibly none).
    Members(Vec<Member>),
    /// The name does not exist (NXDOMAIN).
    NoSuchName,
    /// The lookup failed for another reason (timeout, SERVFAIL, no name server, ...).
    Failed(String),
}

/// Asks DNS for the SRV record every `poll` until it lists `size` distinct targets, or fails after `timeout`.
///
/// Returns the members sorted by name as "name@host:port", where host is the SRV target without its
/// trailing dot, port is the SRV port and name is the target's first DNS label (vpp-0). Names are
/// compared and returned in lower case, as DNS names are case-insensitive; the sort is a plain
/// string sort (`vpp-10` comes before `vpp-2`), the same on every member.
///
/// `progress` is called with a one-line human message each time what was seen changes (e.g.
/// "dns: _cluster._tcp.vpp-peers... lists 2 of 3 members (vpp-0, vpp-1); waiting") and on lookup errors
/// (NXDOMAIN / no records is "waiting", not fatal, since pods appear one by one).
///
/// The resolver's cache is disabled, so every poll asks the name server again. A `poll` shorter
/// than 10 ms is treated as 10 ms.
///
/// # Errors
///
/// One sentence naming the SRV name, for: a timeout (saying how many of how many members were seen,
/// and which), more than `size` targets (naming them), two targets with the same first label, a
/// first label that is not made of letters, digits, `-` and `_`, a size of 0, an empty or invalid
/// SRV name, or a system resolver configuration that cannot be read.
pub async fn discover(
    seeds: &DnsSeeds,
    poll: Duration,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<String>, String> {
    let srv = seeds.srv.trim();
    if srv.is_empty() {
        return Err("dns: the SRV record name is empty; set it to e.g. \
                    _cluster._tcp.vpp-peers.<namespace>.svc.cluster.local"
            .to_string());
    }
    if seeds.size == 0 {
        return Err(format!(
            "dns: the cluster size for {srv} is 0; it must be at least 1"
        ));
    }
    let name = Name::from_utf8(srv)
        .map_err(|e| format!("dns: the SRV record name {srv:?} is not a valid DNS name: {e}"))?;
    let resolver = build_resolver(seeds.server, srv)?;

    let poll = poll.max(MIN_POLL);
    let deadline = Instant::now() + timeout;
    let mut last: Option<Seen> = None;
    let mut last_message = String::new();
    loop {
        // Belt and braces: the cache is already disabled in the options.
        resolver.clear_cache();
        let lookup = tokio::time::timeout_at(deadline, resolver.srv_lookup(name.clone())).await;
        if let Ok(result) = lookup {
            let seen = interpret(srv, result)?;
            if let Seen::Members(members) = &seen {
                if members.len() > seeds.size {
                    return Err(format!(
                        "dns: {srv} lists {} members ({}) but the cluster size is {}; \
                         set the cluster size to match the number of replicas",
                        members.len(),
                        names(members),
                        seeds.size
                    ));
                }
                if members.len() == seeds.size {
                    return Ok(members.iter().map(Member::seed).collect());
                }
            }
            let message = describe(srv, seeds.size, &seen);
            if message != last_message {
                progress(&message);
                last_message = message;
            }
            last = Some(seen);
        }

        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(srv, seeds.size, timeout, last.as_ref()));
        }
        tokio::time::sleep_until((now + poll).min(deadline)).await;
        if Instant::now() >= deadline {
            return Err(timed_out(srv, seeds.size, timeout, last.as_ref()));
        }
    }
}

/// Builds a resolver without a cache, asking `server` over UDP and TCP, or the system's name
/// servers when `server` is `None`.
fn build_resolver(server: Option<SocketAddr>, srv: &str) -> Result<TokioResolver, String> {
    let mut builder = match server {
        Some(addr) => {
            let mut name_server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut name_server.connections {
                connection.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![name_server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            format!("dns: cannot read the system resolver configuration to look up {srv}: {e}")
        })?,
    };
    disable_cache(builder.options_mut());
    builder
        .build()
        .map_err(|e| format!("dns: cannot create a resolver to look up {srv}: {e}"))
}

/// Makes every lookup go to the name server, so that repeated polls see new records.
fn disable_cache(options: &mut ResolverOpts) {
    options.cache_size = 0;
    options.positive_min_ttl = Some(Duration::ZERO);
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_min_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
}

/// Turns one lookup's result into what was seen, or a fatal configuration error.
fn interpret(
    srv: &str,
    result: Result<hickory_resolver::lookup::Lookup, NetError>,
) -> Result<Seen, String> {
    let lookup = match result {
        Ok(lookup) => lookup,
        Err(e) if e.is_nx_domain() => return Ok(Seen::NoSuchName),
        Err(e) if e.is_no_records_found() => return Ok(Seen::Members(Vec::new())),
        Err(e) => return Ok(Seen::Failed(e.to_string())),
    };

    // Distinct targets; an answer may also hold CNAMEs or repeat a record.
    let targets: BTreeSet<(Name, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some((srv.target.to_lowercase(), srv.port)),
            _ => None,
        })
        // A target of "." means "no service here", not a member.
        .filter(|(target, _)| !target.is_root())
        .collect();

    let mut by_name: BTreeMap<String, Member> = BTreeMap::new();
    for (target, port) in targets {
        let member = member(srv, &target, port)?;
        if let Some(other) = by_name.get(&member.name) {
            return Err(format!(
                "dns: {srv} lists two targets with the same first label {:?} ({} and {}); \
                 each member needs a name of its own",
                member.name, other.host, member.host
            ));
        }
        by_name.insert(member.name.clone(), member);
    }
    Ok(Seen::Members(by_name.into_values().collect()))
}

/// Reads one SRV target as a member, checking that its first label is usable as a member name.
fn member(srv: &str, target: &Name, port: u16) -> Result<Member, String> {
    let host = target.to_ascii();
    let host = host.strip_suffix('.').unwrap_or(&host).to_string();
    let label = target.iter().next().unwrap_or_default();
    let valid = !label.is_empty()
        && label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    match std::str::from_utf8(label) {
        Ok(name) if valid => Ok(Member {
            name: name.to_string(),
            host,
            port,
        }),
        _ => Err(format!(
            "dns: {srv} lists target {host} whose first label is not a valid member name \
             (only letters, digits, '-' and '_' are allowed)"
        )),
    }
}

/// The names of `members`, comma separated.
fn names(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The progress line for what one lookup showed.
fn describe(srv: &str, size: usize, seen: &Seen) -> String {
    match seen {
        Seen::Members(members) if members.is_empty() => {
            format!("dns: {srv} lists 0 of {size} members; waiting")
        }
        Seen::Members(members) => format!(
            "dns: {srv} lists {} of {size} members ({}); waiting",
            members.len(),
            names(members)
        ),
        Seen::NoSuchName => format!("dns: {srv} does not exist yet (NXDOMAIN); waiting"),
        Seen::Failed(error) => format!("dns: looking up {srv} failed: {error}; retrying"),
    }
}

/// The error for a discovery that ran out of time, saying what was seen last.
fn timed_out(srv: &str, size: usize, timeout: Duration, last: Option<&Seen>) -> String {
    let seen = match last {
        Some(Seen::Members(members)) if members.is_empty() => {
            format!("it listed 0 of {size} members")
        }
        Some(Seen::Members(members)) => format!(
            "it listed {} of {size} members ({})",
            members.len(),
            names(members)
        ),
        Some(Seen::NoSuchName) => {
            format!("0 of {size} members: the name does not exist (NXDOMAIN)")
        }
        Some(Seen::Failed(error)) => {
            format!("0 of {size} members: the last lookup failed: {error}")
        }
        None => format!("0 of {size} members: no lookup answered in time"),
    };
    format!(
        "dns: gave up waiting for {size} members in {srv} after {:?}; {seen}",
        timeout
    )
}
