//! `throttle`: at most `limit` firings per key per window, and the count of those held back.

use super::ThrottleAsk;
use crate::store::Millis;
use crate::store::memory::{Cell, Decision, Mark, Span, View};

/// The firings a rolling throttle counts at `now`: those of the last `per`.
pub(super) fn throttle_span(t: &ThrottleAsk, now: Millis) -> Span {
    Span {
        slot: t.slot.clone(),
        from: now.saturating_sub(t.per.as_millis() as i64) + 1,
        to: now,
    }
}

/// Whether a throttled rule may fire now, with the firings held back since the last one sent
/// when it may; records the firing, or one more held back. Its cell:
/// `a` the fixed window's start, `b` the firings in it, `c` the firings held back since the
/// last one sent (which the message sent tells as `noise.suppressed`).
pub(super) fn throttle(
    t: &ThrottleAsk,
    now: Millis,
    view: &dyn View,
    decision: &mut Decision,
) -> Option<i64> {
    let per = t.per.as_millis() as i64;
    let mut cell = view.cell(&t.slot);
    let allowed = if t.rolling {
        view.count(&throttle_span(t, now)) < u64::from(t.limit)
    } else {
        if cell.a == 0 || now >= cell.a.saturating_add(per) {
            (cell.a, cell.b) = (now, 0);
        }
        cell.b < i64::from(t.limit)
    };
    let held = cell.c;
    if allowed {
        if t.rolling {
            let expires = now.saturating_add(per);
            let slot = t.slot.clone();
            decision.marks.push(Mark {
                slot,
                at: now,
                expires,
            });
        } else {
            cell.b += 1;
        }
        cell.c = 0;
    } else {
        cell.c += 1;
    }
    // Kept for two windows after the last event: what was held back is told when the key
    // fires again within that time.
    cell.expires = now.saturating_add(2 * per);
    decision.cells.push((t.slot.clone(), cell));
    allowed.then_some(held)
}

/// When the window a throttle counts in began, for people: the fixed window's start (`before`
/// is its cell before this event), or the start of the last `per`.
pub(super) fn window_start(t: &ThrottleAsk, before: Cell, now: Millis) -> Millis {
    let per = t.per.as_millis() as i64;
    match t.rolling {
        true => now.saturating_sub(per),
        false if before.a == 0 || now >= before.a.saturating_add(per) => now,
        false => before.a,
    }
}
