//! The PostgreSQL backend, shared by several router instances. Work is claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease: a delivery held by an instance that dies is taken over
//! by another once the lease expires, and an instance renews the leases of what it is sending.
//! New deliveries are announced with `NOTIFY`, so idle workers wake without polling. Migrations
//! take an advisory lock, so instances starting together migrate once.

use super::rows::{
    AttemptRow, DUE_COLUMNS, DueRow, INSTANCE_COLUMNS, InstanceRow, VIEW_COLUMNS, ViewRow, after,
};
use super::{
    AttemptView, Claim, CommitOutcome, Counts, DeliveryStatus, DeliveryView, Due, Filter, Finished,
    InstanceView, Intake, Millis, NewDelivery, NewEvent, StoreError, now_ms,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use std::collections::{HashMap, HashSet};
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
    pub async fn open(url: &str, instance: String, lease: Duration) -> Result<Self, StoreError> {
        let mut options: PgConnectOptions = url.parse()?;
        if !url.contains("plan_cache_mode") {
            // Plans made for the table sizes of now, not cached ones made when the tables
            // were nearly empty: the best plans for claims and attempt records depend on how
            // many deliveries there are, and PostgreSQL keeps a prepared statement's generic
            // plan until the next ANALYZE. In the ack bench, generic plans made on an empty
            // database scanned all deliveries at each claim and each batch of records (5-12 ms
            // with 19,000); planning each time measured 2,900-3,900 acknowledgements/s against
            // 2,400-2,800 (README, Performance).
            options = options.options([("plan_cache_mode", "force_custom_plan")]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
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

    pub(super) async fn write(
        &self,
        events: &[NewEvent],
        done: &[Finished],
        claims: &[Claim],
    ) -> Result<CommitOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let intakes = self.accept(&mut tx, events, now).await?;
        finish(&mut tx, done, now).await?;
        let mut claimed = Vec::with_capacity(claims.len());
        for c in claims {
            claimed.push(self.claim(&mut tx, c, now).await?);
        }
        tx.commit().await?;
        Ok(CommitOutcome { intakes, claimed })
    }

    /// Records events (keys, events, deliveries) with one statement each, over arrays.
    async fn accept(
        &self,
        tx: &mut PgConnection,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<Intake>, StoreError> {
        if events.is_empty() {
            return Ok(vec![]);
        }
        // In key order, so that instances inserting the same keys lock them in the same order
        // (no deadlock); a stable sort keeps the first of equal keys first.
        let mut by_key: Vec<&NewEvent> = events.iter().collect();
        by_key.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        let keys: Vec<&str> = by_key.iter().map(|e| e.dedup_key.as_str()).collect();
        let ids: Vec<&str> = by_key.iter().map(|e| e.id.as_str()).collect();
        let fresh: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO intake_keys (key, event_id, created_at)
             SELECT k, e, $3 FROM UNNEST($1::TEXT[], $2::TEXT[]) AS t(k, e)
             ON CONFLICT (key) DO NOTHING RETURNING event_id",
        )
        .bind(&keys)
        .bind(&ids)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let repeats: Vec<&str> = events
            .iter()
            .filter(|e| !fresh.contains(&e.id))
            .map(|e| e.dedup_key.as_str())
            .collect();
        let first: HashMap<String, String> = if repeats.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as("SELECT key, event_id FROM intake_keys WHERE key = ANY($1)")
                .bind(&repeats)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect()
        };
        let accepted: Vec<&NewEvent> = events.iter().filter(|e| fresh.contains(&e.id)).collect();
        let column = |f: fn(&NewEvent) -> &str| accepted.iter().map(|e| f(e)).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO events (id, source, event_type, lead_email, received_at, config_hash, payload)
             SELECT id, source, event_type, lead_email, $7, config_hash, payload
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[])
               AS t(id, source, event_type, lead_email, config_hash, payload)",
        )
        .bind(column(|e| &e.id))
        .bind(column(|e| &e.source))
        .bind(column(|e| &e.event_type))
        .bind(accepted.iter().map(|e| e.lead_email.as_deref()).collect::<Vec<_>>())
        .bind(column(|e| &e.config_hash))
        .bind(column(|e| &e.payload))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(&NewEvent, &NewDelivery)> = accepted
            .iter()
            .flat_map(|e| e.deliveries.iter().map(move |d| (*e, d)))
            .collect();
        let mut ids = HashMap::with_capacity(rows.len());
        if !rows.is_empty() {
            let claimed: Vec<bool> = rows.iter().map(|(e, _)| e.claimed).collect();
            let returned: Vec<(i64, String, String, i64)> = sqlx::query_as(
                "INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination, status, attempts, next_attempt_at, claimed_by, lease_until, created_at, updated_at)
                 SELECT event_id, rule, action_index, action_kind, destination,
                        CASE WHEN claimed THEN 'sending' ELSE 'pending' END, 0, $7,
                        CASE WHEN claimed THEN $8 END, CASE WHEN claimed THEN $7 + $9 END, $7, $7
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BOOLEAN[])
                   AS t(event_id, rule, action_index, action_kind, destination, claimed)
                 RETURNING id, event_id, rule, action_index",
            )
            .bind(rows.iter().map(|(e, _)| e.id.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d)| d.rule.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d)| d.action_index as i64).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d)| d.action_kind.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d)| d.destination.as_str()).collect::<Vec<_>>())
            .bind(&claimed)
            .bind(now)
            .bind(&self.instance)
            .bind(self.lease_ms())
            .fetch_all(&mut *tx)
            .await?;
            for (id, event, rule, index) in returned {
                ids.insert((event, rule, index), id);
            }
            if claimed.contains(&false) {
                sqlx::query(AssertSqlSafe(format!("NOTIFY {CHANNEL}")))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        events
            .iter()
            .map(|e| {
                if !fresh.contains(&e.id) {
                    return Ok(Intake::Duplicate(
                        first.get(&e.dedup_key).cloned().unwrap_or_default(),
                    ));
                }
                let delivery_ids = e
                    .deliveries
                    .iter()
                    .map(|d| {
                        let key = (e.id.clone(), d.rule.clone(), d.action_index as i64);
                        ids.get(&key).copied().ok_or_else(|| {
                            StoreError::Mismatch(format!(
                                "no id came back for the delivery of event {} rule {:?} action {}",
                                e.id,
                                d.rule,
                                d.action_index + 1
                            ))
                        })
                    })
                    .collect::<Result<Vec<i64>, StoreError>>()?;
                Ok(Intake::Accepted(delivery_ids))
            })
            .collect()
    }

    /// Marks up to `c.limit` due deliveries (or ones whose lease has lapsed) as sent by this
    /// instance, each destination's within the room it has left; rows other instances are
    /// claiming are skipped, not waited for.
    async fn claim(
        &self,
        tx: &mut PgConnection,
        c: &Claim,
        now: Millis,
    ) -> Result<Vec<Due>, StoreError> {
        if c.limit == 0 {
            return Ok(vec![]);
        }
        // Due deliveries, per destination up to the room it has left: the destinations with
        // deliveries pending are found by skipping through `deliveries_pending_destination`,
        // one lookup each, and each one's due deliveries are read from it in due order. A
        // destination at its limit is not read at all, however deep its backlog (read in due
        // order across destinations, a busy one's backlog was read at every claim to get past
        // it). Then those whose lease ran out (another instance died), rare, skipping the
        // destinations at their limit (not cut to each one's room: the workers put back what
        // does not fit). Rows read but beyond the limit stay locked until the commit, and
        // other instances skip them until then: up to the smaller of its room and the limit
        // for each destination with deliveries due, and the limit again of lapsed leases. The
        // claimed deliveries come back with their events in the same statement (read after by
        // id, PostgreSQL's generic plan for the join scanned every event: 6 ms per claim with
        // 10,000).
        let (destinations, in_use): (Vec<&str>, Vec<i64>) = c
            .in_use
            .iter()
            .map(|(d, n)| (d.as_str(), i64::from(*n)))
            .unzip();
        let sql = format!(
            "WITH RECURSIVE {PENDING_DESTINATIONS},
             rooms AS (
                 SELECT d.destination, $7 - COALESCE(u.n, 0) AS room
                 FROM dests d LEFT JOIN unnest($4::TEXT[], $8::BIGINT[]) AS u (destination, n)
                     ON u.destination = d.destination
                 WHERE d.destination IS NOT NULL),
             due AS (
                 SELECT c.id, c.next_attempt_at FROM rooms r CROSS JOIN LATERAL (
                     SELECT id, next_attempt_at FROM deliveries
                     WHERE status = 'pending' AND destination = r.destination
                       AND next_attempt_at <= $1 AND NOT (id = ANY($6))
                     ORDER BY next_attempt_at, id LIMIT LEAST(r.room, $5)
                     FOR UPDATE SKIP LOCKED) AS c
                 WHERE r.room > 0),
             expired AS (
                 SELECT id, next_attempt_at FROM deliveries
                 WHERE status = 'sending' AND lease_until < $1
                   AND NOT (destination = ANY(
                       SELECT u.destination FROM unnest($4::TEXT[], $8::BIGINT[]) AS u (destination, n)
                       WHERE u.n >= $7))
                   AND NOT (id = ANY($6))
                 ORDER BY next_attempt_at, id LIMIT $5
                 FOR UPDATE SKIP LOCKED),
             claimed AS (
                 UPDATE deliveries SET status = 'sending', claimed_by = $2, lease_until = $1 + $3,
                        updated_at = $1
                 WHERE id IN (
                     SELECT id FROM (SELECT * FROM due UNION ALL SELECT * FROM expired) AS c
                     ORDER BY next_attempt_at, id LIMIT $5)
                 RETURNING id, event_id, rule, action_index, destination, attempts)
             SELECT {DUE_COLUMNS} FROM claimed d JOIN events e ON e.id = d.event_id ORDER BY d.id"
        );
        let due = sqlx::query_as::<_, DueRow>(AssertSqlSafe(sql))
            .bind(now)
            .bind(&self.instance)
            .bind(self.lease_ms())
            .bind(&destinations)
            .bind(c.limit as i64)
            .bind(&c.in_flight)
            .bind(i64::from(c.per_destination))
            .bind(&in_use)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(Due::from)
            .collect();
        Ok(due)
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

    /// The earliest of each destination's first pending delivery (one index lookup each) and
    /// of the leases of those being sent.
    pub(super) async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
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

    pub(super) async fn list(&self, f: &Filter) -> Result<Vec<DeliveryView>, StoreError> {
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
        sqlx::query(
            "UPDATE deliveries SET lease_until = $1 WHERE status = 'sending' AND claimed_by = $2 AND id = ANY($3)",
        )
        .bind(now + self.lease_ms())
        .bind(&self.instance)
        .bind(sending)
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

/// Records attempts and moves their deliveries on: one statement each, over arrays.
async fn finish(tx: &mut PgConnection, done: &[Finished], now: Millis) -> Result<(), StoreError> {
    if done.is_empty() {
        return Ok(());
    }
    let after: Vec<_> = done.iter().map(|f| after(&f.next, now)).collect();
    let ids: Vec<i64> = done.iter().map(|f| f.id).collect();
    let errors: Vec<Option<&str>> = done.iter().map(|f| f.attempt.error.as_deref()).collect();
    sqlx::query(
        "INSERT INTO attempts (delivery_id, started_at, duration_ms, outcome, status_code, error)
         SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[])",
    )
    .bind(&ids)
    .bind(done.iter().map(|f| f.attempt.started_at).collect::<Vec<_>>())
    .bind(done.iter().map(|f| f.attempt.duration_ms).collect::<Vec<_>>())
    .bind(after.iter().map(|a| a.1).collect::<Vec<_>>())
    .bind(done.iter().map(|f| f.attempt.status_code.map(i64::from)).collect::<Vec<_>>())
    .bind(&errors)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE deliveries d SET status = v.status, attempts = d.attempts + 1, next_attempt_at = v.next_at,
             last_error = COALESCE(v.error, d.last_error), claimed_by = NULL, lease_until = NULL, updated_at = $5
         FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS v(id, status, next_at, error)
         WHERE d.id = v.id",
    )
    .bind(&ids)
    .bind(after.iter().map(|a| a.0.as_str()).collect::<Vec<_>>())
    .bind(after.iter().map(|a| a.2).collect::<Vec<_>>())
    .bind(&errors)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
