//! Hostile lead-written text arrives escaped, as valid JSON, and within Slack's limits.

use crate::util::{HttpPeer, Router, fixture};
use serde_json::{Value, json};

const HOSTILE: &str = "<!channel> hey <@U024BE7LH> see <https://evil.example|your invoice> & \"quotes\" 'single'\r\nline two\ttab ünïcødé 🚀 \\ backslash";

const RULES: &str = r#"
rules:
  - name: slack-text
    when: { event: EMAIL_REPLIED }
    actions:
      - slack:
          webhook_url: PEER/slack-text
          text: "Reply from {{lead.name}}: {{reply.text}}"
      - slack:
          webhook_url: PEER/slack-blocks
          template: slack/reply.json.hbs
      - slack:
          webhook_url: PEER/slack-section
          blocks: '[{"type": "section", "text": {"type": "mrkdwn", "text": "{{reply.text}}"}}]'
      - http:
          url: PEER/crm
          body: '{"name": "{{lead.name}}", "text": "{{reply.text}}", "raw": {{json reply}}}'
"#;

async fn setup() -> (HttpPeer, Router) {
    let peer = HttpPeer::start().await;
    let template =
        std::fs::read_to_string(crate::util::repo_path("templates/slack/reply.json.hbs")).unwrap();
    let router = Router::start(
        &RULES.replace("PEER", &peer.url("")),
        &[("slack/reply.json.hbs", &template)],
    )
    .await;
    (peer, router)
}

fn hostile_reply(text: &str) -> Value {
    let mut e = fixture("real_13_email_reply");
    e["reply_message"]["text"] = json!(text);
    e["to_name"] = json!(HOSTILE);
    e
}

fn all_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(a) => a.iter().for_each(|x| all_text(x, out)),
        Value::Object(m) => m.values().for_each(|x| all_text(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn hostile_text_is_escaped_for_slack_and_json() {
    let (peer, router) = setup().await;
    router.post(&hostile_reply(HOSTILE)).await;
    let got = peer.wait_for(4).await;
    let text = got.iter().find(|r| r.path == "/slack-text").unwrap().json();
    let t = text["text"].as_str().unwrap();
    assert!(t.contains("&lt;!channel&gt;"), "{t}");
    assert!(t.contains("&lt;@U024BE7LH&gt;"), "{t}");
    assert!(
        t.contains("&lt;https://evil.example|your invoice&gt; &amp; \"quotes\""),
        "{t}"
    );
    assert!(t.contains("ünïcødé 🚀"), "{t}");
    assert!(!t.contains('<') && !t.contains('>'), "{t}");

    let blocks = got
        .iter()
        .find(|r| r.path == "/slack-blocks")
        .unwrap()
        .json();
    let mut every = String::new();
    all_text(&blocks, &mut every);
    assert!(every.contains("&lt;!channel&gt;"), "{every}");
    let leaked = every.replace(
        "https://app.smartlead.ai/app/master-inbox?leadMap=1438627",
        "",
    );
    assert!(!leaked.contains('<') && !leaked.contains('>'), "{every}");

    let crm = got.iter().find(|r| r.path == "/crm").unwrap().json();
    assert_eq!(crm["text"], HOSTILE, "JSON bodies carry the text exactly");
    assert_eq!(crm["name"], HOSTILE);
    assert_eq!(crm["raw"]["text"], HOSTILE);
    assert_eq!(
        got.iter()
            .find(|r| r.path == "/crm")
            .unwrap()
            .header("content-type"),
        Some("application/json")
    );
}

#[tokio::test]
async fn very_long_replies_are_truncated_to_slack_limits() {
    let (peer, router) = setup().await;
    let long = "x".repeat(60_000) + "&<>";
    router.post(&hostile_reply(&long)).await;
    let got = peer.wait_for(4).await;
    let text = got.iter().find(|r| r.path == "/slack-text").unwrap().json();
    let t = text["text"].as_str().unwrap();
    assert!(t.chars().count() <= 40_000, "{}", t.len());
    assert!(t.ends_with('…'));
    let blocks = got
        .iter()
        .find(|r| r.path == "/slack-blocks")
        .unwrap()
        .json();
    for block in blocks["blocks"].as_array().unwrap() {
        if let Some(t) = block.pointer("/text/text").and_then(Value::as_str) {
            assert!(
                t.chars().count() <= 3_000,
                "section text of {} characters",
                t.chars().count()
            );
        }
    }
    let section = got
        .iter()
        .find(|r| r.path == "/slack-section")
        .unwrap()
        .json();
    let text = section["blocks"][0]["text"]["text"].as_str().unwrap();
    assert_eq!(
        text.chars().count(),
        3_000,
        "a section block is cut to Slack's 3,000 characters"
    );
    assert!(text.ends_with('…'));
    let crm = got.iter().find(|r| r.path == "/crm").unwrap().json();
    assert_eq!(crm["text"].as_str().unwrap().len(), long.len());
}
