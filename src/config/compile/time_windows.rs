//! `time_windows:`: named sets of hours, declared once in any rules file and named by actions'
//! `active`.

use crate::config::raw::RawFile;
use crate::diagnostic::Diagnostics;
use crate::syntax::pos;
use crate::time_window::{self, TimeWindow};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Every time window of every file, by name (with where it is written); a name declared twice
/// is an error.
pub(super) fn compile(
    files: &[(PathBuf, String, RawFile)],
    errors: &mut Diagnostics,
) -> HashMap<String, Arc<TimeWindow>> {
    let mut windows = HashMap::new();
    let mut first: HashMap<&str, (PathBuf, u32)> = HashMap::new();
    for (path, _, file) in files {
        for (name, raw) in &file.time_windows {
            if let Some((f, line)) = first.get(name.as_str()) {
                let message = format!(
                    "time window {name:?} is already defined at {}:{line}",
                    f.display()
                );
                errors.at(path, pos(raw), message);
                continue;
            }
            first.insert(name, (path.clone(), pos(raw).line));
            let compiled = time_window::compile(name, raw, &mut |at, m| errors.at(path, at, m));
            if let Some(w) = compiled {
                windows.insert(name.clone(), Arc::new(w));
            }
        }
    }
    windows
}
