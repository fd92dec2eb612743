//! Actions against real peers: HTTP method, templated URL, headers and timeout; Slack Block Kit;
//! Slack's error answers counted as failed deliveries.

use crate::util::{HttpPeer, Router, fixture};

#[tokio::test]
async fn http_action_uses_method_templated_url_and_headers() {
    let peer = HttpPeer::start().await;
    let rules = r#"
destinations:
  crm:
    http:
      url: "PEER/leads/{{lead.email}}/bounce?campaign={{campaign.name}}"
      method: PUT
      headers:
        X-Source: switchboard
        X-Lead: "{{lead.email}}"
      timeout: 5s
      allow_private: true      # the test peer is on 127.0.0.1
rules:
  - name: bounce
    when: { event: EMAIL_BOUNCED }
    actions:
      - http:
          destination: crm
          body: '{"reason": "{{bounce.reason}}", "type": "{{bounce.type}}"}'
"#
    .replace("PEER", &peer.url(""));
    let router = Router::start(&rules, &[]).await;
    router.post(&fixture("real_15_email_bounce")).await;
    let got = peer.wait_for(1).await;
    let r = &got[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path, "/leads/nobody%40invalid.example/bounce");
    assert_eq!(r.header("x-source"), Some("switchboard"));
    assert_eq!(r.header("x-lead"), Some("nobody@invalid.example"));
    assert_eq!(r.json()["type"], "hard");
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("550 5.1.1 User unknown")
    );
}

#[tokio::test]
async fn inline_block_kit_reaches_slack_as_blocks() {
    let slack = HttpPeer::start().await;
    let rules = r#"
rules:
  - name: reply
    when: { event: EMAIL_REPLIED }
    actions:
      - slack:
          webhook_url: PEER/services/T/B/X
          text: "Reply from {{lead.email}}"
          blocks: '[{"type": "section", "text": {"type": "mrkdwn", "text": "*{{lead.name}}* replied: {{reply.text}}"}}]'
"#
    .replace("PEER", &slack.url(""));
    let router = Router::start(&rules, &[]).await;
    router.post(&fixture("docs_04_email_replied")).await;
    let got = slack.wait_for(1).await;
    let payload = got[0].json();
    assert_eq!(payload["text"], "Reply from jane.doe@example.com");
    assert_eq!(
        payload["blocks"][0]["text"]["text"],
        "*Jane Doe* replied: Thanks for reaching out. Can we talk Thursday at 3pm?"
    );
    assert_eq!(got[0].path, "/services/T/B/X");
}

#[tokio::test]
async fn slack_errors_are_failed_deliveries_and_other_actions_still_run() {
    let slack = HttpPeer::start().await;
    let sink = HttpPeer::start().await;
    slack.script(vec![(404, "no_service", vec![])]);
    let rules = format!(
        "rules:\n  - name: reply\n    actions:\n      - slack: {{ webhook_url: \"{}\", text: hi }}\n      - http: {{ url: \"{}\", body: '{{}}' }}\n",
        slack.url("/services/gone"),
        sink.url("/crm")
    );
    let router = Router::start(&rules, &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    slack.wait_for(1).await;
    sink.wait_for(1).await;
    router
        .wait_metric("switchboard_deliveries_total", &[("outcome", "dead")], 1.0)
        .await;
    let dead = [
        ("action", "slack"),
        ("outcome", "dead"),
        ("reason", "http_4xx"),
    ];
    assert_eq!(
        router.metric("switchboard_deliveries_total", &dead).await,
        1.0
    );
    let delivered = [
        ("action", "http"),
        ("outcome", "delivered"),
        ("destination", "reply#2"),
    ];
    assert_eq!(
        router
            .metric("switchboard_deliveries_total", &delivered)
            .await,
        1.0
    );
}
