//! The configuration compiler: raw rules files and the templates directory in, one validated,
//! immutable [`Config`] out. It is pure (no network), collects every problem instead of stopping
//! at the first, and is shared by `serve`, reload, `check` and `test`.

use super::env::{self, Expanded};
use super::raw::{Pos, RawFile, Spanned, pos};
use super::{Diagnostic, Diagnostics};
use crate::actions::{Action, RawAction, RenderFailure};
use crate::event::{SmartLead, Source};
use crate::rules::{Condition, Rule, RuleAction, RuleSet, condition};
use crate::server::auth::{SIGNATURE_HEADER, Secret, SourceAuth};
use crate::template::{Escape, Template, Templates};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
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
    /// Problems that do not stop it from serving (unconfigured destinations, …).
    pub warnings: Diagnostics,
    /// Authentication per webhook source; a source not listed asks for no credential.
    pub sources: HashMap<String, SourceAuth>,
}

impl Config {
    /// The authentication settings of a source.
    pub fn source_auth(&self, source: &str) -> &SourceAuth {
        static OPEN: std::sync::LazyLock<SourceAuth> =
            std::sync::LazyLock::new(SourceAuth::default);
        self.sources.get(source).unwrap_or(&OPEN)
    }

    /// The sources that accept events with no credential.
    pub fn open_sources(&self) -> Vec<&'static str> {
        crate::event::sources()
            .iter()
            .map(|s| s.name())
            .filter(|name| self.source_auth(name).is_open())
            .collect()
    }
}

/// The compile context handed to each channel: where we are, the templates, and the lists that
/// collect errors and warnings.
pub struct Ctx<'a> {
    /// The rules file being compiled.
    pub file: &'a Path,
    /// The position of the action being compiled (for errors with no finer position).
    pub at: Pos,
    /// The templates, for inline templates to be added to and files to be looked up.
    pub templates: &'a mut Templates,
    errors: &'a mut Diagnostics,
    unconfigured: &'a mut BTreeMap<String, (PathBuf, Pos, String)>,
    label: String,
    site: String,
}

impl Ctx<'_> {
    /// Reports an error at a position of the current file.
    pub fn error(&mut self, at: Pos, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::at(self.file, at.line, at.column, message));
    }

    /// Expands `${VAR}` references in a setting; an unset variable is reported.
    pub fn expand(&mut self, value: &Spanned<String>) -> Option<Expanded> {
        match env::expand(&value.value) {
            Ok(e) => Some(e),
            Err(e) => {
                self.error(pos(value), e.to_string());
                None
            }
        }
    }

    /// Expands a setting that is then compiled as a template (a URL, a header): a variable's
    /// value must not bring `{{` into it, or the secret would be read as template code.
    pub fn expand_template(&mut self, value: &Spanned<String>) -> Option<Expanded> {
        let e = self.expand(value)?;
        if e.value.matches("{{").count() != value.value.matches("{{").count() {
            let vars = e.vars.join(", ");
            self.error(
                pos(value),
                format!("the value of {vars} contains `{{{{`, which is not allowed here"),
            );
            return None;
        }
        Some(e)
    }

    /// Records that the destination's address came out empty, naming the variables to set.
    /// Returns what to set, for the line logged when a delivery is skipped.
    pub fn unconfigured(&mut self, at: Pos, what: &str, expanded: &Expanded) -> String {
        let vars = if expanded.vars.is_empty() {
            format!("`{what}`")
        } else {
            expanded.vars.join(" or ")
        };
        self.unconfigured.entry(self.label.clone()).or_insert((
            self.file.to_path_buf(),
            at,
            vars.clone(),
        ));
        vars
    }

    /// The template of one part of a message: inline text or a file, not both.
    /// `Some(None)` when neither is given; `None` after an error.
    pub fn template(
        &mut self,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        escape: Escape,
        names: (&str, &str),
    ) -> Option<Option<Template>> {
        match (inline, file) {
            (Some(_), Some(f)) => {
                let (a, b) = names;
                self.error(pos(f), format!("give `{a}` or `{b}`, not both"));
                None
            }
            (Some(text), None) => match self.templates.inline(
                &format!("{} `{}`", self.site, names.0),
                &text.value,
                escape,
            ) {
                Ok(t) => Some(Some(t)),
                Err(e) => {
                    let within = match (e.line, e.column) {
                        (Some(l), Some(c)) => format!(" (template line {l}, column {c})"),
                        _ => String::new(),
                    };
                    self.error(
                        pos(text),
                        format!("`{}` does not compile: {}{within}", names.0, e.message),
                    );
                    None
                }
            },
            (None, Some(name)) => match self.templates.file(&name.value, escape) {
                Some(t) => Some(Some(t)),
                None if self.templates.is_broken(&name.value) => None,
                None => {
                    let known: Vec<&str> = self.templates.file_names().collect();
                    let known = if known.is_empty() {
                        "no templates are loaded".to_string()
                    } else {
                        format!("known: {}", known.join(", "))
                    };
                    self.error(
                        pos(name),
                        format!(
                            "template file {:?} not found in the templates directory ({known})",
                            name.value
                        ),
                    );
                    None
                }
            },
            (None, None) => Some(None),
        }
    }
}

/// A destination as declared: which file, where, and its settings.
struct Declared {
    file: PathBuf,
    at: Pos,
    settings: RawAction,
}

/// Compiles parsed rules files (path, text, parsed) and the templates directory.
pub fn compile(
    files: Vec<(PathBuf, String, RawFile)>,
    templates_dir: &Path,
) -> Result<Config, Diagnostics> {
    let mut errors = Diagnostics::default();
    let (mut templates, broken) = Templates::load_dir(templates_dir);
    for (path, e) in broken {
        errors.push(Diagnostic::at(
            &path,
            e.line.unwrap_or(0) as u32,
            e.column.unwrap_or(0) as u32,
            format!("template does not compile: {}", e.message),
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update(templates.digest());
    let mut destinations: HashMap<String, Declared> = HashMap::new();
    for (path, text, file) in &files {
        hasher.update(
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
                .as_bytes(),
        );
        hasher.update(text.as_bytes());
        for (name, settings) in &file.destinations {
            if let Some(first) = destinations.get(name) {
                errors.push(Diagnostic::at(
                    path,
                    pos(settings).line,
                    pos(settings).column,
                    format!(
                        "destination {name:?} is already defined at {}:{}",
                        first.file.display(),
                        first.at.line
                    ),
                ));
                continue;
            }
            if let Some(d) = settings.value.destination() {
                errors.push(Diagnostic::at(
                    path,
                    pos(d).line,
                    pos(d).column,
                    "a destination cannot name another destination",
                ));
            }
            destinations.insert(
                name.clone(),
                Declared {
                    file: path.clone(),
                    at: pos(settings),
                    settings: settings.value.clone(),
                },
            );
        }
    }
    let sources = compile_sources(&files, &mut errors);
    let mut unconfigured = BTreeMap::new();
    let mut used = std::collections::HashSet::new();
    let mut rules = Vec::new();
    let mut names: HashMap<String, (PathBuf, u32)> = HashMap::new();
    for (path, _, file) in files.iter() {
        for raw in &file.rules {
            let rule = &raw.value;
            let name = rule.name.value.trim().to_string();
            if name.is_empty() {
                errors.push(Diagnostic::at(
                    path,
                    pos(&rule.name).line,
                    pos(&rule.name).column,
                    "rule name is empty",
                ));
            } else if let Some((f, line)) = names.get(&name) {
                errors.push(Diagnostic::at(
                    path,
                    pos(&rule.name).line,
                    pos(&rule.name).column,
                    format!(
                        "duplicate rule name {name:?} (first defined at {}:{line})",
                        f.display()
                    ),
                ));
            } else {
                names.insert(name.clone(), (path.clone(), pos(&rule.name).line));
            }
            let when = match &rule.when {
                Some(w) => condition::compile(w, &mut |at, m| {
                    errors.push(Diagnostic::at(
                        path,
                        at.line,
                        at.column,
                        format!("rule {name:?}: {m}"),
                    ))
                }),
                None => Condition::All(vec![]),
            };
            if rule.actions.value.is_empty() {
                let at = pos(&rule.actions);
                errors.push(Diagnostic::at(
                    path,
                    at.line,
                    at.column,
                    format!("rule {name:?} has no actions"),
                ));
            }
            let mut actions = Vec::new();
            for (i, raw_action) in rule.actions.value.iter().enumerate() {
                let action = raw_action.value.clone();
                let dest_name = action.destination().cloned();
                let declared = match &dest_name {
                    Some(d) => match destinations.get(&d.value) {
                        Some(decl) => {
                            used.insert(d.value.clone());
                            Some(decl)
                        }
                        None => {
                            let mut known: Vec<&String> = destinations.keys().collect();
                            known.sort();
                            errors.push(Diagnostic::at(
                                path,
                                pos(d).line,
                                pos(d).column,
                                format!(
                                    "rule {name:?}: unknown destination {:?} (defined: {})",
                                    d.value,
                                    if known.is_empty() {
                                        "none".into()
                                    } else {
                                        known
                                            .iter()
                                            .map(|s| s.as_str())
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    }
                                ),
                            ));
                            continue;
                        }
                    },
                    None => None,
                };
                let label = match &dest_name {
                    Some(d) => format!("destination {:?}", d.value),
                    None => format!("rule {name:?} action {} ({})", i + 1, action.kind()),
                };
                let mut cx = Ctx {
                    file: path,
                    at: pos(raw_action),
                    templates: &mut templates,
                    errors: &mut errors,
                    unconfigured: &mut unconfigured,
                    label,
                    site: format!("rule {name:?} action {}", i + 1),
                };
                if let Some(compiled) = action.compile(declared.map(|d| &d.settings), &mut cx) {
                    probe(
                        &compiled,
                        &templates,
                        path,
                        pos(raw_action),
                        &name,
                        &mut errors,
                    );
                    let destination = match &dest_name {
                        Some(d) => d.value.clone(),
                        None => format!("{name}#{}", i + 1),
                    };
                    actions.push(RuleAction {
                        action: compiled,
                        destination,
                    });
                }
            }
            rules.push(Rule {
                name,
                enabled: rule.enabled,
                stop: rule.stop,
                when,
                actions,
                origin: (path.clone(), pos(&rule.name).line),
            });
        }
    }
    let mut warnings = Diagnostics::default();
    for source in crate::event::sources() {
        if sources.get(source.name()).is_none_or(SourceAuth::is_open) {
            let file = files.first().map(|(p, _, _)| p.clone()).unwrap_or_default();
            warnings.push(Diagnostic::file(&file, format!(
                "source {:?} asks for no credential: anyone who can reach /webhooks/{} can post events (`serve` then listens on loopback only, or with --insecure); set sources.{}.secret_key, token, hmac_secret or allow_ips (SECURITY.md)",
                source.name(), source.name(), source.name()
            )));
        }
    }
    let mut unused: Vec<(&String, &Declared)> = destinations
        .iter()
        .filter(|(name, _)| !used.contains(*name))
        .collect();
    unused.sort_by(|a, b| (&a.1.file, a.1.at.line).cmp(&(&b.1.file, b.1.at.line)));
    for (name, d) in unused {
        warnings.push(Diagnostic::at(
            &d.file,
            d.at.line,
            d.at.column,
            format!("destination {name:?} is not used by any rule"),
        ));
    }
    let mut unconfigured: Vec<_> = unconfigured.into_iter().collect();
    unconfigured.sort_by(|a, b| (&a.1.0, a.1.1.line).cmp(&(&b.1.0, b.1.1.line)));
    for (label, (file, at, vars)) in unconfigured {
        warnings.push(Diagnostic::at(&file, at.line, at.column, format!(
            "{label} is not configured (its address is empty); its deliveries are skipped until {vars} is set"
        )));
    }
    if !errors.is_empty() {
        errors
            .0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(errors);
    }
    Ok(Config {
        rules: RuleSet::new(rules),
        templates,
        hash: hex(&hasher.finalize()),
        loaded_at: Utc::now(),
        files: files.into_iter().map(|(p, _, _)| p).collect(),
        warnings,
        sources,
    })
}

/// Compiles every `sources:` entry (secrets from the environment, networks, durations).
fn compile_sources(
    files: &[(PathBuf, String, RawFile)],
    errors: &mut Diagnostics,
) -> HashMap<String, SourceAuth> {
    let known: Vec<&'static str> = crate::event::sources().iter().map(|s| s.name()).collect();
    let mut out: HashMap<String, SourceAuth> = HashMap::new();
    for (path, _, file) in files {
        for (name, raw) in &file.sources {
            let mut err =
                |at: Pos, m: String| errors.push(Diagnostic::at(path, at.line, at.column, m));
            if !known.contains(&name.as_str()) {
                err(
                    pos(raw),
                    format!("unknown source {name:?}; known: {}", known.join(", ")),
                );
                continue;
            }
            if out.contains_key(name) {
                err(pos(raw), format!("source {name:?} is configured twice"));
                continue;
            }
            let r = &raw.value;
            let mut secret = |v: &Option<Spanned<String>>| -> Option<Secret> {
                let v = v.as_ref()?;
                match env::expand(&v.value) {
                    Ok(e) if e.value.is_empty() => None,
                    Ok(e) => Some(Secret::new(e.value)),
                    Err(e) => {
                        err(pos(v), e.to_string());
                        None
                    }
                }
            };
            let secret_key = secret(&r.secret_key);
            let token = secret(&r.token);
            let hmac_key = secret(&r.hmac_secret);
            let mut nets = |list: &Option<Vec<Spanned<String>>>, what: &str| -> Vec<ipnet::IpNet> {
                let mut nets = Vec::new();
                for item in list.iter().flatten() {
                    let text = match env::expand(&item.value) {
                        Ok(e) => e.value,
                        Err(e) => {
                            errors.push(Diagnostic::at(
                                path,
                                pos(item).line,
                                pos(item).column,
                                e.to_string(),
                            ));
                            continue;
                        }
                    };
                    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        let parsed = part
                            .parse::<ipnet::IpNet>()
                            .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                        match parsed {
                            Ok(n) => nets.push(n),
                            Err(_) => errors.push(Diagnostic::at(path, pos(item).line, pos(item).column, format!("{what}: {part:?} is not an address or a CIDR network like 203.0.113.0/24"))),
                        }
                    }
                }
                nets
            };
            let allow_ips = nets(&r.allow_ips, "allow_ips");
            let trusted_proxies = nets(&r.trusted_proxies, "trusted_proxies");
            // Both may use ${VAR}; an empty replay window switches the check off.
            let mut setting = |v: &Option<Spanned<String>>| -> Option<(String, Pos)> {
                let v = v.as_ref()?;
                match env::expand(&v.value) {
                    Ok(e) if e.value.trim().is_empty() => None,
                    Ok(e) => Some((e.value.trim().to_string(), pos(v))),
                    Err(e) => {
                        errors.push(Diagnostic::at(
                            path,
                            pos(v).line,
                            pos(v).column,
                            e.to_string(),
                        ));
                        None
                    }
                }
            };
            let replay = setting(&r.replay_window);
            let header = setting(&r.signature_header)
                .map_or_else(|| SIGNATURE_HEADER.to_string(), |(h, _)| h);
            let replay_window = replay.and_then(|(w, at)| match humantime::parse_duration(&w) {
                Ok(d) => Some(d),
                Err(_) => {
                    errors.push(Diagnostic::at(
                        path,
                        at.line,
                        at.column,
                        format!("replay_window {w:?} is not a duration like 10m"),
                    ));
                    None
                }
            });
            out.insert(
                name.clone(),
                SourceAuth {
                    secret_key,
                    token,
                    hmac: hmac_key.map(|k| (k, header)),
                    allow_ips,
                    trusted_proxies,
                    replay_window,
                },
            );
        }
    }
    out
}

/// Renders an action against an event with every canonical field present, so that a template
/// naming a field that does not exist (`{{lead.frist_name}}`) is caught at load, not at 3 a.m.
fn probe(
    action: &Action,
    templates: &Templates,
    file: &Path,
    at: Pos,
    rule: &str,
    errors: &mut Diagnostics,
) {
    let mut sample = SmartLead.normalise(serde_json::Map::new());
    sample["event_id"] = Value::String("probe".into());
    match action.render(&sample, templates) {
        Err(RenderFailure::Template(e))
            if e.missing
                .as_deref()
                .is_some_and(|p| p == "raw" || p.starts_with("raw.")) => {}
        Err(RenderFailure::Template(e)) => {
            errors.push(Diagnostic::at(
                file,
                at.line,
                at.column,
                format!("rule {rule:?}: {e}"),
            ));
        }
        _ => {}
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
