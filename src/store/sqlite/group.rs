//! The SQLite group commit: events, attempt records and claims of one batch in one transaction,
//! sent to SQLite's thread as one script (one round trip, where a statement at a time took a
//! dozen).
//!
//! Each statement of the script is a [`Statement`] that carries its own values, in the order
//! of its own `?`; the script binds them statement after statement, so the order of the values
//! can only be wrong inside one statement, next to its SQL. The rows travel as JSON arrays, so
//! a script's text depends only on how many claims it makes and SQLite prepares it once
//! (parsing a statement of a few hundred values took a fifth of the writer's time).
//! Statements that depend on an earlier one's outcome say so in SQL (an event is written when
//! its key holds its id; a delivery when its event was written).
//!
//! sqlx runs a query string of several statements on SQLite, binding the `?` in order across
//! them; its documentation calls that behaviour deprecated (launchbadge/sqlx#3108). It is used
//! in [`run`] alone: should a release drop it, every group commit fails at once (the tests
//! too), and [`run`] goes to one call per statement inside one transaction.

use super::PENDING_DESTINATIONS;
use crate::store::rows::{DueRow, after};
use crate::store::{
    Claim, CommitOutcome, Created, DeliveryStatus, Due, Finished, Intake, Millis, NewEvent,
    StoreError,
};
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Either, Executor, FromRow, Row};
use std::collections::HashMap;

/// Most payload bytes one group commit carries. SQLite refuses a bound value past 1 GB, and
/// the payloads of a batch travel as one blob: 512 bodies of a megabyte, with what the
/// canonical event adds, could pass that. A bigger batch is written as several commits, in
/// order.
const PAYLOAD_BYTES_PER_COMMIT: usize = 64 << 20;

/// What a claim reads of each delivery it takes (the columns of [`DueRow`]), from the
/// `RETURNING` clause of its `UPDATE`.
const DUE_RETURNING: &str = "id, event_id, rule, action_index, destination, attempts,
    (SELECT e.config_hash FROM events e WHERE e.id = deliveries.event_id) AS config_hash,
    (SELECT e.payload FROM events e WHERE e.id = deliveries.event_id) AS payload,
    (SELECT e.received_at FROM events e WHERE e.id = deliveries.event_id) AS received_at";

/// Writes a batch in as many group commits as its payloads need (see
/// [`PAYLOAD_BYTES_PER_COMMIT`]; nearly always one). The records and claims go with the first.
pub(super) async fn write_parts(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    events: &[NewEvent],
    done: &[Finished],
    claims: &[Claim],
    now: Millis,
) -> Result<CommitOutcome, StoreError> {
    let mut outcome = CommitOutcome::default();
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

/// One group commit: the script run, then its rows read into the batch's answers.
async fn write(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    events: &[NewEvent],
    done: &[Finished],
    claims: &[Claim],
    now: Millis,
) -> Result<CommitOutcome, StoreError> {
    let rows = run(conn, script(events, done, claims, now)).await?;
    // Committed. A row that cannot be read now would mean a schema this code does not know.
    let mut keys = HashMap::with_capacity(events.len());
    let mut created: Vec<Created> = Vec::new();
    let mut claimed: Vec<Vec<Due>> = vec![Vec::new(); claims.len()];
    for (yields, row) in rows {
        match yields {
            Yields::Keys => {
                keys.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
            }
            Yields::Created => created.push(Created {
                id: row.try_get(0)?,
                suppressed: row.try_get(1)?,
            }),
            Yields::Claimed(i) => claimed[i].push(DueRow::from_row(&row)?.into()),
            Yields::Nothing => {}
        }
    }
    // Ids are assigned in the order the rows are given (one writer, AUTOINCREMENT), so the
    // returned ids, sorted, line up with the accepted events' deliveries.
    created.sort_unstable_by_key(|c| c.id);
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
    Ok(CommitOutcome { intakes, claimed })
}

/// Runs a script in one round trip and returns the rows of each statement, tagged with what
/// they are. Rows are kept as they come and read once the script has run to its end: an error
/// while it runs means nothing was committed, and the rollback here is right.
async fn run(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    script: Vec<Statement>,
) -> Result<Vec<(Yields, SqliteRow)>, StoreError> {
    let yields: Vec<Yields> = script.iter().map(|s| s.yields).collect();
    let sql: String = script.iter().map(|s| s.sql.as_str()).collect();
    let mut arguments = SqliteArguments::default();
    for value in script.into_iter().flat_map(|s| s.values) {
        match value {
            Value::Int(n) => arguments.add(n),
            Value::Text(t) => arguments.add(t),
            Value::Blob(b) => arguments.add(b),
        }
        .map_err(|e| StoreError::Mismatch(format!("a value cannot be bound: {e}")))?;
    }
    let mut rows: Vec<(Yields, SqliteRow)> = Vec::new();
    let ran = async {
        let mut results = conn.fetch_many(sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments));
        let mut at = 0;
        while let Some(result) = results.try_next().await? {
            match result {
                Either::Left(_) => at += 1,
                Either::Right(row) => rows.push((yields.get(at).copied().unwrap_or_default(), row)),
            }
        }
        Ok::<_, sqlx::Error>(at)
    };
    match ran.await {
        Ok(statements) if statements == yields.len() => Ok(rows),
        outcome => {
            // Whatever part ran is undone; a connection that cannot say so is not used again.
            if let Err(e) = sqlx::raw_sql("ROLLBACK").execute(&mut **conn).await
                && !e.to_string().contains("no transaction is active")
            {
                conn.close_on_drop();
            }
            Err(match outcome {
                Err(e) => e.into(),
                Ok(statements) => StoreError::Mismatch(format!(
                    "a group commit ran {statements} of its {} statements",
                    yields.len()
                )),
            })
        }
    }
}

/// A value a statement binds.
enum Value {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// The rows a statement of a group commit gives back.
#[derive(Debug, Clone, Copy, Default)]
enum Yields {
    /// None that matter.
    #[default]
    Nothing,
    /// `(key, event_id)`: the event that holds each key of the batch.
    Keys,
    /// The ids of the deliveries created.
    Created,
    /// The deliveries taken by the claim at this position.
    Claimed(usize),
}

/// One statement of a group commit: its SQL, the values of its `?` in order, and its rows.
struct Statement {
    sql: String,
    values: Vec<Value>,
    yields: Yields,
}

impl Statement {
    fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            values: Vec::new(),
            yields: Yields::Nothing,
        }
    }

    fn int(mut self, n: i64) -> Self {
        self.values.push(Value::Int(n));
        self
    }

    fn text(mut self, t: String) -> Self {
        self.values.push(Value::Text(t));
        self
    }

    fn blob(mut self, b: Vec<u8>) -> Self {
        self.values.push(Value::Blob(b));
        self
    }

    fn yields(mut self, yields: Yields) -> Self {
        self.yields = yields;
        self
    }
}

/// Rows as one JSON array of arrays (or of values), the way the statements read them
/// (`jsonb_each` reads each array once; `->>` picks a field).
fn json<T: serde::Serialize>(rows: impl Iterator<Item = T>) -> String {
    let rows: Vec<T> = rows.collect();
    serde_json::to_string(&rows).expect("rows serialise")
}

/// The statements of one group commit: keys, events, deliveries, attempt records, then the
/// claims, between `BEGIN IMMEDIATE` and `COMMIT`.
fn script(events: &[NewEvent], done: &[Finished], claims: &[Claim], now: Millis) -> Vec<Statement> {
    let mut script = vec![Statement::new("BEGIN IMMEDIATE;")];
    script.extend(intake(events, now));
    script.extend(records(done, now));
    for (i, claim) in claims.iter().enumerate() {
        script.push(self::claim(claim, now).yields(Yields::Claimed(i)));
    }
    script.push(Statement::new("\nCOMMIT;"));
    script
}

/// The events of the batch: their keys (a key already held marks a repeat), the events whose
/// key they hold, and those events' deliveries.
///
/// Keys `[key, event_id]`; events `[id, source, event_type, lead_email, config_hash,
/// payload_start, payload_length, key]`, their payloads one blob of their own (the start counts
/// from 1, in bytes: inside the JSON array they would be escaped here and unescaped by SQLite,
/// which took a tenth of intake's CPU); deliveries `[event_id, rule, action_index, action_kind,
/// destination, status, once_key]`; `once` rows `[rule, key, event_id, until]`.
fn intake(events: &[NewEvent], now: Millis) -> [Statement; 5] {
    let keys = json(events.iter().map(|e| (&e.dedup_key, &e.id)));
    let mut payloads = Vec::with_capacity(events.iter().map(|e| e.payload.len()).sum());
    let rows = json(events.iter().map(|e| {
        let start = payloads.len() + 1;
        payloads.extend_from_slice(e.payload.as_bytes());
        let length = e.payload.len();
        let (id, source, kind, lead) = (&e.id, &e.source, &e.event_type, &e.lead_email);
        (
            id,
            source,
            kind,
            lead,
            &e.config_hash,
            start,
            length,
            &e.dedup_key,
        )
    }));
    let deliveries = json(events.iter().flat_map(|e| {
        let status = match e.claimed {
            true => DeliveryStatus::Sending,
            false => DeliveryStatus::Pending,
        };
        e.deliveries.iter().map(move |d| {
            let (rule, index, kind) = (&d.rule, d.action_index, &d.action_kind);
            let once = d.once.as_ref().map(|o| &o.key);
            (
                &e.id,
                rule,
                index,
                kind,
                &d.destination,
                status.as_str(),
                once,
            )
        })
    }));
    let once = json(events.iter().flat_map(|e| {
        e.deliveries.iter().filter_map(move |d| {
            Some((
                &d.rule,
                &d.once.as_ref()?.key,
                &e.id,
                d.once.as_ref()?.until,
            ))
        })
    }));
    [
        Statement::new(
            "
        INSERT INTO intake_keys (key, event_id, created_at)
            SELECT j.value->>0, j.value->>1, ? FROM jsonb_each(?) AS j
            WHERE true ON CONFLICT (key) DO NOTHING;",
        )
        .int(now)
        .text(keys.clone()),
        Statement::new(
            "
        SELECT key, event_id FROM intake_keys
            WHERE key IN (SELECT value->>0 FROM jsonb_each(?));",
        )
        .text(keys)
        .yields(Yields::Keys),
        Statement::new(
            "
        INSERT INTO events (id, source, event_type, lead_email, received_at, config_hash, payload)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, ?, j.value->>4,
                   CAST(substr(?, j.value->>5, j.value->>6) AS TEXT)
            FROM jsonb_each(?) AS j
            WHERE EXISTS (SELECT 1 FROM intake_keys k
                          WHERE k.key = j.value->>7 AND k.event_id = j.value->>0);",
        )
        .int(now)
        .blob(payloads)
        .text(rows),
        // `once`: the first event of a key takes it (or one whose hold has expired); the
        // actions of one rule share their event's key, and later events of the batch find it
        // taken.
        Statement::new(
            "
        INSERT INTO noise_once (rule, key, event_id, until)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3 FROM jsonb_each(?) AS j
            WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = j.value->>2)
            ON CONFLICT (rule, key) DO UPDATE SET event_id = excluded.event_id,
                                                  until = excluded.until
            WHERE noise_once.until <= ?;",
        )
        .text(once)
        .int(now),
        Statement::new(
            "
        INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination, status,
                                reason, attempts, next_attempt_at, created_at, updated_at)
            SELECT d.event_id, d.rule, d.action_index, d.action_kind, d.destination,
                   CASE WHEN d.fires THEN d.status ELSE 'suppressed' END,
                   CASE WHEN d.fires THEN NULL ELSE 'once' END, 0, ?, ?, ?
            FROM (SELECT j.value->>0 AS event_id, j.value->>1 AS rule,
                         j.value->>2 AS action_index, j.value->>3 AS action_kind,
                         j.value->>4 AS destination, j.value->>5 AS status,
                         (j.value->>6 IS NULL OR j.value->>0 = (
                            SELECT o.event_id FROM noise_once o
                            WHERE o.rule = j.value->>1 AND o.key = j.value->>6)) AS fires
                  FROM jsonb_each(?) AS j
                  WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = j.value->>0)) AS d
            RETURNING id, status = 'suppressed';",
        )
        .int(now)
        .int(now)
        .int(now)
        .text(deliveries)
        .yields(Yields::Created),
    ]
}

/// The attempts made, and where each delivery goes next. Records `[delivery_id, started_at,
/// duration_ms, outcome, status_code, error, status, next_attempt_at]`.
fn records(done: &[Finished], now: Millis) -> [Statement; 2] {
    let records = json(done.iter().map(|f| {
        let (status, outcome, next_at) = after(&f.next, now);
        let a = &f.attempt;
        let (started, duration, code, error) =
            (a.started_at, a.duration_ms, a.status_code, &a.error);
        (
            f.id,
            started,
            duration,
            outcome,
            code,
            error,
            status.as_str(),
            next_at,
        )
    }));
    [
        Statement::new(
            "
        INSERT INTO attempts (delivery_id, started_at, duration_ms, outcome, status_code, error)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5
            FROM jsonb_each(?) AS j;",
        )
        .text(records.clone()),
        Statement::new(
            "
        UPDATE deliveries SET status = v.status, attempts = attempts + 1,
                next_attempt_at = v.next_at, last_error = COALESCE(v.error, last_error),
                updated_at = ?
            FROM (SELECT j.value->>0 AS id, j.value->>6 AS status, j.value->>7 AS next_at,
                         j.value->>5 AS error
                  FROM jsonb_each(?) AS j) AS v
            WHERE deliveries.id = v.id;",
        )
        .int(now)
        .text(records),
    ]
}

/// One claim: up to its limit of due deliveries, each destination's within the room it has
/// left, none of those in flight here, marked `sending`. Its sends in flight come as
/// `[destination, count]` pairs, its deliveries in flight as an array of ids.
///
/// Its limits are written `LIMIT CAST(? AS INTEGER)`: SQLite plans a bare `LIMIT ?` with the
/// value bound at the time and prepares the statement again whenever it is bound anew, which
/// would be every claim (3 % of the router's CPU while delivering).
fn claim(c: &Claim, now: Millis) -> Statement {
    let per_destination = i64::from(c.per_destination);
    Statement::new(format!(
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
    ))
    .int(now)
    .int(per_destination)
    .text(json(c.in_use.iter()))
    .int(now)
    .text(json(c.in_flight.iter()))
    .int(per_destination)
    .int(i64::from(c.limit))
}

#[cfg(test)]
mod tests;
