//! Time windows read in their zone: weekdays, ranges past midnight, days counted from a
//! month's end, daylight saving.

use super::*;

fn window(yaml: &str) -> TimeWindow {
    let raw: Spanned<RawTimeWindow> = serde_saphyr::from_str(yaml).expect("valid yaml");
    let mut errors = Vec::new();
    let w = compile("w", &raw, &mut |p, m| {
        errors.push(format!("{}:{} {m}", p.line, p.column))
    });
    assert!(errors.is_empty(), "{errors:?}");
    w.expect("compiles")
}

fn errors(yaml: &str) -> Vec<String> {
    let raw: Spanned<RawTimeWindow> = serde_saphyr::from_str(yaml).expect("valid yaml");
    let mut errors = Vec::new();
    compile("w", &raw, &mut |p, m| {
        errors.push(format!("{}:{} {m}", p.line, p.column))
    });
    errors
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

use crate::syntax::Spanned;

const NY: &str = "location: America/New_York
intervals:
  - weekdays: ['monday:friday']
    times: [{ start_time: '08:00', end_time: '18:30' }]";

#[test]
fn sales_hours_in_new_york_follow_its_clock() {
    let w = window(NY);
    // Monday 7 December 2026: New York is UTC-5.
    assert!(!w.contains(at("2026-12-07T12:59:00Z")));
    assert!(w.contains(at("2026-12-07T13:00:00Z")));
    assert!(w.contains(at("2026-12-07T23:29:59Z")));
    assert!(
        !w.contains(at("2026-12-07T23:30:00Z")),
        "the end is not in it"
    );
    assert!(!w.contains(at("2026-12-12T15:00:00Z")), "a Saturday");
    // Friday evening: the next opening is Monday 08:00.
    assert_eq!(
        w.next_open(at("2026-12-11T23:45:00Z")),
        Some(at("2026-12-14T13:00:00Z"))
    );
    let inside = at("2026-12-08T15:00:00Z");
    assert_eq!(w.next_open(inside), Some(inside));
}

#[test]
fn daylight_saving_moves_the_opening_in_utc() {
    let w = window(NY);
    // The clocks went forward on Sunday 8 March 2026: 08:00 is now 12:00 UTC.
    assert_eq!(
        w.next_open(at("2026-03-07T12:00:00Z")),
        Some(at("2026-03-09T12:00:00Z"))
    );
    assert!(w.contains(at("2026-03-09T12:00:00Z")));
    assert!(
        !w.contains(at("2026-03-06T12:30:00Z")),
        "08:00 was 13:00 UTC before"
    );
    // A window that opens inside the gap (02:30 on 29 March in Paris) opens when the clocks
    // jump to 03:00, 01:00 UTC.
    let paris = window(
        "location: Europe/Paris\nintervals:\n  - times: [{ start_time: '02:30', end_time: '04:00' }]",
    );
    assert_eq!(
        paris.next_open(at("2026-03-28T23:00:00Z")),
        Some(at("2026-03-29T01:00:00Z"))
    );
}

#[test]
fn a_range_ending_before_it_starts_runs_past_midnight_from_its_day() {
    let w = window(
        "intervals:\n  - weekdays: [friday]\n    times: [{ start_time: '22:00', end_time: '02:00' }]",
    );
    assert!(!w.contains(at("2026-12-11T21:59:00Z")));
    assert!(w.contains(at("2026-12-11T22:00:00Z")), "Friday night");
    assert!(w.contains(at("2026-12-12T01:59:00Z")), "early Saturday");
    assert!(!w.contains(at("2026-12-12T02:00:00Z")));
    assert!(
        !w.contains(at("2026-12-11T01:00:00Z")),
        "early Friday is Thursday's night"
    );
    assert_eq!(
        w.next_open(at("2026-12-12T03:00:00Z")),
        Some(at("2026-12-18T22:00:00Z"))
    );
}

#[test]
fn days_months_and_years_narrow_an_interval() {
    let last = window("intervals:\n  - days_of_month: ['-1']");
    assert!(last.contains(at("2026-02-28T10:00:00Z")));
    assert!(!last.contains(at("2026-02-27T10:00:00Z")));
    assert!(last.contains(at("2028-02-29T10:00:00Z")), "a leap year");
    let winter = window("intervals:\n  - months: ['november:february']\n    years: ['2026:2027']");
    assert!(winter.contains(at("2026-12-24T00:00:00Z")));
    assert!(winter.contains(at("2027-01-15T00:00:00Z")));
    assert!(!winter.contains(at("2027-03-01T00:00:00Z")));
    assert_eq!(
        winter.next_open(at("2026-06-01T00:00:00Z")),
        Some(at("2026-11-01T00:00:00Z"))
    );
    assert_eq!(
        winter.next_open(at("2028-03-01T00:00:00Z")),
        None,
        "never again"
    );
    let first_days = window("intervals:\n  - days_of_month: [1, '2:3']");
    assert!(first_days.contains(at("2026-12-03T10:00:00Z")));
    assert!(!first_days.contains(at("2026-12-04T10:00:00Z")));
}

#[test]
fn every_mistake_is_reported_where_it_is() {
    let e = errors(
        "location: America/NewYork
intervals:
  - weekdays: ['monday:fryday']
    times: [{ start_time: '8:00', end_time: '18:30' }, { start_time: '09:00', end_time: '09:00' }]
    days_of_month: ['-1:5', 32]
    months: [smarch]
    years: ['2027:2026']",
    );
    let expect = [
        "1:11 time window \"w\": unknown time zone",
        "4:27 time window \"w\": `start_time` \"8:00\" is not a time like 08:00",
        "4:56 time window \"w\": `start_time` and `end_time` are both \"09:00\"",
        "3:16 time window \"w\": weekday \"monday:fryday\" is not a weekday or a range",
        "6:14 time window \"w\": month \"smarch\" is not a month",
        "5:21 time window \"w\": day of the month range -1:5 runs backwards",
        "5:29 time window \"w\": day of the month \"32\" is not a day of the month",
        "7:13 time window \"w\": year range 2027:2026 runs backwards",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
    assert_eq!(
        errors("intervals: []")[0],
        "1:1 time window \"w\" has no intervals, so it is never open"
    );
}

#[test]
fn times_may_give_seconds() {
    let w = window("intervals:\n  - times: [{ start_time: '08:00:30', end_time: '24:00' }]");
    assert!(!w.contains(at("2026-12-07T08:00:29Z")));
    assert!(w.contains(at("2026-12-07T08:00:30Z")));
    assert!(w.contains(at("2026-12-07T23:59:59Z")));
    assert_eq!(
        w.next_open(at("2026-12-07T03:00:00Z")),
        Some(at("2026-12-07T08:00:30Z"))
    );
    let e = errors("intervals:\n  - times: [{ start_time: '24:00', end_time: '8:00:61' }]");
    assert_eq!(e.len(), 2, "{e:?}");
}
