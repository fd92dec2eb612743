//! Rule memory on PostgreSQL, inside the intake transaction: the cells the batch needs are
//! created if missing and locked in (scope, key) order (a cell per counted key too, so that
//! counting a key's marks is serialised with the events that add to them), the mark counts
//! read, the deciders run in the batch's order over them, and what they wrote stored. Another
//! instance with an event of the same key waits for this commit, then reads what it wrote.

use crate::store::memory::{self, Cell, Changed, Overlay, Slot, Span, Verdict};
use crate::store::{Millis, NewEvent, StoreError};
use sqlx::postgres::PgConnection;
use std::collections::HashMap;

/// What rule memory decided for the accepted events: per event, its deliveries' verdicts (in
/// order) and what it changed of the event.
type Decided = (Vec<Vec<Verdict>>, Vec<Changed>);

/// Decides for each accepted event (in order), its memory written.
pub(super) async fn decide(
    tx: &mut PgConnection,
    accepted: &[&NewEvent],
    now: Millis,
) -> Result<Decided, StoreError> {
    let plain = |e: &NewEvent| Verdict::plain(&e.deliveries);
    if accepted.iter().all(|e| e.memory.is_none()) {
        let verdicts = accepted.iter().map(|e| plain(e)).collect();
        return Ok((verdicts, vec![Changed::default(); accepted.len()]));
    }
    let needs = memory::needs_of(accepted.iter().filter_map(|e| e.memory.as_deref()), now);
    let mut locks: Vec<&Slot> = needs.cells.iter().collect();
    locks.extend(needs.spans.iter().map(|s| &s.slot));
    locks.sort();
    locks.dedup();
    let scopes: Vec<&str> = locks.iter().map(|s| s.scope.as_str()).collect();
    let keys: Vec<&str> = locks.iter().map(|s| s.key.as_str()).collect();
    // A cell to lock is created if missing, already expired (it reads as never written, and
    // pruning deletes it unless a decision writes it). Pruning may delete one between the
    // insert and the lock: then it is created and locked again.
    let mut read: Vec<(String, String, i64, i64, i64, i64)> = Vec::new();
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO memory_cells (scope, key, expires)
             SELECT n.scope, n.key, $3 FROM UNNEST($1::TEXT[], $2::TEXT[]) AS n(scope, key)
             ON CONFLICT DO NOTHING",
        )
        .bind(&scopes)
        .bind(&keys)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        read = sqlx::query_as(
            "SELECT c.scope, c.key, c.a, c.b, c.c, c.expires FROM memory_cells c
             JOIN UNNEST($1::TEXT[], $2::TEXT[]) AS n(scope, key) ON c.scope = n.scope AND c.key = n.key
             ORDER BY c.scope, c.key FOR UPDATE OF c",
        )
        .bind(&scopes)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        if read.len() == locks.len() {
            break;
        }
    }
    if read.len() != locks.len() {
        return Err(StoreError::Mismatch(
            "the rule memory to decide with could not be locked".into(),
        ));
    }
    let cells: HashMap<Slot, Cell> = read
        .into_iter()
        .map(|(scope, key, a, b, c, expires)| (Slot { scope, key }, Cell { a, b, c, expires }))
        .collect();
    let counted: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT t.scope, t.key, t.f, t.t,
                (SELECT COUNT(*) FROM memory_marks m
                 WHERE m.scope = t.scope AND m.key = t.key AND m.at BETWEEN t.f AND t.t)
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[]) AS t(scope, key, f, t)",
    )
    .bind(
        needs
            .spans
            .iter()
            .map(|s| s.slot.scope.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        needs
            .spans
            .iter()
            .map(|s| s.slot.key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(needs.spans.iter().map(|s| s.from).collect::<Vec<_>>())
    .bind(needs.spans.iter().map(|s| s.to).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let counts: HashMap<Span, u64> = counted
        .into_iter()
        .map(|(scope, key, from, to, n)| {
            (
                Span {
                    slot: Slot { scope, key },
                    from,
                    to,
                },
                n as u64,
            )
        })
        .collect();
    let mut overlay = Overlay::new(now, cells, counts);
    // The deciders are the rules' code: a panic in one fails this batch's transaction (it is
    // rolled back when dropped) rather than the committer.
    let mut changed = Vec::with_capacity(accepted.len());
    let verdicts = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        accepted
            .iter()
            .map(|e| match &e.memory {
                Some(decider) => {
                    let mut decision = decider.decide(now, &e.deliveries, &overlay);
                    overlay.apply(&decision);
                    changed.push(Changed::take(&mut decision));
                    let mut v = decision.verdicts;
                    v.resize(e.deliveries.len(), Verdict::Send);
                    v
                }
                None => {
                    changed.push(Changed::default());
                    plain(e)
                }
            })
            .collect::<Vec<_>>()
    }))
    .map_err(|_| {
        StoreError::Mismatch("a rule's memory could not be decided (a decider panicked)".into())
    })?;
    let memory::Writes {
        cells,
        marks,
        digests,
    } = overlay.into_writes();
    if !cells.is_empty() {
        sqlx::query(
            "INSERT INTO memory_cells (scope, key, a, b, c, expires)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[])
             ON CONFLICT (scope, key) DO UPDATE
             SET a = EXCLUDED.a, b = EXCLUDED.b, c = EXCLUDED.c, expires = EXCLUDED.expires",
        )
        .bind(cells.iter().map(|(s, _)| s.scope.as_str()).collect::<Vec<_>>())
        .bind(cells.iter().map(|(s, _)| s.key.as_str()).collect::<Vec<_>>())
        .bind(cells.iter().map(|(_, c)| c.a).collect::<Vec<_>>())
        .bind(cells.iter().map(|(_, c)| c.b).collect::<Vec<_>>())
        .bind(cells.iter().map(|(_, c)| c.c).collect::<Vec<_>>())
        .bind(cells.iter().map(|(_, c)| c.expires).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !marks.is_empty() {
        sqlx::query(
            "INSERT INTO memory_marks (scope, key, at, expires)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[])",
        )
        .bind(
            marks
                .iter()
                .map(|m| m.slot.scope.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            marks
                .iter()
                .map(|m| m.slot.key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(marks.iter().map(|m| m.at).collect::<Vec<_>>())
        .bind(marks.iter().map(|m| m.expires).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    write_digests(tx, &digests).await?;
    Ok((verdicts, changed))
}

/// The digests the batch's items leave (one row each) and the items.
async fn write_digests(
    tx: &mut PgConnection,
    items: &[memory::DigestItem],
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let rows = memory::digest_rows(items);
    sqlx::query(
        "INSERT INTO digests (id, rule, scope, key, config_hash, opened_at, closes_at, reason, items, list)
         SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[],
                              $7::BIGINT[], $8::TEXT[], $9::BIGINT[], $10::BIGINT[])
         ON CONFLICT (id) DO UPDATE
         SET config_hash = EXCLUDED.config_hash, closes_at = EXCLUDED.closes_at,
             reason = CASE WHEN EXCLUDED.reason = '' THEN digests.reason ELSE EXCLUDED.reason END,
             items = EXCLUDED.items",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.slot.scope.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.slot.key.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.config_hash.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.opened_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.closes_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reason).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.items).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| i64::from(r.list)).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO digest_items (digest_id, seq, event_id, event_type, lead_email)
         SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])",
    )
    .bind(items.iter().map(|i| i.digest).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.seq).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| i.event_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|i| i.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|i| i.lead_email.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
