//! Probe benchmark: `cargo bench --bench probe`.
//!
//! What `/readyz` and `/metrics` cost the store (they answer anyone who can reach the router):
//! the delivery counts they read, timed on an empty store and on one holding 1,000,000
//! delivered deliveries (a week of history on a busy router), then the two endpoints themselves
//! polled over HTTP on the real router serving that store. SQLite on disk and, with
//! `SWITCHBOARD_BENCH_POSTGRES_URL` set, PostgreSQL (a schema of its own, dropped after).

#[path = "support/pg_schema.rs"]
mod pg_schema;

use pg_schema::Schema;
use std::time::{Duration, Instant};
use switchboard::Options;
use switchboard::config::ConfigPaths;
use switchboard::store::{Attempt, Finished, NewDelivery, NewEvent, Next, Store};

/// Delivered deliveries in the full store.
const HISTORY: usize = 1_000_000;
/// Deliveries per event written (the history is written in events of this many).
const PER_EVENT: usize = 100;
/// Count queries timed per store size.
const QUERIES: usize = 200;
/// Requests per endpoint polled over HTTP.
const REQUESTS: usize = 2_000;

fn event(n: usize) -> NewEvent {
    let id = uuid::Uuid::now_v7().to_string();
    NewEvent {
        id: id.clone(),
        source: "smartlead".into(),
        event_type: "EMAIL_OPENED".into(),
        lead_email: Some(format!("lead{n}@example.com")),
        campaign_id: None,
        config_hash: "bench".into(),
        payload: format!(r#"{{"event_id":"{id}"}}"#),
        dedup_key: id,
        deliveries: (0..PER_EVENT)
            .map(|i| NewDelivery {
                rule: format!("rule-{i}"),
                action_index: 0,
                action_kind: "http".into(),
                destination: format!("dest-{}", i % 8),
                timing: Default::default(),
                silenced: false,
            })
            .collect(),
        memory: None,
        claimed: true,
    }
}

/// Writes `HISTORY` deliveries and records each delivered, in commits of 10 events (1,000
/// deliveries).
async fn fill(store: &Store) {
    let attempt = Attempt {
        started_at: 0,
        duration_ms: 1,
        status_code: Some(200),
        error: None,
    };
    for batch in 0..HISTORY / PER_EVENT / 10 {
        let events: Vec<NewEvent> = (0..10).map(|i| event(batch * 10 + i)).collect();
        let written = store.write(&events, &[], &[]).await.unwrap();
        let done: Vec<Finished> = written
            .intakes
            .iter()
            .flat_map(|i| match i {
                switchboard::store::Intake::Accepted(ids) => ids.clone(),
                _ => vec![],
            })
            .map(|c| Finished {
                id: c.expect("recorded").id,
                attempt: attempt.clone(),
                next: Next::Delivered,
            })
            .collect();
        store.write(&[], &done, &[]).await.unwrap();
    }
    store.pause().await;
}

fn ms(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
    times[i].as_secs_f64() * 1000.0
}

/// The counts query, `QUERIES` times: (p50, p99) in ms.
async fn counts(store: &Store) -> (f64, f64) {
    let mut times = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        let t = Instant::now();
        let c = store.counts().await.unwrap();
        times.push(t.elapsed());
        assert_eq!(c.pending + c.sending + c.dead, 0, "only history is stored");
    }
    (ms(&mut times, 0.5), ms(&mut times, 0.99))
}

/// `/readyz` and `/metrics` on the real router serving `url`, its counts reused for
/// `interval` (zero: every probe asks the store): (p50, p99) in ms each.
async fn endpoints(url: &str, interval: Duration) -> [(f64, f64); 2] {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "rules:\n  - name: r\n    actions:\n      - log: { message: hi }\n",
    )
    .unwrap();
    let paths = ConfigPaths {
        rules: dir.path().join("rules.yaml"),
        templates: dir.path().join("templates"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut options = Options::new(paths, url);
    options.probe_interval = interval;
    let router = tokio::spawn(switchboard::run(options, listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    while client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut out = [(0.0, 0.0); 2];
    for (i, path) in ["/readyz", "/metrics"].iter().enumerate() {
        let mut times = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let r = client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            let _ = r.bytes().await.unwrap();
            times.push(t.elapsed());
        }
        out[i] = (ms(&mut times, 0.5), ms(&mut times, 0.99));
    }
    let _ = stop.send(());
    router.await.unwrap().unwrap();
    out
}

async fn run(label: &str, url: &str) {
    let (cached, uncached) = (Duration::from_secs(1), Duration::ZERO);
    let store = Store::open(url).await.unwrap();
    let empty = counts(&store).await;
    let [ready_empty, metrics_empty] = endpoints(url, cached).await;
    let [ready_empty_u, metrics_empty_u] = endpoints(url, uncached).await;
    let started = Instant::now();
    fill(&store).await;
    let filled = started.elapsed();
    let full = counts(&store).await;
    let [ready_full, metrics_full] = endpoints(url, cached).await;
    let [ready_full_u, metrics_full_u] = endpoints(url, uncached).await;
    println!("{label}: {HISTORY} delivered deliveries written in {filled:.0?}");
    for (what, e, f) in [
        ("store counts", empty, full),
        ("GET /readyz", ready_empty, ready_full),
        ("GET /metrics", metrics_empty, metrics_full),
        ("GET /readyz, uncached", ready_empty_u, ready_full_u),
        ("GET /metrics, uncached", metrics_empty_u, metrics_full_u),
    ] {
        println!(
            "  {what:<24} empty p50 {:>7.3} ms p99 {:>7.3} ms   1M p50 {:>7.3} ms p99 {:>7.3} ms",
            e.0, e.1, f.0, f.1
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/probe.db", dir.path().display());
        run("SQLite on disk", &url).await;
        if let Ok(url) = std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL") {
            let schema = Schema::create(&url, "sb_probe").await;
            run("PostgreSQL", &schema.url).await;
            schema.drop().await;
        }
    });
}
