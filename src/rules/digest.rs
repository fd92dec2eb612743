//! `digest`: a rule that collects the events it matched, per key, and sends one message per
//! action when the digest closes: a fixed `window` after its first event, at a `schedule`
//! (cron in an IANA zone), or as soon as `max_events` are in it. The collecting and closing are
//! rule memory's and the store's (see `memory::digest` and `store::digests`); a digest here is
//! when to close and what to show.

use crate::store::Millis;
use crate::template::Template;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::sync::Arc;
use std::time::Duration;

/// Events listed in full when a rule says nothing (`list`).
pub const DEFAULT_LIST: u32 = 20;

/// Items a digest holds at most when a rule says nothing (`max_events`): it is sent when
/// reached, so that no digest grows without bound.
pub const DEFAULT_MAX_EVENTS: u32 = 1_000;

/// A rule's `digest:`.
#[derive(Debug)]
pub struct Digest {
    /// What a digest is per: a template over the canonical event.
    pub key: Template,
    /// When a digest closes.
    pub close: Close,
    /// Sent early when this many events are in it.
    pub max_events: u32,
    /// Events listed in full; the others are counted.
    pub list: u32,
    /// `first: immediate`: the event that opens a digest is also sent on its own.
    pub immediate: bool,
}

/// When a digest closes.
#[derive(Debug, Clone)]
pub enum Close {
    /// A fixed time after its first event.
    Window(Duration),
    /// At the next time of a schedule.
    Schedule(Arc<Schedule>),
}

/// A cron schedule in a time zone.
#[derive(Debug)]
pub struct Schedule {
    /// The pattern as written.
    pub text: String,
    /// The pattern parsed.
    pub cron: croner::Cron,
    /// The zone it is read in.
    pub zone: Tz,
}

impl Schedule {
    /// The first time of the schedule strictly after `now`.
    pub fn next_after(&self, now: Millis) -> Option<Millis> {
        let now = DateTime::<Utc>::from_timestamp_millis(now)?.with_timezone(&self.zone);
        let next = self.cron.find_next_occurrence(&now, false).ok()?;
        Some(next.timestamp_millis())
    }
}

impl Close {
    /// When a digest opened at `now` closes, and the reason it then gives; `None` for a
    /// schedule that never comes again.
    pub fn closes_at(&self, now: Millis) -> Option<(Millis, &'static str)> {
        match self {
            Close::Window(d) => Some((now.saturating_add(d.as_millis() as i64), "window")),
            Close::Schedule(s) => s.next_after(now).map(|at| (at, "schedule")),
        }
    }

    /// How it closes, for people.
    pub fn describe(&self) -> String {
        match self {
            Close::Window(d) => format!("{} after its first event", humantime::format_duration(*d)),
            Close::Schedule(s) => format!("at {:?} ({})", s.text, s.zone),
        }
    }
}

/// `digest.by_event` before counting: every event type a source sends, at 0, so that a
/// template can test any of them (`{{#if digest.by_event.EMAIL_CLICKED}}`).
pub fn by_event_zeroed() -> serde_json::Map<String, serde_json::Value> {
    crate::event::Sources::default()
        .iter()
        .flat_map(|s| s.event_types().iter())
        .map(|t| (t.to_string(), serde_json::Value::from(0)))
        .collect()
}
