//! Diagnostics: one problem in the configuration, with the file, line and column it is at.
//! Every part of the configuration (the loader, the rules, the actions) reports through these.

use crate::syntax::Pos;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found while loading the configuration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl Diagnostic {
    /// A problem at a position in a file.
    pub fn at(file: &Path, at: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: at.line,
            column: at.column,
            message: message.into(),
        }
    }

    /// A problem with a whole file.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic::at(file, Pos::default(), message)
    }

    /// The same problem, placed in `file` (parsers report positions before they know the file).
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = file.to_path_buf();
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column.max(1))?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load, in the order they were found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// A list holding one problem.
    pub fn one(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
    /// Adds a problem.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    /// Adds a problem at a position in a file.
    pub fn at(&mut self, file: &Path, at: Pos, message: impl Into<String>) {
        self.0.push(Diagnostic::at(file, at, message));
    }
    /// Adds all of another list's problems.
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// The problems in order.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
