//! The statements of the SQLite group commit, each with its own values.

use super::{Statement, Yields};
use crate::store::memory::{Changed, Needs, Verdict, Writes, digest_rows};
use crate::store::rows::after;
use crate::store::sqlite::PENDING_DESTINATIONS;
use crate::store::{Claim, DeliveryStatus, Finished, Millis, NewEvent};

/// What a claim reads of each delivery it takes (the columns of `DueRow`), from the
/// `RETURNING` clause of its `UPDATE`.
const DUE_RETURNING: &str = "id, event_id, rule, action_index, destination, attempts, context,
    (SELECT e.config_hash FROM events e WHERE e.id = deliveries.event_id) AS config_hash,
    (SELECT e.payload FROM events e WHERE e.id = deliveries.event_id) AS payload,
    (SELECT e.received_at FROM events e WHERE e.id = deliveries.event_id) AS received_at";

/// Rows as one JSONB array of arrays (or of values), the way the statements read them
/// (`jsonb_each` reads each array once; `->>` picks a field).
fn json<T: serde::Serialize>(rows: impl Iterator<Item = T>) -> Vec<u8> {
    let rows: Vec<T> = rows.collect();
    super::jsonb::to_vec(&rows).expect("rows of strings, numbers and nulls serialise")
}

/// The same as JSON text (for `json_each`).
fn json_text<T: serde::Serialize>(rows: impl Iterator<Item = T>) -> String {
    let rows: Vec<T> = rows.collect();
    serde_json::to_string(&rows).expect("rows serialise")
}

/// The keys of the batch's events (a key already held marks a repeat) and the events that hold
/// them.
pub(super) fn head(events: &[NewEvent], now: Millis) -> [Statement; 2] {
    let keys = json(events.iter().map(|e| (&e.dedup_key, &e.id)));
    [
        Statement::new(
            "
        INSERT INTO intake_keys (key, event_id, created_at)
            SELECT j.value->>0, j.value->>1, ? FROM jsonb_each(?) AS j
            WHERE true ON CONFLICT (key) DO NOTHING;",
        )
        .int(now)
        .blob(keys.clone()),
        Statement::new(
            "
        SELECT key, event_id FROM intake_keys
            WHERE key IN (SELECT value->>0 FROM jsonb_each(?));",
        )
        .blob(keys)
        .yields(Yields::Keys),
    ]
}

/// The memory cells the batch needs (`[scope, key]`) and its mark counts (`[scope, key, from,
/// to]`).
pub(super) fn reads(needs: &Needs) -> [Statement; 2] {
    let cells = json(needs.cells.iter().map(|s| (&s.scope, &s.key)));
    let spans = json(
        needs
            .spans
            .iter()
            .map(|s| (&s.slot.scope, &s.slot.key, s.from, s.to)),
    );
    [
        Statement::new(
            "
        SELECT c.scope, c.key, c.a, c.b, c.c, c.expires
            FROM (SELECT j.value->>0 AS scope, j.value->>1 AS key FROM jsonb_each(?) AS j) AS n
            JOIN memory_cells AS c ON c.scope = n.scope AND c.key = n.key;",
        )
        .blob(cells)
        .yields(Yields::Cells),
        Statement::new(
            "
        SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3,
               (SELECT COUNT(*) FROM memory_marks AS m
                WHERE m.scope = j.value->>0 AND m.key = j.value->>1
                  AND m.at BETWEEN j.value->>2 AND j.value->>3)
            FROM jsonb_each(?) AS j;",
        )
        .blob(spans)
        .yields(Yields::Counts),
    ]
}

/// The accepted events, the memory their deciders wrote (if any), and their deliveries as
/// decided (`changed` holds the payload of an event its memory changed). Events `[id, source,
/// event_type, lead_email, config_hash, payload_start,
/// payload_length, key, campaign_id]`, their payloads one blob of their own (the start counts from 1, in
/// bytes: inside the JSON array they would be escaped here and unescaped by SQLite, which took
/// a tenth of intake's CPU); cells `[scope, key, a, b, c, expires]`; marks `[scope, key, at,
/// expires]`; deliveries `[event_id, rule, action_index, action_kind, destination, status,
/// reason, context]`, none for those their rule's memory found unmatched.
pub(super) fn body(
    events: &[NewEvent],
    verdicts: &[Vec<Verdict>],
    changed: &[Changed],
    writes: &Writes,
    now: Millis,
) -> Vec<Statement> {
    let (cells, marks) = (&writes.cells, &writes.marks);
    let mut payloads = Vec::with_capacity(events.iter().map(|e| e.payload.len()).sum());
    let rows = json(events.iter().enumerate().map(|(i, e)| {
        // The event as its memory changed it (a count filled in), or as intake made it.
        let payload = changed
            .get(i)
            .and_then(|c| c.payload.as_deref())
            .unwrap_or(&e.payload);
        let start = payloads.len() + 1;
        payloads.extend_from_slice(payload.as_bytes());
        let length = payload.len();
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
            &e.campaign_id,
        )
    }));
    let deliveries = json(events.iter().zip(verdicts).enumerate().flat_map(
        |(at, (e, verdicts))| {
            let sent = match e.claimed {
                true => DeliveryStatus::Sending,
                false => DeliveryStatus::Pending,
            };
            let changed = changed.get(at);
            e.deliveries
                .iter()
                .zip(verdicts)
                .enumerate()
                .filter_map(move |(i, (d, v))| {
                    let (status, reason, due) = v.row(sent, now)?;
                    let (rule, index, kind) = (&d.rule, d.action_index, &d.action_kind);
                    let context = changed.and_then(|c| c.context(i));
                    Some((
                        &e.id,
                        rule,
                        index,
                        kind,
                        &d.destination,
                        status.as_str(),
                        reason,
                        context,
                        due,
                    ))
                })
        },
    ));
    let mut body = vec![
        Statement::new(
            "
        INSERT INTO events (id, source, event_type, lead_email, received_at, config_hash, payload,
                            campaign_id)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, ?, j.value->>4,
                   CAST(substr(?, j.value->>5, j.value->>6) AS TEXT), j.value->>8
            FROM jsonb_each(?) AS j
            WHERE EXISTS (SELECT 1 FROM intake_keys k
                          WHERE k.key = j.value->>7 AND k.event_id = j.value->>0);",
        )
        .int(now)
        .blob(payloads)
        .blob(rows),
    ];
    if !cells.is_empty() {
        let cells = json(
            cells
                .iter()
                .map(|(s, c)| (&s.scope, &s.key, c.a, c.b, c.c, c.expires)),
        );
        body.push(
            Statement::new(
                "
        INSERT INTO memory_cells (scope, key, a, b, c, expires)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5
            FROM jsonb_each(?) AS j
            WHERE true ON CONFLICT (scope, key) DO UPDATE
            SET a = excluded.a, b = excluded.b, c = excluded.c, expires = excluded.expires;",
            )
            .blob(cells),
        );
    }
    if !marks.is_empty() {
        let marks = json(
            marks
                .iter()
                .map(|m| (&m.slot.scope, &m.slot.key, m.at, m.expires)),
        );
        body.push(
            Statement::new(
                "
        INSERT INTO memory_marks (scope, key, at, expires)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3 FROM jsonb_each(?) AS j;",
            )
            .blob(marks),
        );
    }
    if !writes.digests.is_empty() {
        let rows = json(digest_rows(&writes.digests).into_iter().map(|d| {
            let (scope, key) = (d.slot.scope, d.slot.key);
            (
                d.id,
                d.rule,
                scope,
                key,
                d.config_hash,
                d.opened_at,
                d.closes_at,
                d.reason,
                d.items,
                d.list,
            )
        }));
        let items = json(
            writes
                .digests
                .iter()
                .map(|i| (i.digest, i.seq, &i.event_id, &i.event_type, &i.lead_email)),
        );
        body.push(
            Statement::new(
                "
        INSERT INTO digests (id, rule, scope, key, config_hash, opened_at, closes_at, reason,
                             items, list)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                   j.value->>6, j.value->>7, j.value->>8, j.value->>9
            FROM jsonb_each(?) AS j
            WHERE true ON CONFLICT (id) DO UPDATE
            SET config_hash = excluded.config_hash, closes_at = excluded.closes_at,
                reason = CASE WHEN excluded.reason = '' THEN digests.reason ELSE excluded.reason END,
                items = excluded.items;",
            )
            .blob(rows),
        );
        body.push(
            Statement::new(
                "
        INSERT INTO digest_items (digest_id, seq, event_id, event_type, lead_email)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4
            FROM jsonb_each(?) AS j;",
            )
            .blob(items),
        );
    }
    body.push(
        Statement::new(
            "
        INSERT INTO deliveries (event_id, rule, action_index, action_kind, destination, status,
                                reason, context, attempts, next_attempt_at, created_at, updated_at)
            SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                   j.value->>6, j.value->>7, 0, j.value->>8, ?, ?
            FROM jsonb_each(?) AS j
            WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = j.value->>0)
            RETURNING id;",
        )
        .int(now)
        .int(now)
        .blob(deliveries)
        .yields(Yields::Created),
    );
    body
}

/// The attempt records and the claims, then `COMMIT`.
pub(super) fn tail(done: &[Finished], claims: &[Claim], now: Millis) -> Vec<Statement> {
    let mut tail: Vec<Statement> = records(done, now).into();
    for (i, c) in claims.iter().enumerate() {
        tail.push(claim(c, now).yields(Yields::Claimed(i)));
    }
    tail.push(Statement::new("\n        COMMIT;"));
    tail
}

/// `BEGIN IMMEDIATE`: the writer's lock from the first statement on.
pub(super) fn begin() -> Statement {
    Statement::new("BEGIN IMMEDIATE;")
}

/// The attempts made, and where each delivery goes next. Records `[delivery_id, started_at,
/// duration_ms, outcome, status_code, error, status, next_attempt_at, reason, tried]`.
fn records(done: &[Finished], now: Millis) -> [Statement; 2] {
    let records = json(done.iter().map(|f| {
        let after = after(&f.next, now);
        let a = &f.attempt;
        let (started, duration, code, error) =
            (a.started_at, a.duration_ms, a.status_code, &a.error);
        (
            (f.id, started, duration, after.outcome, code, error),
            (
                after.status.as_str(),
                after.next_at,
                after.reason,
                after.tried,
            ),
        )
    }));
    [
        Statement::new(
            "
        INSERT INTO attempts (delivery_id, started_at, duration_ms, outcome, status_code, error)
            SELECT j.value->0->>0, j.value->0->>1, j.value->0->>2, j.value->0->>3,
                   j.value->0->>4, j.value->0->>5
            FROM jsonb_each(?) AS j;",
        )
        .blob(records.clone()),
        Statement::new(
            "
        UPDATE deliveries SET status = v.status, attempts = attempts + v.tried,
                next_attempt_at = v.next_at, last_error = COALESCE(v.error, last_error),
                reason = v.reason, updated_at = ?
            FROM (SELECT j.value->0->>0 AS id, j.value->1->>0 AS status,
                         j.value->1->>1 AS next_at, j.value->0->>5 AS error,
                         j.value->1->>2 AS reason, j.value->1->>3 AS tried
                  FROM jsonb_each(?) AS j) AS v
            WHERE deliveries.id = v.id;",
        )
        .int(now)
        .blob(records),
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
    .text(json_text(c.in_use.iter()))
    .int(now)
    .text(json_text(c.in_flight.iter()))
    .int(per_destination)
    .int(i64::from(c.limit))
}
