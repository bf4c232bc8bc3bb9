//! Simulator configuration and scenario files.
//!
//! ```text
//!   scenario.toml ──toml + serde (deny_unknown_fields)──► ScenarioFile
//!        ──defaults, then validate (errors name the key)──► Scenario { config: SimConfig, fleet }
//!   flags (vpp-loadgen) override fields of SimConfig afterwards; validate() runs again in start()
//! ```
//!
//! A scenario file is flat TOML: the connection and timing keys at the top,
//! an optional `[fleet]` table saying which devices to simulate, and an
//! optional `[faults]` table. Every key is optional; the reference is
//! `load-tests/scenarios/README.md`, and the `*.toml` beside it are
//! commented examples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpp_domain::generate::GenSpec;

use crate::error::SimError;

/// How payloads are encoded on the wire (both are protocol v1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// JSON (what real devices and `mosquitto_pub` speak).
    #[default]
    Json,
    /// The binary variant: a marker byte, then postcard.
    Binary,
}

/// Faults to inject. Shares pick devices (or connections) by a stable hash
/// of their id and the seed, so a re-run picks the same ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of devices that are offline: they never publish or answer
    /// (0..=1). A connection whose devices are all offline never connects.
    pub offline_share: f64,
    /// DERs offline by id, in addition to the share.
    pub offline_ids: Vec<String>,
    /// When set, offline devices work normally for this many seconds after
    /// start and then go silent (a failure mid-run) instead of never
    /// connecting.
    pub offline_after_s: Option<f64>,
    /// Share of devices that reject every desired document with the reason
    /// `"refusing: fault injection"` (0..=1).
    pub refusing_share: f64,
    /// DERs refusing by id, in addition to the share.
    pub refusing_ids: Vec<String>,
    /// Delay before a device handles (and acks) a desired document, ms,
    /// drawn uniformly from `[low, high]`.
    pub ack_latency_ms: [u64; 2],
    /// Reconnect storm period, s: every this many seconds a share of the
    /// connections is dropped (abruptly: last wills fire) and reconnects at
    /// once. Unset: no storms.
    pub storm_every_s: Option<f64>,
    /// Share of connections each storm drops (0..=1).
    pub storm_share: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            offline_share: 0.0,
            offline_ids: Vec::new(),
            offline_after_s: None,
            refusing_share: 0.0,
            refusing_ids: Vec::new(),
            ack_latency_ms: [0, 0],
            storm_every_s: None,
            storm_share: 0.1,
        }
    }
}

impl Faults {
    fn validate(&self) -> Result<(), SimError> {
        share("faults.offline_share", self.offline_share)?;
        share("faults.refusing_share", self.refusing_share)?;
        share("faults.storm_share", self.storm_share)?;
        if let Some(s) = self.offline_after_s {
            if !(s.is_finite() && s >= 0.0) {
                return Err(SimError::config(
                    "faults.offline_after_s",
                    format!("{s} must be a non-negative number of seconds"),
                ));
            }
        }
        let [lo, hi] = self.ack_latency_ms;
        if lo > hi || hi > 600_000 {
            return Err(SimError::config(
                "faults.ack_latency_ms",
                format!("[{lo}, {hi}] must be [low, high] with low <= high <= 600000"),
            ));
        }
        if let Some(s) = self.storm_every_s {
            if !(s.is_finite() && s >= 0.1) {
                return Err(SimError::config(
                    "faults.storm_every_s",
                    format!("{s} must be at least 0.1 s"),
                ));
            }
            if self.storm_share <= 0.0 {
                return Err(SimError::config(
                    "faults.storm_share",
                    "must be above 0 when storm_every_s is set",
                ));
            }
        }
        Ok(())
    }
}

fn share(key: &str, v: f64) -> Result<(), SimError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(SimError::config(key, format!("{v} is outside 0..=1")))
    }
}

/// Most connections one process opens: the process may hold 20,000 open
/// files, and the rest is margin for everything else.
pub const MAX_CONNECTIONS: usize = 16_000;

/// Everything the simulator needs besides the devices.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// MQTT broker, `host:port`.
    pub broker: String,
    /// MQTT connections to spread the sites over (see `fleet::plan`).
    pub connections: usize,
    /// Each device publishes telemetry this often.
    pub telemetry_interval: Duration,
    /// Physics runs this many times faster than the wall clock.
    pub speed: f64,
    /// Faults to inject.
    pub faults: Faults,
    /// Seed of every random draw (device states, fault picks, storms).
    pub seed: u64,
    /// Client ids are `{client_prefix}-{n}`; two simulators on one broker
    /// need different prefixes.
    pub client_prefix: String,
    /// Payload encoding.
    pub encoding: Encoding,
    /// Start simulated time at this local solar hour (0..24) instead of the
    /// wall clock, so a demo at night still has sunshine.
    pub start_hour: Option<f64>,
    /// New connections opened per second at start (a gentle ramp for the
    /// broker); reconnect storms ignore it.
    pub connect_per_s: f64,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Gateways speak per site: telemetry, acks and reported as site
    /// batches (`vpp/v1/{shard}/{site}/telemetry`, `…/ack`, `…/reported`),
    /// and they subscribe to site documents (`…/{site}/desired`), so the
    /// node must publish those (`mqtt.site_documents`).
    pub site_batch: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            broker: "127.0.0.1:1883".into(),
            connections: 1,
            telemetry_interval: Duration::from_secs(5),
            speed: 1.0,
            faults: Faults::default(),
            seed: 1,
            client_prefix: "vpp-sim".into(),
            encoding: Encoding::Json,
            start_hour: None,
            connect_per_s: 1000.0,
            keep_alive: Duration::from_secs(60),
            site_batch: false,
        }
    }
}

impl SimConfig {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), SimError> {
        broker_addr(&self.broker)?;
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(SimError::config(
                "connections",
                format!("{} is outside 1..={MAX_CONNECTIONS}", self.connections),
            ));
        }
        let ms = self.telemetry_interval.as_millis();
        if !(10..=3_600_000).contains(&ms) {
            return Err(SimError::config(
                "telemetry_interval_ms",
                format!("{ms} is outside 10..=3600000"),
            ));
        }
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= 100_000.0) {
            return Err(SimError::config(
                "speed",
                format!("{} must be above 0 and at most 100000", self.speed),
            ));
        }
        let p = &self.client_prefix;
        if p.is_empty()
            || p.len() > 40
            || !p
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return Err(SimError::config(
                "client_prefix",
                format!("{p:?} must be 1 to 40 characters from A-Z a-z 0-9 - _"),
            ));
        }
        if let Some(h) = self.start_hour {
            if !(h.is_finite() && (0.0..24.0).contains(&h)) {
                return Err(SimError::config(
                    "start_hour",
                    format!("{h} is outside 0..24"),
                ));
            }
        }
        if !(self.connect_per_s.is_finite() && self.connect_per_s > 0.0) {
            return Err(SimError::config(
                "connect_per_s",
                format!("{} must be above 0", self.connect_per_s),
            ));
        }
        let ka = self.keep_alive.as_secs();
        if !(5..=3600).contains(&ka) {
            return Err(SimError::config(
                "keep_alive_s",
                format!("{ka} is outside 5..=3600"),
            ));
        }
        self.faults.validate()
    }
}

/// Splits `host:port`.
pub(crate) fn broker_addr(s: &str) -> Result<(String, u16), SimError> {
    let bad = || {
        SimError::config(
            "broker",
            format!("{s:?} is not host:port (e.g. 127.0.0.1:1883)"),
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// What `vpp hierarchy generate --sites N` generates.
fn cli_gen_spec(sites: usize) -> GenSpec {
    GenSpec {
        sites,
        ders_per_site: 4,
        levels: 5,
        fanout: None,
        seed: 1,
    }
}

/// Where a scenario's devices come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetSpec {
    /// A hierarchy file (as `vpp hierarchy import` takes).
    Hierarchy(PathBuf),
    /// A generated fleet (as `vpp hierarchy generate` makes).
    Generate(GenSpec),
}

impl FleetSpec {
    /// A generated fleet with the defaults of `vpp hierarchy generate`
    /// (4 DERs per site, 5 levels, seed 1), so ids match what a node
    /// imported from `vpp hierarchy generate --sites N`.
    pub fn generated(sites: usize) -> Self {
        FleetSpec::Generate(cli_gen_spec(sites))
    }

    /// Loads or generates the hierarchy.
    pub fn hierarchy(&self) -> Result<vpp_domain::Hierarchy, SimError> {
        match self {
            FleetSpec::Hierarchy(p) => Ok(vpp_domain::hierarchy_file::load(p)?),
            FleetSpec::Generate(g) => Ok(vpp_domain::generate::generate(g)),
        }
    }
}

/// A scenario: configuration plus, optionally, the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// What the file says about itself.
    pub description: Option<String>,
    /// The simulator configuration (defaults where the file is silent).
    pub config: SimConfig,
    /// The devices, if the file names them.
    pub fleet: Option<FleetSpec>,
}

/// A scenario file as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    /// Free text, printed by `vpp-loadgen` at start.
    description: Option<String>,
    broker: Option<String>,
    connections: Option<usize>,
    telemetry_interval_ms: Option<u64>,
    speed: Option<f64>,
    seed: Option<u64>,
    client_prefix: Option<String>,
    encoding: Option<Encoding>,
    start_hour: Option<f64>,
    connect_per_s: Option<f64>,
    keep_alive_s: Option<u64>,
    site_batch: Option<bool>,
    fleet: Option<FleetFile>,
    #[serde(default)]
    faults: Faults,
}

/// `[fleet]`: exactly one of `hierarchy` or `generate_sites`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    /// A hierarchy file, relative to the scenario file.
    hierarchy: Option<PathBuf>,
    /// Generate this many sites (same generator and defaults as
    /// `vpp hierarchy generate`).
    generate_sites: Option<usize>,
    ders_per_site: Option<usize>,
    levels: Option<usize>,
    seed: Option<u64>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Scenario {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Checks scenario text; `path` is used in messages and to resolve a
    /// relative `fleet.hierarchy`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SimError> {
        let err = |message: String| SimError::Scenario {
            path: path.to_path_buf(),
            message,
        };
        let f: ScenarioFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let d = SimConfig::default();
        let config = SimConfig {
            broker: f.broker.unwrap_or(d.broker),
            connections: f.connections.unwrap_or(d.connections),
            telemetry_interval: f
                .telemetry_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(d.telemetry_interval),
            speed: f.speed.unwrap_or(d.speed),
            faults: f.faults,
            seed: f.seed.unwrap_or(d.seed),
            client_prefix: f.client_prefix.unwrap_or(d.client_prefix),
            encoding: f.encoding.unwrap_or(d.encoding),
            start_hour: f.start_hour.or(d.start_hour),
            connect_per_s: f.connect_per_s.unwrap_or(d.connect_per_s),
            keep_alive: f
                .keep_alive_s
                .map(Duration::from_secs)
                .unwrap_or(d.keep_alive),
            site_batch: f.site_batch.unwrap_or(d.site_batch),
        };
        config.validate().map_err(|e| err(e.to_string()))?;
        let fleet = match f.fleet {
            None => None,
            Some(fl) => Some(match (fl.hierarchy, fl.generate_sites) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(err(
                        "fleet: give exactly one of fleet.hierarchy or fleet.generate_sites".into(),
                    ))
                }
                (Some(h), None) => {
                    if fl.ders_per_site.is_some() || fl.levels.is_some() || fl.seed.is_some() {
                        return Err(err(
                            "fleet: ders_per_site, levels and seed go with generate_sites, \
                             not hierarchy"
                                .into(),
                        ));
                    }
                    let base = path.parent().unwrap_or(Path::new(""));
                    FleetSpec::Hierarchy(base.join(h))
                }
                (None, Some(sites)) => {
                    let mut g = cli_gen_spec(sites);
                    g.ders_per_site = fl.ders_per_site.unwrap_or(g.ders_per_site);
                    g.levels = fl.levels.unwrap_or(g.levels);
                    g.seed = fl.seed.unwrap_or(g.seed);
                    check_gen(&g).map_err(|e| err(e.to_string()))?;
                    FleetSpec::Generate(g)
                }
            }),
        };
        Ok(Scenario {
            description: f.description,
            config,
            fleet,
        })
    }
}

/// The checks `vpp hierarchy generate` makes.
pub fn check_gen(g: &GenSpec) -> Result<(), SimError> {
    if g.sites == 0 {
        return Err(SimError::config(
            "fleet.generate_sites",
            "must be at least 1",
        ));
    }
    if g.ders_per_site == 0 {
        return Err(SimError::config(
            "fleet.ders_per_site",
            "must be at least 1",
        ));
    }
    let max = vpp_domain::hierarchy::MAX_DEPTH;
    if !(3..=max).contains(&g.levels) {
        return Err(SimError::config(
            "fleet.levels",
            format!("{} is outside 3..={max}", g.levels),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, SimError> {
        Scenario::parse(Path::new("dir/s.toml"), text)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.config, SimConfig::default());
        assert_eq!(s.fleet, None);
    }

    #[test]
    fn full_file() {
        let s = parse(
            r#"
            description = "x"
            broker = "localhost:1884"
            connections = 4
            telemetry_interval_ms = 1000
            speed = 60
            encoding = "binary"
            start_hour = 11.5
            [fleet]
            generate_sites = 10
            ders_per_site = 2
            [faults]
            refusing_share = 0.1
            ack_latency_ms = [10, 50]
            storm_every_s = 30
            "#,
        )
        .unwrap();
        assert_eq!(s.config.connections, 4);
        assert_eq!(s.config.speed, 60.0);
        assert_eq!(s.config.encoding, Encoding::Binary);
        assert_eq!(s.config.faults.ack_latency_ms, [10, 50]);
        assert_eq!(s.config.faults.storm_share, 0.1);
        match s.fleet {
            Some(FleetSpec::Generate(g)) => {
                assert_eq!((g.sites, g.ders_per_site, g.levels, g.seed), (10, 2, 5, 1))
            }
            other => panic!("{other:?}"),
        }
        let h = parse("[fleet]\nhierarchy = \"fleet.toml\"").unwrap();
        assert_eq!(
            h.fleet,
            Some(FleetSpec::Hierarchy(PathBuf::from("dir/fleet.toml")))
        );
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = parse("conections = 3").unwrap_err().to_string();
        assert!(e.contains("dir/s.toml") && e.contains("conections"), "{e}");
        let e = parse("[faults]\nrefusing_share = 1.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("faults.refusing_share: 1.5 is outside"), "{e}");
        let e = parse("[faults]\nrefusng = 1").unwrap_err().to_string();
        assert!(e.contains("refusng"), "{e}");
        let e = parse("speed = \"fast\"").unwrap_err().to_string();
        assert!(e.contains("speed"), "{e}");
        let e = parse("broker = \"nohost\"").unwrap_err().to_string();
        assert!(e.contains("broker"), "{e}");
        let e = parse("[fleet]\nders_per_site = 2").unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
        let e = parse("[faults]\nack_latency_ms = [50, 10]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("faults.ack_latency_ms"), "{e}");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(s.description.is_some(), "{}", p.display());
                match &s.fleet {
                    Some(FleetSpec::Hierarchy(h)) => assert!(h.exists(), "{}", h.display()),
                    Some(FleetSpec::Generate(g)) => check_gen(g).unwrap(),
                    None => panic!("{}: no [fleet]", p.display()),
                }
                n += 1;
            }
        }
        assert!(n >= 4, "{n} scenarios in {}", dir.display());
    }
}
