//! Webhook authentication, per source, configured under `sources:` in the rules file. Modes
//! combine: every mode that is configured must pass.
//!
//! - `secret_key`: SmartLead's own field in the body, compared in constant time;
//! - `token`: a token in the URL (`/webhooks/smartlead/{token}` or `?token=`), constant time;
//! - `hmac_secret`: an HMAC-SHA256 of the raw body in a header (`X-Smartlead-Signature:
//!   sha256=…` by default);
//! - `allow_ips`: the client address must be in one of these networks; `X-Forwarded-For` is
//!   believed only from `trusted_proxies`;
//! - `replay_window`: the event's own timestamp must be this recent.
//!
//! Everything here is pure: the server hands in what it read from the request.

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The default header carrying the body's HMAC.
pub const SIGNATURE_HEADER: &str = "X-Smartlead-Signature";

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
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One source's authentication settings, compiled.
#[derive(Debug, Clone, Default)]
pub struct SourceAuth {
    /// SmartLead's `secret_key` body field.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> SourceAuth {
        SourceAuth {
            token: Some(Secret::new("tok".into())),
            hmac: Some((Secret::new("key".into()), SIGNATURE_HEADER.into())),
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
