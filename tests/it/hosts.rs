//! DNS rebinding: a router on loopback without `SWITCHBOARD_ADMIN_TOKEN` serves its admin API
//! only to requests for a loopback name or a name the operator allowed. A web page its user
//! opens could otherwise rebind its own name to 127.0.0.1 and read deliveries (lead emails,
//! reply text), retry or discard dead letters, and reload.

use crate::util::{Binary, Router, Start, config_dir, fast_retries, fixture, unique};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RULES: &str = "rules:\n  - name: r\n    actions:\n      - log: { message: hi }\n";

/// One request over a plain connection, with the `Host` given (what a browser sends for a
/// page's own name): status and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

const ADMIN: [(&str, &str); 3] = [
    ("GET", "/api/status"),
    ("GET", "/api/dlq"),
    ("POST", "/-/reload"),
];

#[tokio::test]
async fn a_tokenless_router_refuses_a_foreign_host_and_serves_its_own_names() {
    let start = Start {
        allowed_hosts: vec!["switchboard.internal".into()],
        ..Start::default()
    };
    let router = Router::start_as(config_dir(RULES, &[]), fast_retries(), start).await;
    let port = router.addr.port();
    for (method, path) in ADMIN {
        for foreign in [
            "evil.example",
            &format!("evil.example:{port}"),
            "127.0.0.1.evil.example",
        ] {
            let (status, body) = request(router.addr, method, path, foreign, "").await;
            assert_eq!(status, 403, "{method} {path} for {foreign}: {body}");
            let error: Value = serde_json::from_str(&body).expect("a JSON error");
            let message = error["error"].as_str().unwrap();
            assert!(
                message.contains("DNS rebinding") || message.contains("rebinding"),
                "says why: {message}"
            );
            assert!(
                message.contains("--allowed-host") && message.contains("SWITCHBOARD_ALLOWED_HOSTS"),
                "says how to allow a name: {message}"
            );
        }
        for own in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            format!("switchboard.internal:{port}"),
            "SWITCHBOARD.INTERNAL".to_string(),
        ] {
            let (status, body) = request(router.addr, method, path, &own, "").await;
            assert_eq!(status, 200, "{method} {path} for {own}: {body}");
        }
    }
    // The rest is not the admin API: the webhook (SmartLead reaches it through a proxy, by
    // name) and the probes answer whatever the name.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = request(router.addr, "GET", path, "evil.example", "").await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let event = unique(fixture("real_13_email_reply")).to_string();
    let (status, body) = post_as(router.addr, "hooks.example.com", &event).await;
    assert_eq!(status, 200, "{body}");
}

/// A page of another site can also post to 127.0.0.1 directly (no rebinding: it cannot read
/// the answer, but the retry, the discard or the reload would be done).
#[tokio::test]
async fn a_request_from_another_site_is_refused_even_for_the_loopback_address() {
    let router = Router::start(RULES, &[]).await;
    let own = format!("127.0.0.1:{}", router.addr.port());
    for (method, path) in [
        ("POST", "/api/dlq/retry"),
        ("POST", "/-/reload"),
        ("GET", "/api/status"),
    ] {
        for headers in [
            "Origin: http://evil.example\r\n",
            "Origin: null\r\n",
            "Sec-Fetch-Site: cross-site\r\n",
        ] {
            let (status, body) = request(router.addr, method, path, &own, headers).await;
            assert_eq!(status, 403, "{method} {path} with {headers:?}: {body}");
            assert!(body.contains("another site"), "{body}");
        }
        // The router's own pages (and clients that send no Origin, like curl) are served.
        let same = format!("Origin: http://{own}\r\nSec-Fetch-Site: same-origin\r\n");
        let (status, body) = request(router.addr, method, path, &own, &same).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
}

/// Requests that name a host in their target, or no host at all, do not slip past the check.
#[tokio::test]
async fn an_absolute_target_or_a_missing_host_is_not_served() {
    let router = Router::start(RULES, &[]).await;
    let own = format!("127.0.0.1:{}", router.addr.port());
    let (status, body) = request(
        router.addr,
        "GET",
        "http://evil.example/api/status",
        &own,
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("host header"), "{body}");
    let mut conn = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    conn.write_all(b"GET /api/status HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    assert!(answer.contains("names no Host"), "{answer}");
}

#[tokio::test]
async fn with_a_token_the_token_decides_whatever_the_name() {
    let start = Start {
        admin_token: Some("adm1n".into()),
        ..Start::default()
    };
    let router = Router::start_as(config_dir(RULES, &[]), fast_retries(), start).await;
    let bearer = "Authorization: Bearer adm1n\r\n";
    let (status, _) = request(router.addr, "GET", "/api/status", "ops.example", bearer).await;
    assert_eq!(status, 200);
    let (status, _) = request(router.addr, "GET", "/api/status", "localhost", "").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn allowed_names_come_from_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    let env = [("SWITCHBOARD_ALLOWED_HOSTS", "a.example, b.example")];
    let router = Binary::start_with_env(dir.path(), &[], &env).await;
    let addr: SocketAddr = router.url.trim_start_matches("http://").parse().unwrap();
    for (host, expected) in [
        ("a.example", 200),
        ("b.example:80", 200),
        ("c.example", 403),
    ] {
        let (status, body) = request(addr, "GET", "/api/status", host, "").await;
        assert_eq!(status, expected, "{host}: {body}");
    }
    drop(router);
    let router = Binary::start(dir.path(), &["--allowed-host", "c.example"]).await;
    let addr: SocketAddr = router.url.trim_start_matches("http://").parse().unwrap();
    let (status, _) = request(addr, "GET", "/api/status", "c.example", "").await;
    assert_eq!(status, 200);
}

/// Posts a webhook with the `Host` a proxy in front of the router would send.
async fn post_as(addr: SocketAddr, host: &str, body: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/smartlead HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}
