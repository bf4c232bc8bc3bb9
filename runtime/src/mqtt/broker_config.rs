//! The embedded broker's configuration: rumqttd's own TOML format, with the
//! shipped default (`broker-config/rumqttd.toml`) embedded in the binary.
//!
//! rumqttd's `Config` accepts unknown keys silently and panics on some values
//! (a segment under 1 KiB, zero segments), so the file is checked here first:
//! unknown keys, values rumqttd would choke on, and sections this build does
//! not run are refused with the file and the key named.

use std::collections::HashSet;
use std::path::Path;

use super::MqttError;

/// The default broker config, as shipped.
pub const DEFAULT_BROKER_TOML: &str = include_str!("../../../broker-config/rumqttd.toml");

/// Where the default config comes from, in error messages.
const DEFAULT_ORIGIN: &str = "embedded default";

/// The shipped default, parsed.
pub fn default_broker_config() -> Result<rumqttd::Config, MqttError> {
    parse_broker_config(DEFAULT_ORIGIN, DEFAULT_BROKER_TOML)
}

/// Reads and checks a broker config file.
pub fn load_broker_config(path: &Path) -> Result<rumqttd::Config, MqttError> {
    let text = std::fs::read_to_string(path).map_err(|source| MqttError::BrokerConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    parse_broker_config(&path.display().to_string(), &text)
}

/// Parses broker config text (`origin` names it in errors) and checks it.
pub fn parse_broker_config(origin: &str, text: &str) -> Result<rumqttd::Config, MqttError> {
    let err = |message: String| MqttError::BrokerConfig {
        origin: origin.to_string(),
        message,
    };
    let tidy = |e: toml::de::Error| e.to_string().trim_end().replace('\n', " ");
    let raw: toml::Table = toml::from_str(text).map_err(|e| err(tidy(e)))?;
    let config: rumqttd::Config = toml::from_str(text).map_err(|e| err(tidy(e)))?;
    // Keys rumqttd did not take are the ones missing when it is written back.
    let known = toml::Table::try_from(&config)
        .map_err(|e| err(format!("cannot re-read the parsed config: {e}")))?;
    let mut unknown = Vec::new();
    unknown_keys(&raw, &known, "", &mut unknown);
    if let Some(key) = unknown.first() {
        return Err(err(format!("unknown key {key}")));
    }
    check(&config).map_err(err)?;
    Ok(config)
}

/// Collects dotted paths of keys in `raw` that `known` lacks.
fn unknown_keys(raw: &toml::Table, known: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in raw {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (v, known.get(k)) {
            (_, None) => out.push(path),
            (toml::Value::Table(r), Some(toml::Value::Table(n))) => unknown_keys(r, n, &path, out),
            _ => {}
        }
    }
}

/// Values rumqttd would panic on or silently misuse, and sections this build
/// does not run. The message names the key.
pub(super) fn check(c: &rumqttd::Config) -> Result<(), String> {
    let unsupported = |key: &str, why: &str| Err(format!("{key}: {why}"));
    if c.ws.as_ref().is_some_and(|w| !w.is_empty()) {
        return unsupported(
            "ws",
            "websocket listeners are not supported (rumqttd is built without websocket)",
        );
    }
    if c.console.is_some() {
        return unsupported(
            "console",
            "the rumqttd console is not run by the embedded broker",
        );
    }
    if c.prometheus.is_some() {
        return unsupported(
            "prometheus",
            "rumqttd's prometheus exporter is not run by the embedded broker",
        );
    }
    if c.metrics.is_some() {
        return unsupported(
            "metrics",
            "rumqttd's metrics timers are not run by the embedded broker",
        );
    }
    if c.bridge.is_some() {
        return unsupported("bridge", "bridging is not run by the embedded broker");
    }
    if c.cluster.is_some() {
        return unsupported("cluster", "rumqttd 0.20 has no working cluster mode");
    }

    let r = &c.router;
    let range = |key: &str, v: usize, lo: usize, hi: usize, why: &str| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("{key} = {v}: must be between {lo} and {hi}{why}"))
        }
    };
    range(
        "router.max_connections",
        r.max_connections,
        1,
        1_000_000,
        "",
    )?;
    range(
        "router.max_outgoing_packet_count",
        usize::try_from(r.max_outgoing_packet_count).unwrap_or(usize::MAX),
        1,
        1_000_000,
        "",
    )?;
    const GIB: usize = 1 << 30;
    let below_1k = " (rumqttd needs at least 1024)";
    range(
        "router.max_segment_size",
        r.max_segment_size,
        1024,
        GIB,
        below_1k,
    )?;
    range("router.max_segment_count", r.max_segment_count, 1, 1024, "")?;
    if let Some(custom) = &r.custom_segment {
        for (filter, s) in custom {
            let key = format!("router.custom_segment.'{filter}'");
            range(
                &format!("{key}.max_segment_size"),
                s.max_segment_size,
                1024,
                GIB,
                below_1k,
            )?;
            range(
                &format!("{key}.max_segment_count"),
                s.max_segment_count,
                1,
                1024,
                "",
            )?;
        }
    }

    let listeners = listeners(c);
    if listeners.is_empty() {
        return Err("no listener: add a [v4.NAME] table (or [v5.NAME])".to_string());
    }
    let mut seen = HashSet::new();
    for (key, s) in &listeners {
        if s.tls.is_some() {
            return unsupported(
                &format!("{key}.tls"),
                "TLS is not supported (rumqttd is built without TLS); terminate TLS in front of the broker",
            );
        }
        if s.listen.port() != 0 && !seen.insert(s.listen) {
            return Err(format!(
                "{key}.listen = {}: another listener uses it",
                s.listen
            ));
        }
        let k = format!("{key}.connections");
        let cs = &s.connections;
        range(
            &format!("{k}.connection_timeout_ms"),
            usize::from(cs.connection_timeout_ms),
            1,
            65_535,
            "",
        )?;
        range(
            &format!("{k}.max_payload_size"),
            cs.max_payload_size,
            64,
            256 << 20,
            "",
        )?;
        range(
            &format!("{k}.max_inflight_count"),
            cs.max_inflight_count,
            1,
            65_535,
            "",
        )?;
        range(
            &format!("{key}.next_connection_delay_ms"),
            usize::try_from(s.next_connection_delay_ms).unwrap_or(usize::MAX),
            0,
            60_000,
            "",
        )?;
    }
    Ok(())
}

/// Every TCP listener as (`v4.NAME` / `v5.NAME`, settings), sorted by key.
pub(super) fn listeners(c: &rumqttd::Config) -> Vec<(String, &rumqttd::ServerSettings)> {
    let mut out = Vec::new();
    for (proto, servers) in [("v4", &c.v4), ("v5", &c.v5)] {
        if let Some(servers) = servers {
            for (name, s) in servers {
                out.push((format!("{proto}.{name}"), s));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_broker_config("b.toml", text).unwrap_err().to_string()
    }

    fn default_with(from: &str, to: &str) -> String {
        assert!(DEFAULT_BROKER_TOML.contains(from), "{from}");
        DEFAULT_BROKER_TOML.replacen(from, to, 1)
    }

    #[test]
    fn shipped_default_parses() {
        let c = default_broker_config().unwrap();
        assert!(c.router.max_connections >= 10_010);
        let l = listeners(&c);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, "v4.1");
        assert_eq!(l[0].1.listen, "127.0.0.1:1883".parse().unwrap());
        assert!(l[0].1.connections.max_payload_size >= 20_480);
    }

    #[test]
    fn unknown_key_is_named() {
        let m = err(&default_with(
            "max_segment_count = 8",
            "max_segment_cnt = 8",
        ));
        assert!(m.contains("b.toml"), "{m}");
        assert!(m.contains("max_segment"), "{m}");
        let m = err(&default_with(
            "dynamic_filters = true",
            "dynamic_filters = true\nretain = 1",
        ));
        assert!(m.contains("unknown key v4.1.connections.retain"), "{m}");
    }

    #[test]
    fn values_rumqttd_would_panic_on_are_refused() {
        let m = err(&default_with(
            "max_segment_size = 16777216",
            "max_segment_size = 10",
        ));
        assert!(m.contains("router.max_segment_size = 10"), "{m}");
        let m = err(&default_with(
            "max_segment_count = 8",
            "max_segment_count = 0",
        ));
        assert!(m.contains("router.max_segment_count"), "{m}");
        let m = err(&format!(
            "{DEFAULT_BROKER_TOML}\n[router.custom_segment.'a/#']\nmax_segment_size = 2048\nmax_segment_count = 0\n"
        ));
        assert!(
            m.contains("router.custom_segment.'a/#'.max_segment_count"),
            "{m}"
        );
    }

    #[test]
    fn unsupported_sections_are_refused() {
        let m = err(&format!(
            "{DEFAULT_BROKER_TOML}\n[console]\nlisten = \"0.0.0.0:3030\"\n"
        ));
        assert!(m.contains("console"), "{m}");
        let m = err(&format!(
            "{DEFAULT_BROKER_TOML}\n[v4.1.tls]\ncertpath = \"c\"\nkeypath = \"k\"\n"
        ));
        assert!(m.contains("v4.1.tls") && m.contains("TLS"), "{m}");
    }

    #[test]
    fn syntax_and_type_errors_name_the_file() {
        assert!(err("id = ").contains("b.toml"));
        let m = err(&default_with(
            "max_connections = 10010",
            "max_connections = \"many\"",
        ));
        assert!(m.contains("b.toml") && m.contains("max_connections"), "{m}");
        let m = err("id = 0\n[router]\nmax_connections = 10\nmax_outgoing_packet_count = 10\nmax_segment_size = 2048\nmax_segment_count = 1\n");
        assert!(m.contains("no listener"), "{m}");
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let m = err(&format!(
            "{DEFAULT_BROKER_TOML}\n[v5.1]\nname = \"v5\"\nlisten = \"127.0.0.1:1883\"\nnext_connection_delay_ms = 0\n[v5.1.connections]\nconnection_timeout_ms = 100\nmax_payload_size = 2048\nmax_inflight_count = 10\n"
        ));
        assert!(m.contains("v5.1.listen"), "{m}");
    }
}
