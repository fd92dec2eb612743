//! The PostgreSQL backend, shared by several router instances. Work is claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease: a delivery held by an instance that dies is taken over
//! by another once the lease expires, and an instance renews the leases of what it is sending.
//! New deliveries are announced with `NOTIFY`, so idle workers wake without polling. Migrations
//! take an advisory lock, so instances starting together migrate once.

mod group;
mod memory;

use super::memory::{Cell, Slot, Span};
use super::rows::{AttemptRow, INSTANCE_COLUMNS, InstanceRow, VIEW_COLUMNS, ViewRow};
use super::{
    AttemptView, Counts, DeliveryStatus, DeliveryView, Filter, InstanceView, Millis, SilenceRow,
    StoreError, now_ms,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use std::time::Duration;

/// The channel new deliveries are announced on.
const CHANNEL: &str = "switchboard_deliveries";

/// A PostgreSQL store, as seen by one instance.
#[derive(Clone)]
pub struct Postgres {
    pub(in crate::store) pool: PgPool,
    instance: String,
    lease: Duration,
}

/// `dests (destination)`: each destination with deliveries pending, then one `NULL`, found by
/// skipping through the partial index `deliveries_pending_destination` (destination,
/// next_attempt_at, id): one lookup per destination, however many deliveries each has waiting
/// (a loose index scan).
const PENDING_DESTINATIONS: &str = "dests (destination) AS (
                 (SELECT destination FROM deliveries WHERE status = 'pending'
                  ORDER BY destination LIMIT 1)
                 UNION ALL
                 SELECT (SELECT x.destination FROM deliveries x
                         WHERE x.status = 'pending' AND x.destination > d.destination
                         ORDER BY x.destination LIMIT 1)
                 FROM dests d WHERE d.destination IS NOT NULL)";

impl Postgres {
    /// Connects to `postgres://…` and migrates the schema (once, whoever gets the lock).
    pub async fn open(
        url: &str,
        instance: String,
        settings: &super::Options,
    ) -> Result<Self, StoreError> {
        let lease = settings.lease;
        let mut options: PgConnectOptions = url.parse()?;
        if !url.contains("plan_cache_mode") {
            // Plans made for the table sizes of now, not cached ones made when the tables
            // were nearly empty: the best plans for claims and attempt records depend on how
            // many deliveries there are, and PostgreSQL keeps a prepared statement's generic
            // plan until the next ANALYZE. In the ack bench, generic plans made on an empty
            // database scanned all deliveries at each claim and each batch of records (5-12 ms
            // with 19,000); planning each time measured 2,900-3,900 acknowledgements/s against
            // 2,400-2,800 (bench/RESULTS.md).
            options = options.options([("plan_cache_mode", "force_custom_plan")]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        if settings.migrate {
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
        }
        Ok(Postgres {
            pool,
            instance,
            lease,
        })
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Other instances may be sending: nothing is reset here. Deliveries of an instance that
    /// died are taken over when their lease expires.
    pub(in crate::store) async fn recover(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    pub(in crate::store) async fn release(&self, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET status = 'pending', claimed_by = NULL, lease_until = NULL WHERE status = 'sending' AND claimed_by = $1 AND id = ANY($2)")
            .bind(&self.instance)
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The earliest of each destination's first pending delivery (one index lookup each) and
    /// of the leases of those being sent.
    pub(in crate::store) async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        let sql = format!(
            "WITH RECURSIVE {PENDING_DESTINATIONS}
             SELECT LEAST(
                 (SELECT MIN((SELECT MIN(x.next_attempt_at) FROM deliveries x
                              WHERE x.status = 'pending' AND x.destination = d.destination))
                  FROM dests d WHERE d.destination IS NOT NULL),
                 (SELECT MIN(lease_until) FROM deliveries WHERE status = 'sending'))"
        );
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    pub(in crate::store) async fn list(&self, f: &Filter) -> Result<Vec<DeliveryView>, StoreError> {
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE ($1::TEXT IS NULL OR d.status = $1) AND ($2::TEXT IS NULL OR d.rule = $2)
               AND ($3::TEXT IS NULL OR lower(e.lead_email) = lower($3))
             ORDER BY d.id DESC LIMIT $4"
        );
        let rows = sqlx::query_as::<_, ViewRow>(AssertSqlSafe(sql))
            .bind(f.status.map(DeliveryStatus::as_str))
            .bind(&f.rule)
            .bind(&f.lead)
            .bind(f.limit.unwrap_or(100) as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut view = DeliveryView::try_from(r)?;
            if f.with_history {
                view.history = sqlx::query_as::<_, AttemptRow>(
                    "SELECT started_at, duration_ms, outcome, status_code, error FROM attempts WHERE delivery_id = $1 ORDER BY id",
                )
                .bind(view.id)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(AttemptView::from)
                .collect();
            }
            out.push(view);
        }
        Ok(out)
    }

    pub(in crate::store) async fn retry_dead(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let n = sqlx::query("UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1 WHERE status = 'dead' AND ($2::BIGINT IS NULL OR id = $2)")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            sqlx::query(AssertSqlSafe(format!("NOTIFY {CHANNEL}")))
                .execute(&self.pool)
                .await?;
        }
        Ok(n)
    }

    /// Wakes every instance's workers when the transaction commits.
    pub(in crate::store) async fn notify_in(
        &self,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!("NOTIFY {CHANNEL}")))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Wakes every instance's workers: deliveries were made due.
    pub(in crate::store) async fn notify(&self) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!("NOTIFY {CHANNEL}")))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn discard(&self, id: i64) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE deliveries SET status = 'discarded', updated_at = $1 WHERE status = 'dead' AND id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    pub(in crate::store) async fn peek_cell(&self, slot: &Slot) -> Result<Cell, StoreError> {
        let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT a, b, c, expires FROM memory_cells WHERE scope = $1 AND key = $2",
        )
        .bind(&slot.scope)
        .bind(&slot.key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or(Cell::default(), |(a, b, c, expires)| Cell {
            a,
            b,
            c,
            expires,
        }))
    }

    pub(in crate::store) async fn peek_count(&self, span: &Span) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memory_marks WHERE scope = $1 AND key = $2 AND at BETWEEN $3 AND $4")
            .bind(&span.slot.scope)
            .bind(&span.slot.key)
            .bind(span.from)
            .bind(span.to)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    pub(in crate::store) async fn add_silence(&self, row: &SilenceRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO silences (id, matchers, rule, comment, created_at, ends_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&row.id)
            .bind(&row.matchers)
            .bind(&row.rule)
            .bind(&row.comment)
            .bind(row.created_at)
            .bind(row.ends_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn silences(
        &self,
        after: Millis,
    ) -> Result<Vec<SilenceRow>, StoreError> {
        let rows = sqlx::query_as("SELECT id, matchers, rule, comment, created_at, ends_at FROM silences WHERE ends_at > $1 ORDER BY created_at, id")
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows)
    }

    pub(in crate::store) async fn expire_silence(
        &self,
        id: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE silences SET ends_at = $1 WHERE id = $2 AND ends_at > $1")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    pub(in crate::store) async fn prune(
        &self,
        before: Millis,
        keys_before: Millis,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deliveries = sqlx::query("DELETE FROM deliveries WHERE status IN ('delivered', 'discarded', 'skipped', 'suppressed') AND updated_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Closed digests go with the history of their time (their items with them).
        sqlx::query("DELETE FROM digests WHERE closed_at IS NOT NULL AND closed_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let events = sqlx::query("DELETE FROM events WHERE received_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id) AND NOT EXISTS (SELECT 1 FROM digest_items i JOIN digests g ON g.id = i.digest_id WHERE i.event_id = events.id AND g.closed_at IS NULL)")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM intake_keys WHERE created_at < $1")
            .bind(keys_before)
            .execute(&mut *tx)
            .await?;
        // Rule memory past its expiry reads as never written anyway.
        let now = now_ms();
        // Cells an intake holds locked are left for the next pruning, not waited for.
        sqlx::query(
            "DELETE FROM memory_cells WHERE ctid IN (SELECT ctid FROM memory_cells
             WHERE expires > 0 AND expires <= $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM memory_marks WHERE expires <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM silences WHERE ends_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM instances WHERE heartbeat_at < $1")
            .bind(now_ms() - 3_600_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deliveries + events)
    }

    /// Each count is a query of its own on one status, which the status indexes answer
    /// (`deliveries_due`, and the partial index on pending deliveries): what it costs follows
    /// the backlog and the dead letters, never the delivered history.
    pub(in crate::store) async fn counts(&self) -> Result<Counts, StoreError> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),
                    (SELECT COUNT(*) FROM deliveries WHERE status = 'sending'),
                    (SELECT COUNT(*) FROM deliveries WHERE status = 'dead'),
                    (SELECT MIN(created_at) FROM deliveries WHERE status = 'pending' AND reason IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            pending: r.get::<i64, _>(0) as u64,
            sending: r.get::<i64, _>(1) as u64,
            dead: r.get::<i64, _>(2) as u64,
            oldest_pending_ms: r.get(3),
        })
    }

    /// Records this instance as alive with its configuration, and renews the leases of the
    /// deliveries it is sending.
    pub(in crate::store) async fn heartbeat(
        &self,
        listen: &str,
        config_hash: &str,
        sending: &[i64],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO instances (id, listen, config_hash, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (id) DO UPDATE SET listen = $2, config_hash = $3, heartbeat_at = $4",
        )
        .bind(&self.instance)
        .bind(listen)
        .bind(config_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // Rows another transaction holds are skipped, not waited for: the group commit locks
        // the deliveries it finishes in its own order, and waiting here deadlocked with it
        // under load (PostgreSQL then failed one of the two, sometimes the commit). A delivery
        // being finished needs no longer lease; one whose finish rolls back is renewed next time.
        sqlx::query(
            "UPDATE deliveries SET lease_until = $1
             WHERE id IN (SELECT id FROM deliveries
                          WHERE status = 'sending' AND claimed_by = $2 AND id = ANY($3)
                          FOR UPDATE SKIP LOCKED)",
        )
        .bind(now + self.lease_ms())
        .bind(&self.instance)
        .bind(sending)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn instances(
        &self,
        alive_since: Millis,
    ) -> Result<Vec<InstanceView>, StoreError> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE heartbeat_at >= $1 ORDER BY started_at"
        );
        let rows = sqlx::query_as::<_, InstanceRow>(sqlx::AssertSqlSafe(sql))
            .bind(alive_since)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.view(&self.instance)).collect())
    }

    /// Calls `wake` whenever any instance stores new deliveries or requeues dead letters.
    pub(in crate::store) async fn listen(
        &self,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => wake(),
                    Err(e) => {
                        tracing::warn!(error = %e, "Lost the store's notifications; reconnecting (workers poll meanwhile).");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }
}
