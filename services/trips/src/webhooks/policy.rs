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
        "{0} is, or carries, a loopback, private, link-local or otherwise internal address, which is not on this deployment's allow-list (the trips service's TRIPS_WEBHOOK_ALLOW setting)"
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

    /// Whether a request may go to `ip`. An IPv6 address that carries an IPv4 address (see
    /// [`carried_v4`]) is judged by every IPv4 address it may stand for, unless the allow-list
    /// names the IPv6 address itself.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let allowed = |ip: IpAddr| self.allow.iter().any(|net| net.contains(&ip));
        let admits_v4 = |v4: Ipv4Addr| is_public_v4(v4) || allowed(IpAddr::V4(v4));
        match ip {
            IpAddr::V4(v4) => admits_v4(v4),
            IpAddr::V6(v6) => {
                let carried = carried_v4(v6);
                allowed(ip)
                    || if carried.is_empty() {
                        is_public_v6(v6)
                    } else {
                        carried.into_iter().all(admits_v4)
                    }
            }
        }
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

/// The IPv4 addresses an IPv6 address stands for, if it is one of the forms that carry one:
/// IPv4-mapped (`::ffff:0:0/96`), IPv4-translated (`::ffff:0:0:0/96`), IPv4-compatible
/// (`::/96` but `::` and `::1`), NAT64 well-known (`64:ff9b::/96`), 6to4 (`2002::/16`), Teredo
/// (`2001::/32`: its server and its client, whose address is stored inverted) and NAT64
/// local-use (`64:ff9b:1::/48`), where the operator's prefix length decides where the IPv4
/// address sits, so every place RFC 6052 allows for that prefix counts (in practice one of
/// them reads as an internal address, so such a destination needs the allow-list). Empty for
/// any other address.
fn carried_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = ip.octets();
    let s = ip.segments();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Ipv4Addr::new(a, b, c, d);
    let last = v4(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => vec![last],
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => Vec::new(),
        [0, 0, 0, 0, 0, 0, ..] => vec![last],
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => vec![last],
        [0x64, 0xff9b, 1, ..] => vec![
            v4(o[6], o[7], o[9], o[10]),
            v4(o[7], o[9], o[10], o[11]),
            v4(o[9], o[10], o[11], o[12]),
            last,
        ],
        [0x2002, ..] => vec![v4(o[2], o[3], o[4], o[5])],
        [0x2001, 0, ..] => vec![v4(o[4], o[5], o[6], o[7]), Ipv4Addr::from(!u32::from(last))],
        _ => Vec::new(),
    }
}

/// Whether `ip` is an ordinary address on the public internet.
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
        // Discard-only, 100::/64.
        || ip.segments()[..4] == [0x100, 0, 0, 0]
        // Forms that carry an IPv4 address are judged by it (see `carried_v4`), never here.
        || !carried_v4(ip).is_empty())
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

    #[test]
    fn every_ipv6_form_that_carries_an_ipv4_address_is_judged_by_it() {
        let none = Destinations::default();
        // Each form, carrying the metadata service (169.254.169.254), loopback (127.0.0.2) and
        // a private address (10.0.0.1), then a public one (93.184.216.34).
        let forms: [(&str, [&str; 4]); 8] = [
            (
                "mapped",
                [
                    "::ffff:a9fe:a9fe",
                    "::ffff:127.0.0.2",
                    "::ffff:10.0.0.1",
                    "::ffff:93.184.216.34",
                ],
            ),
            (
                "translated",
                [
                    "::ffff:0:a9fe:a9fe",
                    "::ffff:0:7f00:2",
                    "::ffff:0:a00:1",
                    "::ffff:0:5db8:d822",
                ],
            ),
            (
                "compatible",
                [
                    "::a9fe:a9fe",
                    "::127.0.0.2",
                    "::10.0.0.1",
                    "::93.184.216.34",
                ],
            ),
            (
                "NAT64 well-known",
                [
                    "64:ff9b::a9fe:a9fe",
                    "64:ff9b::7f00:2",
                    "64:ff9b::10.0.0.1",
                    "64:ff9b::93.184.216.34",
                ],
            ),
            (
                "NAT64 local-use, /96",
                [
                    "64:ff9b:1::a9fe:a9fe",
                    "64:ff9b:1::7f00:2",
                    "64:ff9b:1::a00:1",
                    "64:ff9b:1::5db8:d822",
                ],
            ),
            (
                "NAT64 local-use, /48",
                [
                    "64:ff9b:1:a9fe:a9:fe00::",
                    "64:ff9b:1:7f00:0:200::",
                    "64:ff9b:1:a00:1::",
                    "64:ff9b:1:5db8:d8:2200::",
                ],
            ),
            (
                "6to4",
                [
                    "2002:a9fe:a9fe::1",
                    "2002:7f00:2::1",
                    "2002:a00:1::1",
                    "2002:5db8:d822::1",
                ],
            ),
            (
                "Teredo (client address inverted)",
                [
                    "2001:0:5db8:d822::5601:5601",
                    "2001:0:5db8:d822::80ff:fffd",
                    "2001:0:5db8:d822::f5ff:fffe",
                    "2001:0:5db8:d822::a247:27dd",
                ],
            ),
        ];
        for (form, [metadata, loopback, private, public]) in forms {
            for internal in [metadata, loopback, private] {
                let url = format!("http://[{internal}]/latest/meta-data");
                assert!(
                    matches!(none.check_form(&url), Err(Refused::Internal(_))),
                    "{form}: {url} {:?}",
                    none.check_form(&url)
                );
            }
            let url = format!("http://[{public}]/hook");
            // Through a local-use prefix, where it sits is the operator's choice, and some
            // reading of it is always internal: refused unless the allow-list names it.
            let local_use = form.starts_with("NAT64 local-use");
            assert_eq!(none.check_form(&url).is_ok(), !local_use, "{form}: {url}");
        }
        // A Teredo server address is judged too.
        assert!(
            none.check_form("http://[2001:0:a00:1::a247:27dd]/")
                .is_err()
        );
        // The allow-list admits the IPv4 address whatever form carries it, and an IPv6 range
        // it names itself.
        let metadata = Destinations::parse("169.254.169.254/32").unwrap();
        assert!(metadata.check_form("http://[64:ff9b::a9fe:a9fe]/").is_ok());
        assert!(metadata.check_form("http://[64:ff9b::7f00:2]/").is_err());
        let nat64 = Destinations::parse("64:ff9b::/96").unwrap();
        assert!(nat64.check_form("http://[64:ff9b::7f00:2]/").is_ok());
        // The refusal names the setting that would allow it.
        let refusal = none.check_form("http://[64:ff9b::7f00:2]/").unwrap_err();
        assert!(
            refusal.to_string().contains("TRIPS_WEBHOOK_ALLOW"),
            "{refusal}"
        );
        // `::` and `::1` are themselves, not IPv4-compatible forms.
        assert_eq!(carried_v4("::1".parse().unwrap()), Vec::<Ipv4Addr>::new());
        assert!(none.check_form("http://[100::1]/").is_err());
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
