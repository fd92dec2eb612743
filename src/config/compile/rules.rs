//! `rules:`: each rule's name, its `when` (compiled by the rules), and its actions (compiled by
//! their channel, with settings they leave out taken from their destination), every action
//! probed against each source's sample event.

use super::destinations::{self, Declared};
use super::probe;
use crate::actions::{Ctx, RawAction, Unconfigured};
use crate::config::raw::{RawFile, RawRule};
use crate::diagnostic::Diagnostics;
use crate::event::Sources;
use crate::rules::{Condition, Rule, RuleAction, condition};
use crate::rules::{Once, RawOnce, RawThrottle, RawUnlessSeen, SeenClause, Throttle};
use crate::syntax::{Spanned, pos};
use crate::template::Templates;
use crate::template::{Escape, Template};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The rules of every file, in order, and what compiling them found out.
pub(super) struct Compiled {
    /// The rules, in evaluation order.
    pub(super) rules: Vec<Rule>,
    /// The destinations some action uses.
    pub(super) used: HashSet<String>,
    /// The destinations and actions whose address came out empty.
    pub(super) unconfigured: Unconfigured,
    /// Problems that do not stop the rules from serving (a key that may render empty, …).
    pub(super) warnings: Diagnostics,
}

/// What every rule is compiled against.
pub(super) struct Env<'a> {
    pub(super) destinations: &'a HashMap<String, Declared>,
    pub(super) templates: &'a mut Templates,
    pub(super) sources: &'a Sources,
    pub(super) errors: &'a mut Diagnostics,
}

/// Compiles every rule of every file; a rule name used twice is an error.
pub(super) fn compile(files: &[(PathBuf, String, RawFile)], env: &mut Env<'_>) -> Compiled {
    let mut out = Compiled {
        rules: Vec::new(),
        used: HashSet::new(),
        unconfigured: Unconfigured::new(),
        warnings: Diagnostics::default(),
    };
    let mut names: HashMap<String, (PathBuf, u32)> = HashMap::new();
    for (path, _, file) in files {
        for raw in &file.rules {
            let rule = &raw.value;
            let name = rule.name.value.trim().to_string();
            let at = pos(&rule.name);
            if name.is_empty() {
                env.errors.at(path, at, "rule name is empty");
            } else if let Some((f, line)) = names.get(&name) {
                let first = f.display();
                let message =
                    format!("duplicate rule name {name:?} (first defined at {first}:{line})");
                env.errors.at(path, at, message);
            } else {
                names.insert(name.clone(), (path.clone(), at.line));
            }
            let rule = compile_rule(path, name, rule, env, &mut out);
            out.rules.push(rule);
        }
    }
    out
}

fn compile_rule(
    path: &Path,
    name: String,
    rule: &RawRule,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Rule {
    let when = match &rule.when {
        Some(w) => condition::compile(w, &mut |at, m| {
            env.errors.at(path, at, format!("rule {name:?}: {m}"))
        }),
        None => Condition::All(vec![]),
    };
    if rule.actions.value.is_empty() {
        env.errors.at(
            path,
            pos(&rule.actions),
            format!("rule {name:?} has no actions"),
        );
    }
    let actions = rule
        .actions
        .value
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| compile_action(path, &name, i, raw, env, out))
        .collect();
    let once = rule
        .once
        .as_ref()
        .and_then(|o| compile_once(path, &name, o, env, out));
    let unless_seen = rule
        .when
        .as_ref()
        .and_then(|w| w.value.unless_seen.as_ref())
        .and_then(|u| compile_unless_seen(path, &name, u, env, out));
    let throttle = rule
        .throttle
        .as_ref()
        .and_then(|t| compile_throttle(path, &name, t, env, out));
    Rule {
        once,
        unless_seen,
        throttle,
        enabled: rule.enabled,
        stop: rule.stop,
        when,
        actions,
        origin: (path.to_path_buf(), pos(&rule.name).line),
        name,
    }
}

/// Compiles `once:`: its key (a template that names a field) and how long a key stays taken.
fn compile_once(
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
/// scope is a digest of all three: rules with the same clause share its marks.
fn compile_unless_seen(
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
    let digest = crate::event::sha256_hex(
        format!(
            "{}\u{1f}{}\u{1f}{}",
            events.join(","),
            u.same.value,
            within.as_millis()
        )
        .as_bytes(),
    );
    Some(Arc::new(SeenClause {
        scope: format!("seen:{}", &digest[..16]),
        events,
        same: same?,
        within,
    }))
}

/// Compiles `throttle`: its key, limit (at least 1), window length and kind.
fn compile_throttle(
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
    Some(Throttle {
        key: key?,
        limit: t.limit.value.max(1),
        per: per?,
        rolling,
    })
}

/// A duration of at least one second (`30d`, `10m`).
fn duration(
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
fn compile_key(
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

/// Compiles the `i`th action of rule `name`, merged with its destination's settings.
fn compile_action(
    path: &Path,
    name: &str,
    i: usize,
    raw: &Spanned<RawAction>,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Option<RuleAction> {
    let action = raw.value.clone();
    let destination = action.destination().cloned();
    let declared = match &destination {
        Some(d) => match env.destinations.get(&d.value) {
            Some(declared) => {
                out.used.insert(d.value.clone());
                Some(declared)
            }
            None => {
                let known = destinations::known(env.destinations);
                let message = format!(
                    "rule {name:?}: unknown destination {:?} (defined: {known})",
                    d.value
                );
                env.errors.at(path, pos(d), message);
                return None;
            }
        },
        None => None,
    };
    let label = match &destination {
        Some(d) => format!("destination {:?}", d.value),
        None => format!("rule {name:?} action {} ({})", i + 1, action.kind()),
    };
    let mut cx = Ctx::new(
        path,
        pos(raw),
        env.templates,
        env.errors,
        &mut out.unconfigured,
        label,
        format!("rule {name:?} action {}", i + 1),
    );
    let compiled = action.compile(declared.map(|d| &d.settings), &mut cx)?;
    probe::probe(&compiled, env.templates, env.sources, name, |message| {
        env.errors.at(path, pos(raw), message)
    });
    Some(RuleAction {
        action: compiled,
        destination: match destination {
            Some(d) => d.value,
            None => format!("{name}#{}", i + 1),
        },
    })
}
