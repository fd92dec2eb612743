//! `rules:`: each rule's name, its `when` (compiled by the rules), and its actions (compiled by
//! their channel, with settings they leave out taken from their destination), every action
//! probed against each source's sample event.

use super::destinations::{self, Declared};
use super::digest;
use super::memory;
use super::probe;
use crate::actions::{Common, Ctx, RawAction, Unconfigured};
use crate::config::raw::RawRule;
use crate::diagnostic::Diagnostics;
use crate::event::Sources;
use crate::rules::{Active, Condition, Rule, RuleAction, condition};
use crate::syntax::{Spanned, pos};
use crate::template::Templates;
use crate::time_window::TimeWindow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    pub(super) time_windows: &'a HashMap<String, Arc<TimeWindow>>,
    pub(super) templates: &'a mut Templates,
    pub(super) sources: &'a Sources,
    /// The sources' sample events, which every action is rendered against ([`probe`]).
    pub(super) samples: &'a [crate::template::Data],
    pub(super) errors: &'a mut Diagnostics,
}

/// The rules compiled so far, in order, as the parser hands them over one by one. A rule that
/// names a destination or time window not declared yet (further down, or in a later file)
/// waits, raw, for the end; the others are compiled at once and their raw form dropped.
pub(super) struct Rules {
    out: Compiled,
    names: HashMap<String, (PathBuf, u32)>,
    waiting: Vec<Waiting>,
    /// Rules taken so far, compiled or waiting: the next one's place in evaluation order.
    taken: usize,
}

/// A rule compiled once every file is read, and its place among the others.
struct Waiting {
    place: usize,
    path: PathBuf,
    name: String,
    raw: Box<Spanned<RawRule>>,
}

/// How far [`Rules`] had got, to go back to when a file turns out not to parse.
pub(super) struct Mark {
    compiled: usize,
    waiting: usize,
    taken: usize,
}

impl Rules {
    pub(super) fn new() -> Self {
        Rules {
            out: Compiled {
                rules: Vec::new(),
                used: HashSet::new(),
                unconfigured: Unconfigured::new(),
                warnings: Diagnostics::default(),
            },
            names: HashMap::new(),
            waiting: Vec::new(),
            taken: 0,
        }
    }

    /// Takes the next rule of `path`; a rule name used twice is an error.
    pub(super) fn add(&mut self, path: &Path, raw: Box<Spanned<RawRule>>, env: &mut Env<'_>) {
        let rule = &raw.value;
        let name = rule.name.value.trim().to_string();
        let at = pos(&rule.name);
        if name.is_empty() {
            env.errors.at(path, at, "rule name is empty");
        } else if let Some((f, line)) = self.names.get(&name) {
            let first = f.display();
            let message = format!("duplicate rule name {name:?} (first defined at {first}:{line})");
            env.errors.at(path, at, message);
        } else {
            self.names
                .insert(name.clone(), (path.to_path_buf(), at.line));
        }
        let place = self.taken;
        self.taken += 1;
        if declared(rule, env) {
            let compiled = compile_rule(path, name, rule, env, &mut self.out);
            self.out.rules.push(compiled);
        } else {
            self.waiting.push(Waiting {
                place,
                path: path.to_path_buf(),
                name,
                raw,
            });
        }
    }

    /// Where the rules stand now.
    pub(super) fn mark(&self) -> Mark {
        Mark {
            compiled: self.out.rules.len(),
            waiting: self.waiting.len(),
            taken: self.taken,
        }
    }

    /// Forgets the rules of `path` taken since `mark` (a file that turned out not to parse).
    pub(super) fn forget(&mut self, mark: Mark, path: &Path) {
        self.out.rules.truncate(mark.compiled);
        self.waiting.truncate(mark.waiting);
        self.taken = mark.taken;
        self.names.retain(|_, (file, _)| file != path);
    }

    /// Compiles the rules that waited, now that every file is read, and returns them all in
    /// evaluation order.
    pub(super) fn finish(mut self, env: &mut Env<'_>) -> Compiled {
        let waited = !self.waiting.is_empty();
        for w in std::mem::take(&mut self.waiting) {
            let rule = compile_rule(&w.path, w.name, &w.raw.value, env, &mut self.out);
            self.out.rules.insert(w.place, rule);
        }
        // Compiled as they came, the waiting rules' warnings came last: back in file order.
        if waited {
            self.out
                .warnings
                .0
                .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        }
        self.out.rules.shrink_to_fit();
        self.out
    }
}

/// Whether every destination and time window the rule's actions name is declared already.
fn declared(rule: &RawRule, env: &Env<'_>) -> bool {
    rule.actions.value.iter().all(|action| {
        let destination = match action.value.destination() {
            Some(d) => match env.destinations.get(&d.value) {
                Some(declared) => Some(declared),
                None => return false,
            },
            None => None,
        };
        let window = action
            .value
            .common()
            .active
            .or_else(|| destination.and_then(|d| d.settings.common().active));
        window.is_none_or(|w| env.time_windows.contains_key(w.value.trim()))
    })
}

fn compile_rule(
    path: &Path,
    name: String,
    rule: &RawRule,
    env: &mut Env<'_>,
    out: &mut Compiled,
) -> Rule {
    let (when, windows) = match &rule.when {
        Some(w) => condition::compile(w, &mut |at, m| {
            env.errors.at(path, at, format!("rule {name:?}: {m}"))
        }),
        None => (Condition::All(vec![]), vec![]),
    };
    let has_window = !windows.is_empty();
    let windows = windows
        .into_iter()
        .filter_map(|w| memory::compile_window(path, &name, w, env, out))
        .collect();
    let fire = rule
        .fire
        .as_ref()
        .and_then(|f| memory::compile_fire(path, &name, f, has_window, env));
    if rule.actions.value.is_empty() {
        env.errors.at(
            path,
            pos(&rule.actions),
            format!("rule {name:?} has no actions"),
        );
    }
    // A digest rule's actions render digests only, unless its first event also goes alone.
    let digest_only = rule
        .digest
        .as_ref()
        .is_some_and(|d| d.value.first.as_ref().map(|f| f.value.trim()) != Some("immediate"));
    let mut actions: Vec<RuleAction> = rule
        .actions
        .value
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| compile_action(path, &name, i, raw, digest_only, env, out))
        .collect();
    // Collected from a filter, the vector has room for four: three unused actions per rule
    // are megabytes in a file of 10,000 rules, kept for as long as the configuration serves.
    actions.shrink_to_fit();
    let once = rule
        .once
        .as_ref()
        .and_then(|o| memory::compile_once(path, &name, o, env, out));
    let unless_seen = rule
        .when
        .as_ref()
        .and_then(|w| w.value.unless_seen.as_ref())
        .and_then(|u| memory::compile_unless_seen(path, &name, u, env, out));
    let throttle = rule
        .throttle
        .as_ref()
        .and_then(|t| memory::compile_throttle(path, &name, t, env, out));
    let digest = rule
        .digest
        .as_ref()
        .and_then(|d| digest::compile_digest(path, &name, d, env, out));
    if let (Some(raw), Some(d)) = (&rule.digest, &digest) {
        digest::probe_actions(path, &name, raw, d, &actions, env);
    }
    if let (Some(raw), Some(_), Some(t)) = (&rule.digest, &digest, &rule.throttle)
        && t.value.over_limit.is_some()
    {
        let message = format!(
            "rule {name:?}: a digest rule's `throttle` cannot send what it holds back as a digest of its own; leave out `over_limit`"
        );
        env.errors.at(path, pos(raw), message);
    }
    if let Some(t) = &throttle
        && t.digest
        && let Some(at) = rule
            .throttle
            .as_ref()
            .and_then(|t| t.value.over_limit.as_ref())
    {
        for (i, a) in actions.iter().enumerate() {
            let what = "over_limit: digest";
            digest::probe_also_digest(path, pos(at), &name, what, (i, &a.action), env);
        }
    }
    Rule {
        digest,
        once,
        unless_seen,
        throttle,
        windows,
        fire,
        enabled: rule.enabled,
        stop: rule.stop,
        when,
        actions,
        origin: (path.to_path_buf(), pos(&rule.name).line),
        name,
    }
}

/// Compiles the `i`th action of rule `name`, merged with its destination's settings.
fn compile_action(
    path: &Path,
    name: &str,
    i: usize,
    raw: &Spanned<RawAction>,
    digested: bool,
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
    let compiled = action.compile(declared.map(|d| &d.settings), &mut cx);
    let active = active(path, name, &raw.value, declared, env);
    let compiled = compiled?;
    if let Ok(Some(a)) = &active
        && a.digest
    {
        let what = "outside: digest";
        digest::probe_also_digest(path, pos(raw), name, what, (i, &compiled), env);
    }
    // A digest's rendering is probed with one (see `digest`).
    if !digested {
        probe::probe(&compiled, env.templates, env.samples, name, |message| {
            env.errors.at(path, pos(raw), message)
        });
    }
    Some(RuleAction {
        action: compiled,
        active: active.ok()?,
        destination: match destination {
            Some(d) => d.value,
            None => format!("{name}#{}", i + 1),
        },
    })
}

/// An action's `active` and `outside`, each from the action or else from its destination (and
/// reported where it is written).
fn active(
    path: &Path,
    rule: &str,
    action: &RawAction,
    declared: Option<&Declared>,
    env: &mut Env<'_>,
) -> Result<Option<Active>, ()> {
    let own = action.common();
    let inherited = declared.map(|d| (d.file.as_path(), d.settings.common()));
    let window = own.active.map(|v| (path, v)).or_else(|| {
        inherited.and_then(|(file, c): (&Path, Common<'_>)| c.active.map(|v| (file, v)))
    });
    let outside = own.outside.map(|v| (path, v)).or_else(|| {
        inherited.and_then(|(file, c): (&Path, Common<'_>)| c.outside.map(|v| (file, v)))
    });
    let (drop, digest) = match outside {
        None => (false, false),
        Some((_, o)) if o.value.trim() == "hold" => (false, false),
        Some((_, o)) if o.value.trim() == "drop" => (true, false),
        Some((_, o)) if o.value.trim() == "digest" => (false, true),
        Some((file, o)) => {
            let message = format!(
                "rule {rule:?}: `outside` is `hold`, `drop` or `digest`, not {:?}",
                o.value
            );
            env.errors.at(file, pos(o), message);
            return Err(());
        }
    };
    let Some((file, name)) = window else {
        if let Some((file, o)) = outside {
            let message = format!(
                "rule {rule:?}: `outside` needs `active` (the time window it is outside of)"
            );
            env.errors.at(file, pos(o), message);
            return Err(());
        }
        return Ok(None);
    };
    match env.time_windows.get(name.value.trim()) {
        Some(window) => Ok(Some(Active {
            window: window.clone(),
            drop,
            digest,
        })),
        None => {
            let mut known: Vec<&str> = env.time_windows.keys().map(String::as_str).collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            let message = format!(
                "rule {rule:?}: unknown time window {:?} (defined: {known})",
                name.value
            );
            env.errors.at(file, pos(name), message);
            Err(())
        }
    }
}
