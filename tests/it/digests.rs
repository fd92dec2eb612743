//! Digests: a rule's events collected per key and sent as one message per action when the
//! digest's window ends, its schedule comes or `max_events` is reached; durable (a SIGKILL and
//! a restart send it once, whole), retried like any delivery (the retry carries the same items),
//! closed by one instance of several on PostgreSQL, and checked by `check`.

use crate::memory::{all, each_store, shipped};
use crate::postgres::fresh_store;
use crate::util::{
    Binary, HttpPeer, Router, SmtpPeer, Start, check_file, check_in, config_dir, fast_retries,
    fixture, repo_path, two_instances, unique,
};
use serde_json::Value;
use std::time::{Duration, Instant};
use switchboard::store::DeliveryStatus;

/// `switchboard check` of `rules` beside the shipped templates.
fn check_shipped(rules: &str) -> (Option<i32>, String) {
    check_in(shipped().path(), rules)
}

/// An open of `lead` (a real-shape EMAIL_OPEN payload) in campaign `campaign`.
fn open(lead: &str, name: &str, campaign: i64) -> Value {
    let mut e = unique(fixture("real_11_email_open"));
    e["to_email"] = Value::String(lead.into());
    e["sl_lead_email"] = Value::String(lead.into());
    e["to_name"] = Value::String(name.into());
    e["campaign_id"] = Value::from(campaign);
    e["campaign_name"] = Value::String(format!("Campaign {campaign}"));
    e
}

/// A digest rule posting what its templates see to `peer` as JSON.
fn digest_rules(peer: &HttpPeer, digest: &str) -> String {
    format!(
        r#"rules:
  - name: engagement
    when: {{ event: [EMAIL_OPENED, EMAIL_CLICKED] }}
    digest: {digest}
    actions:
      - http:
          url: "{}"
          body: '{{"campaign": {{{{json campaign.id}}}}, "digest": {{{{json digest}}}}, "leads": [{{{{#each events}}}}{{{{#if @index}}}},{{{{/if}}}}{{{{json lead.email}}}}{{{{/each}}}}]}}'
"#,
        peer.url("/digest")
    )
}

/// The digests `peer` received, as JSON.
fn digests(peer: &HttpPeer) -> Vec<Value> {
    peer.received().iter().map(|r| r.json()).collect()
}

#[tokio::test]
async fn fifty_opens_over_two_campaigns_make_two_digests_at_window_end() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let rules = digest_rules(&peer, r#"{ key: "{{campaign.id}}", window: 2s, list: 5 }"#);
        let router = Router::start_as(config_dir(&rules, &[]), fast_retries(), start).await;
        let begun = Instant::now();
        // 30 opens by 6 leads in campaign 1, 20 by 20 leads in campaign 2, interleaved.
        for i in 0..50 {
            let event = match i % 5 {
                0 | 2 | 4 => open(&format!("a{}@lead.example", i % 10), "A", 1),
                _ => open(&format!("b{i}@lead.example"), "B", 2),
            };
            router.post(&event).await;
        }
        peer.wait_for(2).await;
        assert!(
            begun.elapsed() >= Duration::from_secs(2),
            "sent before the window ended"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut got = digests(&peer);
        assert_eq!(got.len(), 2, "{got:#?}");
        got.sort_by_key(|d| d["campaign"].as_i64());
        let (one, two) = (&got[0], &got[1]);
        assert_eq!(one["campaign"], 1);
        assert_eq!(one["digest"]["count"], 30);
        assert_eq!(one["digest"]["leads"], 6);
        assert_eq!(one["digest"]["truncated"], 25);
        assert_eq!(one["digest"]["reason"], "window");
        assert_eq!(one["digest"]["by_event"]["EMAIL_OPENED"], 30);
        assert_eq!(one["digest"]["key"], "1");
        // The first five, in arrival order: posts 0, 2, 4, 5, 7.
        let first: Vec<&str> = one["leads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(
            first,
            [
                "a0@lead.example",
                "a2@lead.example",
                "a4@lead.example",
                "a5@lead.example",
                "a7@lead.example"
            ]
        );
        assert_eq!(two["campaign"], 2);
        assert_eq!(two["digest"]["count"], 20);
        assert_eq!(two["digest"]["leads"], 20);
        assert_eq!(one["digest"]["lead_emails"].as_array().unwrap().len(), 6);
        assert_eq!(one["digest"]["lead_emails"][0], "a0@lead.example");
        assert_eq!(two["leads"][0], "b1@lead.example");
        drop(got);
        // Each event is kept as not sent on its own, and each digest as one delivery.
        let list = all(&router).await;
        let folded = list
            .iter()
            .filter(|d| d.reason.as_deref() == Some("digest"))
            .count();
        assert_eq!(folded, 50);
        // The digests' attempts are recorded just after they arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let list = all(&router).await;
        let mut sent: Vec<u64> = list
            .iter()
            .filter(|d| d.status == DeliveryStatus::Delivered)
            .map(|d| d.digest_items.unwrap())
            .collect();
        sent.sort();
        assert_eq!(sent, [20, 30]);
    })
    .await;
}

#[tokio::test]
async fn max_events_sends_a_digest_early_and_the_key_starts_a_new_one() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let rules = digest_rules(
            &peer,
            r#"{ key: "{{campaign.id}}", window: 1h, max_events: 5 }"#,
        );
        let router = Router::start_as(config_dir(&rules, &[]), fast_retries(), start).await;
        for i in 0..12 {
            router
                .post(&open(&format!("l{i}@lead.example"), "L", 7))
                .await;
        }
        let got = peer.wait_for(2).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(peer.received().len(), 2, "{got:#?}");
        let got = digests(&peer);
        for d in &got {
            assert_eq!(d["digest"]["count"], 5);
            assert_eq!(d["digest"]["reason"], "max_events");
        }
        let mut firsts: Vec<&str> = got
            .iter()
            .map(|d| d["leads"][0].as_str().unwrap())
            .collect();
        firsts.sort();
        assert_eq!(firsts, ["l0@lead.example", "l5@lead.example"]);
    })
    .await;
}

#[tokio::test]
async fn first_immediate_sends_the_first_event_alone_too() {
    let peer = HttpPeer::start().await;
    let rules = format!(
        r#"rules:
  - name: engagement
    when: {{ event: EMAIL_OPENED }}
    digest: {{ key: "{{{{campaign.id}}}}", window: 1s, first: immediate }}
    actions:
      - http:
          url: "{}"
          body: '{{{{#if digest}}}}{{"count": {{{{digest.count}}}}}}{{{{else}}}}{{"one": "{{{{lead.email}}}}"}}{{{{/if}}}}'
"#,
        peer.url("/digest")
    );
    let router = Router::start(&rules, &[]).await;
    for i in 0..3 {
        router
            .post(&open(&format!("l{i}@lead.example"), "L", 7))
            .await;
    }
    let got = peer.wait_for(1).await;
    assert_eq!(
        got[0].json()["one"],
        "l0@lead.example",
        "the first goes alone"
    );
    let got = peer.wait_for(2).await;
    assert_eq!(got[1].json()["count"], 3, "and counts in the digest");
    // Its template renders both: `check` probes it alone and as a digest.
    let (code, out) = check_file(&rules.replace("{{#if digest}}", "{{#if true}}"));
    assert_eq!(code, Some(1), "{out}");
}

#[tokio::test]
async fn a_digest_open_at_a_sigkill_is_sent_once_whole_after_a_restart() {
    // The schema is dropped with its guard: kept to the end.
    let postgres = fresh_store().await;
    let mut stores = vec![None];
    stores.extend(postgres.as_ref().map(|(url, _)| Some(url.clone())));
    for store in stores {
        let peer = HttpPeer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let rules = digest_rules(&peer, r#"{ key: "{{campaign.id}}", window: 2s }"#);
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let client = reqwest::Client::new();
        let store = store.as_deref();
        let router = Binary::start_on(dir.path(), store, &[], &[]).await;
        for i in 0..10 {
            let r = client
                .post(format!("{}/webhooks/smartlead", router.url))
                .body(open(&format!("l{i}@lead.example"), "L", 3).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        router.signal("-KILL");
        drop(router);
        // Down past the digest's window.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(peer.received().is_empty());
        let _router = Binary::start_on(dir.path(), store, &[], &[]).await;
        let got = peer.wait_for(1).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(peer.received().len(), 1, "{store:?}: {got:#?}");
        let d = got[0].json();
        assert_eq!(d["digest"]["count"], 10, "{store:?}");
        assert_eq!(d["leads"].as_array().unwrap().len(), 10, "{store:?}");
    }
}

#[tokio::test]
async fn a_slack_500_is_retried_with_the_same_items() {
    each_store(async |start: Start| {
        let slack = HttpPeer::start().await;
        slack.script(vec![(500, "internal_error", vec![])]);
        let rules = format!(
            r#"destinations:
  sales-slack:
    slack: {{ webhook_url: "{}" }}
rules:
  - name: engagement
    when: {{ event: EMAIL_OPENED }}
    digest: {{ key: "{{{{campaign.id}}}}", window: 1s, list: 3 }}
    actions:
      - slack: {{ destination: sales-slack, template: slack/engagement-digest.json.hbs }}
"#,
            slack.url("/hooks/x")
        );
        let template =
            std::fs::read_to_string(repo_path("templates/slack/engagement-digest.json.hbs"))
                .unwrap();
        let dir = config_dir(&rules, &[("slack/engagement-digest.json.hbs", &template)]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        for i in 0..4 {
            router
                .post(&open(
                    &format!("l{i}@lead.example"),
                    &format!("Lead {i}"),
                    9,
                ))
                .await;
        }
        let got = slack.wait_for(2).await;
        assert_eq!(
            got[0].body, got[1].body,
            "the retry carries the same digest"
        );
        let message = got[1].json();
        assert!(
            message["text"]
                .as_str()
                .unwrap()
                .contains("4 events by 4 leads"),
            "{message}"
        );
        let blocks = message["blocks"].as_array().unwrap();
        let listed: Vec<String> = blocks
            .iter()
            .filter(|b| b["type"] == "context")
            .map(|b| b["elements"][0]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            listed.len(),
            4,
            "three listed and the rest counted: {listed:?}"
        );
        assert!(listed[0].contains("Lead 0") && listed[2].contains("Lead 2"));
        assert!(listed[3].contains("1 more"), "{listed:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(slack.received().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn two_postgresql_instances_send_one_digest() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let peer = HttpPeer::start().await;
    let rules = digest_rules(&peer, r#"{ key: "{{campaign.id}}", window: 2s }"#);
    let ([a, b], _dirs) = two_instances(&url, &rules).await;
    let client = reqwest::Client::new();
    let posts = (0..20).map(|i| {
        let target = if i % 2 == 0 { &a.url } else { &b.url };
        client
            .post(format!("{target}/webhooks/smartlead"))
            .body(open(&format!("l{i}@lead.example"), "L", 4).to_string())
            .send()
    });
    for r in futures_util::future::join_all(posts).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let got = peer.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        peer.received().len(),
        1,
        "one digest between both: {got:#?}"
    );
    assert_eq!(got[0].json()["digest"]["count"], 20);
}

#[tokio::test]
async fn a_schedule_sends_the_digest_at_its_time_in_its_zone() {
    let peer = HttpPeer::start().await;
    // The schedule's time is 3 s from now, written as New York's wall clock.
    let zone: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let local = at.with_timezone(&zone);
    use chrono::Timelike;
    let cron = format!(
        "{} {} {} * * *",
        local.second(),
        local.minute(),
        local.hour()
    );
    let rules = digest_rules(
        &peer,
        &format!(
            r#"{{ key: "{{{{campaign.id}}}}", schedule: {{ cron: "{cron}", location: America/New_York }} }}"#
        ),
    );
    let router = Router::start(&rules, &[]).await;
    for i in 0..3 {
        router
            .post(&open(&format!("l{i}@lead.example"), "L", 5))
            .await;
    }
    assert!(peer.received().is_empty());
    let got = peer.wait_for(1).await;
    let arrived = chrono::Utc::now();
    assert!(
        arrived >= at.with_nanosecond(0).unwrap(),
        "sent at {arrived}, before its time {at}"
    );
    assert!(
        arrived < at + chrono::Duration::seconds(2),
        "late: {arrived}"
    );
    let d = got[0].json();
    assert_eq!(d["digest"]["reason"], "schedule");
    assert_eq!(d["digest"]["count"], 3);
}

#[tokio::test]
async fn a_throttle_sends_what_it_held_back_as_one_digest_when_its_window_reopens() {
    let peer = HttpPeer::start().await;
    let rules = format!(
        r#"rules:
  - name: capped
    when: {{ event: EMAIL_OPENED }}
    throttle: {{ key: "{{{{campaign.id}}}}", limit: 1, per: 2s, over_limit: digest }}
    actions:
      - http:
          url: "{}"
          body: '{{{{#if digest}}}}{{"held": {{{{digest.count}}}}, "reason": "{{{{digest.reason}}}}"}}{{{{else}}}}{{"one": "{{{{lead.email}}}}"}}{{{{/if}}}}'
"#,
        peer.url("/capped")
    );
    let router = Router::start(&rules, &[]).await;
    let begun = Instant::now();
    for i in 0..4 {
        router
            .post(&open(&format!("l{i}@lead.example"), "L", 5))
            .await;
    }
    let got = peer.wait_for(1).await;
    assert_eq!(got[0].json()["one"], "l0@lead.example");
    let got = peer.wait_for(2).await;
    assert!(begun.elapsed() >= Duration::from_secs(2));
    assert_eq!(got[1].json()["held"], 3);
    assert_eq!(got[1].json()["reason"], "hold_release");
}

#[tokio::test]
async fn a_removed_rules_open_digest_goes_out_at_once_and_a_kept_one_keeps_its_time() {
    let peer = HttpPeer::start().await;
    let kept = digest_rules(&peer, r#"{ key: "{{campaign.id}}", window: 1h }"#);
    let removed = kept.replace("name: engagement", "name: other");
    let both = format!(
        "{kept}{}",
        removed
            .strip_prefix("rules:\n")
            .unwrap()
            .replace("EMAIL_CLICKED]", "EMAIL_CLICKED, EMAIL_SENT]")
    );
    let router = Router::start(&both, &[]).await;
    router.post(&open("l0@lead.example", "L", 5)).await;
    router.post(&open("l1@lead.example", "L", 5)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(peer.received().is_empty());
    // `other` is removed; `engagement` stays.
    std::fs::write(router.rules_path(), &kept).unwrap();
    let (status, _) = router.post_raw("/-/reload", "").await;
    assert_eq!(status, 200);
    let got = peer.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(peer.received().len(), 1, "{got:#?}");
    let d = got[0].json();
    assert_eq!(d["digest"]["reason"], "rule_removed");
    assert_eq!(d["digest"]["rule"], "other");
    assert_eq!(d["digest"]["count"], 2);
}

#[tokio::test]
async fn a_500_event_digest_is_valid_slack_json_within_slacks_limits_and_a_tidy_email() {
    let slack = HttpPeer::start().await;
    let smtp = SmtpPeer::start();
    let dir = shipped();
    let rules = format!(
        r#"destinations:
  sales-slack:
    slack: {{ webhook_url: "{}" }}
  ops-email:
    email: {{ smtp_url: "{}", from: "Switchboard <alerts@example.com>", to: ops@example.com }}
rules:
  - name: engagement-digest
    when: {{ event: [EMAIL_OPENED, EMAIL_CLICKED] }}
    digest: {{ key: "{{{{campaign.id}}}}", window: 1h, max_events: 500, list: 20 }}
    actions:
      - slack: {{ destination: sales-slack, template: slack/engagement-digest.json.hbs }}
      - email:
          destination: ops-email
          subject: "{{{{campaign.name}}}}: {{{{digest.count}}}} events"
          template: email/engagement-digest.txt.hbs
          html_template: email/engagement-digest.html.hbs
"#,
        slack.url("/hooks/x"),
        smtp.url()
    );
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let router = Binary::start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let long = "x".repeat(3_000);
    for i in 0..500 {
        let mut e = open(
            &format!("lead{}@lead.example", i % 140),
            &format!("Lead {i} {long}"),
            6,
        );
        e["campaign_name"] = Value::String(format!("Q2 Outreach {long}"));
        let r = client
            .post(format!("{}/webhooks/smartlead", router.url))
            .body(e.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let got = slack.wait_for(1).await;
    let message: Value = serde_json::from_str(&got[0].body).expect("valid JSON");
    assert!(message["text"].as_str().unwrap().len() <= 40_000);
    let blocks = message["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50, "{} blocks", blocks.len());
    assert_eq!(blocks.len(), 3 + 20 + 1);
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    for b in blocks {
        if let Some(t) = b["text"]["text"].as_str() {
            assert!(t.chars().count() <= 3_000);
        }
        for e in b["elements"].as_array().into_iter().flatten() {
            assert!(e["text"].as_str().unwrap().chars().count() <= 3_000);
        }
    }
    assert!(
        blocks[1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("500 events by 140 leads")
    );
    assert!(
        blocks[23]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("480 more")
    );
    let mails = smtp.wait_for(1).await;
    let mail = &mails[0].data;
    assert!(mail.contains("500 events by 140 leads"), "{mail}");
    assert!(mail.contains("480 more not listed"));
    assert!(mail.contains("text/html"));
}

#[tokio::test]
async fn check_refuses_bad_digests_where_they_are_written() {
    let cases = [
        (
            r#"digest: { key: "{{campaign.id}}", schedule: { cron: "61 9 * * *" } }"#,
            "is not a cron pattern",
        ),
        (
            r#"digest: { key: "{{campaign.id}}", schedule: { cron: "0 9 * *" } }"#,
            "it has 4 fields",
        ),
        (
            r#"digest: { key: "{{campaign.id}}", schedule: { cron: "0 9 * * *", location: Mars/Base } }"#,
            "not an IANA time zone",
        ),
        (
            r#"digest: { key: "{{campaign.id}}" }"#,
            "`digest` needs `window`",
        ),
        (
            r#"digest: { key: "{{campaign.id}}", window: 1h, schedule: { cron: "0 9 * * *" } }"#,
            "not both",
        ),
        (
            r#"digest: { key: "{{campaign.id}}", window: 1h, first: later }"#,
            "`digest.first` is `wait`",
        ),
        (
            r#"digest: { key: "{{campaign.id}}", window: 1h, max_events: 0 }"#,
            "at least 1",
        ),
        (r#"digest: { key: "all", window: 1h }"#, "names no field"),
    ];
    for (digest, expected) in cases {
        let rules = format!(
            "rules:\n  - name: r\n    when: {{ event: EMAIL_OPENED }}\n    {digest}\n    actions:\n      - log: {{ message: \"{{{{digest.count}}}}\" }}\n"
        );
        let (code, out) = check_file(&rules);
        assert_eq!(code, Some(1), "{digest}: {out}");
        assert!(out.contains(expected), "{digest}: {out}");
        assert!(out.contains("rules.yaml:4:"), "{digest}: {out}");
    }
    // The shipped Slack template fits 46 listed events in 50 blocks, not 47.
    let slack = |list: u32| {
        format!(
            "destinations:\n  s:\n    slack: {{ webhook_url: \"https://hooks.slack.com/services/T/B/x\" }}\nrules:\n  - name: r\n    when: {{ event: EMAIL_OPENED }}\n    digest: {{ key: \"{{{{campaign.id}}}}\", window: 1h,\n              list: {list} }}\n    actions:\n      - slack: {{ destination: s, template: slack/engagement-digest.json.hbs }}\n"
        )
    };
    let (code, out) = check_shipped(&slack(46));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check_shipped(&slack(47));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rules.yaml:8:21"), "{out}");
    assert!(out.contains("51 Slack blocks"), "{out}");
}

#[tokio::test]
async fn events_whose_key_renders_empty_share_the_digest_of_no_key() {
    let peer = HttpPeer::start().await;
    let rules = digest_rules(&peer, r#"{ key: "{{campaign.id}}", window: 1s }"#);
    let router = Router::start(&rules, &[]).await;
    for i in 0..2 {
        let mut e = open(&format!("l{i}@lead.example"), "L", 1);
        e.as_object_mut().unwrap().remove("campaign_id");
        router.post(&e).await;
    }
    let got = peer.wait_for(1).await;
    let d = got[0].json();
    assert_eq!(d["digest"]["key"], "(none)");
    assert_eq!(d["digest"]["count"], 2);
    router
        .wait_metric(
            "switchboard_noise_key_missing_total",
            &[("rule", "engagement")],
            2.0,
        )
        .await;
}
