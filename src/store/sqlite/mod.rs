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

mod checkpoint;
mod group;

use super::memory::{Cell, Slot, Span};
use super::rows::{AttemptRow, INSTANCE_COLUMNS, InstanceRow, VIEW_COLUMNS, ViewRow};
use super::{
    AttemptView, Claim, CommitOutcome, Counts, DeliveryStatus, DeliveryView, Filter, Finished,
    InstanceView, Millis, NewEvent, SilenceRow, StoreError, now_ms,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Row, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

/// Longest the committer keeps the writer connection between back-to-back group commits
/// before letting the other writers (heartbeat, release, pruning) have their turn.
const HOLD_AT_MOST: Duration = Duration::from_millis(20);

/// WAL pages past which a commit checkpoints by itself, on the writer connection: a backstop
/// for a checkpointer that cannot keep up (a checkpoint that runs beside the writer can lag
/// behind it for as long as commits follow each other, and the WAL can only start over once
/// it has caught up).
const WAL_BACKSTOP_PAGES: &str = "2000";

/// A SQLite store.
#[derive(Clone)]
pub struct Sqlite {
    pub(in crate::store) writer: SqlitePool,
    pub(in crate::store) reader: SqlitePool,
    instance: String,
    /// How long a delivery may stay `sending` without this instance sending it (see
    /// [`Sqlite::heartbeat`]).
    lease: Duration,
    /// The writer connection while group commits follow each other: returning it to the pool
    /// costs a round trip to SQLite's thread (sqlx checks it), once per commit otherwise.
    /// `None` for an in-memory store, whose readers share the writer.
    held: Option<Arc<Mutex<Option<Held>>>>,
    /// The database file as opened (`None` in memory): a file deleted or replaced under the
    /// router is noticed at the next write or probe.
    file: Option<Arc<FileIdentity>>,
    /// Wakes the checkpointer after a commit (`None` for an in-memory store, which has no WAL).
    /// The checkpointer stops once every clone of the store is gone.
    checkpoint: Option<mpsc::Sender<()>>,
}

/// The writer connection kept by the committer, and since when.
struct Held {
    conn: PoolConnection<sqlx::Sqlite>,
    since: Instant,
}

/// Which file a database is (device and inode), to notice it being deleted or replaced.
#[derive(Debug)]
struct FileIdentity {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
    /// Said once in the log (loudly), not at every write.
    reported: std::sync::atomic::AtomicBool,
    /// When the path was last checked (ms after `opened`), and whether it was the file then:
    /// at most one `stat` per [`FILE_CHECK_EVERY`], not one per group commit.
    checked: std::sync::atomic::AtomicU64,
    same_then: std::sync::atomic::AtomicBool,
    opened: Instant,
}

/// How often the database file's identity is checked at most.
const FILE_CHECK_EVERY: Duration = Duration::from_millis(200);

impl FileIdentity {
    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileIdentity {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            reported: std::sync::atomic::AtomicBool::new(false),
            checked: std::sync::atomic::AtomicU64::new(0),
            same_then: std::sync::atomic::AtomicBool::new(true),
            opened: Instant::now(),
        })
    }

    /// Whether the path still names the file that was opened (checked again at most every
    /// [`FILE_CHECK_EVERY`]; once it is not, it never is again).
    fn same(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering::Relaxed;
        if !self.same_then.load(Relaxed) {
            return false;
        }
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        let last = self.checked.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < FILE_CHECK_EVERY.as_millis() as u64 {
            return true;
        }
        self.checked.store(now, Relaxed);
        let same =
            std::fs::metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if !same {
            self.same_then.store(false, Relaxed);
        }
        same
    }
}

impl Sqlite {
    /// Fails once the database file was deleted or replaced under the router.
    pub(in crate::store) fn check_file(&self) -> Result<(), StoreError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if file.same() {
            return Ok(());
        }
        let e = StoreError::Replaced(file.path.display().to_string());
        if !file
            .reported
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(error = %e, "The database file is gone: webhooks are answered 503 until the router is restarted.");
        }
        Err(e)
    }

    /// Opens `sqlite://PATH` (created if missing) or `sqlite::memory:`, and migrates it.
    pub async fn open(
        url: &str,
        instance: String,
        settings: &super::Options,
    ) -> Result<Self, StoreError> {
        let lease = settings.lease;
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
            // Opened once, here, and kept.
            .max_lifetime(None)
            .idle_timeout(None)
            // A group commit's rows (keys, new ids, claimed deliveries) come back in one go
            // instead of in chunks of 50, each a wait for the committer to make room.
            .connect_with(options.clone().row_buffer_size(1024))
            .await?;
        if settings.migrate {
            sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        }
        // An in-memory database exists once per connection: there, everything shares the writer.
        let reader = if memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(readers())
                .min_connections(readers())
                .max_lifetime(None)
                .idle_timeout(None)
                // Readers answer small queries (status, history): a small page cache each.
                .connect_with(options.clone().read_only(true).pragma("cache_size", "-512"))
                .await?
        };
        let checkpoint = if memory {
            None
        } else {
            Some(checkpoint::start(options.connect().await?))
        };
        let file = match memory {
            true => None,
            false => FileIdentity::of(options.get_filename()).map(Arc::new),
        };
        Ok(Sqlite {
            file,
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
    ) -> Result<CommitOutcome, StoreError> {
        self.check_file()?;
        // The time is read once the writer connection is ours: rows written `sending` carry
        // it, and the heartbeat counts their lease from it.
        let Some(held) = &self.held else {
            let mut conn = self.writer.acquire().await?;
            return group::write_parts(&mut conn, events, done, claims, now_ms()).await;
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
        let outcome = group::write_parts(&mut kept.conn, events, done, claims, now_ms()).await?;
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
        // `CAST`: a bare `LIMIT ?` is prepared again at every bind (see `group::claim`).
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE (?1 IS NULL OR d.status = ?1) AND (?2 IS NULL OR d.rule = ?2)
               AND (?3 IS NULL OR lower(e.lead_email) = lower(?3))
             ORDER BY d.id DESC LIMIT CAST(?4 AS INTEGER)"
        );
        let rows = sqlx::query_as::<_, ViewRow>(sqlx::AssertSqlSafe(sql))
            .bind(f.status.map(DeliveryStatus::as_str))
            .bind(&f.rule)
            .bind(&f.lead)
            .bind(f.limit.unwrap_or(100) as i64)
            .fetch_all(&self.reader)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut view = DeliveryView::try_from(r)?;
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

    pub(super) async fn peek_cell(&self, slot: &Slot) -> Result<Cell, StoreError> {
        let row: Option<(i64, i64, i64, i64)> =
            sqlx::query_as("SELECT a, b, c, expires FROM memory_cells WHERE scope = ? AND key = ?")
                .bind(&slot.scope)
                .bind(&slot.key)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map_or(Cell::default(), |(a, b, c, expires)| Cell {
            a,
            b,
            c,
            expires,
        }))
    }

    pub(super) async fn peek_count(&self, span: &Span) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM memory_marks WHERE scope = ? AND key = ? AND at BETWEEN ? AND ?",
        )
        .bind(&span.slot.scope)
        .bind(&span.slot.key)
        .bind(span.from)
        .bind(span.to)
        .fetch_one(&self.reader)
        .await?;
        Ok(n as u64)
    }

    pub(super) async fn add_silence(&self, row: &SilenceRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO silences (id, matchers, rule, comment, created_at, ends_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&row.id)
            .bind(&row.matchers)
            .bind(&row.rule)
            .bind(&row.comment)
            .bind(row.created_at)
            .bind(row.ends_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub(super) async fn silences(&self, after: Millis) -> Result<Vec<SilenceRow>, StoreError> {
        let rows = sqlx::query_as("SELECT id, matchers, rule, comment, created_at, ends_at FROM silences WHERE ends_at > ? ORDER BY created_at, id")
            .bind(after)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows)
    }

    pub(super) async fn expire_silence(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?")
            .bind(now)
            .bind(id)
            .bind(now)
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
        let deliveries = sqlx::query("DELETE FROM deliveries WHERE status IN ('delivered', 'discarded', 'skipped', 'suppressed') AND updated_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Closed digests go with the history of their time (their items with them).
        sqlx::query("DELETE FROM digests WHERE closed_at IS NOT NULL AND closed_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let events = sqlx::query("DELETE FROM events WHERE received_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id) AND NOT EXISTS (SELECT 1 FROM digest_items i JOIN digests g ON g.id = i.digest_id WHERE i.event_id = events.id AND g.closed_at IS NULL)")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM intake_keys WHERE created_at < ?")
            .bind(keys_before)
            .execute(&mut *tx)
            .await?;
        // Rule memory past its expiry reads as never written anyway.
        let now = now_ms();
        sqlx::query("DELETE FROM memory_cells WHERE expires > 0 AND expires <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM memory_marks WHERE expires <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM silences WHERE ends_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deliveries + events)
    }

    /// Each count reads the status index's range for that status alone (see [`COUNTS`]).
    pub(super) async fn counts(&self) -> Result<Counts, StoreError> {
        // Readiness reads the counts: a store whose file is gone is not ready.
        self.check_file()?;
        let r = sqlx::query(COUNTS).fetch_one(&self.reader).await?;
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
    /// attempt that could not be recorded; without this they would wait for the next start. The lease
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

/// `dests (dest)`: each destination with deliveries pending, then one `NULL`, found by skipping
/// through `deliveries_due_by_destination` (status, destination, next_attempt_at): one lookup
/// per destination, however many deliveries each has waiting (a loose index scan). Named in
/// `INDEXED BY` so that the plan does not depend on statistics SQLite may not have.
pub(super) const PENDING_DESTINATIONS: &str = "dests (dest) AS (
                    SELECT (SELECT destination
                            FROM deliveries INDEXED BY deliveries_due_by_destination
                            WHERE status = 'pending' ORDER BY destination LIMIT 1)
                    UNION ALL
                    SELECT (SELECT destination
                            FROM deliveries INDEXED BY deliveries_due_by_destination
                            WHERE status = 'pending' AND destination > dests.dest
                            ORDER BY destination LIMIT 1)
                    FROM dests WHERE dests.dest IS NOT NULL)";

/// The counts of pending, sending and dead deliveries and the oldest pending one's creation:
/// each reads the status index's range for its status alone, so what it costs follows the
/// backlog and the dead letters, never the delivered history.
const COUNTS: &str = "SELECT
    (SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_due_by_destination
     WHERE status = 'pending'),
    (SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_due_by_destination
     WHERE status = 'sending'),
    (SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_due_by_destination
     WHERE status = 'dead'),
    (SELECT MIN(created_at) FROM deliveries INDEXED BY deliveries_due_by_destination
     WHERE status = 'pending' AND reason IS NULL)";

/// Reader connections: one per core and one more (status, history and readiness queries run
/// beside the writer; each holds a small page cache), at most 8.
fn readers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, usize::from) as u32;
    (cores + 1).min(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_counts_search_the_status_index_and_never_scan_the_table() {
        let store = Sqlite::open(
            "sqlite::memory:",
            "test".into(),
            &crate::store::Options::default(),
        )
        .await
        .unwrap();
        let plan: Vec<String> =
            sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {COUNTS}")))
                .fetch_all(&store.reader)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(3))
                .collect();
        let reads: Vec<&String> = plan.iter().filter(|l| l.contains("deliveries")).collect();
        assert_eq!(reads.len(), 4, "{plan:#?}");
        for line in reads {
            assert!(
                line.starts_with("SEARCH") && line.contains("(status=?)"),
                "every count searches one status: {plan:#?}"
            );
        }
    }
}
