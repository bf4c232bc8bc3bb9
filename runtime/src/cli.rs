//! The `vpp` command line.
//!
//! Commands that read or change the hierarchy work on the data dir directly
//! when no node is running, and through the running node's API when one is
//! (it holds the store's lock and leaves its address in the data dir).
//! Commands about live state (capacity, dispatch, DER state) always go to a
//! running node: `--node URL`, or the node serving `--data-dir`, or
//! `http://127.0.0.1:8080`.

mod account;
mod audit;
mod broker;
mod meter;
mod mv;
mod output;

pub use account::{AccountCmd, RoleArg};
pub use audit::{AuditCmd, ExportFormat};
pub use broker::BrokerArgs;
pub use meter::MeterCmd;
pub use mv::MvCmd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use vpp_domain::generate::{generate, GenSpec};
use vpp_domain::hierarchy_file::{load, to_toml};
use vpp_store::{Store, StoreError};

use crate::client::Client;
use crate::config::{BrokerChoice, NodeConfig, DEFAULT_TOML};
use crate::serve::{discover, ServeOptions};

/// Virtual power plant runtime: every DER, site and virtual-DER aggregate is an
/// actor; capacity rolls up, dispatch splits down, state persists in sled.
#[derive(Debug, Parser)]
#[command(name = "vpp", version, propagate_version = true)]
pub struct Cli {
    /// Data directory of the store [default: ./data, or the config file's data_dir]
    #[arg(long, global = true, env = "VPP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API of a running node, e.g. http://127.0.0.1:8080 [default: the node serving --data-dir]
    #[arg(long, global = true, env = "VPP_NODE")]
    pub node: Option<String>,
    /// API token (`vpp_…`) for commands that talk to a node [default: the
    /// first operator's, from <data-dir>/operator.token]
    #[arg(long, global = true, env = "VPP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// One command, no setup: a node with embedded broker and store, a
    /// simulated fleet over MQTT, a dispatch and its results per aggregate.
    Demo(crate::demo::DemoArgs),
    /// Run a node: embedded store and MQTT broker, actor hierarchy, HTTP API.
    #[command(
        after_help = "Environment: VPP_LOG (log filter), VPP_* overrides of the config \
(runtime/config/vpp.toml), and for OpenTelemetry traces over OTLP/HTTP: \
OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), \
OTEL_SERVICE_NAME [vpp], OTEL_BSP_SCHEDULE_DELAY (ms) [5000], VPP_TRACES (which spans) \
[warn,vpp_runtime=info,vpp_actors=info]."
    )]
    Serve(ServeArgs),
    /// Import, export, show, validate and generate hierarchies.
    #[command(subcommand)]
    Hierarchy(HierarchyCmd),
    /// What a node (default: the root) can do now, per DER kind and child.
    Capacity(CapacityArgs),
    /// Create, list, inspect and cancel dispatch orders.
    #[command(subcommand)]
    Dispatch(DispatchCmd),
    /// Set a DER's state by hand (until devices report it themselves).
    #[command(subcommand)]
    Der(DerCmd),
    /// Import interval meter data of sites from CSV; show a site's readings.
    #[command(subcommand)]
    Meter(MeterCmd),
    /// Print or check node configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Run the MQTT broker on its own (the one `serve` embeds).
    Broker(BrokerArgs),
    /// Measurement and verification offline: baselines and delivered
    /// reduction per site from a meter CSV file.
    #[command(subcommand)]
    Mv(MvCmd),
    /// Verify or export the hash-chained audit ledger, offline on --data-dir.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Accounts and API tokens (operator, utility, aggregator, participant).
    #[command(subcommand)]
    Account(AccountCmd),
    /// Ask a running node whether it is up.
    Health,
    /// The cluster as a running node sees it: members, leader, log lag.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

/// `vpp cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members, roles, the leader, and how far each member's log is behind.
    Status {
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a new CA and a certificate and key per member for
    /// `[cluster.tls]` (mutual TLS between members): ca.crt, ca.key,
    /// NAME.crt, NAME.key. Each certificate names the member's host. Works
    /// offline; nothing is overwritten.
    Certs {
        /// Every member as name@host:port, comma-separated (the same list as
        /// cluster.members).
        #[arg(
            long,
            env = "VPP_CLUSTER_MEMBERS",
            value_delimiter = ',',
            required = true
        )]
        members: Vec<String>,
        /// Folder to write into (created if missing; must not hold these files yet).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificates stay valid.
        #[arg(long, default_value_t = 825)]
        valid_days: u32,
    },
}

/// `vpp serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML; `vpp config default` prints one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:8080].
    #[arg(long, env = "VPP_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Hierarchy file to import at start when the store holds none yet.
    #[arg(long)]
    pub hierarchy: Option<PathBuf>,
    /// Import --hierarchy even if the store already holds one.
    #[arg(long, requires = "hierarchy")]
    pub replace: bool,
    /// MQTT broker: `embedded` or `mqtt://host:port` [default: the config's mqtt.broker].
    #[arg(long, env = "VPP_BROKER")]
    pub broker: Option<BrokerChoice>,
    /// The embedded broker's MQTT listener, e.g. 0.0.0.0:1883 [default: the
    /// config's mqtt.listen, 127.0.0.1:1883].
    #[arg(long)]
    pub mqtt_listen: Option<std::net::SocketAddr>,
}

/// `vpp hierarchy …`
#[derive(Debug, Subcommand)]
pub enum HierarchyCmd {
    /// Check a file and apply it atomically (replaces the whole hierarchy).
    Import {
        /// Hierarchy file (TOML).
        file: PathBuf,
    },
    /// Write the stored hierarchy as a file.
    Export {
        /// Output file [default: stdout].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Toml)]
        format: Format,
    },
    /// Print the stored hierarchy as a tree with DER counts and nameplate.
    Show {
        /// Start at this node [default: the root].
        id: Option<String>,
        /// Levels to print.
        #[arg(long, default_value_t = 3)]
        depth: usize,
    },
    /// Check a file without applying it.
    Validate {
        /// Hierarchy file (TOML).
        file: PathBuf,
    },
    /// Generate a synthetic hierarchy (deterministic for a given seed).
    Generate {
        /// Number of sites.
        #[arg(long, default_value_t = 100)]
        sites: usize,
        /// Average DERs per site.
        #[arg(long, default_value_t = 4)]
        ders_per_site: usize,
        /// Levels, root to DERs included (>= 3).
        #[arg(long, default_value_t = 5)]
        levels: usize,
        /// Seed of the pseudo-random ratings.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file [default: stdout].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// The hierarchy file format.
    Toml,
    /// The API's JSON.
    Json,
}

/// `vpp capacity`
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Node id [default: the root].
    pub id: Option<String>,
    /// Pull a fresh envelope from every DER below instead of the rolled-up one.
    #[arg(long)]
    pub fresh: bool,
    /// Children to list.
    #[arg(long, default_value_t = 20)]
    pub children: usize,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Direction of an order.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Dir {
    /// Shed load / add generation.
    Up,
    /// Add load / curtail generation.
    Down,
}

/// `vpp dispatch …`
#[derive(Debug, Subcommand)]
pub enum DispatchCmd {
    /// Send an order to a site or virtual DER; waits for the split and prints it.
    Create {
        /// Node to dispatch.
        #[arg(long)]
        target: String,
        /// Which way.
        #[arg(long, value_enum, default_value_t = Dir::Up)]
        direction: Dir,
        /// How much, kW.
        #[arg(long)]
        kw: f64,
        /// How long, e.g. 90s, 15m, 2h.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        duration: Duration,
        /// Start after this long, e.g. 5m [default: now].
        #[arg(long, value_parser = parse_duration)]
        start_in: Option<Duration>,
        /// Ramp limit, kW per minute.
        #[arg(long)]
        ramp_kw_per_min: Option<f64>,
        /// Order id (creating the same id twice is idempotent) [default: generated].
        #[arg(long)]
        id: Option<String>,
        /// Return once accepted, without waiting for the split.
        #[arg(long)]
        no_wait: bool,
        /// Levels of the allocation tree to print.
        #[arg(long, default_value_t = 3)]
        depth: usize,
    },
    /// Newest orders first.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One order and its allocation tree.
    Get {
        /// Order id.
        id: String,
        /// Levels of the tree.
        #[arg(long, default_value_t = 3)]
        depth: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw an order from every DER.
    Cancel {
        /// Order id.
        id: String,
    },
}

/// `vpp der …`
#[derive(Debug, Subcommand)]
pub enum DerCmd {
    /// Change a DER's state (only the fields given).
    SetState {
        /// DER id.
        id: String,
        /// Net import now, kW (negative = export).
        #[arg(long, allow_hyphen_values = true)]
        power_kw: Option<f64>,
        /// State of charge, %.
        #[arg(long)]
        soc_pct: Option<f32>,
        /// Room or tank temperature, °C.
        #[arg(long, allow_hyphen_values = true)]
        temperature_c: Option<f32>,
        /// Reachable or not.
        #[arg(long)]
        online: Option<bool>,
        /// Owner allows control or not.
        #[arg(long)]
        accepts_control: Option<bool>,
    },
}

/// `vpp config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the default configuration (a complete, commented config file).
    Default,
    /// Print the embedded MQTT broker's default configuration (rumqttd's format).
    Broker,
    /// Check a config file.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// Parses `90s`, `15m`, `2h`, `1d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let _ = TOKEN.set(cli.token.clone());
    let data_dir = cli.data_dir.clone();
    let node = cli.node.clone();
    match cli.cmd {
        Cmd::Serve(args) => serve(data_dir, args),
        Cmd::Demo(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(crate::demo::run(args))
        }
        Cmd::Hierarchy(h) => hierarchy(data_dir, node, h),
        Cmd::Capacity(a) => capacity(&live(data_dir, node), a),
        Cmd::Dispatch(d) => dispatch(&live(data_dir, node), d),
        Cmd::Der(d) => der(&live(data_dir, node), d),
        Cmd::Meter(m) => meter::run(data_dir, node, m),
        Cmd::Account(a) => account::run(&live(data_dir, node), a),
        Cmd::Config(ConfigCmd::Default) => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Cmd::Config(ConfigCmd::Broker) => {
            print!("{}", crate::mqtt::DEFAULT_BROKER_TOML);
            Ok(())
        }
        Cmd::Broker(args) => broker::run(args),
        Cmd::Mv(cmd) => mv::run(cmd),
        Cmd::Audit(a) => audit::run(&data_dir_or_default(data_dir), a),
        Cmd::Config(ConfigCmd::Check { file }) => {
            let c = NodeConfig::load(&file)?;
            println!(
                "{}: ok (listen {}, data_dir {})",
                file.display(),
                c.listen,
                c.data_dir.display()
            );
            Ok(())
        }
        Cmd::Health => {
            let c = live(data_dir, node);
            println!(
                "{}",
                serde_json::to_string_pretty(&c.get("/api/v1/health")?)?
            );
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Certs {
            members,
            out,
            valid_days,
        }) => {
            let members: Vec<String> = members
                .iter()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
            let issued = crate::cluster::tls::issue(&members, valid_days)
                .map_err(|e| anyhow::anyhow!("vpp cluster certs: {e}"))?;
            crate::cluster::tls::write_issued(&out, &issued)
                .map_err(|e| anyhow::anyhow!("vpp cluster certs: {e}"))?;
            for f in &issued {
                println!("wrote {}", out.join(&f.file).display());
            }
            println!(
                "set on each member: [cluster.tls] cert = NAME.crt, key = NAME.key, ca = ca.crt \
                 (or VPP_CLUSTER_TLS_CERT / _KEY / _CA); keep ca.key offline"
            );
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Status { json }) => {
            let v = live(data_dir, node).get("/api/v1/cluster")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", cluster_table(&v));
            }
            Ok(())
        }
    }
}

/// `vpp cluster status` as text.
fn cluster_table(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if v["mode"] == "single" {
        out.push_str("single node: no cluster configured ([cluster] node is empty)\n");
        return out;
    }
    let s = |k: &str| match &v[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(x) => x.clone(),
        x => x.to_string(),
    };
    let _ = writeln!(
        out,
        "node {} is {} in term {}; leader: {}; log {} applied {}",
        s("node"),
        s("role"),
        s("term"),
        s("leader"),
        s("last_log_index"),
        s("last_applied")
    );
    let _ = writeln!(
        out,
        "placement epoch {} (this member's fleet built for {}); acting for its shards: {}",
        s("placement_epoch"),
        s("fleet_epoch"),
        s("acting")
    );
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:<28} {:>6} {:>6} {:>9} {:>10} {:>8}",
        "MEMBER", "ID", "ADDRESS", "LIVE", "SHARDS", "CONNECTED", "MATCHED", "LAG"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let f = |k: &str| match &m[k] {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(x) => x.clone(),
            x => x.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:<28} {:>6} {:>6} {:>9} {:>10} {:>8}",
            f("name"),
            f("id"),
            f("addr"),
            f("live"),
            f("shards"),
            f("connected"),
            f("matched_index"),
            f("lag")
        );
    }
    if v["role"] != "leader" {
        out.push_str("(log positions of other members are known to the leader: ask it for lag)\n");
    }
    out
}

fn data_dir_or_default(d: Option<PathBuf>) -> PathBuf {
    d.unwrap_or_else(|| PathBuf::from("./data"))
}

fn serve(data_dir: Option<PathBuf>, a: ServeArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| {
            k == "VPP_DATA_DIR"
                || k == "VPP_LISTEN"
                || k.starts_with("VPP_CLUSTER_")
                || k.starts_with("VPP_MQTT_")
        })
        .collect();
    cfg = cfg.with_env(&env)?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(b) = a.broker {
        cfg.mqtt.broker = b;
    }
    if let Some(l) = a.mqtt_listen {
        cfg.mqtt.listen = l;
    }
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        crate::cluster::prepare(&mut cfg.cluster).await?;
        crate::serve::run(
            cfg,
            ServeOptions {
                hierarchy: a.hierarchy,
                replace: a.replace,
            },
        )
        .await
    })
}

/// `--token` / `VPP_TOKEN`, set once by [`run`].
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The token to send: `--token`, else the first operator's token file in
/// the data dir, if readable.
fn token(dir: &Path) -> Option<String> {
    TOKEN
        .get()
        .cloned()
        .flatten()
        .or_else(|| std::fs::read_to_string(dir.join(crate::programs::OPERATOR_TOKEN_FILE)).ok())
}

/// A client of `url` carrying the token for `dir`.
fn client(url: &str, dir: &Path) -> Client {
    Client::new(url).with_token(token(dir))
}

/// A client of the running node: `--node`, or the one serving the data dir,
/// or the default address.
fn live(data_dir: Option<PathBuf>, node: Option<String>) -> Client {
    let dir = data_dir_or_default(data_dir);
    if let Some(url) = node {
        return client(&url, &dir);
    }
    client(
        &discover(&dir).unwrap_or_else(|| "http://127.0.0.1:8080".to_string()),
        &dir,
    )
}

/// Offline writes to a cluster member's data dir would make it differ from
/// the other members: they go through a running node instead.
pub(crate) fn refuse_cluster_store(s: &Store) -> Result<()> {
    if s.is_cluster_member()? {
        bail!(
            "{} belongs to a cluster member: writing to it directly would make it differ from \
             the others; start the node and write through it (--node URL), or through any other member",
            s.dir().display()
        );
    }
    Ok(())
}

enum Target {
    Api(Client),
    Store(Store),
}

/// The store itself when no node holds it, else the node that does.
fn target(data_dir: Option<PathBuf>, node: Option<String>, create: bool) -> Result<Target> {
    let dir = data_dir_or_default(data_dir);
    if let Some(url) = node {
        return Ok(Target::Api(client(&url, &dir)));
    }
    if !create && !dir.exists() {
        bail!(
            "no data dir at {} (import a hierarchy first, or pass --data-dir / --node)",
            dir.display()
        );
    }
    match Store::open(&dir) {
        Ok(s) => Ok(Target::Store(s)),
        Err(StoreError::Locked { .. }) => match discover(&dir) {
            Some(url) => Ok(Target::Api(client(&url, &dir))),
            None => Err(anyhow!(
                "data dir {} is in use by another process that did not say where its API is; pass --node URL",
                dir.display()
            )),
        },
        Err(e) => Err(e.into()),
    }
}

fn hierarchy(data_dir: Option<PathBuf>, node: Option<String>, cmd: HierarchyCmd) -> Result<()> {
    match cmd {
        HierarchyCmd::Validate { file } => {
            let h = load(&file)?;
            println!(
                "{}: ok ({} virtual DERs, {} sites, {} DERs)",
                file.display(),
                h.virtual_ders.len(),
                h.sites.len(),
                h.ders.len()
            );
            Ok(())
        }
        HierarchyCmd::Generate {
            sites,
            ders_per_site,
            levels,
            seed,
            output,
        } => {
            if sites == 0 || ders_per_site == 0 {
                bail!("--sites and --ders-per-site must be at least 1");
            }
            if !(3..=vpp_domain::hierarchy::MAX_DEPTH).contains(&levels) {
                bail!(
                    "--levels must be between 3 and {}",
                    vpp_domain::hierarchy::MAX_DEPTH
                );
            }
            let h = generate(&GenSpec {
                sites,
                ders_per_site,
                levels,
                fanout: None,
                seed,
            });
            write_out(output.as_deref(), &to_toml(&h))?;
            if let Some(o) = output {
                eprintln!("wrote {} ({} nodes)", o.display(), h.len());
            }
            Ok(())
        }
        HierarchyCmd::Import { file } => {
            // Check the file here first: errors name the file and lines.
            let h = load(&file)?;
            let counts = (h.virtual_ders.len(), h.sites.len(), h.ders.len());
            match target(data_dir, node, true)? {
                Target::Api(c) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    c.put_text("/api/v1/hierarchy", text)?;
                    println!("imported {} into the node at {}", file.display(), c.base());
                }
                Target::Store(s) => {
                    refuse_cluster_store(&s)?;
                    s.replace_hierarchy(&h)?;
                    println!("imported {} into {}", file.display(), s.dir().display());
                }
            }
            println!(
                "{} virtual DERs, {} sites, {} DERs",
                counts.0, counts.1, counts.2
            );
            Ok(())
        }
        HierarchyCmd::Export { output, format } => {
            let h = match target(data_dir, node, false)? {
                Target::Api(c) => serde_json::from_value(c.get("/api/v1/hierarchy")?)?,
                Target::Store(s) => s.load_hierarchy()?,
            };
            let text = match format {
                Format::Toml => to_toml(&h),
                Format::Json => serde_json::to_string_pretty(&h)?,
            };
            write_out(output.as_deref(), &text)
        }
        HierarchyCmd::Show { id, depth } => {
            let h = match target(data_dir, node, false)? {
                Target::Api(c) => serde_json::from_value(c.get("/api/v1/hierarchy")?)?,
                Target::Store(s) => s.load_hierarchy()?,
            };
            print!("{}", output::tree(&h, id.as_deref(), depth)?);
            Ok(())
        }
    }
}

fn write_out(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = out.write_all(text.as_bytes());
            Ok(())
        }
    }
}

fn capacity(c: &Client, a: CapacityArgs) -> Result<()> {
    let id = match a.id {
        Some(id) => id,
        None => c.get("/api/v1/health")?["root"]
            .as_str()
            .ok_or_else(|| anyhow!("the node has no hierarchy yet (vpp hierarchy import FILE)"))?
            .to_string(),
    };
    let v = c.get(&format!(
        "/api/v1/nodes/{id}/capacity?fresh={}&children={}",
        a.fresh, a.children
    ))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", output::capacity(&v));
    }
    Ok(())
}

fn dispatch(c: &Client, cmd: DispatchCmd) -> Result<()> {
    match cmd {
        DispatchCmd::Create {
            target,
            direction,
            kw,
            duration,
            start_in,
            ramp_kw_per_min,
            id,
            no_wait,
            depth,
        } => {
            let mut body = json!({
                "target": target,
                "direction": match direction { Dir::Up => "up", Dir::Down => "down" },
                "power_kw": kw,
                "duration_s": duration.as_secs(),
            });
            if let Some(s) = start_in {
                body["start_in_s"] = json!(s.as_secs());
            }
            if let Some(r) = ramp_kw_per_min {
                body["ramp_kw_per_min"] = json!(r);
            }
            if let Some(i) = id {
                body["id"] = json!(i);
            }
            let rec = c.post_json("/api/v1/dispatches", &body)?;
            let id = rec["id"].as_str().unwrap_or_default().to_string();
            println!(
                "accepted {id} ({} kW {} at {target})",
                kw,
                rec["direction"].as_str().unwrap_or("")
            );
            if no_wait {
                return Ok(());
            }
            let t = std::time::Instant::now();
            loop {
                let v = c.get(&format!("/api/v1/dispatches/{id}?depth={depth}"))?;
                if v["dispatch"]["status"] != "accepted" {
                    print!("{}", output::dispatch(&v));
                    return Ok(());
                }
                if t.elapsed() > Duration::from_secs(600) {
                    bail!(
                        "{id} is still being split after 10 minutes; check `vpp dispatch get {id}`"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        DispatchCmd::List { limit } => {
            let v = c.get(&format!("/api/v1/dispatches?limit={limit}"))?;
            print!("{}", output::dispatch_list(&v));
            Ok(())
        }
        DispatchCmd::Get { id, depth, json } => {
            let v = c.get(&format!("/api/v1/dispatches/{id}?depth={depth}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", output::dispatch(&v));
            }
            Ok(())
        }
        DispatchCmd::Cancel { id } => {
            let v = c.post_json(&format!("/api/v1/dispatches/{id}/cancel"), &Value::Null)?;
            println!(
                "{} is {}",
                v["id"].as_str().unwrap_or(&id),
                v["status"].as_str().unwrap_or("?")
            );
            Ok(())
        }
    }
}

fn der(c: &Client, cmd: DerCmd) -> Result<()> {
    match cmd {
        DerCmd::SetState {
            id,
            power_kw,
            soc_pct,
            temperature_c,
            online,
            accepts_control,
        } => {
            let mut body = serde_json::Map::new();
            let mut put = |k: &str, v: Value| {
                if !v.is_null() {
                    body.insert(k.to_string(), v);
                }
            };
            put("power_kw", json!(power_kw));
            put("soc_pct", json!(soc_pct));
            put("temperature_c", json!(temperature_c));
            put("online", json!(online));
            put("accepts_control", json!(accepts_control));
            if body.is_empty() {
                bail!("give at least one of --power-kw, --soc-pct, --temperature-c, --online, --accepts-control");
            }
            let v = c.put_json(&format!("/api/v1/nodes/{id}/state"), &Value::Object(body))?;
            println!("{id}: state applied (seq {})", v["seq"]);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
