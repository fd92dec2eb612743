//! Rule matching through the running router: campaign and field conditions, negation, regex,
//! numeric comparison, `stop` and `enabled`.

use crate::util::{HttpPeer, Router, fixture};
use serde_json::json;
use std::time::Duration;

const RULES: &str = r#"
destinations:
  sink:
    http:
      url: PEER
      method: POST
rules:
  - name: disabled
    enabled: false
    actions:
      - http: { destination: sink, url: "PEER/disabled", body: '{}' }
  - name: q2-campaign
    when:
      campaign: { name: "Q2*" }
    actions:
      - http: { destination: sink, url: "PEER/q2", body: '{"lead": "{{lead.email}}"}' }
  - name: not-competitor-interested
    when:
      event: EMAIL_REPLIED
      fields:
        lead.email: { not: { ends_with: "@competitor.example" } }
        reply.text: { matches: "(?i)interested|pricing|demo" }
    actions:
      - http: { destination: sink, url: "PEER/interested", body: '{"lead": "{{lead.email}}"}' }
  - name: many-opens
    when:
      event: EMAIL_OPENED
      fields:
        open.count: { gte: 3 }
    actions:
      - http: { destination: sink, url: "PEER/hot", body: '{"count": {{json open.count}}}' }
  - name: campaign-42-stops
    stop: true
    when:
      campaign: { id: [42, "43"] }
    actions:
      - http: { destination: sink, url: "PEER/c42", body: '{}' }
  - name: after-stop
    when:
      campaign: { id: 42 }
    actions:
      - http: { destination: sink, url: "PEER/after-stop", body: '{}' }
  - name: nested
    when:
      any:
        - all:
            - event: EMAIL_BOUNCED
            - not: { fields: { bounce.type: soft } }
        - fields: { raw.custom_flag: { exists: true } }
    actions:
      - http: { destination: sink, url: "PEER/nested", body: '{"lead": "{{lead.email}}"}' }
"#;

async fn setup() -> (HttpPeer, Router) {
    let peer = HttpPeer::start().await;
    let rules = RULES.replace("PEER", &peer.url(""));
    let router = Router::start(&rules, &[]).await;
    (peer, router)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn paths(peer: &HttpPeer) -> Vec<String> {
    let mut p: Vec<String> = peer.received().into_iter().map(|r| r.path).collect();
    p.sort();
    p
}

#[tokio::test]
async fn campaign_glob_and_regex_with_negation() {
    let (peer, router) = setup().await;
    let mut reply = fixture("docs_04_email_replied");
    reply["campaign_name"] = json!("Q2 Enterprise");
    reply["reply"]["body"] = json!("We are interested, send pricing");
    router.post(&crate::util::unique(reply.clone())).await;
    let mut competitor = reply.clone();
    competitor["lead"]["email"] = json!("spy@competitor.example");
    router.post(&crate::util::unique(competitor.clone())).await;
    let mut other_campaign = reply.clone();
    other_campaign["campaign_name"] = json!("Q1 Outreach");
    other_campaign["reply"]["body"] = json!("No thanks");
    router
        .post(&crate::util::unique(other_campaign.clone()))
        .await;
    peer.wait_for(3).await;
    settle().await;
    // reply: q2 + interested; competitor: q2 only; other campaign: nothing.
    assert_eq!(paths(&peer), ["/interested", "/q2", "/q2"]);
    let interested: Vec<_> = peer
        .received()
        .into_iter()
        .filter(|r| r.path == "/interested")
        .collect();
    assert_eq!(interested[0].json()["lead"], "jane.doe@example.com");
}

#[tokio::test]
async fn numeric_comparison_accepts_numbers_and_numeric_strings() {
    let (peer, router) = setup().await;
    let mut open = fixture("docs_02_email_opened");
    open["campaign_name"] = json!("Other");
    router.post(&crate::util::unique(open.clone())).await; // opened_count 3
    open["opened_count"] = json!("2");
    router.post(&crate::util::unique(open.clone())).await;
    open["opened_count"] = json!("7");
    router.post(&crate::util::unique(open.clone())).await;
    peer.wait_for(2).await;
    settle().await;
    let counts: Vec<_> = peer
        .received()
        .into_iter()
        .map(|r| r.json()["count"].clone())
        .collect();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(
        counts.contains(&json!(3)) && counts.contains(&json!(7)),
        "{counts:?}"
    );
}

#[tokio::test]
async fn stop_ends_evaluation_and_disabled_rules_never_fire() {
    let (peer, router) = setup().await;
    router
        .post(&json!({"event": "EMAIL_SENT", "campaign_id": 42, "campaign_name": "X"}))
        .await;
    router
        .post(&json!({"event": "EMAIL_SENT", "campaign_id": "43", "campaign_name": "X"}))
        .await;
    peer.wait_for(2).await;
    settle().await;
    assert_eq!(paths(&peer), ["/c42", "/c42"]);
}

#[tokio::test]
async fn any_all_not_nest() {
    let (peer, router) = setup().await;
    router
        .post(&crate::util::unique(fixture("real_15_email_bounce")))
        .await; // hard, read from the text
    let mut soft = fixture("docs_05_email_bounced_hard");
    soft["bounce_type"] = json!("soft");
    soft["campaign_name"] = json!("X");
    router.post(&crate::util::unique(soft.clone())).await;
    router
        .post(&crate::util::unique(
            json!({"event": "EMAIL_SENT", "custom_flag": 1, "lead": {"email": "flag@example.com"}}),
        ))
        .await;
    peer.wait_for(3).await;
    settle().await;
    let mut nested: Vec<String> = peer
        .received()
        .into_iter()
        .filter(|r| r.path == "/nested")
        .map(|r| r.json()["lead"].as_str().unwrap().to_string())
        .collect();
    nested.sort();
    assert_eq!(nested, ["flag@example.com", "nobody@invalid.example"]);
}
