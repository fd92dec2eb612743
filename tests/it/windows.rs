//! `window` conditions and `fire`: counts and rates of events per key over a rolling period,
//! counted in the intake transaction in event time, and rules that fire when a window starts
//! holding rather than on every event.

use crate::memory::{each_store, settled, shipped};
use crate::util::{
    Binary, HttpPeer, Router, SmtpPeer, Start, check_rule, config_dir, fast_retries, fixture,
    unique,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

/// A distinct real-shape bounce in `campaign`, happened at `at`.
fn bounce(campaign: i64, at: DateTime<Utc>) -> Value {
    let mut e = unique(fixture("real_15_email_bounce"));
    e["campaign_id"] = Value::from(campaign);
    e["event_timestamp"] = Value::String(at.to_rfc3339());
    e
}

/// A distinct real-shape send in `campaign`, happened now.
fn sent(campaign: i64) -> Value {
    let mut e = unique(fixture("real_10_email_sent"));
    e["campaign_id"] = Value::from(campaign);
    e["event_timestamp"] = Value::String(Utc::now().to_rfc3339());
    e
}

fn spike(peer: &HttpPeer, over: &str, more_than: u32) -> String {
    format!(
        r#"rules:
  - name: bounce-spike
    when:
      event: EMAIL_BOUNCED
      window: {{ key: "{{{{campaign.id}}}}", over: {over}, count: {{ gt: {more_than} }} }}
    fire: {{ rearm: below }}
    actions:
      - http: {{ url: "{}", body: '{{"campaign": {{{{campaign.id}}}}, "count": {{{{window.count}}}}}}' }}
"#,
        peer.url("/spike")
    )
}

/// The (campaign, count) of each alert received.
fn alerts(peer: &HttpPeer) -> Vec<(i64, i64)> {
    let mut got: Vec<(i64, i64)> = peer
        .received()
        .iter()
        // A late retry of another test's router may reach a port this peer took over.
        .filter(|r| r.path == "/spike")
        .map(|r| {
            let body = r.json();
            (
                body["campaign"].as_i64().unwrap(),
                body["count"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    got
}

#[tokio::test]
async fn twenty_one_bounces_in_ten_minutes_fire_once_per_campaign() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let dir = config_dir(&spike(&peer, "10m", 20), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        let now = Utc::now();
        // 21 bounces of one campaign at once (group commits of several), spread over the last
        // nine minutes; 20 of another; 21 of a third that happened an hour ago (a replay).
        let burst: Vec<Value> = (0..21)
            .map(|i| bounce(1, now - chrono::Duration::seconds(i * 25)))
            .chain((0..20).map(|_| bounce(2, now)))
            .chain((0..21).map(|_| bounce(3, now - chrono::Duration::hours(1))))
            .collect();
        futures_util::future::join_all(burst.iter().map(|e| router.post(e))).await;
        peer.wait_for(1).await;
        // More bounces while the spike lasts do not fire again.
        for _ in 0..5 {
            router.post(&bounce(1, Utc::now())).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(alerts(&peer), [(1, 21)]);
        // Events that did not fire are not deliveries at all.
        assert_eq!(settled(&router, 1).await.len(), 1);
        router
            .wait_metric(
                "switchboard_rule_matches_total",
                &[("rule", "bounce-spike")],
                1.0,
            )
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_spike_fires_again_only_after_its_window_stopped_holding() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let dir = config_dir(&spike(&peer, "2s", 3), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        for _ in 0..6 {
            router.post(&bounce(1, Utc::now())).await;
        }
        peer.wait_for(1).await;
        // The window empties; the next bounce finds it below and re-arms the rule, and the
        // fourth bounce from there fires it again.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        for _ in 0..3 {
            router.post(&bounce(1, Utc::now())).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(alerts(&peer), [(1, 4)], "three bounces are not a spike");
        router.post(&bounce(1, Utc::now())).await;
        peer.wait_for(2).await;
        assert_eq!(alerts(&peer), [(1, 4), (1, 4)]);
    })
    .await;
}

fn rate(peer: &HttpPeer) -> String {
    format!(
        r#"rules:
  - name: bounce-rate
    when:
      window:
        key: "{{{{campaign.id}}}}"
        over: 1h
        rate: {{ of: {{ event: EMAIL_BOUNCED }}, per: {{ event: EMAIL_SENT }}, gt: 0.05, min_per: 20 }}
    fire: {{ rearm: below, cooldown: 6h }}
    actions:
      - http: {{ url: "{}", body: '{{"rate": {{{{window.rate}}}}, "of": {{{{window.of}}}}, "per": {{{{window.per}}}}}}' }}
"#,
        peer.url("/rate")
    )
}

#[tokio::test]
async fn a_rate_waits_for_min_per_and_its_cooldown() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let dir = config_dir(&rate(&peer), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        // Two bounces in 19 sends is above 5 %, but 19 sends are too few to tell.
        router.post(&bounce(1, Utc::now())).await;
        router.post(&bounce(1, Utc::now())).await;
        for _ in 0..19 {
            router.post(&sent(1)).await;
        }
        // Opens are neither: they leave the rate alone.
        router.post(&unique(fixture("real_11_email_open"))).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(peer.received().is_empty());
        router.post(&sent(1)).await;
        let got = peer.wait_for(1).await;
        assert_eq!(
            got[0].json(),
            serde_json::json!({"rate": 0.1, "of": 2, "per": 20})
        );
        // The rate falls to 5 % (not above it), re-arming the rule; a bounce lifts it above
        // again, but within the cooldown of the last alert.
        for _ in 0..20 {
            router.post(&sent(1)).await;
        }
        router.post(&bounce(1, Utc::now())).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(peer.received().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn check_refuses_a_window_without_a_comparison_and_fire_without_a_window() {
    let when = |window: &str| format!("when:\n      event: EMAIL_BOUNCED\n      window: {window}");
    let cases = [
        (
            when("{ key: \"{{campaign.id}}\", over: 10m }"),
            "needs `count`",
        ),
        (
            when("{ key: \"{{campaign.id}}\", over: 10m, count: {} }"),
            "needs a comparison",
        ),
        (
            when("{ key: \"{{campaign.id}}\", over: 10m, count: { above: 3 } }"),
            "above",
        ),
        (
            when("{ key: \"{{campaign.id}}\", over: 500ms, count: { gt: 3 } }"),
            "at least 1s",
        ),
        (
            when("{ key: \"all\", over: 10m, count: { gt: 3 } }"),
            "names no field",
        ),
        (
            when(
                "{ key: \"{{campaign.id}}\", over: 1h, rate: { of: { window: { key: \"{{lead.email}}\", over: 1h, count: { gt: 1 } } }, per: { event: EMAIL_SENT }, gt: 0.1 } }",
            ),
            "not in a window's `of` or `per`",
        ),
        (
            "when: { event: EMAIL_BOUNCED }\n    fire: { rearm: below }".to_string(),
            "`fire` needs a `window`",
        ),
        (
            when("{ key: \"{{campaign.id}}\", over: 10m, count: { gt: 3 } }")
                + "\n    fire: { rearm: never }",
            "`fire.rearm` is `below`",
        ),
    ];
    for (part, expected) in cases {
        let (code, text) = check_rule(&part);
        assert_eq!(code, Some(1), "{part}: {text}");
        assert!(
            text.contains("rules.yaml:") && text.contains(expected),
            "{part}: {text}"
        );
    }
    let (code, text) = check_rule(&when(
        "{ key: \"{{campaign.id}}\", over: 10m, count: { gt: 20 } }",
    ));
    assert_eq!(code, Some(0), "{text}");
}

#[tokio::test]
async fn the_shipped_bounce_spike_emails_ops_once() {
    let smtp = SmtpPeer::start();
    let dir = shipped();
    let env = [
        ("SMTP_URL", smtp.url()),
        ("OPS_ALERT_TO", "ops@team.example".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let router = Binary::start_with_env(dir.path(), &[], &env).await;
    let client = reqwest::Client::new();
    let bounces: Vec<Value> = (0..25).map(|_| bounce(9181, Utc::now())).collect();
    let posts = bounces.iter().map(|e| {
        client
            .post(format!("{}/webhooks/smartlead", router.url))
            .body(e.to_string())
            .send()
    });
    for r in futures_util::future::join_all(posts).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let mails = smtp.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(mails[0].to, ["ops@team.example"]);
    assert!(
        mails[0]
            .data
            .contains("Subject: 21 bounces in 10 min on Q2 SaaS Outreach"),
        "{}",
        mails[0].data
    );
}

#[tokio::test]
async fn a_window_rule_with_stop_ends_evaluation_when_it_matches_in_the_store() {
    let peer = HttpPeer::start().await;
    let rules = format!(
        r#"rules:
  - name: spike
    stop: true
    when:
      event: EMAIL_BOUNCED
      window: {{ key: "{{{{campaign.id}}}}", over: 10m, count: {{ gt: 1 }} }}
    actions:
      - http: {{ url: "{}", body: "spike" }}
  - name: every-bounce
    when: {{ event: EMAIL_BOUNCED }}
    actions:
      - http: {{ url: "{}", body: "bounce" }}
"#,
        peer.url("/spike"),
        peer.url("/bounce")
    );
    let router = Router::start(&rules, &[]).await;
    router.post(&bounce(1, Utc::now())).await;
    peer.wait_for(1).await;
    router.post(&bounce(1, Utc::now())).await;
    peer.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = peer.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        ["/bounce", "/spike"],
        "the second bounce stops at spike"
    );
}
