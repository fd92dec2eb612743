//! Console sessions and form tokens. A session cookie is `EXPIRY.MAC`: the MAC is keyed by a
//! key derived from the admin token, so every instance that has the token accepts the cookie of
//! any other (no session table), and changing the token ends every session. Each form carries a
//! token derived from the session, checked on every POST beside `Origin` and `Sec-Fetch-Site`.

use crate::credentials::Secret;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "switchboard_session";

/// How long a login lasts.
pub const LIFETIME_SECS: i64 = 12 * 3600;

/// The keys sessions and form tokens are made with.
pub struct Keys {
    session: [u8; 32],
}

impl Keys {
    /// Keys derived from the admin token: the same on every instance.
    pub fn from_token(token: &Secret) -> Self {
        Keys {
            session: token.derive("switchboard console session v1"),
        }
    }

    /// Keys of this process alone (an open console has no token to derive them from).
    pub fn random() -> Self {
        let mut session = [0u8; 32];
        for chunk in session.chunks_mut(8) {
            chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        // fastrand is not a cryptographic generator; mixing in a fresh UUID v4's randomness
        // (from the OS) keeps the key unguessable.
        let os = uuid::Uuid::new_v4();
        for (k, b) in session.iter_mut().zip(os.as_bytes().iter().cycle()) {
            *k ^= b;
        }
        Keys { session }
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.session).expect("any key length");
        for p in parts {
            mac.update(p);
            mac.update(b"\0");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new session cookie value, valid until `now + LIFETIME_SECS`.
    pub fn new_session(&self, now: i64) -> String {
        let expiry = (now + LIFETIME_SECS).to_string();
        let mac = self.mac(&[b"session", expiry.as_bytes()]);
        format!("{expiry}.{mac}")
    }

    /// Whether a cookie value is a session this key made that has not expired.
    pub fn valid_session(&self, value: &str, now: i64) -> bool {
        let Some((expiry, mac)) = value.split_once('.') else {
            return false;
        };
        let Ok(until) = expiry.parse::<i64>() else {
            return false;
        };
        let expected = self.mac(&[b"session", expiry.as_bytes()]);
        let same: bool = expected.as_bytes().ct_eq(mac.as_bytes()).into();
        same && until > now
    }

    /// The form token of a session (or of the open console: `session` empty).
    pub fn form_token(&self, session: &str) -> String {
        self.mac(&[b"form", session.as_bytes()])
    }

    /// Whether `offered` is the form token of `session`.
    pub fn valid_form_token(&self, session: &str, offered: &str) -> bool {
        let expected = self.form_token(session);
        expected.as_bytes().ct_eq(offered.as_bytes()).into()
    }
}

/// The value of the session cookie among a `Cookie` header's.
pub fn cookie_value(header: Option<&str>) -> Option<&str> {
    header?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_on_every_instance_with_the_token_until_it_expires() {
        let a = Keys::from_token(&Secret::new("t0ken".into()));
        let b = Keys::from_token(&Secret::new("t0ken".into()));
        let other = Keys::from_token(&Secret::new("other".into()));
        let cookie = a.new_session(1_000);
        assert!(b.valid_session(&cookie, 1_000));
        assert!(!b.valid_session(&cookie, 1_000 + LIFETIME_SECS));
        assert!(!other.valid_session(&cookie, 1_000));
        let (expiry, mac) = cookie.split_once('.').unwrap();
        let later = expiry.parse::<i64>().unwrap() + 1000;
        assert!(!a.valid_session(&format!("{later}.{mac}"), 1_000));
        assert!(!a.valid_session("garbage", 1_000));
        assert!(b.valid_form_token(&cookie, &a.form_token(&cookie)));
        assert!(!b.valid_form_token(&cookie, &a.form_token("another")));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = "a=1; switchboard_session=9.abc; b=2";
        assert_eq!(cookie_value(Some(h)), Some("9.abc"));
        assert_eq!(cookie_value(Some("a=1")), None);
        assert_eq!(cookie_value(None), None);
    }
}
