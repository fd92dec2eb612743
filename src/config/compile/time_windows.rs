//! `time_windows:`: named sets of hours, declared once in any rules file and named by actions'
//! `active`.

use crate::diagnostic::Diagnostics;
use crate::syntax::{Spanned, pos};
use crate::time_window::{self, RawTimeWindow, TimeWindow};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The time windows declared so far, by name, and where each name was first written.
#[derive(Default)]
pub(super) struct Windows {
    /// The windows that compiled.
    pub(super) compiled: HashMap<String, Arc<TimeWindow>>,
    first: HashMap<String, (PathBuf, u32)>,
}

impl Windows {
    /// Compiles the time windows of one file beside those of the files before it; a name
    /// declared twice is an error.
    pub(super) fn declare(
        &mut self,
        path: &Path,
        section: &BTreeMap<String, Spanned<RawTimeWindow>>,
        errors: &mut Diagnostics,
    ) {
        for (name, raw) in section {
            if let Some((f, line)) = self.first.get(name.as_str()) {
                let message = format!(
                    "time window {name:?} is already defined at {}:{line}",
                    f.display()
                );
                errors.at(path, pos(raw), message);
                continue;
            }
            self.first
                .insert(name.clone(), (path.to_path_buf(), pos(raw).line));
            let compiled = time_window::compile(name, raw, &mut |at, m| errors.at(path, at, m));
            if let Some(w) = compiled {
                self.compiled.insert(name.clone(), Arc::new(w));
            }
        }
    }

    /// Forgets what `path` declared (a file that turned out not to parse).
    pub(super) fn forget(&mut self, path: &Path) {
        let names: Vec<String> = self
            .first
            .iter()
            .filter(|(_, (f, _))| f == path)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.first.remove(&name);
            self.compiled.remove(&name);
        }
    }
}
