//! `time_windows:` as written: serde types that mirror the YAML one to one, compiled by
//! [`super::compile`].

use crate::syntax::Spanned;
use serde::Deserialize;
use serde_json::Value;

/// One named time window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeWindow {
    /// An IANA time zone name (`America/New_York`); UTC when left out.
    #[serde(default)]
    pub location: Option<Spanned<String>>,
    /// The window is open when any of these is.
    pub intervals: Vec<Spanned<RawInterval>>,
}

/// One interval: every part given must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterval {
    /// Ranges of the day.
    #[serde(default)]
    pub times: Option<Vec<Spanned<RawTimeRange>>>,
    /// `monday`, `monday:friday`, …
    #[serde(default)]
    pub weekdays: Option<Vec<Spanned<Value>>>,
    /// `1`, `1:15`, `-1` (the last day), …
    #[serde(default)]
    pub days_of_month: Option<Vec<Spanned<Value>>>,
    /// `january`, `1:3`, …
    #[serde(default)]
    pub months: Option<Vec<Spanned<Value>>>,
    /// `2026`, `2026:2027`, …
    #[serde(default)]
    pub years: Option<Vec<Spanned<Value>>>,
}

/// A range of the day, `HH:MM` to `HH:MM` (the end not included; `24:00` is the day's end).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeRange {
    /// From.
    pub start_time: Spanned<String>,
    /// To.
    pub end_time: Spanned<String>,
}
