//! Topic names: building them, parsing them, and the subscription filters.

use crate::reject::Reject;

/// Every topic of protocol v1 starts with this.
pub const PREFIX: &str = "vpp/v1";

/// Number of shards: the shard segment is `shard_of(site)`, `00`..=`ff`.
pub const SHARDS: u16 = 256;

/// The shard of a site: FNV-1a (32 bit) of its id, low byte. Fixed forever
/// for protocol v1: devices compute it too.
pub fn shard_of(site: &str) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in site.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0xff) as u8
}

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Site gateway online/offline (retained; the gateway's last will).
    Status,
    /// Device measurements (QoS 0, frequent).
    Telemetry,
    /// What the device is executing (retained).
    Reported,
    /// Device answers to a desired document.
    Ack,
    /// The setpoints the device should hold (retained, runtime → device).
    Desired,
}

impl Channel {
    /// The last topic segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Status => "status",
            Channel::Telemetry => "telemetry",
            Channel::Reported => "reported",
            Channel::Ack => "ack",
            Channel::Desired => "desired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "status" => Channel::Status,
            "telemetry" => Channel::Telemetry,
            "reported" => Channel::Reported,
            "ack" => Channel::Ack,
            "desired" => Channel::Desired,
            _ => return None,
        })
    }

    /// The channels devices publish on (what the runtime subscribes to).
    pub const FROM_DEVICES: [Channel; 4] = [
        Channel::Status,
        Channel::Telemetry,
        Channel::Reported,
        Channel::Ack,
    ];

    /// Whether the channel has a per-DER topic (all but status). Every
    /// channel has a site-level one (`…/{site}/{channel}`): the gateway's
    /// status, and the site batches of the others ([`crate::batch`]).
    pub fn der_level(self) -> bool {
        self != Channel::Status
    }
}

/// A parsed topic. `der` is `None` for a site-level topic: [`Channel::Status`]
/// or a site batch ([`crate::batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    /// The shard segment.
    pub shard: u8,
    /// The site id.
    pub site: &'a str,
    /// The DER id (device channels).
    pub der: Option<&'a str>,
    /// What it carries.
    pub channel: Channel,
}

impl<'a> Topic<'a> {
    /// Parses and checks a topic: prefix, shard format and value (it must be
    /// the site's shard), id syntax, channel and segment count.
    pub fn parse(topic: &'a str) -> Result<Self, Reject> {
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(Reject::Topic)?;
        let mut parts = rest.split('/');
        let shard = parts.next().ok_or(Reject::Topic)?;
        let site = parts.next().ok_or(Reject::Topic)?;
        let third = parts.next().ok_or(Reject::Topic)?;
        let fourth = parts.next();
        if parts.next().is_some() {
            return Err(Reject::Topic);
        }
        let (der, channel) = match fourth {
            None => (None, Channel::parse(third).ok_or(Reject::Topic)?),
            Some(ch) => (Some(third), Channel::parse(ch).ok_or(Reject::Topic)?),
        };
        if der.is_some() && !channel.der_level() {
            return Err(Reject::Topic);
        }
        if !valid_id(site) || !der.is_none_or(valid_id) {
            return Err(Reject::Topic);
        }
        let shard = parse_shard(shard).ok_or(Reject::Topic)?;
        if shard != shard_of(site) {
            return Err(Reject::WrongShard);
        }
        Ok(Topic {
            shard,
            site,
            der,
            channel,
        })
    }
}

fn parse_shard(s: &str) -> Option<u8> {
    let b = s.as_bytes();
    let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if b.len() != 2 || !b.iter().all(|&c| lower_hex(c)) {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

/// Same rule as the hierarchy's ids (`vpp_domain::NodeId`).
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= vpp_domain::id::MAX_ID_LEN
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// The topic of one DER's `channel`.
pub fn der_topic(site: &str, der: &str, channel: Channel) -> String {
    format!(
        "{PREFIX}/{:02x}/{site}/{der}/{}",
        shard_of(site),
        channel.as_str()
    )
}

/// The status topic of a site's gateway.
pub fn status_topic(site: &str) -> String {
    site_topic(site, Channel::Status)
}

/// The site-level topic of `channel` (status, or a site batch).
pub fn site_topic(site: &str, channel: Channel) -> String {
    format!(
        "{PREFIX}/{:02x}/{site}/{}",
        shard_of(site),
        channel.as_str()
    )
}

/// Filters for every device channel of every shard (a single-node runtime).
pub fn runtime_filters() -> Vec<String> {
    filters("+")
}

/// Filters for the device channels of one shard (a cluster node that owns it).
pub fn shard_filters(shard: u8) -> Vec<String> {
    filters(&format!("{shard:02x}"))
}

/// The site-level then the per-DER filters of the channels devices publish
/// on, for shard segment `shard` (`+` for all).
fn filters(shard: &str) -> Vec<String> {
    let site = Channel::FROM_DEVICES
        .iter()
        .map(|c| format!("{PREFIX}/{shard}/+/{}", c.as_str()));
    let der = Channel::FROM_DEVICES
        .iter()
        .filter(|c| c.der_level())
        .map(|c| format!("{PREFIX}/{shard}/+/+/{}", c.as_str()));
    site.chain(der).collect()
}

/// The filter a gateway uses for the desired documents of all its DERs.
pub fn site_desired_filter(site: &str) -> String {
    format!("{PREFIX}/{:02x}/{site}/+/desired", shard_of(site))
}

/// The filter for the desired documents of a whole shard (a gateway or
/// simulator connection that serves every site of the shard).
pub fn shard_desired_filter(shard: u8) -> String {
    format!("{PREFIX}/{shard:02x}/+/+/desired")
}

/// The filter for the site documents (site batches of desired documents)
/// of a whole shard, for gateways that speak site batches.
pub fn shard_site_desired_filter(shard: u8) -> String {
    format!("{PREFIX}/{shard:02x}/+/desired")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = der_topic("site-1", "site-1-bat", Channel::Telemetry);
        let p = Topic::parse(&t).unwrap();
        assert_eq!(p.site, "site-1");
        assert_eq!(p.der, Some("site-1-bat"));
        assert_eq!(p.channel, Channel::Telemetry);
        assert_eq!(p.shard, shard_of("site-1"));
        let s = status_topic("site-1");
        let p = Topic::parse(&s).unwrap();
        assert_eq!((p.der, p.channel), (None, Channel::Status));
    }

    #[test]
    fn shard_is_stable() {
        // Fixed by the spec: devices compute the same value.
        assert_eq!(shard_of(""), 0xc5);
        assert_eq!(shard_of("site-1"), shard_of("site-1"));
    }

    #[test]
    fn rejects() {
        let good = der_topic("s", "d", Channel::Ack);
        let wrong_shard = good.replacen(
            &format!("/{:02x}/", shard_of("s")),
            &format!("/{:02x}/", shard_of("s").wrapping_add(1)),
            1,
        );
        assert_eq!(Topic::parse(&wrong_shard), Err(Reject::WrongShard));
        for bad in [
            "",
            "vpp/v1",
            "vpp/v2/00/s/d/ack",
            "vpp/v1/0/s/d/ack",
            "vpp/v1/GG/s/d/ack",
            "vpp/v1/00/s/d/nope",
            "vpp/v1/00/s/d/ack/extra",
            "vpp/v1/00/s/d/status",
            "vpp/v1/00/s p/d/ack",
            "vpp/v1/00//d/ack",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn site_batch_topics() {
        let t = site_topic("site-1", Channel::Telemetry);
        let p = Topic::parse(&t).unwrap();
        assert_eq!(
            (p.site, p.der, p.channel),
            ("site-1", None, Channel::Telemetry)
        );
        for ch in [Channel::Ack, Channel::Reported, Channel::Desired] {
            let t = site_topic("site-1", ch);
            assert_eq!(Topic::parse(&t).unwrap().channel, ch);
        }
    }

    #[test]
    fn filters_match_topics() {
        assert_eq!(
            runtime_filters(),
            [
                "vpp/v1/+/+/status",
                "vpp/v1/+/+/telemetry",
                "vpp/v1/+/+/reported",
                "vpp/v1/+/+/ack",
                "vpp/v1/+/+/+/telemetry",
                "vpp/v1/+/+/+/reported",
                "vpp/v1/+/+/+/ack",
            ]
        );
        assert_eq!(shard_filters(10)[0], "vpp/v1/0a/+/status");
        assert_eq!(shard_filters(10)[5], "vpp/v1/0a/+/+/reported");
    }
}
