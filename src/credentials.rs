//! Webhook source credentials, configured under `sources:` in the rules file. Modes combine:
//! every mode that is configured must pass.
//!
//! - `secret_key`: a secret the source writes into the body (its field is the source's own),
//!   compared in constant time;
//! - `token`: a token in the URL (`/webhooks/{source}/{token}` or `?token=`), constant time;
//! - `hmac_secret`: an HMAC-SHA256 of the raw body in a header (the source's own header by
//!   default);
//! - `allow_ips`: the client address must be in one of these networks; `X-Forwarded-For` is
//!   believed only from `trusted_proxies`;
//! - `replay_window`: the event's own timestamp must be this recent.
//!
//! [`ListenerPolicy`] is the rule that no source may go without a credential on a listener
//! beyond loopback. Everything here is pure: callers hand in what they read from a request.

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// A secret value: compared in constant time, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// Constant-time equality (hashes first, so the length leaks nothing either).
    pub fn matches(&self, offered: &str) -> bool {
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(offered.as_bytes());
        a.as_slice().ct_eq(b.as_slice()).into()
    }

    /// A key for one purpose derived from the secret (HMAC-SHA256 of the purpose): every
    /// instance holding the secret derives the same key, and the key reveals nothing of it.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(self.0.as_bytes()).expect("any key length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One source's authentication settings, compiled.
#[derive(Debug, Clone, Default)]
pub struct SourceAuth {
    /// The secret the source writes into its bodies (`secret_key`).
    pub secret_key: Option<Secret>,
    /// The URL token.
    pub token: Option<Secret>,
    /// HMAC key and the header that carries the signature.
    pub hmac: Option<(Secret, String)>,
    /// Networks clients may come from (empty: any).
    pub allow_ips: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How old (or how far ahead) an event's timestamp may be.
    pub replay_window: Option<Duration>,
}

/// What the server read from one request.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    /// The token from the path or the `token` query parameter.
    pub token: Option<&'a str>,
    /// The signature header's value.
    pub signature: Option<&'a str>,
    /// The client's address (after `X-Forwarded-For` from a trusted proxy).
    pub client: Option<IpAddr>,
}

/// Why a request was refused: said in the 401 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client address is not in `allow_ips`.
    #[error("the client address is not allowed to post to this source")]
    Address,
    /// No token, or the wrong one.
    #[error("the webhook token is missing or wrong")]
    Token,
    /// No signature, or the wrong one.
    #[error("the body signature is missing or wrong")]
    Signature,
    /// The body's `secret_key` is missing or wrong.
    #[error("the secret_key is missing or wrong")]
    SecretKey,
    /// The event's timestamp is missing, or outside the replay window.
    #[error("the event timestamp is missing or outside the replay window")]
    Replay,
}

impl SourceAuth {
    /// Whether no credential is asked for (no secret_key, token, signature or address list).
    pub fn is_open(&self) -> bool {
        self.secret_key.is_none()
            && self.token.is_none()
            && self.hmac.is_none()
            && self.allow_ips.is_empty()
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the last address
    /// in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let hops: Vec<IpAddr> = forwarded_for
            .unwrap_or("")
            .split(',')
            .filter_map(|h| h.trim().parse().ok())
            .collect();
        Some(
            hops.into_iter()
                .rev()
                .find(|ip| !trusted(ip))
                .unwrap_or(peer),
        )
    }

    /// The checks that need no parsing: address, token, signature of the raw body.
    pub fn check_request(&self, c: &Credentials<'_>, body: &[u8]) -> Result<(), AuthError> {
        if !self.allow_ips.is_empty()
            && !c
                .client
                .is_some_and(|ip| self.allow_ips.iter().any(|n| n.contains(&ip)))
        {
            return Err(AuthError::Address);
        }
        if let Some(token) = &self.token
            && !c.token.is_some_and(|t| token.matches(t))
        {
            return Err(AuthError::Token);
        }
        if let Some((key, _)) = &self.hmac
            && !c.signature.is_some_and(|s| signature_matches(key, s, body))
        {
            return Err(AuthError::Signature);
        }
        Ok(())
    }

    /// The checks on the parsed body: `secret_key` and the replay window.
    pub fn check_payload(
        &self,
        secret_key: Option<&str>,
        sent_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        if let Some(expected) = &self.secret_key
            && !secret_key.is_some_and(|k| expected.matches(k))
        {
            return Err(AuthError::SecretKey);
        }
        if let Some(window) = self.replay_window {
            let Some(at) = sent_at else {
                return Err(AuthError::Replay);
            };
            let age = (now - at).abs().to_std().unwrap_or(Duration::MAX);
            if age > window {
                return Err(AuthError::Replay);
            }
        }
        Ok(())
    }
}

/// HMAC-SHA256 of the body, as `sha256=<hex>` or bare hex, checked in constant time.
fn signature_matches(key: &Secret, header: &str, body: &[u8]) -> bool {
    let hex_part = header
        .trim()
        .strip_prefix("sha256=")
        .unwrap_or(header.trim());
    let Ok(expected) = hex::decode(hex_part) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key.0.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The signature a sender computes for a body (for tests and for documenting the scheme).
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The rule for sources that ask for no credential: on a listener beyond loopback they are
/// refused (anyone who finds the URL could post events), at start and at every reload, unless
/// the operator accepted that risk with `--insecure`.
#[derive(Debug, Clone, Copy)]
pub struct ListenerPolicy {
    /// The listener beyond loopback that must not have open sources, if there is one.
    public: Option<SocketAddr>,
}

impl ListenerPolicy {
    /// The policy for a router listening on `listen`.
    pub fn new(listen: SocketAddr, insecure: bool) -> Self {
        ListenerPolicy {
            public: (!listen.ip().is_loopback() && !insecure).then_some(listen),
        }
    }

    /// Refuses a configuration whose `open` sources ask for no credential, when they would be
    /// reachable beyond loopback.
    pub fn check(&self, open: &[&str]) -> Result<(), OpenSources> {
        match (self.public, open.first()) {
            (Some(listen), Some(_)) => Err(OpenSources {
                listen,
                sources: open.iter().map(|s| s.to_string()).collect(),
            }),
            _ => Ok(()),
        }
    }
}

/// Sources that ask for no credential on a listener beyond loopback.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the router listens on {listen}, beyond loopback, and {}", self.reason())]
pub struct OpenSources {
    /// The listener.
    pub listen: SocketAddr,
    /// The sources that ask for no credential (at least one).
    pub sources: Vec<String>,
}

impl OpenSources {
    /// What is wrong and what to do, without the address.
    pub fn reason(&self) -> String {
        format!(
            "no authentication is configured for /webhooks/{}: anyone who finds the URL could post fake events into your channels. Set sources.{}.secret_key (or token, hmac_secret, allow_ips) in the rules file, or start the router with --insecure to accept that risk (SECURITY.md)",
            self.sources.join(", /webhooks/"),
            self.sources[0]
        )
    }
}

/// The warning `check` and every load give for a source that asks for no credential.
pub fn open_source_warning(source: &str) -> String {
    format!(
        "source {source:?} asks for no credential: anyone who can reach /webhooks/{source} can post events (`serve` then listens on loopback only, or with --insecure); set sources.{source}.secret_key, token, hmac_secret or allow_ips (SECURITY.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> SourceAuth {
        SourceAuth {
            token: Some(Secret::new("tok".into())),
            hmac: Some((Secret::new("key".into()), "X-Signature".into())),
            allow_ips: vec!["203.0.113.0/24".parse().unwrap()],
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            ..SourceAuth::default()
        }
    }

    #[test]
    fn every_configured_mode_must_pass() {
        let a = auth();
        let body = b"{}";
        let sig = sign("key", body);
        let client = Some("203.0.113.9".parse().unwrap());
        let ok = Credentials {
            token: Some("tok"),
            signature: Some(&sig),
            client,
        };
        assert_eq!(a.check_request(&ok, body), Ok(()));
        assert_eq!(
            a.check_request(
                &Credentials {
                    token: Some("nope"),
                    ..ok
                },
                body
            ),
            Err(AuthError::Token)
        );
        assert_eq!(
            a.check_request(
                &Credentials {
                    signature: None,
                    ..ok
                },
                body
            ),
            Err(AuthError::Signature)
        );
        assert_eq!(
            a.check_request(&ok, b"{\"x\":1}"),
            Err(AuthError::Signature)
        );
        let outsider = Credentials {
            client: Some("198.51.100.1".parse().unwrap()),
            ..ok
        };
        assert_eq!(a.check_request(&outsider, body), Err(AuthError::Address));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let a = auth();
        let proxy = Some("127.0.0.1".parse().unwrap());
        assert_eq!(
            a.client_ip(proxy, Some("203.0.113.9, 127.0.0.1")),
            Some("203.0.113.9".parse().unwrap())
        );
        let direct = Some("198.51.100.1".parse().unwrap());
        assert_eq!(a.client_ip(direct, Some("203.0.113.9")), direct);
    }

    #[test]
    fn secret_key_and_replay_window() {
        let a = SourceAuth {
            secret_key: Some(Secret::new("s3cret".into())),
            replay_window: Some(Duration::from_secs(600)),
            ..SourceAuth::default()
        };
        let now = Utc::now();
        assert_eq!(a.check_payload(Some("s3cret"), Some(now), now), Ok(()));
        assert_eq!(
            a.check_payload(Some("wrong"), Some(now), now),
            Err(AuthError::SecretKey)
        );
        assert_eq!(
            a.check_payload(None, Some(now), now),
            Err(AuthError::SecretKey)
        );
        let old = now - chrono::Duration::hours(1);
        assert_eq!(
            a.check_payload(Some("s3cret"), Some(old), now),
            Err(AuthError::Replay)
        );
        assert_eq!(
            a.check_payload(Some("s3cret"), None, now),
            Err(AuthError::Replay)
        );
    }

    #[test]
    fn open_sources_are_refused_only_beyond_loopback_and_without_insecure() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let e = ListenerPolicy::new(public, false)
            .check(&["smartlead"])
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("/webhooks/smartlead")
                && text.contains("0.0.0.0:8080")
                && text.contains("sources.smartlead.secret_key")
                && text.contains("--insecure"),
            "{text}"
        );
        assert!(ListenerPolicy::new(public, false).check(&[]).is_ok());
        assert!(
            ListenerPolicy::new(public, true)
                .check(&["smartlead"])
                .is_ok()
        );
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(
            ListenerPolicy::new(loopback, false)
                .check(&["smartlead"])
                .is_ok()
        );
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(ListenerPolicy::new(v6, false).check(&["smartlead"]).is_ok());
    }
}
