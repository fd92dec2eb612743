//! `destinations:`: named delivery targets, declared once in any rules file and used by rules'
//! actions by name.

use crate::actions::RawAction;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::syntax::{Pos, Spanned, pos};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A destination as declared: which file, where, and its settings.
pub(super) struct Declared {
    pub(super) file: PathBuf,
    pub(super) at: Pos,
    pub(super) settings: RawAction,
}

/// Declares the destinations of one file beside those of the files before it; a name declared
/// twice, or a destination that names another, is an error.
pub(super) fn declare(
    path: &Path,
    section: &BTreeMap<String, Spanned<RawAction>>,
    destinations: &mut HashMap<String, Declared>,
    errors: &mut Diagnostics,
) {
    for (name, settings) in section {
        if let Some(first) = destinations.get(name) {
            errors.at(
                path,
                pos(settings),
                format!(
                    "destination {name:?} is already defined at {}:{}",
                    first.file.display(),
                    first.at.line
                ),
            );
            continue;
        }
        if let Some(d) = settings.value.destination() {
            errors.at(
                path,
                pos(d),
                "a destination cannot name another destination",
            );
        }
        destinations.insert(
            name.clone(),
            Declared {
                file: path.to_path_buf(),
                at: pos(settings),
                settings: settings.value.clone(),
            },
        );
    }
}

/// The list of declared names for an error message: `a, b, c`, or `none`.
pub(super) fn known(destinations: &HashMap<String, Declared>) -> String {
    let mut known: Vec<&str> = destinations.keys().map(String::as_str).collect();
    if known.is_empty() {
        return "none".into();
    }
    known.sort_unstable();
    known.join(", ")
}

/// A warning for each destination no rule uses, in the order they are written.
pub(super) fn unused(
    destinations: &HashMap<String, Declared>,
    used: &HashSet<String>,
    warnings: &mut Diagnostics,
) {
    let mut unused: Vec<(&String, &Declared)> = destinations
        .iter()
        .filter(|(name, _)| !used.contains(*name))
        .collect();
    unused.sort_by(|a, b| (&a.1.file, a.1.at.line).cmp(&(&b.1.file, b.1.at.line)));
    for (name, d) in unused {
        warnings.push(Diagnostic::at(
            &d.file,
            d.at,
            format!("destination {name:?} is not used by any rule"),
        ));
    }
}
