//! Durable, at-least-once delivery: retries with backoff and `Retry-After`, permanent failures
//! straight to the dead letters, replay, duplicates recognised across restarts, and SMTP
//! outages survived.

use crate::util::{HttpPeer, Router, SmtpPeer, fixture, unique, wait_until};
use serde_json::Value;
use std::time::{Duration, Instant};
use switchboard::store::{DeliveryStatus, Filter};

fn slack_rules(slack: &HttpPeer) -> String {
    format!(
        "rules:\n  - name: reply-to-sales\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - slack: {{ webhook_url: \"{}\", text: \"Reply from {{{{lead.email}}}} ({{{{event_id}}}})\" }}\n",
        slack.url("/services/T0/B0/X")
    )
}

async fn deliveries(
    router: &Router,
    status: Option<&str>,
) -> Vec<switchboard::store::DeliveryView> {
    let filter = Filter {
        status: status.map(|s| s.parse().expect("a delivery status")),
        with_history: true,
        ..Filter::default()
    };
    router.store.list(&filter).await.unwrap()
}

async fn wait_for_status(
    router: &Router,
    status: &str,
    n: usize,
) -> Vec<switchboard::store::DeliveryView> {
    wait_for_deliveries(router, &format!("{n} {status} deliveries"), |all| {
        let list: Vec<_> = all
            .iter()
            .filter(|d| d.status.as_str() == status)
            .cloned()
            .collect();
        (list.len() >= n).then_some(list)
    })
    .await
}

/// Polls every delivery until `ready` makes something of them (panics after 10 s, showing
/// them and `what` was awaited).
async fn wait_for_deliveries<T>(
    router: &Router,
    what: &str,
    mut ready: impl FnMut(&[switchboard::store::DeliveryView]) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        let all = deliveries(router, None).await;
        if let Some(found) = ready(&all) {
            return found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn server_errors_are_retried_until_slack_answers_ok() {
    let slack = HttpPeer::start().await;
    slack.script(vec![(500, "internal_error", vec![]), (503, "", vec![])]);
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let done = wait_for_status(&router, "delivered", 1).await;
    assert_eq!(done[0].attempts, 3);
    let outcomes: Vec<_> = done[0]
        .history
        .iter()
        .map(|a| (a.outcome.as_str(), a.status_code))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("retry", Some(500)),
            ("retry", Some(503)),
            ("delivered", None)
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slack.received().len(),
        3,
        "delivered once, after two failed attempts"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let slack = HttpPeer::start().await;
    slack.script(vec![(429, "rate_limited", vec![("Retry-After", "2")])]);
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let got = slack.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "second attempt after {gap:?}"
    );
    wait_for_status(&router, "delivered", 1).await;
}

#[tokio::test]
async fn a_permanent_error_is_a_dead_letter_at_once_and_replays_when_fixed() {
    let slack = HttpPeer::start().await;
    slack.script(vec![(404, "no_service", vec![])]);
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let dead = wait_for_status(&router, "dead", 1).await;
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("no_service"),
        "{:?}",
        dead[0]
    );
    assert_eq!(dead[0].history[0].status_code, Some(404));
    assert_eq!(dead[0].rule, "reply-to-sales");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slack.received().len(),
        1,
        "no retries after a permanent error"
    );

    let (status, dlq) = router.get("/api/dlq").await;
    assert_eq!(status, 200);
    assert_eq!(dlq["deliveries"][0]["id"], dead[0].id);
    assert_eq!(dlq["deliveries"][0]["history"][0]["status_code"], 404);

    let r = reqwest::Client::new()
        .post(router.url(&format!("/api/dlq/{}/retry", dead[0].id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = slack.wait_for(2).await;
    assert_eq!(
        got[0].body, got[1].body,
        "the replay sends the same message"
    );
    let done = wait_for_status(&router, "delivered", 1).await;
    assert_eq!(done[0].id, dead[0].id);
    assert!(deliveries(&router, Some("dead")).await.is_empty());
}

#[tokio::test]
async fn retries_run_out_into_a_dead_letter_with_full_history() {
    let slack = HttpPeer::start().await;
    slack.script((0..4).map(|_| (502, "bad gateway", vec![])).collect());
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let dead = wait_for_status(&router, "dead", 1).await;
    assert_eq!(dead[0].attempts, 4);
    assert_eq!(dead[0].history.len(), 4);
    assert!(dead[0].history.iter().all(|a| a.status_code == Some(502)));
    let (_, m) = router.get("/metrics").await;
    assert!(
        m.as_str().unwrap().contains("switchboard_dead_letters 1"),
        "{m}"
    );
    let r = reqwest::Client::new()
        .post(router.url(&format!("/api/dlq/{}/discard", dead[0].id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(deliveries(&router, Some("dead")).await.is_empty());
    assert_eq!(deliveries(&router, Some("discarded")).await.len(), 1);
}

#[tokio::test]
async fn one_failing_action_does_not_resend_the_others() {
    let slack = HttpPeer::start().await;
    let crm = HttpPeer::start().await;
    slack.script(vec![(500, "", vec![]), (500, "", vec![])]);
    let rules = format!(
        "rules:\n  - name: reply\n    actions:\n      - slack: {{ webhook_url: \"{}\", text: hi }}\n      - http: {{ url: \"{}\", body: '{{}}' }}\n",
        slack.url("/s"),
        crm.url("/crm")
    );
    let router = Router::start(&rules, &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    wait_for_status(&router, "delivered", 2).await;
    assert_eq!(slack.received().len(), 3);
    assert_eq!(
        crm.received().len(),
        1,
        "the CRM call is not repeated by Slack's retries"
    );
}

#[tokio::test]
async fn the_same_body_twice_and_after_a_restart_notifies_once() {
    let slack = HttpPeer::start().await;
    let router = Router::start(&slack_rules(&slack), &[]).await;
    let body = fixture("real_13_email_reply").to_string();
    let (s1, a1) = router.post_raw("/webhooks/smartlead", body.clone()).await;
    let (s2, a2) = router.post_raw("/webhooks/smartlead", body.clone()).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a1["status"], "received");
    assert_eq!(a2["status"], "duplicate");
    assert_eq!(a2["event_id"], a1["event_id"]);
    slack.wait_for(1).await;
    let router = router.restart().await;
    let (s3, a3) = router.post_raw("/webhooks/smartlead", body.clone()).await;
    assert_eq!(s3, 200);
    assert_eq!(a3["status"], "duplicate", "{a3}");
    // A different event for the same lead is not a duplicate.
    let (_, a4) = router
        .post_raw(
            "/webhooks/smartlead",
            unique(fixture("real_13_email_reply")).to_string(),
        )
        .await;
    assert_eq!(a4["status"], "received");
    slack.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slack.received().len(), 2);
}

#[tokio::test]
async fn smtp_down_then_up_is_delivered() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rules = format!(
        "rules:\n  - name: mail\n    actions:\n      - email: {{ smtp_url: \"smtp://127.0.0.1:{port}?tls=none\", from: a@example.com, to: b@example.com, subject: \"Reply from {{{{lead.email}}}}\", text: hi }}\n"
    );
    let dir = crate::util::config_dir(&rules, &[]);
    let mut settings = crate::util::fast_retries();
    settings.retry.schedule = vec![Duration::from_millis(200)];
    settings.retry.max_attempts = 50;
    let router = Router::start_with(dir, settings).await;
    router.post(&fixture("real_13_email_reply")).await;
    router
        .wait_metric(
            "switchboard_deliveries_total",
            &[("outcome", "retried")],
            2.0,
        )
        .await;
    let smtp = SmtpPeer::start_on(port);
    let mails = smtp.wait_for(1).await;
    assert!(
        mails[0]
            .data
            .contains("Reply from james.parker@prospect.example")
    );
    let done = wait_for_status(&router, "delivered", 1).await;
    assert!(
        done[0].history[0]
            .error
            .as_deref()
            .unwrap()
            .contains("SMTP"),
        "{:?}",
        done[0].history
    );
}

#[tokio::test]
async fn history_is_queryable_by_status_rule_and_lead() {
    let slack = HttpPeer::start().await;
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    router.post(&fixture("docs_04_email_replied")).await;
    wait_for_status(&router, "delivered", 2).await;
    let (status, body) = router
        .get("/api/deliveries?lead=jane.doe@example.com")
        .await;
    assert_eq!(status, 200);
    let list = body["deliveries"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["lead_email"], "jane.doe@example.com");
    assert_eq!(list[0]["status"], "delivered");
    let (_, body) = router
        .get("/api/deliveries?rule=reply-to-sales&status=delivered")
        .await;
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 2);
    let (_, body) = router.get("/api/deliveries?rule=nope").await;
    assert_eq!(body["deliveries"], Value::Array(vec![]));
}

/// The real binary under a stream of events is killed with SIGKILL while deliveries are in
/// flight, then started again on the same store: every acknowledged event is delivered.
#[tokio::test]
async fn nothing_acknowledged_is_lost_when_the_process_is_killed() {
    let sink = HttpPeer::start().await;
    sink.set_delay(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!("rules:\n  - name: all\n    actions:\n      - http: {{ url: \"{}\", body: '{{\"event_id\": \"{{{{event_id}}}}\"}}' }}\n", sink.url("/in")),
    )
    .unwrap();
    let args = ["--retry-schedule", "100ms", "--per-destination", "4"];
    let router = crate::util::Binary::start(dir.path(), &args).await;
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        if i == 60 {
            router.signal("-KILL");
        }
        let sent = client
            .post(format!("{}/webhooks/smartlead", router.url))
            .body(unique(fixture("real_13_email_reply")).to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 200 => {
                let answer: Value = r.json().await.unwrap();
                acknowledged.push(answer["event_id"].as_str().unwrap().to_string());
            }
            _ => break,
        }
    }
    assert!(
        acknowledged.len() >= 60,
        "{} acknowledged before the kill",
        acknowledged.len()
    );
    let before_restart = sink.received().len();
    assert!(
        before_restart < acknowledged.len(),
        "the kill came after everything was delivered; nothing was tested"
    );
    drop(router);
    let _router = crate::util::Binary::start(dir.path(), &args).await;
    let arrived = |sink: &HttpPeer| -> Vec<String> {
        sink.received()
            .iter()
            .map(|r| r.json()["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    let start = Instant::now();
    while !acknowledged.iter().all(|id| arrived(&sink).contains(id)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not every acknowledged event arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = arrived(&sink);
    let duplicates = got.len() - acknowledged.len();
    assert!(
        duplicates <= 4,
        "{duplicates} duplicates: only the sends in flight at the kill may repeat"
    );
}

#[tokio::test]
async fn pruning_drops_finished_history_and_keeps_dead_letters() {
    let slack = HttpPeer::start().await;
    slack.script(vec![(404, "no_service", vec![])]);
    let router = Router::start(&slack_rules(&slack), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    wait_for_status(&router, "dead", 1).await;
    router.post(&fixture("docs_04_email_replied")).await;
    wait_for_status(&router, "delivered", 1).await;
    let later = switchboard::store::now_ms() + 1_000;
    let pruned = router.store.prune(later, 0).await.unwrap();
    assert!(
        pruned >= 2,
        "the delivered delivery and its event: {pruned}"
    );
    let left = deliveries(&router, None).await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].status,
        DeliveryStatus::Dead,
        "dead letters stay until retried or discarded"
    );
    // Intake keys younger than the cut-off still recognise repeats.
    let (_, again) = router
        .post_raw(
            "/webhooks/smartlead",
            fixture("docs_04_email_replied").to_string(),
        )
        .await;
    assert_eq!(again["status"], "duplicate");
}

/// More events at once than the router has workers: the first go straight to the workers, the
/// rest wait in the store and are taken as sends finish (the poll interval is far longer than
/// the test may take: finishing sends wake the workers). Each is sent once.
#[tokio::test]
async fn more_events_than_workers_are_each_delivered_once() {
    let slack = HttpPeer::start().await;
    slack.set_delay(Duration::from_millis(50));
    let dir = crate::util::config_dir(&slack_rules(&slack), &[]);
    let mut settings = crate::util::fast_retries();
    settings.concurrency = 2;
    settings.per_destination = 2;
    settings.poll = Duration::from_secs(60);
    let router = crate::util::Router::start_with(dir, settings).await;
    let events: Vec<Value> = (0..20)
        .map(|_| unique(fixture("real_13_email_reply")))
        .collect();
    let ids = futures_util::future::join_all(events.iter().map(|e| router.post(e))).await;
    slack.wait_for(ids.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = slack.received();
    assert_eq!(received.len(), ids.len(), "no notification sent twice");
    let mut texts: Vec<String> = received
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(
        texts.len(),
        ids.len(),
        "each event notified once: {texts:?}"
    );
    for id in &ids {
        assert!(
            texts.iter().any(|t| t.contains(id.as_str())),
            "{id} was not notified"
        );
    }
    let done = wait_for_status(&router, "delivered", ids.len()).await;
    assert!(done.iter().all(|d| d.attempts == 1), "{done:?}");
}

/// Events of two actions each, one worker: nearly all wait in the store, and each of an
/// event's two deliveries is sent once with that event's own content, whichever is claimed
/// first.
#[tokio::test]
async fn each_waiting_delivery_of_an_event_is_sent_with_that_event() {
    let slack = HttpPeer::start().await;
    slack.set_delay(Duration::from_millis(20));
    let url = slack.url("/services/T0/B0/X");
    let rules = format!(
        "rules:\n  - name: reply-to-sales\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - slack: {{ webhook_url: \"{url}\", text: \"first {{{{event_id}}}} {{{{raw.sl_lead_email}}}}\" }}\n      - slack: {{ webhook_url: \"{url}\", text: \"second {{{{event_id}}}} {{{{raw.sl_lead_email}}}}\" }}\n"
    );
    let dir = crate::util::config_dir(&rules, &[]);
    let mut settings = crate::util::fast_retries();
    settings.concurrency = 1;
    settings.per_destination = 1;
    settings.poll = Duration::from_secs(60);
    let router = crate::util::Router::start_with(dir, settings).await;
    let events: Vec<Value> = (0..8)
        .map(|i| {
            let mut e = unique(fixture("real_13_email_reply"));
            e["sl_lead_email"] = Value::from(format!("lead{i}@example.com"));
            e
        })
        .collect();
    let ids = futures_util::future::join_all(events.iter().map(|e| router.post(e))).await;
    slack.wait_for(2 * ids.len()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut texts: Vec<String> = slack
        .received()
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    let mut expected: Vec<String> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for which in ["first", "second"] {
            expected.push(format!("{which} {id} lead{i}@example.com"));
        }
    }
    expected.sort();
    assert_eq!(texts, expected);
    wait_for_status(&router, "delivered", 2 * ids.len()).await;
}

/// A new event for the committer with no deliveries: its id (and duplicate key) is `tag`
/// after a fresh UUID, so that every call is a different webhook.
fn new_event(tag: &str, payload: String) -> switchboard::store::NewEvent {
    let id = format!("{}-{tag}", uuid::Uuid::now_v7());
    switchboard::store::NewEvent {
        dedup_key: id.clone(),
        deliveries: vec![],
        ..event_to("", &id, "", &payload)
    }
}

/// An event with one delivery, pending, to `destination` (rule "replies"), written straight to
/// the store: its duplicate key is `smartlead:{key}`.
pub(crate) fn event_to(
    destination: &str,
    id: &str,
    key: &str,
    payload: &str,
) -> switchboard::store::NewEvent {
    switchboard::store::NewEvent {
        id: id.into(),
        source: "smartlead".into(),
        event_type: "EMAIL_REPLIED".into(),
        lead_email: None,
        campaign_id: None,
        config_hash: "h".into(),
        payload: payload.into(),
        dedup_key: format!("smartlead:{key}"),
        deliveries: vec![switchboard::store::NewDelivery {
            rule: "replies".into(),
            action_index: 0,
            action_kind: "http".into(),
            destination: destination.into(),
            timing: Default::default(),
            silenced: false,
        }],
        memory: None,
        claimed: false,
    }
}

/// The group committer keeps SQLite's one writer connection between back-to-back commits; the
/// other writers (heartbeat, release) must still get their turn while it never goes idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_writers_get_their_turn_while_commits_never_stop() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use switchboard::store::{Committer, Intake, Store};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/store.db", dir.path().display()))
        .await
        .unwrap();
    let committer = Committer::start(store.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..32 {
        let (committer, stop, accepted) = (committer.clone(), stop.clone(), accepted.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let event = new_event(&format!("{w}-{n}"), "{}".into());
                let intake = committer.submit(event).await.unwrap();
                assert!(matches!(intake, Intake::Accepted(_)), "{intake:?}");
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = accepted.load(Ordering::Relaxed);
    for i in 0..20 {
        tokio::time::timeout(
            Duration::from_secs(10),
            store.heartbeat("127.0.0.1:1", "h", &[]),
        )
        .await
        .expect("a heartbeat got the writer connection while commits went on")
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), store.release(&[i]))
            .await
            .expect("a release got the writer connection while commits went on")
            .unwrap();
    }
    assert!(
        accepted.load(Ordering::Relaxed) > before,
        "commits went on meanwhile"
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
}

/// Committed events reach the database file itself while the router runs, not only the WAL
/// (SQLite's write-ahead log), and the WAL stays bounded while commits never stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_copied_into_the_database_while_commits_go_on() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use switchboard::store::{Committer, Intake, Store};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let wal = dir.path().join("store.db-wal");
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let committer = Committer::start(store.clone());
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let event = |w: usize, n: usize| {
        new_event(
            &format!("{w}-{n}"),
            format!("{{\"reply\": \"{}\"}}", "x".repeat(4000)),
        )
    };
    // Writers that each commit `per_writer` events of 4 KB, one at a time.
    let write = |writers: usize, per_writer: usize| {
        let committer = committer.clone();
        async move {
            let mut tasks = Vec::new();
            for w in 0..writers {
                let committer = committer.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0..per_writer {
                        let intake = committer.submit(event(w, n)).await.unwrap();
                        assert!(matches!(intake, Intake::Accepted(_)), "{intake:?}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };

    // 100 events (some 100 pages of 4 KiB): far fewer than the WAL holds before a commit copies
    // it by itself, so only a checkpoint beside the commits brings them into the file.
    let before = size(&db);
    write(10, 10).await;
    wait_until(
        || size(&db) >= before + 100 * 4000,
        "the committed events to reach the database file",
    )
    .await;

    // 24 MB of events, commits back to back: the WAL stays far smaller than what went through.
    let largest = Arc::new(AtomicU64::new(0));
    let watch = {
        let (largest, wal) = (largest.clone(), wal.clone());
        tokio::spawn(async move {
            loop {
                largest.fetch_max(size(&wal), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    write(32, 190).await;
    watch.abort();
    let largest = largest.load(Ordering::Relaxed);
    assert!(
        largest > 0 && largest < 16 << 20,
        "the WAL grew to {largest} bytes while 24 MB were committed"
    );
    // The last commits reach the file with the next checkpoint.
    wait_until(
        || size(&db) >= before + 6_180 * 4000,
        "every committed event to reach the database file",
    )
    .await;
}

/// Writes outside the group commit (a heartbeat here) are copied into the database file too,
/// within seconds, while no commit comes to wake the checkpointer.
#[tokio::test]
async fn an_idle_store_copies_its_other_writes_into_the_database() {
    use switchboard::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/store.db", dir.path().display()))
        .await
        .unwrap();
    // SQLite's WAL index (https://sqlite.org/walformat.html): the last frame written to the WAL
    // (mxFrame, bytes 16..20) and the last one copied into the database (nBackfill, 96..100).
    let shm = dir.path().join("store.db-shm");
    let frames = || {
        let index = std::fs::read(&shm).unwrap();
        let at = |i: usize| u32::from_ne_bytes(index[i..i + 4].try_into().unwrap());
        (at(16), at(96))
    };
    store.heartbeat("127.0.0.1:1", "h", &[]).await.unwrap();
    let (written, _) = frames();
    assert!(written > 0, "the heartbeat went to the WAL");
    wait_until(
        || {
            let (written, copied) = frames();
            copied == written
        },
        "the WAL to be copied into the database",
    )
    .await;
}

/// A group commit that fails keeps none of its writes, and the store goes on: here a record
/// for a delivery that does not exist breaks the transaction the event shares with it.
pub(crate) async fn a_failed_group_commit_keeps_nothing(url: &str) {
    use switchboard::store::{Attempt, Claim, Finished, Intake, Next, Store, now_ms};

    let store = Store::open(url).await.unwrap();
    let event = |id: &str| {
        let payload = format!("{{\"event_id\": \"{id}\"}}");
        event_to("replies#0", id, "the-same-webhook", &payload)
    };
    let broken = Finished {
        id: 987_654_321,
        attempt: Attempt {
            started_at: now_ms(),
            duration_ms: 1,
            status_code: Some(200),
            error: None,
        },
        next: Next::Delivered,
    };
    let failed = store.write(&[event("first")], &[broken], &[]).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        store.list(&Filter::default()).await.unwrap().is_empty(),
        "the failed commit left deliveries behind"
    );

    // The webhook's key was not kept either: the same webhook again is new, not a repeat.
    let claim = Claim {
        limit: 10,
        per_destination: 4,
        in_use: vec![],
        in_flight: vec![],
    };
    let outcome = store
        .write(&[event("second")], &[], std::slice::from_ref(&claim))
        .await
        .unwrap();
    let Intake::Accepted(ids) = &outcome.intakes[0] else {
        panic!("accepted, not {:?}", outcome.intakes[0]);
    };
    assert_eq!(ids.len(), 1);
    let due = &outcome.claimed[0];
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(
        (due[0].id, due[0].event_id.as_str()),
        (ids[0].expect("recorded").id, "second")
    );
    assert_eq!(due[0].payload, "{\"event_id\": \"second\"}");
    let repeat = store.write(&[event("third")], &[], &[]).await.unwrap();
    assert_eq!(repeat.intakes, vec![Intake::Duplicate("second".into())]);
}

#[tokio::test]
async fn a_failed_group_commit_keeps_nothing_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_failed_group_commit_keeps_nothing(&format!("sqlite://{}/store.db", dir.path().display()))
        .await;
}

/// Events written in one group commit keep their payloads byte for byte: multi-byte UTF-8,
/// quotes and backslashes, sizes far apart, and a duplicate in the middle of the batch (not
/// stored) that must not shift the events after it.
pub(crate) async fn payloads_come_back_as_written(url: &str) {
    use switchboard::store::{Claim, Intake, Store};

    let store = Store::open(url).await.unwrap();
    let event = |id: &str, key: &str, payload: &str| event_to("crm", id, key, payload);
    let payloads = [
        r#"{"text":"Grüße, naïve café, 東京 🚀","quote":"\"hi\"","path":"C:\\tmp"}"#.to_string(),
        format!(r#"{{"long":"{}"}}"#, "ü€".repeat(3_000)),
        r#"{"empty":""}"#.to_string(),
    ];
    let batch = [
        event("a", "k-a", &payloads[0]),
        event("dup-of-a", "k-a", r#"{"never":"stored"}"#),
        event("b", "k-b", &payloads[1]),
        event("c", "k-c", &payloads[2]),
    ];
    let written = store.write(&batch, &[], &[]).await.unwrap();
    assert_eq!(written.intakes[1], Intake::Duplicate("a".into()));
    let claim = Claim {
        limit: 10,
        per_destination: 10,
        in_use: vec![],
        in_flight: vec![],
    };
    let claimed = store.write(&[], &[], &[claim]).await.unwrap();
    let mut got: Vec<(String, String)> = claimed.claimed[0]
        .iter()
        .map(|d| (d.event_id.clone(), d.payload.clone()))
        .collect();
    got.sort();
    let expected: Vec<(String, String)> = ["a", "b", "c"]
        .into_iter()
        .map(String::from)
        .zip(payloads)
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn payloads_come_back_as_written_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    payloads_come_back_as_written(&format!("sqlite://{}/store.db", dir.path().display())).await;
}

/// A claim takes each destination's due deliveries only up to the room it has left (its limit
/// less the sends in flight to it), earliest first across destinations, and none of a
/// destination at its limit however many it has waiting.
pub(crate) async fn a_claim_takes_each_destination_within_its_room(url: &str) {
    use switchboard::store::{Claim, NewEvent, Store};

    let store = Store::open(url).await.unwrap();
    let event = |n: usize, destination: &str| {
        let id = format!("{destination}-{n}");
        event_to(destination, &id, &id, "{}")
    };
    // The busy destination's backlog first, so it comes first in due order (its name sorts
    // last, so an order by destination would not pass); then three each for two others.
    let busy: Vec<NewEvent> = (0..50).map(|n| event(n, "zz-busy")).collect();
    store.write(&busy, &[], &[]).await.unwrap();
    let quiet: Vec<NewEvent> = (0..3)
        .flat_map(|n| [event(n, "crm"), event(n, "mail")])
        .collect();
    store.write(&quiet, &[], &[]).await.unwrap();
    let claim = |limit: u32, in_use: &[(&str, u32)], in_flight: Vec<i64>| Claim {
        limit,
        per_destination: 4,
        in_use: in_use.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
        in_flight,
    };
    let taken = |claims: &[Vec<switchboard::store::Due>]| -> Vec<String> {
        claims[0].iter().map(|d| d.event_id.clone()).collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // The busy destination at its limit, "crm" with room for one more: crm's earliest.
    let first = store
        .write(
            &[],
            &[],
            &[claim(32, &[("zz-busy", 4), ("crm", 3)], vec![])],
        )
        .await
        .unwrap();
    assert_eq!(
        sorted(taken(&first.claimed)),
        ["crm-0", "mail-0", "mail-1", "mail-2"],
        "none of the busy one's, one of crm's, mail's three"
    );

    // Room for two of the busy one's (sends to it finished), which are due first; the limit of
    // three leaves one more, the earliest of what is left: crm's next.
    let second = store
        .write(&[], &[], &[claim(3, &[("zz-busy", 2)], vec![])])
        .await
        .unwrap();
    assert_eq!(
        sorted(taken(&second.claimed)),
        ["crm-1", "zz-busy-0", "zz-busy-1"]
    );

    // A delivery this instance still has in flight is not taken, even while pending.
    let all = switchboard::store::Filter {
        limit: Some(1_000),
        ..Default::default()
    };
    let crm_2 = store
        .list(&all)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.event_id == "crm-2")
        .expect("crm-2 is stored")
        .id;
    let third = store
        .write(&[], &[], &[claim(32, &[("zz-busy", 4)], vec![crm_2])])
        .await
        .unwrap();
    assert!(taken(&third.claimed).is_empty(), "{:?}", third.claimed);
}

#[tokio::test]
async fn a_claim_takes_each_destination_within_its_room_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_claim_takes_each_destination_within_its_room(&format!(
        "sqlite://{}/store.db",
        dir.path().display()
    ))
    .await;
}

/// A delivery left `sending` while the router runs (the task sending it died, or its attempt
/// could not be recorded) is sent again once the lease has passed, without a restart; one
/// still being sent when the lease passes is left alone and sent once.
#[tokio::test]
async fn a_send_that_never_finished_is_sent_again_without_a_restart() {
    let slack = HttpPeer::start().await;
    let dir = crate::util::config_dir(&slack_rules(&slack), &[]);
    let mut settings = crate::util::fast_retries();
    settings.heartbeat = Duration::from_millis(100);
    // The test router's lease is 2 s.
    let router = Router::start_with(dir, settings).await;

    slack.set_delay(Duration::from_secs(3));
    let slow = router.post(&unique(fixture("real_13_email_reply"))).await;
    // Past the lease, the send still under way: still `sending`, not put back in the queue.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let during = deliveries(&router, None).await;
    assert_eq!(
        during.iter().map(|d| d.status.as_str()).collect::<Vec<_>>(),
        ["sending"]
    );
    let done = wait_for_status(&router, "delivered", 1).await;
    assert_eq!(
        (done[0].event_id.as_str(), done[0].attempts),
        (slow.as_str(), 1)
    );
    assert_eq!(
        slack.received().len(),
        1,
        "in flight past the lease, sent once"
    );
    slack.set_delay(Duration::ZERO);

    // Another event's delivery, as a send that never finished leaves it: `sending`, with
    // nothing sending it.
    let stranded = router.post(&unique(fixture("real_13_email_reply"))).await;
    slack.wait_for(2).await;
    wait_for_status(&router, "delivered", 2).await;
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        router.dir.path().join("switchboard.db").display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "UPDATE deliveries SET status = 'sending', updated_at = updated_at - 60000
         WHERE event_id = ?",
    )
    .bind(&stranded)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    slack.wait_for(3).await;
    wait_for_deliveries(&router, "the stranded delivery sent again", |all| {
        all.iter()
            .find(|d| {
                d.event_id == stranded && d.status == DeliveryStatus::Delivered && d.attempts == 2
            })
            .map(drop)
    })
    .await;
    let texts: Vec<String> = slack
        .received()
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts.len(), 3);
    assert!(
        texts[2].contains(&stranded),
        "the third send is the stranded delivery's: {texts:?}"
    );
}
