//! Rule memory: the decisions rules take across events (`once`, …). At intake, the rules an
//! event matched that use memory are gathered, with their keys rendered for the event, into an
//! [`EventMemory`]; the store runs it inside the transaction that stores the event (see
//! `store::memory`), so the decision is exact, durable and shared by every instance on one
//! database.
//!
//! - `once`: the first event of a key takes it, for `for` or for ever; the next events of the
//!   key are recorded `suppressed` (reason `once`) until the hold is over.

use crate::config::Config;
use crate::rules::Once;
use crate::store::memory::{Cell, Decider, Decision, Needs, Slot, Verdict, View};
use crate::store::{Millis, NewDelivery};
use crate::template::Data;
use std::ops::Range;
use std::time::Duration;

/// What one event's intake asks of rule memory.
#[derive(Debug)]
pub struct EventMemory {
    rules: Vec<RuleAsk>,
}

/// One matched rule's part: its deliveries among the event's, and what it remembers.
#[derive(Debug)]
struct RuleAsk {
    deliveries: Range<usize>,
    once: OnceAsk,
}

/// `once` for one event: the rule's key, and how long it stays taken.
#[derive(Debug)]
struct OnceAsk {
    slot: Slot,
    hold: Option<Duration>,
}

/// A rule whose key rendered empty (or did not render) for an event: the event goes through
/// undecided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingKey {
    /// The rule.
    pub rule: String,
    /// Why, when the key did not render at all.
    pub error: Option<String>,
}

impl EventMemory {
    /// What an event asks of memory: for each matched rule (`matched`, in order, whose actions
    /// are the event's deliveries in that order) that uses memory, its keys rendered. `None`
    /// when no rule needs memory; `missing` lists the rules whose key rendered empty.
    pub fn for_event(
        config: &Config,
        matched: &[usize],
        event: &Data,
        missing: &mut Vec<MissingKey>,
    ) -> Option<EventMemory> {
        let mut rules = Vec::new();
        let mut at = 0;
        for &i in matched {
            let rule = config.rules.get(i);
            let deliveries = at..at + rule.actions.len();
            at = deliveries.end;
            let Some(once) = &rule.once else { continue };
            match render_key(config, once, event) {
                Ok(key) => rules.push(RuleAsk {
                    deliveries,
                    once: OnceAsk {
                        slot: Slot {
                            scope: format!("once:{}", rule.name),
                            key,
                        },
                        hold: once.hold,
                    },
                }),
                Err(error) => missing.push(MissingKey {
                    rule: rule.name.clone(),
                    error,
                }),
            }
        }
        (!rules.is_empty()).then_some(EventMemory { rules })
    }
}

/// A `once` key for an event: `Err(None)` when it renders empty, `Err(Some(why))` when it does
/// not render.
fn render_key(config: &Config, once: &Once, event: &Data) -> Result<String, Option<String>> {
    match config.templates.render(&once.key, event) {
        Ok(key) if !key.trim().is_empty() => Ok(key),
        Ok(_) => Err(None),
        Err(e) => Err(Some(e.to_string())),
    }
}

impl Decider for EventMemory {
    fn needs(&self, _now: Millis) -> Needs {
        Needs {
            cells: self.rules.iter().map(|r| r.once.slot.clone()).collect(),
            spans: Vec::new(),
        }
    }

    fn decide(&self, now: Millis, deliveries: &[NewDelivery], view: &dyn View) -> Decision {
        let mut decision = Decision {
            verdicts: vec![Verdict::Send; deliveries.len()],
            ..Decision::default()
        };
        for rule in &self.rules {
            let once = &rule.once;
            // A cell of `once` holds 1 while its key is taken (its expiry ends the hold).
            if view.cell(&once.slot).a != 0 {
                for v in &mut decision.verdicts[rule.deliveries.clone()] {
                    *v = Verdict::Suppressed("once");
                }
                continue;
            }
            let expires = once
                .hold
                .map_or(0, |h| now.saturating_add(h.as_millis() as i64));
            let taken = Cell {
                a: 1,
                expires,
                ..Cell::default()
            };
            decision.cells.push((once.slot.clone(), taken));
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            rules: vec![RuleAsk {
                deliveries: 0..2,
                once: OnceAsk {
                    slot: Slot {
                        scope: "once:r".into(),
                        key: key.into(),
                    },
                    hold: hold.map(Duration::from_secs),
                },
            }],
        }
    }

    fn deliveries() -> Vec<NewDelivery> {
        (0..2)
            .map(|i| NewDelivery {
                rule: "r".into(),
                action_index: i,
                action_kind: "log".into(),
                destination: format!("r#{}", i + 1),
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
}
