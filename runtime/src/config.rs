//! Node configuration: a typed TOML file with every key defaulted.
//!
//! Parsed once at start-up into `deny_unknown_fields` structs and validated;
//! an error names the key. The defaults live in `config/vpp.toml`, embedded in
//! the binary and printed by `vpp config default`. Environment overrides come
//! in as a map so tests never touch the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::mqtt::{BrokerUrl, MqttError};

/// The default configuration, as shipped.
pub const DEFAULT_TOML: &str = include_str!("../config/vpp.toml");

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What toml said (names the key and position).
        message: String,
    },
    /// A value out of range.
    #[error("config key {key}: {message}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `[rollup]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupConfig {
    /// See `config/vpp.toml`.
    pub interval_ms: u64,
}

/// `[dispatch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// See `config/vpp.toml`.
    pub timeout_s: u64,
    /// See `config/vpp.toml`.
    pub max_resplits: u32,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// See `config/vpp.toml`.
    pub cache_mb: u64,
    /// See `config/vpp.toml`.
    pub flush_every_ms: u64,
    /// See `config/vpp.toml`.
    pub write_behind_ms: u64,
    /// See `config/vpp.toml`.
    pub write_behind_nice: i32,
    /// See `config/vpp.toml`.
    pub write_behind_defer_ms: u64,
    /// See `config/vpp.toml`.
    pub telemetry_persist_s: u64,
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// See `config/vpp.toml`.
    pub max_body_mb: u64,
}

/// `[programs]`: demand-flexibility programs and events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramsConfig {
    /// See `config/vpp.toml`.
    pub quorum: u32,
    /// See `config/vpp.toml`.
    pub tick_ms: u64,
}

impl Default for ProgramsConfig {
    fn default() -> Self {
        Self {
            quorum: 2,
            tick_ms: 500,
        }
    }
}

/// `[metering]`: interval meter data from telemetry (`metering.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeteringConfig {
    /// Interval length, s; divides a day. See `config/vpp.toml`.
    pub interval_s: u32,
    /// Which sites are metered. See `config/vpp.toml`.
    pub sites: MeteredSites,
}

/// `metering.sites`: which sites telemetry is metered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeteredSites {
    /// Only sites under an active enrollment (the programs layer names them).
    Enrolled,
    /// Every site that sends telemetry.
    All,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            interval_s: 300,
            sites: MeteredSites::Enrolled,
        }
    }
}

/// `[mqtt]`: how the node reaches its devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `"embedded"` or `"mqtt://host:port"`. See `config/vpp.toml`.
    pub broker: BrokerChoice,
    /// The embedded broker's MQTT listener (ignored for an external broker).
    pub listen: SocketAddr,
    /// rumqttd config file of the embedded broker; empty = the shipped
    /// default (`vpp config broker`).
    pub broker_config: PathBuf,
    /// The node's MQTT client id.
    pub client_id: String,
    /// A DER whose device has sent no telemetry for this long goes offline
    /// and leaves the envelope, s.
    pub offline_after_s: u64,
    /// Publish one site document per site (`vpp/v1/{shard}/{site}/desired`,
    /// every DER's desired document in one retained message, device
    /// protocol §3.7) instead of a document per DER.
    pub site_documents: bool,
}

/// Which broker the node uses: its own or another one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BrokerChoice {
    /// Start rumqttd in the node (`"embedded"`).
    Embedded,
    /// Connect to this broker (`"mqtt://host:port"`).
    External(BrokerUrl),
}

impl FromStr for BrokerChoice {
    type Err = MqttError;

    fn from_str(s: &str) -> Result<Self, MqttError> {
        if s == "embedded" {
            Ok(BrokerChoice::Embedded)
        } else {
            s.parse().map(BrokerChoice::External)
        }
    }
}

impl TryFrom<String> for BrokerChoice {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
            .map_err(|e| format!("mqtt.broker must be \"embedded\" or mqtt://host:port: {e}"))
    }
}

impl std::fmt::Display for BrokerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerChoice::Embedded => f.write_str("embedded"),
            BrokerChoice::External(url) => url.fmt(f),
        }
    }
}

impl MqttConfig {
    /// The embedded broker's rumqttd config: the `broker_config` file, or the
    /// shipped default when that is empty. Errors name the file and key.
    pub fn load_broker_config(&self) -> Result<rumqttd::Config, MqttError> {
        if self.broker_config.as_os_str().is_empty() {
            crate::mqtt::default_broker_config()
        } else {
            crate::mqtt::load_broker_config(&self.broker_config)
        }
    }
}

/// `[cluster]`: empty `node` = a single node (the default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, one of `members` (e.g. a StatefulSet pod name).
    pub node: String,
    /// Every member as `name@host:port` (the cluster RPC address).
    pub members: Vec<String>,
    /// Instead of `members`: a DNS SRV record listing them (a Kubernetes
    /// headless Service's `_cluster._tcp.<service>`), read at start
    /// (`cluster/discovery.rs`).
    pub members_dns: String,
    /// With `members_dns`: how many members the cluster has; the node waits
    /// until DNS lists that many.
    pub size: usize,
    /// With `members_dns`: the name server to ask (`ip:port`); empty = the
    /// system's (`/etc/resolv.conf`).
    pub dns_server: String,
    /// Where the cluster RPC listener binds.
    pub listen: SocketAddr,
    /// Shared secret every member presents.
    pub cookie: String,
    /// Leader heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for this long (plus up to as much
    /// again, at random) calls an election, ms.
    pub election_timeout_ms: u64,
    /// The leader gives a member's shards to the others after this long
    /// without an answer to its pings; a member stops acting for its shards
    /// after this long without a ping from the leader, ms.
    pub detect_ms: u64,
    /// Device topics this member subscribes to: `shards` (only its own
    /// shards' topics, four filters per shard) or `all` (four wildcard
    /// filters; messages for other members' sites are left alone). `all`
    /// suits brokers whose routing cost grows with the number of filters,
    /// such as rumqttd with 100k+ devices.
    pub subscribe: String,
    /// `[cluster.tls]`: mutual TLS between members; off while empty.
    pub tls: ClusterTlsConfig,
}

/// `[cluster.tls]`: PEM files for mutual TLS on the cluster port and the
/// actor mesh (`cluster/tls.rs`). All three or none; `vpp cluster certs`
/// writes a set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTlsConfig {
    /// This member's certificate chain (its host must be among the names).
    pub cert: PathBuf,
    /// This member's private key.
    pub key: PathBuf,
    /// The CA that signed every member's certificate.
    pub ca: PathBuf,
}

impl ClusterTlsConfig {
    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node: String::new(),
            members: Vec::new(),
            members_dns: String::new(),
            size: 0,
            dns_server: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            cookie: String::new(),
            heartbeat_ms: 250,
            election_timeout_ms: 1500,
            detect_ms: 3000,
            subscribe: "shards".into(),
            tls: ClusterTlsConfig::default(),
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// HTTP API address.
    pub listen: SocketAddr,
    /// sled directory.
    pub data_dir: PathBuf,
    /// Roll-up tuning.
    pub rollup: RollupConfig,
    /// Dispatch tuning.
    pub dispatch: DispatchConfig,
    /// Store tuning.
    pub store: StoreConfig,
    /// API limits.
    pub api: ApiConfig,
    /// Devices over MQTT.
    pub mqtt: MqttConfig,
    /// Interval meter data from telemetry.
    pub metering: MeteringConfig,
    /// Programs, events, approvals.
    pub programs: ProgramsConfig,
    /// Replication across nodes (`cluster.rs`).
    pub cluster: ClusterConfig,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self { interval_ms: 100 }
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            timeout_s: 30,
            max_resplits: 3,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_mb: 256,
            flush_every_ms: 500,
            write_behind_ms: 200,
            write_behind_nice: 0,
            telemetry_persist_s: 30,
            write_behind_defer_ms: 1000,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { max_body_mb: 256 }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            broker: BrokerChoice::Embedded,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            broker_config: PathBuf::new(),
            client_id: "vpp-runtime".to_string(),
            offline_after_s: 60,
            site_documents: false,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            rollup: RollupConfig::default(),
            dispatch: DispatchConfig::default(),
            store: StoreConfig::default(),
            api: ApiConfig::default(),
            mqtt: MqttConfig::default(),
            metering: MeteringConfig::default(),
            programs: ProgramsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Parses TOML text (`origin` names it in errors) and validates it.
    pub fn parse(origin: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Applies `VPP_LISTEN` and `VPP_DATA_DIR` from `env`.
    pub fn with_env(mut self, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        if let Some(v) = env.get("VPP_LISTEN") {
            self.listen = v.parse().map_err(|e| ConfigError::Invalid {
                key: "listen (VPP_LISTEN)",
                message: format!("{v:?} is not an address like 127.0.0.1:8080: {e}"),
            })?;
        }
        if let Some(v) = env.get("VPP_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("VPP_CLUSTER_NODE") {
            self.cluster.node = v.clone();
        }
        if let Some(v) = env.get("VPP_CLUSTER_MEMBERS") {
            self.cluster.members = v
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = env.get("VPP_CLUSTER_LISTEN") {
            self.cluster.listen = v.parse().map_err(|e| ConfigError::Invalid {
                key: "cluster.listen (VPP_CLUSTER_LISTEN)",
                message: format!("{v:?} is not an address like 0.0.0.0:7070: {e}"),
            })?;
        }
        if let Some(v) = env.get("VPP_CLUSTER_COOKIE") {
            self.cluster.cookie = v.clone();
        }
        if let Some(v) = env.get("VPP_CLUSTER_SUBSCRIBE") {
            self.cluster.subscribe = v.clone();
        }
        if let Some(v) = env.get("VPP_CLUSTER_MEMBERS_DNS") {
            self.cluster.members_dns = v.trim().to_string();
        }
        if let Some(v) = env.get("VPP_CLUSTER_SIZE") {
            self.cluster.size = v.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "cluster.size (VPP_CLUSTER_SIZE)",
                message: format!("{v:?} is not a number of members"),
            })?;
        }
        if let Some(v) = env.get("VPP_CLUSTER_DNS_SERVER") {
            self.cluster.dns_server = v.trim().to_string();
        }
        for (var, file) in [
            ("VPP_CLUSTER_TLS_CERT", &mut self.cluster.tls.cert),
            ("VPP_CLUSTER_TLS_KEY", &mut self.cluster.tls.key),
            ("VPP_CLUSTER_TLS_CA", &mut self.cluster.tls.ca),
        ] {
            if let Some(v) = env.get(var) {
                *file = PathBuf::from(v);
            }
        }
        if let Some(v) = env.get("VPP_CLUSTER_DETECT_MS") {
            self.cluster.detect_ms = v.parse().map_err(|_| ConfigError::Invalid {
                key: "cluster.detect_ms (VPP_CLUSTER_DETECT_MS)",
                message: format!("{v:?} is not a number of milliseconds"),
            })?;
        }
        if let Some(v) = env.get("VPP_MQTT_SITE_DOCUMENTS") {
            self.mqtt.site_documents = v.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "mqtt.site_documents (VPP_MQTT_SITE_DOCUMENTS)",
                message: format!("{v:?} is neither true nor false"),
            })?;
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if !(1..=60_000).contains(&self.rollup.interval_ms) {
            return bad("rollup.interval_ms", "must be between 1 and 60000");
        }
        if !(1..=3600).contains(&self.dispatch.timeout_s) {
            return bad("dispatch.timeout_s", "must be between 1 and 3600");
        }
        if self.dispatch.max_resplits > 100 {
            return bad("dispatch.max_resplits", "must be at most 100");
        }
        if !(1..=1_000_000).contains(&self.store.cache_mb) {
            return bad("store.cache_mb", "must be between 1 and 1000000");
        }
        if !(1..=60_000).contains(&self.store.flush_every_ms) {
            return bad("store.flush_every_ms", "must be between 1 and 60000");
        }
        if !(1..=60_000).contains(&self.store.write_behind_ms) {
            return bad("store.write_behind_ms", "must be between 1 and 60000");
        }
        if !(0..=19).contains(&self.store.write_behind_nice) {
            return bad("store.write_behind_nice", "must be between 0 and 19");
        }
        if self.store.telemetry_persist_s > 3600 {
            return bad("store.telemetry_persist_s", "must be between 0 and 3600");
        }
        if self.store.write_behind_defer_ms > 60_000 {
            return bad("store.write_behind_defer_ms", "must be between 0 and 60000");
        }
        if !(1..=4096).contains(&self.api.max_body_mb) {
            return bad("api.max_body_mb", "must be between 1 and 4096");
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        if !(1..=86_400).contains(&self.mqtt.offline_after_s) {
            return bad("mqtt.offline_after_s", "must be between 1 and 86400");
        }
        if !(1..=10).contains(&self.programs.quorum) {
            return bad("programs.quorum", "must be between 1 and 10");
        }
        if !(10..=60_000).contains(&self.programs.tick_ms) {
            return bad("programs.tick_ms", "must be between 10 and 60000");
        }
        let i = self.metering.interval_s;
        if i == 0 || 86_400 % i != 0 {
            return bad(
                "metering.interval_s",
                "must be at least 1 and divide a day (86400 s) evenly, e.g. 300 or 900",
            );
        }
        if let Err(e) = crate::mqtt::check_client_id(&self.mqtt.client_id) {
            return bad("mqtt.client_id", &e.to_string());
        }
        if !matches!(self.cluster.subscribe.as_str(), "shards" | "all") {
            return bad("cluster.subscribe", "must be \"shards\" or \"all\"");
        }
        if !(500..=60_000).contains(&self.cluster.detect_ms) {
            return bad("cluster.detect_ms", "must be between 500 and 60000");
        }
        if !(10..=10_000).contains(&self.cluster.heartbeat_ms) {
            return bad("cluster.heartbeat_ms", "must be between 10 and 10000");
        }
        if self.cluster.election_timeout_ms < 3 * self.cluster.heartbeat_ms
            || self.cluster.election_timeout_ms > 60_000
        {
            return bad(
                "cluster.election_timeout_ms",
                "must be at least 3 heartbeats (cluster.heartbeat_ms) and at most 60000",
            );
        }
        let tls = &self.cluster.tls;
        let set = [&tls.cert, &tls.key, &tls.ca].map(|p| !p.as_os_str().is_empty());
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return bad(
                "cluster.tls",
                "set cert, key and ca together (VPP_CLUSTER_TLS_CERT, _KEY, _CA), or none of them",
            );
        }
        let c = &self.cluster;
        if !c.members_dns.is_empty() {
            if !c.members.is_empty() {
                return bad(
                    "cluster.members_dns",
                    "set either cluster.members (VPP_CLUSTER_MEMBERS) or cluster.members_dns \
                     (VPP_CLUSTER_MEMBERS_DNS), not both",
                );
            }
            if !(1..=64).contains(&c.size) {
                return bad(
                    "cluster.size",
                    "must be between 1 and 64 with cluster.members_dns: the number of members (replicas)",
                );
            }
        }
        if !c.dns_server.is_empty() && c.dns_server.parse::<SocketAddr>().is_err() {
            return bad(
                "cluster.dns_server",
                "must be an address like 10.96.0.10:53, or empty for the system's resolver",
            );
        }
        if !c.node.is_empty() && c.members_dns.is_empty() {
            if let Err(message) = crate::cluster::Members::parse(c) {
                return bad("cluster.members", &message);
            }
        }
        Ok(())
    }

    /// The node's MQTT client id. Cluster members that keep the default get
    /// their name appended, so that members sharing a broker do not take
    /// each other's session.
    pub fn mqtt_client_id(&self) -> String {
        if self.cluster.node.is_empty() || self.mqtt.client_id != MqttConfig::default().client_id {
            return self.mqtt.client_id.clone();
        }
        format!(
            "{}-{}",
            self.mqtt.client_id,
            self.cluster.node.replace('.', "-")
        )
    }

    /// The actor-hierarchy tunables.
    pub fn fleet(&self) -> vpp_actors::FleetConfig {
        vpp_actors::FleetConfig {
            rollup_interval: Duration::from_millis(self.rollup.interval_ms),
            dispatch_timeout: Duration::from_secs(self.dispatch.timeout_s),
            max_resplits: self.dispatch.max_resplits,
            offline_after: Duration::from_secs(self.mqtt.offline_after_s),
            telemetry_persist_every: Duration::from_secs(self.store.telemetry_persist_s),
            ..vpp_actors::FleetConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_parses_and_matches_code_defaults() {
        let c = NodeConfig::parse("default", DEFAULT_TOML).unwrap();
        let d = NodeConfig::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.rollup.interval_ms, d.rollup.interval_ms);
        assert_eq!(c.dispatch.timeout_s, d.dispatch.timeout_s);
        assert_eq!(c.store.cache_mb, d.store.cache_mb);
        assert_eq!(c.store.write_behind_nice, d.store.write_behind_nice);
        assert_eq!(c.store.write_behind_defer_ms, d.store.write_behind_defer_ms);
        assert_eq!(c.store.telemetry_persist_s, d.store.telemetry_persist_s);
        assert_eq!(c.mqtt.site_documents, d.mqtt.site_documents);
        assert_eq!(c.api.max_body_mb, d.api.max_body_mb);
        assert_eq!(c.mqtt.broker, d.mqtt.broker);
        assert_eq!(c.mqtt.listen, d.mqtt.listen);
        assert_eq!(c.mqtt.broker_config, d.mqtt.broker_config);
        assert_eq!(c.mqtt.client_id, d.mqtt.client_id);
        assert_eq!(c.metering.interval_s, d.metering.interval_s);
        assert_eq!(c.metering.sites, d.metering.sites);
    }

    #[test]
    fn bad_cluster_values_are_named() {
        let d = NodeConfig::parse("default", DEFAULT_TOML).unwrap();
        assert_eq!(d.cluster.detect_ms, NodeConfig::default().cluster.detect_ms);
        assert_eq!(d.cluster.subscribe, NodeConfig::default().cluster.subscribe);
        for (text, needle) in [
            ("[cluster]\ndetect_ms = 100\n", "cluster.detect_ms"),
            ("[cluster]\ndetect_ms = 600000\n", "cluster.detect_ms"),
            ("[cluster]\nsubscribe = \"some\"\n", "cluster.subscribe"),
            ("[cluster.tls]\ncert = \"n1.crt\"\n", "cluster.tls"),
            ("[cluster.tls]\ncertificate = \"n1.crt\"\n", "certificate"),
            (
                "[cluster]\nmembers = [\"a@h:1\"]\nmembers_dns = \"_c._tcp.p\"\nsize = 1\n",
                "not both",
            ),
        ] {
            let e = NodeConfig::parse("x.toml", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        for (key, value, needle) in [
            ("VPP_CLUSTER_DETECT_MS", "soon", "VPP_CLUSTER_DETECT_MS"),
            ("VPP_CLUSTER_DETECT_MS", "10", "cluster.detect_ms"),
            ("VPP_CLUSTER_SUBSCRIBE", "mine", "cluster.subscribe"),
            ("VPP_CLUSTER_TLS_KEY", "n1.key", "cluster.tls"),
            (
                "VPP_CLUSTER_MEMBERS_DNS",
                "_cluster._tcp.vpp-peers",
                "cluster.size",
            ),
            ("VPP_CLUSTER_SIZE", "three", "VPP_CLUSTER_SIZE"),
            ("VPP_CLUSTER_DNS_SERVER", "kube-dns", "cluster.dns_server"),
            ("VPP_MQTT_SITE_DOCUMENTS", "yes", "VPP_MQTT_SITE_DOCUMENTS"),
        ] {
            let env = HashMap::from([(key.to_string(), value.to_string())]);
            let e = NodeConfig::default()
                .with_env(&env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{key}={value}: {e}");
        }
        let env = HashMap::from([
            ("VPP_CLUSTER_DETECT_MS".to_string(), "10000".to_string()),
            ("VPP_CLUSTER_SUBSCRIBE".to_string(), "all".to_string()),
            ("VPP_MQTT_SITE_DOCUMENTS".to_string(), "true".to_string()),
        ]);
        let c = NodeConfig::default().with_env(&env).unwrap();
        assert_eq!(
            (c.cluster.detect_ms, c.cluster.subscribe.as_str()),
            (10_000, "all")
        );
        assert!(c.mqtt.site_documents);
    }

    #[test]
    fn metering_keys() {
        let c =
            NodeConfig::parse("x.toml", "[metering]\ninterval_s = 900\nsites = \"all\"\n").unwrap();
        assert_eq!(c.metering.interval_s, 900);
        assert_eq!(c.metering.sites, MeteredSites::All);
        for (text, needle) in [
            ("[metering]\ninterval_s = 0\n", "metering.interval_s"),
            ("[metering]\ninterval_s = 7\n", "metering.interval_s"),
            ("[metering]\ninterval_s = 172800\n", "metering.interval_s"),
            ("[metering]\nsites = \"some\"\n", "some"),
            ("[metering]\ninterval = 300\n", "interval"),
        ] {
            let e = NodeConfig::parse("x.toml", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn mqtt_keys() {
        let c = NodeConfig::parse(
            "x.toml",
            "[mqtt]\nbroker = \"mqtt://10.0.0.5:1884\"\nlisten = \"127.0.0.1:0\"\nbroker_config = \"b.toml\"\nclient_id = \"node-1\"\n",
        )
        .unwrap();
        let BrokerChoice::External(url) = &c.mqtt.broker else {
            panic!("{:?}", c.mqtt.broker)
        };
        assert_eq!((url.host(), url.port()), ("10.0.0.5", 1884));
        assert_eq!(c.mqtt.listen.port(), 0);
        assert_eq!(c.mqtt.broker_config, PathBuf::from("b.toml"));
        assert_eq!(c.mqtt.client_id, "node-1");
        assert_eq!(c.mqtt.broker.to_string(), "mqtt://10.0.0.5:1884");
        assert!(NodeConfig::default().mqtt.load_broker_config().is_ok());
    }

    #[test]
    fn bad_mqtt_values_are_named() {
        for (text, needle) in [
            ("[mqtt]\nbroker = \"http://h:1883\"\n", "mqtt.broker"),
            ("[mqtt]\nbroker = \"mqtt://h:0\"\n", "mqtt.broker"),
            ("[mqtt]\nbroker = \"embeded\"\n", "mqtt.broker"),
            ("[mqtt]\nlisten = \"1883\"\n", "listen"),
            ("[mqtt]\nclient_id = \"a/b\"\n", "mqtt.client_id"),
            ("[mqtt]\nclient_id = \"\"\n", "mqtt.client_id"),
            ("[mqtt]\noffline_after_s = 0\n", "mqtt.offline_after_s"),
            ("[mqtt]\nsite_documents = \"yes\"\n", "site_documents"),
            (
                "[store]\ntelemetry_persist_s = 3601\n",
                "store.telemetry_persist_s",
            ),
            ("[mqtt]\nbrokr = \"embedded\"\n", "brokr"),
        ] {
            let e = NodeConfig::parse("x.toml", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = NodeConfig::parse("x.toml", "[mqtt]\nbroker = \"http://h:1883\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("scheme"), "{e}");
    }

    #[test]
    fn broker_choice_from_flag() {
        assert_eq!(
            "embedded".parse::<BrokerChoice>().unwrap(),
            BrokerChoice::Embedded
        );
        assert!(matches!(
            "mqtt://127.0.0.1:1883".parse::<BrokerChoice>(),
            Ok(BrokerChoice::External(_))
        ));
        assert!("127.0.0.1:1883".parse::<BrokerChoice>().is_err());
    }

    #[test]
    fn missing_broker_config_file_is_named() {
        let mut c = NodeConfig::default();
        c.mqtt.broker_config = PathBuf::from("/nonexistent/rumqttd.toml");
        let e = c.mqtt.load_broker_config().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/rumqttd.toml"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = NodeConfig::parse("x.toml", "[rollup]\nintervl_ms = 5\n").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("x.toml") && m.contains("intervl_ms"), "{m}");
    }

    #[test]
    fn out_of_range_is_named() {
        let e = NodeConfig::parse("x.toml", "[rollup]\ninterval_ms = 0\n").unwrap_err();
        assert!(e.to_string().contains("rollup.interval_ms"), "{e}");
        for nice in ["-1", "20"] {
            let text = format!("[store]\nwrite_behind_nice = {nice}\n");
            let e = NodeConfig::parse("x.toml", &text).unwrap_err();
            assert!(e.to_string().contains("store.write_behind_nice"), "{e}");
        }
        let e =
            NodeConfig::parse("x.toml", "[store]\nwrite_behind_defer_ms = 60001\n").unwrap_err();
        assert!(e.to_string().contains("store.write_behind_defer_ms"), "{e}");
        let e = NodeConfig::parse("x.toml", "listen = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("x.toml"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let env = HashMap::from([
            ("VPP_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("VPP_DATA_DIR".to_string(), "/tmp/x".to_string()),
        ]);
        let c = NodeConfig::default().with_env(&env).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let env = HashMap::from([("VPP_LISTEN".to_string(), "bad".to_string())]);
        assert!(NodeConfig::default().with_env(&env).is_err());
    }
}
