//! Decisions of rule memory over a view of the store's state.

use super::*;
use crate::store::Timing;
use crate::store::memory::{Cell, Verdict};
use std::collections::HashMap;

/// The store's view: cells as a map, with expiry.
#[derive(Default)]
struct Cells(HashMap<Slot, Cell>, Millis);

impl View for Cells {
    fn cell(&self, slot: &Slot) -> Cell {
        self.0
            .get(slot)
            .copied()
            .filter(|c| c.expires == 0 || c.expires > self.1)
            .unwrap_or_default()
    }
    fn count(&self, _: &crate::store::memory::Span) -> u64 {
        0
    }
}

fn once(key: &str, hold: Option<u64>) -> EventMemory {
    EventMemory {
        resolve: None,
        rules: vec![RuleAsk {
            rule: 0,
            deliveries: 0..2,
            throttle: None,
            unless_seen: None,
            digest: None,
            throttled: None,
            once: Some(OnceAsk {
                slot: Slot {
                    scope: "once:r".into(),
                    key: key.into(),
                },
                hold: hold.map(Duration::from_secs),
            }),
        }],
        seen: vec![],
        outside: vec![],
    }
}

fn deliveries() -> Vec<NewDelivery> {
    (0..2)
        .map(|i| NewDelivery {
            rule: "r".into(),
            action_index: i,
            action_kind: "log".into(),
            destination: format!("r#{}", i + 1),
            timing: Default::default(),
            silenced: false,
        })
        .collect()
}

#[test]
fn the_first_event_of_a_key_takes_it_and_the_next_ones_are_suppressed_until_it_expires() {
    let mut state = Cells::default();
    let d = deliveries();
    let first = once("ana", Some(60)).decide(1_000, &d, &state);
    assert_eq!(first.verdicts, [Verdict::Send, Verdict::Send]);
    for (slot, cell) in first.cells {
        assert_eq!(cell.expires, 61_000);
        state.0.insert(slot, cell);
    }
    let again = once("ana", Some(60)).decide(2_000, &d, &state);
    assert_eq!(again.verdicts, [Verdict::Suppressed("once"); 2]);
    assert!(again.cells.is_empty(), "a suppressed event takes nothing");
    let other = once("bo", Some(60)).decide(2_000, &d, &state);
    assert_eq!(other.verdicts, [Verdict::Send; 2]);
    state.1 = 61_000;
    let later = once("ana", Some(60)).decide(61_000, &d, &state);
    assert_eq!(later.verdicts, [Verdict::Send; 2], "the hold is over");
}

#[test]
fn for_ever_never_expires() {
    let mut state = Cells::default();
    let d = deliveries();
    let first = once("ana", None).decide(1_000, &d, &state);
    let (slot, cell) = first.cells[0].clone();
    assert_eq!(cell.expires, 0);
    state.0.insert(slot, cell);
    state.1 = Millis::MAX - 1;
    let again = once("ana", None).decide(Millis::MAX - 1, &d, &state);
    assert_eq!(again.verdicts, [Verdict::Suppressed("once"); 2]);
}

/// A view where every key was seen (and is taken).
struct Seen;

impl View for Seen {
    fn cell(&self, _: &Slot) -> Cell {
        Cell {
            a: 1,
            ..Cell::default()
        }
    }
    fn count(&self, _: &crate::store::memory::Span) -> u64 {
        1
    }
}

#[test]
fn a_stop_consumes_nothing_after_it_and_an_event_records_what_it_is() {
    let slot = |scope: &str, key: &str| Slot {
        scope: scope.into(),
        key: key.into(),
    };
    let mut m = once("ana", Some(60));
    m.rules[0].unless_seen = Some((slot("seen:x", "ana"), Duration::from_secs(3600)));
    m.seen = vec![(slot("seen:y", "ana"), Duration::from_secs(60))];
    let d = deliveries();
    let decided = m.decide(1_000, &d, &Seen);
    assert_eq!(decided.verdicts, [Verdict::Suppressed("unless_seen"); 2]);
    // once is not consumed; the event records itself as seen now.
    let seen = Cell {
        a: 1_000,
        expires: 61_000,
        ..Cell::default()
    };
    assert_eq!(decided.cells, [(slot("seen:y", "ana"), seen)]);
    // Not seen lately, once decides.
    let decided = m.decide(1_000, &d, &Cells::default());
    assert_eq!(decided.verdicts, [Verdict::Send; 2]);
    assert_eq!(decided.cells.len(), 2);
    // The locks cover what it reads and what it records.
    let needs = m.needs(1_000);
    assert!(needs.cells.contains(&slot("seen:x", "ana")));
    assert!(needs.cells.contains(&slot("seen:y", "ana")));
}

#[test]
fn a_delivery_dropped_outside_its_window_takes_nothing_and_one_held_does() {
    let state = Cells::default();
    let mut d = deliveries();
    d[0].timing = Timing::Drop;
    d[1].timing = Timing::Drop;
    let dropped = once("ana", Some(60)).decide(1_000, &d, &state);
    assert_eq!(dropped.verdicts, [Verdict::Suppressed("outside"); 2]);
    assert!(dropped.cells.is_empty(), "once is not taken");
    // One action dropped, the other held: the rule fires (once is taken), the held one waits.
    d[1].timing = Timing::Hold(9_000);
    let held = once("ana", Some(60)).decide(1_000, &d, &state);
    assert_eq!(
        held.verdicts,
        [Verdict::Suppressed("outside"), Verdict::Held(9_000)]
    );
    assert_eq!(held.cells.len(), 1);
    // A stop earlier in the order keeps its own reason.
    let mut m = once("ana", Some(60));
    m.rules[0].unless_seen = Some((
        Slot {
            scope: "seen:x".into(),
            key: "ana".into(),
        },
        Duration::from_secs(60),
    ));
    let seen = m.decide(1_000, &d, &Seen);
    assert_eq!(seen.verdicts, [Verdict::Suppressed("unless_seen"); 2]);
}
