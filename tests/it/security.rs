//! Only SmartLead gets in, and no input can hurt the router or the people it notifies: each
//! authentication mode, abuse, per-client limiting, outbound safety, admin access, secrets.

use crate::util::{Binary, HttpPeer, Router, fixture, unique, wait_until};
use serde_json::{Value, json};
use std::time::Duration;
use switchboard::credentials::sign;

/// Rules delivering every event to the peer, with `sources` as given.
fn rules(peer: &HttpPeer, sources: &str) -> String {
    format!(
        "sources:\n  smartlead:\n{sources}\nrules:\n  - name: all\n    actions:\n      - http: {{ url: \"{}\", body: '{{\"lead\": \"{{{{lead.email}}}}\"}}' }}\n",
        peer.url("/in")
    )
}

async fn post(router: &Router, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(router.url(path))
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn secret_key_mode() {
    let peer = HttpPeer::start().await;
    let router = Router::start(
        &rules(
            &peer,
            "    secret_key: 00000000-test-4000-8000-fakesecret01",
        ),
        &[],
    )
    .await;
    let good = unique(fixture("real_13_email_reply"));
    assert_eq!(
        post(&router, "/webhooks/smartlead", &good.to_string(), &[])
            .await
            .0,
        200
    );
    let mut wrong = unique(fixture("real_13_email_reply"));
    wrong["secret_key"] = json!("00000000-test-4000-8000-fakesecret02");
    let (status, body) = post(&router, "/webhooks/smartlead", &wrong.to_string(), &[]).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("secret_key"),
        "{body}"
    );
    let missing = unique(fixture("docs_04_email_replied"));
    assert_eq!(
        post(&router, "/webhooks/smartlead", &missing.to_string(), &[])
            .await
            .0,
        401
    );
    peer.wait_for(1).await;
    settle().await;
    assert_eq!(
        peer.received().len(),
        1,
        "only the authentic event notifies"
    );
}

#[tokio::test]
async fn token_mode_in_the_path_or_the_query() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&rules(&peer, "    token: t0ken-abc"), &[]).await;
    let body = || unique(fixture("real_13_email_reply")).to_string();
    assert_eq!(
        post(&router, "/webhooks/smartlead/t0ken-abc", &body(), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        post(&router, "/webhooks/smartlead?token=t0ken-abc", &body(), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        post(&router, "/webhooks/smartlead/t0ken-abd", &body(), &[])
            .await
            .0,
        401
    );
    assert_eq!(
        post(&router, "/webhooks/smartlead?token=", &body(), &[])
            .await
            .0,
        401
    );
    let (status, answer) = post(&router, "/webhooks/smartlead", &body(), &[]).await;
    assert_eq!(status, 401);
    assert!(
        answer["error"].as_str().unwrap().contains("token"),
        "{answer}"
    );
    peer.wait_for(2).await;
    settle().await;
    assert_eq!(peer.received().len(), 2);
}

#[tokio::test]
async fn hmac_signature_mode() {
    let peer = HttpPeer::start().await;
    let router = Router::start(
        &rules(
            &peer,
            "    hmac_secret: sh4red\n    signature_header: X-Signature",
        ),
        &[],
    )
    .await;
    let body = unique(fixture("real_13_email_reply")).to_string();
    let sig = sign("sh4red", body.as_bytes());
    assert_eq!(
        post(
            &router,
            "/webhooks/smartlead",
            &body,
            &[("X-Signature", &sig)]
        )
        .await
        .0,
        200
    );
    let other = unique(fixture("real_13_email_reply")).to_string();
    assert_eq!(
        post(
            &router,
            "/webhooks/smartlead",
            &other,
            &[("X-Signature", &sig)]
        )
        .await
        .0,
        401,
        "a signature of another body"
    );
    assert_eq!(
        post(
            &router,
            "/webhooks/smartlead",
            &other,
            &[("X-Signature", "sha256=00")]
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(&router, "/webhooks/smartlead", &other, &[]).await.0,
        401
    );
    let bare_hex = sign("sh4red", other.as_bytes())
        .trim_start_matches("sha256=")
        .to_string();
    assert_eq!(
        post(
            &router,
            "/webhooks/smartlead",
            &other,
            &[("X-Signature", &bare_hex)]
        )
        .await
        .0,
        200
    );
    peer.wait_for(2).await;
    settle().await;
    assert_eq!(peer.received().len(), 2);
}

#[tokio::test]
async fn ip_allowlist_believes_forwarded_for_only_from_trusted_proxies() {
    let peer = HttpPeer::start().await;
    let router = Router::start(
        &rules(
            &peer,
            "    allow_ips: [203.0.113.0/24]\n    trusted_proxies: [127.0.0.1]",
        ),
        &[],
    )
    .await;
    let body = || unique(fixture("real_13_email_reply")).to_string();
    assert_eq!(
        post(
            &router,
            "/webhooks/smartlead",
            &body(),
            &[("X-Forwarded-For", "203.0.113.7")]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            &router,
            "/webhooks/smartlead",
            &body(),
            &[("X-Forwarded-For", "198.51.100.7")]
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(&router, "/webhooks/smartlead", &body(), &[]).await.0,
        401,
        "the proxy itself is not allowed"
    );

    let strict_peer = HttpPeer::start().await;
    let strict = Router::start(
        &rules(
            &strict_peer,
            "    allow_ips: [203.0.113.0/24]\n    trusted_proxies: [10.0.0.1]",
        ),
        &[],
    )
    .await;
    let (status, _) = post(
        &strict,
        "/webhooks/smartlead",
        &body(),
        &[("X-Forwarded-For", "203.0.113.7")],
    )
    .await;
    assert_eq!(
        status, 401,
        "X-Forwarded-For from an untrusted peer is ignored"
    );
    peer.wait_for(1).await;
    settle().await;
    assert_eq!(peer.received().len(), 1);
    assert!(strict_peer.received().is_empty());
}

#[tokio::test]
async fn replay_window_refuses_old_events() {
    let peer = HttpPeer::start().await;
    let router = Router::start(
        &rules(
            &peer,
            "    secret_key: 00000000-test-4000-8000-fakesecret01\n    replay_window: 10m",
        ),
        &[],
    )
    .await;
    let mut fresh = unique(fixture("real_13_email_reply"));
    fresh["event_timestamp"] = json!(chrono::Utc::now().to_rfc3339());
    assert_eq!(
        post(&router, "/webhooks/smartlead", &fresh.to_string(), &[])
            .await
            .0,
        200
    );
    let old = unique(fixture("real_13_email_reply")); // 2025-03-28
    let (status, body) = post(&router, "/webhooks/smartlead", &old.to_string(), &[]).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("replay window"),
        "{body}"
    );
    peer.wait_for(1).await;
    settle().await;
    assert_eq!(peer.received().len(), 1);
}

#[tokio::test]
async fn abuse_gets_clear_answers_and_authentic_events_keep_flowing() {
    let peer = HttpPeer::start().await;
    let router = std::sync::Arc::new(
        Router::start(
            &rules(&peer, "    token: t0k\n    trusted_proxies: [127.0.0.1]"),
            &[],
        )
        .await,
    );
    let abuser = [("X-Forwarded-For", "198.51.100.66")];
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let (status, body) = post(&router, "/webhooks/smartlead/t0k", &deep, &abuser).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(
        &router,
        "/webhooks/smartlead/t0k",
        &"x".repeat(2 * 1024 * 1024),
        &abuser,
    )
    .await;
    assert_eq!(status, 413);
    let (status, body) = post(&router, "/webhooks/smartlead/t0k", "{\"event\": ", &abuser).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let (status, body) = post(&router, "/webhooks/smartlead/t0k", "\"a string\"", &abuser).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("JSON object"),
        "{body}"
    );

    let flood = {
        let router = router.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..300 {
                let body = if i % 2 == 0 {
                    "[".repeat(5000)
                } else {
                    "{}".into()
                };
                let path = if i % 2 == 0 {
                    "/webhooks/smartlead/t0k"
                } else {
                    "/webhooks/smartlead/wrong"
                };
                answers.push(post(&router, path, &body, &abuser).await.0);
            }
            answers
        })
    };
    let smartlead = [("X-Forwarded-For", "203.0.113.9")];
    for _ in 0..20 {
        let body = unique(fixture("real_13_email_reply")).to_string();
        let (status, answer) = post(&router, "/webhooks/smartlead/t0k", &body, &smartlead).await;
        assert_eq!(status, 200, "an authentic event during the abuse: {answer}");
    }
    let answers = flood.await.unwrap();
    assert!(
        answers.iter().all(|s| [400, 401, 429].contains(s)),
        "{answers:?}"
    );
    assert!(answers.contains(&429), "the abuser was limited");
    peer.wait_for(20).await;
    settle().await;
    assert_eq!(
        peer.received().len(),
        20,
        "every authentic event, and nothing else, was delivered"
    );
}

#[tokio::test]
async fn a_flood_from_one_client_is_limited_while_another_clients_events_are_accepted() {
    let peer = HttpPeer::start().await;
    let router = Router::start(
        &rules(&peer, "    token: t0k\n    trusted_proxies: [127.0.0.1]"),
        &[],
    )
    .await;
    let flood = [("X-Forwarded-For", "198.51.100.66")];
    let mut limited = None;
    for i in 0..200 {
        let r = reqwest::Client::new()
            .post(router.url("/webhooks/smartlead/wrong"))
            .header(flood[0].0, flood[0].1)
            .body("{}")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait), "Retry-After: {wait}");
            limited = Some(i);
            break;
        }
        assert_eq!(r.status(), 401);
    }
    let after = limited.expect("the flood is answered 429");
    assert!(
        after >= 20,
        "the burst (20 in tests) is allowed first, then 429 after {after}"
    );
    let good = unique(fixture("real_13_email_reply")).to_string();
    let (status, _) = post(
        &router,
        "/webhooks/smartlead/t0k",
        &good,
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await;
    assert_eq!(status, 200, "another client is not limited");
    peer.wait_for(1).await;
}

#[tokio::test]
async fn templated_urls_cannot_reach_internal_addresses() {
    let inside = HttpPeer::start().await;
    let rules = r#"
rules:
  - name: steer
    actions:
      # Triple braces insert the value raw: the event chooses the host.
      - http: { url: "http://{{{raw.target}}}/hook", body: '{}' }
"#;
    let router = Router::start(rules, &[]).await;
    // Addresses as written, and a name that resolves to loopback: the client's resolver
    // refuses it on the addresses it would connect to.
    let targets = [
        inside.addr.to_string(),
        "169.254.169.254".to_string(),
        "[::1]:1".to_string(),
        format!("localhost:{}", inside.addr.port()),
    ];
    for target in &targets {
        let mut e = unique(fixture("real_13_email_reply"));
        e["target"] = json!(target);
        router.post(&e).await;
    }
    let start = std::time::Instant::now();
    loop {
        let dead = router
            .store
            .list(&switchboard::store::Filter {
                status: Some(switchboard::store::DeliveryStatus::Dead),
                ..Default::default()
            })
            .await
            .unwrap();
        if dead.len() == targets.len() {
            assert!(
                dead.iter().all(|d| d
                    .last_error
                    .as_deref()
                    .unwrap()
                    .contains("internal address")),
                "{dead:?}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        inside.received().is_empty(),
        "nothing reached the internal peer"
    );
}

#[tokio::test]
async fn admin_endpoints_need_the_token_beyond_loopback() {
    let peer = HttpPeer::start().await;
    let dir = crate::util::config_dir(&rules(&peer, "    token: t0k"), &[]);
    let public = ("0.0.0.0:0".parse().unwrap(), Some("adm1n".to_string()));
    let router = Router::start_on(dir, crate::util::fast_retries(), public, 1_000).await;
    let client = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/api/status"),
        ("GET", "/api/dlq"),
        ("GET", "/api/deliveries"),
        ("POST", "/-/reload"),
        ("POST", "/api/dlq/retry"),
    ] {
        let req = |token: Option<&str>| {
            let mut r = client.request(method.parse().unwrap(), router.url(path));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r
        };
        assert_eq!(
            req(None).send().await.unwrap().status(),
            401,
            "{path} without a token"
        );
        assert_eq!(
            req(Some("wrong")).send().await.unwrap().status(),
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            req(Some("adm1n")).send().await.unwrap().status(),
            200,
            "{path} with the token"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            client.get(router.url(path)).send().await.unwrap().status(),
            200,
            "{path} stays open"
        );
    }

    let dir = crate::util::config_dir(&rules(&peer, "    token: t0k"), &[]);
    let no_token = Router::start_on(
        dir,
        crate::util::fast_retries(),
        ("0.0.0.0:0".parse().unwrap(), None),
        1_000,
    )
    .await;
    let r = client
        .get(no_token.url("/api/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("SWITCHBOARD_ADMIN_TOKEN"));
}

#[tokio::test]
async fn serve_refuses_a_public_address_without_authentication_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "rules:\n  - name: r\n    actions:\n      - log: { message: hi }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--rules",
            "rules.yaml",
            "--store",
            "sqlite::memory:",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // It names the address it was given, with the port it had bound.
    let port = err
        .split("refusing to listen on 0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|p| p.parse::<u16>().ok());
    assert!(
        port.is_some_and(|p| p > 0)
            && err.contains("/webhooks/smartlead")
            && err.contains("--insecure")
            && err.contains("secret_key"),
        "{err}"
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--rules",
            "rules.yaml",
            "--store",
            "sqlite::memory:",
            "--insecure",
        ])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "with --insecure it serves"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn secrets_never_reach_logs_status_check_test_output_or_the_store() {
    let slack = HttpPeer::start().await;
    slack.script(vec![(404, "no_service", vec![])]);
    let crm = HttpPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
sources:
  smartlead:
    secret_key: ${SL_SECRET}
destinations:
  sales:
    slack:
      webhook_url: ${SLACK_URL}
  crm:
    http:
      url: ${CRM_URL}
      headers:
        Authorization: Bearer ${CRM_TOKEN}
  mail:
    email:
      smtp_url: ${SMTP_URL}
      from: a@example.com
      to: b@example.com
rules:
  - name: all
    actions:
      - slack: { destination: sales, text: "Reply from {{lead.email}}" }
      - http: { destination: crm, body: '{"raw": {{json raw}}}' }
      - email: { destination: mail, subject: hi, text: "{{reply.text}}" }
"#;
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let slack_url = slack.url("/services/T0/B0/SLACKSECRETPATH");
    let crm_url = crm.url("/hooks/CRMPATHSECRET");
    let env = [
        ("SL_SECRET", "00000000-test-4000-8000-fakesecret01"),
        ("SLACK_URL", slack_url.as_str()),
        ("CRM_URL", crm_url.as_str()),
        ("CRM_TOKEN", "crmtokensecret"),
        (
            "SMTP_URL",
            "smtp://user:smtppasswordsecret@127.0.0.1:9?tls=none",
        ),
    ];
    let secrets = [
        "fakesecret01",
        "SLACKSECRETPATH",
        "CRMPATHSECRET",
        "crmtokensecret",
        "smtppasswordsecret",
    ];
    let router = Binary::start_with_env(
        dir.path(),
        &["--retry-schedule", "50ms", "--max-attempts", "2"],
        &env,
    )
    .await;
    let client = reqwest::Client::new();
    let body = include_str!("../fixtures/smartlead/real_13_email_reply.json");
    let r = client
        .post(format!("{}/webhooks/smartlead", router.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{}/webhooks/smartlead", router.url))
        .body("{\"secret_key\": \"guessedfakesecret01\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    slack.wait_for(1).await;
    let got = crm.wait_for(1).await;
    assert!(
        got[0].header("authorization") == Some("Bearer crmtokensecret"),
        "the secret is used, just never shown"
    );
    assert!(
        !got[0].body.contains("fakesecret01"),
        "the stored and forwarded event has no secret_key"
    );
    tokio::time::sleep(Duration::from_millis(800)).await; // SMTP fails twice, Slack dead-letters
    let get = |path: &'static str| {
        let request = client.get(format!("{}{path}", router.url));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let (status, deliveries, dlq) = (
        get("/api/status").await,
        get("/api/deliveries").await,
        get("/api/dlq").await,
    );
    assert!(dlq.contains("no_service"), "{dlq}");
    router.signal("-TERM");
    drop(router);
    let log = std::fs::read_to_string(dir.path().join("router.log")).unwrap();
    assert!(log.contains("Delivery failed"), "{log}");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let check = run(&["check", "--rules", "rules.yaml", "--templates", "t"]);
    std::fs::write(dir.path().join("e.json"), body).unwrap();
    let test = run(&[
        "test",
        "--event",
        "e.json",
        "--rules",
        "rules.yaml",
        "--templates",
        "t",
    ]);
    assert!(
        test.contains("Reply from james.parker@prospect.example"),
        "{test}"
    );
    let store = String::from_utf8_lossy(&std::fs::read(dir.path().join("switchboard.db")).unwrap())
        .to_string()
        + &String::from_utf8_lossy(
            &std::fs::read(dir.path().join("switchboard.db-wal")).unwrap_or_default(),
        );
    for (what, text) in [
        ("log", &log),
        ("status", &status),
        ("deliveries", &deliveries),
        ("dlq", &dlq),
        ("check", &check),
        ("test", &test),
        ("store", &store),
    ] {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {what}:\n{text}"
            );
        }
    }
}

#[test]
fn an_alias_bomb_in_the_rules_file_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    bomb.push_str("rules: *a11\n");
    std::fs::write(dir.path().join("bomb.yaml"), bomb).unwrap();
    let start = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--rules", "bomb.yaml", "--templates", "t"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bomb.yaml"),
        "{out:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[path = "../../benches/support/rulegen.rs"]
#[allow(dead_code)]
mod rulegen;

#[test]
fn a_large_honest_rules_file_passes_and_an_alias_bomb_is_told_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // 10,000 rules of the benchmark suite's mix in one file (about 3 MB, 250,000 values).
    let big = rulegen::rules_yaml(10_000, "http://127.0.0.1:9");
    assert!(big.len() > 2_500_000, "{}", big.len());
    std::fs::write(dir.path().join("big.yaml"), &big).unwrap();
    let templates = crate::util::repo_path("templates");
    let check = |file: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["check", "--rules", file, "--templates"])
            .arg(&templates)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = check("big.yaml");
    assert!(!out.contains("limit"), "{out}");
    assert!(out.contains("10000 rule(s)"), "{code:?}: {out}");
    // Aliases that multiply what is written (here one value repeated 150 times) are refused,
    // saying which limit, its value, and what to do.
    let repeats = vec!["{ log: { message: *m } }"; 150].join(", ");
    let bomb =
        format!("rules:\n  - name: r\n    description: &m \"hello\"\n    actions: [{repeats}]\n");
    std::fs::write(dir.path().join("bomb.yaml"), bomb).unwrap();
    let (code, out) = check("bomb.yaml");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("the YAML goes past the parser's limit of"),
        "{out}"
    );
    assert!(out.contains("rules directory"), "{out}");
}

#[test]
fn source_settings_take_variables_and_an_empty_one_switches_its_check_off() {
    let dir = tempfile::tempdir().unwrap();
    let rules = "sources:\n  smartlead:\n    secret_key: ${SB_TEST_UNSET_KEY:-}\n    replay_window: ${SB_TEST_UNSET_WINDOW:-}\n    hmac_secret: ${SB_TEST_UNSET_HMAC:-k}\n    signature_header: ${SB_TEST_UNSET_HEADER:-X-Sig}\nrules:\n  - name: r\n    actions:\n      - log: { message: hi }\n";
    let check = |rules: &str| {
        std::fs::write(dir.path().join("r.yaml"), rules).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["check", "--rules", "r.yaml", "--templates", "t"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, text) = check(rules);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        !text.contains("asks for no credential"),
        "the HMAC mode is on: {text}"
    );
    let (code, text) =
        check(&rules.replace("${SB_TEST_UNSET_WINDOW:-}", "${SB_TEST_UNSET_WINDOW:-soon}"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("r.yaml:4:") && text.contains("replay_window \"soon\""),
        "{text}"
    );
}

/// `POST /-/reload` with the admin token the routers beyond loopback here are started with.
async fn reload(router: &Router) -> reqwest::Response {
    reqwest::Client::new()
        .post(router.url("/-/reload"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reload_cannot_drop_authentication_on_a_public_listener() {
    let peer = HttpPeer::start().await;
    let dir = crate::util::config_dir(&rules(&peer, "    token: t0k"), &[]);
    let public = ("0.0.0.0:0".parse().unwrap(), Some("adm1n".to_string()));
    // Beyond loopback (0.0.0.0) and without --insecure.
    let router = Router::start_on(dir, crate::util::fast_retries(), public, 1_000).await;
    let event = unique(fixture("docs_04_email_replied")).to_string();

    // The source loses its token in an edit: the reload is refused and names the way out.
    let open = "sources: {}\nrules:\n  - name: all\n    actions:\n      - log: { message: hi }\n";
    std::fs::write(router.rules_path(), open).unwrap();
    let r = reload(&router).await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("/webhooks/smartlead")
            && errors.contains(&router.listen.to_string())
            && errors.contains("sources.smartlead.secret_key")
            && errors.contains("--insecure"),
        "{body}"
    );
    // The previous rules keep serving: still no event without the token.
    let (status, _) = post(&router, "/webhooks/smartlead", &event, &[]).await;
    assert_eq!(status, 401);
    let (status, _) = post(&router, "/webhooks/smartlead/t0k", &event, &[]).await;
    assert_eq!(status, 200);

    // With a credential the edit goes through.
    std::fs::write(router.rules_path(), rules(&peer, "    token: n3w")).unwrap();
    let r = reload(&router).await;
    assert_eq!(r.status(), 200);
}

/// Behind a proxy (`HTTP_PROXY`) the proxy resolves the names, not the router, so the request-forgery check
/// looks a templated URL's host up before sending: a name for a loopback address is refused and
/// nothing about it reaches the proxy, while a URL written in the rules still goes through it.
/// The router runs as its own process: proxy variables are process-wide.
#[tokio::test]
async fn behind_a_proxy_templated_urls_are_looked_up_before_sending() {
    let proxy = HttpPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        r#"
rules:
  - name: steer
    actions:
      - http: { url: "http://{{{raw.target}}}/steered", body: '{}' }
  - name: fixed
    actions:
      - http: { url: "http://hooks.example.invalid/fixed", body: '{}' }
"#,
    )
    .unwrap();
    let proxy_url = format!("http://{}", proxy.addr);
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
    ];
    let router = Binary::start_with_env(dir.path(), &[], &env).await;
    let mut e = unique(fixture("real_13_email_reply"));
    e["target"] = json!("localhost:9");
    let r = reqwest::Client::new()
        .post(format!("{}/webhooks/smartlead", router.url))
        .json(&e)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The fixed URL's name does not resolve here: only a proxy can have taken it.
    wait_until(
        || proxy.received().iter().any(|r| r.path.ends_with("/fixed")),
        "the fixed URL's request at the proxy",
    )
    .await;
    let nothing_steered = || {
        let paths: Vec<String> = proxy.received().into_iter().map(|r| r.path).collect();
        assert!(
            paths.iter().all(|p| !p.contains("steered")),
            "the steered request reached the proxy: {paths:?}"
        );
    };
    let start = std::time::Instant::now();
    let dead = loop {
        let dead: Value = reqwest::get(format!("{}/api/deliveries?status=dead", router.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !dead["deliveries"].as_array().unwrap().is_empty() {
            break dead["deliveries"].clone();
        }
        nothing_steered();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no dead delivery; log: {}",
            std::fs::read_to_string(dir.path().join("router.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead[0]["rule"], "steer", "{dead}");
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{dead}"
    );
    nothing_steered();
}
