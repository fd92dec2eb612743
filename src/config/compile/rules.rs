//! `rules:`: each rule's name, its `when` (compiled by the rules), and its actions (compiled by
//! their channel, with settings they leave out taken from their destination), every action
//! probed against each source's sample event.

use super::destinations::{self, Declared};
use super::digest;
use super::memory;
use super::probe;
use super::splice;
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
    pub(super) rules: Vec<Arc<Rule>>,
    /// The destinations some action uses.
    pub(super) used: HashSet<String>,
    /// The destinations and actions whose address came out empty.
    pub(super) unconfigured: Unconfigured,
    /// Problems that do not stop the rules from serving (a key that may render empty, …).
    pub(super) warnings: Diagnostics,
    /// Where each rule is written ([`super::Config::spans`]).
    pub(super) spans: Vec<(u32, u32)>,
    /// How many rules are the serving configuration's own (see [`Share`]).
    pub(super) shared: usize,
    /// How many rules the parser handed over (the others were taken unread, [`super::splice`]).
    pub(super) read: usize,
    /// The destinations and time windows those name.
    pub(super) named_by_shared: Names,
    /// What each rule reported besides errors ([`Notes`]), for the next reload.
    pub(super) notes: Vec<Option<Box<Notes>>>,
    /// The labels of what the rule being compiled may leave unconfigured.
    labels: Vec<String>,
    /// The file being compiled, shared by the origin of each of its rules.
    file: Option<Arc<Path>>,
}

impl Compiled {
    /// `path`, shared with the rules compiled before from the same file.
    fn file(&mut self, path: &Path) -> Arc<Path> {
        match &self.file {
            Some(file) if **file == *path => file.clone(),
            _ => self.file.insert(Arc::from(path)).clone(),
        }
    }
}

/// Destinations and time windows by name.
#[derive(Default)]
pub(super) struct Names {
    pub(super) destinations: HashSet<String>,
    pub(super) time_windows: HashSet<String>,
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

/// The configuration serving while a reload compiles: a rule written exactly as one of its
/// rules (same file, same line, same text) compiles to the same rule, so the new configuration
/// takes the serving one's instead of compiling it again and keeping a copy of every rule; the
/// warnings it gave are kept with it ([`Notes`]) and given again. Whether the destinations,
/// time windows and templates it was compiled against are the same too is known only once
/// every file is read: [`super::compile_with`] compiles again, sharing nothing, when one is not.
pub(super) struct Share<'a> {
    serving: &'a super::Config,
    /// Its files' texts (a serving configuration always holds them).
    texts: Arc<super::Snapshot>,
}

impl<'a> Share<'a> {
    pub(super) fn new(serving: &'a super::Config) -> Option<Self> {
        let texts = serving.snapshot.load_full()?;
        Some(Share { serving, texts })
    }

    /// The serving configuration's rule named `name` if it is written at `line` of `path` as
    /// at `span` of `text`, and its notes.
    fn find(
        &self,
        (path, line): (&Path, u32),
        name: &str,
        text: &str,
        span: (u32, u32),
    ) -> Option<(Arc<Rule>, Option<Box<Notes>>)> {
        if span.0 >= span.1 {
            return None;
        }
        let at = self.serving.rules.position(name)?;
        let old = &self.serving.rules.rules()[at];
        if *old.origin.0 != *path || old.origin.1 != line {
            return None;
        }
        let (_, old_text) = self.texts.files.iter().find(|(p, _)| p == path)?;
        let old_span = *self.serving.spans.get(at)?;
        if own_text(old_text, old_span)? != own_text(text, span)? {
            return None;
        }
        let notes = self.serving.notes.get(at).cloned().flatten();
        Some((old.clone(), notes))
    }
}

/// What compiling a rule reported besides errors, kept with the rule so that a reload that
/// shares it reports it again.
#[derive(Debug, Clone, Default)]
pub struct Notes {
    warnings: Vec<crate::diagnostic::Diagnostic>,
    unconfigured: Vec<(String, (PathBuf, crate::syntax::Pos, String))>,
}

/// A rule's text: its bytes of the file without the next item's `- `, which the last rule
/// of a list does not have.
fn own_text(text: &str, (start, end): (u32, u32)) -> Option<&str> {
    let slice = text.get(start as usize..end as usize)?;
    if let Some(rest) = slice.trim_end_matches(' ').strip_suffix('-') {
        let line = rest.rfind('\n').map_or(0, |i| i + 1);
        if rest[line..].bytes().all(|b| b == b' ') {
            return Some(&slice[..line]);
        }
    }
    Some(slice)
}

/// The rules compiled so far, in order, as the parser hands them over one by one. The last
/// rule taken is held, parsed, until the next part of the file starts, where its text ends;
/// then it is shared with the serving configuration, or compiled and its parsed form dropped,
/// or, if it names a destination or time window not declared yet (further down, or in a later
/// file), it waits, parsed, for the end.
pub(super) struct Rules<'a> {
    out: Compiled,
    names: HashMap<String, (Arc<Path>, u32)>,
    waiting: Vec<Waiting>,
    held: Option<Waiting>,
    /// Rules taken so far, compiled or waiting: the next one's place in evaluation order.
    taken: usize,
    share: Option<Share<'a>>,
}

/// A rule not compiled yet, and its place among the others.
struct Waiting {
    place: usize,
    path: PathBuf,
    name: String,
    raw: Box<Spanned<RawRule>>,
    span: (u32, u32),
}

/// How far [`Rules`] had got, to go back to when a file turns out not to parse.
pub(super) struct Mark {
    compiled: usize,
    waiting: usize,
    taken: usize,
    shared: usize,
}

impl<'a> Rules<'a> {
    pub(super) fn new(share: Option<Share<'a>>) -> Self {
        Rules {
            out: Compiled {
                rules: Vec::new(),
                used: HashSet::new(),
                unconfigured: Unconfigured::new(),
                warnings: Diagnostics::default(),
                spans: Vec::new(),
                notes: Vec::new(),
                shared: 0,
                read: 0,
                named_by_shared: Names::default(),
                labels: Vec::new(),
                file: None,
            },
            names: HashMap::new(),
            waiting: Vec::new(),
            held: None,
            taken: 0,
            share,
        }
    }

    /// Takes the next rule of `path` (whose text is `text`), written from byte `start`; a rule
    /// name used twice is an error.
    pub(super) fn add(
        &mut self,
        path: &Path,
        text: &str,
        start: usize,
        raw: Box<Spanned<RawRule>>,
        env: &mut Env<'_>,
    ) {
        self.end(start, text, env);
        self.out.read += 1;
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
            let file = self.out.file(path);
            self.names.insert(name.clone(), (file, at.line));
        }
        let place = self.taken;
        self.taken += 1;
        self.held = Some(Waiting {
            place,
            path: path.to_path_buf(),
            name,
            raw,
            span: (start as u32, start as u32),
        });
    }

    /// The rule held, if any, ends at byte `at` of `text` (the next rule or top-level key, or
    /// the file's end): shared, compiled, or left waiting.
    pub(super) fn end(&mut self, at: usize, text: &str, env: &mut Env<'_>) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        held.span.1 = at as u32;
        let shared = self.shared(&held, text);
        if shared.is_none() && !declared(&held.raw.value, env) {
            self.waiting.push(held);
            return;
        }
        let span = held.span;
        let (rule, notes) = self.take(held, shared, env);
        self.out.rules.push(rule);
        self.out.spans.push(span);
        self.out.notes.push(notes);
    }

    /// The serving configuration's rule that `w` (written in `text`) is, and its notes.
    fn shared(&self, w: &Waiting, text: &str) -> Option<(Arc<Rule>, Option<Box<Notes>>)> {
        let line = pos(&w.raw.value.name).line;
        self.share
            .as_ref()?
            .find((&w.path, line), &w.name, text, w.span)
    }

    /// The rule of `w`: the serving configuration's (`shared`), its notes given again, or
    /// compiled now.
    fn take(
        &mut self,
        w: Waiting,
        shared: Option<(Arc<Rule>, Option<Box<Notes>>)>,
        env: &mut Env<'_>,
    ) -> (Arc<Rule>, Option<Box<Notes>>) {
        if let Some((old, notes)) = shared {
            return self.reuse(old, notes);
        }
        let warned = self.out.warnings.0.len();
        self.out.labels.clear();
        let rule = compile_rule(&w.path, w.name, &w.raw.value, env, &mut self.out);
        // Checked and probed: its inline templates are compiled again when they first render.
        env.templates.settle();
        let notes = Notes {
            warnings: self.out.warnings.0[warned..].to_vec(),
            unconfigured: (self.out.labels.iter())
                .filter_map(|l| Some((l.clone(), self.out.unconfigured.get(l)?.clone())))
                .collect(),
        };
        let notes =
            (!notes.warnings.is_empty() || !notes.unconfigured.is_empty()).then(|| Box::new(notes));
        (Arc::new(rule), notes)
    }

    /// The serving configuration's rule `old`, counted as shared, its notes given again.
    fn reuse(
        &mut self,
        old: Arc<Rule>,
        notes: Option<Box<Notes>>,
    ) -> (Arc<Rule>, Option<Box<Notes>>) {
        self.out.shared += 1;
        // Looked up before inserting: most rules name a destination seen already.
        let once = |set: &mut HashSet<String>, name: &String| {
            if !set.contains(name) {
                set.insert(name.clone());
            }
        };
        for a in &old.actions {
            let names = &mut self.out.named_by_shared;
            once(&mut names.destinations, &a.destination);
            if let Some(active) = &a.active {
                once(&mut names.time_windows, &active.window.name);
            }
            once(&mut self.out.used, &a.destination);
        }
        if let Some(n) = &notes {
            self.out.warnings.0.extend(n.warnings.iter().cloned());
            for (label, at) in &n.unconfigured {
                self.out
                    .unconfigured
                    .entry(label.clone())
                    .or_insert_with(|| at.clone());
            }
        }
        (old, notes)
    }

    /// How to read `text`, the new text of `path`, taking the serving rules it leaves written
    /// as they were without parsing them ([`splice`]), with the serving positions of the
    /// file's rules; `None` to read it whole.
    pub(super) fn plan(&self, path: &Path, text: &str) -> Option<(splice::Plan, Vec<usize>)> {
        let share = self.share.as_ref()?;
        let (_, old) = share.texts.files.iter().find(|(p, _)| p == path)?;
        // A rule taken unread must not hold an alias of an anchor the edit took away.
        if crate::config::raw::has_anchors(old) {
            return None;
        }
        let serving = &share.serving;
        let at: Vec<usize> = (serving.rules.rules().iter().enumerate())
            .filter(|(_, r)| *r.origin.0 == *path)
            .map(|(i, _)| i)
            .collect();
        let spans: Option<Vec<(u32, u32)>> =
            at.iter().map(|&i| serving.spans.get(i).copied()).collect();
        Some((splice::plan(old, text, &spans?)?, at))
    }

    /// Takes the serving configuration's rule at position `at` unparsed, written `shift` bytes
    /// from where it was; `false` if that cannot be done as parsing it would (its name is
    /// taken already).
    pub(super) fn keep(&mut self, at: usize, shift: i64) -> bool {
        let Some(share) = &self.share else {
            return false;
        };
        let (Some(rule), Some(&(start, end))) = (
            share.serving.rules.rules().get(at),
            share.serving.spans.get(at),
        ) else {
            return false;
        };
        if self.held.is_some() || self.names.contains_key(&rule.name) {
            return false;
        }
        let (rule, notes) = (rule.clone(), share.serving.notes.get(at).cloned().flatten());
        self.names
            .insert(rule.name.clone(), (rule.origin.0.clone(), rule.origin.1));
        self.taken += 1;
        let moved = |b: u32| (i64::from(b) + shift) as u32;
        let (rule, notes) = self.reuse(rule, notes);
        self.out.rules.push(rule);
        self.out.spans.push((moved(start), moved(end)));
        self.out.notes.push(notes);
        true
    }

    /// Where the rules stand now.
    pub(super) fn mark(&self) -> Mark {
        Mark {
            compiled: self.out.rules.len(),
            waiting: self.waiting.len(),
            taken: self.taken,
            shared: self.out.shared,
        }
    }

    /// Forgets the rules of `path` taken since `mark` (a file that turned out not to parse).
    pub(super) fn forget(&mut self, mark: Mark, path: &Path) {
        self.held = None;
        self.out.rules.truncate(mark.compiled);
        self.out.spans.truncate(mark.compiled);
        self.out.notes.truncate(mark.compiled);
        self.waiting.truncate(mark.waiting);
        self.taken = mark.taken;
        self.out.shared = mark.shared;
        self.names.retain(|_, (file, _)| **file != *path);
    }

    /// Compiles the rules that waited, now that every file (path and text) is read, and
    /// returns them all in evaluation order.
    pub(super) fn finish(mut self, files: &[(PathBuf, String)], env: &mut Env<'_>) -> Compiled {
        let waited = !self.waiting.is_empty();
        for w in std::mem::take(&mut self.waiting) {
            let text = files
                .iter()
                .find(|(p, _)| *p == w.path)
                .map_or("", |(_, t)| t.as_str());
            let (place, span) = (w.place, w.span);
            let shared = self.shared(&w, text);
            let (rule, notes) = self.take(w, shared, env);
            self.out.rules.insert(place, rule);
            self.out.spans.insert(place, span);
            self.out.notes.insert(place, notes);
        }
        // Compiled as they came, the waiting rules' warnings came last: back in file order.
        if waited {
            self.out
                .warnings
                .0
                .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        }
        self.out.rules.shrink_to_fit();
        self.out.spans.shrink_to_fit();
        self.out.notes.shrink_to_fit();
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
        .and_then(|o| memory::compile_once(path, &name, o, env, out))
        .map(Box::new);
    let unless_seen = rule
        .when
        .as_ref()
        .and_then(|w| w.value.unless_seen.as_ref())
        .and_then(|u| memory::compile_unless_seen(path, &name, u, env, out));
    let throttle = rule
        .throttle
        .as_ref()
        .and_then(|t| memory::compile_throttle(path, &name, t, env, out))
        .map(Box::new);
    let digest = rule
        .digest
        .as_ref()
        .and_then(|d| digest::compile_digest(path, &name, d, env, out))
        .map(Box::new);
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
        origin: (out.file(path), pos(&rule.name).line),
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
    out.labels.push(label.clone());
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
