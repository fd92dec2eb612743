//! Admin access: who may use `/-/reload` and `/api/…`. With `SWITCHBOARD_ADMIN_TOKEN` set, a
//! bearer token is required; without it, only a router on loopback serves them, and only to
//! requests whose `Host` is a loopback name or a name the operator allowed: a web page the
//! router's user opens could otherwise rebind its own name to 127.0.0.1 and read the API
//! through the browser (DNS rebinding).

use super::State;
use crate::credentials::Secret;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use warp::Filter;
use warp::host::Authority;

/// Who may use the admin endpoints (`/-/reload`, `/api/…`).
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
    /// for a loopback name or one of `allowed_hosts`.
    pub fn new(listen: SocketAddr, admin_token: Option<String>, allowed_hosts: &[String]) -> Self {
        AdminAccess {
            admin_token: admin_token.filter(|t| !t.is_empty()).map(Secret::new),
            loopback_only: listen.ip().is_loopback(),
            allowed_hosts: allowed_hosts.iter().filter_map(|h| host_name(h)).collect(),
            port: listen.port(),
        }
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
                .is_ok_and(|ip| ip.is_loopback());
        loopback || self.allowed_hosts.contains(&name)
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
             127.0.0.1. Use http://127.0.0.1:{port} or http://localhost:{port}, allow the name \
             with {allow} (or SWITCHBOARD_ALLOWED_HOSTS), or set SWITCHBOARD_ADMIN_TOKEN"
        ))
    }

    /// Whether the admin endpoints are closed to everyone (beyond loopback with no token).
    pub fn closed(&self) -> bool {
        self.admin_token.is_none() && !self.loopback_only
    }

    /// Whether a request with this `Authorization` header, for this `Host`, may use the admin
    /// endpoints.
    fn admit_admin(
        &self,
        authorization: Option<&str>,
        host: Option<&Authority>,
    ) -> Result<(), Refused> {
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
                Some(h) if self.host_allowed(h.as_str()) => Ok(()),
                other => Err(self.foreign_host(other.map(Authority::as_str))),
            },
            None => Err(Refused::Forbidden(
                "the admin API is off: the router listens beyond loopback and SWITCHBOARD_ADMIN_TOKEN is not set",
            )),
        }
    }
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
        .and_then(move |h: Option<String>, host: Option<Authority>| {
            let state = state.clone();
            async move {
                state
                    .access
                    .admit_admin(h.as_deref(), host.as_ref())
                    .map_err(warp::reject::custom)
            }
        })
        .untuple_one()
}

/// The name part of a `Host` value or of an allowed name, lowercase and without a trailing dot:
/// `Router.example:8080` is `router.example`, `[::1]:80` is `[::1]`.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenless(allowed: &[&str]) -> AdminAccess {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        AdminAccess::new("127.0.0.1:8080".parse().unwrap(), None, &allowed)
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
        ] {
            assert!(!access.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn a_foreign_host_is_refused_with_the_way_to_allow_it() {
        let access = tokenless(&[]);
        let host: Authority = "evil.example:8080".parse().unwrap();
        match access.admit_admin(None, Some(&host)) {
            Err(Refused::ForeignHost(m)) => {
                assert!(m.contains("\"evil.example:8080\""), "{m}");
                assert!(m.contains("--allowed-host evil.example "), "{m}");
                assert!(m.contains("SWITCHBOARD_ALLOWED_HOSTS"), "{m}");
                assert!(m.contains("http://127.0.0.1:8080"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            access.admit_admin(None, None),
            Err(Refused::ForeignHost(_))
        ));
        // With a token the token decides, whatever the name.
        let with_token = AdminAccess::new("127.0.0.1:8080".parse().unwrap(), Some("t".into()), &[]);
        assert!(
            with_token
                .admit_admin(Some("Bearer t"), Some(&host))
                .is_ok()
        );
    }
}
