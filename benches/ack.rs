//! Acknowledgement benchmark: `cargo bench --bench ack`.
//!
//! Serves the real router in-process on 127.0.0.1 and drives `POST /webhooks/smartlead` with 50
//! concurrent connections for a fixed time, each request a distinct 600-byte-class EMAIL_REPLY
//! body. Reports acknowledged events per second and p50/p99 acknowledgement latency with the
//! SQLite store on disk (the 200 means committed, synchronous=FULL) next to the same server with
//! storage in memory (`sqlite::memory:`). The load generator shares the machine's cores with the
//! router, so absolute figures are lower than with an external load tool; the ratio is the point.

#[path = "support/pg_schema.rs"]
mod pg_schema;

use pg_schema::Schema;
use std::time::{Duration, Instant};
use switchboard::Options;
use switchboard::config::ConfigPaths;

const CONNECTIONS: usize = 50;
const DURATION: Duration = Duration::from_secs(8);
const BODY: &str = include_str!("../tests/fixtures/smartlead/real_13_email_reply.json");

struct Result {
    label: String,
    acknowledged: usize,
    errors: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

async fn run(label: &str, store_url: &str) -> Result {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "rules:\n  - name: reply\n    when: { event: EMAIL_REPLIED }\n    actions:\n      - log: { message: 'Reply from {{lead.email}}' }\n",
    )
    .unwrap();
    let url = store_url.replace("DIR", &dir.path().display().to_string());
    let paths = ConfigPaths {
        rules: dir.path().join("rules.yaml"),
        templates: dir.path().join("templates"),
    };
    let mut options = Options::new(paths, url);
    options.rate_limit = 0;
    options.ready_max_pending = u64::MAX;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(switchboard::run(options, listener, async {
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
    let template: serde_json::Value = serde_json::from_str(BODY).unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let target = format!("http://{addr}/webhooks/smartlead");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (client, target, template, run) = (
            client.clone(),
            target.clone(),
            template.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut n) = (Vec::new(), 0usize, 0usize);
            while start.elapsed() < DURATION {
                let mut body = template.clone();
                body["stats_id"] = serde_json::Value::String(format!("bench-{run}-{c}-{n}"));
                n += 1;
                let t = Instant::now();
                match client.post(&target).body(body.to_string()).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    server.await.unwrap().expect("the router ran");
    latencies.sort();
    Result {
        label: label.into(),
        acknowledged: latencies.len(),
        errors,
        seconds,
        latencies,
    }
}

fn pct(l: &[Duration], p: f64) -> f64 {
    if l.is_empty() {
        return 0.0;
    }
    let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
    l[i].as_secs_f64() * 1000.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let mut results = vec![
            run(
                "SQLite on disk (durable: 200 = committed)",
                "sqlite://DIR/bench.db",
            )
            .await,
            run("storage in memory (sqlite::memory:)", "sqlite::memory:").await,
        ];
        // PostgreSQL when a server is named: SWITCHBOARD_BENCH_POSTGRES_URL=postgres://…
        // Each run gets a schema of its own, dropped after: a backlog left by an earlier run
        // would slow this one down.
        if let Ok(url) = std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL") {
            let schema = Schema::create(&url, "sb_bench").await;
            results.push(run("PostgreSQL (durable: 200 = committed)", &schema.url).await);
            schema.drop().await;
        }
        results
    });
    println!(
        "\n{CONNECTIONS} connections, {} s each, distinct EMAIL_REPLY bodies\n",
        DURATION.as_secs()
    );
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>7}",
        "store", "events/s", "p50 ms", "p99 ms", "errors"
    );
    for r in &results {
        println!(
            "{:<44} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            r.label,
            r.acknowledged as f64 / r.seconds,
            pct(&r.latencies, 0.50),
            pct(&r.latencies, 0.99),
            r.errors
        );
    }
    let ratio = results[0].acknowledged as f64
        / results[0].seconds
        / (results[1].acknowledged as f64 / results[1].seconds);
    println!("\ndurable / in-memory throughput: {:.0} %", ratio * 100.0);
}
