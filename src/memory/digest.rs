//! Digests at intake: an event a digest rule matched (after the other stages) becomes an item
//! of the open digest of its key, or opens one. A rule memory cell per key points at the open
//! digest: `a` its id, `b` its items, `c` when it closes (the cell expires then, so the next
//! event opens a new digest while the closer sends the old one). Reaching `max_events` makes
//! the digest due at once and frees the key. A throttle with `over_limit: digest` does the same
//! with what it holds back, in a digest that closes when its window reopens.

use super::decide::{Notes, when};
use crate::rules::digest::Close;
use crate::store::Millis;
use crate::store::memory::{Cell, Decision, DigestItem, Slot, View};

/// An event's part in one digest.
#[derive(Debug)]
pub(super) struct DigestAsk {
    pub(super) slot: Slot,
    pub(super) rule: String,
    pub(super) max_events: u32,
    pub(super) list: u32,
    /// When a digest it opens closes, and why then.
    pub(super) close: Closing,
    /// `first: immediate`: the event that opens a digest is also sent alone.
    pub(super) immediate: bool,
    /// The event's facts, as its item keeps them.
    pub(super) event: EventFacts,
}

/// When a digest closes.
#[derive(Debug)]
pub(super) enum Closing {
    /// As its rule says.
    Rule(Close),
    /// When a throttle's window reopens: a fixed one at its end (given when the event is
    /// held), a rolling one a `per` after the digest opens at the latest.
    Reopens,
}

/// What an item keeps of its event.
#[derive(Debug, Clone)]
pub(super) struct EventFacts {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) lead: Option<String>,
    pub(super) config_hash: String,
}

impl DigestAsk {
    /// The digest of what a throttle or a time window holds back: the defaults of `list` and
    /// `max_events`, closed when the window reopens.
    pub(super) fn held_back(slot: Slot, rule: &str, event: EventFacts) -> DigestAsk {
        DigestAsk {
            slot,
            rule: rule.to_string(),
            max_events: crate::rules::digest::DEFAULT_MAX_EVENTS,
            list: crate::rules::digest::DEFAULT_LIST,
            close: Closing::Reopens,
            immediate: false,
            event,
        }
    }

    /// Adds the event to the open digest of its key, or opens one that closes as `close` says
    /// (when, and the reason it will give), asked only when one opens. Whether it opened one.
    pub(super) fn join(
        &self,
        now: Millis,
        view: &dyn View,
        decision: &mut Decision,
        close: impl FnOnce() -> (Millis, &'static str),
        at: usize,
        notes: &mut Notes,
    ) -> bool {
        let cell = view.cell(&self.slot);
        let open = cell.a != 0 && cell.c > now;
        let (id, opened_at, seq, mut closes_at, mut reason) = if open {
            // The opening time and reason are the row's already; the upsert keeps them.
            (cell.a, now, cell.b + 1, cell.c, "")
        } else {
            let (closes_at, reason) = close();
            // Past now at the least: a digest always gets its turn with the closer.
            let closes_at = closes_at.max(now);
            (fastrand::i64(1..i64::MAX), now, 1, closes_at, reason)
        };
        let full = seq >= i64::from(self.max_events);
        let key = &self.slot.key;
        notes.note(at, || match (open, full) {
            (_, true) => format!(
                "digest: {key} reaches {} events with this one, sent now (max_events)",
                self.max_events
            ),
            (true, false) => format!(
                "digest: joins the digest of {key} as event {seq}, which closes at {}",
                when(closes_at)
            ),
            (false, false) => format!(
                "digest: opens a digest for {key}, which closes at {} ({reason})",
                when(closes_at)
            ),
        });
        let next = if full {
            closes_at = now;
            reason = "max_events";
            // The key is free: its next event opens a new digest.
            Cell {
                expires: now,
                ..Cell::default()
            }
        } else {
            Cell {
                a: id,
                b: seq,
                c: closes_at,
                expires: closes_at,
            }
        };
        decision.cells.push((self.slot.clone(), next));
        decision.digests.push(DigestItem {
            digest: id,
            rule: self.rule.clone(),
            slot: self.slot.clone(),
            opened_at,
            closes_at,
            reason,
            list: self.list,
            seq,
            config_hash: self.event.config_hash.clone(),
            event_id: self.event.id.clone(),
            event_type: self.event.kind.clone(),
            lead_email: self.event.lead.clone(),
        });
        !open
    }
}
