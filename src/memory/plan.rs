//! What intake makes of an event before the store sees it: the rules it may match, one
//! delivery per action of each (silenced or timed by intake), and what it asks of memory.
//! Shared by the webhook intake and `test --explain`.

use super::{EventMemory, MissingKey, open_to_count};
use crate::config::Config;
use crate::silence::Silences;
use crate::store::{NewDelivery, Timing};
use crate::template::Data;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// An event's plan.
#[derive(Debug)]
pub struct Plan {
    /// The rules it may match (memory may find some do not), in order.
    pub matched: Vec<usize>,
    /// One per action of each matched rule, in order.
    pub deliveries: Vec<NewDelivery>,
    /// What it asks of memory, if anything.
    pub memory: Option<EventMemory>,
    /// The rules whose key rendered empty for it.
    pub missing: Vec<MissingKey>,
}

impl Plan {
    /// Plans `event` under `config` at `now`, with the silences in force.
    pub fn new(
        config: &Arc<Config>,
        event: &Data,
        now: DateTime<Utc>,
        silences: &Silences,
    ) -> Plan {
        // An open without a count gets the router's own count of the lead's opens in the
        // transaction that stores it, and windows are counted there: until then, rules that
        // read `open.count` or a window may match or not.
        let counts_opens = open_to_count(event).is_some();
        let matched = config.rules.matching_at_intake(event, counts_opens);
        let silencing = silences.any();
        let deliveries = matched
            .iter()
            .flat_map(|&i| {
                let rule = config.rules.get(i);
                let silenced = silencing && silences.matching(event.value(), &rule.name).is_some();
                rule.actions
                    .iter()
                    .enumerate()
                    .map(move |(n, step)| NewDelivery {
                        rule: rule.name.clone(),
                        action_index: n as u32,
                        action_kind: step.action.kind().to_string(),
                        destination: step.destination.clone(),
                        timing: step.active.as_ref().map_or(Timing::Now, |a| a.timing(now)),
                        silenced,
                    })
            })
            .collect::<Vec<NewDelivery>>();
        let mut missing = Vec::new();
        let memory = EventMemory::for_event(config, &matched, &deliveries, event, &mut missing);
        Plan {
            matched,
            deliveries,
            memory,
            missing,
        }
    }

    /// Whether its deliveries must go through the store before they are sent: memory decides
    /// them or their content (an open's count), or intake held back one of them.
    pub fn through_store(&self) -> bool {
        self.memory
            .as_ref()
            .is_some_and(EventMemory::decides_content)
            || self
                .deliveries
                .iter()
                .any(|d| d.timing != Timing::Now || d.silenced)
    }
}
