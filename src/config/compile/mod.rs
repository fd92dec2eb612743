//! The configuration compiler: raw rules files and the templates directory in, one validated,
//! immutable [`Config`] out. It is pure (no network), collects every problem instead of stopping
//! at the first, and is shared by `serve`, reload, `check` and `test`. Each part of a file is
//! compiled by a module of its own: `destinations`, `sources`, `time_windows`, `rules` (with
//! the template `probe`, and rule `memory`).

mod destinations;
pub mod digest;
mod memory;
mod probe;
mod rules;
mod sources;
mod splice;
mod time_windows;

use crate::config::raw::{self, Part};
use crate::credentials::{SourceAuth, open_source_warning};
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::event::Sources;
use crate::rules::RuleSet;
use crate::syntax::Pos;
use crate::template::Templates;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A loaded configuration: the rule set with its compiled templates. Immutable; a reload builds
/// a new one and swaps it in whole.
#[derive(Debug)]
pub struct Config {
    /// The rules, compiled and indexed; the serving configuration's own after a reload that
    /// changed none of them.
    pub rules: std::sync::Arc<RuleSet>,
    /// Where each rule is written: its bytes of its file (from its start to the next rule's),
    /// by which a reload recognises a rule it compiled before.
    pub spans: Vec<(u32, u32)>,
    /// What compiling each rule reported besides errors, given again by a reload that shares it.
    pub(crate) notes: Vec<Option<Box<rules::Notes>>>,
    /// How many rules the parser read: a reload takes the serving configuration's rules that a
    /// file still writes as they were without reading them, when it can ([`splice`]).
    pub rules_read: usize,
    /// The compiled templates the rules' actions render with.
    pub templates: Templates,
    /// SHA-256 of every rules file and template file that went in, hex.
    pub hash: String,
    /// What the rules are compiled against besides their own text.
    pub context: Context,
    /// When this configuration was compiled.
    pub loaded_at: DateTime<Utc>,
    /// The rules files it was compiled from.
    pub files: Vec<PathBuf>,
    /// What it was compiled from, for the store to keep; let go once kept there by a
    /// configuration no longer serving (see [`Config::retire`]).
    pub snapshot: arc_swap::ArcSwapOption<Snapshot>,
    /// Whether this instance has kept it in the store.
    pub archived: std::sync::atomic::AtomicBool,
    /// Problems that do not stop it from serving (unconfigured destinations, …).
    pub warnings: Diagnostics,
    /// Authentication of every mounted webhook source, in mount order (a source the files do
    /// not configure asks for no credential).
    pub sources: Vec<(&'static str, SourceAuth)>,
}

impl Config {
    /// The authentication settings of a source (none asked of a source not mounted).
    pub fn source_auth(&self, source: &str) -> &SourceAuth {
        static OPEN: std::sync::LazyLock<SourceAuth> =
            std::sync::LazyLock::new(SourceAuth::default);
        self.sources
            .iter()
            .find(|(name, _)| *name == source)
            .map_or(&OPEN, |(_, auth)| auth)
    }

    /// Lets go of what only a serving configuration needs, once `serving` has replaced it (or
    /// it was compiled back from the store): kept in memory only for the deliveries it
    /// matched, it needs its rules, not the index that matches events (unless `serving` shares
    /// its rule set) nor, once the store keeps it, its files' text (megabytes for 10,000 rules).
    pub fn retire(&self, serving: &Config) {
        if !std::sync::Arc::ptr_eq(&self.rules, &serving.rules) {
            self.rules.retire_index();
        }
        if self.archived.load(std::sync::atomic::Ordering::Acquire) {
            self.snapshot.store(None);
        }
    }

    /// The sources that accept events with no credential.
    pub fn open_sources(&self) -> Vec<&'static str> {
        self.sources
            .iter()
            .filter(|(_, auth)| auth.is_open())
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Compiles rules files (path and text) and the templates directory, for the webhook
/// `sources` the router mounts. With the `serving` configuration (a reload), every rule
/// written as one of its rules is shared with it rather than kept twice.
pub fn compile(
    files: Vec<(PathBuf, String)>,
    templates_dir: &Path,
    sources: &Sources,
    serving: Option<&Config>,
) -> Result<Config, Diagnostics> {
    compile_with(
        files,
        &|| Templates::load_dir_beside(templates_dir, serving.map(|s| &s.templates)),
        templates_dir,
        sources,
        serving,
        true,
    )
}

/// Compiles a configuration kept in the store ([`Snapshot`]): the one that matched a delivery
/// still waiting, after a restart or several reloads since.
pub fn compile_snapshot(snapshot: &Snapshot, sources: &Sources) -> Result<Config, Diagnostics> {
    let templates = || {
        let (templates, broken) = Templates::from_sources(snapshot.templates.clone());
        let broken = broken
            .into_iter()
            .map(|(name, e)| (snapshot.templates_dir.join(name), e))
            .collect();
        (templates, broken)
    };
    compile_with(
        snapshot.files.clone(),
        &templates,
        &snapshot.templates_dir,
        sources,
        None,
        false,
    )
}

/// What a configuration was compiled from: every rules file's text and every template's, so
/// that the store can keep it and any instance compile it again.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Rules files: path and text.
    pub files: Vec<(PathBuf, String)>,
    /// The templates directory (for messages).
    pub templates_dir: PathBuf,
    /// Template files: name and text.
    pub templates: Vec<(String, String)>,
}

/// The templates a configuration compiles with, and those that did not compile (a function:
/// a compilation that shared rules it should not have starts again from the same).
type LoadTemplates<'a> =
    &'a dyn Fn() -> (Templates, Vec<(PathBuf, crate::template::TemplateError)>);

fn compile_with(
    files: Vec<(PathBuf, String)>,
    load_templates: LoadTemplates<'_>,
    templates_dir: &Path,
    sources: &Sources,
    serving: Option<&Config>,
    splice: bool,
) -> Result<Config, Diagnostics> {
    let (mut templates, broken) = load_templates();
    let mut errors = Diagnostics::default();
    for (path, e) in broken {
        let at = Pos {
            line: e.line.unwrap_or(0) as u32,
            column: e.column.unwrap_or(0) as u32,
        };
        let message = format!("template does not compile: {}", e.message);
        errors.at(&path, at, message);
    }
    let hash = hash(&files, &templates);
    let samples = probe::samples(sources);
    let mut destinations = HashMap::new();
    let mut time_windows = time_windows::Windows::default();
    let mut source_sections = Vec::new();
    let mut context = Context {
        templates: templates.digest(),
        ..Context::default()
    };
    // An alias could bring into a rule what is written outside it; without anchors there is none.
    let share = serving
        .filter(|_| !files.iter().any(|(_, text)| raw::has_anchors(text)))
        .and_then(rules::Share::new);
    let mut rules = rules::Rules::new(share);
    // What every rule is compiled against, as declared so far.
    macro_rules! env {
        () => {
            &mut rules::Env {
                destinations: &destinations,
                time_windows: &time_windows.compiled,
                templates: &mut templates,
                sources,
                samples: &samples,
                errors: &mut errors,
            }
        };
    }
    // Each file is compiled as it is parsed, rule by rule: the parsed form of a large file is
    // many times the size of its compiled rules, and a reload builds while others serve.
    // A reload reads only what changed of a file, when it can ([`splice`]); whether it did.
    let mut spliced = false;
    for (path, text) in &files {
        let mark = (rules.mark(), errors.0.len(), source_sections.len());
        let plan = splice.then(|| rules.plan(path, text)).flatten();
        let mut reading = plan.as_ref().map(|(p, at)| splice::Reading::new(p, at));
        let read = plan
            .as_ref()
            .map_or(text.as_str(), |(p, _)| p.text.as_str());
        let parsed = raw::parse_parts(read, &mut |part| match part {
            Part::Sources(section) => source_sections.push((path.clone(), section)),
            Part::Destinations(section) => {
                Context::declare(&mut context.destinations, path, &section);
                destinations::declare(path, &section, &mut destinations, &mut errors)
            }
            Part::TimeWindows(section) => {
                Context::declare(&mut context.time_windows, path, &section);
                time_windows.declare(path, &section, &mut errors)
            }
            Part::Boundary(at) => {
                if let Some(r) = &mut reading {
                    r.key(at);
                    r.rules_end(&mut rules, text, env!());
                }
                rules.end(at, text, env!())
            }
            Part::Rule(rule) => {
                let start = rule.referenced.span().byte_offset();
                let start = match &plan {
                    Some((p, _)) => start.map(|b| p.file_offset(b as usize)),
                    None => start.map(|b| b as usize),
                };
                let start = start.unwrap_or(text.len());
                if let Some(r) = &mut reading {
                    r.rule(start, &mut rules);
                }
                rules.add(path, text, start, rule, env!())
            }
        });
        if let Some(r) = &mut reading {
            if parsed.is_ok() {
                r.rules_end(&mut rules, text, env!());
            }
            if parsed.is_err() || !r.as_planned() {
                drop(rules);
                return compile_with(
                    files,
                    load_templates,
                    templates_dir,
                    sources,
                    serving,
                    false,
                );
            }
            spliced = true;
        }
        // A file that does not parse counts for nothing but its syntax error, as if the
        // parser had stopped at its start.
        match parsed {
            Ok(()) => rules.end(text.len(), text, env!()),
            Err(d) => {
                let (rules_mark, errors_mark, sources_mark) = mark;
                rules.forget(rules_mark, path);
                errors.0.truncate(errors_mark);
                source_sections.truncate(sources_mark);
                destinations.retain(|_, d: &mut destinations::Declared| d.file != *path);
                time_windows.forget(path);
                errors.push(d.in_file(path));
            }
        }
    }
    let auth = sources::compile(&source_sections, sources, &mut errors);
    let compiled = rules.finish(&files, env!());
    if spliced && !errors.is_empty() {
        // Reported as reading the files whole reports them, positions and all.
        drop(compiled);
        return compile_with(
            files,
            load_templates,
            templates_dir,
            sources,
            serving,
            false,
        );
    }
    if compiled.shared > 0
        && serving.is_some_and(|s| !context.same_for(&s.context, &compiled.named_by_shared))
    {
        // Rules were shared on their text, and a destination, time window or template changed.
        drop(compiled);
        return compile_with(files, load_templates, templates_dir, sources, None, false);
    }
    let mut warnings = Diagnostics::default();
    let first_file = files.first().map(|(p, _)| p.clone()).unwrap_or_default();
    for (name, a) in &auth {
        if a.is_open() {
            warnings.push(Diagnostic::file(&first_file, open_source_warning(name)));
        }
    }
    destinations::unused(&destinations, &compiled.used, &mut warnings);
    warnings.extend(compiled.warnings);
    let mut unconfigured: Vec<_> = compiled.unconfigured.into_iter().collect();
    unconfigured.sort_by(|a, b| (&a.1.0, a.1.1.line).cmp(&(&b.1.0, b.1.1.line)));
    for (label, (file, at, vars)) in unconfigured {
        warnings.at(&file, at, format!(
            "{label} is not configured (its address is empty); its deliveries are skipped until {vars} is set"
        ));
    }
    if !errors.is_empty() {
        errors
            .0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(errors);
    }
    templates.settle();
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let snapshot = Snapshot {
        files,
        templates_dir: templates_dir.to_path_buf(),
        templates: templates.sources().to_vec(),
    };
    Ok(Config {
        rules: rule_set(compiled.rules, serving),
        spans: compiled.spans,
        notes: compiled.notes,
        rules_read: compiled.read,
        templates,
        hash,
        context,
        loaded_at: Utc::now(),
        snapshot: Some(std::sync::Arc::new(snapshot)).into(),
        archived: std::sync::atomic::AtomicBool::new(false),
        files: paths,
        warnings,
        sources: auth,
    })
}

/// The rule set of `rules`: the `serving` configuration's when they are all its own, in its
/// order (its index then serves as it is), else a new one.
fn rule_set(
    rules: Vec<std::sync::Arc<crate::rules::Rule>>,
    serving: Option<&Config>,
) -> std::sync::Arc<RuleSet> {
    if let Some(serving) = serving
        && serving.rules.rules().len() == rules.len()
        && serving
            .rules
            .rules()
            .iter()
            .zip(&rules)
            .all(|(a, b)| std::sync::Arc::ptr_eq(a, b))
    {
        return serving.rules.clone();
    }
    std::sync::Arc::new(RuleSet::new(rules))
}

/// What the rules of a configuration are compiled against besides their own text: each
/// destination and time window as written (a digest of its file and settings, by name), and
/// the template files. A rule a reload shares must find those it names, and the templates,
/// unchanged.
#[derive(Debug, Default)]
pub struct Context {
    destinations: HashMap<String, [u8; 32]>,
    time_windows: HashMap<String, [u8; 32]>,
    /// The template files' digest: a shared rule is not compiled again, so a template file
    /// it names must be checked as it was.
    templates: Vec<u8>,
}

impl Context {
    fn declare<T: std::fmt::Debug>(
        into: &mut HashMap<String, [u8; 32]>,
        path: &Path,
        section: &std::collections::BTreeMap<String, T>,
    ) {
        for (name, settings) in section {
            // The first declaration is the one that counts; a second is an error.
            into.entry(name.clone()).or_insert_with(|| {
                let mut hasher = Sha256::new();
                hasher.update(path.as_os_str().as_encoded_bytes());
                hasher.update([0]);
                // The raw settings' Debug is derived: every field and where it is written.
                hasher.update(format!("{settings:?}").as_bytes());
                hasher.finalize().into()
            });
        }
    }

    /// Whether the template files are the same in both, and the destinations and time windows
    /// named are declared the same.
    fn same_for(&self, other: &Context, names: &rules::Names) -> bool {
        let same = |a: &HashMap<String, [u8; 32]>, b: &HashMap<String, [u8; 32]>, n: &String| {
            a.get(n) == b.get(n)
        };
        self.templates == other.templates
            && names
                .destinations
                .iter()
                .all(|n| same(&self.destinations, &other.destinations, n))
            && names
                .time_windows
                .iter()
                .all(|n| same(&self.time_windows, &other.time_windows, n))
    }
}

/// SHA-256 of the templates and of every rules file (its name and text), hex.
fn hash(files: &[(PathBuf, String)], templates: &Templates) -> String {
    let mut hasher = Sha256::new();
    hasher.update(templates.digest());
    for (path, text) in files {
        let name = path.file_name().map(|n| n.to_string_lossy());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update(text.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"destinations:
  crm:
    http: { url: "http://127.0.0.1:9/first", allow_private: true }
rules:
  - name: one
    when: { event: EMAIL_REPLIED }
    actions:
      - http: { destination: crm, body: '{"n": 1}' }
  - name: two
    when: { event: EMAIL_BOUNCED }
    actions:
      - log: { message: two }
  - name: three
    actions:
      - log: { message: three }
"#;

    fn load(text: &str, serving: Option<&Config>) -> Config {
        load_files(&[("rules.yaml", text)], serving)
    }

    fn load_files(files: &[(&str, &str)], serving: Option<&Config>) -> Config {
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let files = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        compile(files, &templates, &Sources::default(), serving).expect("the rules compile")
    }

    /// What the first action of rule `name` renders for an empty event: its JSON, and the
    /// URL of an HTTP request (which the JSON leaves out, as a secret).
    fn rendered(config: &Config, name: &str) -> String {
        let rule = config.rules.by_name(name).expect("the rule is there");
        let message = rule.actions[0]
            .action
            .render(&serde_json::json!({}), &config.templates)
            .expect("it renders");
        let url = match &message {
            crate::actions::Message::Http(m) => m.url.clone(),
            _ => String::new(),
        };
        format!("{} {url}", serde_json::to_string(&message).unwrap())
    }

    /// For each rule of `new`, whether it is `old`'s own.
    fn shared(old: &Config, new: &Config) -> Vec<bool> {
        let rules = new.rules.rules().iter();
        rules
            .map(|r| {
                let theirs = old.rules.by_name(&r.name);
                theirs.is_some_and(|o| std::sync::Arc::ptr_eq(o, r))
            })
            .collect()
    }

    #[test]
    fn a_reload_shares_the_rules_written_the_same_and_compiles_the_others() {
        let first = load(FILE, None);
        let again = load(FILE, Some(&first));
        assert_eq!(shared(&first, &again), [true; 3]);
        // None changed: the rule set and its index too.
        assert!(std::sync::Arc::ptr_eq(&first.rules, &again.rules));
        let edited = load(&FILE.replace("message: two", "message: 2"), Some(&first));
        assert_eq!(shared(&first, &edited), [true, false, true]);
        assert!(!std::sync::Arc::ptr_eq(&first.rules, &edited.rules));
        assert!(
            rendered(&edited, "two").contains("\"2\""),
            "{}",
            rendered(&edited, "two")
        );
        // The last rule's text ends at the file's end, then at the next rule's `- `.
        let appended =
            format!("{FILE}  - name: four\n    actions:\n      - log: {{ message: four }}\n");
        assert_eq!(
            shared(&first, &load(&appended, Some(&first))),
            [true, true, true, false]
        );
        // Below a line added, the rules are on other lines: compiled again, with those lines.
        let moved = FILE.replace("  - name: two\n", "  - name: two\n    description: moved\n");
        let moved = load(&moved, Some(&first));
        assert_eq!(shared(&first, &moved), [true, false, false]);
        assert_eq!(moved.rules.by_name("three").unwrap().origin.1, 14);
        // A destination no shared rule names may come and go.
        let more = "destinations:\n  other:\n    log: {}\n";
        let more = load_files(&[("rules.yaml", FILE), ("more.yaml", more)], Some(&first));
        assert_eq!(shared(&first, &more), [true; 3]);
    }

    #[test]
    fn a_shared_rule_reports_its_warnings_again() {
        let text = "rules:\n  - name: unset\n    actions:\n      - slack: { webhook_url: \"${SWITCHBOARD_TEST_NEVER_SET:-}\", text: hi }\n  - name: keyed\n    once: { key: \"{{#if lead.nothing}}{{lead.nothing}}{{/if}}\", for: 1h }\n    actions:\n      - log: { message: hi }\n";
        let first = load(text, None);
        let again = load(text, Some(&first));
        assert_eq!(shared(&first, &again), [true; 2]);
        let warnings = |c: &Config| c.warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        let said = warnings(&again);
        assert_eq!(warnings(&first), said);
        assert!(
            said.iter().any(|w| w.contains("is not configured")),
            "{said:?}"
        );
        assert!(
            said.iter()
                .any(|w| w.contains("fields it names are missing")),
            "{said:?}"
        );
    }

    #[test]
    fn a_template_file_gone_is_reported_even_for_a_rule_written_the_same() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.hbs"), "Reply from {{lead.email}}").unwrap();
        let text = "rules:\n  - name: a\n    actions:\n      - slack: { webhook_url: 'https://hooks.slack.com/services/T/B/x', template: mine.hbs }\n";
        let files = || vec![(PathBuf::from("rules.yaml"), text.to_string())];
        let sources = Sources::default();
        let first = compile(files(), dir.path(), &sources, None).expect("it compiles");
        std::fs::remove_file(dir.path().join("mine.hbs")).unwrap();
        let errors = compile(files(), dir.path(), &sources, Some(&first)).expect_err("gone");
        assert!(errors.to_string().contains("mine.hbs"), "{errors}");
    }

    #[test]
    fn nothing_is_shared_when_what_the_rules_are_compiled_against_changed() {
        let first = load(FILE, None);
        assert!(
            rendered(&first, "one").contains("/first"),
            "{}",
            rendered(&first, "one")
        );
        let moved = load(&FILE.replace("/first", "/second"), Some(&first));
        assert_eq!(shared(&first, &moved), [false; 3]);
        assert!(
            rendered(&moved, "one").contains("/second"),
            "{}",
            rendered(&moved, "one")
        );
        // A time window named by a rule changed: its new hours are the ones it keeps.
        let windowed = |hours: &str| {
            FILE.replace("message: three }", "message: three, active: office }")
                + &format!(
                    "time_windows:\n  office:\n    intervals: [{{ times: [{{ start_time: '{hours}', end_time: '23:00' }}] }}]\n"
                )
        };
        let first = load(&windowed("08:00"), None);
        let later = load(&windowed("09:00"), Some(&first));
        assert_eq!(shared(&first, &later), [false; 3]);
        let window = |c: &Config| {
            let a = c.rules.by_name("three").unwrap().actions[0].active.as_ref();
            format!("{:?}", a.expect("the action has hours").window)
        };
        assert!(window(&later).contains("(32400, "), "{}", window(&later));
        assert_eq!(
            shared(&later, &load(&windowed("09:00"), Some(&later))),
            [true; 3]
        );
        // An alias brings in text written outside the rule: no sharing in a file with anchors.
        let anchored = FILE
            .replace("message: two", "message: &said two")
            .replace("message: three", "message: *said");
        let anchored_first = load(&anchored, None);
        let again = load(&anchored, Some(&anchored_first));
        assert_eq!(shared(&anchored_first, &again), [false; 3]);
    }

    #[test]
    fn a_replaced_configuration_lets_go_of_its_text_only_once_the_store_keeps_it() {
        let first = load(FILE, None);
        first.retire(&load(FILE, None));
        assert!(first.snapshot.load().is_some(), "not kept in the store yet");
        first
            .archived
            .store(true, std::sync::atomic::Ordering::Release);
        first.retire(&load(FILE, None));
        assert!(first.snapshot.load().is_none());
        // Without its text, nothing of it can be recognised: a reload beside it compiles all,
        // to the same rules.
        let later = load(FILE, Some(&first));
        assert_eq!(shared(&first, &later), [false; 3]);
        assert_eq!(rendered(&later, "one"), rendered(&first, "one"));
        assert_eq!(later.hash, first.hash);
    }

    /// Eight rules after sections (and before one, with `tail`), one with a warning and one
    /// with a time window.
    fn spliced_file(tail: bool) -> String {
        let mut text = String::from(
            "destinations:\n  crm:\n    http: { url: \"http://127.0.0.1:9/crm\", allow_private: true }\ntime_windows:\n  office:\n    intervals: [{ times: [{ start_time: '08:00', end_time: '18:00' }] }]\nrules:\n",
        );
        for i in 0..8 {
            text.push_str(&format!(
                "  - name: rule-{i}\n    when: {{ event: EMAIL_REPLIED }}\n"
            ));
            match i {
                2 => text.push_str("    actions:\n      - slack: { webhook_url: \"${SWITCHBOARD_TEST_NEVER_SET:-}\", text: hi }\n"),
                5 => text.push_str("    actions:\n      - log: { message: \"five\", active: office }\n"),
                _ => text.push_str(&format!("    actions:\n      - http: {{ destination: crm, body: '{{\"n\": {i}}}' }}\n")),
            }
            // A comment between rules belongs to the rule above it.
            if i == 3 {
                text.push_str("  # between three and four\n\n");
            }
        }
        if tail {
            text.push_str("sources:\n  smartlead:\n    secret_key: s3cret\n");
        }
        text
    }

    /// Everything a reader of `a` and `b` could tell apart: rules, where each is written,
    /// what each renders, warnings and hash.
    fn described(config: &Config) -> String {
        let mut out = format!("hash {}\n", config.hash);
        for (rule, span) in config.rules.rules().iter().zip(&config.spans) {
            let window = rule.actions[0]
                .active
                .as_ref()
                .map(|a| format!("{:?}", a.window));
            out += &format!(
                "{} at {}:{} {span:?} {window:?} {}\n",
                rule.name,
                rule.origin.0.display(),
                rule.origin.1,
                rendered(config, &rule.name),
            );
        }
        for w in config.warnings.iter() {
            out += &format!("warning {w}\n");
        }
        out
    }

    /// Compiles `text` as a reload beside `serving` and whole, and checks that both give the
    /// same (or the same errors); returns the reload's and how many rules it read.
    fn reload_as_whole(serving: &Config, text: &str) -> Result<(Config, usize), String> {
        let files = || vec![(PathBuf::from("rules.yaml"), text.to_string())];
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let sources = Sources::default();
        let whole = compile(files(), &templates, &sources, None);
        let reload = compile(files(), &templates, &sources, Some(serving));
        match (whole, reload) {
            (Ok(whole), Ok(reload)) => {
                assert_eq!(described(&reload), described(&whole), "{text}");
                let read = reload.rules_read;
                Ok((reload, read))
            }
            (Err(whole), Err(reload)) => {
                assert_eq!(reload.to_string(), whole.to_string(), "{text}");
                Err(whole.to_string())
            }
            (whole, reload) => panic!(
                "{text}\nwhole: {:?}\nreload: {:?}",
                whole.err(),
                reload.err()
            ),
        }
    }

    #[test]
    fn a_reload_reads_only_what_changed_and_compiles_as_reading_the_file_whole() {
        for tail in [true, false] {
            reads_only_what_changed(&spliced_file(tail));
        }
    }

    fn reads_only_what_changed(text: &str) {
        let text = text.to_string();
        let first = load(&text, None);
        assert_eq!(first.rules_read, 8);
        let count = |c: &Config| shared(&first, c).iter().filter(|s| **s).count();
        // One rule renamed: it and the rule after it are read (the first rule read after an
        // edit must be where it was); the other six are taken unread.
        let (renamed, read) =
            reload_as_whole(&first, &text.replace("rule-4\n", "renamed\n")).unwrap();
        assert_eq!((read, count(&renamed)), (2, 7));
        let (_, read) = reload_as_whole(&first, &text.replace("rule-0\n", "first\n")).unwrap();
        assert_eq!(read, 2);
        let (_, read) = reload_as_whole(&first, &text.replace("rule-7\n", "last\n")).unwrap();
        assert_eq!(read, 1);
        // Nothing changed: the last rule is read.
        let (again, read) = reload_as_whole(&first, &text).unwrap();
        assert_eq!((read, count(&again)), (1, 8));
        // Lines added or taken away: every rule below is read (on other lines, compiled again).
        let added = text.replace(
            "  - name: rule-4\n",
            "  - name: new\n    actions:\n      - log: { message: new }\n  - name: rule-4\n",
        );
        let (_, read) = reload_as_whole(&first, &added).unwrap();
        assert_eq!(read, 5);
        let start = text.find("  - name: rule-6").unwrap();
        let end = text.find("  - name: rule-7").unwrap();
        let removed = format!("{}{}", &text[..start], &text[end..]);
        let (_, read) = reload_as_whole(&first, &removed).unwrap();
        assert_eq!(read, 1);
        // The comment between rules, the sections around them, the messages of kept rules.
        for edited in [
            text.replace("between three", "betwixt three"),
            text.replace("'18:00'", "'19:00'"),
            text.replace("s3cret", "secret"),
            text.replace("/crm", "/other"),
            text.replace("message: \"five\"", "message: \"5\""),
            text.replace(
                "rule-4\n    when: { event: EMAIL_REPLIED }",
                "rule-4\n    when: { event: EMAIL_SENT }",
            ),
            text.replace("\n", "\r\n"),
            // A lone carriage return breaks a line for the parser.
            text.replace("rule-4\n    when:", "rule-4\n    stop: false\r    when:"),
            text.replace("rules:\n", "rules:\n# the rules\n"),
        ] {
            reload_as_whole(&first, &edited).unwrap();
        }
        // A section written after rules that ran to the file's end.
        if !text.contains("sources:") {
            let appended = format!("{text}sources:\n  smartlead:\n    secret_key: s3cret\n");
            reload_as_whole(&first, &appended).unwrap();
        }
    }

    #[test]
    fn a_reload_that_reads_part_of_a_file_reports_its_errors_as_reading_it_whole() {
        for tail in [true, false] {
            reports_errors_as_whole(&spliced_file(tail));
        }
    }

    fn reports_errors_as_whole(text: &str) {
        let text = text.to_string();
        let first = load(&text, None);
        let cases = [
            // A name taken by a rule after, or before, the one edited.
            (text.replace("rule-4\n", "rule-6\n"), "duplicate rule name"),
            (text.replace("rule-4\n", "rule-1\n"), "duplicate rule name"),
            // A quote left open runs into the rules after it.
            (text.replace("'{\"n\": 4}'", "'{\"n\": 4}"), ""),
            (text.replace("'{\"n\": 4}'", "\"{\\\"n\\\": 4}"), ""),
            (
                text.replace("{ destination: crm, body: '{\"n\": 4}' }", "[ destination"),
                "",
            ),
            // An item indented differently from the others.
            (text.replace("  - name: rule-4", "   - name: rule-4"), ""),
            (text.replace("  - name: rule-4", " - name: rule-4"), ""),
            (text.replace("rule-4\n", "\n"), "null"),
            (
                text.replace("  - name: rule-4", "---\n  - name: rule-4"),
                "",
            ),
        ];
        for (edited, says) in cases {
            let error = reload_as_whole(&first, &edited).expect_err(&edited);
            assert!(error.contains(says), "{error}");
        }
        // An alias left behind by the anchor it repeated.
        let anchored = text
            .replace("body: '{\"n\": 1}'", "body: &b '{\"n\": 1}'")
            .replace("body: '{\"n\": 6}'", "body: *b");
        let with_anchor = load(&anchored, None);
        let error = reload_as_whole(&with_anchor, &anchored.replace("&b ", "")).unwrap_err();
        assert!(error.contains("unknown anchor"), "{error}");
        // A block scalar kept to its trailing lines ends where the whole file ends it.
        let kept = text.replace(
            "rule-4\n    when: { event: EMAIL_REPLIED }\n    actions:\n      - http: { destination: crm, body: '{\"n\": 4}' }\n",
            "rule-4\n    actions:\n      - log:\n          message: |+\n            four\n\n",
        );
        reload_as_whole(&first, &kept).unwrap();
        let edited_kept = kept.replace("rule-3\n", "three\n");
        let (after, _) = reload_as_whole(&load(&kept, None), &edited_kept).unwrap();
        assert!(
            rendered(&after, "rule-4").contains("four\\n\\n"),
            "{}",
            rendered(&after, "rule-4")
        );
    }
}
