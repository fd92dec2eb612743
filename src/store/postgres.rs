//! The PostgreSQL backend, shared by several router instances. Work is claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease: a delivery held by an instance that dies is taken over
//! by another once the lease expires, and an instance renews the leases of what it is sending.
//! New deliveries are announced with `NOTIFY`, so idle workers wake without polling. Migrations
//! take an advisory lock, so instances starting together migrate once.

use super::rows::{
    AttemptRow, DUE_COLUMNS, DueRow, INSTANCE_COLUMNS, InstanceRow, VIEW_COLUMNS, ViewRow, after,
};
use super::{
    AttemptView, Counts, DeliveryView, Due, Filter, Finished, InstanceView, Intake, Millis,
    NewEvent, StoreError, now_ms,
};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use std::time::Duration;

/// The channel new deliveries are announced on.
const CHANNEL: &str = "switchboard_deliveries";

/// A PostgreSQL store, as seen by one instance.
#[derive(Clone)]
pub struct Postgres {
    pool: PgPool,
    instance: String,
    lease: Duration,
}

impl Postgres {
    /// Connects to `postgres://…` and migrates the schema (once, whoever gets the lock).
    pub async fn open(url: &str, instance: String, lease: Duration) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new().max_connections(8).connect(url).await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Postgres {
            pool,
            instance,
            lease,
        })
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    pub(super) async fn accept(&self, events: &[NewEvent]) -> Result<Vec<Intake>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(events.len());
        let mut any = false;
        for e in events {
            let inserted = sqlx::query("INSERT INTO intake_keys (key, event_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING")
                .bind(&e.dedup_key)
                .bind(&e.id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 0 {
                let first: String =
                    sqlx::query_scalar("SELECT event_id FROM intake_keys WHERE key = $1")
                        .bind(&e.dedup_key)
                        .fetch_one(&mut *tx)
                        .await?;
                out.push(Intake::Duplicate(first));
                continue;
            }
            sqlx::query("INSERT INTO events (id, source, event_type, lead_email, received_at, config_hash, payload) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&e.id)
                .bind(&e.source)
                .bind(&e.event_type)
                .bind(&e.lead_email)
                .bind(now)
                .bind(&e.config_hash)
                .bind(&e.payload)
                .execute(&mut *tx)
                .await?;
            for d in &e.deliveries {
                any = true;
                sqlx::query("INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination, status, attempts, next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)")
                    .bind(&e.id)
                    .bind(&d.rule)
                    .bind(d.action_index as i64)
                    .bind(&d.action_kind)
                    .bind(&d.destination)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            out.push(Intake::Accepted);
        }
        if any {
            sqlx::query(AssertSqlSafe(format!("NOTIFY {CHANNEL}")))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    pub(super) async fn claim(&self, limit: u32, busy: &[String]) -> Result<Vec<Due>, StoreError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET status = 'sending', claimed_by = $2, lease_until = $1 + $3, updated_at = $1
             WHERE id IN (
                 SELECT id FROM deliveries
                 WHERE ((status = 'pending' AND next_attempt_at <= $1) OR (status = 'sending' AND lease_until < $1))
                   AND NOT (destination = ANY($4))
                 ORDER BY next_attempt_at, id LIMIT $5
                 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(now)
        .bind(&self.instance)
        .bind(self.lease_ms())
        .bind(busy)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let sql = format!(
            "SELECT {DUE_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ANY($1) ORDER BY d.id"
        );
        let due = sqlx::query_as::<_, DueRow>(AssertSqlSafe(sql))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(Due::from)
            .collect();
        tx.commit().await?;
        Ok(due)
    }

    pub(super) async fn finish(&self, done: &[Finished]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for Finished {
            id,
            attempt: a,
            next,
        } in done
        {
            let (status, outcome, next_at) = after(next, now);
            sqlx::query("INSERT INTO attempts (delivery_id, started_at, duration_ms, outcome, status_code, error) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(a.started_at)
                .bind(a.duration_ms)
                .bind(outcome)
                .bind(a.status_code.map(i64::from))
                .bind(&a.error)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, last_error = COALESCE($3, last_error), claimed_by = NULL, lease_until = NULL, updated_at = $4 WHERE id = $5")
                .bind(status)
                .bind(next_at)
                .bind(&a.error)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Other instances may be sending: nothing is reset here. Deliveries of an instance that
    /// died are taken over when their lease expires.
    pub(super) async fn recover(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    pub(super) async fn release(&self, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET status = 'pending', claimed_by = NULL, lease_until = NULL WHERE status = 'sending' AND claimed_by = $1 AND id = ANY($2)")
            .bind(&self.instance)
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(CASE WHEN status = 'pending' THEN next_attempt_at ELSE lease_until END) FROM deliveries WHERE status IN ('pending', 'sending')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn list(&self, f: &Filter) -> Result<Vec<DeliveryView>, StoreError> {
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE ($1::TEXT IS NULL OR d.status = $1) AND ($2::TEXT IS NULL OR d.rule = $2)
               AND ($3::TEXT IS NULL OR lower(e.lead_email) = lower($3))
             ORDER BY d.id DESC LIMIT $4"
        );
        let rows = sqlx::query_as::<_, ViewRow>(AssertSqlSafe(sql))
            .bind(&f.status)
            .bind(&f.rule)
            .bind(&f.lead)
            .bind(f.limit.unwrap_or(100) as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut view = DeliveryView::from(r);
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

    pub(super) async fn retry_dead(&self, id: Option<i64>) -> Result<u64, StoreError> {
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

    pub(super) async fn discard(&self, id: i64) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE deliveries SET status = 'discarded', updated_at = $1 WHERE status = 'dead' AND id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    pub(super) async fn prune(
        &self,
        before: Millis,
        keys_before: Millis,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deliveries = sqlx::query("DELETE FROM deliveries WHERE status IN ('delivered', 'discarded', 'skipped') AND updated_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let events = sqlx::query("DELETE FROM events WHERE received_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM intake_keys WHERE created_at < $1")
            .bind(keys_before)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM instances WHERE heartbeat_at < $1")
            .bind(now_ms() - 3_600_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deliveries + events)
    }

    pub(super) async fn counts(&self) -> Result<Counts, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE status = 'pending'), COUNT(*) FILTER (WHERE status = 'sending'),
                    COUNT(*) FILTER (WHERE status = 'dead'), MIN(created_at) FILTER (WHERE status = 'pending')
             FROM deliveries",
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
    pub(super) async fn heartbeat(
        &self,
        listen: &str,
        config_hash: &str,
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
        sqlx::query(
            "UPDATE deliveries SET lease_until = $1 WHERE status = 'sending' AND claimed_by = $2",
        )
        .bind(now + self.lease_ms())
        .bind(&self.instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn instances(
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
    pub(super) async fn listen(&self, wake: Box<dyn Fn() + Send + Sync>) -> Result<(), StoreError> {
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
