//! The `when` block as written in a rules file: serde types that mirror the YAML one to one,
//! compiled by [`super::condition::compile`].

use crate::syntax::{OneOrMany, Spanned};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

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
    /// The rule does not fire when an event of these types with the same key was accepted
    /// lately (the rule's own `when` only).
    #[serde(default)]
    pub unless_seen: Option<Spanned<RawUnlessSeen>>,
    /// A count or rate of events per key over a rolling period.
    #[serde(default)]
    pub window: Option<Spanned<RawWindow>>,
}

/// `window:` a count or a rate of events per key over the last `over`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// A template over the canonical event: what is counted per (`{{campaign.id}}`).
    pub key: Spanned<String>,
    /// How far back (`10m`).
    pub over: Spanned<String>,
    /// The events that match the rule's other conditions, compared (`{ gt: 20 }`).
    #[serde(default)]
    pub count: Option<Spanned<RawThreshold>>,
    /// `of` events over `per` events, compared.
    #[serde(default)]
    pub rate: Option<Box<Spanned<RawRate>>>,
}

/// `rate:` in a `window`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// The events counted above the line.
    pub of: Spanned<RawWhen>,
    /// The events counted below it.
    pub per: Spanned<RawWhen>,
    /// No verdict until at least this many `per` events are counted.
    #[serde(default)]
    pub min_per: Option<Spanned<u64>>,
    /// Greater than.
    #[serde(default)]
    pub gt: Option<Spanned<f64>>,
    /// Greater than or equal.
    #[serde(default)]
    pub gte: Option<Spanned<f64>>,
    /// Less than.
    #[serde(default)]
    pub lt: Option<Spanned<f64>>,
    /// Less than or equal.
    #[serde(default)]
    pub lte: Option<Spanned<f64>>,
    /// Equal.
    #[serde(default)]
    pub equals: Option<Spanned<f64>>,
}

/// A comparison of a window's count: every bound given must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    /// Greater than.
    #[serde(default)]
    pub gt: Option<Spanned<f64>>,
    /// Greater than or equal.
    #[serde(default)]
    pub gte: Option<Spanned<f64>>,
    /// Less than.
    #[serde(default)]
    pub lt: Option<Spanned<f64>>,
    /// Less than or equal.
    #[serde(default)]
    pub lte: Option<Spanned<f64>>,
    /// Equal.
    #[serde(default)]
    pub equals: Option<Spanned<f64>>,
}

/// `fire:` a rule with a `window` fires when the window starts holding, not on every event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFire {
    /// When it may fire again: `below` (after the window stopped holding).
    #[serde(default)]
    pub rearm: Option<Spanned<String>>,
    /// And not before this long after the last firing (`1h`).
    #[serde(default)]
    pub cooldown: Option<Spanned<String>>,
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

/// `once:` the rule fires for the first event of each key, then not again for `for`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnce {
    /// A template over the canonical event: what the rule fires once per.
    pub key: Spanned<String>,
    /// How long a key stays taken (`14d`).
    #[serde(rename = "for", default)]
    pub hold: Option<Spanned<String>>,
    /// `true`: a key stays taken for ever.
    #[serde(default)]
    pub forever: Option<Spanned<bool>>,
}

/// `throttle:` at most `limit` firings per key per `per`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// A template over the canonical event: what the limit is per.
    pub key: Spanned<String>,
    /// Firings allowed per window.
    pub limit: Spanned<u32>,
    /// The window's length (`24h`).
    pub per: Spanned<String>,
    /// `fixed` (the default: a window opens at the first firing) or `rolling` (the last `per`).
    #[serde(default)]
    pub window: Option<Spanned<String>>,
    /// `suppress` (the default: what is over the limit is not sent) or `digest` (it is sent as
    /// one digest when the window reopens).
    #[serde(default)]
    pub over_limit: Option<Spanned<String>>,
}

/// `digest:` the rule's events collected per key, sent as one message per action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDigest {
    /// A template over the canonical event: what a digest is per.
    pub key: Spanned<String>,
    /// Closes this long after its first event (`1h`).
    #[serde(default)]
    pub window: Option<Spanned<String>>,
    /// Or at the times of a cron schedule.
    #[serde(default)]
    pub schedule: Option<Spanned<RawSchedule>>,
    /// Sent early once this many events are in it.
    #[serde(default)]
    pub max_events: Option<Spanned<u32>>,
    /// Events listed in full.
    #[serde(default)]
    pub list: Option<Spanned<u32>>,
    /// `wait` (the default) or `immediate`: the first event also goes on its own.
    #[serde(default)]
    pub first: Option<Spanned<String>>,
}

/// A digest's `schedule`: a cron pattern read in a zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// Five fields (minute hour day month weekday), or six with seconds first.
    pub cron: Spanned<String>,
    /// An IANA zone name; UTC when left out.
    #[serde(default)]
    pub location: Option<Spanned<String>>,
}

/// `unless_seen:` in a rule's `when`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnlessSeen {
    /// The event types that, seen with the same key, stop the rule (canonical or as sent).
    pub event: Spanned<OneOrMany<String>>,
    /// A template over the canonical event: what "the same" means (`{{lead.email}}`).
    pub same: Spanned<String>,
    /// How far back (`30d`).
    pub within: Spanned<String>,
}
