//! What an operator sees: `/metrics` after success, retry and dead-letter paths, `/readyz`
//! going 503 past the configured backlog, and JSON logs that carry event id, rule and action.

use crate::util::{Binary, HttpPeer, Router, fixture, metric_sum, unique};
use std::time::Duration;

fn slack_rules(slack: &HttpPeer) -> String {
    format!(
        "rules:\n  - name: reply-to-sales\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - slack: {{ webhook_url: \"{}\", text: hi }}\n",
        slack.url("/services/T/B/X")
    )
}

#[tokio::test]
async fn metrics_count_success_retry_and_dead_letter_paths() {
    let slack = HttpPeer::start().await;
    slack.script(vec![(500, "internal_error", vec![])]);
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await; // 500, then ok
    router
        .wait_metric(
            "switchboard_deliveries_total",
            &[("outcome", "delivered")],
            1.0,
        )
        .await;
    slack.script(vec![(404, "no_service", vec![])]);
    router.post(&fixture("docs_04_email_replied")).await; // dead at once
    router
        .wait_metric("switchboard_deliveries_total", &[("outcome", "dead")], 1.0)
        .await;
    let (_, again) = router
        .post_raw(
            "/webhooks/smartlead",
            fixture("docs_04_email_replied").to_string(),
        )
        .await;
    assert_eq!(again["status"], "duplicate");
    let (status, _) = router.post_raw("/webhooks/smartlead", "[]").await;
    assert_eq!(status, 400);
    router.post(&unique(fixture("docs_02_email_opened"))).await; // matches no rule
    // The store's counts are reused for the probe interval: the dead letter shows within it.
    router
        .wait_metric("switchboard_dead_letters", &[], 1.0)
        .await;

    let (_, text) = router.get("/metrics").await;
    let m = text.as_str().unwrap();
    let v = |name: &str, labels: &[(&str, &str)]| metric_sum(m, name, labels);
    let slack_labels = |outcome, reason| {
        [
            ("action", "slack"),
            ("destination", "reply-to-sales#1"),
            ("outcome", outcome),
            ("reason", reason),
        ]
    };
    assert_eq!(
        v(
            "switchboard_deliveries_total",
            &slack_labels("retried", "http_5xx")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_deliveries_total",
            &slack_labels("delivered", "none")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_deliveries_total",
            &slack_labels("dead", "http_4xx")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_events_received_total",
            &[("event_type", "EMAIL_REPLIED"), ("outcome", "accepted")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_events_received_total",
            &[("event_type", "EMAIL_OPENED"), ("outcome", "accepted")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_events_received_total",
            &[("outcome", "duplicate")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_events_received_total",
            &[("outcome", "rejected"), ("reason", "bad_request")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_rule_matches_total",
            &[("rule", "reply-to-sales")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        v(
            "switchboard_delivery_latency_seconds_count",
            &[("action", "slack")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(v("switchboard_ack_latency_seconds_count", &[]), 3.0, "{m}");
    assert_eq!(v("switchboard_dead_letters", &[]), 1.0, "{m}");
    assert_eq!(v("switchboard_deliveries_pending", &[]), 0.0, "{m}");
    assert_eq!(
        v("switchboard_config_last_reload_successful", &[]),
        1.0,
        "{m}"
    );
    assert!(
        v(
            "switchboard_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 1.7e9,
        "{m}"
    );
    assert!(!m.contains("james.parker"), "no lead data in labels");
}

#[tokio::test]
async fn readyz_goes_503_past_the_configured_backlog() {
    let slack = HttpPeer::start().await;
    slack.set_delay(Duration::from_secs(3));
    let dir = crate::util::config_dir(&slack_rules(&slack), &[]);
    let mut settings = crate::util::fast_retries();
    settings.per_destination = 1;
    let router = Router::start_on(dir, settings, ("127.0.0.1:0".parse().unwrap(), None), 2).await;
    assert_eq!(router.get("/readyz").await.0, 200);
    for _ in 0..4 {
        router.post(&unique(fixture("real_13_email_reply"))).await;
    }
    // A worker's claim can hold one of them for a moment before it sees the destination is
    // at its limit and gives it back: the backlog shows within a short wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let (status, body) = loop {
        let (status, body) = router.get("/readyz").await;
        if status == 503 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("deliveries are pending"),
        "{body}"
    );
    assert!(
        router
            .metric("switchboard_oldest_pending_age_seconds", &[])
            .await
            >= 0.0
    );
}

#[tokio::test]
async fn json_logs_carry_event_id_rule_and_action() {
    let slack = HttpPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), slack_rules(&slack)).unwrap();
    let router = Binary::start_with_env(dir.path(), &["--log-format", "json"], &[]).await;
    let r = reqwest::Client::new()
        .post(format!("{}/webhooks/smartlead", router.url))
        .body(include_str!(
            "../fixtures/smartlead/real_13_email_reply.json"
        ))
        .send()
        .await
        .unwrap();
    let event_id = r.json::<serde_json::Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    slack.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    router.signal("-TERM");
    drop(router);
    let log = std::fs::read_to_string(dir.path().join("router.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["event_id"] == event_id.as_str())
        .collect();
    assert!(
        about
            .iter()
            .any(|l| l["fields"]["message"] == "Event received."),
        "{log}"
    );
    let delivered = about
        .iter()
        .find(|l| l["fields"]["message"] == "Delivered.")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(delivered["fields"]["rule"], "reply-to-sales");
    assert_eq!(delivered["fields"]["action"], 1);
    assert_eq!(delivered["level"], "INFO");
}

/// Every metric the shipped alerting rules and Grafana dashboard use is one the router exposes.
#[tokio::test]
async fn the_example_alerts_and_dashboard_use_real_metric_names() {
    let slack = HttpPeer::start().await;
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await; // so that every family has a series
    router
        .wait_metric(
            "switchboard_deliveries_total",
            &[("outcome", "delivered")],
            1.0,
        )
        .await;
    let (_, text) = router.get("/metrics").await;
    let exposed = text.as_str().unwrap().to_string();
    let re = regex::Regex::new(r"switchboard_[a-z_]+").unwrap();
    for file in [
        "examples/prometheus/alerts.yaml",
        "examples/grafana/switchboard.json",
    ] {
        let content = std::fs::read_to_string(crate::util::repo_path(file)).unwrap();
        let mut used: Vec<&str> = re.find_iter(&content).map(|m| m.as_str()).collect();
        used.sort();
        used.dedup();
        assert!(used.len() >= 5, "{file} uses the router's metrics");
        for name in used {
            let base = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                exposed.contains(&format!("# TYPE {base} ")),
                "{file} uses {name}, which /metrics does not expose"
            );
        }
    }
}
