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
    /// The rules, compiled and indexed.
    pub rules: RuleSet,
    /// The compiled templates the rules' actions render with.
    pub templates: Templates,
    /// SHA-256 of every rules file and template file that went in, hex.
    pub hash: String,
    /// When this configuration was compiled.
    pub loaded_at: DateTime<Utc>,
    /// The rules files it was compiled from.
    pub files: Vec<PathBuf>,
    /// What it was compiled from, for the store to keep.
    pub snapshot: std::sync::Arc<Snapshot>,
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
/// `sources` the router mounts.
pub fn compile(
    files: Vec<(PathBuf, String)>,
    templates_dir: &Path,
    sources: &Sources,
) -> Result<Config, Diagnostics> {
    compile_with(
        files,
        Templates::load_dir(templates_dir),
        templates_dir,
        sources,
    )
}

/// Compiles a configuration kept in the store ([`Snapshot`]): the one that matched a delivery
/// still waiting, after a restart or several reloads since.
pub fn compile_snapshot(snapshot: &Snapshot, sources: &Sources) -> Result<Config, Diagnostics> {
    let (templates, broken) = Templates::from_sources(snapshot.templates.clone());
    let broken = broken
        .into_iter()
        .map(|(name, e)| (snapshot.templates_dir.join(name), e))
        .collect();
    compile_with(
        snapshot.files.clone(),
        (templates, broken),
        &snapshot.templates_dir,
        sources,
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

fn compile_with(
    files: Vec<(PathBuf, String)>,
    (mut templates, broken): (Templates, Vec<(PathBuf, crate::template::TemplateError)>),
    templates_dir: &Path,
    sources: &Sources,
) -> Result<Config, Diagnostics> {
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
    let mut rules = rules::Rules::new();
    // Each file is compiled as it is parsed, rule by rule: the parsed form of a large file is
    // many times the size of its compiled rules, and a reload builds while others serve.
    for (path, text) in &files {
        let mark = (rules.mark(), errors.0.len(), source_sections.len());
        let parsed = raw::parse_parts(text, &mut |part| match part {
            Part::Sources(section) => source_sections.push((path.clone(), section)),
            Part::Destinations(section) => {
                destinations::declare(path, &section, &mut destinations, &mut errors)
            }
            Part::TimeWindows(section) => time_windows.declare(path, &section, &mut errors),
            Part::Rule(rule) => rules.add(
                path,
                rule,
                &mut rules::Env {
                    destinations: &destinations,
                    time_windows: &time_windows.compiled,
                    templates: &mut templates,
                    sources,
                    samples: &samples,
                    errors: &mut errors,
                },
            ),
        });
        // A file that does not parse counts for nothing but its syntax error, as if the
        // parser had stopped at its start.
        if let Err(d) = parsed {
            let (rules_mark, errors_mark, sources_mark) = mark;
            rules.forget(rules_mark, path);
            errors.0.truncate(errors_mark);
            source_sections.truncate(sources_mark);
            destinations.retain(|_, d: &mut destinations::Declared| d.file != *path);
            time_windows.forget(path);
            errors.push(d.in_file(path));
        }
    }
    let auth = sources::compile(&source_sections, sources, &mut errors);
    let compiled = rules.finish(&mut rules::Env {
        destinations: &destinations,
        time_windows: &time_windows.compiled,
        templates: &mut templates,
        sources,
        samples: &samples,
        errors: &mut errors,
    });
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
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let snapshot = Snapshot {
        files,
        templates_dir: templates_dir.to_path_buf(),
        templates: templates.sources().to_vec(),
    };
    Ok(Config {
        rules: RuleSet::new(compiled.rules),
        templates,
        hash,
        loaded_at: Utc::now(),
        snapshot: std::sync::Arc::new(snapshot),
        archived: std::sync::atomic::AtomicBool::new(false),
        files: paths,
        warnings,
        sources: auth,
    })
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
