//! The PostgreSQL group commit: a batch's events (keys, events, deliveries), attempt records
//! and claims in one transaction, one statement each over arrays (`UNNEST`), whatever the
//! batch's size.

use super::{CHANNEL, PENDING_DESTINATIONS, Postgres};
use crate::store::memory::Verdict;
use crate::store::rows::{DUE_COLUMNS, DueRow, after};
use crate::store::{
    Claim, CommitOutcome, Created, DeliveryStatus, Due, Finished, Intake, Millis, NewDelivery,
    NewEvent, StoreError, now_ms,
};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;
use std::collections::{HashMap, HashSet};

impl Postgres {
    pub(in crate::store) async fn write(
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
        // Each accepted event's deliveries as its rule memory decides (in the batch's order),
        // and its payload when memory changed it (a count filled in).
        let (verdicts, changed) = super::memory::decide(tx, &accepted, now).await?;
        let payloads: Vec<&str> = accepted
            .iter()
            .zip(&changed)
            .map(|(e, c)| c.payload.as_deref().unwrap_or(&e.payload))
            .collect();
        let column = |f: fn(&NewEvent) -> &str| accepted.iter().map(|e| f(e)).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO events (id, source, event_type, lead_email, received_at, config_hash, payload,
                                 campaign_id)
             SELECT id, source, event_type, lead_email, $7, config_hash, payload, campaign_id
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[],
                         $8::TEXT[])
               AS t(id, source, event_type, lead_email, config_hash, payload, campaign_id)",
        )
        .bind(column(|e| &e.id))
        .bind(column(|e| &e.source))
        .bind(column(|e| &e.event_type))
        .bind(accepted.iter().map(|e| e.lead_email.as_deref()).collect::<Vec<_>>())
        .bind(column(|e| &e.config_hash))
        .bind(&payloads)
        .bind(now)
        .bind(accepted.iter().map(|e| e.campaign_id.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(&NewEvent, &NewDelivery, Verdict, Option<&str>)> = accepted
            .iter()
            .zip(&verdicts)
            .zip(&changed)
            .flat_map(|((e, v), c)| {
                e.deliveries
                    .iter()
                    .zip(v)
                    .enumerate()
                    .map(move |(i, (d, v))| (*e, d, *v, c.context(i)))
            })
            .filter(|(_, _, v, _)| *v != Verdict::Unmatched)
            .collect();
        let mut ids = HashMap::with_capacity(rows.len());
        if !rows.is_empty() {
            let claimed: Vec<bool> = rows.iter().map(|(e, _, _, _)| e.claimed).collect();
            let mut status = Vec::with_capacity(rows.len());
            let mut reason = Vec::with_capacity(rows.len());
            let mut due = Vec::with_capacity(rows.len());
            for (e, _, v, _) in &rows {
                let sent = match e.claimed {
                    true => DeliveryStatus::Sending,
                    false => DeliveryStatus::Pending,
                };
                let (s, r, at) = v.row(sent, now).unwrap_or((sent, None, now));
                status.push(s.as_str());
                reason.push(r);
                due.push(at);
            }
            let returned: Vec<(i64, String, String, i64)> = sqlx::query_as(
                "INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination, status, reason, context, attempts, next_attempt_at, claimed_by, lease_until, created_at, updated_at)
                 SELECT event_id, rule, action_index, action_kind, destination, status, reason, context, 0, due,
                        CASE WHEN status = 'sending' THEN $10 END,
                        CASE WHEN status = 'sending' THEN $9 + $11 END, $9, $9
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::BOOLEAN[], $12::TEXT[], $13::BIGINT[])
                   AS t(event_id, rule, action_index, action_kind, destination, status, reason, claimed, context, due)
                 RETURNING id, event_id, rule, action_index",
            )
            .bind(rows.iter().map(|(e, _, _, _)| e.id.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d, _, _)| d.rule.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d, _, _)| d.action_index as i64).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d, _, _)| d.action_kind.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, d, _, _)| d.destination.as_str()).collect::<Vec<_>>())
            .bind(&status)
            .bind(&reason)
            .bind(&claimed)
            .bind(now)
            .bind(&self.instance)
            .bind(self.lease_ms())
            .bind(rows.iter().map(|(_, _, _, c)| *c).collect::<Vec<_>>())
            .bind(&due)
            .fetch_all(&mut *tx)
            .await?;
            for (id, event, rule, index) in returned {
                ids.insert((event, rule, index), id);
            }
            if status.contains(&DeliveryStatus::Pending.as_str()) {
                sqlx::query(AssertSqlSafe(format!("NOTIFY {CHANNEL}")))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut verdicts = verdicts.into_iter();
        events
            .iter()
            .map(|e| {
                if !fresh.contains(&e.id) {
                    return Ok(Intake::Duplicate(
                        first.get(&e.dedup_key).cloned().unwrap_or_default(),
                    ));
                }
                let decided = verdicts.next().unwrap_or_default();
                e.deliveries
                    .iter()
                    .zip(decided)
                    .map(|(d, verdict)| {
                        if verdict == Verdict::Unmatched {
                            return Ok(None);
                        }
                        let key = (e.id.clone(), d.rule.clone(), d.action_index as i64);
                        let id = ids.get(&key).copied().ok_or_else(|| {
                            StoreError::Mismatch(format!(
                                "no id came back for the delivery of event {} rule {:?} action {}",
                                e.id,
                                d.rule,
                                d.action_index + 1
                            ))
                        })?;
                        Ok(Some(Created { id, verdict }))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
                    .map(Intake::Accepted)
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
                 RETURNING id, event_id, rule, action_index, destination, attempts, context)
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
    .bind(after.iter().map(|a| a.outcome).collect::<Vec<_>>())
    .bind(done.iter().map(|f| f.attempt.status_code.map(i64::from)).collect::<Vec<_>>())
    .bind(&errors)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE deliveries d SET status = v.status, attempts = d.attempts + v.tried, next_attempt_at = v.next_at,
             last_error = COALESCE(v.error, d.last_error), reason = v.reason, claimed_by = NULL, lease_until = NULL, updated_at = $5
         FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $6::TEXT[], $7::BIGINT[])
           AS v(id, status, next_at, error, reason, tried)
         WHERE d.id = v.id",
    )
    .bind(&ids)
    .bind(after.iter().map(|a| a.status.as_str()).collect::<Vec<_>>())
    .bind(after.iter().map(|a| a.next_at).collect::<Vec<_>>())
    .bind(&errors)
    .bind(now)
    .bind(after.iter().map(|a| a.reason).collect::<Vec<_>>())
    .bind(after.iter().map(|a| a.tried).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
