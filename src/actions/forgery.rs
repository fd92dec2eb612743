//! The request-forgery check on URLs built from event data: such a request must not reach
//! loopback, private or link-local addresses (cloud metadata lives at 169.254.169.254) unless
//! the destination says `allow_private: true`.
//!
//! Host names are checked by the resolver of the HTTP client that sends those requests, on the
//! very addresses it then connects to (redirects included). A check made before sending, with a
//! lookup of its own, could be passed by a name that resolves to a public address for the check
//! and to an internal one a moment later for the connection (DNS rebinding). Addresses written
//! in the URL are never resolved, so [`check_literal`] checks those.
//!
//! Behind a proxy (`HTTPS_PROXY` and the like) the proxy resolves the target, not this process:
//! there [`check_resolved`] looks the name up before sending, which a name that changes its
//! answer between the two lookups could pass.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};

/// Whether an address is one an event-templated URL must not reach: loopback, private,
/// link-local (cloud metadata lives there), carrier-grade NAT, unspecified, broadcast, multicast.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // Forms that carry an IPv4 address and reach it: IPv4-compatible (`::a.b.c.d`),
            // NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_internal(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return embedded(s[6], s[7]);
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            let first = s[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A host name that resolved to an internal address.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to send to {host} ({ip}): this URL is built from event data and points at an internal address; set allow_private: true on the destination if that is intended"
)]
pub struct InternalAddress {
    /// The host as written in the URL.
    pub host: String,
    /// The internal address it is, or resolved to.
    pub ip: IpAddr,
}

/// Resolves with the system's resolver and refuses a name with any internal address among its
/// answers (a name with a public and a private address could be made to connect to either).
pub struct ScreenedResolver;

impl Resolve for ScreenedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addrs = screened(&host, addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// `host`'s addresses, or the refusal of the first internal one among them.
fn screened(
    host: &str,
    addrs: impl Iterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, InternalAddress> {
    let addrs: Vec<SocketAddr> = addrs.collect();
    match addrs.iter().find(|a| is_internal(a.ip())) {
        Some(a) => Err(InternalAddress {
            host: host.to_string(),
            ip: a.ip(),
        }),
        None => Ok(addrs),
    }
}

/// Refuses a URL whose host is an internal address written as such (`http://10.0.0.1/`,
/// `http://[::1]/`): those are connected to without a lookup.
pub fn check_literal(url: &reqwest::Url) -> Result<(), InternalAddress> {
    let host = url.host_str().unwrap_or_default();
    match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) if is_internal(ip) => Err(InternalAddress {
            host: host.to_string(),
            ip,
        }),
        _ => Ok(()),
    }
}

/// Why [`check_resolved`] did not pass a URL.
#[derive(Debug)]
pub enum Unchecked {
    /// The name resolves to an internal address.
    Internal(InternalAddress),
    /// The name does not resolve (now).
    Unresolved(String),
}

/// Looks up the URL's host and refuses it if any of its addresses is internal (for requests
/// sent through a proxy, which resolves the name itself).
pub async fn check_resolved(url: &reqwest::Url) -> Result<(), Unchecked> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Unchecked::Unresolved(format!("cannot resolve {host}: {e}")))?;
    screened(host, addrs).map(drop).map_err(Unchecked::Internal)
}

/// The refusal behind a failed request, if this check refused it.
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a InternalAddress> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<InternalAddress>() {
            return Some(refused);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn internal_addresses_written_in_the_url_are_refused() {
        for refused in [
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://[::1]:9/",
            "http://[::ffff:192.168.0.1]/",
        ] {
            let e = check_literal(&url(refused)).unwrap_err();
            assert!(e.to_string().contains("internal address"), "{refused}: {e}");
        }
        for allowed in [
            "https://hooks.slack.com/services/x",
            "http://93.184.215.14/",
        ] {
            assert!(check_literal(&url(allowed)).is_ok(), "{allowed}");
        }
    }

    #[tokio::test]
    async fn behind_a_proxy_a_name_that_resolves_inside_is_refused_before_sending() {
        match check_resolved(&url("http://localhost:9/hook")).await {
            Err(Unchecked::Internal(e)) => assert!(e.ip.is_loopback(), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused_by_the_client_that_connects() {
        let client = reqwest::Client::builder()
            .dns_resolver(ScreenedResolver)
            .build()
            .unwrap();
        // `localhost` resolves to loopback without any DNS server; nothing needs to listen.
        let e = client
            .get("http://localhost:9/hook")
            .send()
            .await
            .unwrap_err();
        let refused = refusal(&e).expect("the refusal is in the error's sources");
        assert_eq!(refused.host, "localhost");
        assert!(refused.ip.is_loopback(), "{refused}");
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:0a00:0001::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "8.8.8.8",
            "64:ff9b::808:808",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
