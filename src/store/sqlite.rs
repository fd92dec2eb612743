//! The SQLite backend: one file, WAL journal, migrations embedded at compile time.
//!
//! Every write goes through one connection, so writers queue in the process instead of
//! sleeping in SQLite's busy handler (the group committer keeps it between back-to-back commits,
//! for at most 20 ms at a time), and reads use their own connections (WAL lets them run
//! beside the writer). Intake commits with `synchronous=FULL`: the webhook's `200` means the
//! event is on disk. Events, attempt records and the workers' claims share group commits, so
//! one fsync serves many writes and the writer connection has a single user under load. A group
//! commit goes to SQLite's thread as one script of statements (one round trip, not one per
//! statement). A connection of its own copies the WAL into the database file shortly after
//! commits (checkpoints), so that work stays out of the group commits intake waits for.

use super::rows::{
    AttemptRow, DueRow, INSTANCE_COLUMNS, InstanceRow, VIEW_COLUMNS, ViewRow, after,
};
use super::{
    AttemptView, Claim, Counts, DeliveryView, Due, Filter, Finished, InstanceView, Intake, Millis,
    NewEvent, Outcome, StoreError, now_ms,
};
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Either, Executor, FromRow, Row, SqliteConnection, SqlitePool};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

/// Longest the committer keeps the writer connection between back-to-back group commits
/// before letting the other writers (heartbeat, release, pruning) have their turn.
const HOLD_AT_MOST: Duration = Duration::from_millis(20);

/// How long the checkpointer waits after a commit before copying the WAL into the database:
/// one checkpoint covers the commits of that time.
const CHECKPOINT_AFTER: Duration = Duration::from_millis(20);

/// How often the checkpointer runs when no commit wakes it (a checkpoint with nothing to copy
/// costs next to nothing).
const CHECKPOINT_IDLE: Duration = Duration::from_secs(5);

/// WAL pages past which a commit checkpoints by itself, on the writer connection: a backstop
/// for a checkpointer that cannot keep up (a checkpoint that runs beside the writer can lag
/// behind it for as long as commits follow each other, and the WAL can only start over once
/// it has caught up).
const WAL_BACKSTOP_PAGES: &str = "2000";

/// What a claim reads of each delivery it takes (the columns of [`DueRow`]), from the
/// `RETURNING` clause of its `UPDATE`.
const DUE_RETURNING: &str = "id, event_id, rule, action_index, destination, attempts,
    (SELECT e.config_hash FROM events e WHERE e.id = deliveries.event_id) AS config_hash,
    (SELECT e.payload FROM events e WHERE e.id = deliveries.event_id) AS payload,
    (SELECT e.received_at FROM events e WHERE e.id = deliveries.event_id) AS received_at";

/// A SQLite store.
#[derive(Clone)]
pub struct Sqlite {
    writer: SqlitePool,
    reader: SqlitePool,
    instance: String,
    /// How long a delivery may stay `sending` without this instance sending it (see
    /// [`Sqlite::heartbeat`]).
    lease: Duration,
    /// The writer connection while group commits follow each other: returning it to the pool
    /// costs a round trip to SQLite's thread (sqlx checks it), once per commit otherwise.
    /// `None` for an in-memory store, whose readers share the writer.
    held: Option<Arc<Mutex<Option<Held>>>>,
    /// Wakes the checkpointer after a commit (`None` for an in-memory store, which has no WAL).
    /// The checkpointer stops once every clone of the store is gone.
    checkpoint: Option<mpsc::Sender<()>>,
}

/// The writer connection kept by the committer, and since when.
struct Held {
    conn: PoolConnection<sqlx::Sqlite>,
    since: Instant,
}

impl Sqlite {
    /// Opens `sqlite://PATH` (created if missing) or `sqlite::memory:`, and migrates it.
    pub async fn open(url: &str, instance: String, lease: Duration) -> Result<Self, StoreError> {
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
            // The checkpointer copies the WAL into the database beside the writer; a commit
            // checkpoints by itself only when the WAL has grown past this (inline, a
            // checkpoint held up one group commit: the default of 1,000 pages put 15 ms ones
            // in the acknowledgement p99 under load).
            .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES)
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
            // A group commit's rows (keys, new ids, claimed deliveries) come back in one go
            // instead of in chunks of 50, each a wait for the committer to make room.
            .connect_with(options.clone().row_buffer_size(1024))
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
                .connect_with(options.clone().read_only(true).pragma("cache_size", "-512"))
                .await?
        };
        let checkpoint = if memory {
            None
        } else {
            Some(start_checkpointer(options.connect().await?))
        };
        Ok(Sqlite {
            writer,
            reader,
            instance,
            lease,
            held: (!memory).then(|| Arc::new(Mutex::new(None))),
            checkpoint,
        })
    }

    pub(super) async fn write(
        &self,
        events: &[NewEvent],
        done: &[Finished],
        claims: &[Claim],
    ) -> Result<Outcome, StoreError> {
        // The time is read once the writer connection is ours: rows written `sending` carry
        // it, and the heartbeat counts their lease from it.
        let Some(held) = &self.held else {
            let mut conn = self.writer.acquire().await?;
            return write_parts(&mut conn, events, done, claims, now_ms()).await;
        };
        let mut held = held.lock().await;
        let mut kept = match held.take() {
            Some(h) => h,
            None => Held {
                conn: self.writer.acquire().await?,
                since: Instant::now(),
            },
        };
        // On an error the connection goes back to the pool.
        let outcome = write_parts(&mut kept.conn, events, done, claims, now_ms()).await?;
        if kept.since.elapsed() < HOLD_AT_MOST {
            *held = Some(kept);
        }
        if let Some(checkpoint) = &self.checkpoint {
            // Full: a checkpoint is already due, and it will cover this commit too.
            let _ = checkpoint.try_send(());
        }
        Ok(outcome)
    }

    /// The committer has nothing more to write: the writer connection goes back to the pool.
    pub(super) async fn pause(&self) {
        if let Some(held) = &self.held {
            held.lock().await.take();
        }
    }

    /// At start nothing is in flight yet: every `sending` delivery goes back to pending.
    pub(super) async fn recover(&self) -> Result<u64, StoreError> {
        self.back_to_pending(Millis::MAX, &[]).await
    }

    /// Puts back to pending the `sending` deliveries that became so before `before` and are
    /// not among `in_flight`.
    async fn back_to_pending(&self, before: Millis, in_flight: &[i64]) -> Result<u64, StoreError> {
        let ids = serde_json::to_string(in_flight).unwrap_or_else(|_| "[]".into());
        let n = sqlx::query(
            "UPDATE deliveries SET status = 'pending', updated_at = ?1
             WHERE status = 'sending' AND updated_at < ?2
               AND id NOT IN (SELECT value FROM json_each(?3))",
        )
        .bind(now_ms())
        .bind(before)
        .bind(ids)
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

    /// The earliest of each destination's first pending delivery (one index lookup each).
    pub(super) async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        let sql = format!(
            "WITH RECURSIVE {PENDING_DESTINATIONS}
             SELECT MIN((SELECT MIN(next_attempt_at) FROM deliveries
                         WHERE status = 'pending' AND destination = dest))
             FROM dests WHERE dest IS NOT NULL"
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.reader)
            .await?)
    }

    pub(super) async fn list(&self, f: &Filter) -> Result<Vec<DeliveryView>, StoreError> {
        // `CAST`: a bare `LIMIT ?` is prepared again at every bind (see [`script`]).
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE (?1 IS NULL OR d.status = ?1) AND (?2 IS NULL OR d.rule = ?2)
               AND (?3 IS NULL OR lower(e.lead_email) = lower(?3))
             ORDER BY d.id DESC LIMIT CAST(?4 AS INTEGER)"
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

    /// Records the instance, and puts back to pending the deliveries left `sending` that this
    /// instance is not sending (`sending` lists those it is, handed over by intake or claimed),
    /// once a lease has passed since they became `sending`: a send whose task panicked, an
    /// attempt that could not be recorded. They used to wait for the next start. The lease
    /// also covers the moment between a claim's commit and its deliveries counting as in
    /// flight.
    pub(super) async fn heartbeat(
        &self,
        listen: &str,
        config_hash: &str,
        sending: &[i64],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let stranded = self
            .back_to_pending(now - self.lease.as_millis() as i64, sending)
            .await?;
        if stranded > 0 {
            tracing::warn!(
                deliveries = stranded,
                "Deliveries left in flight by a send that did not finish go back to the queue."
            );
        }
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

/// Starts the checkpointer on `conn`: [`CHECKPOINT_AFTER`] after a commit wakes it, and every
/// [`CHECKPOINT_IDLE`] otherwise, it copies the WAL into the database with a passive
/// checkpoint, which runs beside the writer and never waits for it. Returns what wakes it; it
/// stops (and closes `conn`) once every sender is gone.
fn start_checkpointer(mut conn: SqliteConnection) -> mpsc::Sender<()> {
    let (wake, mut woken) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            match tokio::time::timeout(CHECKPOINT_IDLE, woken.recv()).await {
                // A commit: wait a little, and the commits of the wait are covered too.
                Ok(Some(())) => {
                    tokio::time::sleep(CHECKPOINT_AFTER).await;
                    while woken.try_recv().is_ok() {}
                }
                // Every clone of the store is gone.
                Ok(None) => break,
                // No commit for a while: the other writes (heartbeats, releases, pruning) are
                // copied too, so an idle router's WAL does not creep up to the backstop.
                Err(_) => {}
            }
            // On an error it tries again at the next commit or idle turn; meanwhile the
            // backstop bounds the WAL. One warning per run of failures, not one per commit.
            match sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("The store's WAL is checkpointed again.");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "Cannot checkpoint the store's WAL; commits go on, and checkpoint by themselves once it is long.");
                }
                Err(_) => {}
            }
        }
    });
    wake
}

/// Most payload bytes one group commit carries. SQLite refuses a bound value past 1 GB, and
/// the payloads of a batch travel as one blob: 512 bodies of a megabyte, with what the
/// canonical event adds, could pass that. A bigger batch is written as several commits, in
/// order.
const PAYLOAD_BYTES_PER_COMMIT: usize = 64 << 20;

/// Writes a batch in as many group commits as its payloads need (see
/// [`PAYLOAD_BYTES_PER_COMMIT`]; nearly always one). The records and claims go with the first.
async fn write_parts(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    events: &[NewEvent],
    done: &[Finished],
    claims: &[Claim],
    now: Millis,
) -> Result<Outcome, StoreError> {
    let mut outcome = Outcome::default();
    for (n, part) in parts(events, PAYLOAD_BYTES_PER_COMMIT)
        .into_iter()
        .enumerate()
    {
        let (done, claims) = if n == 0 {
            (done, claims)
        } else {
            (&[][..], &[][..])
        };
        let written = write(conn, part, done, claims, now).await?;
        outcome.intakes.extend(written.intakes);
        if n == 0 {
            outcome.claimed = written.claimed;
        }
    }
    Ok(outcome)
}

/// `events` cut into runs of at most `bytes` of payload (one event at least per run; one empty
/// run when there are no events).
fn parts(events: &[NewEvent], bytes: usize) -> Vec<&[NewEvent]> {
    let mut parts = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        if i > start && size + e.payload.len() > bytes {
            parts.push(&events[start..i]);
            (start, size) = (i, 0);
        }
        size += e.payload.len();
    }
    parts.push(&events[start..]);
    parts
}

/// One group commit (events, attempt records, then claims, in one transaction) sent to
/// SQLite's thread as one script: one round trip, where a statement at a time took a dozen.
/// The rows travel as JSON arrays, so the script's text depends only on the number of claims
/// and SQLite prepares it once (parsing a statement of a few hundred values took a fifth of
/// the writer's time). Statements that depend on an earlier one's outcome say so in SQL (an
/// event is written when its key holds its id; a delivery when its event was written).
///
/// sqlx runs a query string of several statements on SQLite, binding the `?` in order across
/// them; its documentation calls that deprecated (launchbadge/sqlx#3108). Should a release drop
/// it, every group commit fails at once (the tests too), and the statements go back to one call
/// each inside one transaction.
async fn write(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    events: &[NewEvent],
    done: &[Finished],
    claims: &[Claim],
    now: Millis,
) -> Result<Outcome, StoreError> {
    let (sql, yields) = script(claims.len());
    let keys_json = json(events.iter().map(|e| (&e.dedup_key, &e.id)));
    // The payloads (JSON text themselves) go as one blob, each row saying where its own is:
    // inside the JSON array they would be escaped here and unescaped by SQLite, which took a
    // tenth of intake's CPU.
    let mut payloads = Vec::with_capacity(events.iter().map(|e| e.payload.len()).sum());
    let events_json = json(events.iter().map(|e| {
        let start = payloads.len() + 1;
        payloads.extend_from_slice(e.payload.as_bytes());
        (
            &e.id,
            &e.source,
            &e.event_type,
            &e.lead_email,
            &e.config_hash,
            start,
            e.payload.len(),
            &e.dedup_key,
        )
    }));
    let deliveries_json = json(events.iter().flat_map(|e| {
        e.deliveries.iter().map(move |d| {
            (
                &e.id,
                &d.rule,
                d.action_index,
                &d.action_kind,
                &d.destination,
                if e.claimed { "sending" } else { "pending" },
            )
        })
    }));
    let records_json = json(done.iter().map(|f| {
        let (status, outcome, next_at) = after(&f.next, now);
        (
            f.id,
            f.attempt.started_at,
            f.attempt.duration_ms,
            outcome,
            f.attempt.status_code,
            &f.attempt.error,
            status,
            next_at,
        )
    }));
    // In the order the script's `?` appear.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(&keys_json)
        .bind(&keys_json)
        .bind(now)
        .bind(&payloads[..])
        .bind(&events_json)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(&deliveries_json)
        .bind(&records_json)
        .bind(now)
        .bind(&records_json);
    for c in claims {
        query = query
            .bind(now)
            .bind(i64::from(c.per_destination))
            .bind(json(c.in_use.iter()))
            .bind(now)
            .bind(json(c.in_flight.iter()))
            .bind(i64::from(c.per_destination))
            .bind(i64::from(c.limit));
    }
    // Rows are kept as they come and read once the script has run to its end: an error while
    // it runs means nothing was committed, and the rollback below is right.
    let mut rows: Vec<(usize, SqliteRow)> = Vec::new();
    let run = async {
        let mut results = conn.fetch_many(query);
        let mut at = 0;
        while let Some(result) = results.try_next().await? {
            match result {
                Either::Left(_) => at += 1,
                Either::Right(row) => rows.push((at, row)),
            }
        }
        Ok::<_, sqlx::Error>(at)
    };
    match run.await {
        Ok(statements) if statements == yields.len() => {}
        outcome => {
            // Whatever part ran is undone; a connection that cannot say so is not used again.
            if let Err(e) = sqlx::raw_sql("ROLLBACK").execute(&mut **conn).await
                && !e.to_string().contains("no transaction is active")
            {
                conn.close_on_drop();
            }
            return Err(match outcome {
                Err(e) => e.into(),
                Ok(statements) => StoreError::Database(sqlx::Error::Protocol(format!(
                    "a group commit ran {statements} of its {} statements",
                    yields.len()
                ))),
            });
        }
    }
    // Committed. A row that cannot be read now would mean a schema this code does not know.
    let mut keys = HashMap::with_capacity(events.len());
    let mut created: Vec<i64> = Vec::new();
    let mut claimed: Vec<Vec<Due>> = vec![Vec::new(); claims.len()];
    for (at, row) in rows {
        match yields.get(at) {
            Some(Yields::Keys) => {
                keys.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
            }
            Some(Yields::Created) => created.push(row.try_get(0)?),
            Some(Yields::Claimed(i)) => claimed[*i].push(DueRow::from_row(&row)?.into()),
            Some(Yields::Nothing) | None => {}
        }
    }
    // Ids are assigned in the order the rows are given (one writer, AUTOINCREMENT), so the
    // returned ids, sorted, line up with the accepted events' deliveries.
    created.sort_unstable();
    let mut created = created.into_iter();
    let intakes = events
        .iter()
        .map(|e| match keys.get(&e.dedup_key) {
            Some(holder) if *holder == e.id => {
                Intake::Accepted(created.by_ref().take(e.deliveries.len()).collect())
            }
            holder => Intake::Duplicate(holder.cloned().unwrap_or_default()),
        })
        .collect();
    for due in &mut claimed {
        due.sort_unstable_by_key(|d| d.id);
    }
    Ok(Outcome { intakes, claimed })
}

/// Rows as one JSON array of arrays (or of values), the way the script's statements read them.
fn json<T: serde::Serialize>(rows: impl Iterator<Item = T>) -> String {
    let rows: Vec<T> = rows.collect();
    serde_json::to_string(&rows).expect("rows serialise")
}

/// The rows a statement of a group commit's script gives back.
#[derive(Debug, Clone, Copy)]
enum Yields {
    /// None that matter.
    Nothing,
    /// `(key, event_id)`: the event that holds each key of the batch.
    Keys,
    /// The ids of the deliveries created.
    Created,
    /// The deliveries taken by the claim at this position.
    Claimed(usize),
}

/// `dests (dest)`: each destination with deliveries pending, then one `NULL`, found by skipping
/// through `deliveries_due_by_destination` (status, destination, next_attempt_at): one lookup
/// per destination, however many deliveries each has waiting (a loose index scan). Named in
/// `INDEXED BY` so that the plan does not depend on statistics SQLite may not have.
const PENDING_DESTINATIONS: &str = "dests (dest) AS (
                    SELECT (SELECT destination
                            FROM deliveries INDEXED BY deliveries_due_by_destination
                            WHERE status = 'pending' ORDER BY destination LIMIT 1)
                    UNION ALL
                    SELECT (SELECT destination
                            FROM deliveries INDEXED BY deliveries_due_by_destination
                            WHERE status = 'pending' AND destination > dests.dest
                            ORDER BY destination LIMIT 1)
                    FROM dests WHERE dests.dest IS NOT NULL)";

/// The statements of a group commit with `claims` claims, and what each yields. Their values
/// come as JSON arrays (`jsonb_each` reads each array once; `->>` picks a field):
/// keys `[key, event_id]`, events `[id, source, event_type, lead_email, config_hash,
/// payload_start, payload_length, key]` (the payloads are one blob of their own; the start
/// counts from 1, in bytes), deliveries `[event_id, rule, action_index, action_kind,
/// destination, status]`, records `[delivery_id, started_at, duration_ms, outcome,
/// status_code, error, status, next_attempt_at]`; a claim's sends in flight `[destination,
/// count]`, and its deliveries in flight an array of ids.
///
/// A claim's limits are written `LIMIT CAST(? AS INTEGER)`: SQLite plans a bare `LIMIT ?` with
/// the value bound at the time and prepares the statement again whenever it is bound anew,
/// which was every claim (3 % of the router's CPU while delivering).
fn script(claims: usize) -> (String, Vec<Yields>) {
    let mut sql = String::from(
        "BEGIN IMMEDIATE;
        INSERT INTO intake_keys (key, event_id, created_at)
            SELECT j.value->>0, j.value->>1, ? FROM jsonb_each(?) AS j
            WHERE true ON CONFLICT (key) DO NOTHING;
        SELECT key, event_id FROM intake_keys
            WHERE key IN (SELECT value->>0 FROM jsonb_each(?));
        INSERT INTO events (id, source, event_type, lead_email, received_at, config_hash, payload)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, ?, j.value->>4,
                   CAST(substr(?, j.value->>5, j.value->>6) AS TEXT)
            FROM jsonb_each(?) AS j
            WHERE EXISTS (SELECT 1 FROM intake_keys k
                          WHERE k.key = j.value->>7 AND k.event_id = j.value->>0);
        INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination, status,
                                attempts, next_attempt_at, created_at, updated_at)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                   0, ?, ?, ?
            FROM jsonb_each(?) AS j
            WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = j.value->>0)
            RETURNING id;
        INSERT INTO attempts (delivery_id, started_at, duration_ms, outcome, status_code, error)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5
            FROM jsonb_each(?) AS j;
        UPDATE deliveries SET status = v.status, attempts = attempts + 1,
                next_attempt_at = v.next_at, last_error = COALESCE(v.error, last_error),
                updated_at = ?
            FROM (SELECT j.value->>0 AS id, j.value->>6 AS status, j.value->>7 AS next_at,
                         j.value->>5 AS error
                  FROM jsonb_each(?) AS j) AS v
            WHERE deliveries.id = v.id;",
    );
    let mut yields = vec![
        Yields::Nothing,
        Yields::Nothing,
        Yields::Keys,
        Yields::Nothing,
        Yields::Created,
        Yields::Nothing,
        Yields::Nothing,
    ];
    for i in 0..claims {
        sql.push_str(&format!(
            "
        UPDATE deliveries SET status = 'sending', updated_at = ?
            WHERE id IN (
                WITH RECURSIVE {PENDING_DESTINATIONS},
                rooms (dest, room) AS (
                    SELECT dest, ? - COALESCE(
                        (SELECT value->>1 FROM json_each(?) WHERE value->>0 = dest), 0)
                    FROM dests WHERE dest IS NOT NULL)
                SELECT id FROM (
                    SELECT d.id, d.next_attempt_at, r.room, row_number() OVER (
                               PARTITION BY d.destination ORDER BY d.next_attempt_at, d.id) AS n
                    FROM rooms AS r CROSS JOIN deliveries AS d ON d.id IN (
                        SELECT id FROM deliveries
                        WHERE status = 'pending' AND destination = r.dest
                          AND next_attempt_at <= ?
                          AND id NOT IN (SELECT value FROM json_each(?))
                        ORDER BY next_attempt_at, id LIMIT CAST(? AS INTEGER))
                    WHERE r.room > 0)
                WHERE n <= room ORDER BY next_attempt_at, id LIMIT CAST(? AS INTEGER))
            RETURNING {DUE_RETURNING};"
        ));
        yields.push(Yields::Claimed(i));
    }
    sql.push_str("\n        COMMIT;");
    yields.push(Yields::Nothing);
    (sql, yields)
}

#[cfg(test)]
mod tests {
    use super::{NewEvent, parts};

    fn event(bytes: usize) -> NewEvent {
        NewEvent {
            id: String::new(),
            source: String::new(),
            event_type: String::new(),
            lead_email: None,
            config_hash: String::new(),
            payload: "x".repeat(bytes),
            dedup_key: String::new(),
            deliveries: vec![],
            claimed: false,
        }
    }

    #[test]
    fn a_batch_is_cut_where_its_payloads_pass_the_limit() {
        let sizes = |events: &[NewEvent], limit| -> Vec<Vec<usize>> {
            parts(events, limit)
                .iter()
                .map(|p| p.iter().map(|e| e.payload.len()).collect())
                .collect()
        };
        let events: Vec<NewEvent> = [4, 4, 2, 9, 1, 1].into_iter().map(event).collect();
        assert_eq!(sizes(&events, 10), vec![vec![4, 4, 2], vec![9, 1], vec![1]]);
        // An event bigger than the limit goes alone; nothing is dropped.
        assert_eq!(
            sizes(&events, 3),
            vec![vec![4], vec![4], vec![2], vec![9], vec![1, 1]]
        );
        assert_eq!(sizes(&events, 100), vec![vec![4, 4, 2, 9, 1, 1]]);
        assert_eq!(sizes(&[], 10), vec![Vec::<usize>::new()]);
    }
}
