//! Values as written in a rules file: [`Spanned`] values with the [`Pos`] (line and column) they
//! were written at, and [`OneOrMany`] for keys that take one value or a list. Shared by the
//! configuration loader, the rules and the actions, which each own the part of the file they
//! compile; nothing here reads YAML (that is `config::raw`).

use serde::Deserialize;

pub use serde_saphyr::Spanned;

/// A position in a rules file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// The position a spanned value was written at.
pub fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    }
}

/// A value written either alone or as a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list of values.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The values as a list.
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}
