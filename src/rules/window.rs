//! `window` conditions (a count or a rate of events per key over a rolling period) and `fire`
//! (edge-triggered rules). The counting is rule memory's (see `memory`); a window here is what
//! to count and what to compare it with.

use super::Condition;
use crate::template::Template;
use std::time::Duration;

/// How far ahead of the router's clock an event's time may be counted: a sender's clock a
/// little ahead does not push its events out of the window.
pub const FUTURE_SLACK: Duration = Duration::from_secs(5 * 60);

/// A window of a rule: per key, over the last `over`.
#[derive(Debug)]
pub struct Window {
    /// What is counted per: a template over the canonical event.
    pub key: Template,
    /// How far back it counts.
    pub over: Duration,
    /// What it compares.
    pub test: WindowTest,
}

/// What a window compares.
#[derive(Debug)]
pub enum WindowTest {
    /// The events that match the rule's other conditions, this one included.
    Count(Vec<Bound>),
    /// `of` events over `per` events; no verdict below `min_per` of the latter.
    Rate {
        /// The events above the line.
        of: Box<Condition>,
        /// The events below it.
        per: Box<Condition>,
        /// The fewest `per` events for the rate to mean anything.
        min_per: u64,
        /// The comparison.
        bounds: Vec<Bound>,
    },
}

/// One bound of a comparison; every bound of a window must hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// greater than
    Gt(f64),
    /// greater than or equal
    Gte(f64),
    /// less than
    Lt(f64),
    /// less than or equal
    Lte(f64),
    /// equal
    Equals(f64),
}

impl Bound {
    /// Whether `value` is within the bound.
    pub fn holds(self, value: f64) -> bool {
        match self {
            Bound::Gt(n) => value > n,
            Bound::Gte(n) => value >= n,
            Bound::Lt(n) => value < n,
            Bound::Lte(n) => value <= n,
            Bound::Equals(n) => value == n,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Gt(n) => write!(f, "> {n}"),
            Bound::Gte(n) => write!(f, ">= {n}"),
            Bound::Lt(n) => write!(f, "< {n}"),
            Bound::Lte(n) => write!(f, "<= {n}"),
            Bound::Equals(n) => write!(f, "= {n}"),
        }
    }
}

/// `fire`: the rule fires when its `when` starts holding, again only after it stopped holding
/// (`rearm: below`), and not within `cooldown` of its last firing.
#[derive(Debug, Clone, Copy)]
pub struct Fire {
    /// The least time between two firings for one key.
    pub cooldown: Duration,
}

impl Window {
    /// The longest its state matters: marks are kept this long after their time.
    pub fn horizon(&self) -> Duration {
        self.over + FUTURE_SLACK
    }
}
