//! The dry run behind `test --explain` and the console's playground: an event through the
//! matcher, rule memory (every key starting empty, or a store's state read without changing
//! it) and the renderer, giving every rule's verdict per condition and stage and the exact
//! message each action would send. Nothing is sent or stored. Both callers print this one
//! [`Report`], so the console never disagrees with `test`.

use crate::config::Config;
use crate::memory::{Notes, Plan};
use crate::rules::Verdict as Holds;
use crate::silence::Silences;
use crate::store::Store;
use crate::store::memory::{Decider as _, Overlay, Verdict};
use crate::template::Data;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::sync::Arc;

/// What the router would make of one event.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The event as the store would keep it (with an open's count filled in).
    pub event: Value,
    /// Every rule, in file order.
    pub rules: Vec<RuleReport>,
    /// What each delivery of a matched rule would send.
    pub messages: Vec<MessageReport>,
}

/// One rule's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    /// The rule's name.
    pub name: String,
    /// `matched`, `not matched`, `disabled`, or `not evaluated` (an earlier rule stopped).
    pub state: &'static str,
    /// It matched and stops evaluation of the rules after it.
    pub stops: bool,
    /// Its conditions with their verdicts (none when not evaluated).
    pub conditions: Option<Condition>,
    /// What each stage of rule memory decided, and keys that did not render.
    pub notes: Vec<String>,
}

/// A condition's verdict, with its parts'.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    /// What was tested, in words.
    pub what: String,
    /// Whether it held.
    pub holds: bool,
    /// The parts' verdicts.
    pub parts: Vec<Condition>,
}

impl From<Holds> for Condition {
    fn from(v: Holds) -> Self {
        Condition {
            what: v.what,
            holds: v.holds,
            parts: v.parts.into_iter().map(Condition::from).collect(),
        }
    }
}

/// One action of a matched rule.
#[derive(Debug, Clone, Serialize)]
pub struct MessageReport {
    /// The rule's name.
    pub rule: String,
    /// The action's position in the rule, from 1.
    pub action: usize,
    /// `slack`, `email`, `http`, `log`.
    pub kind: &'static str,
    /// What would happen to it (sent, suppressed and why, held until when).
    pub outcome: String,
    /// The variables to set when its destination is not configured.
    pub unconfigured: Option<String>,
    /// The exact message (Slack JSON, email headers and bodies, HTTP request).
    pub message: Option<String>,
    /// Why it would fail to render.
    pub error: Option<String>,
}

/// Runs `event` (canonical, as a source normalised it) through `config` without sending or
/// storing anything; rule memory and silences are read from `store` when given.
pub async fn run(
    config: &Arc<Config>,
    event: Value,
    store: Option<&Store>,
) -> Result<Report, String> {
    let silences = Silences::default();
    if let Some(store) = store {
        silences.refresh(store).await.map_err(|e| e.to_string())?;
    }
    let now = chrono::Utc::now();
    let data = Data::from(event);
    let plan = Plan::new(config, &data, now, &silences);
    let (verdicts, event, contexts, notes) = match &plan.memory {
        None => (
            Verdict::plain(&plan.deliveries),
            data.value().clone(),
            Vec::new(),
            Vec::new(),
        ),
        Some(memory) => {
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
            (
                decision.verdicts,
                event,
                decision.contexts,
                notes.into_vec(),
            )
        }
    };
    // Each matched rule's deliveries among the event's.
    let mut ranges = std::collections::HashMap::new();
    let mut at = 0;
    for &i in &plan.matched {
        let n = config.rules.get(i).actions.len();
        ranges.insert(i, at..at + n);
        at += n;
    }
    let really_matched = |i: usize| {
        ranges.get(&i).is_some_and(|r: &std::ops::Range<usize>| {
            verdicts[r.clone()].iter().any(|v| *v != Verdict::Unmatched)
        })
    };
    // The conditions read the event as the store would keep it (an open's count filled).
    let mut rules = Vec::new();
    for (i, verdict) in config.rules.explain(&event) {
        let rule = config.rules.get(i);
        let matched = really_matched(i);
        let state = match (&verdict, rule.enabled, matched) {
            (_, false, _) => "disabled",
            (None, true, _) => "not evaluated",
            (Some(_), true, true) => "matched",
            (Some(_), true, false) => "not matched",
        };
        let mut rule_notes = Vec::new();
        for m in plan.missing.iter().filter(|m| m.rule == rule.name) {
            let why = m.error.as_deref().unwrap_or("it renders empty");
            rule_notes.push(format!(
                "a key does not render ({why}): the event goes through undecided"
            ));
        }
        rule_notes.extend(
            notes
                .iter()
                .filter(|(r, _)| *r == i)
                .map(|(_, n)| n.clone()),
        );
        rules.push(RuleReport {
            name: rule.name.clone(),
            state,
            stops: matched && rule.stop,
            conditions: verdict.map(Condition::from),
            notes: rule_notes,
        });
    }
    let mut messages = Vec::new();
    for &i in plan.matched.iter().filter(|&&i| really_matched(i)) {
        let rule = config.rules.get(i);
        for (n, step) in rule.actions.iter().enumerate() {
            let at = ranges[&i].start + n;
            let action = &step.action;
            let mut for_delivery = event.clone();
            let context = contexts.iter().find(|(d, _)| *d == at);
            if let Some(context) = context.and_then(|(_, c)| serde_json::from_str(c).ok()) {
                crate::event::merge(&mut for_delivery, context);
            }
            // Folded into a digest: shown as the digest of this event alone would be.
            if verdicts[at] == Verdict::Suppressed("digest") {
                let digest = alone_in_digest(&rule.name, &event);
                crate::event::merge(&mut for_delivery, digest);
            }
            let (message, error) = match action.render(&for_delivery, &config.templates) {
                Ok(m) => (Some(m.describe().trim_end().to_string()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            messages.push(MessageReport {
                rule: rule.name.clone(),
                action: n + 1,
                kind: action.kind(),
                outcome: outcome(verdicts[at]),
                unconfigured: action.unconfigured().map(str::to_string),
                message,
                error,
            });
        }
    }
    Ok(Report {
        event,
        rules,
        messages,
    })
}

/// What a digest's templates would see were `event` alone in it.
fn alone_in_digest(rule: &str, event: &serde_json::Value) -> serde_json::Value {
    let now = crate::store::now_ms();
    let (kind, _) = crate::event::event_type(event);
    let contents = crate::store::digests::DigestContents {
        rule: rule.to_string(),
        scope: String::new(),
        key: String::new(),
        opened_at: now,
        closed_at: now,
        reason: "window".into(),
        list: 1,
        items: vec![crate::store::digests::DigestItemRow {
            seq: 1,
            event_id: event["event_id"].as_str().unwrap_or_default().to_string(),
            event_type: kind.to_string(),
            lead_email: event["lead"]["email"].as_str().map(str::to_string),
            payload: Some(event.to_string()),
        }],
    };
    crate::delivery::digests::context(&contents)
}

/// A delivery's verdict, for people.
pub fn outcome(verdict: Verdict) -> String {
    match verdict {
        Verdict::Suppressed("digest") => {
            "would join its digest, sent when the digest closes (shown as a digest of this event alone)".into()
        }
        Verdict::Send => "would be sent".into(),
        Verdict::Suppressed(reason) => format!("would be kept suppressed ({reason})"),
        Verdict::Held(at) => format!(
            "would be held until {} (outside its time window)",
            chrono::DateTime::from_timestamp_millis(at).unwrap_or_default()
        ),
        Verdict::Unmatched => "no delivery (the rule does not match)".into(),
    }
}

impl Report {
    /// The event in a few lines: type, campaign, lead.
    pub fn describe_event(&self) -> String {
        let e = &self.event;
        let s = |v: &Value| match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        format!(
            "Event: {} (sent as {}) at {}\nCampaign: {} ({})\nLead: {} <{}>\n",
            s(&e["event"]),
            s(&e["source_event"]),
            s(&e["timestamp"]),
            s(&e["campaign"]["name"]),
            s(&e["campaign"]["id"]),
            s(&e["lead"]["name"]),
            s(&e["lead"]["email"]),
        )
    }

    /// The report as `test` prints it; with `explain`, every rule's conditions and stages.
    pub fn to_text(&self, explain: bool) -> String {
        let mut out = self.describe_event();
        if explain {
            out.push_str("\nRules:\n");
            for rule in &self.rules {
                match rule.state {
                    "disabled" => {
                        let _ = writeln!(out, "  - {} (disabled)", rule.name);
                        continue;
                    }
                    "not evaluated" => {
                        let _ = writeln!(
                            out,
                            "  - {} (not evaluated: an earlier rule stopped evaluation)",
                            rule.name
                        );
                        continue;
                    }
                    _ => {}
                }
                let mark = if rule.state == "matched" {
                    "✓"
                } else {
                    "✗"
                };
                let stop = if rule.stops { ", stop" } else { "" };
                let _ = writeln!(out, "  {mark} {}{stop}", rule.name);
                if let Some(c) = &rule.conditions {
                    write_condition(&mut out, c, 2);
                }
                for note in &rule.notes {
                    let _ = writeln!(out, "    {note}");
                }
            }
        }
        let matched: Vec<&RuleReport> =
            self.rules.iter().filter(|r| r.state == "matched").collect();
        let _ = writeln!(
            out,
            "\nMatched {} rule(s){}",
            matched.len(),
            if matched.is_empty() { "." } else { ":" }
        );
        let mut current = None;
        for m in &self.messages {
            if current != Some(&m.rule) {
                let _ = writeln!(out, "\n== rule {} ==", m.rule);
                current = Some(&m.rule);
            }
            let _ = writeln!(
                out,
                "\n-- action {} ({}): {} --",
                m.action, m.kind, m.outcome
            );
            if let Some(vars) = &m.unconfigured {
                let _ = writeln!(
                    out,
                    "(would be skipped: the destination is not configured; set {vars})"
                );
            }
            match (&m.message, &m.error) {
                (Some(message), _) => {
                    let _ = writeln!(out, "{message}");
                }
                (None, Some(e)) => {
                    let _ = writeln!(out, "(would fail: {e})");
                }
                (None, None) => {}
            }
        }
        out.push_str("\nNothing was sent (dry run).\n");
        out
    }
}

fn write_condition(out: &mut String, c: &Condition, depth: usize) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(out, "{pad}{} {}", if c.holds { "✓" } else { "✗" }, c.what);
    for p in &c.parts {
        write_condition(out, p, depth + 1);
    }
}
