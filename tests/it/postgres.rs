//! Several routers on one PostgreSQL database. These run when `SWITCHBOARD_TEST_POSTGRES_URL`
//! is set (`.ci/run` sets it to the local server); each test works in a schema of its own.

use crate::util::{Binary, HttpPeer, Router, fixture, unique};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchboard::store::Filter;

/// A fresh schema on the test server, as a store URL, with what drops it again at the end of
/// the test; `None` (and a note) when no server is set.
pub(crate) async fn fresh_store() -> Option<(String, Schema)> {
    let Some(base) = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: SWITCHBOARD_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("sb_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("the test PostgreSQL server answers");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    // Connections to the schema carry its name, so that the guard can end them before it
    // drops the schema (an in-process router's connections outlive its stop).
    let url = format!("{base}{sep}options[search_path]={schema}&application_name={schema}");
    Some((
        url,
        Schema {
            server: base,
            name: schema,
        },
    ))
}

/// A test's schema: dropped, with all it holds, when the test ends (pass or fail), so that
/// runs do not pile schemas up on the test server. Bind it before the routers that use it, so
/// that they are dropped first; connections still open on the schema then (an in-process
/// router's, whose tasks cannot run while this blocks the test's runtime) are ended first.
pub(crate) struct Schema {
    server: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop cannot await, and no runtime can be started inside the test's: the schema is
        // dropped from a thread with a runtime of its own, which the test waits for.
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let pool = sqlx::PgPool::connect(&server)
                    .await
                    .map_err(|e| e.to_string())?;
                let sql = format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name = '{name}' AND pid <> pg_backend_pid();
                     SET lock_timeout = '10s';
                     DROP SCHEMA {name} CASCADE"
                );
                let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                pool.close().await;
                done.map(drop).map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("note: the test schema {} was not dropped: {e}", self.name),
            Err(_) => eprintln!("note: dropping the test schema {} panicked", self.name),
        }
    }
}

fn sink_rules(sink: &HttpPeer) -> String {
    format!(
        "rules:\n  - name: all\n    actions:\n      - http: {{ url: \"{}\", body: '{{\"event_id\": \"{{{{event_id}}}}\"}}' }}\n",
        sink.url("/in")
    )
}

/// Event ids the sink received, with how many times each.
fn arrivals(sink: &HttpPeer) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in sink.received() {
        *seen
            .entry(r.json()["event_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    seen
}

async fn wait_all(sink: &HttpPeer, ids: &[String], within: Duration) {
    let start = Instant::now();
    while !ids.iter().all(|id| arrivals(sink).contains_key(id)) {
        assert!(
            start.elapsed() < within,
            "not every event arrived: {} of {}",
            arrivals(sink).len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn instance_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    dir
}

async fn post(client: &reqwest::Client, base: &str, body: String) -> Value {
    let r = client
        .post(format!("{base}/webhooks/smartlead"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_postgres_store_retries_dead_letters_and_deduplicates_like_sqlite() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let slack = HttpPeer::start().await;
    slack.script(vec![(500, "", vec![]), (404, "no_service", vec![])]);
    let dir = crate::util::config_dir(&sink_rules(&slack), &[]);
    let listen = ("127.0.0.1:0".parse().unwrap(), None);
    let router =
        Router::start_full(dir, crate::util::fast_retries(), listen, 1_000, Some(&url)).await;
    let body = fixture("real_13_email_reply").to_string();
    let (_, first) = router.post_raw("/webhooks/smartlead", body.clone()).await;
    let (_, again) = router.post_raw("/webhooks/smartlead", body).await;
    assert_eq!(first["status"], "received");
    assert_eq!(again["status"], "duplicate");
    // 500 → retried, 404 → dead letter.
    let start = Instant::now();
    let dead = loop {
        let dead = router
            .store
            .list(&Filter {
                status: Some(switchboard::store::DeliveryStatus::Dead),
                with_history: true,
                ..Filter::default()
            })
            .await
            .unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(
        dead[0]
            .history
            .iter()
            .map(|a| a.status_code)
            .collect::<Vec<_>>(),
        [Some(500), Some(404)]
    );
    assert_eq!(router.store.retry_dead(Some(dead[0].id)).await.unwrap(), 1);
    slack.wait_for(3).await;
    router
        .wait_metric(
            "switchboard_deliveries_total",
            &[("outcome", "delivered")],
            1.0,
        )
        .await;
    let (_, status) = router.get("/api/status").await;
    assert_eq!(status["instances"].as_array().unwrap().len(), 1, "{status}");
}

#[tokio::test]
async fn two_instances_share_the_work_and_deliver_each_event_once() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let sink = HttpPeer::start().await;
    let (dir_a, dir_b) = (
        instance_dir(&sink_rules(&sink)),
        instance_dir(&sink_rules(&sink)),
    );
    // Both start at once on an empty schema: the migration runs once, under its lock.
    let (a, b) = tokio::join!(
        Binary::start_on(dir_a.path(), Some(&url), &[], &[]),
        Binary::start_on(dir_b.path(), Some(&url), &[], &[])
    );
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..40 {
        let target = if i % 2 == 0 { &a.url } else { &b.url };
        let answer = post(
            &client,
            target,
            unique(fixture("real_13_email_reply")).to_string(),
        )
        .await;
        ids.push(answer["event_id"].as_str().unwrap().to_string());
    }
    wait_all(&sink, &ids, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = arrivals(&sink);
    assert_eq!(seen.len(), 40);
    assert!(
        seen.values().all(|n| *n == 1),
        "every event delivered exactly once: {seen:?}"
    );
    let status: Value = client
        .get(format!("{}/api/status", a.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{status}");
    assert!(
        instances
            .iter()
            .all(|i| i["config_hash"] == status["config_hash"]),
        "{status}"
    );
}

#[tokio::test]
async fn deliveries_of_a_killed_instance_are_taken_over_after_the_lease() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let sink = HttpPeer::start().await;
    sink.set_delay(Duration::from_millis(200));
    let (dir_a, dir_b) = (
        instance_dir(&sink_rules(&sink)),
        instance_dir(&sink_rules(&sink)),
    );
    let args = [
        "--lease",
        "2s",
        "--per-destination",
        "2",
        "--retry-schedule",
        "100ms",
    ];
    let a = Binary::start_on(dir_a.path(), Some(&url), &args, &[]).await;
    let b = Binary::start_on(dir_b.path(), Some(&url), &args, &[]).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let answer = post(
            &client,
            &a.url,
            unique(fixture("real_13_email_reply")).to_string(),
        )
        .await;
        ids.push(answer["event_id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("-KILL");
    let killed_at = Instant::now();
    drop(a);
    assert!(
        arrivals(&sink).len() < ids.len(),
        "everything was delivered before the kill; nothing was tested"
    );
    wait_all(&sink, &ids, Duration::from_secs(30)).await;
    assert!(killed_at.elapsed() < Duration::from_secs(30));
    let seen = arrivals(&sink);
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        repeats <= 2,
        "only sends in flight at the kill may repeat: {repeats}"
    );
    drop(b);
}

#[tokio::test]
async fn the_same_body_sent_to_two_instances_notifies_once() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let sink = HttpPeer::start().await;
    let (dir_a, dir_b) = (
        instance_dir(&sink_rules(&sink)),
        instance_dir(&sink_rules(&sink)),
    );
    let a = Binary::start_on(dir_a.path(), Some(&url), &[], &[]).await;
    let b = Binary::start_on(dir_b.path(), Some(&url), &[], &[]).await;
    let client = reqwest::Client::new();
    for n in 0..5 {
        let body = unique(fixture("real_13_email_reply")).to_string();
        let (x, y) = tokio::join!(
            post(&client, &a.url, body.clone()),
            post(&client, &b.url, body.clone())
        );
        let statuses = [x["status"].as_str().unwrap(), y["status"].as_str().unwrap()];
        assert!(
            statuses.contains(&"received") && statuses.contains(&"duplicate"),
            "round {n}: {statuses:?}"
        );
        assert_eq!(x["event_id"], y["event_id"]);
    }
    sink.wait_for(5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received().len(), 5);
}

#[tokio::test]
async fn a_failed_group_commit_keeps_nothing_with_postgres() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    crate::durable::a_failed_group_commit_keeps_nothing(&url).await;
}

#[tokio::test]
async fn a_claim_takes_each_destination_within_its_room_with_postgres() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    crate::durable::a_claim_takes_each_destination_within_its_room(&url).await;
}

#[tokio::test]
async fn payloads_come_back_as_written_with_postgres() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    crate::durable::payloads_come_back_as_written(&url).await;
}

/// The heartbeat renews the leases of the deliveries this instance is sending without waiting
/// for one a transaction holds (a group commit finishing it): waiting deadlocked with the
/// commit under load.
#[tokio::test]
async fn the_heartbeat_skips_deliveries_a_commit_holds() {
    use crate::durable::event_to;
    use switchboard::store::{Claim, Store};

    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let url = url.as_str();
    let store = Store::open(url).await.unwrap();
    let events = [
        event_to("crm", "held", "held", "{}"),
        event_to("crm", "free", "free", "{}"),
    ];
    store.write(&events, &[], &[]).await.unwrap();
    let claim = Claim {
        limit: 32,
        per_destination: 4,
        in_use: vec![],
        in_flight: vec![],
    };
    let claimed = store.write(&[], &[], &[claim]).await.unwrap().claimed;
    let id = |event: &str| claimed[0].iter().find(|d| d.event_id == event).unwrap().id;
    let (held, free) = (id("held"), id("free"));

    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let lease = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT lease_until FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (held_before, free_before) = (lease(held).await, lease(free).await);
    let mut commit = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM deliveries WHERE id = $1 FOR UPDATE")
        .bind(held)
        .execute(&mut *commit)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Waiting for the lock would wait for as long as the transaction stays open.
    tokio::time::timeout(
        Duration::from_secs(10),
        store.heartbeat("127.0.0.1:8080", "hash", &[held, free]),
    )
    .await
    .expect("the heartbeat does not wait for a held delivery")
    .unwrap();
    assert!(lease(free).await > free_before, "the free one is renewed");
    commit.rollback().await.unwrap();
    assert_eq!(lease(held).await, held_before, "the held one is left alone");
    // Once the lock is gone, the next heartbeat renews it.
    store
        .heartbeat("127.0.0.1:8080", "hash", &[held, free])
        .await
        .unwrap();
    assert!(lease(held).await > held_before);
    pool.close().await;
}
