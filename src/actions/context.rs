//! The context channels compile their settings in (where the action is written, the
//! templates, the lists that collect errors and warnings), with the checks every channel
//! shares: `${VAR}` expansion, template parts given inline or as a file.

use crate::diagnostic::Diagnostics;
use crate::env::{self, Expanded};
use crate::syntax::{Pos, Spanned, pos};
use crate::template::{Escape, Template, Templates};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The context a channel compiles its settings in: where the action is written, the templates,
/// and the lists that collect errors and warnings.
pub struct Ctx<'a> {
    /// The rules file being compiled.
    pub file: &'a Path,
    /// The position of the action being compiled (for errors with no finer position).
    pub at: Pos,
    /// The templates, for inline templates to be added to and files to be looked up.
    pub templates: &'a mut Templates,
    errors: &'a mut Diagnostics,
    unconfigured: &'a mut Unconfigured,
    label: String,
    site: String,
}

/// Destinations whose address came out empty, by label (`destination "sales"`, or `rule "r"
/// action 2 (slack)`): where, and the variables to set.
pub type Unconfigured = BTreeMap<String, (PathBuf, Pos, String)>;

impl<'a> Ctx<'a> {
    /// The context for one action: `file` and `at` say where it is written, `label` names what
    /// an empty address leaves unconfigured, `site` names the action in template errors.
    pub fn new(
        file: &'a Path,
        at: Pos,
        templates: &'a mut Templates,
        errors: &'a mut Diagnostics,
        unconfigured: &'a mut Unconfigured,
        label: String,
        site: String,
    ) -> Self {
        Ctx {
            file,
            at,
            templates,
            errors,
            unconfigured,
            label,
            site,
        }
    }

    /// Reports an error at a position of the current file.
    pub fn error(&mut self, at: Pos, message: impl Into<String>) {
        self.errors.at(self.file, at, message);
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
