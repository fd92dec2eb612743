//! What the store decides of an event's `when`: the open count the router fills in, and the
//! rules' windows, counted in event time. Rules that matched at intake only possibly (see
//! `Rule::at_intake`) are matched here, with the count and the windows known; `fire` turns a
//! window rule into one that fires when its `when` starts holding.

use super::decide::{Notes, span_of, when};
use super::{Context, MissingKey, open_to_count, render_key};
use crate::config::Config;
use crate::rules::{Condition, FUTURE_SLACK, Fire, Maybe, Rule, Window, WindowTest};
use crate::store::Millis;
use crate::store::memory::{Cell, Decision, Mark, Needs, Slot, Span, Verdict, View};
use crate::template::Data;
use serde_json::{Value, json};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How long the router keeps counting a lead's opens in a campaign after the last one.
const OPEN_COUNT_KEPT: Duration = Duration::from_secs(180 * 24 * 3600);

/// An event whose `when` the store decides, for the rules that matched it at intake.
#[derive(Debug)]
pub(super) struct Resolve {
    /// The lead's opens in the campaign, when the router fills in the count.
    pub(super) count: Option<Slot>,
    /// The event as at intake.
    pub(super) event: Value,
    pub(super) config: Arc<Config>,
    /// When the event happened (its `timestamp`), when it says.
    pub(super) at: Option<Millis>,
    /// The rules to decide, in order.
    pub(super) rules: Vec<Candidate>,
}

/// A rule that matched at intake, to match again with what the store knows.
#[derive(Debug)]
pub(super) struct Candidate {
    pub(super) rule: usize,
    /// Its deliveries among the event's.
    pub(super) deliveries: Range<usize>,
    /// Each window's key for this event; `None` when it rendered empty (the window then does
    /// not hold).
    pub(super) keys: Vec<Option<String>>,
}

/// A window's verdict for one event.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    holds: bool,
    /// The event is older than the window: it counts nowhere.
    stale: bool,
    count: Option<u64>,
    of: Option<u64>,
    per: Option<u64>,
}

/// What `fire` decided, for people.
fn describe_fire(holds: bool, fires: bool, before: Cell, fire: &Fire) -> String {
    match (holds, fires) {
        (true, true) => "fire: the window started holding, fires".into(),
        (true, false) if before.a != 0 => format!(
            "fire: fired at {}, not again until the window stops holding",
            when(before.b)
        ),
        (true, false) => format!(
            "fire: fired at {}, not again before its cooldown of {} is over",
            when(before.b),
            span_of(fire.cooldown)
        ),
        (false, _) => "fire: the window does not hold (the rule is armed)".into(),
    }
}

impl Outcome {
    /// The window's verdict, for people.
    fn describe(&self, window: &Window, key: Option<&str>) -> String {
        let Some(key) = key else {
            return "window: its key renders empty, so it does not hold".into();
        };
        let over = span_of(window.over);
        if self.stale {
            return format!("window: the event is older than {over}, so it counts nowhere");
        }
        let verdict = if self.holds { "holds" } else { "does not hold" };
        let bounds = |b: &[crate::rules::Bound]| {
            b.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        };
        match &window.test {
            WindowTest::Count(b) => format!(
                "window: {} event(s) for {key} in the last {over} ({}): {verdict}",
                self.count.unwrap_or(0),
                bounds(b)
            ),
            WindowTest::Rate {
                min_per, bounds: b, ..
            } => format!(
                "window: {} of {} for {key} in the last {over} (rate {}, at least {min_per} wanted): {verdict}",
                self.of.unwrap_or(0),
                self.per.unwrap_or(0),
                bounds(b)
            ),
        }
    }

    /// What templates see as `window`.
    fn context(&self) -> Value {
        let rate = match (self.of, self.per) {
            (Some(of), Some(per)) if per > 0 => Some(of as f64 / per as f64),
            _ => None,
        };
        json!({"count": self.count, "rate": rate, "of": self.of, "per": self.per})
    }
}

fn window_slot(rule: &Rule, i: usize, part: &str, key: &str) -> Slot {
    Slot {
        scope: format!("window:{}:{}{part}", rule.name, i + 1),
        key: key.to_string(),
    }
}

fn fire_slot(rule: &Rule, key: &str) -> Slot {
    Slot {
        scope: format!("fire:{}", rule.name),
        key: key.to_string(),
    }
}

/// The marks a window counts at `now`: those of the last `over`, and those up to
/// [`FUTURE_SLACK`] ahead.
fn span(slot: Slot, over: Duration, now: Millis) -> Span {
    Span {
        slot,
        from: now.saturating_sub(over.as_millis() as i64),
        to: now.saturating_add(FUTURE_SLACK.as_millis() as i64),
    }
}

impl Resolve {
    /// What the store is to decide of an event's `when` for the rules matched at intake (each
    /// with its deliveries), if anything: the open's count, when the router fills it in, and
    /// the rules that need it or have windows. `missing` gets the windows whose key rendered
    /// empty.
    pub(super) fn for_event(
        config: &Arc<Config>,
        matched: Vec<(usize, Range<usize>)>,
        event: &Data,
        missing: &mut Vec<MissingKey>,
    ) -> Option<Resolve> {
        let count = open_to_count(event);
        let mut rules = Vec::new();
        for (i, deliveries) in matched {
            let rule = config.rules.get(i);
            let pending = count.is_some() && rule.at_intake(event.value(), true) != Maybe::Yes;
            if rule.windows.is_empty() && !pending {
                continue;
            }
            let keys = rule
                .windows
                .iter()
                .map(|w| match render_key(config, &w.key, event) {
                    Ok(key) => Some(key),
                    Err(error) => {
                        let rule = rule.name.clone();
                        missing.push(MissingKey { rule, error });
                        None
                    }
                })
                .collect();
            rules.push(Candidate {
                rule: i,
                deliveries,
                keys,
            });
        }
        if count.is_none() && rules.is_empty() {
            return None;
        }
        let at = event.value()["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        Some(Resolve {
            count,
            event: event.value().clone(),
            config: config.clone(),
            at,
            rules,
        })
    }

    /// The slots of a candidate's windows, with their period: one per count, two per rate.
    fn window_slots<'a>(
        &'a self,
        c: &'a Candidate,
    ) -> impl Iterator<Item = (usize, Slot, Duration)> + 'a {
        let rule = self.config.rules.get(c.rule);
        c.keys.iter().enumerate().flat_map(move |(i, key)| {
            let window = &rule.windows[i];
            let parts: &[&str] = match window.test {
                WindowTest::Count(_) => &[""],
                WindowTest::Rate { .. } => &[":of", ":per"],
            };
            key.iter().flat_map(move |key| {
                parts
                    .iter()
                    .map(move |part| (i, window_slot(rule, i, part, key), window.over))
            })
        })
    }

    pub(super) fn needs(&self, now: Millis, needs: &mut Needs) {
        if let Some(slot) = &self.count {
            needs.cells.push(slot.clone());
        }
        for c in &self.rules {
            for (_, slot, over) in self.window_slots(c) {
                // Locked (on PostgreSQL) as well as counted: counting and adding to a window
                // are serialised between instances.
                needs.cells.push(slot.clone());
                needs.spans.push(span(slot, over, now));
            }
            let rule = self.config.rules.get(c.rule);
            if rule.fire.is_some()
                && let Some(key) = c.keys.iter().flatten().next()
            {
                needs.cells.push(fire_slot(rule, key));
            }
        }
    }

    /// Counts the open, counts the windows, and matches the candidates: those that do not
    /// match are unmatched, those that do get what their windows counted as `window`.
    pub(super) fn decide(
        &self,
        now: Millis,
        view: &dyn View,
        decision: &mut Decision,
        contexts: &mut Context,
        notes: &mut Notes,
    ) {
        let mut filled = None;
        if let Some(slot) = &self.count {
            let count = view.cell(slot).a + 1;
            let kept = Cell {
                a: count,
                expires: now.saturating_add(OPEN_COUNT_KEPT.as_millis() as i64),
                ..Cell::default()
            };
            decision.cells.push((slot.clone(), kept));
            let mut event = self.event.clone();
            event["open"]["count"] = Value::from(count);
            decision.payload = serde_json::to_string(&event).ok();
            filled = Some(event);
            for c in &self.rules {
                let key = &slot.key;
                notes.note(c.rule, || format!("open.count: open {count} of {key}"));
            }
        }
        let event = filled.as_ref().unwrap_or(&self.event);
        for c in &self.rules {
            let rule = self.config.rules.get(c.rule);
            let outcomes = self.windows(c, event, now, view, decision);
            for (i, o) in outcomes.iter().enumerate() {
                notes.note(c.rule, || {
                    o.describe(&rule.windows[i], c.keys[i].as_deref())
                });
            }
            let mut verdict = rule.when.eval(event, &|leaf| match leaf {
                Condition::Window(i) => Some(Maybe::from(outcomes[*i].holds)),
                _ => None,
            }) == Maybe::Yes;
            if let Some(fire) = &rule.fire {
                verdict = match c.keys.iter().flatten().next() {
                    Some(key) => {
                        let stale = outcomes.iter().any(|o| o.stale);
                        let slot = fire_slot(rule, key);
                        let horizon = rule.windows.iter().map(|w| w.horizon()).max();
                        let kept = horizon.unwrap_or_default() + fire.cooldown;
                        let before = view.cell(&slot);
                        let fires = edge(before, verdict, stale, now, fire.cooldown);
                        notes.note(c.rule, || describe_fire(verdict, fires.0, before, fire));
                        let (fires, mut cell) = fires;
                        if let Some(cell) = cell.as_mut() {
                            cell.expires = now.saturating_add(kept.as_millis() as i64);
                        }
                        decision.cells.extend(cell.map(|cell| (slot, cell)));
                        fires
                    }
                    None => false,
                };
            }
            if !verdict {
                notes.note(c.rule, || {
                    "when: does not hold with what the store counted".into()
                });
                for v in &mut decision.verdicts[c.deliveries.clone()] {
                    *v = Verdict::Unmatched;
                }
                continue;
            }
            if let Some(o) = outcomes.iter().find(|o| o.holds).or(outcomes.first()) {
                for i in c.deliveries.clone() {
                    contexts
                        .entry(i)
                        .or_default()
                        .insert("window".into(), o.context());
                }
            }
            // A rule with `stop` that matches only now ends evaluation here too: the rules
            // after it (intake could not tell) have no deliveries.
            if rule.stop {
                notes.note(c.rule, || {
                    "stop: the rules after this one are not evaluated".into()
                });
                for v in &mut decision.verdicts[c.deliveries.end..] {
                    *v = Verdict::Unmatched;
                }
                break;
            }
        }
    }

    /// Counts a candidate's windows for the event (recording its marks) and compares them.
    fn windows(
        &self,
        c: &Candidate,
        event: &Value,
        now: Millis,
        view: &dyn View,
        decision: &mut Decision,
    ) -> Vec<Outcome> {
        let rule = self.config.rules.get(c.rule);
        // A count window counts the events its rule would match were the window to hold.
        let counted = || {
            rule.when.eval(event, &|leaf| {
                matches!(leaf, Condition::Window(_)).then_some(Maybe::Yes)
            }) == Maybe::Yes
        };
        let slack = FUTURE_SLACK.as_millis() as i64;
        let at = self.at.unwrap_or(now).min(now.saturating_add(slack));
        let mut outcomes = vec![Outcome::default(); rule.windows.len()];
        for (i, window) in rule.windows.iter().enumerate() {
            let Some(key) = &c.keys[i] else { continue };
            let over = window.over.as_millis() as i64;
            let stale = at < now.saturating_sub(over);
            let mut tally = |part: &str, hit: bool| {
                let slot = window_slot(rule, i, part, key);
                let stored = view.count(&span(slot.clone(), window.over, now));
                let hit = hit && !stale;
                if hit {
                    let expires = at.saturating_add(window.horizon().as_millis() as i64);
                    decision.marks.push(Mark { slot, at, expires });
                }
                (hit, stored + u64::from(hit))
            };
            outcomes[i] = match &window.test {
                WindowTest::Count(bounds) => {
                    let (hit, count) = tally("", counted());
                    Outcome {
                        holds: hit && bounds.iter().all(|b| b.holds(count as f64)),
                        stale,
                        count: Some(count),
                        ..Outcome::default()
                    }
                }
                WindowTest::Rate {
                    of,
                    per,
                    min_per,
                    bounds,
                } => {
                    let (of_hit, of) = tally(":of", of.holds(event));
                    let (per_hit, per) = tally(":per", per.holds(event));
                    let rate = of as f64 / per.max(1) as f64;
                    let measured = (of_hit || per_hit) && per >= *min_per;
                    Outcome {
                        holds: measured && bounds.iter().all(|b| b.holds(rate)),
                        stale,
                        of: Some(of),
                        per: Some(per),
                        ..Outcome::default()
                    }
                }
            };
        }
        outcomes
    }
}

/// `fire`: whether a rule whose `when` holds (or not) fires, with its cell (`a` 1 once fired
/// until the `when` stops holding, `b` the last firing) as it becomes, when it changes. An
/// event older than its window re-arms nothing.
fn edge(
    cell: Cell,
    holds: bool,
    stale: bool,
    now: Millis,
    cooldown: Duration,
) -> (bool, Option<Cell>) {
    let cooled = cell.b == 0 || now >= cell.b.saturating_add(cooldown.as_millis() as i64);
    match (holds, cell.a) {
        (true, 0) if cooled => {
            let fired = Cell {
                a: 1,
                b: now,
                ..cell
            };
            (true, Some(fired))
        }
        // Written again so that it outlives a spike that lasts.
        (true, _) => (false, Some(cell)),
        (false, 1) if !stale => (false, Some(Cell { a: 0, ..cell })),
        (false, _) => (false, None),
    }
}
