//! Where a target listens: an IP address or a host name, with a port. A name is resolved at
//! every connection attempt, not once, so that a storage node whose address changes (a
//! restarted machine or pod) is found again, and one whose name does not resolve yet is simply
//! unreachable for now.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::HostError;

/// A target's address: `host:port`, where host is an IP address (IPv6 in brackets) or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetAddress {
    host: String,
    port: u16,
}

impl TargetAddress {
    /// An address from its parts (`host` without brackets).
    pub fn new(host: &str, port: u16) -> TargetAddress {
        TargetAddress {
            host: host.to_string(),
            port,
        }
    }

    /// The host part: an IP address or a name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every socket address the host stands for now, in the resolver's order.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, HostError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| HostError::Resolve {
                address: self.to_string(),
                reason: e.to_string(),
            })?
            .collect();
        if found.is_empty() {
            return Err(HostError::Resolve {
                address: self.to_string(),
                reason: "the name has no addresses".into(),
            });
        }
        Ok(found)
    }
}

impl From<SocketAddr> for TargetAddress {
    fn from(a: SocketAddr) -> TargetAddress {
        TargetAddress {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl fmt::Display for TargetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for TargetAddress {
    type Err = String;

    /// Parses `host:port`, `IPv4:port` or `[IPv6]:port`; names are not resolved here.
    fn from_str(text: &str) -> Result<TargetAddress, String> {
        let wrong = || format!("{text:?} is not a host:port address");
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (ip, port) = rest.split_once("]:").ok_or_else(wrong)?;
            ip.parse::<std::net::Ipv6Addr>().map_err(|_| wrong())?;
            (ip, port)
        } else {
            // An IPv6 address needs its brackets: without them the port is ambiguous.
            let (host, port) = text.rsplit_once(':').ok_or_else(wrong)?;
            let name_like = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if !host.chars().all(name_like) {
                return Err(wrong());
            }
            (host, port)
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(wrong());
        }
        let port: u16 = port.parse().map_err(|_| wrong())?;
        if host.is_empty() || port == 0 {
            return Err(wrong());
        }
        // One spelling per address, so that two spellings of it compare equal: an IP in its
        // canonical form (a host of digits and dots must be one), a name in lower case.
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
                return Err(wrong());
            }
            Err(_) => host.to_ascii_lowercase(),
        };
        Ok(TargetAddress { host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_names_and_both_ip_families() {
        for text in [
            "node1:4420",
            "10.0.0.7:4420",
            "[fe80::1]:4421",
            "a-b.c_d.example:1",
        ] {
            let a: TargetAddress = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        let a: TargetAddress = "[::1]:8009".parse().unwrap();
        assert_eq!((a.host(), a.port()), ("::1", 8009));
        let from: TargetAddress = "[::1]:8009".parse::<SocketAddr>().unwrap().into();
        assert_eq!(from, a);
        // Two spellings of one address are one address.
        assert_eq!(
            "[0:0::1]:8009".parse::<TargetAddress>().unwrap(),
            a,
            "IPv6 in canonical form"
        );
        assert_eq!(
            "Node1.Example:4420".parse::<TargetAddress>().unwrap(),
            "node1.example:4420".parse::<TargetAddress>().unwrap()
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for text in [
            "",
            "node1",
            "node1:",
            ":4420",
            "node1:99999",
            "node1:0",
            "fe80::1:4420",
            "[nope]:4420",
            "no de:4420",
            "node/x:4420",
            "10.0.0.300:4420",
            "1.2.3.4.5:4420",
            "node1:+4420",
        ] {
            assert!(text.parse::<TargetAddress>().is_err(), "{text:?}");
        }
    }

    #[tokio::test]
    async fn ip_addresses_need_no_resolver_and_names_go_through_it() {
        let ip: TargetAddress = "127.0.0.1:4420".parse().unwrap();
        assert_eq!(
            ip.resolve().await.unwrap(),
            vec!["127.0.0.1:4420".parse::<SocketAddr>().unwrap()]
        );
        let local: TargetAddress = "localhost:4420".parse().unwrap();
        let found = local.resolve().await.unwrap();
        assert!(
            found
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 4420)
        );
        let nowhere: TargetAddress = "no-such-host.invalid:4420".parse().unwrap();
        match nowhere.resolve().await {
            Err(HostError::Resolve { address, .. }) => {
                assert_eq!(address, "no-such-host.invalid:4420")
            }
            other => panic!("{other:?}"),
        }
    }
}
