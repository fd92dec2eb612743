//! Rule memory: the decisions rules take across events (`once`, `window`, …). At intake, the
//! rules an event matched that use memory are gathered, with their keys rendered for the event,
//! into an [`EventMemory`]; the store runs it inside the transaction that stores the event (see
//! `store::memory`), so the decision is exact, durable and shared by every instance on one
//! database.
//!
//! In the order the decisions are taken for a matched rule (a stop consumes nothing after it;
//! see `decide`):
//! - silences: a notification a silence matches is `suppressed` (reason `silenced`);
//! - `unless_seen`: the rule does not fire (`suppressed`, reason `unless_seen`) when an event of
//!   the clause's types with the same key was accepted within its time; every event of those
//!   types records when its key was last seen, whether or not any rule matched it;
//! - `outside: drop`: a delivery outside its action's time window is `suppressed` (`outside`);
//! - `once`: the first event of a key takes it, for `for` or for ever; the next events of the
//!   key are recorded `suppressed` (reason `once`) until the hold is over;
//! - `throttle`: at most `limit` firings per key per window (a fixed window opens at a firing,
//!   a rolling one is the last `per`); the others are `suppressed` (reason `throttled`), and the
//!   next message sent tells how many were held back (`noise.suppressed`);
//! - `outside: hold`: a delivery outside its action's time window waits, pending, until it
//!   opens.
//!
//! Before those, the store decides what intake could not know of a rule's `when` (see
//! `resolve`): when SmartLead sends an open without a count (its real `EMAIL_OPEN` payloads
//! never carry one), the router counts the lead's opens in the campaign itself and writes the
//! count into the stored event as `open.count`; `window`s are counted; the rules that read
//! either are matched there (at intake they were only known to possibly match), and `fire`
//! keeps a window rule from firing again until its `when` stopped holding.

mod decide;
mod digest;
mod plan;
mod resolve;
mod throttle;

use crate::config::Config;
use crate::event::{self, EventView};
use crate::store::memory::{Decider, Decision, Needs, Slot, View};
use crate::store::{Millis, NewDelivery, Timing};
use crate::template::{Data, Template};
pub use decide::Notes;
use digest::{Closing, DigestAsk, EventFacts};
pub use plan::Plan;
use resolve::Resolve;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use throttle::throttle_span;

/// What memory adds to the event for some of its deliveries (by position), as objects merged
/// over it (`noise`, `window`).
type Context = BTreeMap<usize, serde_json::Map<String, Value>>;

/// What one event's intake asks of rule memory.
#[derive(Debug)]
pub struct EventMemory {
    /// What the store decides of the event's `when`: an open's count, windows.
    resolve: Option<Resolve>,
    rules: Vec<RuleAsk>,
    /// What this event records for `unless_seen` clauses: the key last seen now (the time is
    /// the commit's).
    seen: Vec<(Slot, Duration)>,
    /// Deliveries outside their action's time window with `outside: digest`: each (by
    /// position, with its rule's position) joins its action's digest, sent when the window
    /// opens at the time given.
    outside: Vec<OutsideAsk>,
}

/// A delivery that joins its action's digest while outside its time window.
#[derive(Debug)]
struct OutsideAsk {
    delivery: usize,
    rule: usize,
    opens: Millis,
    digest: DigestAsk,
}

/// One matched rule's part: its deliveries among the event's, and what it remembers.
#[derive(Debug)]
struct RuleAsk {
    /// The rule's position in the configuration.
    rule: usize,
    deliveries: Range<usize>,
    unless_seen: Option<(Slot, Duration)>,
    once: Option<OnceAsk>,
    throttle: Option<ThrottleAsk>,
    /// `digest`: the event joins its key's digest instead of being sent on its own.
    digest: Option<DigestAsk>,
    /// `throttle.over_limit: digest`: what the throttle holds back joins this digest.
    throttled: Option<DigestAsk>,
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
        planned: &[NewDelivery],
        event: &Data,
        missing: &mut Vec<MissingKey>,
    ) -> Option<EventMemory> {
        let mut rules = Vec::new();
        let mut ranges = Vec::new();
        let mut outside = Vec::new();
        let mut at = 0;
        for &i in matched {
            let rule = config.rules.get(i);
            let deliveries = at..at + rule.actions.len();
            at = deliveries.end;
            for d in deliveries.clone() {
                if let Some(Timing::Digest(opens)) = planned.get(d).map(|p| p.timing) {
                    let n = d - deliveries.start + 1;
                    outside.push(OutsideAsk {
                        delivery: d,
                        rule: i,
                        opens,
                        digest: DigestAsk::held_back(
                            Slot {
                                scope: format!("digest-outside:{}#{n}", rule.name),
                                key: planned[d].destination.clone(),
                            },
                            &rule.name,
                            facts(config, event),
                        ),
                    });
                }
            }
            ranges.push((i, deliveries.clone()));
            let mut ask = RuleAsk {
                rule: i,
                deliveries,
                unless_seen: None,
                once: None,
                throttle: None,
                digest: None,
                throttled: None,
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
                        if t.digest {
                            ask.throttled = Some(DigestAsk::held_back(
                                Slot {
                                    scope: format!("digest-throttled:{}", rule.name),
                                    key: key.clone(),
                                },
                                &rule.name,
                                facts(config, event),
                            ));
                        }
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
            if let Some(d) = &rule.digest {
                // An event whose key renders empty joins the digest of no key: sent alone, it
                // would meet templates written for digests.
                let key = render_key(config, &d.key, event).unwrap_or_else(|error| {
                    missed(error);
                    NO_KEY.to_string()
                });
                ask.digest = Some(DigestAsk {
                    slot: Slot {
                        scope: format!("digest:{}", rule.name),
                        key,
                    },
                    rule: rule.name.clone(),
                    max_events: d.max_events,
                    list: d.list,
                    close: Closing::Rule(d.close.clone()),
                    immediate: d.immediate,
                    event: facts(config, event),
                });
            }
            if ask.unless_seen.is_some()
                || ask.once.is_some()
                || ask.throttle.is_some()
                || ask.digest.is_some()
            {
                rules.push(ask);
            }
        }
        let (canonical, sent) = event.kinds();
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
        let resolve = Resolve::for_event(config, ranges, event, missing);
        let wanted =
            resolve.is_some() || !rules.is_empty() || !seen.is_empty() || !outside.is_empty();
        wanted.then_some(EventMemory {
            resolve,
            rules,
            seen,
            outside,
        })
    }

    /// Whether the event's deliveries are only known in the transaction, with what memory adds
    /// to their event (an open's count, `noise.suppressed`): they go through the store rather
    /// than straight to the workers.
    pub fn decides_content(&self) -> bool {
        self.resolve.is_some()
            || self
                .rules
                .iter()
                .any(|r| r.throttle.is_some() || r.digest.is_some())
            || !self.outside.is_empty()
    }
}

/// The key of the digest that collects the events whose key renders empty.
const NO_KEY: &str = "(none)";

/// What a digest item keeps of an event.
fn facts(config: &Config, event: &Data) -> EventFacts {
    let v = event.value();
    let (canonical, _) = event::event_type(v);
    EventFacts {
        id: v["event_id"].as_str().unwrap_or_default().to_string(),
        kind: canonical.to_string(),
        lead: v["lead"]["email"].as_str().map(str::to_string),
        config_hash: config.hash.clone(),
    }
}

/// The slot of the opens to count for an event, when it is an open that carries no count: the
/// lead's opens in the campaign (both must be known).
pub fn open_to_count(event: &(impl event::EventView + ?Sized)) -> Option<Slot> {
    let (canonical, _) = event.kinds();
    if canonical != "EMAIL_OPENED" {
        return None;
    }
    let campaign = event.campaign_id()?;
    let event = event.value();
    if !event["open"]["count"].is_null() {
        return None;
    }
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

impl Decider for EventMemory {
    fn needs(&self, now: Millis) -> Needs {
        let mut needs = Needs::default();
        if let Some(r) = &self.resolve {
            r.needs(now, &mut needs);
        }
        for rule in &self.rules {
            if let Some((slot, _)) = &rule.unless_seen {
                needs.cells.push(slot.clone());
            }
            if let Some(once) = &rule.once {
                needs.cells.push(once.slot.clone());
            }
            for d in rule.digest.iter().chain(&rule.throttled) {
                needs.cells.push(d.slot.clone());
            }
            if let Some(t) = &rule.throttle {
                needs.cells.push(t.slot.clone());
                if t.rolling {
                    needs.spans.push(throttle_span(t, now));
                }
            }
        }
        needs
            .cells
            .extend(self.outside.iter().map(|o| o.digest.slot.clone()));
        // The slots this event records itself in are locked too (on PostgreSQL).
        needs
            .cells
            .extend(self.seen.iter().map(|(slot, _)| slot.clone()));
        needs
    }

    fn decide(&self, now: Millis, deliveries: &[NewDelivery], view: &dyn View) -> Decision {
        self.run(now, deliveries, view, &mut Notes::default())
    }
}

#[cfg(test)]
mod tests;
