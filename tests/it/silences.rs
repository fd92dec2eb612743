//! Silences: runtime state in the store that keeps the notifications of matching events from
//! going out (kept `suppressed`, reason `silenced`) until they end, added over the API or with
//! the CLI while the router runs, and applied again when a held delivery comes due.

use crate::memory::{all, each_store};
use crate::util::{Binary, HttpPeer, Router, Start, config_dir, fast_retries, fixture, unique};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};
use switchboard::store::{DeliveryStatus, DeliveryView};

fn rules(peer: &HttpPeer) -> String {
    format!(
        r#"rules:
  - name: reply
    when: {{ event: EMAIL_REPLIED }}
    actions:
      - http: {{ url: "{}", body: "{{{{lead.email}}}}" }}
"#,
        peer.url("/reply")
    )
}

fn reply(lead: &str) -> Value {
    let mut e = unique(fixture("real_13_email_reply"));
    e["leadCorrespondence"]["targetLeadEmail"] = json!(lead);
    e["sl_lead_email"] = json!(lead);
    e
}

fn leads(peer: &HttpPeer) -> Vec<String> {
    peer.received().iter().map(|r| r.body.clone()).collect()
}

/// Waits (at most 10 s) until `n` deliveries are recorded as silenced.
async fn silenced(router: &Router, n: usize) -> Vec<DeliveryView> {
    let begun = Instant::now();
    loop {
        let list: Vec<DeliveryView> = all(router)
            .await
            .into_iter()
            .filter(|d| d.reason.as_deref() == Some("silenced"))
            .collect();
        if list.len() >= n || begun.elapsed() > Duration::from_secs(10) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn api(
    router: &Router,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, router.url(path));
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_silence_stops_a_leads_alerts_until_it_ends() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let router = Router::start_as(config_dir(&rules(&peer), &[]), fast_retries(), start).await;
        let (status, added) = api(
            &router,
            reqwest::Method::POST,
            "/api/silences",
            Some(json!({"matchers": ["lead.email=*@acme.example"], "for": "2s", "comment": "on a call"})),
        )
        .await;
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["matchers"], json!(["lead.email=*@acme.example"]));
        assert_eq!(added["active"], true);
        router.post(&reply("Bob@ACME.example")).await;
        router.post(&reply("ana@other.example")).await;
        peer.wait_for(1).await;
        let list = silenced(&router, 1).await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, DeliveryStatus::Suppressed);
        assert_eq!(list[0].lead_email.as_deref(), Some("Bob@ACME.example"));
        assert_eq!(leads(&peer), ["ana@other.example"]);
        let (_, listed) = api(&router, reqwest::Method::GET, "/api/silences", None).await;
        assert_eq!(listed["silences"][0]["comment"], "on a call");
        // It ends by itself.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        router.post(&reply("bob@acme.example")).await;
        peer.wait_for(2).await;
        let (_, listed) = api(&router, reqwest::Method::GET, "/api/silences", None).await;
        assert_eq!(listed["silences"], json!([]));
        let (_, listed) = api(&router, reqwest::Method::GET, "/api/silences?all=true", None).await;
        assert_eq!(listed["silences"][0]["active"], false);
        router
            .wait_metric(
                "switchboard_deliveries_total",
                &[("outcome", "suppressed"), ("reason", "silenced")],
                1.0,
            )
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_silence_can_be_expired_early_and_is_refused_when_malformed() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&rules(&peer), &[]).await;
    let body = json!({"matchers": ["lead.email=bob@acme.example"], "rule": "reply", "for": "1h"});
    let (_, added) = api(&router, reqwest::Method::POST, "/api/silences", Some(body)).await;
    let id = added["id"].as_str().unwrap().to_string();
    router.post(&reply("bob@acme.example")).await;
    silenced(&router, 1).await;
    let path = format!("/api/silences/{id}");
    let (status, _) = api(&router, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200);
    let (status, body) = api(&router, reqwest::Method::DELETE, &path, None).await;
    assert_eq!((status, body["error"].as_str().is_some()), (404, true));
    router.post(&reply("bob@acme.example")).await;
    peer.wait_for(1).await;
    for (body, expected) in [
        (
            json!({"matchers": ["lead.email"], "for": "1h"}),
            "is not FIELD=VALUE",
        ),
        (json!({"matchers": [], "for": "1h"}), "at least one"),
        (
            json!({"matchers": ["lead.email=a"], "for": "soon"}),
            "not a duration",
        ),
        (
            json!({"matchers": ["lead.email=a"], "for": "1h", "rule": "nope"}),
            "no rule named \"nope\"",
        ),
        (
            json!({"match": ["lead.email=a"], "for": "1h"}),
            "is not a silence",
        ),
    ] {
        let (status, answer) = api(
            &router,
            reqwest::Method::POST,
            "/api/silences",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(expected), "{body}: {error}");
    }
}

#[tokio::test]
async fn a_silence_added_with_the_cli_applies_to_a_running_router() {
    let peer = HttpPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules(&peer)).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    let router = Binary::start(dir.path(), &[]).await;
    let store = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .args(["--store", &store])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let added = cli(&[
        "silence",
        "add",
        "--match",
        "lead.email=bob@acme.example",
        "--rule",
        "reply",
        "--for",
        "1h",
        "--comment",
        "on a call",
    ]);
    let id = added.split_whitespace().nth(1).unwrap().to_string();
    let listed = cli(&["silence", "list"]);
    assert!(
        listed.contains(&id)
            && listed.contains("on a call")
            && listed.contains("lead.email=bob@acme.example"),
        "{listed}"
    );
    // The router reads silences every second.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let client = reqwest::Client::new();
    let post = async |lead: &str| {
        let r = client
            .post(format!("{}/webhooks/smartlead", router.url))
            .body(reply(lead).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    post("bob@acme.example").await;
    post("ana@acme.example").await;
    peer.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leads(&peer), ["ana@acme.example"]);
    cli(&["silence", "expire", &id]);
    let listed = cli(&["silence", "list", "--all", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["silences"][0]["active"], false);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    post("bob@acme.example").await;
    peer.wait_for(2).await;
}
