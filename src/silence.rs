//! Silences: runtime state, not configuration. A silence keeps the notifications of the events
//! it matches (canonical fields by equality or glob, all of them; optionally one rule's only)
//! from going out until it ends: they are recorded `suppressed` with reason `silenced`, at
//! intake and again when a delivery comes due. Silences live in the store (added with
//! `switchboard silence add` or `POST /api/silences`, on any instance); each instance reads
//! the active ones every second and at once after a change of its own.

use crate::event;
use crate::store::{Millis, SilenceRow, Store, StoreError, now_ms};
use arc_swap::ArcSwap;
use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How often an instance reads the silences that others (or the CLI) added.
pub const REFRESH: Duration = Duration::from_secs(1);

/// One silence.
#[derive(Debug, Clone)]
pub struct Silence {
    /// Its id (a UUID).
    pub id: String,
    /// Every one must match.
    pub matchers: Vec<Matcher>,
    /// Only this rule's notifications, when given.
    pub rule: Option<String>,
    /// Why (free text).
    pub comment: String,
    /// When it was added.
    pub created_at: Millis,
    /// When it ends (it may be expired early).
    pub ends_at: Millis,
}

/// `field=value`: the canonical field at a dotted path equals the value, or matches it as a
/// glob (`*@acme.example`); case does not matter.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The dotted path (`lead.email`).
    pub field: String,
    /// The value or glob.
    pub value: String,
    segments: Vec<String>,
    glob: GlobMatcher,
}

impl Matcher {
    /// A matcher from its field and value; the error says what is wrong.
    pub fn new(field: &str, value: &str) -> Result<Matcher, String> {
        let field = field.trim();
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(format!(
                "{field:?} is not a dotted path of the canonical event like lead.email"
            ));
        }
        let glob = GlobBuilder::new(value)
            .case_insensitive(true)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("{value:?} is not a value or a glob: {e}"))?
            .compile_matcher();
        Ok(Matcher {
            segments: field.split('.').map(str::to_string).collect(),
            field: field.to_string(),
            value: value.to_string(),
            glob,
        })
    }

    /// A matcher written `field=value`.
    pub fn parse(written: &str) -> Result<Matcher, String> {
        match written.split_once('=') {
            Some((field, value)) => Matcher::new(field, value),
            None => Err(format!(
                "{written:?} is not FIELD=VALUE (like lead.email=bob@acme.example)"
            )),
        }
    }

    fn matches(&self, event: &Value) -> bool {
        match event::lookup(event, &self.segments) {
            Some(Value::String(s)) => self.glob.is_match(s),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => self.glob.is_match(v.to_string()),
            _ => false,
        }
    }
}

impl Silence {
    /// Whether it silences `rule`'s notifications of `event` at `now`.
    pub fn silences(&self, event: &Value, rule: &str, now: Millis) -> bool {
        now < self.ends_at
            && self.rule.as_deref().is_none_or(|r| r == rule)
            && self.matchers.iter().all(|m| m.matches(event))
    }

    /// The row the store keeps.
    pub fn to_row(&self) -> SilenceRow {
        let matchers: Vec<(&str, &str)> = self
            .matchers
            .iter()
            .map(|m| (m.field.as_str(), m.value.as_str()))
            .collect();
        SilenceRow {
            id: self.id.clone(),
            matchers: serde_json::to_string(&matchers).unwrap_or_default(),
            rule: self.rule.clone(),
            comment: self.comment.clone(),
            created_at: self.created_at,
            ends_at: self.ends_at,
        }
    }

    /// A silence from its row; `None` when its matchers no longer parse.
    pub fn from_row(row: SilenceRow) -> Option<Silence> {
        let pairs: Vec<(String, String)> = serde_json::from_str(&row.matchers).ok()?;
        let matchers = pairs
            .iter()
            .map(|(f, v)| Matcher::new(f, v))
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Silence {
            id: row.id,
            matchers,
            rule: row.rule,
            comment: row.comment,
            created_at: row.created_at,
            ends_at: row.ends_at,
        })
    }

    /// As `/api/silences` and `silence list --json` show it.
    pub fn view(&self, now: Millis) -> SilenceView {
        let time = |ms| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        SilenceView {
            id: self.id.clone(),
            matchers: self
                .matchers
                .iter()
                .map(|m| format!("{}={}", m.field, m.value))
                .collect(),
            rule: self.rule.clone(),
            comment: self.comment.clone(),
            created_at: time(self.created_at),
            ends_at: time(self.ends_at),
            active: now < self.ends_at,
        }
    }
}

/// A silence as shown.
#[derive(Debug, Clone, Serialize)]
pub struct SilenceView {
    /// Its id.
    pub id: String,
    /// `field=value`, each.
    pub matchers: Vec<String>,
    /// The rule it is limited to.
    pub rule: Option<String>,
    /// Why.
    pub comment: String,
    /// When it was added, RFC 3339.
    pub created_at: String,
    /// When it ends or ended, RFC 3339.
    pub ends_at: String,
    /// Whether it is in force.
    pub active: bool,
}

/// What a caller asks for to add a silence.
#[derive(Debug, Clone)]
pub struct NewSilence {
    /// `field=value` matchers (at least one).
    pub matchers: Vec<Matcher>,
    /// Only this rule.
    pub rule: Option<String>,
    /// For how long from now.
    pub duration: Duration,
    /// Why.
    pub comment: String,
}

impl NewSilence {
    /// The silence, starting now.
    pub fn start(self) -> Result<Silence, String> {
        if self.matchers.is_empty() {
            return Err("a silence needs at least one FIELD=VALUE to match".into());
        }
        if self.duration.is_zero() {
            return Err("a silence needs a duration (like 2h or 7d)".into());
        }
        let now = now_ms();
        Ok(Silence {
            id: uuid::Uuid::now_v7().to_string(),
            matchers: self.matchers,
            rule: self.rule,
            comment: self.comment,
            created_at: now,
            ends_at: now.saturating_add(self.duration.as_millis() as i64),
        })
    }
}

/// The active silences as this instance last read them.
#[derive(Debug, Default)]
pub struct Silences(ArcSwap<Vec<Silence>>);

impl Silences {
    /// The id of the first silence that silences `rule`'s notifications of `event` now.
    pub fn matching(&self, event: &Value, rule: &str) -> Option<String> {
        let now = now_ms();
        let list = self.0.load();
        list.iter()
            .find(|s| s.silences(event, rule, now))
            .map(|s| s.id.clone())
    }

    /// Whether any silence is in force (so that events need not be checked at all).
    pub fn any(&self) -> bool {
        let now = now_ms();
        self.0.load().iter().any(|s| now < s.ends_at)
    }

    /// Reads the active silences from the store.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let rows = store.silences(now_ms()).await?;
        let list = rows.into_iter().filter_map(Silence::from_row).collect();
        self.0.store(Arc::new(list));
        Ok(())
    }
}
