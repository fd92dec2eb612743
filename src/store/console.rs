//! What the console and its API read from the store: events with their deliveries (those that
//! matched nothing included), dead letters by filter, per-destination health, per-rule counts,
//! throughput and refused webhook requests. One SQL text serves both backends (`$n` parameters,
//! numbered in order of first use, are positional in SQLite too), so both answer alike.

use super::rows::{AttemptRow, VIEW_COLUMNS, ViewRow};
use super::{AttemptView, DeliveryStatus, DeliveryView, Millis, Store, StoreError, now_ms};
use serde::Serialize;

/// Which events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this canonical type.
    pub event_type: Option<String>,
    /// Only this lead's email (any case).
    pub lead: Option<String>,
    /// Only this campaign id.
    pub campaign: Option<String>,
    /// Only events with a delivery for this rule.
    pub rule: Option<String>,
    /// Only events with a delivery in this state, or with none at all.
    pub status: Option<EventStatus>,
    /// Received at or after (Unix ms).
    pub since: Option<Millis>,
    /// Received before (Unix ms).
    pub until: Option<Millis>,
    /// The page after this one: events older than this cursor.
    pub after: Option<Cursor>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<u32>,
}

/// An event's standing by its deliveries, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// A delivery in this state.
    Delivery(DeliveryStatus),
    /// Matched no rule: no delivery at all.
    Unmatched,
}

impl std::str::FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unmatched" | "none" => Ok(EventStatus::Unmatched),
            other => other
                .parse()
                .map(EventStatus::Delivery)
                .map_err(|e| format!("{e}, or unmatched")),
        }
    }
}

/// Where a page of events ends: its last event's time and id (`MS-ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Received at (Unix ms).
    pub at: Millis,
    /// Event id.
    pub id: String,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.at, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (at, id) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a page cursor (MS-ID)"))?;
        let at = at
            .parse()
            .map_err(|_| format!("{s:?} is not a page cursor (MS-ID)"))?;
        Ok(Cursor { at, id: id.into() })
    }
}

/// An event as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// Event id.
    pub id: String,
    /// The webhook source.
    pub source: String,
    /// Canonical type.
    pub event_type: String,
    /// The lead's email.
    pub lead_email: Option<String>,
    /// The campaign's id.
    pub campaign_id: Option<String>,
    /// When it was received (Unix ms).
    pub received_at: Millis,
    /// Its deliveries: rule, destination and state, in creation order.
    pub deliveries: Vec<DeliveryBrief>,
}

/// One delivery in an event's line.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryBrief {
    /// Delivery id.
    pub id: i64,
    /// Rule name.
    pub rule: String,
    /// Destination.
    pub destination: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Why it was suppressed or held.
    pub reason: Option<String>,
}

/// A page of events.
#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    /// The events, newest first.
    pub events: Vec<EventSummary>,
    /// The next page's cursor, when there may be one.
    pub next: Option<String>,
}

/// One event whole.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// The event's line.
    #[serde(flatten)]
    pub summary: EventSummary,
    /// The configuration that matched it (hash).
    pub config_hash: String,
    /// The canonical event as stored (the payload as received is its `raw`).
    pub payload: serde_json::Value,
    /// Every delivery with every attempt.
    pub delivery_history: Vec<DeliveryView>,
}

/// Which dead letters an action applies to: given ids, or every one matching a filter.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// Only these ids (when not empty).
    pub ids: Vec<i64>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this destination.
    pub destination: Option<String>,
}

/// Dead letters of one rule and destination.
#[derive(Debug, Clone, Serialize)]
pub struct DeadGroup {
    /// Rule name.
    pub rule: String,
    /// Destination.
    pub destination: String,
    /// How many.
    pub count: u64,
}

/// One attempt, for destination health.
#[derive(Debug, Clone)]
pub struct RecentAttempt {
    /// The delivery's destination.
    pub destination: String,
    /// When it started (Unix ms).
    pub at: Millis,
    /// delivered, retry, dead, …
    pub outcome: String,
    /// The error.
    pub error: Option<String>,
}

/// A rule's deliveries over a period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleActivity {
    /// Events it matched.
    pub matched: u64,
    /// Deliveries that ended dead.
    pub failed: u64,
}

/// A refused webhook request (never its body).
#[derive(Debug, Clone, Serialize)]
pub struct RefusedRequest {
    /// When (RFC 3339).
    pub at: String,
    /// The client's address as the router saw it (after trusted proxies).
    pub client: String,
    /// The path asked for, without its query (which may hold a token).
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
    /// Why.
    pub reason: String,
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dead-letter condition of a [`DeadFilter`], its parameters starting at `$1`.
/// (`p` is the deliveries table's alias with its dot, or empty.)
fn dead_condition(f: &DeadFilter, p: &str) -> String {
    let mut sql = format!(
        "{p}status = 'dead' AND (CAST($1 AS TEXT) IS NULL OR {p}rule = $1) \
         AND (CAST($2 AS TEXT) IS NULL OR {p}destination = $2)"
    );
    if !f.ids.is_empty() {
        sql.push_str(&format!(" AND {p}id IN ({})", placeholders(3, f.ids.len())));
    }
    sql
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    id: String,
    source: String,
    event_type: String,
    lead_email: Option<String>,
    campaign_id: Option<String>,
    received_at: i64,
}

#[derive(sqlx::FromRow)]
struct BriefRow {
    id: i64,
    event_id: String,
    rule: String,
    destination: String,
    status: String,
    reason: Option<String>,
}

const EVENT_COLUMNS: &str =
    "e.id, e.source, e.event_type, e.lead_email, e.campaign_id, e.received_at";

impl Store {
    /// A page of events matching `f`, newest first, each with its deliveries.
    pub async fn events(&self, f: &EventFilter) -> Result<EventPage, StoreError> {
        let limit = f.limit.unwrap_or(50).clamp(1, 500);
        let (after_at, after_id) = match &f.after {
            Some(c) => (Some(c.at), Some(c.id.clone())),
            None => (None, None),
        };
        let (status, unmatched) = match f.status {
            Some(EventStatus::Delivery(s)) => (Some(s.as_str()), false),
            Some(EventStatus::Unmatched) => (None, true),
            None => (None, false),
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e
             WHERE (CAST($1 AS TEXT) IS NULL OR e.event_type = $1)
               AND (CAST($2 AS TEXT) IS NULL OR lower(e.lead_email) = lower($2))
               AND (CAST($3 AS TEXT) IS NULL OR e.campaign_id = $3)
               AND (CAST($4 AS BIGINT) IS NULL OR e.received_at >= $4)
               AND (CAST($5 AS BIGINT) IS NULL OR e.received_at < $5)
               AND (CAST($6 AS BIGINT) IS NULL OR e.received_at < $6
                    OR (e.received_at = $6 AND e.id < $7))
               AND (CAST($8 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM deliveries d
                    WHERE d.event_id = e.id AND d.rule = $8))
               AND (CAST($9 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM deliveries d
                    WHERE d.event_id = e.id AND d.status = $9))
               AND ($10 = 0 OR NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id))
             ORDER BY e.received_at DESC, e.id DESC LIMIT CAST($11 AS INTEGER)"
        );
        let rows: Vec<SummaryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&f.event_type)
                .bind(&f.lead)
                .bind(&f.campaign)
                .bind(f.since)
                .bind(f.until)
                .bind(after_at)
                .bind(&after_id)
                .bind(&f.rule)
                .bind(status)
                .bind(unmatched as i64)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
        });
        let next = (rows.len() == limit as usize).then(|| {
            let last = rows.last().expect("a full page");
            Cursor {
                at: last.received_at,
                id: last.id.clone(),
            }
            .to_string()
        });
        let events = self.with_briefs(rows).await?;
        Ok(EventPage { events, next })
    }

    /// Events received after `cursor` (oldest first, at most `limit`): what the live view adds.
    pub async fn events_since(
        &self,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e
             WHERE e.received_at > $1 OR (e.received_at = $1 AND e.id > $2)
             ORDER BY e.received_at, e.id LIMIT CAST($3 AS INTEGER)"
        );
        let rows: Vec<SummaryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(cursor.at)
                .bind(&cursor.id)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
        });
        self.with_briefs(rows).await
    }

    /// The newest events received at or after `since` (at most `limit`, newest first): what a
    /// live view reads again, since an instance may commit an event stamped earlier than one
    /// another instance committed before it.
    pub async fn events_received_since(
        &self,
        since: Millis,
        limit: u32,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.received_at >= $1
             ORDER BY e.received_at DESC, e.id DESC LIMIT CAST($2 AS INTEGER)"
        );
        let rows: Vec<SummaryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(since)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
        });
        self.with_briefs(rows).await
    }

    /// The newest event's cursor (where a live view starts).
    pub async fn newest_event(&self) -> Result<Cursor, StoreError> {
        let row: Option<(i64, String)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT received_at, id FROM events ORDER BY received_at DESC, id DESC LIMIT 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map_or(
            Cursor {
                at: 0,
                id: String::new(),
            },
            |(at, id)| Cursor { at, id },
        ))
    }

    async fn with_briefs(&self, rows: Vec<SummaryRow>) -> Result<Vec<EventSummary>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, event_id, rule, destination, status, reason FROM deliveries
             WHERE event_id IN ({}) ORDER BY id",
            placeholders(1, rows.len())
        );
        let briefs: Vec<BriefRow> = on_pool!(self, pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
            for r in &rows {
                q = q.bind(&r.id);
            }
            q.fetch_all(pool).await?
        });
        let mut by_event: std::collections::HashMap<String, Vec<DeliveryBrief>> =
            std::collections::HashMap::new();
        for b in briefs {
            let status = b
                .status
                .parse()
                .map_err(|e| StoreError::Mismatch(format!("delivery {}: {e}", b.id)))?;
            by_event.entry(b.event_id).or_default().push(DeliveryBrief {
                id: b.id,
                rule: b.rule,
                destination: b.destination,
                status,
                reason: b.reason,
            });
        }
        Ok(rows
            .into_iter()
            .map(|r| EventSummary {
                deliveries: by_event.remove(&r.id).unwrap_or_default(),
                id: r.id,
                source: r.source,
                event_type: r.event_type,
                lead_email: r.lead_email,
                campaign_id: r.campaign_id,
                received_at: r.received_at,
            })
            .collect())
    }

    /// One event with every delivery and attempt; `None` when there is no such event.
    pub async fn event(&self, id: &str) -> Result<Option<EventDetail>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, e.config_hash, e.payload FROM events e WHERE e.id = $1"
        );
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            summary: SummaryRow,
            config_hash: String,
            payload: String,
        }
        let row: Option<Row> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        let Some(row) = row else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.event_id = $1 ORDER BY d.id"
        );
        let views: Vec<ViewRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .fetch_all(pool)
                .await?
        });
        let mut history = Vec::with_capacity(views.len());
        for v in views {
            let mut view = DeliveryView::try_from(v)?;
            view.history = self.attempts(view.id).await?;
            history.push(view);
        }
        let payload =
            serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::String(row.payload));
        let mut summary = self.with_briefs(vec![row.summary]).await?;
        Ok(Some(EventDetail {
            summary: summary.remove(0),
            config_hash: row.config_hash,
            payload,
            delivery_history: history,
        }))
    }

    /// A delivery's attempts, oldest first.
    pub async fn attempts(&self, delivery: i64) -> Result<Vec<AttemptView>, StoreError> {
        let rows: Vec<AttemptRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT started_at, duration_ms, outcome, status_code, error FROM attempts
                 WHERE delivery_id = $1 ORDER BY id",
            )
            .bind(delivery)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(AttemptView::from).collect())
    }

    /// Dead letters by rule and destination.
    pub async fn dead_groups(&self) -> Result<Vec<DeadGroup>, StoreError> {
        let rows: Vec<(String, String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT rule, destination, COUNT(*) FROM deliveries WHERE status = 'dead'
                 GROUP BY rule, destination ORDER BY rule, destination",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(rule, destination, count)| DeadGroup {
                rule,
                destination,
                count: count as u64,
            })
            .collect())
    }

    /// How many dead letters a filter selects.
    pub async fn count_dead(&self, f: &DeadFilter) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) FROM deliveries WHERE {}",
            dead_condition(f, "")
        );
        let n: i64 = on_pool!(self, pool => {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&f.rule)
                .bind(&f.destination);
            for id in &f.ids {
                q = q.bind(id);
            }
            q.fetch_one(pool).await?
        });
        Ok(n as u64)
    }

    /// Requeues the dead letters a filter selects (attempts start again); returns how many.
    pub async fn retry_dead_where(&self, f: &DeadFilter) -> Result<u64, StoreError> {
        let now = now_ms();
        let n = self
            .update_dead(
                f,
                "status = 'pending', attempts = 0, next_attempt_at = $N, updated_at = $N",
                now,
            )
            .await?;
        if n > 0
            && let Store::Postgres(p) = self
        {
            p.notify().await?;
        }
        Ok(n)
    }

    /// Discards the dead letters a filter selects; returns how many.
    pub async fn discard_dead_where(&self, f: &DeadFilter) -> Result<u64, StoreError> {
        self.update_dead(f, "status = 'discarded', updated_at = $N", now_ms())
            .await
    }

    async fn update_dead(&self, f: &DeadFilter, set: &str, now: Millis) -> Result<u64, StoreError> {
        let n_at = 3 + f.ids.len();
        let sql = format!(
            "UPDATE deliveries SET {} WHERE {}",
            set.replace("$N", &format!("${n_at}")),
            dead_condition(f, "")
        );
        let n = on_pool!(writer self, pool => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&f.rule)
                .bind(&f.destination);
            for id in &f.ids {
                q = q.bind(id);
            }
            q.bind(now).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// The dead letters a filter selects, newest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        f: &DeadFilter,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        let n = 3 + f.ids.len();
        let condition = dead_condition(f, "d.");
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE {condition} ORDER BY d.id DESC LIMIT CAST(${n} AS INTEGER)"
        );
        let rows: Vec<ViewRow> = on_pool!(self, pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&f.rule)
                .bind(&f.destination);
            for id in &f.ids {
                q = q.bind(id);
            }
            q.bind(limit as i64).fetch_all(pool).await?
        });
        rows.into_iter().map(DeliveryView::try_from).collect()
    }

    /// The event a delivery belongs to.
    pub async fn delivery_event(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT event_id FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Attempts started since `since`, newest first (at most `limit`).
    pub async fn recent_attempts(
        &self,
        since: Millis,
        limit: u32,
    ) -> Result<Vec<RecentAttempt>, StoreError> {
        let rows: Vec<(String, i64, String, Option<String>)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT d.destination, a.started_at, a.outcome, a.error
                 FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
                 WHERE a.started_at >= $1 ORDER BY a.id DESC LIMIT CAST($2 AS INTEGER)",
            )
            .bind(since)
            .bind(limit as i64)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(destination, at, outcome, error)| RecentAttempt {
                destination,
                at,
                outcome,
                error,
            })
            .collect())
    }

    /// Each destination's last delivered attempt since `since` (Unix ms).
    pub async fn last_successes(&self, since: Millis) -> Result<Vec<(String, Millis)>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT d.destination, MAX(a.started_at) FROM attempts a
                 JOIN deliveries d ON d.id = a.delivery_id
                 WHERE a.outcome = 'delivered' AND a.started_at >= $1 GROUP BY d.destination",
            )
            .bind(since)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Each rule's events matched and deliveries dead since `since`.
    pub async fn rule_activity(
        &self,
        since: Millis,
    ) -> Result<std::collections::HashMap<String, RuleActivity>, StoreError> {
        let rows: Vec<(String, i64, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT d.rule, COUNT(DISTINCT d.event_id),
                        COUNT(*) FILTER (WHERE d.status = 'dead')
                 FROM events e JOIN deliveries d ON d.event_id = e.id
                 WHERE e.received_at >= $1
                 GROUP BY d.rule",
            )
            .bind(since)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(rule, matched, failed)| {
                (
                    rule,
                    RuleActivity {
                        matched: matched as u64,
                        failed: failed as u64,
                    },
                )
            })
            .collect())
    }

    /// Events received since each of the given times.
    pub async fn received_since(&self, times: [Millis; 2]) -> Result<[u64; 2], StoreError> {
        let (a, b): (i64, i64) = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT COUNT(*) FILTER (WHERE received_at >= $1), COUNT(*) FROM events
                 WHERE received_at >= $2",
            )
            .bind(times[0])
            .bind(times[1].min(times[0]))
            .fetch_one(pool)
            .await?
        });
        Ok([a as u64, b as u64])
    }

    /// Records a refused webhook request, and forgets those older than a week.
    pub async fn record_refused(
        &self,
        client: &str,
        path: &str,
        status: u16,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        on_pool!(writer self, pool => {
            sqlx::query("INSERT INTO refused (at, client, path, status, reason) VALUES ($1, $2, $3, $4, $5)")
                .bind(now)
                .bind(client)
                .bind(path)
                .bind(status as i64)
                .bind(reason)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM refused WHERE at < $1")
                .bind(now - 7 * 86_400_000)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The latest refused webhook requests, newest first.
    pub async fn refused(&self, limit: u32) -> Result<Vec<RefusedRequest>, StoreError> {
        let rows: Vec<(i64, String, String, i64, String)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT at, client, path, status, reason FROM refused
                 ORDER BY at DESC, id DESC LIMIT CAST($1 AS INTEGER)",
            )
            .bind(limit as i64)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(at, client, path, status, reason)| RefusedRequest {
                at: super::rfc3339(at),
                client,
                path,
                status: status as u16,
                reason,
            })
            .collect())
    }
}
