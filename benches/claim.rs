//! Claim benchmark: `cargo bench --bench claim`.
//!
//! What a claim costs when one destination has a deep backlog and is at its limit (a Slack
//! channel answering 429, say) while others have deliveries due. The backlog's deliveries are
//! older, so they come first in due order; the claim must find the others' behind them. Each
//! claim rides in the group commit, so its cost holds up every acknowledgement waiting on that
//! commit. Reports the median and p99 claim time for backlogs of 0 to 100,000 deliveries, with
//! SQLite on disk and, with `SWITCHBOARD_BENCH_POSTGRES_URL` set, PostgreSQL (a schema of its
//! own per run, dropped after).

#[path = "support/pg_schema.rs"]
mod pg_schema;

use pg_schema::Schema;
use std::time::{Duration, Instant};
use switchboard::store::{Claim, NewDelivery, NewEvent, Store};

/// Backlog sizes of the busy destination.
const BACKLOGS: [usize; 4] = [0, 1_000, 10_000, 100_000];
/// Destinations with deliveries due besides the busy one.
const QUIET: usize = 8;
/// Claims timed per backlog.
const CLAIMS: usize = 200;
/// The workers' per-destination limit (the router's default).
const PER_DESTINATION: u32 = 4;

fn event(n: usize, destination: &str) -> NewEvent {
    let id = uuid::Uuid::now_v7().to_string();
    NewEvent {
        id: id.clone(),
        source: "smartlead".into(),
        event_type: "EMAIL_REPLIED".into(),
        lead_email: Some(format!("lead{n}@example.com")),
        campaign_id: None,
        config_hash: "bench".into(),
        payload: format!(r#"{{"event_id":"{id}","event_type":"EMAIL_REPLIED"}}"#),
        dedup_key: format!("{id}-{n}"),
        deliveries: vec![NewDelivery {
            rule: "bench".into(),
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

/// Adds `n` pending deliveries to `destination`, in commits of 1,000.
async fn add(store: &Store, destination: &str, n: usize) {
    let mut left = n;
    while left > 0 {
        let batch: Vec<NewEvent> = (0..left.min(1_000))
            .map(|i| event(i, destination))
            .collect();
        left -= batch.len();
        store.write(&batch, &[], &[]).await.unwrap();
    }
    store.pause().await;
}

/// Times `CLAIMS` claims with "busy" at its limit; each claim's deliveries go back to pending
/// so that the next finds the same work.
async fn measure(store: &Store) -> Vec<Duration> {
    let claim = Claim {
        limit: 32,
        per_destination: PER_DESTINATION,
        in_use: vec![("busy".into(), PER_DESTINATION)],
        in_flight: vec![],
    };
    let mut times = Vec::with_capacity(CLAIMS);
    for _ in 0..CLAIMS {
        let t = Instant::now();
        let out = store
            .write(&[], &[], std::slice::from_ref(&claim))
            .await
            .unwrap();
        times.push(t.elapsed());
        // The committer gives the writer connection back when idle; `release` needs it.
        store.pause().await;
        let ids: Vec<i64> = out.claimed[0].iter().map(|d| d.id).collect();
        assert!(
            !ids.is_empty() && out.claimed[0].iter().all(|d| d.destination != "busy"),
            "the claim takes the quiet destinations' deliveries and none of the busy one's"
        );
        store.release(&ids).await.unwrap();
    }
    times.sort();
    times
}

fn ms(times: &[Duration], p: f64) -> f64 {
    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
    times[i].as_secs_f64() * 1000.0
}

/// Measures with the store at `url`; `admin`, for PostgreSQL, flushes what the backlog wrote
/// before the claims are timed (a checkpoint of that bulk load would slow their commits).
async fn run(label: &str, url: &str, admin: Option<&sqlx::PgPool>) {
    let store = Store::open(url).await.unwrap();
    let mut backlog = 0;
    for &size in &BACKLOGS {
        add(&store, "busy", size - backlog).await;
        backlog = size;
        // The quiet destinations' deliveries come after the backlog in due order.
        tokio::time::sleep(Duration::from_millis(2)).await;
        for q in 0..QUIET {
            add(&store, &format!("quiet-{q}"), PER_DESTINATION as usize).await;
        }
        if let Some(admin) = admin {
            sqlx::raw_sql("CHECKPOINT").execute(admin).await.unwrap();
        }
        let times = measure(&store).await;
        println!(
            "{label:<22} {size:>9} {:>10.3} {:>10.3}",
            ms(&times, 0.5),
            ms(&times, 0.99)
        );
        // The quiet deliveries are claimed for good before the next size.
        let gone = Claim {
            limit: 1_000,
            per_destination: 1_000,
            in_use: vec![("busy".into(), 1_000)],
            in_flight: vec![],
        };
        store.write(&[], &[], &[gone]).await.unwrap();
        store.pause().await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{CLAIMS} claims per backlog; {QUIET} other destinations with {PER_DESTINATION} due each\n"
        );
        println!(
            "{:<22} {:>9} {:>10} {:>10}",
            "store", "backlog", "p50 ms", "p99 ms"
        );
        let dir = tempfile::tempdir().unwrap();
        run(
            "SQLite on disk",
            &format!("sqlite://{}/claim.db", dir.path().display()),
            None,
        )
        .await;
        if let Ok(url) = std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL") {
            let schema = Schema::create(&url, "sb_claim").await;
            run("PostgreSQL", &schema.url, Some(&schema.admin)).await;
            schema.drop().await;
        }
    });
}
