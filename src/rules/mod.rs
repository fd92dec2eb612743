//! Rules: compiled conditions and the rule set that matches events against them.
//!
//! Rules are indexed by event type and campaign id when they are compiled, so an event is only
//! evaluated against rules that could match it: a rule set of thousands costs little per event.

pub mod condition;
pub mod digest;
mod index;
pub mod pattern;
mod raw;
mod window;

pub use condition::{Condition, Maybe, Verdict};
pub use raw::{
    RawCampaign, RawDigest, RawFire, RawOnce, RawRate, RawSchedule, RawThreshold, RawThrottle,
    RawUnlessSeen, RawWhen, RawWindow,
};
pub use window::{Bound, FUTURE_SLACK, Fire, Window, WindowTest};

use crate::actions::Action;
use crate::event::EventView;
use crate::store::Timing;
use crate::template::Template;
use crate::time_window::TimeWindow;
use chrono::{DateTime, Utc};
use index::Index;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule's unique name.
    pub name: String,
    /// Whether the rule is switched on.
    pub enabled: bool,
    /// Whether evaluation ends after this rule when it matches.
    pub stop: bool,
    /// What must hold.
    pub when: Condition,
    /// What to do, in order.
    pub actions: Vec<RuleAction>,
    /// Where the rule is written: file and line.
    pub origin: (Arc<Path>, u32),
    /// Fire once per key (`once:`).
    pub once: Option<Box<Once>>,
    /// Do not fire when an event of some types with the same key was seen lately.
    pub unless_seen: Option<Arc<SeenClause>>,
    /// At most so many firings per key per window (`throttle:`).
    pub throttle: Option<Box<Throttle>>,
    /// The windows its `when` reads ([`Condition::Window`] gives the position).
    pub windows: Vec<Window>,
    /// Fire when the `when` starts holding rather than on every event (`fire:`).
    pub fire: Option<Fire>,
    /// Collect what it matched into one message per key (`digest:`).
    pub digest: Option<Box<digest::Digest>>,
}

impl Rule {
    /// Whether the rule matches at intake, before the store is read (see
    /// [`Condition::at_intake`]): a `rate` window is unknown for the events it counts and does
    /// not hold for the others.
    pub fn at_intake(&self, event: &Value, counting: bool) -> Maybe {
        if !counting && self.windows.is_empty() {
            return Maybe::from(self.when.holds(event));
        }
        self.when
            .at_intake(event, counting, &|i| match &self.windows[i].test {
                WindowTest::Rate { of, per, .. } => {
                    let none = |c: &Condition| c.at_intake(event, counting, &|_| Maybe::No);
                    match (none(of), none(per)) {
                        (Maybe::No, Maybe::No) => Maybe::No,
                        _ => Maybe::Unknown,
                    }
                }
                WindowTest::Count(_) => Maybe::Unknown,
            })
    }
}

/// A rule that fires at most `limit` times per key per window.
#[derive(Debug)]
pub struct Throttle {
    /// What the limit is per: a template over the canonical event.
    pub key: Template,
    /// Firings allowed per window (at least 1).
    pub limit: u32,
    /// The window's length.
    pub per: Duration,
    /// Whether the window is the last `per` (rolling) or opens at a firing (fixed).
    pub rolling: bool,
    /// `over_limit: digest`: what it holds back is sent as one digest when the window reopens.
    pub digest: bool,
}

/// `unless_seen`: the event types to look for, what "the same" means, and how far back. Rules
/// that look for the same events with the same key share what is recorded (when each key was
/// last seen), whatever their `within`.
#[derive(Debug)]
pub struct SeenClause {
    /// Where its marks are kept: the same for every rule with an identical clause.
    pub scope: String,
    /// The event types it records (canonical or as sent).
    pub events: Vec<String>,
    /// The key: a template over the canonical event.
    pub same: Template,
    /// How far back it looks.
    pub within: Duration,
}

impl SeenClause {
    /// Whether it records events of this type (canonical or as sent).
    pub fn records(&self, canonical: &str, sent: &str) -> bool {
        self.events.iter().any(|e| e == canonical || e == sent)
    }
}

/// A rule that fires for the first event of each key, then not again for a while.
#[derive(Debug)]
pub struct Once {
    /// What the rule fires once per: a template over the canonical event.
    pub key: Template,
    /// How long a key stays taken; `None`: for ever.
    pub hold: Option<Duration>,
}

/// One action of a rule, with the destination it delivers to.
#[derive(Debug)]
pub struct RuleAction {
    /// The compiled action.
    pub action: Action,
    /// The destination's name, or `rule#n` for an action with no destination: deliveries to
    /// one destination share its concurrency limit.
    pub destination: String,
    /// The time window it is sent in, if it has one (`active:`).
    pub active: Option<Active>,
}

/// An action's time window: outside it, a delivery waits for it to open, or is dropped.
#[derive(Debug, Clone)]
pub struct Active {
    /// The window.
    pub window: Arc<TimeWindow>,
    /// `outside: drop`: not sent at all.
    pub drop: bool,
    /// `outside: digest`: what comes outside it is sent as one digest when it opens.
    pub digest: bool,
}

impl Active {
    /// When a delivery of the action may go, at `now`: now inside the window; outside it,
    /// never (`drop`, or a window that does not open again) or when it opens.
    pub fn timing(&self, now: DateTime<Utc>) -> Timing {
        if self.window.contains(now) {
            return Timing::Now;
        }
        match self.window.next_open(now) {
            Some(at) if self.digest => Timing::Digest(at.timestamp_millis()),
            Some(at) if !self.drop => Timing::Hold(at.timestamp_millis()),
            _ => Timing::Drop,
        }
    }
}

/// Every rule of one configuration, in file order, with the index used to skip rules that
/// cannot match.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Shared with the configuration a reload replaced, for every rule written the same.
    rules: Vec<Arc<Rule>>,
    /// Let go once the set no longer serves ([`RuleSet::retire_index`]).
    index: arc_swap::ArcSwapOption<Index>,
    /// Rule positions in name order (names are unique), to find a rule by name without a
    /// second copy of every name.
    by_name: Vec<u32>,
    seen: Vec<Arc<SeenClause>>,
}

impl RuleSet {
    /// Builds the set (and its index) from rules in evaluation order.
    pub fn new(rules: Vec<Arc<Rule>>) -> Self {
        let index = Index::build(&rules);
        // As many rules as positions fit in `u32` (see `Index`).
        let mut by_name: Vec<u32> = (0..rules.len() as u32).collect();
        by_name.sort_by(|&a, &b| rules[a as usize].name.cmp(&rules[b as usize].name));
        // One record per scope, kept as long as the longest `within` that reads it.
        let mut seen: Vec<Arc<SeenClause>> = Vec::new();
        for clause in rules.iter().filter_map(|r| r.unless_seen.as_ref()) {
            match seen.iter_mut().find(|c| c.scope == clause.scope) {
                Some(kept) if kept.within < clause.within => *kept = clause.clone(),
                Some(_) => {}
                None => seen.push(clause.clone()),
            }
        }
        RuleSet {
            rules,
            index: Some(Arc::new(index)).into(),
            by_name,
            seen,
        }
    }

    /// Every distinct `unless_seen` clause: what each event of their types records.
    pub fn seen(&self) -> &[Arc<SeenClause>] {
        &self.seen
    }

    /// All rules in evaluation order, enabled or not.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// A rule by its name.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Rule>> {
        self.position(name).map(|i| &self.rules[i])
    }

    /// A rule's position by its name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|&i| self.rules[i as usize].name.as_str().cmp(name))
            .ok()
            .map(|at| self.by_name[at] as usize)
    }

    /// Lets go of the index: the set is kept only for the deliveries it matched (a
    /// configuration a reload replaced), which need its rules, not matching. Should it match
    /// again, every rule is a candidate.
    pub fn retire_index(&self) {
        self.index.store(None);
    }

    /// Positions of the rules that may match `event`, ascending.
    fn candidates(&self, event: &(impl EventView + ?Sized)) -> Vec<usize> {
        match &*self.index.load() {
            Some(index) => index.candidates(event),
            None => (0..self.rules.len()).collect(),
        }
    }

    /// A rule by its position.
    pub fn get(&self, i: usize) -> &Rule {
        &self.rules[i]
    }

    /// The positions of the rules that match `event`, in file order, honouring `stop`.
    pub fn matching(&self, event: &Value) -> Vec<usize> {
        let mut matched = Vec::new();
        for i in self.candidates(event) {
            let rule = &self.rules[i];
            if rule.when.holds(event) {
                matched.push(i);
                if rule.stop {
                    break;
                }
            }
        }
        matched
    }

    /// The rules that may match the event at intake, before the store is read (see
    /// [`Condition::at_intake`]): a superset of those that match once it is. A rule that
    /// matches for certain and has `stop` ends the list, as in matching; one that may match
    /// does not.
    pub fn matching_at_intake(
        &self,
        event: &(impl EventView + ?Sized),
        counting: bool,
    ) -> Vec<usize> {
        let mut matched = Vec::new();
        for i in self.candidates(event) {
            let rule = &self.rules[i];
            match rule.at_intake(event.value(), counting) {
                Maybe::Yes => {
                    matched.push(i);
                    if rule.stop {
                        break;
                    }
                }
                Maybe::Unknown => matched.push(i),
                Maybe::No => {}
            }
        }
        matched
    }

    /// Every rule with the verdict of each of its conditions, for `test --explain`.
    /// Evaluation order and `stop` are honoured: rules after a stopping match are `skipped`.
    pub fn explain(&self, event: &Value) -> Vec<(usize, Option<Verdict>)> {
        let mut stopped = false;
        self.rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                if stopped || !rule.enabled {
                    return (i, None);
                }
                let verdict = rule.when.explain(event);
                stopped = verdict.holds && rule.stop;
                (i, Some(verdict))
            })
            .collect()
    }
}
