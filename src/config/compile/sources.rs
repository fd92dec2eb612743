//! `sources:`: how each webhook source authenticates (secrets from the environment, networks,
//! durations), compiled into [`SourceAuth`].

use crate::config::raw::RawSource;
use crate::credentials::{Secret, SourceAuth};
use crate::diagnostic::Diagnostics;
use crate::env;
use crate::event::{Source, Sources};
use crate::syntax::{Pos, Spanned, pos};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `sources:` sections of the files, in order, each with its file.
pub(super) type Sections = Vec<(PathBuf, BTreeMap<String, Spanned<RawSource>>)>;

/// The credentials of every mounted source, in the order the sources are mounted; a source
/// the files do not configure asks for none.
pub(super) fn compile(
    sections: &Sections,
    sources: &Sources,
    errors: &mut Diagnostics,
) -> Vec<(&'static str, SourceAuth)> {
    let mut configured: Vec<(&'static str, SourceAuth)> = Vec::new();
    for (path, section) in sections {
        for (name, raw) in section {
            let Some(source) = sources.get(name) else {
                let known = sources.names().join(", ");
                let message = format!("unknown source {name:?}; known: {known}");
                errors.at(path, pos(raw), message);
                continue;
            };
            if configured.iter().any(|(n, _)| n == name) {
                let message = format!("source {name:?} is configured twice");
                errors.at(path, pos(raw), message);
                continue;
            }
            let mut cx = Settings { path, errors };
            configured.push((source.name(), cx.auth(&raw.value, source.as_ref())));
        }
    }
    sources
        .iter()
        .map(|s| {
            let at = configured.iter().position(|(n, _)| *n == s.name());
            let auth = at.map(|i| configured[i].1.clone()).unwrap_or_default();
            (s.name(), auth)
        })
        .collect()
}

/// One source's settings being compiled: where they are written, and where problems go.
struct Settings<'a> {
    path: &'a Path,
    errors: &'a mut Diagnostics,
}

impl Settings<'_> {
    fn auth(&mut self, r: &RawSource, source: &dyn Source) -> SourceAuth {
        let secret_key = self.secret(&r.secret_key);
        let token = self.secret(&r.token);
        let hmac_key = self.secret(&r.hmac_secret);
        let header = self
            .setting(&r.signature_header)
            .map_or_else(|| source.signature_header().to_string(), |(h, _)| h);
        // An empty replay window (from an empty variable) switches the check off.
        let replay_window = self.setting(&r.replay_window).and_then(|(w, at)| {
            match humantime::parse_duration(&w) {
                Ok(d) => Some(d),
                Err(_) => {
                    let message = format!("replay_window {w:?} is not a duration like 10m");
                    self.errors.at(self.path, at, message);
                    None
                }
            }
        });
        SourceAuth {
            secret_key,
            token,
            hmac: hmac_key.map(|k| (k, header)),
            allow_ips: self.networks(&r.allow_ips, "allow_ips"),
            trusted_proxies: self.networks(&r.trusted_proxies, "trusted_proxies"),
            replay_window,
        }
    }

    /// A setting with `${VAR}` expanded; an unset variable is reported.
    fn expand(&mut self, v: &Spanned<String>) -> Option<String> {
        match env::expand(&v.value) {
            Ok(e) => Some(e.value),
            Err(e) => {
                self.errors.at(self.path, pos(v), e.to_string());
                None
            }
        }
    }

    /// A secret; empty (an empty variable) means none.
    fn secret(&mut self, v: &Option<Spanned<String>>) -> Option<Secret> {
        let value = self.expand(v.as_ref()?)?;
        (!value.is_empty()).then(|| Secret::new(value))
    }

    /// A trimmed setting and where it is written; empty means none.
    fn setting(&mut self, v: &Option<Spanned<String>>) -> Option<(String, Pos)> {
        let v = v.as_ref()?;
        let value = self.expand(v)?;
        let value = value.trim();
        (!value.is_empty()).then(|| (value.to_string(), pos(v)))
    }

    /// Addresses and CIDR networks, one per item or several separated by commas.
    fn networks(&mut self, list: &Option<Vec<Spanned<String>>>, what: &str) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for item in list.iter().flatten() {
            let Some(text) = self.expand(item) else {
                continue;
            };
            for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let parsed = part
                    .parse::<IpNet>()
                    .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(n) => nets.push(n),
                    Err(_) => self.errors.at(
                        self.path,
                        pos(item),
                        format!(
                            "{what}: {part:?} is not an address or a CIDR network like 203.0.113.0/24"
                        ),
                    ),
                }
            }
        }
        nets
    }
}
