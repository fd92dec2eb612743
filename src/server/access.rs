//! Admin access: who may use `/-/reload` and `/api/…`. With `SWITCHBOARD_ADMIN_TOKEN` set, a
//! bearer token is required; without it, only a router on loopback serves them, and only to
//! requests that a web page on another site cannot make through the browser of the router's
//! user: their `Host` is a loopback name or a name the operator allowed (else a page could
//! rebind its own name to 127.0.0.1 and read the API: DNS rebinding), and they come from no
//! other site (`Origin`, `Sec-Fetch-Site`; else a page could post to 127.0.0.1 directly: it
//! cannot read the answer, but a retry, a discard or a reload would be done).

use super::State;
use crate::credentials::Secret;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use warp::Filter;
use warp::host::Authority;

/// Who may use the admin endpoints (`/-/reload`, `/api/…`).
#[derive(Debug)]
pub struct AdminAccess {
    admin_token: Option<Secret>,
    loopback_only: bool,
    /// Names besides the loopback ones that a tokenless router answers to, lowercase.
    allowed_hosts: Vec<String>,
    port: u16,
}

impl AdminAccess {
    /// For a router listening on `listen`: the admin endpoints need `admin_token`, which is
    /// required unless the router listens on loopback only; without it, they answer requests
    /// for a loopback name or one of `allowed_hosts`. Fails on an allowed host that is not a
    /// host name or an IP address.
    pub fn new(
        listen: SocketAddr,
        admin_token: Option<String>,
        allowed_hosts: &[String],
    ) -> Result<Self, BadHostName> {
        let allowed_hosts = allowed_hosts
            .iter()
            .map(|h| {
                host_name(h)
                    .filter(|n| valid_name(n))
                    .ok_or_else(|| BadHostName(h.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(AdminAccess {
            admin_token: admin_token.filter(|t| !t.is_empty()).map(Secret::new),
            loopback_only: listen.ip().is_loopback(),
            allowed_hosts,
            port: listen.port(),
        })
    }

    /// Whether the allowed host names matter: the admin API is open without a token.
    pub fn uses_allowed_hosts(&self) -> bool {
        self.admin_token.is_none() && self.loopback_only
    }

    /// Whether a tokenless router answers a request for `host`: a loopback name (`localhost`,
    /// `127.0.0.1`, `[::1]`, …) or an allowed one, whatever the port.
    fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        let loopback = name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback());
        loopback || self.allowed_hosts.contains(&name)
    }

    /// Whether a request says it comes from a page of another site: an `Origin` that is not
    /// this router's own (a loopback or allowed name; `null` is a sandboxed page), or a
    /// `Sec-Fetch-Site` of `cross-site` or `same-site`.
    fn comes_from_another_site(&self, origin: Option<&str>, fetch_site: Option<&str>) -> bool {
        let foreign_origin = origin.is_some_and(|o| {
            let host = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"));
            !host.is_some_and(|h| self.host_allowed(h))
        });
        let cross_fetch = fetch_site.is_some_and(|f| {
            f.eq_ignore_ascii_case("cross-site") || f.eq_ignore_ascii_case("same-site")
        });
        foreign_origin || cross_fetch
    }

    /// Why a request for `host` is refused, and how to allow the name.
    fn foreign_host(&self, host: Option<&str>) -> Refused {
        let port = self.port;
        let named = match host {
            Some(h) => format!("the Host {h:?} is not a name of this router"),
            None => "the request names no Host".to_string(),
        };
        let allow = match host.and_then(host_name) {
            Some(name) => format!("--allowed-host {name}"),
            None => "--allowed-host NAME".to_string(),
        };
        Refused::ForeignHost(format!(
            "{named}: without SWITCHBOARD_ADMIN_TOKEN the admin API answers only requests for \
             a loopback name, so that a web page cannot read it by rebinding its own name to \
             127.0.0.1 (DNS rebinding). Use http://127.0.0.1:{port} or http://localhost:{port}, \
             allow a name that resolves to this machine for its own users with {allow} (or \
             SWITCHBOARD_ALLOWED_HOSTS), or set SWITCHBOARD_ADMIN_TOKEN (behind a reverse \
             proxy, always set the token)"
        ))
    }

    /// How the console is entered: with the admin token (a login), open (a tokenless router
    /// on loopback, for loopback names only), or not at all.
    pub(super) fn console(&self) -> ConsoleEntry<'_> {
        match &self.admin_token {
            Some(token) => ConsoleEntry::Login(token),
            None if self.loopback_only => ConsoleEntry::Open,
            None => ConsoleEntry::Closed,
        }
    }

    /// Whether a tokenless router answers a request for `host` (see [`Self::host_allowed`]),
    /// with the refusal to show when it does not.
    pub(super) fn check_host(&self, host: Option<&str>) -> Result<(), String> {
        match host {
            Some(h) if self.host_allowed(h) => Ok(()),
            other => match self.foreign_host(other) {
                Refused::ForeignHost(m) => Err(m),
                _ => Err("foreign host".into()),
            },
        }
    }

    /// Whether the admin endpoints are closed to everyone (beyond loopback with no token).
    pub fn closed(&self) -> bool {
        self.admin_token.is_none() && !self.loopback_only
    }

    /// Whether a request may use the admin endpoints.
    fn admit_admin(&self, r: &Asked<'_>) -> Result<(), Refused> {
        let (authorization, host) = (r.authorization, r.host);
        match &self.admin_token {
            Some(token) => {
                let offered = authorization
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::trim);
                if offered.is_some_and(|t| token.matches(t)) {
                    Ok(())
                } else {
                    Err(Refused::Unauthorized(
                        "a bearer token is required: Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN",
                    ))
                }
            }
            None if self.loopback_only => match host {
                Some(h) if !self.host_allowed(h) => Err(self.foreign_host(Some(h))),
                None => Err(self.foreign_host(None)),
                Some(_) if self.comes_from_another_site(r.origin, r.fetch_site) => {
                    Err(Refused::ForeignHost(format!(
                        "the request comes from a page of another site (Origin: {}): without \
                         SWITCHBOARD_ADMIN_TOKEN the admin API takes no request a web page makes \
                         through the browser. Send it from a client of your own (curl), or set \
                         SWITCHBOARD_ADMIN_TOKEN",
                        r.origin.unwrap_or("-")
                    )))
                }
                Some(_) => Ok(()),
            },
            None => Err(Refused::Forbidden(
                "the admin API is off: the router listens beyond loopback and SWITCHBOARD_ADMIN_TOKEN is not set",
            )),
        }
    }
}

/// How the console is entered.
pub(super) enum ConsoleEntry<'a> {
    /// A login form turns the admin token into a session cookie.
    Login(&'a Secret),
    /// No login: a tokenless router on loopback, for loopback (or allowed) names only.
    Open,
    /// Refused: the router listens beyond loopback without a token.
    Closed,
}

/// An `--allowed-host` value that is not a host name or an IP address.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "--allowed-host {0:?} is not a host name or an IP address (write `router.internal`, without a scheme, path or wildcard)"
)]
pub struct BadHostName(pub String);

/// What the admin check reads from a request.
#[derive(Debug, Default, Clone, Copy)]
struct Asked<'a> {
    authorization: Option<&'a str>,
    host: Option<&'a str>,
    origin: Option<&'a str>,
    fetch_site: Option<&'a str>,
}

/// Why an admin request, or a rate-limited webhook, was refused.
#[derive(Debug)]
pub(super) enum Refused {
    /// No token, or the wrong one (401).
    Unauthorized(&'static str),
    /// The admin API is off (403).
    Forbidden(&'static str),
    /// A tokenless router asked for a name that is not its own (403).
    ForeignHost(String),
    /// Too many failed requests from this client (429).
    RateLimited(std::time::Duration),
}
impl warp::reject::Reject for Refused {}

/// Passes requests that may use the admin endpoints.
pub(super) fn admin_only(
    state: Arc<State>,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::host::optional())
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .and_then(
            move |authorization: Option<String>,
                  host: Option<Authority>,
                  origin: Option<String>,
                  fetch_site: Option<String>| {
                let state = state.clone();
                async move {
                    let asked = Asked {
                        authorization: authorization.as_deref(),
                        host: host.as_ref().map(Authority::as_str),
                        origin: origin.as_deref(),
                        fetch_site: fetch_site.as_deref(),
                    };
                    state
                        .access
                        .admit_admin(&asked)
                        .map_err(warp::reject::custom)
                }
            },
        )
        .untuple_one()
}

/// The name part of a `Host` value or of an allowed name, lowercase and without a trailing dot:
/// `Router.example:8080` is `router.example`, `[::1]:80` is `[::1]`. Anything but a name and
/// an optional numeric port (userinfo, a path, text after `]`) gives none.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    if host.contains(['@', '/', '\\', ' ']) {
        return None;
    }
    let (name, rest) = match host.strip_prefix('[') {
        Some(_) => host.split_at(host.find(']')? + 1),
        None => host.split_at(host.find(':').unwrap_or(host.len())),
    };
    if !rest.is_empty() {
        let port = rest.strip_prefix(':')?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

/// Whether a name (from [`host_name`]) is a host name or an IP address.
fn valid_name(name: &str) -> bool {
    let ip = name.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().is_ok()
        || name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenless(allowed: &[&str]) -> AdminAccess {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        AdminAccess::new("127.0.0.1:8080".parse().unwrap(), None, &allowed).unwrap()
    }

    fn for_host(host: &str) -> Asked<'_> {
        Asked {
            host: Some(host),
            ..Asked::default()
        }
    }

    #[test]
    fn a_tokenless_router_answers_loopback_names_and_allowed_ones_only() {
        let access = tokenless(&["Router.Internal", "ops.example:9000"]);
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:8080",
            "LOCALHOST.",
            "[::1]:8080",
            "[::1]",
            "[::ffff:127.0.0.1]:8080",
            "router.internal:8080",
            "ops.example",
        ] {
            assert!(access.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::ffff:8.8.8.8]:8080",
            "10.0.0.1:8080",
            "",
            "[::1",
            "[::1]evil.example",
            "[::1].evil.example",
            "[::1]@evil.example",
            "localhost@evil.example",
            "localhost:80x",
            "localhost:",
            "::1",
        ] {
            assert!(!access.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn a_foreign_host_is_refused_with_the_way_to_allow_it() {
        let access = tokenless(&[]);
        match access.admit_admin(&for_host("evil.example:8080")) {
            Err(Refused::ForeignHost(m)) => {
                assert!(m.contains("\"evil.example:8080\""), "{m}");
                assert!(m.contains("--allowed-host evil.example "), "{m}");
                assert!(m.contains("SWITCHBOARD_ALLOWED_HOSTS"), "{m}");
                assert!(m.contains("http://127.0.0.1:8080"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            access.admit_admin(&Asked::default()),
            Err(Refused::ForeignHost(_))
        ));
        // With a token the token decides, whatever the name.
        let with_token =
            AdminAccess::new("127.0.0.1:8080".parse().unwrap(), Some("t".into()), &[]).unwrap();
        let asked = Asked {
            authorization: Some("Bearer t"),
            ..for_host("evil.example:8080")
        };
        assert!(with_token.admit_admin(&asked).is_ok());
    }

    #[test]
    fn a_page_of_another_site_cannot_post_to_the_loopback_address() {
        let access = tokenless(&["router.internal"]);
        let from = |origin: Option<&'static str>, site: Option<&'static str>| Asked {
            origin,
            fetch_site: site,
            ..for_host("127.0.0.1:8080")
        };
        for refused in [
            from(Some("http://evil.example"), None),
            from(Some("https://evil.example:8080"), None),
            from(Some("null"), None),
            from(None, Some("cross-site")),
            from(None, Some("same-site")),
            from(Some("http://127.0.0.1:8080"), Some("cross-site")),
        ] {
            assert!(
                matches!(access.admit_admin(&refused), Err(Refused::ForeignHost(_))),
                "{refused:?}"
            );
        }
        for own in [
            from(None, None),
            from(Some("http://127.0.0.1:8080"), Some("same-origin")),
            from(Some("http://localhost:8080"), None),
            from(Some("https://router.internal"), None),
            from(None, Some("none")),
        ] {
            assert!(access.admit_admin(&own).is_ok(), "{own:?}");
        }
    }

    #[test]
    fn an_allowed_host_must_be_a_name() {
        let listen = "127.0.0.1:8080".parse().unwrap();
        for bad in [
            "http://router.example",
            "*",
            "router.example/admin",
            "a b",
            "",
        ] {
            let e = AdminAccess::new(listen, None, &[bad.to_string()]).unwrap_err();
            assert!(e.to_string().contains("--allowed-host"), "{e}");
        }
        for good in [
            "Router.Example",
            "router.example:8080",
            "10.0.0.5",
            "[fd00::1]",
        ] {
            assert!(
                AdminAccess::new(listen, None, &[good.to_string()]).is_ok(),
                "{good}"
            );
        }
    }
}
