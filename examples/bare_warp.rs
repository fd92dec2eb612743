//! The baselines for `bench/run.sh`: `bare_warp 127.0.0.1:PORT [--sqlite FILE]`.
//!
//! A warp 0.4 server with the router's intake shape and none of its work: `POST
//! /webhooks/smartlead` reads the body (up to 1 MiB, as the router does), parses it as JSON and
//! answers `200 {"status":"received"}` (`400` for a body that is not JSON). `GET /healthz`
//! answers `ok` so the script can wait for it. Nothing is stored, matched or delivered: this is
//! the ceiling the durable router's acknowledgement throughput is compared with.
//!
//! With `--sqlite FILE` it is the reference point for durability alone: the same server
//! commits each body to a SQLite table (WAL, `synchronous=FULL`) before it answers `200`, with
//! commits grouped across concurrent requests (one statement and one transaction for whatever
//! has queued up while the previous commit was written; SQLite's own automatic checkpoints run
//! inside some of them), and answers `503` when a commit fails. The bodies reach SQLite as one
//! JSON array of strings, as a plain implementation would pass them. No canonical event, no
//! duplicate key, no rules, no deliveries: what the router does beyond this is its own work.

use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use std::net::SocketAddr;
use tokio::sync::{mpsc, oneshot};
use warp::Filter;
use warp::http::StatusCode;

/// Largest group commit (the router's is the same).
const MAX_BATCH: usize = 512;

/// A body waiting for its commit, and where to say whether it was committed.
type Queued = (bytes::Bytes, oneshot::Sender<bool>);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, sqlite) = match args.as_slice() {
        [addr] => (addr.parse::<SocketAddr>().ok(), None),
        [addr, flag, file] if flag == "--sqlite" => {
            (addr.parse::<SocketAddr>().ok(), Some(file.clone()))
        }
        _ => (None, None),
    };
    let Some(addr) = addr else {
        eprintln!("usage: bare_warp 127.0.0.1:PORT [--sqlite FILE]");
        std::process::exit(2);
    };
    let committer = match sqlite {
        Some(file) => Some(start_committer(&file).await),
        None => None,
    };
    let webhook = warp::post()
        .and(warp::path!("webhooks" / "smartlead"))
        .and(warp::body::content_length_limit(1024 * 1024))
        .and(warp::body::bytes())
        .then(move |body: bytes::Bytes| {
            let committer = committer.clone();
            async move {
                let (status, answer) = match serde_json::from_slice::<Value>(&body) {
                    Ok(Value::Object(_)) => match committer {
                        None => (StatusCode::OK, json!({"status": "received"})),
                        Some(tx) => commit(&tx, body).await,
                    },
                    _ => (
                        StatusCode::BAD_REQUEST,
                        json!({"error": "the body is not a JSON object"}),
                    ),
                };
                warp::reply::with_status(warp::reply::json(&answer), status)
            }
        });
    let healthz = warp::get().and(warp::path!("healthz")).map(|| "ok");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    eprintln!("bare_warp listening on http://{addr}");
    warp::serve(webhook.or(healthz))
        .incoming(listener)
        .run()
        .await;
}

/// Queues `body` for the next group commit and waits for it: `200` once it is on disk.
async fn commit(tx: &mpsc::Sender<Queued>, body: bytes::Bytes) -> (StatusCode, Value) {
    let (reply, committed) = oneshot::channel();
    let stored = tx.send((body, reply)).await.is_ok() && committed.await == Ok(true);
    if stored {
        (StatusCode::OK, json!({"status": "received"}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "the body could not be stored"}),
        )
    }
}

/// Opens (creating) the SQLite file and starts the task that commits queued bodies in groups.
async fn start_committer(file: &str) -> mpsc::Sender<Queued> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = sqlx::pool::PoolOptions::<sqlx::Sqlite>::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("cannot open {file}: {e}"));
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bodies (
            id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL, body TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap_or_else(|e| panic!("cannot create the table in {file}: {e}"));
    let (tx, rx) = mpsc::channel(MAX_BATCH * 8);
    tokio::spawn(group_commits(pool, rx));
    tx
}

/// Writes whatever has queued up as one statement (a transaction of its own), answers
/// each request, and goes on while the next batch queues up behind it.
async fn group_commits(pool: SqlitePool, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let bodies: Vec<&str> = batch
            .iter()
            .map(|(body, _)| std::str::from_utf8(body).expect("serde_json parsed it: UTF-8"))
            .collect();
        let array = serde_json::to_string(&bodies).expect("strings serialise");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let written =
            sqlx::query("INSERT INTO bodies (received_at, body) SELECT ?, value FROM json_each(?)")
                .bind(now)
                .bind(array)
                .execute(&pool)
                .await;
        if let Err(e) = &written {
            eprintln!(
                "bare_warp: a group commit of {} bodies failed: {e}",
                batch.len()
            );
        }
        for (_, reply) in batch.drain(..) {
            let _ = reply.send(written.is_ok());
        }
    }
}
