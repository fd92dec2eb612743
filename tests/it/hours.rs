//! Time windows on actions: outside its window a delivery waits for the window to open
//! (`outside: hold`) or is not sent (`outside: drop`), and a held delivery is checked again
//! when it comes due. Windows are computed near now, to the second.

use crate::memory::{all, each_store};
use crate::util::{HttpPeer, Router, Start, check_file, fast_retries, fixture, unique};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::{Duration, Instant};
use switchboard::store::DeliveryStatus;

/// The next whole second at least `ahead` from now, with the instant it falls on.
fn whole_second(ahead: Duration) -> (DateTime<Utc>, Instant) {
    let (now, instant) = (Utc::now(), Instant::now());
    let at = now + ahead;
    let at = DateTime::from_timestamp(at.timestamp() + 1, 0).unwrap();
    (at, instant + (at - now).to_std().unwrap())
}

fn rules(peer: &HttpPeer, opens: DateTime<Utc>, outside: &str) -> String {
    let closes = opens + chrono::Duration::hours(1);
    format!(
        r#"time_windows:
  soon:
    intervals:
      - times: [{{ start_time: "{}", end_time: "{}" }}]
rules:
  - name: reply
    when: {{ event: EMAIL_REPLIED }}
    actions:
      - http: {{ url: "{}", body: "{{{{lead.email}}}}", active: soon, outside: {outside} }}
      - http: {{ url: "{}", body: "now" }}
"#,
        opens.format("%H:%M:%S"),
        closes.format("%H:%M:%S"),
        peer.url("/windowed"),
        peer.url("/now"),
    )
}

fn windowed(peer: &HttpPeer) -> Vec<Instant> {
    let received = peer.received();
    received
        .iter()
        .filter(|r| r.path == "/windowed")
        .map(|r| r.at)
        .collect()
}

fn reply() -> Value {
    unique(fixture("real_13_email_reply"))
}

#[tokio::test]
async fn a_held_delivery_arrives_when_its_window_opens_and_not_before() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let (opens, at) = whole_second(Duration::from_secs(2));
        let dir = crate::util::config_dir(&rules(&peer, opens, "hold"), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        router.post(&reply()).await;
        // The action without a window goes at once; the other waits, pending.
        peer.wait_for(1).await;
        let list = all(&router).await;
        let held = list.iter().find(|d| d.destination == "reply#1").unwrap();
        assert_eq!(held.status, DeliveryStatus::Pending, "{held:?}");
        assert_eq!(held.reason.as_deref(), Some("outside"));
        assert_eq!(held.attempts, 0);
        assert_eq!(
            held.next_attempt_at.as_deref(),
            Some(&*opens.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        );
        peer.wait_for(2).await;
        let got = windowed(&peer);
        assert_eq!(got.len(), 1);
        // Not before the window opened (the clock read twice: a few ms either way).
        assert!(
            got[0] + Duration::from_millis(20) >= at,
            "{:?} early",
            at - got[0]
        );
        router
            .wait_metric(
                "switchboard_deliveries_total",
                &[("outcome", "held"), ("reason", "outside")],
                1.0,
            )
            .await;
    })
    .await;
}

#[tokio::test]
async fn outside_drop_keeps_the_delivery_suppressed() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let (opens, _) = whole_second(Duration::from_secs(3600));
        let dir = crate::util::config_dir(&rules(&peer, opens, "drop"), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        router.post(&reply()).await;
        peer.wait_for(1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(windowed(&peer).is_empty());
        let list = all(&router).await;
        let dropped = list.iter().find(|d| d.destination == "reply#1").unwrap();
        assert_eq!(dropped.status, DeliveryStatus::Suppressed);
        assert_eq!(dropped.reason.as_deref(), Some("outside"));
    })
    .await;
}

#[tokio::test]
async fn a_held_delivery_follows_a_reload_when_it_comes_due() {
    let peer = HttpPeer::start().await;
    let (opens, _) = whole_second(Duration::from_secs(2));
    let dir = crate::util::config_dir(&rules(&peer, opens, "hold"), &[]);
    let router = Router::start_in(dir).await;
    router.post(&reply()).await;
    peer.wait_for(1).await;
    // Before it comes due, the window moves an hour later.
    let (later, _) = whole_second(Duration::from_secs(3600));
    std::fs::write(router.rules_path(), rules(&peer, later, "hold")).unwrap();
    let (status, _) = router.post_raw("/-/reload", "").await;
    assert_eq!(status, 200);
    // It comes due at the first opening, and is held again (its error says why).
    let begun = Instant::now();
    let held = loop {
        let list = all(&router).await;
        let held = list
            .into_iter()
            .find(|d| d.destination == "reply#1")
            .unwrap();
        if held.last_error.is_some() || begun.elapsed() > Duration::from_secs(10) {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(windowed(&peer).is_empty(), "sent outside its window");
    assert_eq!(held.status, DeliveryStatus::Pending, "{held:?}");
    assert_eq!(held.attempts, 0, "being held is not an attempt");
    let due = held.next_attempt_at.as_deref().unwrap();
    assert_eq!(
        due,
        later.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    assert!(
        held.last_error
            .as_deref()
            .unwrap()
            .contains("outside time window \"soon\"")
    );
}

#[tokio::test]
async fn outside_digest_sends_what_came_outside_as_one_digest_when_the_window_opens() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let (opens, at) = whole_second(Duration::from_secs(2));
        let rules = rules(&peer, opens, "digest").replace(
            r#"body: "{{lead.email}}""#,
            r#"body: "{{#if digest}}{{digest.count}} {{digest.reason}}{{else}}{{lead.email}}{{/if}}""#,
        );
        let dir = crate::util::config_dir(&rules, &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        for _ in 0..3 {
            router.post(&reply()).await;
        }
        // The actions without a window go at once; the others wait in one digest.
        peer.wait_for(3).await;
        let list = all(&router).await;
        let folded = list
            .iter()
            .filter(|d| d.destination == "reply#1")
            .filter(|d| d.reason.as_deref() == Some("outside"))
            .count();
        assert_eq!(folded, 3, "{list:#?}");
        let got = peer.wait_for(4).await;
        let digest: Vec<_> = got.iter().filter(|r| r.path == "/windowed").collect();
        assert_eq!(digest.len(), 1);
        assert_eq!(digest[0].body, "3 hold_release");
        assert!(digest[0].at + Duration::from_millis(20) >= at, "early");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(windowed(&peer).len(), 1);
        // Its action renders the digest and the single event alike: `check` holds it to that.
        let (code, out) = check_file(&rules.replace("{{digest.count}}", "{{digest.cuont}}"));
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("`outside: digest` sends it a digest"), "{out}");
        assert!(out.contains("digest.cuont"), "{out}");
    })
    .await;
}

#[test]
fn check_refuses_an_unknown_window_and_bad_outside() {
    let file = |window: &str, action: &str| {
        format!(
            "time_windows:\n  office:\n{window}\nrules:\n  - name: r\n    actions:\n      - log: {{ message: hi, {action} }}\n"
        )
    };
    let hours = "    intervals: [{ times: [{ start_time: '08:00', end_time: '18:00' }] }]";
    for (text, expected) in [
        (
            file(hours, "active: ofice"),
            "7:37: rule \"r\": unknown time window \"ofice\" (defined: office)",
        ),
        (
            file(hours, "active: office, outside: later"),
            "`outside` is `hold`, `drop` or `digest`, not \"later\"",
        ),
        (file(hours, "outside: drop"), "`outside` needs `active`"),
        (
            file(
                &format!("    location: Mars/Olympus\n{hours}"),
                "active: office",
            ),
            "3:15: time window \"office\": unknown time zone \"Mars/Olympus\"",
        ),
    ] {
        let (code, out) = check_file(&text);
        assert_eq!(code, Some(1), "{text}: {out}");
        assert!(out.contains(expected), "{text}: {out}");
    }
    let (code, out) = check_file(&file(hours, "active: office, outside: drop"));
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test]
async fn a_silence_added_while_a_delivery_is_held_applies_when_it_comes_due() {
    let peer = HttpPeer::start().await;
    let (opens, at) = whole_second(Duration::from_secs(2));
    let router = Router::start(&rules(&peer, opens, "hold"), &[]).await;
    router.post(&reply()).await;
    peer.wait_for(1).await;
    let silence =
        serde_json::json!({"matchers": ["lead.email=james.parker@prospect.example"], "for": "1h"});
    let (status, _) = router.post_raw("/api/silences", silence.to_string()).await;
    assert_eq!(status, 201);
    let begun = Instant::now();
    let held = loop {
        let list = all(&router).await;
        let held = list
            .into_iter()
            .find(|d| d.destination == "reply#1")
            .unwrap();
        let waiting = matches!(
            held.status,
            DeliveryStatus::Pending | DeliveryStatus::Sending
        );
        if !waiting || begun.elapsed() > Duration::from_secs(10) {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(Instant::now() + Duration::from_millis(20) >= at);
    assert_eq!(held.status, DeliveryStatus::Suppressed, "{held:?}");
    assert_eq!(held.reason.as_deref(), Some("silenced"));
    assert!(windowed(&peer).is_empty());
}
