//! The rules file as written: serde types that mirror the YAML one to one, with the line and
//! column of every value that later validation may reject. Nothing here checks meaning; that is
//! [`super::compile`]'s job. This is the only module that knows the YAML parser.

use super::Diagnostic;
use crate::actions::RawAction;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub use serde_saphyr::Spanned;

/// One rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// How each webhook source authenticates.
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<RawSource>>,
    /// Named, reusable delivery targets.
    #[serde(default)]
    pub destinations: BTreeMap<String, Spanned<RawAction>>,
    /// The rules, in evaluation order.
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
}

/// A webhook source's authentication, as written. Every mode given must pass.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// SmartLead's `secret_key` body field must equal this.
    pub secret_key: Option<Spanned<String>>,
    /// The URL must carry this token (`/webhooks/smartlead/{token}` or `?token=`).
    pub token: Option<Spanned<String>>,
    /// The body must be signed with HMAC-SHA256 under this key.
    pub hmac_secret: Option<Spanned<String>>,
    /// The header carrying the signature (default `X-Smartlead-Signature`).
    pub signature_header: Option<Spanned<String>>,
    /// Networks (CIDR) clients may post from.
    pub allow_ips: Option<Vec<Spanned<String>>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Refuse events whose own timestamp is further from now than this (`10m`).
    pub replay_window: Option<Spanned<String>>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name, used in logs, metrics and `test` output.
    pub name: Spanned<String>,
    /// Free text for people reading the file.
    #[serde(default)]
    pub description: Option<String>,
    /// `false` switches the rule off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `true` ends evaluation after this rule when it matches.
    #[serde(default)]
    pub stop: bool,
    /// Conditions; a rule with none matches every event.
    #[serde(default)]
    pub when: Option<Spanned<RawWhen>>,
    /// What to do when the rule matches.
    pub actions: Spanned<Vec<Spanned<RawAction>>>,
}

fn yes() -> bool {
    true
}

/// A `when` block: every key present must hold.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// Event types (canonical or as sent).
    #[serde(default)]
    pub event: Option<Spanned<OneOrMany<String>>>,
    /// Campaign id and/or name glob.
    #[serde(default)]
    pub campaign: Option<Spanned<RawCampaign>>,
    /// Dotted path of the canonical event to a value or an operator map.
    #[serde(default)]
    pub fields: BTreeMap<String, Spanned<Value>>,
    /// At least one of these holds.
    #[serde(default)]
    pub any: Option<Vec<Spanned<RawWhen>>>,
    /// All of these hold.
    #[serde(default)]
    pub all: Option<Vec<Spanned<RawWhen>>>,
    /// This does not hold.
    #[serde(default)]
    pub not: Option<Box<Spanned<RawWhen>>>,
}

/// `campaign:` conditions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCampaign {
    /// One campaign id or a list (numbers or numeric strings).
    #[serde(default)]
    pub id: Option<OneOrMany<Value>>,
    /// A glob (`Q1*`) or a list of globs on the campaign name.
    #[serde(default)]
    pub name: Option<OneOrMany<String>>,
}

/// A value written either alone or as a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list of values.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The values as a list.
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A position in a rules file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// The position a spanned value was written at.
pub fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    }
}

/// Parses one rules file. A syntax or shape error is returned with its position; the caller
/// adds the file name.
pub fn parse(text: &str) -> Result<RawFile, Diagnostic> {
    if text.trim().is_empty() {
        return Ok(RawFile {
            sources: BTreeMap::new(),
            destinations: BTreeMap::new(),
            rules: Vec::new(),
        });
    }
    serde_saphyr::from_str::<RawFile>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((0, 0));
        let message = e.without_snippet().to_string();
        let message = strip_position(&message);
        Diagnostic::at(Path::new(""), line, column, message)
    })
}

/// The parser's message without the position it already carries (we print our own).
fn strip_position(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}
