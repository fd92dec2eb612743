//! The rule index: rules filed under the event types and campaign ids their top-level
//! conditions require, so that matching skips rules that cannot match an event.

use super::{Condition, Rule};
use crate::event;
use serde_json::Value;
use std::collections::HashMap;

type Key = (Option<String>, Option<i64>);

/// Rule positions filed by (event type, campaign id); `None` means "any".
#[derive(Debug, Default)]
pub(super) struct Index {
    buckets: HashMap<Key, Vec<usize>>,
}

impl Index {
    pub(super) fn build(rules: &[Rule]) -> Self {
        let mut buckets: HashMap<Key, Vec<usize>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            let events = required(&rule.when, |c| match c {
                Condition::Event(names) => Some(names.iter().cloned().map(Some).collect()),
                _ => None,
            });
            let campaigns = required(&rule.when, |c| match c {
                Condition::CampaignId(ids) => Some(ids.iter().copied().map(Some).collect()),
                _ => None,
            });
            for e in &events {
                for c in &campaigns {
                    buckets.entry((e.clone(), *c)).or_default().push(i);
                }
            }
        }
        Index { buckets }
    }

    /// Positions of the rules that may match `event`, ascending, without repeats.
    pub(super) fn candidates(&self, event: &Value) -> Vec<usize> {
        let (canonical, sent) = event::event_type(event);
        let campaign = event::campaign_id(event);
        let mut types = vec![Some(canonical.to_string()), None];
        if sent != canonical {
            types.push(Some(sent.to_string()));
        }
        let mut found = Vec::new();
        for t in types {
            if campaign.is_some()
                && let Some(list) = self.buckets.get(&(t.clone(), campaign))
            {
                found.extend_from_slice(list);
            }
            if let Some(list) = self.buckets.get(&(t, None)) {
                found.extend_from_slice(list);
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

/// The values a condition requires at its top level (through `all`), or `[None]` for "any".
fn required<T: Clone>(
    cond: &Condition,
    pick: impl Fn(&Condition) -> Option<Vec<Option<T>>> + Copy,
) -> Vec<Option<T>> {
    if let Some(values) = pick(cond) {
        return values;
    }
    if let Condition::All(parts) = cond
        && let Some(values) = parts.iter().find_map(pick)
    {
        return values;
    }
    vec![None]
}
