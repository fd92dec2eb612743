//! Rule memory in the store: what rules remember across events, read and written inside the
//! intake transaction that stores the event, so that a retried webhook (a duplicate, never
//! stored) counts nothing, nothing counts that was not stored, and a crash changes no decision.
//!
//! The store keeps two kinds of state, by scope and key, and leaves their meaning to the
//! [`Decider`]s that events carry:
//! - a [`Cell`]: a few numbers (an expiry, a count, a time), read and overwritten;
//! - marks: moments, counted over a [`Span`] (the events of a rolling window).
//!
//! For each batch the store reads what the batch's deciders need, runs them in the batch's
//! order over an `Overlay` (each sees what the earlier ones wrote), then writes what they
//! decided, all in the one transaction. With PostgreSQL the cells are locked in (scope, key)
//! order while this runs: an instance with an event of the same key waits for the commit, then
//! reads what it wrote.

use super::{DeliveryStatus, Millis, NewDelivery, Timing};
use std::collections::HashMap;

/// Where a piece of state lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// What kind of state, for which rule (`once:hot-lead`).
    pub scope: String,
    /// Whose (a rendered key).
    pub key: String,
}

/// A cell's numbers; a cell never written reads as all zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    /// The first number.
    pub a: i64,
    /// The second number.
    pub b: i64,
    /// The third number.
    pub c: i64,
    /// When the cell may be deleted (it then reads as zeros again).
    pub expires: Millis,
}

/// The marks of a slot between two moments, both included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    /// Whose marks.
    pub slot: Slot,
    /// From.
    pub from: Millis,
    /// To.
    pub to: Millis,
}

/// A moment recorded for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Whose.
    pub slot: Slot,
    /// When.
    pub at: Millis,
    /// When it may be deleted.
    pub expires: Millis,
}

/// An event's item in a digest, with the digest as it stands after it (see `rules::digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestItem {
    /// The digest (random, chosen when it opens).
    pub digest: i64,
    /// The rule that collects it.
    pub rule: String,
    /// The cell that points at the digest while it is open.
    pub slot: Slot,
    /// When it opened.
    pub opened_at: Millis,
    /// When it closes, and why it will have closed then.
    pub closes_at: Millis,
    /// `window`, `schedule`, `max_events`, `hold_release`; empty when the item only joins (the
    /// digest keeps the reason it opened with).
    pub reason: &'static str,
    /// Events listed in full in its message.
    pub list: u32,
    /// This item's position, from 1: also the digest's count with it.
    pub seq: i64,
    /// The configuration that matched the event.
    pub config_hash: String,
    /// The event.
    pub event_id: String,
    /// Its canonical type.
    pub event_type: String,
    /// Its lead's email.
    pub lead_email: Option<String>,
}

/// A digest as a batch's items leave it: one row to write per digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRow {
    /// The digest.
    pub id: i64,
    /// Its rule.
    pub rule: String,
    /// Its cell.
    pub slot: Slot,
    /// Its configuration: its last item's.
    pub config_hash: String,
    /// When it opened.
    pub opened_at: Millis,
    /// When it closes.
    pub closes_at: Millis,
    /// Why it will have closed.
    pub reason: &'static str,
    /// Its items.
    pub items: i64,
    /// Events listed in full.
    pub list: u32,
}

/// The rows a batch's digest items leave, one per digest in the order first met (a digest with
/// several items in the batch is written once, as its last item leaves it).
pub fn digest_rows(items: &[DigestItem]) -> Vec<DigestRow> {
    let mut rows: Vec<DigestRow> = Vec::new();
    for i in items {
        let row = DigestRow {
            id: i.digest,
            rule: i.rule.clone(),
            slot: i.slot.clone(),
            config_hash: i.config_hash.clone(),
            opened_at: i.opened_at,
            closes_at: i.closes_at,
            reason: i.reason,
            items: i.seq,
            list: i.list,
        };
        match rows.iter_mut().find(|r| r.id == i.digest) {
            // The first item met keeps its opening; a later one that only joins keeps the
            // reason its digest opened with.
            Some(r) => {
                let (opened_at, reason) = (r.opened_at, r.reason);
                *r = row;
                r.opened_at = opened_at;
                if r.reason.is_empty() {
                    r.reason = reason;
                }
            }
            None => rows.push(row),
        }
    }
    rows
}

/// What a decider reads.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Cells.
    pub cells: Vec<Slot>,
    /// Mark counts.
    pub spans: Vec<Span>,
}

/// The state a decider reads.
pub trait View {
    /// A cell (zeros when never written, or expired).
    fn cell(&self, slot: &Slot) -> Cell;
    /// How many marks fall in a span.
    fn count(&self, span: &Span) -> u64;
}

/// What becomes of one delivery an event may give rise to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sent (pending, or handed to this instance's workers).
    Send,
    /// Kept, not sent, with why (`once`, …).
    Suppressed(&'static str),
    /// Not a delivery at all: its rule does not match once memory is read.
    Unmatched,
    /// Kept pending, outside its action's time window, until it opens at this time.
    Held(Millis),
}

impl Verdict {
    /// What intake alone decides of a delivery: silenced, or as its time window says (every
    /// verdict of an event without memory).
    pub fn at_intake(d: &NewDelivery) -> Verdict {
        match d.timing {
            _ if d.silenced => Verdict::Suppressed("silenced"),
            Timing::Now => Verdict::Send,
            Timing::Drop => Verdict::Suppressed("outside"),
            // Folded into a digest by rule memory; held on its own should nothing decide it.
            Timing::Hold(at) | Timing::Digest(at) => Verdict::Held(at),
        }
    }

    /// The verdicts of deliveries when no memory decides them.
    pub fn plain(deliveries: &[NewDelivery]) -> Vec<Verdict> {
        deliveries.iter().map(Verdict::at_intake).collect()
    }

    /// The row it writes: status, reason and when it is due (`None`: no row). `sent` is the
    /// status of a delivery sent now (pending, or sending when this instance claimed it).
    pub(super) fn row(
        self,
        sent: DeliveryStatus,
        now: Millis,
    ) -> Option<(DeliveryStatus, Option<&'static str>, Millis)> {
        match self {
            Verdict::Send => Some((sent, None, now)),
            Verdict::Held(at) => Some((DeliveryStatus::Pending, Some("outside"), at)),
            Verdict::Suppressed(reason) => Some((DeliveryStatus::Suppressed, Some(reason), now)),
            Verdict::Unmatched => None,
        }
    }
}

/// What a decider decided for one event.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// One per delivery of the event, in order.
    pub verdicts: Vec<Verdict>,
    /// Cells to write.
    pub cells: Vec<(Slot, Cell)>,
    /// Marks to record.
    pub marks: Vec<Mark>,
    /// Items to add to digests.
    pub digests: Vec<DigestItem>,
    /// The event as stored, when memory changed it (a count the router fills in).
    pub payload: Option<String>,
    /// What memory adds to the event for one delivery's templates, by the delivery's position:
    /// a JSON object merged over the event (`{"noise": {"suppressed": 3}}`).
    pub contexts: Vec<(usize, String)>,
}

/// What memory changed of one event as stored: its payload, and context added for some of its
/// deliveries.
#[derive(Debug, Clone, Default)]
pub(super) struct Changed {
    pub(super) payload: Option<String>,
    pub(super) contexts: Vec<(usize, String)>,
}

impl Changed {
    /// Takes what a decision changed.
    pub(super) fn take(decision: &mut Decision) -> Self {
        Changed {
            payload: decision.payload.take(),
            contexts: std::mem::take(&mut decision.contexts),
        }
    }

    /// The context of the delivery at `i`.
    pub(super) fn context(&self, i: usize) -> Option<&str> {
        self.contexts
            .iter()
            .find(|(at, _)| *at == i)
            .map(|(_, c)| c.as_str())
    }
}

/// An event's decisions that need memory, taken inside the intake transaction.
pub trait Decider: Send + Sync + std::fmt::Debug {
    /// What it reads, with the transaction's time `now`.
    fn needs(&self, now: Millis) -> Needs;
    /// Decides, for each of the event's `deliveries`, with the state as the batch's earlier
    /// events left it.
    fn decide(&self, now: Millis, deliveries: &[NewDelivery], view: &dyn View) -> Decision;
}

/// The batch's memory as read from the store, with the writes of the batch's events laid over
/// it as they are decided.
#[derive(Debug, Default)]
pub struct Overlay {
    now: Millis,
    read: HashMap<Slot, Cell>,
    counts: HashMap<Span, u64>,
    written: HashMap<Slot, Cell>,
    marks: Vec<Mark>,
    digests: Vec<DigestItem>,
}

impl Overlay {
    /// The state as read at `now`: cells and span counts.
    pub fn new(now: Millis, read: HashMap<Slot, Cell>, counts: HashMap<Span, u64>) -> Self {
        Overlay {
            now,
            read,
            counts,
            ..Overlay::default()
        }
    }

    /// Lays a decision's writes over the state.
    pub(super) fn apply(&mut self, decision: &Decision) {
        for (slot, cell) in &decision.cells {
            self.written.insert(slot.clone(), *cell);
        }
        self.marks.extend(decision.marks.iter().cloned());
        self.digests.extend(decision.digests.iter().cloned());
    }

    /// What the batch writes: cells, marks and digest items.
    pub(super) fn into_writes(self) -> Writes {
        let mut cells: Vec<(Slot, Cell)> = self.written.into_iter().collect();
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        Writes {
            cells,
            marks: self.marks,
            digests: self.digests,
        }
    }
}

impl View for Overlay {
    fn cell(&self, slot: &Slot) -> Cell {
        let cell = self
            .written
            .get(slot)
            .or_else(|| self.read.get(slot))
            .copied()
            .unwrap_or_default();
        if cell.expires != 0 && cell.expires <= self.now {
            return Cell::default();
        }
        cell
    }

    fn count(&self, span: &Span) -> u64 {
        let stored = self.counts.get(span).copied().unwrap_or(0);
        let added = self
            .marks
            .iter()
            .filter(|m| m.slot == span.slot && (span.from..=span.to).contains(&m.at))
            .count() as u64;
        stored + added
    }
}

/// The memory a batch writes.
#[derive(Debug, Default)]
pub(super) struct Writes {
    pub(super) cells: Vec<(Slot, Cell)>,
    pub(super) marks: Vec<Mark>,
    pub(super) digests: Vec<DigestItem>,
}

/// Every slot and span a batch's deciders need, each once, in (scope, key) order (the order
/// PostgreSQL locks them in).
pub(super) fn needs_of<'a>(deciders: impl Iterator<Item = &'a dyn Decider>, now: Millis) -> Needs {
    let mut cells: Vec<Slot> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    for d in deciders {
        let n = d.needs(now);
        cells.extend(n.cells);
        spans.extend(n.spans);
    }
    cells.sort();
    cells.dedup();
    spans.sort_by(|a, b| (&a.slot, a.from, a.to).cmp(&(&b.slot, b.from, b.to)));
    spans.dedup();
    Needs { cells, spans }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: &str) -> Slot {
        Slot {
            scope: "test".into(),
            key: key.into(),
        }
    }

    #[test]
    fn each_decision_sees_the_writes_of_the_ones_before_it() {
        let mut read = HashMap::new();
        read.insert(
            slot("a"),
            Cell {
                a: 1,
                ..Cell::default()
            },
        );
        let span = Span {
            slot: slot("a"),
            from: 100,
            to: 200,
        };
        let mut counts = HashMap::new();
        counts.insert(span.clone(), 3);
        let mut o = Overlay::new(150, read, counts);
        assert_eq!(o.cell(&slot("a")).a, 1);
        assert_eq!(o.cell(&slot("b")), Cell::default());
        assert_eq!(o.count(&span), 3);
        o.apply(&Decision {
            cells: vec![(
                slot("a"),
                Cell {
                    a: 2,
                    expires: 1_000,
                    ..Cell::default()
                },
            )],
            marks: vec![
                Mark {
                    slot: slot("a"),
                    at: 150,
                    expires: 1_000,
                },
                Mark {
                    slot: slot("a"),
                    at: 250,
                    expires: 1_000,
                },
            ],
            ..Decision::default()
        });
        assert_eq!(o.cell(&slot("a")).a, 2);
        assert_eq!(o.count(&span), 4, "the mark at 250 is outside the span");
        let writes = o.into_writes();
        assert_eq!(writes.cells.len(), 1);
        assert_eq!(writes.marks.len(), 2);
    }

    #[test]
    fn an_expired_cell_reads_as_never_written() {
        let mut read = HashMap::new();
        read.insert(
            slot("a"),
            Cell {
                a: 7,
                expires: 100,
                ..Cell::default()
            },
        );
        let o = Overlay::new(100, read, HashMap::new());
        assert_eq!(o.cell(&slot("a")), Cell::default());
    }
}
