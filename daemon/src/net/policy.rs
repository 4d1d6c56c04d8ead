//! A function's egress policy: what its VMs may reach beyond what is always
//! denied (see [`super::rules`]). Values from the configuration or the API
//! are parsed into std types here, so only typed addresses and ports ever
//! reach an nft script.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Largest allow-list (entries become nft rules).
pub const MAX_ALLOW_ENTRIES: usize = 256;

/// What a function's VMs may reach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EgressPolicy {
    /// Public IPv4 addresses only (every special range denied): the default,
    /// as Lambda's default is internet egress.
    #[default]
    Internet,
    /// No network: the VM gets no interface at all.
    None,
    /// Only these destinations (which may be private addresses), TCP and UDP.
    Allow(Vec<AllowEntry>),
}

/// One allow-list entry: an IPv4 network and a port (`10.1.2.3/32:5432`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowEntry {
    /// The network's address, host bits cleared.
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
    /// Destination port (TCP or UDP), never 0.
    pub port: u16,
}

/// A policy or an allow-list entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl std::str::FromStr for AllowEntry {
    type Err = PolicyError;

    /// Parses `A.B.C.D/LEN:PORT` (`/LEN` optional: /32).
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let bad = |why: &str| {
            PolicyError(format!(
                "allow-list entry {:?}: {why} (expected A.B.C.D/LEN:PORT, e.g. 10.1.2.3/32:5432)",
                s.chars().take(64).collect::<String>()
            ))
        };
        let (net, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not 1 to 65535"))?;
        if port == 0 {
            return Err(bad("the port is not 1 to 65535"));
        }
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad("bad prefix length"))?),
            None => (net, 32),
        };
        if prefix > 32 {
            return Err(bad("the prefix length is more than 32"));
        }
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 address (IPv6 is off)"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
            port,
        })
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.addr, self.prefix, self.port)
    }
}

/// The wire and file shape: `"internet"`, `"none"` or `{"Allow": [..]}`
/// (`allow` in TOML).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Word(String),
    Allow {
        #[serde(rename = "Allow", alias = "allow")]
        allow: Vec<String>,
    },
}

impl EgressPolicy {
    /// Parses an allow-list, checking its size.
    pub fn allow<S: AsRef<str>>(entries: &[S]) -> Result<Self, PolicyError> {
        if entries.len() > MAX_ALLOW_ENTRIES {
            return Err(PolicyError(format!(
                "an allow-list has at most {MAX_ALLOW_ENTRIES} entries"
            )));
        }
        entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Allow)
    }

    /// Whether VMs with this policy get an interface.
    pub fn has_interface(&self) -> bool {
        !matches!(self, Self::None)
    }
}

impl Serialize for EgressPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Internet => Repr::Word("internet".into()),
            Self::None => Repr::Word("none".into()),
            Self::Allow(v) => Repr::Allow {
                allow: v.iter().map(ToString::to_string).collect(),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for EgressPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Repr::deserialize(d).map_err(|_| {
            D::Error::custom(
                r#"an egress policy is "internet", "none" or {"Allow": ["A.B.C.D/LEN:PORT", ...]}"#,
            )
        })? {
            Repr::Word(w) if w == "internet" => Ok(Self::Internet),
            Repr::Word(w) if w == "none" => Ok(Self::None),
            Repr::Word(_) => Err(D::Error::custom(
                r#"an egress policy is "internet", "none" or {"Allow": [...]}"#,
            )),
            Repr::Allow { allow } => Self::allow(&allow).map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_into_typed_values_and_nothing_else() {
        let e: AllowEntry = "10.1.2.3/24:5432".parse().unwrap();
        assert_eq!(e.to_string(), "10.1.2.0/24:5432");
        assert_eq!(
            "203.0.113.10:80".parse::<AllowEntry>().unwrap().to_string(),
            "203.0.113.10/32:80"
        );
        for bad in [
            "10.0.0.1/33:80",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1",
            "::1/128:80",
            "10.0.0.1/8:80; flush ruleset",
            "10.0.0.1\n/8:80",
            "10.0.0.1/8 :80",
        ] {
            assert!(bad.parse::<AllowEntry>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_json_shape_round_trips() {
        for (text, policy) in [
            (r#""internet""#, EgressPolicy::Internet),
            (r#""none""#, EgressPolicy::None),
            (
                r#"{"Allow":["10.1.2.3/32:5432"]}"#,
                EgressPolicy::allow(&["10.1.2.3/32:5432"]).unwrap(),
            ),
        ] {
            let p: EgressPolicy = serde_json::from_str(text).unwrap();
            assert_eq!(p, policy);
            assert_eq!(serde_json::to_string(&p).unwrap(), text);
        }
        assert!(serde_json::from_str::<EgressPolicy>(r#""everything""#).is_err());
        assert!(serde_json::from_str::<EgressPolicy>(r#"{"Allow":["x"]}"#).is_err());
        let many: Vec<String> = (0..=MAX_ALLOW_ENTRIES)
            .map(|i| format!("10.0.0.1:{}", i + 1))
            .collect();
        assert!(EgressPolicy::allow(&many).is_err());
    }
}
