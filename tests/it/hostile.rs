//! Bad input and bad days that must not lose an event or wedge the router: a lone surrogate
//! in a payload, an empty admin token, a rules path that is a pipe or a device.

use crate::util::{HttpPeer, Router, Start, config_dir, fast_retries, fixture, unique};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_lone_surrogate_is_received_and_delivered_as_a_replacement_character() {
    let peer = HttpPeer::start().await;
    let rules = format!(
        "rules:\n  - name: reply\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - http: {{ url: \"{}\", body: '{{\"text\": {{{{json reply.text}}}}}}' }}\n",
        peer.url("/reply")
    );
    let router = Router::start(&rules, &[]).await;
    let mut e = unique(fixture("real_13_email_reply"));
    e["reply_message"]["text"] = json!("PLACEHOLDER");
    // What JavaScript sends for a string cut in the middle of an emoji.
    let body = e.to_string().replace("PLACEHOLDER", "great \\ud83d");
    let (status, answer) = router.post_raw("/webhooks/smartlead", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let got = peer.wait_for(1).await;
    let text = got[0].json()["text"].as_str().unwrap().to_string();
    assert_eq!(text, "great \u{fffd}");
    // SmartLead's retry of the same body is a duplicate, not a second event.
    let (status, again) = router.post_raw("/webhooks/smartlead", body).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "duplicate", "{again}");
}

#[tokio::test]
async fn an_empty_admin_token_is_refused_at_start() {
    let dir = config_dir(
        "rules:\n  - name: r\n    actions:\n      - log: { message: hi }\n",
        &[],
    );
    let start = Start {
        admin_token: Some(String::new()),
        ..Start::default()
    };
    let options = Router::options(dir.path(), fast_retries(), &start);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = switchboard::run(options, listener, async {})
        .await
        .expect_err("an empty token is refused");
    assert!(
        e.to_string()
            .contains("SWITCHBOARD_ADMIN_TOKEN is set but empty"),
        "{e}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "sqlite::memory:",
        ])
        .arg("--rules")
        .arg(dir.path().join("rules/rules.yaml"))
        .env("SWITCHBOARD_ADMIN_TOKEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set but empty"), "{stderr}");
}

fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_rules_path_that_is_a_pipe_or_a_device_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rules.yaml");
    mkfifo(&fifo);
    for rules in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
        let begun = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("check")
            .arg("--rules")
            .arg(rules)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("not a regular file"), "{stdout}");
        assert!(begun.elapsed() < Duration::from_secs(5));
    }

    // A running router whose rules file becomes a pipe: the reload is refused at once, the
    // old rules keep serving, and shutdown is not held up.
    let peer = HttpPeer::start().await;
    let rules = format!(
        "rules:\n  - name: reply\n    actions:\n      - http: {{ url: \"{}\", body: '{{}}' }}\n",
        peer.url("/reply")
    );
    let mut router = Router::start(&rules, &[]).await;
    std::fs::remove_file(router.rules_path()).unwrap();
    mkfifo(&router.rules_path());
    let r = reqwest::Client::new()
        .post(router.url("/-/reload"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{body}"
    );
    let status = router.status().await;
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    router.post(&unique(fixture("real_13_email_reply"))).await;
    peer.wait_for(1).await;
    let begun = Instant::now();
    router.stop().await;
    assert!(begun.elapsed() < Duration::from_secs(5));
}
