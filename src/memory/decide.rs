//! The stages of rule memory for one event, in the order of the rules' reference: the store's
//! part of `when` (see `resolve`), silences, `unless_seen`, `outside: drop`, `once`,
//! `throttle`, `outside: hold`. A stop holds back what is still to be sent and consumes nothing
//! after it. Each stage can say what it decided, for `test --explain` ([`Notes`]).

use super::digest::Closing;
use super::throttle::{throttle, window_start};
use super::{Context, EventMemory};
use crate::store::memory::{Cell, Decision, Verdict, View};
use crate::store::{Millis, NewDelivery, Timing};
use serde_json::Value;
use std::ops::Range;
use std::time::Duration;

/// What each stage decided, by rule (its position in the configuration), when asked for.
#[derive(Debug, Default)]
pub struct Notes(Option<Vec<(usize, String)>>);

impl Notes {
    /// Notes that are kept.
    pub fn kept() -> Notes {
        Notes(Some(Vec::new()))
    }

    /// What was noted, in order.
    pub fn into_vec(self) -> Vec<(usize, String)> {
        self.0.unwrap_or_default()
    }

    /// Notes a stage's verdict for `rule`; the text is only made when notes are kept.
    pub(super) fn note(&mut self, rule: usize, text: impl FnOnce() -> String) {
        if let Some(notes) = &mut self.0 {
            notes.push((rule, text()));
        }
    }
}

/// A moment for people: RFC 3339 to the second, UTC.
pub(super) fn when(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A duration for people, the way rules write them: `30d`, `1h 30m`, `10s`.
pub(super) fn span_of(d: Duration) -> String {
    let mut left = d.as_secs();
    let mut parts = Vec::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= secs {
            parts.push(format!("{}{unit}", left / secs));
            left %= secs;
        }
    }
    if parts.is_empty() {
        return format!("{}ms", d.as_millis());
    }
    parts.join(" ")
}

impl EventMemory {
    /// Decides every stage for the event's `deliveries` over the state `view` at `now`.
    pub fn run(
        &self,
        now: Millis,
        deliveries: &[NewDelivery],
        view: &dyn View,
        notes: &mut Notes,
    ) -> Decision {
        let mut decision = Decision {
            verdicts: vec![Verdict::Send; deliveries.len()],
            ..Decision::default()
        };
        let mut contexts = Context::new();
        if let Some(r) = &self.resolve {
            r.decide(now, view, &mut decision, &mut contexts, notes);
        }
        let live = |decision: &Decision, range: &Range<usize>| {
            decision.verdicts[range.clone()].contains(&Verdict::Send)
        };
        for rule in &self.rules {
            let (range, at) = (&rule.deliveries, rule.rule);
            if !live(&decision, range) {
                continue;
            }
            // A stop holds back what is still to be sent; what an earlier stage stopped keeps
            // its reason.
            let stop = |decision: &mut Decision, reason| {
                for v in &mut decision.verdicts[range.clone()] {
                    if *v == Verdict::Send {
                        *v = Verdict::Suppressed(reason);
                    }
                }
            };
            // Silences first: a silenced notification takes nothing.
            for i in range.clone() {
                if deliveries[i].silenced {
                    decision.verdicts[i] = Verdict::Suppressed("silenced");
                }
            }
            if !live(&decision, range) {
                notes.note(at, || "silences: silenced, stops".into());
                continue;
            }
            if let Some((slot, within)) = &rule.unless_seen {
                // The cell holds when the key was last seen (kept for the longest `within` of
                // the rules that share it).
                let last = view.cell(slot).a;
                let seen = last != 0 && last >= now.saturating_sub(within.as_millis() as i64);
                let (key, within) = (&slot.key, span_of(*within));
                if seen {
                    notes.note(at, || {
                        format!("unless_seen: {key} was seen in the last {within}, stops")
                    });
                    stop(&mut decision, "unless_seen");
                    continue;
                }
                notes.note(at, || {
                    format!("unless_seen: {key} was not seen in the last {within}, goes on")
                });
            }
            // `outside: drop` before `once`: a delivery dropped takes nothing.
            for i in range.clone() {
                if deliveries[i].timing == Timing::Drop && decision.verdicts[i] == Verdict::Send {
                    decision.verdicts[i] = Verdict::Suppressed("outside");
                    let n = i - range.start + 1;
                    notes.note(at, || {
                        format!("outside: action {n} is outside its time window, dropped")
                    });
                }
            }
            if !live(&decision, range) {
                continue;
            }
            if let Some(once) = &rule.once {
                // A cell of `once` holds 1 while its key is taken (its expiry ends the hold).
                let cell = view.cell(&once.slot);
                let key = &once.slot.key;
                if cell.a != 0 {
                    notes.note(at, || match cell.expires {
                        0 => format!("once: {key} is taken for ever, stops"),
                        t => format!("once: {key} is taken until {}, stops", when(t)),
                    });
                    stop(&mut decision, "once");
                    continue;
                }
                let expires = once
                    .hold
                    .map_or(0, |h| now.saturating_add(h.as_millis() as i64));
                notes.note(at, || match once.hold {
                    None => format!("once: {key} is free, takes it for ever"),
                    Some(h) => format!("once: {key} is free, takes it for {}", span_of(h)),
                });
                let taken = Cell {
                    a: 1,
                    expires,
                    ..Cell::default()
                };
                decision.cells.push((once.slot.clone(), taken));
            }
            if let Some(t) = &rule.throttle {
                let before = view.cell(&t.slot);
                let allowed = throttle(t, now, view, &mut decision);
                let (key, limit) = (&t.slot.key, t.limit);
                let Some(held) = allowed else {
                    notes.note(at, || match t.rolling {
                        true => format!(
                            "throttle: {key} {limit} of {limit} in the last {}, stops",
                            span_of(t.per)
                        ),
                        false => {
                            let start = window_start(t, before, now);
                            format!(
                                "throttle: {key} {limit} of {limit} since {}, next at {}, stops",
                                when(start),
                                when(start.saturating_add(t.per.as_millis() as i64))
                            )
                        }
                    });
                    stop(&mut decision, "throttled");
                    if let Some(d) = &rule.throttled {
                        // Sent as one digest when the window reopens: a fixed window at its
                        // end, a rolling one at the latest a `per` from now.
                        let per = t.per.as_millis() as i64;
                        let reopens = match t.rolling {
                            true => now.saturating_add(per),
                            false => window_start(t, before, now).saturating_add(per),
                        };
                        d.join(
                            now,
                            view,
                            &mut decision,
                            || (reopens, "hold_release"),
                            at,
                            notes,
                        );
                    }
                    continue;
                };
                notes.note(at, || {
                    let start = window_start(t, before, now);
                    let used = decision.cells.iter().rev().find(|(s, _)| *s == t.slot);
                    let n = match t.rolling {
                        true => view.count(&super::throttle_span(t, now)) + 1,
                        false => used.map_or(1, |(_, c)| c.b as u64),
                    };
                    format!(
                        "throttle: {key} {n} of {limit} since {}, goes ({held} held back before)",
                        when(start)
                    )
                });
                let noise = serde_json::json!({ "suppressed": held });
                for i in range.clone() {
                    let context = contexts.entry(i).or_default();
                    context.insert("noise".into(), noise.clone());
                }
            }
            if let Some(d) = &rule.digest {
                let close = || match &d.close {
                    Closing::Rule(c) => c.closes_at(now).unwrap_or((now, "schedule")),
                    // A digest rule's own digest closes as the rule says.
                    Closing::Reopens => (now, "window"),
                };
                let opened = d.join(now, view, &mut decision, close, at, notes);
                let alone = opened && d.immediate;
                if alone {
                    notes.note(at, || {
                        "digest: first: immediate, also sent on its own".into()
                    });
                } else {
                    // Sent as part of the digest, not on its own (held ones too).
                    for v in &mut decision.verdicts[range.clone()] {
                        if matches!(v, Verdict::Send | Verdict::Held(_)) {
                            *v = Verdict::Suppressed("digest");
                        }
                    }
                }
            }
        }
        // Outside its time window with `outside: digest`: into the action's digest, sent when
        // the window opens.
        for o in &self.outside {
            if decision.verdicts[o.delivery] == Verdict::Send && !deliveries[o.delivery].silenced {
                let opens = o.opens;
                let (at, n) = (o.rule, o.delivery);
                o.digest.join(
                    now,
                    view,
                    &mut decision,
                    || (opens, "hold_release"),
                    at,
                    notes,
                );
                notes.note(at, || {
                    format!("outside: delivery {} waits in its action's digest", n + 1)
                });
                decision.verdicts[o.delivery] = Verdict::Suppressed("outside");
            }
        }
        // Last, what intake decided of what is still sent (for rules without memory): silenced,
        // or as its time window says.
        for (v, d) in decision.verdicts.iter_mut().zip(deliveries) {
            if *v == Verdict::Send {
                *v = Verdict::at_intake(d);
            }
        }
        decision.contexts = contexts
            .into_iter()
            .map(|(i, context)| (i, Value::Object(context).to_string()))
            .collect();
        // What this event records comes after its own decisions: an event does not stop
        // itself. Only the last time a key was seen matters: one cell, however many events.
        for (slot, within) in &self.seen {
            let seen = Cell {
                a: now,
                expires: now.saturating_add(within.as_millis() as i64),
                ..Cell::default()
            };
            decision.cells.push((slot.clone(), seen));
        }
        decision
    }
}
