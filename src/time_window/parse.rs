//! Compiling a time window as written, reporting every problem with its position.

use super::raw::{RawInterval, RawTimeWindow};
use super::{Interval, TimeWindow};
use crate::syntax::{Pos, Spanned, pos};
use chrono_tz::Tz;
use serde_json::Value;

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Compiles the window `name`, reporting every problem (with its position) through `error`.
pub fn compile(
    name: &str,
    raw: &Spanned<RawTimeWindow>,
    error: &mut dyn FnMut(Pos, String),
) -> Option<TimeWindow> {
    let w = &raw.value;
    let zone = match &w.location {
        None => Some(Tz::UTC),
        Some(l) => match l.value.trim().parse::<Tz>() {
            Ok(zone) => Some(zone),
            Err(_) => {
                let message = format!(
                    "time window {name:?}: unknown time zone {:?} (an IANA name like America/New_York or Europe/Paris)",
                    l.value
                );
                error(pos(l), message);
                None
            }
        },
    };
    if w.intervals.is_empty() {
        let message = format!("time window {name:?} has no intervals, so it is never open");
        error(pos(raw), message);
    }
    let mut failed = false;
    let mut intervals = Vec::new();
    for interval in &w.intervals {
        let mut report = |at: Pos, m: String| {
            failed = true;
            error(at, format!("time window {name:?}: {m}"));
        };
        intervals.push(compile_interval(&interval.value, &mut report));
    }
    (!failed).then_some(TimeWindow {
        name: name.to_string(),
        zone: zone?,
        intervals,
    })
}

fn compile_interval(raw: &RawInterval, error: &mut dyn FnMut(Pos, String)) -> Interval {
    let mut interval = Interval::default();
    for range in raw.times.iter().flatten() {
        let r = &range.value;
        let start = clock(&r.start_time, false, error);
        let end = clock(&r.end_time, true, error);
        if let (Some(start), Some(end)) = (start, end) {
            if start == end {
                let message = format!(
                    "`start_time` and `end_time` are both {:?}: the range is empty",
                    r.start_time.value
                );
                error(pos(range), message);
            }
            interval.times.push((start, end));
        }
    }
    let parts = |list: &Option<Vec<Spanned<Value>>>| list.iter().flatten().cloned().collect();
    let weekdays: Vec<Spanned<Value>> = parts(&raw.weekdays);
    for w in &weekdays {
        if let Some(range) = range(w, ("weekday", "monday:friday"), error, &|s| {
            named(s, &WEEKDAYS, 0)
        }) {
            interval.weekdays.push(range);
        }
    }
    let months: Vec<Spanned<Value>> = parts(&raw.months);
    for m in &months {
        let month = |s: &str| named(s, &MONTHS, 1).or_else(|| number(s, 1, 12));
        if let Some(range) = range(m, ("month", "january:march or 1:3"), error, &month) {
            interval.months.push(range);
        }
    }
    let days: Vec<Spanned<Value>> = parts(&raw.days_of_month);
    for d in &days {
        let day = |s: &str| {
            let n: i32 = s.trim().parse().ok()?;
            ((1..=31).contains(&n) || (-31..=-1).contains(&n)).then_some(n)
        };
        match range(d, ("day of the month", "1:15 or -3:-1"), error, &day) {
            // Both ends count the same way, so that `-3:-1` and `1:15` read naturally.
            Some((a, b)) if (a < 0) != (b < 0) || a > b => error(
                pos(d),
                format!(
                    "day of the month range {} runs backwards or mixes counting from the start and from the end",
                    text(&d.value)
                ),
            ),
            Some(range) => interval.days_of_month.push(range),
            None => {}
        }
    }
    let years: Vec<Spanned<Value>> = parts(&raw.years);
    for y in &years {
        let year = |s: &str| s.trim().parse::<i32>().ok().filter(|y| *y >= 1970);
        match range(y, ("year", "2026:2027"), error, &year) {
            Some((a, b)) if a > b => {
                error(
                    pos(y),
                    format!("year range {} runs backwards", text(&y.value)),
                );
            }
            Some(range) => interval.years.push(range),
            None => {}
        }
    }
    interval
}

/// `HH:MM` or `HH:MM:SS` as seconds of the day; `24:00` only as an end.
fn clock(raw: &Spanned<String>, end: bool, error: &mut dyn FnMut(Pos, String)) -> Option<u32> {
    let written = raw.value.trim();
    let parts: Vec<&str> = written.split(':').collect();
    let number = |p: &str| (p.len() == 2).then(|| p.parse::<u32>().ok()).flatten();
    let parsed = match parts[..] {
        [h, m] => Some((number(h), number(m), Some(0))),
        [h, m, s] => Some((number(h), number(m), number(s))),
        _ => None,
    }
    .and_then(|(h, m, s)| match (h?, m?, s?) {
        (24, 0, 0) if end => Some(24 * 3600),
        (h, m, s) if h < 24 && m < 60 && s < 60 => Some(h * 3600 + m * 60 + s),
        _ => None,
    });
    if parsed.is_none() {
        let what = if end { "end_time" } else { "start_time" };
        let message = format!(
            "`{what}` {:?} is not a time like 08:00 (00:00 to {})",
            raw.value,
            if end { "24:00" } else { "23:59" }
        );
        error(pos(raw), message);
    }
    parsed
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One value or a `start:end` range of them.
fn range<T: Copy>(
    raw: &Spanned<Value>,
    (what, example): (&str, &str),
    error: &mut dyn FnMut(Pos, String),
    one: &dyn Fn(&str) -> Option<T>,
) -> Option<(T, T)> {
    let written = text(&raw.value);
    let (a, b) = match written.split_once(':') {
        Some((a, b)) => (one(a), one(b)),
        None => (one(&written), one(&written)),
    };
    match (a, b) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => {
            error(
                pos(raw),
                format!("{what} {written:?} is not a {what} or a range like {example}"),
            );
            None
        }
    }
}

fn named(s: &str, names: &[&str], first: u32) -> Option<u32> {
    let s = s.trim().to_ascii_lowercase();
    names.iter().position(|n| *n == s).map(|i| i as u32 + first)
}

fn number(s: &str, low: u32, high: u32) -> Option<u32> {
    s.trim().parse().ok().filter(|n| (low..=high).contains(n))
}
