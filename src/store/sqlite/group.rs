//! The SQLite group commit: events, attempt records and claims of one batch in one transaction,
//! sent to SQLite's thread as one script (one round trip, where a statement at a time took a
//! dozen).
//!
//! Each statement of the script is a [`Statement`] that carries its own values, in the order
//! of its own `?`; the script binds them statement after statement, so the order of the values
//! can only be wrong inside one statement, next to its SQL. The rows travel as JSONB arrays, so
//! a script's text depends only on how many claims it makes and SQLite prepares it once
//! (parsing a statement of a few hundred values took a fifth of the writer's time).
//! Statements that depend on an earlier one's outcome say so in SQL (an event is written when
//! its key holds its id; a delivery when its event was written).
//!
//! A batch with events whose deliveries depend on rule memory takes two round trips: the first
//! takes the keys and reads the memory the batch needs, the deciders run here over it in the
//! batch's order, and the second writes the events, the memory and the deliveries as decided,
//! in the same transaction.
//!
//! sqlx runs a query string of several statements on SQLite, binding the `?` in order across
//! them; its documentation calls that behaviour deprecated (launchbadge/sqlx#3108). It is used
//! in [`run`] alone: should a release drop it, every group commit fails at once (the tests
//! too), and [`run`] goes to one call per statement inside one transaction.

mod jsonb;
mod script;

use crate::store::memory::{self, Cell, Changed, Overlay, Slot, Span, Verdict, Writes};
use crate::store::rows::DueRow;
use crate::store::{
    Claim, CommitOutcome, Created, Due, Finished, Intake, Millis, NewEvent, StoreError,
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

/// One group commit, its rows read into the batch's answers.
async fn write(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    events: &[NewEvent],
    done: &[Finished],
    claims: &[Claim],
    now: Millis,
) -> Result<CommitOutcome, StoreError> {
    let (rows, verdicts) = if events.iter().all(|e| e.memory.is_none()) {
        let verdicts: Vec<Vec<Verdict>> = events
            .iter()
            .map(|e| Verdict::plain(&e.deliveries))
            .collect();
        let mut s = vec![script::begin()];
        s.extend(script::head(events, now));
        s.extend(script::body(
            events,
            &verdicts,
            &[],
            &Writes::default(),
            now,
        ));
        s.extend(script::tail(done, claims, now));
        (run(conn, s).await?, verdicts)
    } else {
        let needs = memory::needs_of(events.iter().filter_map(|e| e.memory.as_deref()), now);
        let mut first = vec![script::begin()];
        first.extend(script::head(events, now));
        first.extend(script::reads(&needs));
        let mut rows = run(conn, first).await?;
        // The transaction is open until the second round: a row that cannot be read ends it.
        let read = (|| Ok((cells_of(&rows)?, counts_of(&rows)?, holders_of(&rows)?)))();
        let (cells, counts, holders) = match read {
            Ok(read) => read,
            Err(e) => {
                rollback(conn).await;
                return Err(e);
            }
        };
        let overlay = Overlay::new(now, cells, counts);
        // The deciders are the rules' code, run while the transaction is open: should one
        // panic, the transaction is rolled back rather than left open on the writer.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decide(events, &holders, overlay, now)
        }));
        let Ok(Decided {
            verdicts,
            changed,
            writes,
        }) = decided
        else {
            rollback(conn).await;
            return Err(StoreError::Mismatch(
                "a rule's memory could not be decided (a decider panicked)".into(),
            ));
        };
        let mut second = script::body(events, &verdicts, &changed, &writes, now);
        second.extend(script::tail(done, claims, now));
        rows.extend(run(conn, second).await?);
        (rows, verdicts)
    };
    // Committed. A row that cannot be read now would mean a schema this code does not know.
    let keys = holders_of(&rows)?;
    let mut created: Vec<i64> = Vec::new();
    let mut claimed: Vec<Vec<Due>> = vec![Vec::new(); claims.len()];
    for (yields, row) in rows {
        match yields {
            Yields::Created => created.push(row.try_get(0)?),
            Yields::Claimed(i) => claimed[i].push(DueRow::from_row(&row)?.into()),
            Yields::Keys | Yields::Cells | Yields::Counts | Yields::Nothing => {}
        }
    }
    // Ids are assigned in the order the rows are given (one writer, AUTOINCREMENT), so the
    // returned ids, sorted, line up with the accepted events' recorded deliveries.
    created.sort_unstable();
    let mut created = created.into_iter();
    let intakes = events
        .iter()
        .zip(&verdicts)
        .map(|(e, verdicts)| match keys.get(&e.dedup_key) {
            Some(holder) if *holder == e.id => Intake::Accepted(
                verdicts
                    .iter()
                    .map(|&verdict| match verdict {
                        Verdict::Unmatched => None,
                        verdict => created.next().map(|id| Created { id, verdict }),
                    })
                    .collect(),
            ),
            holder => Intake::Duplicate(holder.cloned().unwrap_or_default()),
        })
        .collect();
    for due in &mut claimed {
        due.sort_unstable_by_key(|d| d.id);
    }
    Ok(CommitOutcome { intakes, claimed })
}

/// What the batch's deciders decided: per event, its deliveries' verdicts and its payload when
/// memory changed it; the memory to write.
struct Decided {
    verdicts: Vec<Vec<Verdict>>,
    changed: Vec<Changed>,
    writes: Writes,
}

/// Runs the accepted events' deciders in the batch's order over the memory read; each sees the
/// writes of the ones before. A duplicate decides nothing (it is not recorded).
fn decide(
    events: &[NewEvent],
    holders: &HashMap<String, String>,
    mut overlay: Overlay,
    now: Millis,
) -> Decided {
    let mut changed = Vec::with_capacity(events.len());
    let verdicts = events
        .iter()
        .map(|e| {
            let accepted = holders.get(&e.dedup_key) == Some(&e.id);
            match &e.memory {
                Some(decider) if accepted => {
                    let mut decision = decider.decide(now, &e.deliveries, &overlay);
                    overlay.apply(&decision);
                    changed.push(Changed::take(&mut decision));
                    let mut v = decision.verdicts;
                    v.resize(e.deliveries.len(), Verdict::Send);
                    v
                }
                _ => {
                    changed.push(Changed::default());
                    Verdict::plain(&e.deliveries)
                }
            }
        })
        .collect();
    Decided {
        verdicts,
        changed,
        writes: overlay.into_writes(),
    }
}

/// `(key, event_id)`: the event that holds each key of the batch.
fn holders_of(rows: &[(Yields, SqliteRow)]) -> Result<HashMap<String, String>, StoreError> {
    let mut keys = HashMap::new();
    for (_, row) in rows.iter().filter(|(y, _)| matches!(y, Yields::Keys)) {
        keys.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
    }
    Ok(keys)
}

/// The memory cells read.
fn cells_of(rows: &[(Yields, SqliteRow)]) -> Result<HashMap<Slot, Cell>, StoreError> {
    let mut cells = HashMap::new();
    for (_, row) in rows.iter().filter(|(y, _)| matches!(y, Yields::Cells)) {
        let slot = Slot {
            scope: row.try_get(0)?,
            key: row.try_get(1)?,
        };
        let cell = Cell {
            a: row.try_get(2)?,
            b: row.try_get(3)?,
            c: row.try_get(4)?,
            expires: row.try_get(5)?,
        };
        cells.insert(slot, cell);
    }
    Ok(cells)
}

/// The mark counts read.
fn counts_of(rows: &[(Yields, SqliteRow)]) -> Result<HashMap<Span, u64>, StoreError> {
    let mut counts = HashMap::new();
    for (_, row) in rows.iter().filter(|(y, _)| matches!(y, Yields::Counts)) {
        let span = Span {
            slot: Slot {
                scope: row.try_get(0)?,
                key: row.try_get(1)?,
            },
            from: row.try_get(2)?,
            to: row.try_get(3)?,
        };
        counts.insert(span, row.try_get::<i64, _>(4)? as u64);
    }
    Ok(counts)
}

/// Undoes an open transaction; a connection that cannot say so is not used again.
async fn rollback(conn: &mut PoolConnection<sqlx::Sqlite>) {
    if let Err(e) = sqlx::raw_sql("ROLLBACK").execute(&mut **conn).await
        && !e.to_string().contains("no transaction is active")
    {
        conn.close_on_drop();
    }
}

/// Runs a script in one round trip and returns the rows of each statement, tagged with what
/// they are. Rows are kept as they come and read once the script has run to its end: an error
/// while it runs means nothing was committed (the transaction is rolled back here, also when
/// an earlier script opened it).
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
            // Whatever part ran is undone.
            rollback(conn).await;
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
pub(super) enum Value {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// The rows a statement of a group commit gives back.
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Yields {
    /// None that matter.
    #[default]
    Nothing,
    /// `(key, event_id)`: the event that holds each key of the batch.
    Keys,
    /// `(scope, key, a, b, c, expires)`: memory cells read.
    Cells,
    /// `(scope, key, from, to, count)`: mark counts read.
    Counts,
    /// The ids of the deliveries created.
    Created,
    /// The deliveries taken by the claim at this position.
    Claimed(usize),
}

/// One statement of a group commit: its SQL, the values of its `?` in order, and its rows.
pub(super) struct Statement {
    sql: String,
    values: Vec<Value>,
    yields: Yields,
}

impl Statement {
    pub(super) fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            values: Vec::new(),
            yields: Yields::Nothing,
        }
    }

    pub(super) fn int(mut self, n: i64) -> Self {
        self.values.push(Value::Int(n));
        self
    }

    pub(super) fn text(mut self, t: String) -> Self {
        self.values.push(Value::Text(t));
        self
    }

    pub(super) fn blob(mut self, b: Vec<u8>) -> Self {
        self.values.push(Value::Blob(b));
        self
    }

    pub(super) fn yields(mut self, yields: Yields) -> Self {
        self.yields = yields;
        self
    }
}

#[cfg(test)]
mod tests;
