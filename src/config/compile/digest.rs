//! `digest:` as written: its key (probed like every key), a `window` or a `schedule` (a cron
//! pattern with seconds optional, read in an IANA zone), `max_events`, `list` and `first`; and,
//! once the rule's actions are compiled, whether each renders a digest of `list` events (a
//! Slack one within Slack's 50 blocks).

use super::memory::{compile_key, duration};
use super::rules::{Compiled, Env};
use crate::actions::Action;
use crate::rules::digest::{Close, DEFAULT_LIST, DEFAULT_MAX_EVENTS, Digest, Schedule};
use crate::rules::{RawDigest, RuleAction};
use crate::syntax::{Spanned, pos};
use crate::template::Data;
use serde_json::{Value, json};
use std::path::Path;

/// Compiles `digest:`.
pub(super) fn compile_digest(
    path: &Path,
    rule: &str,
    raw: &Spanned<RawDigest>,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Option<Digest> {
    let d = &raw.value;
    let key = compile_key(path, rule, "digest.key", &d.key, env, out);
    let close = match (&d.window, &d.schedule) {
        (Some(w), None) => duration(path, rule, "digest.window", w, env).map(Close::Window),
        (None, Some(s)) => schedule(path, rule, s, env).map(|s| Close::Schedule(s.into())),
        (Some(_), Some(s)) => {
            let message =
                format!("rule {rule:?}: a digest has a `window` or a `schedule`, not both");
            env.errors.at(path, pos(s), message);
            None
        }
        (None, None) => {
            let message = format!(
                "rule {rule:?}: `digest` needs `window` (like 1h, from its first event) or `schedule` (like {{ cron: \"0 9 * * mon-fri\", location: America/New_York }})"
            );
            env.errors.at(path, pos(raw), message);
            None
        }
    };
    let max_events = match &d.max_events {
        Some(m) if m.value == 0 => {
            let message = format!("rule {rule:?}: `digest.max_events` must be at least 1");
            env.errors.at(path, pos(m), message);
            None
        }
        Some(m) => Some(m.value),
        None => Some(DEFAULT_MAX_EVENTS),
    };
    let list = d.list.as_ref().map_or(DEFAULT_LIST, |l| l.value);
    let immediate = match d.first.as_ref().map(|f| f.value.trim()) {
        None | Some("wait") => false,
        Some("immediate") => true,
        Some(other) => {
            let message = format!(
                "rule {rule:?}: `digest.first` is `wait` (the first event waits for the digest) or `immediate` (it also goes on its own), not {other:?}"
            );
            env.errors.at(path, pos(d.first.as_ref()?), message);
            return None;
        }
    };
    Some(Digest {
        key: key?,
        close: close?,
        max_events: max_events?,
        list,
        immediate,
    })
}

/// A `schedule`: its cron pattern and zone.
fn schedule(
    path: &Path,
    rule: &str,
    raw: &Spanned<crate::rules::RawSchedule>,
    env: &mut Env<'_>,
) -> Option<Schedule> {
    let s = &raw.value;
    let zone = match &s.location {
        None => chrono_tz::Tz::UTC,
        Some(l) => match l.value.trim().parse::<chrono_tz::Tz>() {
            Ok(zone) => zone,
            Err(_) => {
                let message = format!(
                    "rule {rule:?}: `digest.schedule.location` {:?} is not an IANA time zone (like Europe/Berlin or America/New_York)",
                    l.value
                );
                env.errors.at(path, pos(l), message);
                return None;
            }
        },
    };
    let text = s.cron.value.trim().to_string();
    let fields = text.split_whitespace().count();
    let parsed = match fields {
        5 | 6 => text.parse::<croner::Cron>().map_err(|e| e.to_string()),
        n => Err(format!(
            "it has {n} fields; write five (minute hour day-of-month month day-of-week) or six with seconds first"
        )),
    };
    let cron = match parsed {
        Ok(cron) => cron,
        Err(e) => {
            let message = format!(
                "rule {rule:?}: `digest.schedule.cron` {:?} is not a cron pattern: {e}",
                s.cron.value
            );
            env.errors.at(path, pos(&s.cron), message);
            return None;
        }
    };
    let schedule = Schedule { text, cron, zone };
    if schedule.next_after(crate::store::now_ms()).is_none() {
        let message = format!(
            "rule {rule:?}: `digest.schedule.cron` {:?} never comes again",
            s.cron.value
        );
        env.errors.at(path, pos(&s.cron), message);
        return None;
    }
    Some(schedule)
}

/// What a digest listing `n` copies of `sample` adds to it, as its templates see it: one more
/// event than it lists (a digest that is cut is the one with the most to show).
pub fn sample_context(sample: &Value, n: u32, key: &str) -> Value {
    let events: Vec<Value> = (0..n).map(|_| sample.clone()).collect();
    let count = n + 1;
    let mut by_event = crate::rules::digest::by_event_zeroed();
    by_event.insert("EMAIL_OPENED".into(), Value::from(count));
    json!({
        "events": events,
        "digest": {
            "count": count,
            "truncated": 1,
            "listed": n,
            "by_event": by_event,
            "leads": 1,
            "lead_emails": [sample["lead"]["email"].clone()],
            "key": key,
            "rule": "",
            "opened_at": "2026-01-01T09:00:00Z",
            "closed_at": "2026-01-01T10:00:00Z",
            "reason": "window",
        }
    })
}

/// Renders `action` against a digest listing `list` of each source's sample event: how many
/// Slack blocks it needs at most (0 for other channels), or the first failure (a field under
/// `raw` is the tool's own, as for the plain probe).
fn render_digest(
    action: &Action,
    list: u32,
    templates: &crate::template::Templates,
    sources: &crate::event::Sources,
) -> Result<usize, crate::actions::RenderFailure> {
    let mut most = 0;
    for source in sources.iter() {
        let mut sample = source.sample().into_value();
        let context = sample_context(&sample, list, "sample");
        crate::event::merge(&mut sample, context);
        let data = Data::from(sample);
        let rendered = match action {
            Action::Slack(s) => s.blocks_needed(&data, templates),
            other => other.render_data(&data, templates).map(|_| 0),
        };
        match rendered {
            Err(crate::actions::RenderFailure::Template(e))
                if e.missing.as_deref().is_some_and(|p| {
                    p == "raw" || p.starts_with("raw.") || p.contains(".raw.")
                }) => {}
            Err(e) => return Err(e),
            Ok(blocks) => most = most.max(blocks),
        }
    }
    Ok(most)
}

/// Renders a digest rule's actions against a digest of `list` sample events: a template error
/// is reported as the plain probe does, and a Slack message that needs more than Slack's 50
/// blocks is refused at the `list` it comes from.
pub(super) fn probe_actions(
    path: &Path,
    rule: &str,
    raw: &Spanned<RawDigest>,
    digest: &Digest,
    actions: &[RuleAction],
    env: &mut Env<'_>,
) {
    let at = raw.value.list.as_ref().map_or(pos(raw), pos);
    let max = crate::actions::slack::MAX_BLOCKS;
    for (i, a) in actions.iter().enumerate() {
        match render_digest(&a.action, digest.list, env.templates, env.sources) {
            Err(e) => {
                let message = format!(
                    "rule {rule:?} action {}: does not render a digest: {e}",
                    i + 1
                );
                env.errors.at(path, pos(raw), message);
            }
            Ok(blocks) if blocks > max => {
                let message = format!(
                    "rule {rule:?} action {}: a digest listing {} events renders {blocks} Slack blocks, past Slack's limit of {max}; lower `digest.list` or list fewer blocks per event",
                    i + 1,
                    digest.list,
                );
                env.errors.at(path, at, message);
            }
            Ok(_) => {}
        }
    }
}

/// Renders an action that is also sent a digest (`over_limit: digest`, `outside: digest`)
/// against one of sample events: its templates serve both messages (`{{#if digest}}`). `what`
/// names the setting, written at `at`.
pub(super) fn probe_also_digest(
    path: &Path,
    at: crate::syntax::Pos,
    rule: &str,
    what: &str,
    (i, action): (usize, &Action),
    env: &mut Env<'_>,
) {
    let max = crate::actions::slack::MAX_BLOCKS;
    match render_digest(action, DEFAULT_LIST, env.templates, env.sources) {
        Err(e) => {
            let message = format!(
                "rule {rule:?} action {}: `{what}` sends it a digest, which it does not render: {e}",
                i + 1
            );
            env.errors.at(path, at, message);
        }
        Ok(blocks) if blocks > max => {
            let message = format!(
                "rule {rule:?} action {}: `{what}` sends it a digest listing {DEFAULT_LIST} events, which renders {blocks} Slack blocks, past Slack's limit of {max}; list fewer blocks per event",
                i + 1
            );
            env.errors.at(path, at, message);
        }
        Ok(_) => {}
    }
}
