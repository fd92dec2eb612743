//! Configuration: the rules files and templates a user writes, loaded, validated and compiled
//! into one immutable [`Config`] that `serve`, `check`, `test` and reload all share.
//!
//! - [`raw`] mirrors the YAML one to one, with line and column for every value that can be wrong;
//! - [`compile`] turns raw files into a [`Config`], collecting every error rather than the first.

pub mod compile;
pub mod raw;

pub use compile::Config;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::event::Sources;

use std::path::{Path, PathBuf};

/// Where the configuration comes from: the rules file or directory and the templates directory.
#[derive(Debug, Clone)]
pub struct ConfigPaths {
    /// A rules file, or a directory whose `*.yaml` / `*.yml` files are all loaded in name order.
    pub rules: PathBuf,
    /// The directory that `template:` paths are relative to.
    pub templates: PathBuf,
}

/// Largest rules file the loader reads; bigger files are refused before parsing.
pub const MAX_RULES_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Loads, validates and compiles the whole configuration for the webhook `sources` the router
/// mounts. On failure returns every problem found, each with its file, line and column.
pub fn load(paths: &ConfigPaths, sources: &Sources) -> Result<Config, Diagnostics> {
    load_beside(paths, sources, None)
}

/// [`load`] for a reload: the rules written as the `serving` configuration's are shared with
/// it instead of kept twice.
pub fn load_beside(
    paths: &ConfigPaths,
    sources: &Sources,
    serving: Option<&Config>,
) -> Result<Config, Diagnostics> {
    let files = rules_files(&paths.rules)?;
    let mut texts = Vec::new();
    let mut errors = Diagnostics::default();
    for path in files {
        match read_rules_file(&path) {
            Ok(text) => texts.push((path, text)),
            Err(diagnostic) => errors.push(diagnostic),
        }
    }
    let compiled = compile::compile(texts, &paths.templates, sources, serving);
    match compiled {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// Compiles one rules text that is not a file (the console playground's edited copy), named
/// `name` in its diagnostics, with the templates of `templates`.
pub fn load_text(
    name: &Path,
    text: &str,
    templates: &Path,
    sources: &Sources,
) -> Result<Config, Diagnostics> {
    if text.len() as u64 > MAX_RULES_FILE_BYTES {
        return Err(Diagnostics::one(Diagnostic::file(
            name,
            format!("the rules are larger than {MAX_RULES_FILE_BYTES} bytes"),
        )));
    }
    compile::compile(
        vec![(name.to_path_buf(), text.to_string())],
        templates,
        sources,
        None,
    )
}

/// The rules files named by `path`: the file itself, or every YAML file in the directory.
pub fn rules_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostics> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Diagnostics::one(Diagnostic::file(
            path,
            format!("cannot read the rules: {e} (set --rules or SWITCHBOARD_RULES)"),
        ))
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Diagnostics::one(Diagnostic::file(path, format!("cannot list: {e}"))))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_rules_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Diagnostics::one(Diagnostic::file(
            path,
            "the rules directory holds no *.yaml file",
        )));
    }
    Ok(files)
}

/// Whether a path is one the loader reads as a rules file (`*.yaml` or `*.yml`, not hidden).
pub fn is_rules_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    yaml && !hidden
}

/// Reads a rules file: only a regular file (a FIFO would block reload and shutdown for good,
/// a device such as `/dev/zero` never ends), and never more than the limit, whatever size the
/// file reports.
fn read_rules_file(path: &Path) -> Result<String, Diagnostic> {
    use crate::files::ReadError;
    crate::files::read_regular(path, MAX_RULES_FILE_BYTES).map_err(|e| {
        let message = match e {
            ReadError::NotRegular => "not a regular file (a pipe, device or socket); give a rules file or a directory of them".to_string(),
            ReadError::TooLarge => format!(
                "the file is larger than {MAX_RULES_FILE_BYTES} bytes; split the rules into a directory of files"
            ),
            ReadError::Io(e) => format!("cannot read: {e}"),
        };
        Diagnostic::file(path, message)
    })
}
