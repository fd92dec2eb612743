//! A second webhook source is one type implementing `Source` (below, a minimal one for a
//! made-up tool) and one registration line: it is mounted at `/webhooks/{name}`, its events go
//! through the same rules, templates and store, its settings under `sources:` are known, and
//! every template is probed against its sample event at load.

use crate::util::{HttpPeer, Router, Start, config_dir, fast_retries};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use switchboard::event::{Campaign, Event, Lead, Reply, Source, Sources};

/// A tool that posts `{"kind": "reply", "from": "...", "text": "...", "campaign": "..."}`.
struct Tally {
    /// How many times the router asked for this source's sample event (the template probe).
    samples: Arc<AtomicUsize>,
}

impl Source for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["EMAIL_REPLIED"]
    }

    fn normalise(&self, payload: Map<String, Value>) -> Event {
        let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_string);
        let kind = match text("kind").as_deref() {
            Some("reply") => "EMAIL_REPLIED",
            _ => "UNKNOWN",
        };
        Event {
            event: kind.into(),
            source: self.name().into(),
            source_event: text("kind").unwrap_or_else(|| "UNKNOWN".into()),
            timestamp: "2026-12-01T09:00:00Z".into(),
            campaign: Campaign {
                id: None,
                name: text("campaign"),
            },
            lead: Lead {
                email: text("from"),
                ..Lead::default()
            },
            reply: Reply {
                text: text("text"),
                ..Reply::default()
            },
            raw: Value::Object(payload),
            ..Event::default()
        }
    }

    fn sample(&self) -> Event {
        self.samples.fetch_add(1, Ordering::SeqCst);
        let mut event = self.normalise(Map::new());
        event.event_id = "probe".into();
        event
    }
}

fn rules(peer: &HttpPeer, template: &str) -> String {
    format!(
        r#"
sources:
  tally: {{ token: t4lly }}
  smartlead: {{ token: sm4rt }}
rules:
  - name: replies
    when: {{ event: EMAIL_REPLIED }}
    actions:
      - http: {{ url: "{}", body: '{template}' }}
"#,
        peer.url("/replies")
    )
}

fn with_tally(samples: &Arc<AtomicUsize>) -> Start {
    let tally = Tally {
        samples: samples.clone(),
    };
    Start {
        // The registration line.
        sources: Sources::default().with(Arc::new(tally)),
        ..Start::default()
    }
}

#[tokio::test]
async fn a_second_source_is_mounted_routed_and_probed() {
    let peer = HttpPeer::start().await;
    let samples = Arc::new(AtomicUsize::new(0));
    let body = r#"{"from": "{{lead.email}}", "said": {{json reply.text}}, "via": "{{source}}"}"#;
    let dir = config_dir(&rules(&peer, body), &[]);
    let router = Router::start_as(dir, fast_retries(), with_tally(&samples)).await;
    assert!(
        samples.load(Ordering::SeqCst) > 0,
        "the template was probed against the new source's sample"
    );

    let reply = json!({"kind": "reply", "from": "ana@lead.example", "text": "Send the deck", "campaign": "Q4"});
    let (status, answer) = router
        .post_raw("/webhooks/tally/t4lly", reply.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "received");
    let got = peer.wait_for(1).await;
    assert_eq!(
        got[0].json(),
        json!({"from": "ana@lead.example", "said": "Send the deck", "via": "tally"})
    );
    // Its own credentials apply to it: the other source's token does not open it.
    let (status, _) = router
        .post_raw("/webhooks/tally/sm4rt", reply.to_string())
        .await;
    assert_eq!(status, 401);
    // Counted under its own name and event type.
    router
        .wait_metric(
            "switchboard_events_received_total",
            &[
                ("source", "tally"),
                ("event_type", "EMAIL_REPLIED"),
                ("outcome", "accepted"),
            ],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn a_template_naming_a_field_that_does_not_exist_is_refused_with_a_second_source() {
    let peer = HttpPeer::start().await;
    let samples = Arc::new(AtomicUsize::new(0));
    let dir = config_dir(&rules(&peer, r#"{"who": "{{lead.frist_name}}"}"#), &[]);
    let options = Router::options(dir.path(), fast_retries(), &with_tally(&samples));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = switchboard::run(options, listener, async {})
        .await
        .expect_err("the configuration is refused");
    let text = refused.to_string();
    assert!(
        text.contains("rules.yaml:9:")
            && text.contains("\"replies\"")
            && text.contains("lead.frist_name"),
        "{text}"
    );
}

#[tokio::test]
async fn settings_for_a_source_that_is_not_mounted_name_the_ones_that_are() {
    let peer = HttpPeer::start().await;
    let dir = config_dir(&rules(&peer, "{}"), &[]);
    // Without the registration line, `tally:` is no source of this router.
    let options = Router::options(dir.path(), fast_retries(), &Start::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = switchboard::run(options, listener, async {})
        .await
        .expect_err("the configuration is refused");
    let text = refused.to_string();
    assert!(
        text.contains("rules.yaml:3:")
            && text.contains("unknown source \"tally\"; known: smartlead"),
        "{text}"
    );
}
