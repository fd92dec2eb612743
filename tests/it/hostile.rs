//! Bad input and bad days that must not lose an event or wedge the router: a lone surrogate
//! in a payload, an empty admin token, a rules path that is a pipe or a device.

use crate::util::{HttpPeer, Router, Start, config_dir, fast_retries, fixture, unique};
use serde_json::{Value, json};
use std::net::SocketAddr;
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

/// A TCP server that accepts every connection and never says a word (an SMTP server that
/// never greets, an HTTP server that never answers); it holds the connections open.
async fn silent_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

#[tokio::test]
async fn smtp_servers_that_never_greet_free_their_slots_and_slack_keeps_delivering() {
    let slack = HttpPeer::start().await;
    let mut rules =
        String::from("rules:\n  - name: reply\n    when: { event: EMAIL_REPLIED }\n    actions:\n");
    for _ in 0..8 {
        let port = silent_server().await;
        rules.push_str(&format!(
            "      - email: {{ smtp_url: \"smtp://127.0.0.1:{port}?tls=none\", from: a@example.com, to: b@example.com, subject: hi, text: hi }}\n"
        ));
    }
    rules.push_str(&format!(
        "      - slack: {{ webhook_url: \"{}\", text: \"{{{{lead.email}}}}\" }}\n",
        slack.url("/services/T/B/X")
    ));
    let settings = switchboard::delivery::Settings {
        // Fewer workers than stuck destinations: without a deadline they would all hang.
        concurrency: 4,
        send_deadline: Duration::from_millis(500),
        ..fast_retries()
    };
    let router = Router::start_with(config_dir(&rules, &[]), settings).await;
    for n in 0..2 {
        let mut e = unique(fixture("real_13_email_reply"));
        e["sl_lead_email"] = json!(format!("l{n}@lead.example"));
        router.post(&e).await;
    }
    let got = slack.wait_for(2).await;
    assert_eq!(got.len(), 2);
    let list = crate::memory::all(&router).await;
    let timed_out = list
        .iter()
        .filter(|d| d.action == "email")
        .filter(|d| {
            d.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no answer within 0.5 s"))
        })
        .count();
    assert!(timed_out > 0, "{list:?}");
}

/// An HTTP server answering every request with `status` and a body of `megabytes` MiB, sent
/// in chunks as fast as the client reads them; `sent` counts the bytes the client took.
async fn flooding_server(
    status: u16,
    megabytes: usize,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 65536];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    megabytes * 1024 * 1024
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..megabytes * 16 {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    port
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn huge_answers_are_not_read_into_memory() {
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slack = flooding_server(200, 512, taken.clone()).await;
    let http = flooding_server(500, 512, taken.clone()).await;
    let rules = format!(
        "rules:\n  - name: reply\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - slack: {{ webhook_url: \"http://127.0.0.1:{slack}/services/T/B/X\", text: hi }}\n      - http: {{ url: \"http://127.0.0.1:{http}/hook\", body: hi }}\n"
    );
    let router = Router::start(&rules, &[]).await;
    let before = resident_kib();
    router.post(&unique(fixture("real_13_email_reply"))).await;
    let begun = Instant::now();
    loop {
        let list = crate::memory::all(&router).await;
        let slack_done = list.iter().any(|d| {
            d.action == "slack" && d.status == switchboard::store::DeliveryStatus::Delivered
        });
        let http_failed = list
            .iter()
            .any(|d| d.action == "http" && d.attempts >= 1 && d.last_error.is_some());
        if slack_done && http_failed {
            let error = list
                .iter()
                .find(|d| d.action == "http")
                .and_then(|d| d.last_error.clone())
                .unwrap();
            assert!(error.contains("answered 500"), "{error}");
            assert!(error.len() < 1000, "{error}");
            break;
        }
        assert!(begun.elapsed() < Duration::from_secs(10), "{list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The router stopped reading long before the end: of the 1 GiB offered, it took what the
    // sockets' buffers hold beyond the 4 KiB it reads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = taken.load(std::sync::atomic::Ordering::Relaxed);
    assert!(taken < 64 * 1024 * 1024, "the peers got {taken} bytes off");
    // The test process holds the router: its resident set grew by far less than the 1 GiB
    // the two peers offered.
    let grown = resident_kib().saturating_sub(before);
    assert!(grown < 128 * 1024, "grew by {grown} KiB");
}

fn named_rule(name: &str, peer: &HttpPeer) -> String {
    format!(
        "rules:\n  - name: {name}\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - http: {{ url: \"{}\", body: '{{\"lead\": \"{{{{lead.email}}}}\"}}' }}\n",
        peer.url("/hook")
    )
}

/// Renames the rule twice (two reloads), so that the configuration that matched is neither
/// serving nor the one before.
async fn rename_twice(router: &Router, peer: &HttpPeer) {
    for name in ["beta", "gamma"] {
        std::fs::write(router.rules_path(), named_rule(name, peer)).unwrap();
        let r = reqwest::Client::new()
            .post(router.url("/-/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn a_renamed_rule_keeps_its_waiting_retries_and_its_dead_letters_can_be_retried() {
    let peer = HttpPeer::start().await;
    let settings = || switchboard::delivery::Settings {
        retry: switchboard::delivery::RetryPolicy {
            schedule: vec![Duration::from_secs(2)],
            max_attempts: 2,
            jitter: 0.0,
            ..Default::default()
        },
        ..fast_retries()
    };
    // One event waits for its retry; another is already dead.
    peer.script(vec![(500, "down", vec![]); 3]);
    let mut router =
        Router::start_with(config_dir(&named_rule("alpha", &peer), &[]), settings()).await;
    let mut dead = unique(fixture("real_13_email_reply"));
    dead["sl_lead_email"] = json!("dead@lead.example");
    dead["leadCorrespondence"]["targetLeadEmail"] = json!("dead@lead.example");
    router.post(&dead).await;
    peer.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    peer.wait_for(2).await;
    let mut waiting = unique(fixture("real_13_email_reply"));
    waiting["sl_lead_email"] = json!("waiting@lead.example");
    waiting["leadCorrespondence"]["targetLeadEmail"] = json!("waiting@lead.example");
    router.post(&waiting).await;
    peer.wait_for(3).await;
    rename_twice(&router, &peer).await;
    // A restart forgets every configuration held in memory.
    router.stop().await;
    let dir = std::mem::replace(&mut router.dir, tempfile::tempdir().unwrap());
    let router = Router::start_with(dir, settings()).await;
    let got = peer.wait_for(4).await;
    assert_eq!(got[3].json()["lead"], "waiting@lead.example");
    let r = reqwest::Client::new()
        .post(router.url("/api/dlq/retry"))
        .send()
        .await
        .unwrap();
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["requeued"], 1, "{done}");
    let got = peer.wait_for(5).await;
    assert_eq!(got[4].json()["lead"], "dead@lead.example");
    let list = crate::memory::all(&router).await;
    assert!(
        list.iter().all(
            |d| d.status == switchboard::store::DeliveryStatus::Delivered && d.rule == "alpha"
        ),
        "{list:?}"
    );
}

#[tokio::test]
async fn a_deleted_database_file_stops_acknowledgements_loudly() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&named_rule("alpha", &peer), &[]).await;
    router.post(&unique(fixture("real_13_email_reply"))).await;
    std::fs::remove_file(router.dir.path().join("switchboard.db")).unwrap();
    // The file's identity is checked at most every 200 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, answer) = router
        .post_raw(
            "/webhooks/smartlead",
            unique(fixture("real_13_email_reply")).to_string(),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        answer["error"],
        "the event could not be stored; retry later"
    );
    let begun = Instant::now();
    loop {
        let (status, ready) = router.get("/readyz").await;
        if status == 503 {
            assert!(
                ready["reason"]
                    .as_str()
                    .unwrap()
                    .contains("deleted or replaced"),
                "{ready}"
            );
            break;
        }
        assert!(begun.elapsed() < Duration::from_secs(3), "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_locked_store_gets_a_503_in_time_and_readiness_says_why() {
    let Some((url, _schema)) = crate::postgres::fresh_store().await else {
        return;
    };
    let peer = HttpPeer::start().await;
    let dir = config_dir(&named_rule("alpha", &peer), &[]);
    let start = Start {
        store: Some(url.clone()),
        ..Start::default()
    };
    let mut options = Router::options(dir.path(), fast_retries(), &start);
    options.answer_deadline = Duration::from_millis(800);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(switchboard::run(options, listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(format!("http://{addr}/webhooks/smartlead"))
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
    };
    let begun = Instant::now();
    while post(unique(fixture("real_13_email_reply")).to_string())
        .await
        .is_err()
    {
        assert!(begun.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another client holds the events table locked, as a migration or a vacuum full would.
    let mut lock = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let begun = Instant::now();
    let r = post(unique(fixture("real_13_email_reply")).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        begun.elapsed() < Duration::from_secs(3),
        "{:?}",
        begun.elapsed()
    );
    let begun = Instant::now();
    loop {
        let r = client
            .get(format!("http://{addr}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        if status == 503 {
            assert!(
                body["reason"].as_str().unwrap().contains("under way"),
                "{body}"
            );
            break;
        }
        assert!(begun.elapsed() < Duration::from_secs(5), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the lock goes, the write finishes and readiness comes back.
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let begun = Instant::now();
    loop {
        let r = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(begun.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// A router with small connection limits, started as `serve` would start it.
async fn limited_router(
    peer: &HttpPeer,
    header_deadline: Duration,
) -> (
    SocketAddr,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), switchboard::StartError>>,
) {
    let dir = config_dir(&named_rule("alpha", peer), &[]);
    let mut options = Router::options(dir.path(), fast_retries(), &Start::default());
    options.answer_deadline = Duration::from_millis(300);
    options.limits = switchboard::server::connections::Limits {
        max_connections: 50,
        max_per_client: 5,
        header_deadline,
        request_deadline: Duration::from_millis(1000),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(switchboard::run(options, listener, async {
        let _ = stopped.await;
    }));
    let begun = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(begun.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, dir, stop, running)
}

/// Connects from a given loopback address (a client of its own).
async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the router closes the connection within `within` (reading until it does).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn idle_and_dripping_connections_are_closed_and_capped_per_client() {
    use tokio::io::AsyncWriteExt;
    let peer = HttpPeer::start().await;
    let (addr, _dir, stop, running) = limited_router(&peer, Duration::from_millis(500)).await;

    // Idle: closed once the header deadline passes.
    let mut idle = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "an idle connection is closed"
    );

    // Headers dripped a byte at a time: closed at the header deadline, however long it drips.
    let mut drip = connect_from("127.0.0.1", addr).await;
    drip.write_all(b"POST /webhooks/smartlead HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dripping = tokio::spawn(async move {
        for _ in 0..40 {
            if drip.write_all(b"X").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_within(&mut drip, Duration::from_millis(10)).await
    });
    assert!(dripping.await.unwrap(), "a header drip is cut off");

    // A body dripped after its headers: answered (or closed) at the request deadline.
    let mut body = connect_from("127.0.0.1", addr).await;
    body.write_all(b"POST /webhooks/smartlead HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").await.unwrap();
    let begun = Instant::now();
    let answered = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                read = body.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return answer,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if body.write_all(b" ").await.is_err() {
                        return answer;
                    }
                }
            }
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(5), answered)
        .await
        .expect("the dripping body is cut off")
        .unwrap();
    assert!(begun.elapsed() < Duration::from_secs(3));
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_past_its_share_of_connections_is_refused_and_others_get_in() {
    use tokio::io::AsyncWriteExt;
    let peer = HttpPeer::start().await;
    // Headers may take 10 s here: the held connections stay open for the whole test.
    let (addr, _dir, stop, running) = limited_router(&peer, Duration::from_secs(10)).await;
    // One client holding its share of connections cannot take another, but other clients
    // (SmartLead) still get in and are answered.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    let mut extra = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_within(&mut extra, Duration::from_millis(300)).await,
        "a client past its share is closed at once"
    );
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other
        .post(format!("http://{addr}/webhooks/smartlead"))
        .body(unique(fixture("real_13_email_reply")).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(held);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
