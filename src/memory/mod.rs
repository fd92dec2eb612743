//! Rule memory: the decisions rules take across events (`once`, …). At intake, the rules an
//! event matched that use memory are gathered, with their keys rendered for the event, into an
//! [`EventMemory`]; the store runs it inside the transaction that stores the event (see
//! `store::memory`), so the decision is exact, durable and shared by every instance on one
//! database.
//!
//! In the order the decisions are taken for a matched rule (a stop consumes nothing after it):
//! - `unless_seen`: the rule does not fire (`suppressed`, reason `unless_seen`) when an event of
//!   the clause's types with the same key was accepted within its time; every event of those
//!   types records a mark for the clause, whether or not any rule matched it;
//! - `once`: the first event of a key takes it, for `for` or for ever; the next events of the
//!   key are recorded `suppressed` (reason `once`) until the hold is over;
//! - `throttle`: at most `limit` firings per key per window (a fixed window opens at a firing,
//!   a rolling one is the last `per`); the others are `suppressed` (reason `throttled`), and the
//!   next message sent tells how many were held back (`noise.suppressed`).
//!
//! Before those, when SmartLead sends an open without a count (its real `EMAIL_OPEN` payloads
//! never carry one), the router counts the lead's opens in the campaign itself: the count is
//! taken in the transaction, written into the stored event as `open.count`, and the rules that
//! read `open.count` are matched against it there (at intake they were only known to possibly
//! match).

use crate::config::Config;
use crate::event;
use crate::store::memory::{Cell, Decider, Decision, Mark, Needs, Slot, Span, Verdict, View};
use crate::store::{Millis, NewDelivery};
use crate::template::{Data, Template};
use serde_json::Value;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How long the router keeps counting a lead's opens in a campaign after the last one.
const OPEN_COUNT_KEPT: Duration = Duration::from_secs(180 * 24 * 3600);

/// What one event's intake asks of rule memory.
#[derive(Debug)]
pub struct EventMemory {
    /// The open count to fill in, and the rules to match once it is known.
    recount: Option<Recount>,
    rules: Vec<RuleAsk>,
    /// What this event records for `unless_seen` clauses (slots; the time is the commit's).
    seen: Vec<(Slot, Duration)>,
}

/// An open whose count the router fills in.
#[derive(Debug)]
struct Recount {
    /// The lead's opens in the campaign.
    slot: Slot,
    /// The event, its count still missing.
    event: Value,
    config: Arc<Config>,
    /// The rules that may match (in order), each with its deliveries among the event's.
    rules: Vec<(usize, Range<usize>)>,
}

/// One matched rule's part: its deliveries among the event's, and what it remembers.
#[derive(Debug)]
struct RuleAsk {
    deliveries: Range<usize>,
    unless_seen: Option<(Slot, Duration)>,
    once: Option<OnceAsk>,
    throttle: Option<ThrottleAsk>,
}

/// `throttle` for one event: the rule's key and its window.
#[derive(Debug)]
struct ThrottleAsk {
    slot: Slot,
    limit: u32,
    per: Duration,
    rolling: bool,
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
        config: &Arc<Config>,
        matched: &[usize],
        event: &Data,
        missing: &mut Vec<MissingKey>,
    ) -> Option<EventMemory> {
        let mut rules = Vec::new();
        let mut ranges = Vec::new();
        let mut at = 0;
        for &i in matched {
            let rule = config.rules.get(i);
            let deliveries = at..at + rule.actions.len();
            at = deliveries.end;
            ranges.push((i, deliveries.clone()));
            let mut ask = RuleAsk {
                deliveries,
                unless_seen: None,
                once: None,
                throttle: None,
            };
            let mut missed = |error| {
                missing.push(MissingKey {
                    rule: rule.name.clone(),
                    error,
                })
            };
            if let Some(clause) = &rule.unless_seen {
                match render_key(config, &clause.same, event) {
                    Ok(key) => {
                        let scope = clause.scope.clone();
                        ask.unless_seen = Some((Slot { scope, key }, clause.within));
                    }
                    Err(error) => missed(error),
                }
            }
            if let Some(once) = &rule.once {
                match render_key(config, &once.key, event) {
                    Ok(key) => {
                        let scope = format!("once:{}", rule.name);
                        let slot = Slot { scope, key };
                        ask.once = Some(OnceAsk {
                            slot,
                            hold: once.hold,
                        });
                    }
                    Err(error) => missed(error),
                }
            }
            if let Some(t) = &rule.throttle {
                match render_key(config, &t.key, event) {
                    Ok(key) => {
                        let scope = format!("throttle:{}", rule.name);
                        ask.throttle = Some(ThrottleAsk {
                            slot: Slot { scope, key },
                            limit: t.limit,
                            per: t.per,
                            rolling: t.rolling,
                        });
                    }
                    Err(error) => missed(error),
                }
            }
            if ask.unless_seen.is_some() || ask.once.is_some() || ask.throttle.is_some() {
                rules.push(ask);
            }
        }
        let (canonical, sent) = event::event_type(event.value());
        let seen: Vec<(Slot, Duration)> = config
            .rules
            .seen()
            .iter()
            .filter(|c| c.records(canonical, sent))
            .filter_map(|c| {
                let key = render_key(config, &c.same, event).ok()?;
                let scope = c.scope.clone();
                Some((Slot { scope, key }, c.within))
            })
            .collect();
        let recount = open_to_count(event.value()).map(|slot| Recount {
            slot,
            event: event.value().clone(),
            config: config.clone(),
            rules: ranges,
        });
        let wanted = recount.is_some() || !rules.is_empty() || !seen.is_empty();
        wanted.then_some(EventMemory {
            recount,
            rules,
            seen,
        })
    }

    /// Whether the event's deliveries are only known in the transaction, with what memory adds
    /// to their event (an open's count, `noise.suppressed`): they go through the store rather
    /// than straight to the workers.
    pub fn decides_content(&self) -> bool {
        self.recount.is_some() || self.rules.iter().any(|r| r.throttle.is_some())
    }
}

/// The slot of the opens to count for an event, when it is an open that carries no count: the
/// lead's opens in the campaign (both must be known).
pub fn open_to_count(event: &Value) -> Option<Slot> {
    let (canonical, _) = event::event_type(event);
    if canonical != "EMAIL_OPENED" || !event["open"]["count"].is_null() {
        return None;
    }
    let campaign = event::campaign_id(event)?;
    let lead = event["lead"]["email"].as_str()?.trim().to_ascii_lowercase();
    (!lead.is_empty()).then(|| Slot {
        scope: "opens".into(),
        key: format!("{campaign}:{lead}"),
    })
}

/// A key for an event: `Err(None)` when it renders empty (nothing but separators, such as the
/// `:` of `{{campaign.id}}:{{lead.email}}` with both missing), `Err(Some(why))` when it does
/// not render.
fn render_key(config: &Config, key: &Template, event: &Data) -> Result<String, Option<String>> {
    match config.templates.render(key, event) {
        Ok(key) if key.chars().any(char::is_alphanumeric) => Ok(key),
        Ok(_) => Err(None),
        Err(e) => Err(Some(e.to_string())),
    }
}

/// Counts this open, writes the count into the event, and matches the rules that could match
/// against it: those that do not are unmatched.
fn recount(r: &Recount, now: Millis, view: &dyn View, decision: &mut Decision) {
    let count = view.cell(&r.slot).a + 1;
    let kept = Cell {
        a: count,
        expires: now.saturating_add(OPEN_COUNT_KEPT.as_millis() as i64),
        ..Cell::default()
    };
    decision.cells.push((r.slot.clone(), kept));
    let mut event = r.event.clone();
    event["open"]["count"] = Value::from(count);
    let matched = r.config.rules.matching(&event);
    for (rule, range) in &r.rules {
        if !matched.contains(rule) {
            for v in &mut decision.verdicts[range.clone()] {
                *v = Verdict::Unmatched;
            }
        }
    }
    decision.payload = serde_json::to_string(&event).ok();
}

/// The firings a rolling throttle counts at `now`: those of the last `per`.
fn throttle_span(t: &ThrottleAsk, now: Millis) -> Span {
    Span {
        slot: t.slot.clone(),
        from: now.saturating_sub(t.per.as_millis() as i64) + 1,
        to: now,
    }
}

/// Whether a throttled rule may fire now; records the firing, or one more held back. Its cell:
/// `a` the fixed window's start, `b` the firings in it, `c` the firings held back since the
/// last one sent (which the message sent tells as `noise.suppressed`).
fn throttle(
    t: &ThrottleAsk,
    deliveries: Range<usize>,
    now: Millis,
    view: &dyn View,
    decision: &mut Decision,
) -> bool {
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
    if allowed {
        let context = serde_json::json!({"noise": {"suppressed": cell.c}}).to_string();
        decision
            .contexts
            .extend(deliveries.map(|i| (i, context.clone())));
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
    allowed
}

impl EventMemory {
    /// The span an `unless_seen` looks back over, at `now`.
    fn seen_span(slot: &Slot, within: Duration, now: Millis) -> Span {
        Span {
            slot: slot.clone(),
            from: now.saturating_sub(within.as_millis() as i64),
            to: now,
        }
    }
}

impl Decider for EventMemory {
    fn needs(&self, now: Millis) -> Needs {
        let mut needs = Needs::default();
        if let Some(r) = &self.recount {
            needs.cells.push(r.slot.clone());
        }
        for rule in &self.rules {
            if let Some((slot, within)) = &rule.unless_seen {
                needs.spans.push(Self::seen_span(slot, *within, now));
            }
            if let Some(once) = &rule.once {
                needs.cells.push(once.slot.clone());
            }
            if let Some(t) = &rule.throttle {
                needs.cells.push(t.slot.clone());
                if t.rolling {
                    needs.spans.push(throttle_span(t, now));
                }
            }
        }
        // The slots this event adds marks to are locked too (on PostgreSQL), so that counting
        // them and adding to them are serialised.
        needs
            .cells
            .extend(self.seen.iter().map(|(slot, _)| slot.clone()));
        needs
    }

    fn decide(&self, now: Millis, deliveries: &[NewDelivery], view: &dyn View) -> Decision {
        let mut decision = Decision {
            verdicts: vec![Verdict::Send; deliveries.len()],
            ..Decision::default()
        };
        if let Some(r) = &self.recount {
            recount(r, now, view, &mut decision);
        }
        for rule in &self.rules {
            if decision.verdicts[rule.deliveries.clone()]
                .iter()
                .all(|v| *v == Verdict::Unmatched)
            {
                continue;
            }
            let stop = |decision: &mut Decision, reason| {
                for v in &mut decision.verdicts[rule.deliveries.clone()] {
                    *v = Verdict::Suppressed(reason);
                }
            };
            if let Some((slot, within)) = &rule.unless_seen
                && view.count(&Self::seen_span(slot, *within, now)) > 0
            {
                stop(&mut decision, "unless_seen");
                continue;
            }
            if let Some(once) = &rule.once {
                // A cell of `once` holds 1 while its key is taken (its expiry ends the hold).
                if view.cell(&once.slot).a != 0 {
                    stop(&mut decision, "once");
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
            if let Some(t) = &rule.throttle
                && !throttle(t, rule.deliveries.clone(), now, view, &mut decision)
            {
                stop(&mut decision, "throttled");
            }
        }
        // What this event records comes after its own decisions: an event does not stop
        // itself.
        for (slot, within) in &self.seen {
            decision.marks.push(Mark {
                slot: slot.clone(),
                at: now,
                expires: now.saturating_add(within.as_millis() as i64),
            });
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
            recount: None,
            rules: vec![RuleAsk {
                deliveries: 0..2,
                throttle: None,
                unless_seen: None,
                once: Some(OnceAsk {
                    slot: Slot {
                        scope: "once:r".into(),
                        key: key.into(),
                    },
                    hold: hold.map(Duration::from_secs),
                }),
            }],
            seen: vec![],
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

    /// A view with marks in every span.
    struct Seen;

    impl View for Seen {
        fn cell(&self, _: &Slot) -> Cell {
            Cell::default()
        }
        fn count(&self, _: &Span) -> u64 {
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
        assert!(decided.cells.is_empty(), "once is not consumed");
        assert_eq!(decided.marks.len(), 1);
        assert_eq!(decided.marks[0].at, 1_000);
        assert_eq!(decided.marks[0].expires, 61_000);
        // Without a mark in its span, once decides.
        let decided = m.decide(1_000, &d, &Cells::default());
        assert_eq!(decided.verdicts, [Verdict::Send; 2]);
        assert_eq!(decided.cells.len(), 1);
        // The locks cover the marks it adds.
        let needs = m.needs(1_000);
        assert!(needs.cells.contains(&slot("seen:y", "ana")));
        assert_eq!(needs.spans[0].from, 1_000 - 3_600_000);
    }
}
