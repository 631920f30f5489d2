//! Where webhooks may be delivered: `http` and `https` URLs whose every address is public, or
//! named by the operator's allow-list.
//!
//! A URL is checked when it is registered and again at every delivery, by the resolver the
//! delivering client uses ([`Destinations::resolver`]), so a name that later resolves to a
//! private address (DNS rebinding) is refused then too. Redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Why a URL may not receive webhooks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the URL does not parse: {0}")]
    Unparsable(String),
    #[error("only http and https URLs can receive webhooks")]
    Scheme,
    #[error("the URL must not carry a user name or password; use the signature to authenticate")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "{0} is a loopback, private, link-local or otherwise internal address, which is not on this deployment's allow-list"
    )]
    Internal(IpAddr),
    #[error("the host name does not resolve")]
    Unresolved,
}

/// The operator's allow-list.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allow: Arc<[IpNet]>,
}

impl Destinations {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: allow.into(),
        }
    }

    /// Parses a comma-separated list of networks (`127.0.0.1/32`) or single addresses.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut allow = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{item:?} is neither an address nor a network"))?,
            };
            allow.push(net);
        }
        Ok(Self::new(allow))
    }

    /// Whether a request may go to `ip`.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Checks `url`'s form, and its host if it is an address. A host name is checked by
    /// [`Self::check_resolved`].
    pub fn check_form(&self, url: &str) -> Result<url::Url, Refused> {
        let parsed = url::Url::parse(url).map_err(|e| Refused::Unparsable(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refused::Scheme);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Credentials);
        }
        match parsed.host() {
            None => return Err(Refused::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(parsed)
    }

    /// Checks `url` fully: its form, and every address its host resolves to.
    pub async fn check(&self, url: &str) -> Result<url::Url, Refused> {
        let parsed = self.check_form(url)?;
        if let Some(url::Host::Domain(host)) = parsed.host() {
            let port = parsed.port_or_known_default().unwrap_or(80);
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| Refused::Unresolved)?
                .collect();
            if addresses.is_empty() {
                return Err(Refused::Unresolved);
            }
            for address in addresses {
                self.check_ip(address.ip())?;
            }
        }
        Ok(parsed)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.admits(ip) {
            Ok(())
        } else {
            Err(Refused::Internal(ip))
        }
    }

    /// A resolver for the delivering client that answers only with admitted addresses.
    pub fn resolver(&self) -> Arc<Self> {
        Arc::new(self.clone())
    }
}

impl reqwest::dns::Resolve for Destinations {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|address| this.admits(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(
                    Box::new(Refused::Unresolved) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An IPv4 address carried in IPv6 (`::ffff:10.0.0.1`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an ordinary address on the public internet.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Carrier-grade NAT, 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24; benchmarking, 198.18.0.0/15; reserved, 240/4.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (first & 0xffc0) == 0xfe80
        // Documentation, 2001:db8::/32.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // IPv4-compatible and NAT64 forms carry an IPv4 address that is judged on its own.
        || ip.to_ipv4().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let none = Destinations::default();
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(
                matches!(none.check_form(url), Err(Refused::Internal(_))),
                "{url}: {:?}",
                none.check_form(url)
            );
        }
        for url in ["http://93.184.216.34/hook", "https://[2606:4700::1111]/x"] {
            assert!(none.check_form(url).is_ok(), "{url}");
        }
        let loopback = Destinations::parse("127.0.0.1/32, ::1").unwrap();
        assert!(loopback.check_form("http://127.0.0.1:9/hook").is_ok());
        assert!(loopback.check_form("http://[::1]:9/hook").is_ok());
        assert!(loopback.check_form("http://127.0.0.2:9/hook").is_err());
        assert!(loopback.check_form("http://10.0.0.1/").is_err());
    }

    #[test]
    fn only_plain_http_urls_without_credentials() {
        let any = Destinations::parse("0.0.0.0/0").unwrap();
        assert_eq!(any.check_form("ftp://1.2.3.4/"), Err(Refused::Scheme));
        assert_eq!(any.check_form("file:///etc/passwd"), Err(Refused::Scheme));
        assert_eq!(
            any.check_form("http://user:pw@1.2.3.4/"),
            Err(Refused::Credentials)
        );
        assert!(matches!(
            any.check_form("not a url"),
            Err(Refused::Unparsable(_))
        ));
        assert!(Destinations::parse("10.0.0.0/8,nonsense").is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_an_internal_address_is_refused() {
        let none = Destinations::default();
        assert!(matches!(
            none.check("http://localhost:9/hook").await,
            Err(Refused::Internal(ip)) if ip.is_loopback()
        ));
        let loopback = Destinations::parse("127.0.0.0/8,::1/128").unwrap();
        assert!(loopback.check("http://localhost:9/hook").await.is_ok());
    }
}
