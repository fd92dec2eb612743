//! The rules file as written: serde types that mirror the YAML one to one, with the line and
//! column of every value that later validation may reject. Nothing here checks meaning; that is
//! [`super::compile`]'s job. This is the only module that parses YAML; the parts of a file that
//! the rules and the actions compile (`when`, each channel's settings) are declared beside them.

use crate::actions::RawAction;
use crate::diagnostic::Diagnostic;
use crate::rules::{RawDigest, RawFire, RawOnce, RawThrottle, RawWhen};
use crate::syntax::{Pos, Spanned};
use crate::time_window::RawTimeWindow;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One rules file, parsed whole ([`parse`]); the loader takes it part by part instead
/// ([`parse_parts`]).
#[derive(Debug, Default)]
pub struct RawFile {
    /// How each webhook source authenticates.
    pub sources: BTreeMap<String, Spanned<RawSource>>,
    /// Named, reusable delivery targets.
    pub destinations: BTreeMap<String, Spanned<RawAction>>,
    /// Named sets of hours that actions may be limited to (`active:`).
    pub time_windows: BTreeMap<String, Spanned<RawTimeWindow>>,
    /// The rules, in evaluation order.
    pub rules: Vec<Spanned<RawRule>>,
}

/// A webhook source's authentication, as written. Every mode given must pass.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// The secret the source writes into its bodies must equal this.
    pub secret_key: Option<Spanned<String>>,
    /// The URL must carry this token (`/webhooks/{source}/{token}` or `?token=`).
    pub token: Option<Spanned<String>>,
    /// The body must be signed with HMAC-SHA256 under this key.
    pub hmac_secret: Option<Spanned<String>>,
    /// The header carrying the signature (default: the source's own).
    pub signature_header: Option<Spanned<String>>,
    /// Networks (CIDR) clients may post from.
    pub allow_ips: Option<Vec<Spanned<String>>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Refuse events whose own timestamp is further from now than this (`10m`).
    pub replay_window: Option<Spanned<String>>,
}

/// One rule as written. What most rules leave out is boxed: a file of 10,000 rules is held
/// whole while it compiles, and unboxed the optional parts made each rule 3 KB.
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
    pub when: Option<Box<Spanned<RawWhen>>>,
    /// What to do when the rule matches.
    pub actions: Spanned<Vec<Spanned<RawAction>>>,
    /// Fire for the first event of each key only, for a while.
    #[serde(default)]
    pub once: Option<Box<Spanned<RawOnce>>>,
    /// Fire at most so many times per key per window.
    #[serde(default)]
    pub throttle: Option<Box<Spanned<RawThrottle>>>,
    /// For a rule with a `window`: fire when it starts holding, not on every event.
    #[serde(default)]
    pub fire: Option<Box<Spanned<RawFire>>>,
    /// Collect the events it matched per key and send them as one message.
    #[serde(default)]
    pub digest: Option<Box<Spanned<RawDigest>>>,
}

fn yes() -> bool {
    true
}

/// A part of a rules file, handed over as soon as the parser has read it, in the order the
/// file writes them, so that each rule can be compiled and dropped before the next is read: a
/// file of 10,000 rules parsed whole is many times the size of its compiled form.
#[derive(Debug)]
pub enum Part {
    /// `sources:`.
    Sources(BTreeMap<String, Spanned<RawSource>>),
    /// `destinations:`.
    Destinations(BTreeMap<String, Spanned<RawAction>>),
    /// `time_windows:`.
    TimeWindows(BTreeMap<String, Spanned<RawTimeWindow>>),
    /// One item of `rules:`.
    Rule(Box<Spanned<RawRule>>),
    /// A top-level key starts at this byte of the text: the section before it ends there.
    Boundary(usize),
}

/// The keys a rules file may have at its top.
const FILE_KEYS: &[&str] = &["sources", "destinations", "time_windows", "rules"];

/// Parses one rules file whole. A syntax or shape error is returned with its position; the
/// caller adds the file name.
pub fn parse(text: &str) -> Result<RawFile, Diagnostic> {
    let mut file = RawFile::default();
    parse_parts(text, &mut |part| match part {
        Part::Sources(s) => file.sources = s,
        Part::Destinations(d) => file.destinations = d,
        Part::TimeWindows(t) => file.time_windows = t,
        Part::Rule(r) => file.rules.push(*r),
        Part::Boundary(_) => {}
    })?;
    Ok(file)
}

/// Parses one rules file, handing each part to `sink` as soon as it is read (see [`Part`]).
/// On an error, what was handed over before it is incomplete: the caller discards it.
pub fn parse_parts(text: &str, sink: &mut dyn FnMut(Part)) -> Result<(), Diagnostic> {
    if text.trim().is_empty() {
        return Ok(());
    }
    let budget = budget_for(text);
    let mut options = serde_saphyr::options::Options::default();
    options.budget = Some(budget.clone());
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde::de::DeserializeSeed::deserialize(FileSeed(sink), de)
    })
    .map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((0, 0));
        let message = match e.without_snippet() {
            serde_saphyr::Error::Budget { breach, .. } => over_budget(breach, &budget),
            _ => {
                let message = e.without_snippet().to_string();
                explain(&strip_position(&message), text, line, column)
            }
        };
        Diagnostic::at(Path::new(""), Pos { line, column }, message)
    })
}

/// The top of a rules file, read key by key into [`Part`]s.
struct FileSeed<'s>(&'s mut dyn FnMut(Part));

impl<'de> serde::de::DeserializeSeed<'de> for FileSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_struct("RawFile", FILE_KEYS, self)
    }
}

impl<'de> serde::de::Visitor<'de> for FileSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a rules file (keys `sources`, `destinations`, `time_windows`, `rules`)")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut seen = [false; 4];
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let Some(i) = FILE_KEYS.iter().position(|k| *k == key.value) else {
                return Err(A::Error::unknown_field(&key.value, FILE_KEYS));
            };
            if let Some(at) = key.referenced.span().byte_offset() {
                (self.0)(Part::Boundary(at as usize));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(A::Error::duplicate_field(FILE_KEYS[i]));
            }
            match i {
                0 => (self.0)(Part::Sources(map.next_value()?)),
                1 => (self.0)(Part::Destinations(map.next_value()?)),
                2 => (self.0)(Part::TimeWindows(map.next_value()?)),
                _ => map.next_value_seed(RulesSeed(&mut *self.0))?,
            }
        }
        Ok(())
    }
}

/// `rules:`, handed over one rule at a time.
struct RulesSeed<'s>(&'s mut dyn FnMut(Part));

impl<'de> serde::de::DeserializeSeed<'de> for RulesSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RulesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of rules")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(rule) = seq.next_element::<Box<Spanned<RawRule>>>()? {
            (self.0)(Part::Rule(rule));
        }
        Ok(())
    }
}

/// Whether the text may define a YAML anchor (`&name`): an `&` that starts a word or follows a
/// colon (`"key":&a value` is valid in a flow mapping). What an
/// alias repeats is written elsewhere, so a reload does not recognise a rule by its own text
/// in a file that has anchors. Quoted text is not told apart: an `&` starting a word there
/// only costs that sharing.
pub fn has_anchors(text: &str) -> bool {
    let bytes = text.as_bytes();
    // `match_indices` finds each `&` with memchr: a reload scans megabytes.
    text.match_indices('&').any(|(i, _)| {
        (i == 0
            || matches!(
                bytes[i - 1],
                b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':'
            ))
            && bytes.get(i + 1).is_some_and(|c| {
                !c.is_ascii_whitespace() && !matches!(c, b'&' | b',' | b']' | b'}')
            })
    })
}

/// The parser's budget for a file: what an honest file of its size needs, and no more. A node
/// takes at least a byte or two of text, so counts that grow with the file (nodes, events)
/// allow one per byte (at least the parser's defaults); what only aliases multiply (aliases,
/// anchors, their copies) keeps the parser's fixed limits, which stop alias bombs (a few lines
/// that expand to billions of nodes) whatever the file's size.
fn budget_for(text: &str) -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(2 * text.len());
    budget
}

/// A budget refusal in the user's terms: which limit, its value, and what to do.
fn over_budget(
    breach: &serde_saphyr::budget::BudgetBreach,
    budget: &serde_saphyr::Budget,
) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let (what, limit) = match breach {
        B::Aliases { .. } => ("aliases (`*name`)", budget.max_aliases),
        B::Anchors { .. } => ("anchors (`&name`)", budget.max_anchors),
        B::AliasAnchorRatio { .. } => (
            "aliases per anchor (aliases that expand into many copies)",
            budget.alias_anchor_ratio_multiplier,
        ),
        B::RecordedAnchorEvents { .. } => (
            "values copied by aliases",
            budget.max_recorded_anchor_events,
        ),
        B::RecordedAnchorBytes { .. } => {
            ("bytes copied by aliases", budget.max_recorded_anchor_bytes)
        }
        B::MergeKeys { .. } => ("merge keys (`<<`)", budget.max_merge_keys),
        B::Depth { .. } => ("levels of nesting", budget.max_depth),
        B::Documents { .. } => ("YAML documents (`---`)", budget.max_documents),
        B::Nodes { .. } => ("values (nodes) for a file of this size", budget.max_nodes),
        B::Events { .. } => ("parser events for a file of this size", budget.max_events),
        B::ScalarBytes { .. } => ("bytes of text in values", budget.max_total_scalar_bytes),
        _ => {
            return format!(
                "the YAML is over the parser's limits ({breach:?}); split the rules into several files in a rules directory"
            );
        }
    };
    format!(
        "the YAML goes past the parser's limit of {limit} {what}, which guards against files that expand without end (alias bombs); write values out rather than repeat them through aliases, or split the rules into several files in a rules directory (--rules DIR)"
    )
}

/// The parser's "expected mapping start" / "expected sequence start" in the user's terms: which
/// key wanted keys of its own or a list, with an example for the keys people get wrong most.
fn explain(message: &str, text: &str, line: u32, column: u32) -> String {
    let mapping = match message {
        "expected mapping start" => true,
        "expected sequence start" => false,
        _ => return message.to_string(),
    };
    let wanted = if mapping {
        "keys of its own"
    } else {
        "a list (items starting with `- `)"
    };
    let Some((key, item)) = key_before(text, line, column) else {
        return format!("{message}: {wanted} expected here");
    };
    if item {
        let example = match (key.as_str(), mapping) {
            ("rules", true) => " (a rule: `- name: ...` with `when:` and `actions:` under it)",
            ("actions", true) => {
                " (an action: `- slack: {...}`, `- email: {...}`, `- http: {...}` or `- log: {...}`)"
            }
            _ => "",
        };
        return format!("each item of `{key}` takes {wanted}{example}, not a single value");
    }
    let wanted = match key.as_str() {
        "rules" => "a list of rules (each starts with `- name: ...`)",
        "actions" => {
            "a list of actions (each starts with `- slack:`, `- email:`, `- http:` or `- log:`)"
        }
        _ => wanted,
    };
    let example = match key.as_str() {
        "campaign" => " (for example `campaign: { id: 123 }` or `campaign: { name: \"Q1*\" }`)",
        "when" => " (for example `when: { event: EMAIL_REPLIED }`)",
        _ => "",
    };
    let found = if mapping {
        "a single value or a list"
    } else {
        "a single value or a mapping"
    };
    format!("`{key}` takes {wanted}{example}, not {found}")
}

/// The key whose value starts at `line`:`column` (1-based), and whether the value is an item of
/// that key's list: the key is on that line before the value, or on the previous non-empty line
/// when the value starts a line of its own (after a `- ` for an item).
fn key_before(text: &str, line: u32, column: u32) -> Option<(String, bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let at = (line as usize).checked_sub(1)?;
    let this = lines.get(at)?;
    let before: String = this
        .chars()
        .take((column as usize).saturating_sub(1))
        .collect();
    let marker = before.trim();
    let (before, item) = if marker.is_empty() || marker == "-" {
        let previous = lines[..at]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
        (previous.to_string(), marker == "-")
    } else {
        (before, false)
    };
    let before = match before.find(" #") {
        Some(i) => &before[..i],
        None => before.as_str(),
    };
    let head = before.trim_end().strip_suffix(':')?;
    let key = head
        .rsplit(|c: char| c.is_whitespace() || matches!(c, '{' | ','))
        .next()?
        .trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then(|| (key.to_string(), item))
}

/// The parser's message without the position it already carries (we print our own).
fn strip_position(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn message(text: &str) -> String {
        let e = parse(text).expect_err("the text is invalid");
        e.to_string()
    }

    #[test]
    fn a_single_value_where_keys_belong_names_the_key_and_shows_the_shape() {
        let m = message(
            "rules:\n  - name: a\n    when:\n      event: EMAIL_REPLIED\n      campaign: 123\n    actions:\n      - log: {}\n",
        );
        assert!(m.contains(":5:"), "{m}");
        assert!(
            m.contains("`campaign` takes keys of its own (for example `campaign: { id: 123 }`"),
            "{m}"
        );
        let m = message("rules:\n  - name: a\n    when: EMAIL_REPLIED\n    actions: []\n");
        assert!(
            m.contains(
                "`when` takes keys of its own (for example `when: { event: EMAIL_REPLIED }`)"
            ),
            "{m}"
        );
    }

    #[test]
    fn a_single_value_in_a_list_says_what_each_item_takes() {
        let m = message("rules:\n  - just-a-name\n");
        assert!(m.contains(":2:"), "{m}");
        assert!(
            m.contains("each item of `rules` takes keys of its own (a rule: `- name: ...`"),
            "{m}"
        );
    }

    #[test]
    fn hyphenated_keys_and_comments_keep_the_key_whole() {
        let text = "destinations:\n  sales-slack: https://x # the channel\n";
        assert_eq!(
            super::key_before(text, 2, 16),
            Some(("sales-slack".to_string(), false))
        );
        let m = message(
            "rules:\n  - name: a\n    when: # replies only\n      EMAIL_REPLIED\n    actions: []\n",
        );
        assert!(m.contains("`when` takes keys of its own"), "{m}");
    }

    #[test]
    fn a_mapping_where_a_list_belongs_names_the_key() {
        let m = message("rules:\n  name: a\n");
        assert!(m.contains(":2:"), "{m}");
        assert!(
            m.ends_with("`rules` takes a list of rules (each starts with `- name: ...`), not a single value or a mapping"),
            "{m}"
        );
        let m = message("rules:\n  - name: a\n    actions:\n      log: {}\n");
        assert!(m.contains(":4:"), "{m}");
        assert!(
            m.contains("`actions` takes a list of actions (each starts with `- slack:`"),
            "{m}"
        );
    }

    #[test]
    fn anchors_are_found_where_the_parser_takes_them() {
        for text in [
            "a: &x 1",
            "&x a: 1",
            "a: [&x 1]",
            "a: {b: 1,&x c: 2}",
            "a: { \"b\":&x 1 }",
        ] {
            assert!(super::has_anchors(text), "{text}");
        }
        for text in ["url: 'https://x.example/?a=1&b=2'", "a: b & c", "a: &"] {
            assert!(!super::has_anchors(text), "{text}");
        }
    }
}
