//! The memory a rule keeps across events, as written: `once`, `unless_seen`, `throttle`,
//! `window` and `fire`, each with its key (a template that names a field, probed against every
//! source's sample event) and durations of at least a second.

use super::probe;
use super::rules::{Compiled, Env};
use crate::rules::{
    Bound, Fire, Once, RawFire, RawOnce, RawThrottle, RawUnlessSeen, RawWindow, SeenClause,
    Throttle, Window, WindowTest, condition,
};
use crate::syntax::{Pos, Spanned, pos};
use crate::template::{Escape, Template};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Compiles `once:`: its key (a template that names a field) and how long a key stays taken.
pub(super) fn compile_once(
    path: &Path,
    rule: &str,
    raw: &Spanned<RawOnce>,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Option<Once> {
    let o = &raw.value;
    let key = compile_key(path, rule, "once.key", &o.key, env, out);
    let forever = o.forever.as_ref().is_some_and(|f| f.value);
    let hold = match (&o.hold, forever) {
        (Some(h), true) => {
            let message = format!("rule {rule:?}: give `once.for` or `forever: true`, not both");
            env.errors.at(path, pos(h), message);
            None
        }
        (Some(h), false) => duration(path, rule, "once.for", h, env),
        (None, true) => None,
        (None, false) => {
            let message = format!(
                "rule {rule:?}: `once` needs `for` (how long a key stays taken, like 14d) or `forever: true`"
            );
            env.errors.at(path, pos(raw), message);
            return None;
        }
    };
    Some(Once { key: key?, hold })
}

/// Compiles `unless_seen`: the event types, the key that means "the same", how far back. Its
/// scope is a digest of the first two: rules that record the same share it.
pub(super) fn compile_unless_seen(
    path: &Path,
    rule: &str,
    raw: &Spanned<RawUnlessSeen>,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Option<Arc<SeenClause>> {
    let u = &raw.value;
    let events = u.event.value.clone().into_vec();
    if events.is_empty() {
        let message = format!("rule {rule:?}: `unless_seen.event` lists no event type");
        env.errors.at(path, pos(&u.event), message);
    }
    let same = compile_key(path, rule, "unless_seen.same", &u.same, env, out);
    let within = duration(path, rule, "unless_seen.within", &u.within, env)?;
    // The scope is what is recorded (the events, sorted, and the key), not how far back a rule
    // looks: editing `within` keeps what was seen.
    let mut sorted = events.clone();
    sorted.sort();
    sorted.dedup();
    let digest = crate::event::sha256_hex(
        format!("{}\u{1f}{}", sorted.join(","), u.same.value.trim()).as_bytes(),
    );
    Some(Arc::new(SeenClause {
        scope: format!("seen:{}", &digest[..16]),
        events,
        same: same?,
        within,
    }))
}

/// Compiles `throttle`: its key, limit (at least 1), window length and kind.
pub(super) fn compile_throttle(
    path: &Path,
    rule: &str,
    raw: &Spanned<RawThrottle>,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Option<Throttle> {
    let t = &raw.value;
    let key = compile_key(path, rule, "throttle.key", &t.key, env, out);
    if t.limit.value == 0 {
        let message = format!("rule {rule:?}: `throttle.limit` must be at least 1");
        env.errors.at(path, pos(&t.limit), message);
    }
    let per = duration(path, rule, "throttle.per", &t.per, env);
    let rolling = match t.window.as_ref().map(|w| w.value.trim()) {
        None | Some("fixed") => false,
        Some("rolling") => true,
        Some(other) => {
            let message =
                format!("rule {rule:?}: `throttle.window` is `fixed` or `rolling`, not {other:?}");
            env.errors.at(path, pos(t.window.as_ref()?), message);
            false
        }
    };
    let digest = match t.over_limit.as_ref().map(|o| o.value.trim()) {
        None | Some("suppress") => false,
        Some("digest") => true,
        Some(other) => {
            let message = format!(
                "rule {rule:?}: `throttle.over_limit` is `suppress` (not sent) or `digest` (sent as one digest when the window reopens), not {other:?}"
            );
            env.errors.at(path, pos(t.over_limit.as_ref()?), message);
            false
        }
    };
    Some(Throttle {
        key: key?,
        limit: t.limit.value.max(1),
        per: per?,
        rolling,
        digest,
    })
}

/// A duration of at least one second (`30d`, `10m`).
pub(super) fn duration(
    path: &Path,
    rule: &str,
    what: &str,
    raw: &Spanned<String>,
    env: &mut Env<'_>,
) -> Option<Duration> {
    match humantime::parse_duration(raw.value.trim()) {
        Ok(d) if d >= Duration::from_secs(1) => Some(d),
        Ok(_) => {
            let message = format!("rule {rule:?}: `{what}` must be at least 1s");
            env.errors.at(path, pos(raw), message);
            None
        }
        Err(_) => {
            let message = format!(
                "rule {rule:?}: `{what}` {:?} is not a duration like 14d or 12h",
                raw.value
            );
            env.errors.at(path, pos(raw), message);
            None
        }
    }
}

/// Compiles a key (`once.key`, …): a template that names at least one field, probed against
/// every source's sample event; a warning when it may render empty (a key that renders empty
/// lets its event through undecided).
pub(super) fn compile_key(
    path: &Path,
    rule: &str,
    what: &str,
    raw: &Spanned<String>,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Option<Template> {
    if !raw.value.contains("{{") {
        let message = format!(
            "rule {rule:?}: `{what}` {:?} names no field, so every event would share one key; write what it is per, like \"{{{{lead.email}}}}\"",
            raw.value
        );
        env.errors.at(path, pos(raw), message);
        return None;
    }
    let site = format!("rule {rule:?} {what}");
    let template = match env.templates.inline(&site, &raw.value, Escape::Plain) {
        Ok(t) => t,
        Err(e) => {
            let message = format!("rule {rule:?}: `{what}` does not compile: {}", e.message);
            env.errors.at(path, pos(raw), message);
            return None;
        }
    };
    match probe::key(&template, env.templates, env.sources) {
        Err(message) => {
            env.errors.at(
                path,
                pos(raw),
                format!("rule {rule:?}: `{what}`: {message}"),
            );
            return None;
        }
        Ok(sample) if !sample.chars().any(char::is_alphanumeric) => {
            let message = format!(
                "rule {rule:?}: `{what}` renders {sample:?} when the fields it names are missing: such events are let through undecided (counted in switchboard_noise_key_missing_total)"
            );
            out.warnings.at(path, pos(raw), message);
        }
        Ok(_) => {}
    }
    Some(template)
}

/// Compiles a `window` of a rule's `when`: its key, its period, and a count or a rate (whose
/// `of` and `per` are conditions of their own).
pub(super) fn compile_window(
    path: &Path,
    rule: &str,
    raw: &Spanned<RawWindow>,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Option<Window> {
    let w = &raw.value;
    let key = compile_key(path, rule, "window.key", &w.key, env, out);
    let over = duration(path, rule, "window.over", &w.over, env);
    let test = match (&w.count, &w.rate) {
        (Some(count), None) => {
            let c = &count.value;
            let bounds = bounds([&c.gt, &c.gte, &c.lt, &c.lte, &c.equals]);
            if bounds.is_empty() {
                no_bounds(path, rule, "window.count", pos(count), env);
            }
            Some(WindowTest::Count(bounds))
        }
        (None, Some(rate)) => {
            let r = &rate.value;
            let mut error = |at: Pos, m: String| {
                env.errors
                    .at(path, at, format!("rule {rule:?}: window rate: {m}"));
            };
            let of = condition::compile_plain(&r.of, &mut error);
            let per = condition::compile_plain(&r.per, &mut error);
            let bounds = bounds([&r.gt, &r.gte, &r.lt, &r.lte, &r.equals]);
            if bounds.is_empty() {
                no_bounds(path, rule, "window.rate", pos(rate), env);
            }
            let min_per = r.min_per.as_ref().map_or(1, |m| m.value.max(1));
            Some(WindowTest::Rate {
                of: Box::new(of),
                per: Box::new(per),
                min_per,
                bounds,
            })
        }
        (Some(_), Some(rate)) => {
            let message = format!("rule {rule:?}: a `window` has `count` or `rate`, not both");
            env.errors.at(path, pos(rate), message);
            None
        }
        (None, None) => {
            let message = format!(
                "rule {rule:?}: `window` needs `count` (like {{ gt: 20 }}) or `rate` (with `of` and `per`)"
            );
            env.errors.at(path, pos(raw), message);
            None
        }
    };
    Some(Window {
        key: key?,
        over: over?,
        test: test?,
    })
}

/// The bounds given, of `gt`, `gte`, `lt`, `lte`, `equals` in that order.
fn bounds(given: [&Option<Spanned<f64>>; 5]) -> Vec<Bound> {
    let make = [Bound::Gt, Bound::Gte, Bound::Lt, Bound::Lte, Bound::Equals];
    given
        .iter()
        .zip(make)
        .filter_map(|(value, make)| value.as_ref().map(|v| make(v.value)))
        .collect()
}

fn no_bounds(path: &Path, rule: &str, what: &str, at: Pos, env: &mut Env<'_>) {
    let message = format!("rule {rule:?}: `{what}` needs a comparison: gt, gte, lt, lte or equals");
    env.errors.at(path, at, message);
}

/// Compiles `fire`, which only a rule with a `window` can have.
pub(super) fn compile_fire(
    path: &Path,
    rule: &str,
    raw: &Spanned<RawFire>,
    has_window: bool,
    env: &mut Env<'_>,
) -> Option<Fire> {
    let f = &raw.value;
    if !has_window {
        let message = format!(
            "rule {rule:?}: `fire` needs a `window` in the rule's `when` (without one the rule holds for each event on its own)"
        );
        env.errors.at(path, pos(raw), message);
    }
    if let Some(rearm) = &f.rearm
        && rearm.value.trim() != "below"
    {
        let message = format!(
            "rule {rule:?}: `fire.rearm` is `below` (fire again once the window stopped holding), not {:?}",
            rearm.value
        );
        env.errors.at(path, pos(rearm), message);
    }
    let cooldown = match &f.cooldown {
        Some(c) => duration(path, rule, "fire.cooldown", c, env)?,
        None => Duration::ZERO,
    };
    Some(Fire { cooldown })
}
