//! The SQLite backend: one file, WAL journal, migrations embedded at compile time.
//!
//! Every write goes through one connection, so writers queue in the process instead of
//! sleeping in SQLite's busy handler (the group committer keeps it between back-to-back commits,
//! for at most 20 ms at a time), and reads use their own connections (WAL lets them run
//! beside the writer). Intake commits with `synchronous=FULL`: the webhook's `200` means the
//! event is on disk. Events, attempt records and the workers' claims share group commits, so
//! one fsync serves many writes and the writer connection has a single user under load.

use super::rows::{
    AttemptRow, DUE_COLUMNS, DueRow, INSTANCE_COLUMNS, InstanceRow, VIEW_COLUMNS, ViewRow, after,
};
use super::{
    AttemptView, Claim, Counts, DeliveryView, Due, Filter, Finished, InstanceView, Intake, Millis,
    NewDelivery, NewEvent, Outcome, StoreError, now_ms,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Row, SqliteConnection, SqlitePool};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Most rows one multi-row statement writes (SQLite allows 32,766 bound values; a delivery
/// row binds 10).
const ROWS_PER_STATEMENT: usize = 500;

/// Longest the committer keeps the writer connection between back-to-back group commits
/// before letting the other writers (heartbeat, release, pruning) have their turn.
const HOLD_AT_MOST: Duration = Duration::from_millis(20);

/// A SQLite store.
#[derive(Clone)]
pub struct Sqlite {
    writer: SqlitePool,
    reader: SqlitePool,
    instance: String,
    /// The writer connection while group commits follow each other: returning it to the pool
    /// costs a round trip to SQLite's thread (sqlx checks it), once per commit otherwise.
    /// `None` for an in-memory store, whose readers share the writer.
    held: Option<Arc<Mutex<Option<Held>>>>,
}

/// The writer connection kept by the committer, and since when.
struct Held {
    conn: PoolConnection<sqlx::Sqlite>,
    since: Instant,
}

impl Sqlite {
    /// Opens `sqlite://PATH` (created if missing) or `sqlite::memory:`, and migrates it.
    pub async fn open(url: &str, instance: String) -> Result<Self, StoreError> {
        let memory = url.contains(":memory:");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Statement journals (multi-row statements inside a transaction) stay in memory.
            .pragma("temp_store", "memory")
            // Short, frequent checkpoints: each holds up one group commit for less time (the
            // default 1,000 pages put 15 ms checkpoints in the acknowledgement p99 under load).
            .pragma("wal_autocheckpoint", "150")
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // The one connection never idles long; a ping before each use would only add a
            // round trip to every group commit.
            .test_before_acquire(false)
            // Opened once, here: a connection's SQLite thread inherits the nice value of the
            // thread that opens it, and the workers' threads run at a lower priority.
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        // An in-memory database exists once per connection: there, everything shares the writer.
        let reader = if memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(3)
                .min_connections(3)
                .max_lifetime(None)
                .idle_timeout(None)
                // Readers answer small queries (status, history): a small page cache each.
                .connect_with(options.read_only(true).pragma("cache_size", "-512"))
                .await?
        };
        Ok(Sqlite {
            writer,
            reader,
            instance,
            held: (!memory).then(|| Arc::new(Mutex::new(None))),
        })
    }

    pub(super) async fn write(
        &self,
        events: &[NewEvent],
        done: &[Finished],
        claims: &[Claim],
    ) -> Result<Outcome, StoreError> {
        let now = now_ms();
        let Some(held) = &self.held else {
            let mut conn = self.writer.acquire().await?;
            return write(&mut conn, events, done, claims, now).await;
        };
        let mut held = held.lock().await;
        let mut kept = match held.take() {
            Some(h) => h,
            None => Held {
                conn: self.writer.acquire().await?,
                since: Instant::now(),
            },
        };
        // On an error the connection goes back to the pool (which rolls back what is left).
        let outcome = write(&mut kept.conn, events, done, claims, now).await?;
        if kept.since.elapsed() < HOLD_AT_MOST {
            *held = Some(kept);
        }
        Ok(outcome)
    }

    /// The committer has nothing more to write: the writer connection goes back to the pool.
    pub(super) async fn pause(&self) {
        if let Some(held) = &self.held {
            held.lock().await.take();
        }
    }

    pub(super) async fn recover(&self) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "UPDATE deliveries SET status = 'pending', updated_at = ? WHERE status = 'sending'",
        )
        .bind(now_ms())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n)
    }

    pub(super) async fn release(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        sqlx::query("UPDATE deliveries SET status = 'pending' WHERE status = 'sending' AND id IN (SELECT value FROM json_each(?))")
            .bind(ids)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub(super) async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.reader)
        .await?)
    }

    pub(super) async fn list(&self, f: &Filter) -> Result<Vec<DeliveryView>, StoreError> {
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE (?1 IS NULL OR d.status = ?1) AND (?2 IS NULL OR d.rule = ?2)
               AND (?3 IS NULL OR lower(e.lead_email) = lower(?3))
             ORDER BY d.id DESC LIMIT ?4"
        );
        let rows = sqlx::query_as::<_, ViewRow>(sqlx::AssertSqlSafe(sql))
            .bind(&f.status)
            .bind(&f.rule)
            .bind(&f.lead)
            .bind(f.limit.unwrap_or(100) as i64)
            .fetch_all(&self.reader)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut view = DeliveryView::from(r);
            if f.with_history {
                view.history = sqlx::query_as::<_, AttemptRow>(
                    "SELECT started_at, duration_ms, outcome, status_code, error FROM attempts WHERE delivery_id = ? ORDER BY id",
                )
                .bind(view.id)
                .fetch_all(&self.reader)
                .await?
                .into_iter()
                .map(AttemptView::from)
                .collect();
            }
            out.push(view);
        }
        Ok(out)
    }

    pub(super) async fn retry_dead(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let now = now_ms();
        let n = sqlx::query("UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1, updated_at = ?1 WHERE status = 'dead' AND (?2 IS NULL OR id = ?2)")
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(n)
    }

    pub(super) async fn discard(&self, id: i64) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE deliveries SET status = 'discarded', updated_at = ? WHERE status = 'dead' AND id = ?")
            .bind(now_ms())
            .bind(id)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    pub(super) async fn prune(
        &self,
        before: Millis,
        keys_before: Millis,
    ) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let deliveries = sqlx::query("DELETE FROM deliveries WHERE status IN ('delivered', 'discarded', 'skipped') AND updated_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let events = sqlx::query("DELETE FROM events WHERE received_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM intake_keys WHERE created_at < ?")
            .bind(keys_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deliveries + events)
    }

    pub(super) async fn counts(&self) -> Result<Counts, StoreError> {
        let r = sqlx::query(
            "SELECT
                COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'sending'), 0), COALESCE(SUM(status = 'dead'), 0),
                MIN(CASE WHEN status = 'pending' THEN created_at END)
             FROM deliveries",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(Counts {
            pending: r.get::<i64, _>(0) as u64,
            sending: r.get::<i64, _>(1) as u64,
            dead: r.get::<i64, _>(2) as u64,
            oldest_pending_ms: r.get(3),
        })
    }

    pub(super) async fn heartbeat(
        &self,
        listen: &str,
        config_hash: &str,
        _sending: &[i64],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO instances (id, listen, config_hash, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (id) DO UPDATE SET listen = ?2, config_hash = ?3, heartbeat_at = ?4",
        )
        .bind(&self.instance)
        .bind(listen)
        .bind(config_hash)
        .bind(now)
        .execute(&self.writer)
        .await?;
        sqlx::query("DELETE FROM instances WHERE heartbeat_at < ?")
            .bind(now - 3_600_000)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub(super) async fn instances(
        &self,
        alive_since: Millis,
    ) -> Result<Vec<InstanceView>, StoreError> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE heartbeat_at >= ? ORDER BY started_at"
        );
        let rows = sqlx::query_as::<_, InstanceRow>(sqlx::AssertSqlSafe(sql))
            .bind(alive_since)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.into_iter().map(|r| r.view(&self.instance)).collect())
    }

    pub(super) async fn listen(
        &self,
        _wake: Box<dyn Fn() + Send + Sync>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One group commit: events, attempt records, then claims, in one transaction.
async fn write(
    conn: &mut SqliteConnection,
    events: &[NewEvent],
    done: &[Finished],
    claims: &[Claim],
    now: Millis,
) -> Result<Outcome, StoreError> {
    let mut tx = conn.begin().await?;
    let intakes = accept(&mut tx, events, now).await?;
    finish(&mut tx, done, now).await?;
    let mut claimed = Vec::with_capacity(claims.len());
    for c in claims {
        claimed.push(claim(&mut tx, c, now).await?);
    }
    tx.commit().await?;
    Ok(Outcome { intakes, claimed })
}

/// Records events (keys, events, deliveries) in a few multi-row statements.
async fn accept(
    tx: &mut SqliteConnection,
    events: &[NewEvent],
    now: Millis,
) -> Result<Vec<Intake>, StoreError> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    // The keys that were new: their events are accepted, the others are repeats.
    let mut fresh = HashSet::with_capacity(events.len());
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO intake_keys (key, event_id, created_at) ",
        );
        q.push_values(chunk, |mut row, e| {
            row.push_bind(&e.dedup_key).push_bind(&e.id).push_bind(now);
        });
        q.push(" ON CONFLICT (key) DO NOTHING RETURNING event_id");
        let ids: Vec<String> = q
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
        fresh.extend(ids);
    }
    let repeats: Vec<&NewEvent> = events.iter().filter(|e| !fresh.contains(&e.id)).collect();
    let mut first = HashMap::new();
    for chunk in repeats.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT key, event_id FROM intake_keys WHERE key IN (",
        );
        let mut keys = q.separated(", ");
        for e in chunk {
            keys.push_bind(&e.dedup_key);
        }
        q.push(")");
        let rows: Vec<(String, String)> = q
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
        first.extend(rows);
    }
    let accepted: Vec<&NewEvent> = events.iter().filter(|e| fresh.contains(&e.id)).collect();
    for chunk in accepted.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO events (id, source, event_type, lead_email, received_at, config_hash, payload) ",
        );
        q.push_values(chunk, |mut row, e| {
            row.push_bind(&e.id)
                .push_bind(&e.source)
                .push_bind(&e.event_type)
                .push_bind(&e.lead_email)
                .push_bind(now)
                .push_bind(&e.config_hash)
                .push_bind(&e.payload);
        });
        q.build().persistent(false).execute(&mut *tx).await?;
    }
    let rows: Vec<(&NewEvent, &NewDelivery)> = accepted
        .iter()
        .flat_map(|e| e.deliveries.iter().map(move |d| (*e, d)))
        .collect();
    // Ids are assigned in the order the rows are given (one writer, AUTOINCREMENT), so the
    // returned ids, sorted, line up with `rows`.
    let mut ids: Vec<i64> = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination, status, attempts, next_attempt_at, created_at, updated_at) ",
        );
        q.push_values(chunk, |mut row, (e, d)| {
            row.push_bind(&e.id)
                .push_bind(&d.rule)
                .push_bind(d.action_index as i64)
                .push_bind(&d.action_kind)
                .push_bind(&d.destination)
                .push_bind(if e.claimed { "sending" } else { "pending" })
                .push_bind(0_i64)
                .push_bind(now)
                .push_bind(now)
                .push_bind(now);
        });
        q.push(" RETURNING id");
        let mut chunk_ids: Vec<i64> = q
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
        chunk_ids.sort_unstable();
        ids.extend(chunk_ids);
    }
    let mut ids = ids.into_iter();
    Ok(events
        .iter()
        .map(|e| {
            if fresh.remove(&e.id) {
                Intake::Accepted(ids.by_ref().take(e.deliveries.len()).collect())
            } else {
                Intake::Duplicate(first.get(&e.dedup_key).cloned().unwrap_or_default())
            }
        })
        .collect())
}

/// Records attempts and moves their deliveries on, in two multi-row statements per chunk.
async fn finish(
    tx: &mut SqliteConnection,
    done: &[Finished],
    now: Millis,
) -> Result<(), StoreError> {
    for chunk in done.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO attempts (delivery_id, started_at, duration_ms, outcome, status_code, error) ",
        );
        q.push_values(chunk, |mut row, f| {
            let (_, outcome, _) = after(&f.next, now);
            row.push_bind(f.id)
                .push_bind(f.attempt.started_at)
                .push_bind(f.attempt.duration_ms)
                .push_bind(outcome)
                .push_bind(f.attempt.status_code.map(i64::from))
                .push_bind(&f.attempt.error);
        });
        q.build().persistent(false).execute(&mut *tx).await?;
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE deliveries SET status = v.column2, attempts = attempts + 1, next_attempt_at = v.column3, last_error = COALESCE(v.column4, last_error), updated_at = ",
        );
        q.push_bind(now);
        q.push(" FROM (");
        q.push_values(chunk, |mut row, f| {
            let (status, _, next_at) = after(&f.next, now);
            row.push_bind(f.id)
                .push_bind(status)
                .push_bind(next_at)
                .push_bind(&f.attempt.error);
        });
        q.push(") AS v WHERE deliveries.id = v.column1");
        q.build().persistent(false).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Marks up to `c.limit` due deliveries as sending (none of `c.busy`'s destinations, none of
/// `c.in_flight`) and reads them, inside the caller's transaction.
async fn claim(tx: &mut SqliteConnection, c: &Claim, now: Millis) -> Result<Vec<Due>, StoreError> {
    if c.limit == 0 {
        return Ok(vec![]);
    }
    let busy = serde_json::to_string(&c.busy).unwrap_or_else(|_| "[]".into());
    let in_flight = serde_json::to_string(&c.in_flight).unwrap_or_else(|_| "[]".into());
    let rows = sqlx::query(
        "UPDATE deliveries SET status = 'sending', updated_at = ?1
         WHERE id IN (
             SELECT id FROM deliveries
             WHERE status = 'pending' AND next_attempt_at <= ?1
               AND destination NOT IN (SELECT value FROM json_each(?2))
               AND id NOT IN (SELECT value FROM json_each(?4))
             ORDER BY next_attempt_at, id LIMIT ?3)
         RETURNING id",
    )
    .bind(now)
    .bind(&busy)
    .bind(c.limit as i64)
    .bind(&in_flight)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let sql = format!(
        "SELECT {DUE_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.id IN (SELECT value FROM json_each(?)) ORDER BY d.id"
    );
    let due: Vec<Due> = sqlx::query_as::<_, DueRow>(sqlx::AssertSqlSafe(sql))
        .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(Due::from)
        .collect();
    Ok(due)
}
