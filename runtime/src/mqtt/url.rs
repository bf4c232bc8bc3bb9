//! `mqtt://host:port`: the address of an external broker, checked once.

use std::fmt;
use std::str::FromStr;

use super::MqttError;

/// Port of a broker URL that names none (the IANA MQTT port).
pub const DEFAULT_PORT: u16 = 1883;

/// A validated `mqtt://host[:port]` (plain TCP, MQTT 3.1.1).
///
/// `host` is a DNS name, an IPv4 address or a bracketed IPv6 address; the
/// port defaults to 1883. `tcp://` is accepted as a synonym. TLS
/// (`mqtts://`), websockets, credentials, paths and queries are refused with a
/// message saying so, rather than ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    host: String,
    port: u16,
}

impl BrokerUrl {
    /// Host name or address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = MqttError;

    fn from_str(s: &str) -> Result<Self, MqttError> {
        let bad = |message: &str| MqttError::Url {
            url: s.to_string(),
            message: message.to_string(),
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("expected mqtt://host:port"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" | "tls" | "wss" => return Err(bad(
                "TLS is not supported; use a plain mqtt:// listener (terminate TLS in front of it)",
            )),
            "ws" => return Err(bad("websockets are not supported; use mqtt://host:port")),
            _ => {
                return Err(bad(
                    "the scheme must be mqtt:// (e.g. mqtt://127.0.0.1:1883)",
                ))
            }
        }
        // A single trailing slash is harmless; any other path is a mistake.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("a broker URL has no path, query or fragment"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between [ ]"));
            }
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("expected :port after ]"))?,
                    ),
                ),
            }
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if port.is_some_and(|p| p.contains(':')) {
                return Err(bad("write an IPv6 address in brackets: mqtt://[::1]:1883"));
            }
            if !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            {
                return Err(bad(
                    "the host may only hold letters, digits, '-', '.' and '_'",
                ));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => return Err(bad("port 0 is not a broker's port")),
                Ok(n) => n,
                Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            },
        };
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, u16) {
        let u: BrokerUrl = s.parse().unwrap();
        (u.host().to_string(), u.port())
    }

    fn err(s: &str) -> String {
        s.parse::<BrokerUrl>().unwrap_err().to_string()
    }

    #[test]
    fn accepts_host_port_forms() {
        assert_eq!(ok("mqtt://127.0.0.1:1884"), ("127.0.0.1".into(), 1884));
        assert_eq!(ok("mqtt://broker.local"), ("broker.local".into(), 1883));
        assert_eq!(ok("tcp://b:1/"), ("b".into(), 1));
        assert_eq!(ok("MQTT://[::1]:1885"), ("::1".into(), 1885));
        assert_eq!(ok("mqtt://[::1]"), ("::1".into(), 1883));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "mqtt://127.0.0.1:1884",
            "mqtt://[::1]:1885",
            "mqtt://h:1883",
        ] {
            assert_eq!(s.parse::<BrokerUrl>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        assert!(err("127.0.0.1:1883").contains("mqtt://host:port"));
        assert!(err("mqtts://h:8883").contains("TLS"));
        assert!(err("http://h:1883").contains("scheme"));
        assert!(err("mqtt://:1883").contains("host is missing"));
        assert!(err("mqtt://h:0").contains("port 0"));
        assert!(err("mqtt://h:99999").contains("port"));
        assert!(err("mqtt://h:x").contains("port"));
        assert!(err("mqtt://h:1883/topic").contains("path"));
        assert!(err("mqtt://u:p@h:1883").contains("credentials"));
        assert!(err("mqtt://[::1:1883").contains("IPv6"));
        assert!(err("mqtt://[zz]:1883").contains("IPv6"));
        assert!(err("mqtt://h h:1883").contains("host"));
        assert!(err("mqtt://").contains("host is missing"));
        assert!(err("mqtt://::1:1883").contains("brackets"));
    }
}
