//! Digests in the store: the items intake writes (see `memory::digest`) are closed here, one
//! digest per transaction that locks the rule memory cell of its key (as intake does before it
//! adds an item), reads the items, frees the key when it still points at this digest, marks the
//! digest closed and creates one pending delivery per action with the digest's context. With
//! several instances on PostgreSQL, the first to lock the cell closes the digest; the others
//! find it closed. A crash before the commit leaves it open, to be closed again whole.

use super::{Millis, Store, StoreError, now_ms};
use serde::Serialize;

/// An open digest (due, or of a rule that may be gone).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenDigest {
    /// Its id.
    pub id: i64,
    /// Its rule.
    pub rule: String,
    /// Which kind of digest (`digest:` or `digest-throttled:` and the rule).
    pub scope: String,
    /// The configuration of its last item.
    pub config_hash: String,
}

/// A digest as closing reads it.
#[derive(Debug, Clone)]
pub struct DigestContents {
    /// Its rule.
    pub rule: String,
    /// The cell scope: which kind of digest (`digest:`, `digest-throttled:` and the rule).
    pub scope: String,
    /// Its key.
    pub key: String,
    /// When it opened.
    pub opened_at: Millis,
    /// When it closes (now).
    pub closed_at: Millis,
    /// Why it closes.
    pub reason: String,
    /// Events listed in full.
    pub list: i64,
    /// Its items, in order.
    pub items: Vec<DigestItemRow>,
}

/// One item as closing reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DigestItemRow {
    /// Its position, from 1.
    pub seq: i64,
    /// The event.
    pub event_id: String,
    /// Its canonical type.
    pub event_type: String,
    /// Its lead's email.
    pub lead_email: Option<String>,
    /// The event as stored, for the items listed (and when it is still stored).
    pub payload: Option<String>,
}

/// A delivery a closing digest creates.
#[derive(Debug, Clone)]
pub struct DigestDelivery {
    /// The action's position in the rule.
    pub action_index: u32,
    /// `slack`, `email`, …
    pub action_kind: String,
    /// Its destination.
    pub destination: String,
    /// What its templates see over the event (`events`, `digest`), JSON.
    pub context: String,
}

/// What closing did.
#[derive(Debug, Clone, Serialize)]
pub struct Closed {
    /// Its items.
    pub items: usize,
    /// The deliveries created.
    pub deliveries: usize,
    /// Why it closed.
    pub reason: String,
}

type ContentsRow = (String, String, String, Millis, String, i64);

/// Closes one digest inside a transaction `$tx` (a locked cell is `$lock`: ` FOR UPDATE` on
/// PostgreSQL, nothing on SQLite, whose writer is one at a time).
macro_rules! close_in {
    ($tx:ident, $lock:expr, $id:expr, $now:expr, $reason:expr, $build:expr) => {{
        let (id, now) = ($id, $now);
        let head: Option<ContentsRow> = sqlx::query_as(
            "SELECT rule, scope, key, opened_at, reason, list FROM digests
             WHERE id = $1 AND closed_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&mut *$tx)
        .await?;
        let Some((rule, scope, key, opened_at, _, list)) = head else {
            return Ok(None);
        };
        // The key's cell, as intake locks it before adding to a digest: created if it is gone.
        sqlx::query(
            "INSERT INTO memory_cells (scope, key, expires) VALUES ($1, $2, $3)
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(&scope)
        .bind(&key)
        .bind(now)
        .execute(&mut *$tx)
        .await?;
        // Another instance closing it (or an intake adding to it) holds the cell: this one
        // leaves it to them, and finds it closed, or due again, at its next look.
        let points: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT a FROM memory_cells WHERE scope = $1 AND key = $2{}",
            $lock
        )))
        .bind(&scope)
        .bind(&key)
        .fetch_optional(&mut *$tx)
        .await?;
        let Some(points) = points else {
            return Ok(None);
        };
        // Read again under the lock: closed meanwhile, or made due by `max_events`.
        let still: Option<String> =
            sqlx::query_scalar("SELECT reason FROM digests WHERE id = $1 AND closed_at IS NULL")
                .bind(id)
                .fetch_optional(&mut *$tx)
                .await?;
        let Some(reason) = still else {
            return Ok(None);
        };
        let items: Vec<DigestItemRow> = sqlx::query_as(
            "SELECT i.seq, i.event_id, i.event_type, i.lead_email,
                    CASE WHEN i.seq <= $2 THEN e.payload END AS payload
             FROM digest_items i LEFT JOIN events e ON e.id = i.event_id
             WHERE i.digest_id = $1 ORDER BY i.seq",
        )
        .bind(id)
        .bind(list)
        .fetch_all(&mut *$tx)
        .await?;
        let reason = $reason.map(str::to_string).unwrap_or(reason);
        let contents = DigestContents {
            rule,
            scope,
            key,
            opened_at,
            closed_at: now,
            reason,
            list,
            items,
        };
        let deliveries: Vec<DigestDelivery> = $build(&contents);
        if deliveries.is_empty() {
            // Nothing to send it with: rolled back, the digest stays open.
            return Err(StoreError::Mismatch(format!(
                "digest {id} of rule {:?} has no action to send it with",
                contents.rule
            )));
        }
        if points == id {
            sqlx::query(
                "UPDATE memory_cells SET a = 0, b = 0, c = 0, expires = $3
                 WHERE scope = $1 AND key = $2",
            )
            .bind(&contents.scope)
            .bind(&contents.key)
            .bind(now)
            .execute(&mut *$tx)
            .await?;
        }
        sqlx::query("UPDATE digests SET closed_at = $2, reason = $3, items = $4 WHERE id = $1")
            .bind(id)
            .bind(now)
            .bind(&contents.reason)
            .bind(contents.items.len() as i64)
            .execute(&mut *$tx)
            .await?;
        // The deliveries' event is the digest's last: its configuration is the latest that
        // added to the digest.
        let event = contents
            .items
            .last()
            .map(|i| i.event_id.clone())
            .unwrap_or_default();
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM events WHERE id = $1")
            .bind(&event)
            .fetch_optional(&mut *$tx)
            .await?;
        let mut created = 0;
        if exists.is_none() {
            return Err(StoreError::Mismatch(format!(
                "digest {id}: its last event {event} is no longer stored"
            )));
        }
        {
            for d in &deliveries {
                sqlx::query(
                    "INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination,
                                             status, context, attempts, next_attempt_at,
                                             created_at, updated_at, digest_id)
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6, 0, $7, $7, $7, $8)",
                )
                .bind(&event)
                .bind(&contents.rule)
                .bind(i64::from(d.action_index))
                .bind(&d.action_kind)
                .bind(&d.destination)
                .bind(&d.context)
                .bind(now)
                .bind(id)
                .execute(&mut *$tx)
                .await?;
                created += 1;
            }
        }
        Some(Closed {
            items: contents.items.len(),
            deliveries: created,
            reason: contents.reason,
        })
    }};
}

impl Store {
    /// Open digests due at `now` (their time has come, or `max_events` made them due), the
    /// earliest first; at most `limit`.
    pub async fn due_digests(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<OpenDigest>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, rule, scope, config_hash FROM digests
                 WHERE closed_at IS NULL AND closes_at <= $1
                 ORDER BY closes_at LIMIT CAST($2 AS INTEGER)",
            )
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Every open digest, by rule (to close those whose rule is gone).
    pub async fn open_digests(&self) -> Result<Vec<OpenDigest>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, rule, scope, config_hash FROM digests
                 WHERE closed_at IS NULL ORDER BY closes_at",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Closes a digest: `build` makes its deliveries from what it holds; `reason` replaces the
    /// one it was due with (`rule_removed`). `None` when it was closed already.
    pub async fn close_digest(
        &self,
        id: i64,
        reason: Option<&'static str>,
        build: impl FnOnce(&DigestContents) -> Vec<DigestDelivery>,
    ) -> Result<Option<Closed>, StoreError> {
        let now = now_ms();
        match self {
            Store::Sqlite(s) => {
                s.check_file()?;
                let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
                let closed =
                    async { Ok::<_, StoreError>(close_in!(tx, "", id, now, reason, build)) }
                        .await?;
                tx.commit().await?;
                Ok(closed)
            }
            Store::Postgres(p) => {
                let mut tx = p.pool.begin().await?;
                let closed = async {
                    Ok::<_, StoreError>(close_in!(
                        tx,
                        " FOR UPDATE SKIP LOCKED",
                        id,
                        now,
                        reason,
                        build
                    ))
                }
                .await?;
                if closed.as_ref().is_some_and(|c| c.deliveries > 0) {
                    p.notify_in(&mut tx).await?;
                }
                tx.commit().await?;
                Ok(closed)
            }
        }
    }
}
