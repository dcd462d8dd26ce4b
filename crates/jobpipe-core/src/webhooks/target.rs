//! Which URLs a webhook may call: `https` (plain `http` only to loopback, where the local stack allows it),
//! no credentials, and a host whose every address is public. Private, loopback, link-local (the instance
//! metadata service at 169.254.169.254), shared, multicast and reserved addresses are refused, also when
//! they hide in an IPv6 address (IPv4-mapped, NAT64). Names are checked again on every connection, by the
//! sender's resolver, so a name that later resolves to a private address is refused then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest URL a webhook may have.
pub const MAX_URL_BYTES: usize = 2048;

/// Where webhooks may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// The local stack's setting (`WEBHOOK_ALLOW_LOOPBACK`): loopback addresses, and `http` to them, are
    /// allowed so tests can receive. Never set when deployed.
    pub allow_loopback: bool,
}

/// Why a URL or an address may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

impl TargetPolicy {
    /// The URL, if a webhook may call it. A host that is a name is resolved only when called.
    pub fn check_url(&self, text: &str) -> Result<url::Url, TargetError> {
        if text.len() > MAX_URL_BYTES {
            return Err(TargetError(format!("is {} bytes; at most {MAX_URL_BYTES}", text.len())));
        }
        let url = url::Url::parse(text).map_err(|e| TargetError(format!("is not an absolute URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError("must not carry credentials (user:password@)".into()));
        }
        if url.fragment().is_some() {
            return Err(TargetError("must not have a fragment (#...)".into()));
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => Host::Name(name.to_ascii_lowercase()),
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            None => return Err(TargetError("must name a host".into())),
        };
        match &host {
            Host::Ip(ip) => self.check_ip(*ip)?,
            Host::Name(name) if name == "localhost" || name.ends_with(".localhost") => {
                if !self.allow_loopback {
                    return Err(TargetError(format!("{name} is this machine; webhooks go to public hosts")));
                }
            }
            Host::Name(name) if !name.contains('.') => {
                return Err(TargetError(format!("{name:?} is not a public host name")));
            }
            Host::Name(_) => {}
        }
        match url.scheme() {
            "https" => Ok(url),
            "http" if self.allow_loopback && self.is_loopback_host(&host) => Ok(url),
            "http" => Err(TargetError("must be https".into())),
            other => Err(TargetError(format!("must be https, not {other}"))),
        }
    }

    fn is_loopback_host(&self, host: &Host) -> bool {
        match host {
            Host::Ip(ip) => canonical(*ip).is_loopback(),
            Host::Name(name) => name == "localhost" || name.ends_with(".localhost"),
        }
    }

    /// Whether a webhook may connect to this address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), TargetError> {
        let ip = canonical(ip);
        if ip.is_loopback() && self.allow_loopback {
            return Ok(());
        }
        match forbidden_because(ip) {
            Some(why) => Err(TargetError(format!("{ip} is {why}; webhooks go to public addresses"))),
            None => Ok(()),
        }
    }
}

enum Host {
    Name(String),
    Ip(IpAddr),
}

/// The IPv4 address an IPv6 address carries (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`), or
/// the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

fn forbidden_because(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        _ if ip.is_link_local() => "a link-local address (the instance metadata service is one)",
        _ if a == 100 && (64..128).contains(&b) => "a shared (carrier-grade NAT) address",
        _ if a == 192 && b == 0 && c == 0 => "an IETF protocol address",
        _ if a == 198 && (b == 18 || b == 19) => "a benchmarking address",
        _ if ip.is_documentation() => "a documentation address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_broadcast() || a >= 240 => "a reserved address",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match () {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        // fc00::/7, where the instance metadata service's IPv6 address (fd00:ec2::254) is.
        _ if ip.is_unique_local() => "a private (unique local) address",
        _ if ip.is_unicast_link_local() => "a link-local address",
        _ if ip.is_multicast() => "a multicast address",
        _ if first == 0x2001 && ip.segments()[1] == 0x0db8 => "a documentation address",
        // 6to4 and the deprecated IPv4-compatible form carry IPv4 addresses this check does not look into.
        _ if first == 0x2002 || ip.segments()[..6] == [0; 6] => "an IPv6 address carrying an IPv4 one",
        _ if first & 0xe000 != 0x2000 => "not a global unicast address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYED: TargetPolicy = TargetPolicy { allow_loopback: false };
    const LOCAL: TargetPolicy = TargetPolicy { allow_loopback: true };

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_refused() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::",
            "2001:db8::1",
            "::a00:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(DEPLOYED.check_ip(ip).is_err(), "{ip} must be refused");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "52.94.236.248", "172.32.0.1", "100.128.0.1", "2600:1f18::1", "::ffff:8.8.8.8"]
        {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(DEPLOYED.check_ip(ip), Ok(()), "{ip} is public");
        }
        assert_eq!(LOCAL.check_ip("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(LOCAL.check_ip("::1".parse().unwrap()), Ok(()));
        assert!(LOCAL.check_ip("10.0.0.1".parse().unwrap()).is_err(), "the local stack allows loopback only");
        assert!(LOCAL.check_ip("169.254.169.254".parse().unwrap()).is_err());
    }

    #[test]
    fn urls_must_be_https_to_a_public_host() {
        for good in ["https://example.com/hook", "https://hooks.example.com:8443/a?b=c", "https://8.8.8.8/x"] {
            assert!(DEPLOYED.check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://example.com/hook",
            "ftp://example.com/x",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "https://10.1.2.3/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:127.0.0.1]/",
            "https://localhost/x",
            "https://intranet/x",
            "not a url",
            "/relative",
            "",
        ] {
            assert!(DEPLOYED.check_url(bad).is_err(), "{bad} must be refused");
        }
        assert!(DEPLOYED.check_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES))).is_err());
        assert!(LOCAL.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(LOCAL.check_url("http://localhost:8080/hook").is_ok());
        assert!(LOCAL.check_url("http://example.com/hook").is_err(), "plain http only to loopback");
        assert!(LOCAL.check_url("https://10.0.0.1/").is_err());
    }
}
