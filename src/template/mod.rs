//! Templates: Handlebars in strict mode, with values escaped automatically for where the
//! rendered text lands (Slack mrkdwn, Slack JSON, HTML, JSON strings, URLs, plain text).
//!
//! Every template file is compiled into one registry per [`Escape`] mode, once for all the
//! configurations loaded from the same files. An inline template is shared by every rule and every configuration in
//! memory that writes the same text; it is compiled at load to be checked, but kept compiled
//! only once it renders a message (most rules of a large file never fire, and a compiled
//! template is ten times its text). Templates cannot read files or the environment: only the
//! event is in scope, and only the helpers in `helpers` exist.

pub mod escape;
mod helpers;

pub use escape::Escape;

use crate::event::Event;
use crate::intern::Interner;
use handlebars::{Handlebars, Renderable};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// A compiled template: its name and the escaping it renders with.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    name: String,
    escape: Escape,
    /// An inline template, shared by every inline template of the same text (see
    /// [`INLINE`]); a file's is in the registries, by name.
    inline: Option<Arc<Inline>>,
}

/// An inline template's text, and its compiled form once it has rendered.
struct Inline {
    source: Box<str>,
    compiled: arc_swap::ArcSwapOption<handlebars::Template>,
}

impl Inline {
    /// The compiled form: kept from an earlier render, or compiled now and kept.
    fn compiled(&self) -> Result<Arc<handlebars::Template>, handlebars::TemplateError> {
        if let Some(compiled) = self.compiled.load_full() {
            return Ok(compiled);
        }
        let compiled = Arc::new(compile_inline(&self.source)?);
        self.compiled.store(Some(compiled.clone()));
        Ok(compiled)
    }
}

impl PartialEq for Inline {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Inline {}

// By hand: the compiled form is a syntax tree, not for logs.
impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .field("escape", &self.escape)
            .finish_non_exhaustive()
    }
}

/// Inline templates by text. 10,000 rules hold thousands of inline texts: a reload shares
/// those the serving configuration holds (and rules with the same text share one) instead of
/// checking them again.
static INLINE: Interner<String, Inline> = Interner::new();

thread_local! {
    /// Where inline templates are compiled: a registry with the settings of the ones they
    /// render with (`prevent_indent`), which Handlebars' standalone compiler cannot take.
    static COMPILER: std::cell::RefCell<Handlebars<'static>> = std::cell::RefCell::new({
        let mut hb = Handlebars::new();
        hb.set_prevent_indent(true);
        hb
    });
}

/// An inline template compiled as the registries compile their files.
fn compile_inline(source: &str) -> Result<handlebars::Template, handlebars::TemplateError> {
    const NAME: &str = "inline";
    COMPILER.with_borrow_mut(|hb| {
        hb.register_template_string(NAME, source)?;
        let mut compiled = hb.get_template(NAME).cloned().expect("just registered");
        hb.unregister_template(NAME);
        compiled.name = None;
        Ok(compiled)
    })
}

/// A template that does not compile, with its position inside the template text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// 1-based line inside the template text, when known.
    pub line: Option<usize>,
    /// 1-based column inside the template text, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A template that failed to render for one event.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template {template}: {message}")]
pub struct RenderError {
    /// The template's name.
    pub template: String,
    /// What went wrong (a missing variable names its path).
    pub message: String,
    /// The path of the missing variable, in strict mode.
    pub missing: Option<String>,
}

/// An event made ready for rendering, once per message: every template of the message renders
/// from it without copying the event again. One made at intake from the canonical [`Event`]
/// builds its JSON form only when something reads it (a rule's condition, a template): most
/// events match no rule, and they are stored as JSON text written straight from the event.
pub struct Data {
    /// The canonical and sent types, and the campaign.
    facts: (String, String, Option<i64>),
    /// The event not yet turned into JSON.
    event: std::sync::Mutex<Option<Event>>,
    /// The JSON form, once built.
    context: std::sync::OnceLock<handlebars::Context>,
}

impl From<Value> for Data {
    /// Prepares an event for rendering, taking it over (no copy).
    fn from(event: Value) -> Data {
        let (canonical, sent) = crate::event::event_type(&event);
        let facts = (
            canonical.to_string(),
            sent.to_string(),
            crate::event::campaign_id(&event),
        );
        Data {
            facts,
            event: std::sync::Mutex::new(None),
            context: handlebars::Context::from(event).into(),
        }
    }
}

impl From<Event> for Data {
    /// Prepares a canonical event; its JSON form is built when it is first read.
    fn from(event: Event) -> Data {
        let facts = (
            event.event.clone(),
            event.source_event.clone(),
            event.campaign.id,
        );
        Data {
            facts,
            event: std::sync::Mutex::new(Some(event)),
            context: std::sync::OnceLock::new(),
        }
    }
}

impl Data {
    /// The event itself.
    pub fn value(&self) -> &Value {
        self.context().data()
    }

    /// Prepares an event for rendering (a copy of it).
    pub fn new(event: &Value) -> Data {
        Data::from(event.clone())
    }

    /// The event as JSON text (what the store keeps): written from the canonical event when its
    /// JSON form was not needed, without building it. `capacity` is a guess of its length.
    pub fn to_json(&self, capacity: usize) -> String {
        let mut out = Vec::with_capacity(capacity);
        let written = match self.context.get() {
            Some(context) => serde_json::to_writer(&mut out, context.data()),
            None => {
                let event = self.event.lock().unwrap_or_else(|e| e.into_inner());
                match event.as_ref() {
                    Some(event) => serde_json::to_writer(&mut out, event),
                    // Taken meanwhile by a reader building the JSON form.
                    None => {
                        drop(event);
                        serde_json::to_writer(&mut out, self.value())
                    }
                }
            }
        };
        written.expect("an event serialises");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    fn context(&self) -> &handlebars::Context {
        self.context.get_or_init(|| {
            let event = self
                .event
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            handlebars::Context::from(event.into_value())
        })
    }
}

impl crate::event::EventView for Data {
    fn kinds(&self) -> (&str, &str) {
        (&self.facts.0, &self.facts.1)
    }

    fn campaign_id(&self) -> Option<i64> {
        self.facts.2
    }

    fn value(&self) -> &Value {
        Data::value(self)
    }
}

/// Every compiled template of one configuration.
pub struct Templates {
    /// The template files, compiled: shared by the configurations loaded from the same files.
    files: Arc<Files>,
    inline_count: usize,
    /// Inline templates compiled by this load and not yet released (see [`Templates::settle`]).
    fresh: Vec<Arc<Inline>>,
}

/// The template files of a load, compiled into a registry per escape mode. A reload that reads
/// the same files takes the serving configuration's rather than compiling each file six times
/// again.
struct Files {
    registries: Vec<Handlebars<'static>>,
    names: BTreeSet<String>,
    /// The files that did not compile, with why.
    broken: BTreeMap<String, TemplateError>,
    digest: Vec<u8>,
    /// Every file's name and text as loaded (what a stored configuration keeps).
    sources: Vec<(String, String)>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("files", &self.files.names)
            .field("inline", &self.inline_count)
            .finish()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Templates::from_sources(Vec::new()).0
    }
}

fn registry(escape: Escape) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.set_prevent_indent(true);
    hb.register_escape_fn(escape.function());
    helpers::register(&mut hb, escape);
    hb
}

/// Largest template file read.
pub const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

impl Templates {
    /// Compiles every `*.hbs` file below `dir`, named by its path relative to `dir`
    /// (`slack/reply.hbs`). Files that do not compile are left out and returned with their
    /// errors (and remembered, so a rule naming one is not told the file is missing).
    pub fn load_dir(dir: &Path) -> (Self, Vec<(std::path::PathBuf, TemplateError)>) {
        Self::load_dir_beside(dir, None)
    }

    /// As [`Templates::load_dir`], taking the compiled files of `serving` when the files read
    /// are the same.
    pub fn load_dir_beside(
        dir: &Path,
        serving: Option<&Templates>,
    ) -> (Self, Vec<(std::path::PathBuf, TemplateError)>) {
        let mut paths = Vec::new();
        collect_files(dir, &mut paths);
        paths.sort();
        let mut read = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            let name = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            // Only regular files, bounded: a pipe or a device named `*.hbs` cannot block a reload.
            match crate::files::read_regular(&path, MAX_TEMPLATE_BYTES) {
                Ok(source) => read.push((name, source)),
                Err(e) => errors.push((
                    path,
                    TemplateError {
                        line: None,
                        column: None,
                        message: match e {
                            crate::files::ReadError::NotRegular => {
                                "not a regular file (a pipe, device or socket)".into()
                            }
                            crate::files::ReadError::TooLarge => {
                                format!("larger than {MAX_TEMPLATE_BYTES} bytes")
                            }
                            crate::files::ReadError::Io(e) => format!("cannot read: {e}"),
                        },
                    },
                )),
            }
        }
        let (templates, broken) = Self::from_sources_beside(read, serving);
        errors.extend(broken.into_iter().map(|(name, e)| (dir.join(name), e)));
        (templates, errors)
    }

    /// Compiles template files given by name and text (a stored configuration's). Files that
    /// do not compile are left out and returned by name with their errors.
    pub fn from_sources(files: Vec<(String, String)>) -> (Self, Vec<(String, TemplateError)>) {
        Self::from_sources_beside(files, None)
    }

    /// As [`Templates::from_sources`], taking the compiled files of `serving` when it was
    /// loaded from the same files.
    pub fn from_sources_beside(
        files: Vec<(String, String)>,
        serving: Option<&Templates>,
    ) -> (Self, Vec<(String, TemplateError)>) {
        let files = match serving.filter(|s| s.files.sources == files) {
            Some(serving) => serving.files.clone(),
            None => Arc::new(Files::compile(files)),
        };
        let errors = (files.broken.iter())
            .map(|(name, e)| (name.clone(), e.clone()))
            .collect();
        let templates = Templates {
            files,
            inline_count: 0,
            fresh: Vec::new(),
        };
        (templates, errors)
    }

    /// Every file's name and text as loaded.
    pub fn sources(&self) -> &[(String, String)] {
        &self.files.sources
    }

    /// Whether a template file of that name exists but does not compile.
    pub fn is_broken(&self, name: &str) -> bool {
        self.files.broken.contains_key(name)
    }

    /// SHA-256 over every loaded file's name and text.
    pub fn digest(&self) -> Vec<u8> {
        self.files.digest.clone()
    }

    /// Whether a template file of that name was loaded.
    pub fn has_file(&self, name: &str) -> bool {
        self.files.names.contains(name)
    }

    /// The names of the loaded template files.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.names.iter().map(String::as_str)
    }

    /// A loaded file rendered with `escape`, if the file exists.
    pub fn file(&self, name: &str, escape: Escape) -> Option<Template> {
        self.has_file(name).then(|| Template {
            name: name.to_string(),
            escape,
            inline: None,
        })
    }

    /// Compiles an inline template (text written in the rules file).
    /// `hint` names it in errors (`rule "reply" action 1 text`).
    pub fn inline(
        &mut self,
        hint: &str,
        source: &str,
        escape: Escape,
    ) -> Result<Template, TemplateError> {
        self.inline_count += 1;
        let name = format!("{hint} (inline #{})", self.inline_count);
        let mut fresh = false;
        let inline = INLINE
            .get_or_compile(source.to_string(), || {
                fresh = true;
                Ok(Inline {
                    source: source.into(),
                    compiled: Some(Arc::new(compile_inline(source)?)).into(),
                })
            })
            .map_err(template_error)?;
        if fresh {
            self.fresh.push(inline.clone());
        }
        Ok(Template {
            name,
            escape,
            inline: Some(inline),
        })
    }

    /// Releases the compiled form of the inline templates compiled since the last call, once
    /// they are checked (and probed): each is compiled again when it first renders a message.
    pub fn settle(&mut self) {
        for inline in self.fresh.drain(..) {
            inline.compiled.store(None);
        }
    }

    /// Renders a template against an event.
    pub fn render(&self, template: &Template, data: &Data) -> Result<String, RenderError> {
        let registry = &self.files.registries[template.escape.index()];
        let rendered = match &template.inline {
            // What the registry does for a template of its own, with the registry's helpers,
            // escaping and strictness.
            Some(inline) => {
                let compiled = inline.compiled().map_err(|e| RenderError {
                    template: template.name.clone(),
                    message: e.reason().to_string(),
                    missing: None,
                })?;
                let mut context = handlebars::RenderContext::new(None);
                let mut out = handlebars::StringOutput::new();
                compiled
                    .render(registry, data.context(), &mut context, &mut out)
                    .and_then(|()| out.into_string().map_err(handlebars::RenderError::from))
            }
            None => registry.render_with_context(&template.name, data.context()),
        };
        rendered.map_err(|e| {
            let missing = match e.reason() {
                handlebars::RenderErrorReason::MissingVariable(path) => path.clone(),
                _ => None,
            };
            let message = match &missing {
                Some(path) => format!(
                    "variable `{path}` does not exist (guard optional values with {{{{#if}}}})"
                ),
                None => e.reason().to_string(),
            };
            let at = match (e.line_no, e.column_no) {
                (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
                _ => String::new(),
            };
            RenderError {
                template: template.name.clone(),
                message: format!("{message}{at}"),
                missing,
            }
        })
    }
}

impl Files {
    fn compile(sources: Vec<(String, String)>) -> Files {
        let mut files = Files {
            registries: Escape::ALL.iter().map(|&e| registry(e)).collect(),
            names: BTreeSet::new(),
            broken: BTreeMap::new(),
            digest: Vec::new(),
            sources: Vec::new(),
        };
        let mut digest = Sha256::new();
        for (name, source) in sources {
            digest.update(name.as_bytes());
            digest.update(source.as_bytes());
            match files.register(&name, &source) {
                Ok(()) => {
                    files.names.insert(name.clone());
                }
                Err(e) => {
                    files.broken.insert(name.clone(), e);
                }
            }
            files.sources.push((name, source));
        }
        files.digest = digest.finalize().to_vec();
        files
    }

    fn register(&mut self, name: &str, source: &str) -> Result<(), TemplateError> {
        for hb in &mut self.registries {
            hb.register_template_string(name, source)
                .map_err(template_error)?;
        }
        Ok(())
    }
}

fn template_error(e: handlebars::TemplateError) -> TemplateError {
    let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
    TemplateError {
        line,
        column,
        message: e.reason().to_string(),
    }
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "hbs") {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests;
