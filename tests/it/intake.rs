//! Intake: both payload shapes reach the right rules; bad bodies get clear answers.

use crate::util::{HttpPeer, Router, fixture};
use serde_json::json;

/// One rule per canonical event type, each posting to its own path on the peer.
fn per_type_rules(peer: &HttpPeer) -> String {
    let mut rules = String::from("rules:\n");
    for (name, event) in [
        ("sent", "EMAIL_SENT"),
        ("opened", "EMAIL_OPENED"),
        ("clicked", "EMAIL_CLICKED"),
        ("replied", "EMAIL_REPLIED"),
        ("bounced", "EMAIL_BOUNCED"),
        ("unsubscribed", "EMAIL_UNSUBSCRIBED"),
        ("category", "LEAD_CATEGORY_UPDATED"),
    ] {
        rules.push_str(&format!(
            "  - name: {name}\n    when: {{ event: {event} }}\n    actions:\n      - http:\n          url: {url}\n          body: '{{\"type\": \"{{{{event}}}}\", \"sent_as\": \"{{{{source_event}}}}\", \"lead\": \"{{{{lead.email}}}}\"}}'\n",
            url = peer.url(&format!("/{name}"))
        ));
    }
    rules
}

#[tokio::test]
async fn every_event_type_of_both_shapes_reaches_its_rule() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&per_type_rules(&peer), &[]).await;
    let cases = [
        ("docs_01_email_sent", "/sent", "john.doe@example.com"),
        ("docs_02_email_opened", "/opened", "john.doe@example.com"),
        ("docs_03_email_clicked", "/clicked", "john.doe@example.com"),
        ("docs_04_email_replied", "/replied", "jane.doe@example.com"),
        (
            "docs_05_email_bounced_hard",
            "/bounced",
            "nobody@invalid.example",
        ),
        (
            "docs_06_email_unsubscribed",
            "/unsubscribed",
            "optout@example.org",
        ),
        (
            "real_10_email_sent",
            "/sent",
            "james.parker@prospect.example",
        ),
        (
            "real_11_email_open",
            "/opened",
            "james.parker@prospect.example",
        ),
        (
            "real_12_email_link_click",
            "/clicked",
            "james.parker@prospect.example",
        ),
        (
            "real_13_email_reply",
            "/replied",
            "james.parker@prospect.example",
        ),
        ("real_15_email_bounce", "/bounced", "nobody@invalid.example"),
        (
            "real_16_lead_unsubscribed",
            "/unsubscribed",
            "optout@example.org",
        ),
        (
            "real_17_lead_category_updated",
            "/category",
            "james.parker@prospect.example",
        ),
    ];
    for (name, _, _) in &cases {
        router.post(&fixture(name)).await;
    }
    let got = peer.wait_for(cases.len()).await;
    for (name, path, lead) in &cases {
        let hits: Vec<_> = got
            .iter()
            .filter(|r| r.path == *path && r.json()["lead"] == *lead)
            .collect();
        assert!(
            !hits.is_empty(),
            "{name}: nothing at {path} for {lead}; got {got:?}"
        );
    }
    let replies: Vec<_> = got
        .iter()
        .filter(|r| r.path == "/replied")
        .map(|r| r.json())
        .collect();
    assert!(replies.iter().any(|r| r["sent_as"] == "EMAIL_REPLY"));
    assert!(replies.iter().any(|r| r["sent_as"] == "EMAIL_REPLIED"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        peer.received().len(),
        cases.len(),
        "one delivery per event, no more"
    );
}

#[tokio::test]
async fn unknown_types_and_leadless_events_are_accepted_and_match_fewer_rules() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&per_type_rules(&peer), &[]).await;
    router
        .post(&json!({"event_type": "SOMETHING_NEW", "campaign_id": "7"}))
        .await;
    router
        .post(&json!({"event": "EMAIL_REPLIED", "reply": {"body": "hi"}}))
        .await;
    let got = peer.wait_for(1).await;
    assert_eq!(got[0].path, "/replied");
    assert_eq!(got[0].json()["lead"], "");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(peer.received().len(), 1);
}

#[tokio::test]
async fn bad_bodies_get_clear_errors() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&per_type_rules(&peer), &[]).await;
    let (status, body) = router.post_raw("/webhooks/smartlead", "{not json").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let (status, body) = router.post_raw("/webhooks/smartlead", "[1, 2]").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("JSON object, not an array"),
        "{body}"
    );
    let (status, body) = router.post_raw("/webhooks/smartlead", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = router
        .post_raw("/webhooks/smartlead", vec![b' '; 2 * 1024 * 1024])
        .await;
    assert_eq!(status, 413);
    let (status, body) = router.post_raw("/webhooks/nosuchtool", "{}").await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("smartlead"),
        "{body}"
    );
    assert!(peer.received().is_empty());
}

#[tokio::test]
async fn health_status_and_metrics_answer() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&per_type_rules(&peer), &[]).await;
    assert_eq!(router.get("/healthz").await.0, 200);
    let (status, ready) = router.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["rules"], 7);
    let (status, s) = router.get("/api/status").await;
    assert_eq!(status, 200);
    assert_eq!(s["rules_loaded"], 7);
    assert_eq!(s["last_reload"]["ok"], true);
    assert_eq!(s["config_hash"].as_str().unwrap().len(), 64);
    router.post(&fixture("real_13_email_reply")).await;
    peer.wait_for(1).await;
    let (_, m) = router.get("/metrics").await;
    let m = m.as_str().unwrap().to_string();
    let accepted = [
        ("source", "smartlead"),
        ("event_type", "EMAIL_REPLIED"),
        ("outcome", "accepted"),
    ];
    assert_eq!(
        crate::util::metric_sum(&m, "switchboard_events_received_total", &accepted),
        1.0,
        "{m}"
    );
    assert_eq!(
        crate::util::metric_sum(&m, "switchboard_rule_matches_total", &[("rule", "replied")]),
        1.0,
        "{m}"
    );
    assert!(m.contains("switchboard_build_info{version="), "{m}");
    assert!(
        m.contains("switchboard_config_last_reload_successful 1"),
        "{m}"
    );
}

#[tokio::test]
async fn secret_key_never_reaches_a_destination() {
    let peer = HttpPeer::start().await;
    let rules = format!(
        "rules:\n  - name: all\n    actions:\n      - http:\n          url: {}\n          body: '{{{{json raw}}}}'\n",
        peer.url("/all")
    );
    let router = Router::start(&rules, &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let got = peer.wait_for(1).await;
    assert_eq!(got[0].json()["event_type"], "EMAIL_REPLY");
    assert!(!got[0].body.contains("fakesecret"), "{}", got[0].body);
}

#[tokio::test]
async fn a_chunked_body_past_the_limit_is_refused_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let peer = HttpPeer::start().await;
    let router = Router::start(&per_type_rules(&peer), &[]).await;
    let mut socket = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let head = "POST /webhooks/smartlead HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        let sent = async {
            socket
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            socket.write_all(&chunk).await?;
            socket.write_all(b"\r\n").await
        };
        if sent.await.is_err() {
            break; // the router answered and closed early
        }
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_string(&mut answer),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // The router still serves authentic events.
    router.post(&fixture("real_13_email_reply")).await;
    peer.wait_for(1).await;
}
