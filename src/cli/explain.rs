//! `test`'s dry run of what the store would decide: rule memory stage by stage, every key
//! starting empty, or with the state of a store read without changing it (`--store`), and the
//! silences in force there.

use crate::config::Config;
use crate::memory::{Notes, Plan};
use crate::silence::Silences;
use crate::store::Store;
use crate::store::memory::{Decider as _, Overlay, Verdict};
use crate::template::Data;
use serde_json::Value;
use std::sync::Arc;

/// What the store would make of an event.
pub(super) struct DryRun {
    /// What intake made of it.
    pub plan: Plan,
    /// One per delivery of the plan.
    pub verdicts: Vec<Verdict>,
    /// The event as the store would keep it (with an open's count filled in).
    pub event: Value,
    /// What memory adds to each delivery's event, by position.
    pub contexts: Vec<(usize, String)>,
    /// What each stage decided, by rule position.
    pub notes: Vec<(usize, String)>,
}

impl DryRun {
    /// The event a delivery's message is rendered from.
    pub fn event_for(&self, delivery: usize) -> Value {
        let mut event = self.event.clone();
        let context = self.contexts.iter().find(|(i, _)| *i == delivery);
        if let Some(context) = context.and_then(|(_, c)| serde_json::from_str(c).ok()) {
            crate::event::merge(&mut event, context);
        }
        event
    }
}

/// Runs `event` through intake and rule memory without storing anything.
pub(super) async fn dry_run(
    config: &Arc<Config>,
    event: Value,
    store: Option<&Store>,
) -> Result<DryRun, String> {
    let silences = Silences::default();
    if let Some(store) = store {
        silences.refresh(store).await.map_err(|e| e.to_string())?;
    }
    let now = chrono::Utc::now();
    let data = Data::from(event);
    let plan = Plan::new(config, &data, now, &silences);
    let Some(memory) = &plan.memory else {
        return Ok(DryRun {
            verdicts: Verdict::plain(&plan.deliveries),
            event: data.value().clone(),
            contexts: Vec::new(),
            notes: Vec::new(),
            plan,
        });
    };
    let now = now.timestamp_millis();
    let needs = memory.needs(now);
    let view = match store {
        Some(store) => store.peek(&needs, now).await.map_err(|e| e.to_string())?,
        None => Overlay::new(now, Default::default(), Default::default()),
    };
    let mut notes = Notes::kept();
    let decision = memory.run(now, &plan.deliveries, &view, &mut notes);
    let event = match &decision.payload {
        Some(stored) => serde_json::from_str(stored).map_err(|e| e.to_string())?,
        None => data.value().clone(),
    };
    Ok(DryRun {
        verdicts: decision.verdicts,
        event,
        contexts: decision.contexts,
        notes: notes.into_vec(),
        plan,
    })
}

/// A delivery's verdict, for people.
pub(super) fn outcome(verdict: Verdict) -> String {
    match verdict {
        Verdict::Send => "would be sent".into(),
        Verdict::Suppressed(reason) => format!("would be kept suppressed ({reason})"),
        Verdict::Held(at) => format!(
            "would be held until {} (outside its time window)",
            chrono::DateTime::from_timestamp_millis(at).unwrap_or_default()
        ),
        Verdict::Unmatched => "no delivery (the rule does not match)".into(),
    }
}
