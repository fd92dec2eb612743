//! Conditions: `when` blocks compiled once per load (regexes built, globs compiled, paths split;
//! see [`compile`]) and evaluated per event without allocation on the common path.

mod compile;

pub use compile::{compile, compile_plain};

use super::pattern::Pattern;
use crate::event;
use serde_json::Value;

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// Every part holds (an empty list always holds).
    All(Vec<Condition>),
    /// At least one part holds.
    Any(Vec<Condition>),
    /// The inner condition does not hold.
    Not(Box<Condition>),
    /// The event's canonical type, or the type as sent, is one of these.
    Event(Vec<String>),
    /// The campaign id is one of these.
    CampaignId(Vec<i64>),
    /// The campaign name matches one of these globs.
    CampaignName(Vec<Pattern>),
    /// The value at a path of the canonical event passes a test.
    Field {
        /// The path as written (`lead.email`).
        path: String,
        /// The path split into segments.
        segments: Vec<String>,
        /// The test.
        test: FieldTest,
    },
    /// The rule's window at this position holds: known only in the transaction that stores
    /// the event, from the store's counts (see `memory`); [`Condition::holds`] reads it as not
    /// holding.
    Window(usize),
}

/// A test on one value of the event.
#[derive(Debug, Clone)]
pub enum FieldTest {
    /// Every test holds (several operators in one map).
    All(Vec<FieldTest>),
    /// Equal (numbers compare by value, numeric strings count as numbers).
    Equals(Value),
    /// Equal to one of these.
    In(Vec<Value>),
    /// Equal to none of these (a missing value is in none).
    NotIn(Vec<Value>),
    /// Present and not null (`true`), or absent or null (`false`).
    Exists(bool),
    /// Text contains this; for a list, one element equals it.
    Contains(String),
    /// Text starts with this.
    StartsWith(String),
    /// Text ends with this.
    EndsWith(String),
    /// Text matches this regular expression.
    Matches(Pattern),
    /// Numeric comparison.
    Compare(Cmp, f64),
    /// The inner test does not hold.
    Not(Box<FieldTest>),
}

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// greater than
    Gt,
    /// greater than or equal
    Gte,
    /// less than
    Lt,
    /// less than or equal
    Lte,
}

/// A condition's verdict with the verdicts of its parts, for `test --explain`.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was tested, in words.
    pub what: String,
    /// Whether it held.
    pub holds: bool,
    /// The parts' verdicts.
    pub parts: Vec<Verdict>,
}

/// Every operator a field condition accepts.
pub const OPERATORS: &[&str] = &[
    "equals",
    "in",
    "not_in",
    "exists",
    "contains",
    "starts_with",
    "ends_with",
    "matches",
    "gt",
    "gte",
    "lt",
    "lte",
    "not",
];

/// A verdict that may not be known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maybe {
    /// Holds.
    Yes,
    /// Does not hold.
    No,
    /// Depends on a value not known yet.
    Unknown,
}

impl From<bool> for Maybe {
    fn from(holds: bool) -> Self {
        if holds { Maybe::Yes } else { Maybe::No }
    }
}

impl Condition {
    /// The condition's verdict when some of its leaves are decided elsewhere: `leaf` gives the
    /// verdict of those (a field not known yet, a window), `None` for the others.
    pub fn eval(&self, event: &Value, leaf: &dyn Fn(&Condition) -> Option<Maybe>) -> Maybe {
        match self {
            Condition::All(parts) => {
                parts
                    .iter()
                    .fold(Maybe::Yes, |acc, c| match (acc, c.eval(event, leaf)) {
                        (Maybe::No, _) | (_, Maybe::No) => Maybe::No,
                        (Maybe::Unknown, _) | (_, Maybe::Unknown) => Maybe::Unknown,
                        _ => Maybe::Yes,
                    })
            }
            Condition::Any(parts) => {
                parts
                    .iter()
                    .fold(Maybe::No, |acc, c| match (acc, c.eval(event, leaf)) {
                        (Maybe::Yes, _) | (_, Maybe::Yes) => Maybe::Yes,
                        (Maybe::Unknown, _) | (_, Maybe::Unknown) => Maybe::Unknown,
                        _ => Maybe::No,
                    })
            }
            Condition::Not(inner) => match inner.eval(event, leaf) {
                Maybe::Yes => Maybe::No,
                Maybe::No => Maybe::Yes,
                Maybe::Unknown => Maybe::Unknown,
            },
            other => leaf(other).unwrap_or_else(|| Maybe::from(other.holds(event))),
        }
    }

    /// The verdict at intake, before the store is read: `window` gives each window's (unknown
    /// unless it cannot hold), and `open.count` is unknown when the router is to count the
    /// opens (`counting`).
    pub fn at_intake(
        &self,
        event: &Value,
        counting: bool,
        window: &dyn Fn(usize) -> Maybe,
    ) -> Maybe {
        self.eval(event, &|c| match c {
            Condition::Window(i) => Some(window(*i)),
            Condition::Field { path, .. } if counting && path == event::OPEN_COUNT => {
                Some(Maybe::Unknown)
            }
            _ => None,
        })
    }

    /// Whether the condition holds for the event.
    pub fn holds(&self, event: &Value) -> bool {
        match self {
            Condition::All(parts) => parts.iter().all(|c| c.holds(event)),
            Condition::Any(parts) => parts.iter().any(|c| c.holds(event)),
            Condition::Not(inner) => !inner.holds(event),
            Condition::Event(names) => {
                let (canonical, sent) = event::event_type(event);
                names.iter().any(|n| n == canonical || n == sent)
            }
            Condition::CampaignId(ids) => {
                event::campaign_id(event).is_some_and(|id| ids.contains(&id))
            }
            Condition::CampaignName(globs) => {
                campaign_name(event).is_some_and(|name| globs.iter().any(|g| g.is_match(name)))
            }
            Condition::Field { segments, test, .. } => test.holds(event::lookup(event, segments)),
            Condition::Window(_) => false,
        }
    }

    /// The verdict of the condition and of each of its parts.
    pub fn explain(&self, event: &Value) -> Verdict {
        let leaf = |what: String| Verdict {
            holds: self.holds(event),
            what,
            parts: vec![],
        };
        match self {
            Condition::All(parts) if parts.is_empty() => {
                leaf("no conditions (matches every event)".into())
            }
            Condition::All(parts) => group("all of", parts, event, self.holds(event)),
            Condition::Any(parts) => group("any of", parts, event, self.holds(event)),
            Condition::Not(inner) => Verdict {
                what: "not".into(),
                holds: self.holds(event),
                parts: vec![inner.explain(event)],
            },
            Condition::Event(names) => {
                let (canonical, sent) = event::event_type(event);
                leaf(format!(
                    "event is {} (got {canonical}, sent as {sent})",
                    names.join(" or ")
                ))
            }
            Condition::CampaignId(ids) => leaf(format!(
                "campaign.id is {} (got {})",
                ids.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(" or "),
                event::campaign_id(event).map_or("nothing".into(), |i| i.to_string())
            )),
            Condition::CampaignName(globs) => leaf(format!(
                "campaign.name matches {} (got {})",
                globs
                    .iter()
                    .map(|g| format!("{:?}", g.as_str()))
                    .collect::<Vec<_>>()
                    .join(" or "),
                campaign_name(event).map_or("nothing".into(), |n| format!("{n:?}"))
            )),
            Condition::Window(i) => leaf(format!(
                "window {} (counted when the event is stored)",
                i + 1
            )),
            Condition::Field {
                path,
                segments,
                test,
            } => {
                let got = event::lookup(event, segments);
                leaf(format!(
                    "{path} {} (got {})",
                    test.describe(),
                    got.map_or("nothing".into(), short)
                ))
            }
        }
    }
}

fn group(what: &str, parts: &[Condition], event: &Value, holds: bool) -> Verdict {
    Verdict {
        what: what.into(),
        holds,
        parts: parts.iter().map(|c| c.explain(event)).collect(),
    }
}

fn campaign_name(event: &Value) -> Option<&str> {
    event.get("campaign")?.get("name")?.as_str()
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(79).collect::<String>())
    } else {
        text
    }
}

impl FieldTest {
    /// Whether the test holds for a value (`None` when the path leads nowhere).
    pub fn holds(&self, value: Option<&Value>) -> bool {
        let value = value.filter(|v| !v.is_null());
        match self {
            FieldTest::All(tests) => tests.iter().all(|t| t.holds(value)),
            FieldTest::Equals(expected) => value.is_some_and(|v| loose_eq(v, expected)),
            FieldTest::In(list) => value.is_some_and(|v| list.iter().any(|e| loose_eq(v, e))),
            FieldTest::NotIn(list) => !value.is_some_and(|v| list.iter().any(|e| loose_eq(v, e))),
            FieldTest::Exists(want) => value.is_some() == *want,
            FieldTest::Contains(needle) => match value {
                Some(Value::Array(items)) => {
                    items.iter().any(|i| as_text(i).as_deref() == Some(needle))
                }
                Some(v) => as_text(v).is_some_and(|t| t.contains(needle.as_str())),
                None => false,
            },
            FieldTest::StartsWith(p) => value
                .and_then(as_text)
                .is_some_and(|t| t.starts_with(p.as_str())),
            FieldTest::EndsWith(p) => value
                .and_then(as_text)
                .is_some_and(|t| t.ends_with(p.as_str())),
            FieldTest::Matches(re) => value.and_then(as_text).is_some_and(|t| re.is_match(&t)),
            FieldTest::Compare(op, n) => value.and_then(as_number).is_some_and(|v| match op {
                Cmp::Gt => v > *n,
                Cmp::Gte => v >= *n,
                Cmp::Lt => v < *n,
                Cmp::Lte => v <= *n,
            }),
            FieldTest::Not(inner) => !inner.holds(value),
        }
    }

    fn describe(&self) -> String {
        match self {
            FieldTest::All(tests) => tests
                .iter()
                .map(Self::describe)
                .collect::<Vec<_>>()
                .join(" and "),
            FieldTest::Equals(v) => format!("equals {v}"),
            FieldTest::In(l) => format!("in {}", Value::Array(l.clone())),
            FieldTest::NotIn(l) => format!("not in {}", Value::Array(l.clone())),
            FieldTest::Exists(true) => "exists".into(),
            FieldTest::Exists(false) => "does not exist".into(),
            FieldTest::Contains(s) => format!("contains {s:?}"),
            FieldTest::StartsWith(s) => format!("starts with {s:?}"),
            FieldTest::EndsWith(s) => format!("ends with {s:?}"),
            FieldTest::Matches(r) => format!("matches /{}/", r.as_str()),
            FieldTest::Compare(op, n) => format!(
                "{} {n}",
                match op {
                    Cmp::Gt => ">",
                    Cmp::Gte => ">=",
                    Cmp::Lt => "<",
                    Cmp::Lte => "<=",
                }
            ),
            FieldTest::Not(inner) => format!("not ({})", inner.describe()),
        }
    }
}

fn as_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(b.to_string().into()),
        _ => None,
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Equality where numbers and numeric strings compare by value.
fn loose_eq(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (as_number(a), as_number(b)) {
        (Some(x), Some(y)) if a.is_number() || b.is_number() => x == y,
        _ => match (a, b) {
            (Value::Bool(x), Value::String(s)) | (Value::String(s), Value::Bool(x)) => {
                s.eq_ignore_ascii_case(if *x { "true" } else { "false" })
            }
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests;
