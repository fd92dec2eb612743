//! Time windows (`time_windows:`): named sets of hours in a time zone, in Alertmanager's
//! `<time_interval>` grammar (`times`, `weekdays`, `days_of_month`, `months`, `years`,
//! `location`), read in local time so that they follow daylight saving. A range of `times`
//! whose end comes before its start runs past midnight into the next day, and a time may give
//! seconds (`08:00:30`). An action with
//! `active: NAME` is only sent inside its window (see `memory` and `delivery`).

mod parse;
mod raw;
#[cfg(test)]
mod tests;

pub use parse::compile;
pub use raw::{RawInterval, RawTimeRange, RawTimeWindow};

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// How far ahead [`TimeWindow::next_open`] looks for the window to open.
const LOOK_AHEAD_DAYS: i64 = 366 * 8;

/// A compiled time window: it is open when any of its intervals is.
#[derive(Debug)]
pub struct TimeWindow {
    /// Its name in `time_windows:`.
    pub name: String,
    zone: Tz,
    intervals: Vec<Interval>,
}

/// One interval: every part given must hold (a part left out always holds). Ranges are
/// inclusive, except `times`, whose end is not part of it.
#[derive(Debug, Default, Clone)]
struct Interval {
    /// Seconds of the day: `[start, end)`; an end before the start runs into the next day.
    times: Vec<(u32, u32)>,
    /// Days of the week, Sunday 0; a range may wrap (`friday:monday`).
    weekdays: Vec<(u32, u32)>,
    /// Days of the month, negative ones counting from its end (-1 the last).
    days_of_month: Vec<(i32, i32)>,
    /// Months, January 1; a range may wrap.
    months: Vec<(u32, u32)>,
    /// Years.
    years: Vec<(i32, i32)>,
}

/// Whether `value` is in one of the ranges, which may wrap (`start > end`).
fn in_cyclic(ranges: &[(u32, u32)], value: u32) -> bool {
    ranges.is_empty()
        || ranges.iter().any(|&(a, b)| match a <= b {
            true => (a..=b).contains(&value),
            false => value >= a || value <= b,
        })
}

fn days_in_month(date: NaiveDate) -> i32 {
    let (y, m) = (date.year(), date.month());
    let next = match m {
        12 => NaiveDate::from_ymd_opt(y + 1, 1, 1),
        _ => NaiveDate::from_ymd_opt(y, m + 1, 1),
    };
    next.and_then(|n| n.pred_opt())
        .map_or(31, |last| last.day() as i32)
}

impl Interval {
    /// Whether the day itself is in the interval (its `times` aside).
    fn day(&self, date: NaiveDate) -> bool {
        let len = days_in_month(date);
        let resolve = |d: i32| if d < 0 { len + 1 + d } else { d };
        let day = date.day() as i32;
        in_cyclic(&self.weekdays, date.weekday().num_days_from_sunday())
            && in_cyclic(&self.months, date.month())
            && (self.days_of_month.is_empty()
                || self
                    .days_of_month
                    .iter()
                    .any(|&(a, b)| (resolve(a)..=resolve(b)).contains(&day)))
            && (self.years.is_empty()
                || self
                    .years
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&date.year())))
    }

    /// Whether the local moment (`date`, `second` of its day) is in the interval.
    fn contains(&self, date: NaiveDate, second: u32) -> bool {
        if self.times.is_empty() {
            return self.day(date);
        }
        self.times.iter().any(|&(start, end)| {
            if start < end {
                (start..end).contains(&second) && self.day(date)
            } else {
                // Past midnight: the range belongs to the day it starts on.
                (second >= start && self.day(date))
                    || (second < end && date.pred_opt().is_some_and(|d| self.day(d)))
            }
        })
    }

    /// The local seconds at which the interval opens on a day it holds.
    fn starts(&self) -> Vec<u32> {
        match self.times.is_empty() {
            true => vec![0],
            false => self.times.iter().map(|&(start, _)| start).collect(),
        }
    }
}

impl TimeWindow {
    /// Whether the window is open at `t`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        let local = t.with_timezone(&self.zone);
        let date = local.date_naive();
        let second = local.num_seconds_from_midnight();
        self.intervals.iter().any(|i| i.contains(date, second))
    }

    /// The first moment from `t` on when the window is open: `t` itself when it is, `None`
    /// when it does not open within eight years.
    pub fn next_open(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.contains(t) {
            return Some(t);
        }
        let first = t.with_timezone(&self.zone).date_naive();
        for offset in 0..LOOK_AHEAD_DAYS {
            let date = first + Duration::days(offset);
            let opening = self
                .intervals
                .iter()
                .filter(|i| i.day(date))
                .flat_map(Interval::starts)
                .filter_map(|second| self.instant(date, second))
                .filter(|&at| at >= t && self.contains(at))
                .min();
            if opening.is_some() {
                return opening;
            }
        }
        None
    }

    /// The instant of a local time; in a daylight-saving gap, the moment the clocks jump to.
    fn instant(&self, date: NaiveDate, second: u32) -> Option<DateTime<Utc>> {
        let naive = date.and_hms_opt(0, 0, 0)? + Duration::seconds(i64::from(second));
        (0..=180).find_map(|skip| {
            match self
                .zone
                .from_local_datetime(&(naive + Duration::minutes(skip)))
            {
                LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(earliest, _) => Some(earliest.with_timezone(&Utc)),
                LocalResult::None => None,
            }
        })
    }
}
