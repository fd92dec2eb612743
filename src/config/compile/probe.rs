//! The template probe: every action is rendered at load against each mounted source's sample
//! event (every canonical field present, most of them null), so that a template naming a field
//! that does not exist (`{{lead.frist_name}}`) is caught at load, not at 3 a.m.

use crate::actions::{Action, RenderFailure};
use crate::event::Sources;
use crate::template::Templates;

/// Renders `action` against each source's sample; a template error is reported through
/// `error` once per action (the first source that shows it). A field under `raw` is the
/// payload as the tool sent it: one the sample lacks is no error.
pub(super) fn probe(
    action: &Action,
    templates: &Templates,
    sources: &Sources,
    rule: &str,
    mut error: impl FnMut(String),
) {
    for source in sources.iter() {
        let sample = source.sample().into_value();
        match action.render(&sample, templates) {
            Err(RenderFailure::Template(e))
                if e.missing
                    .as_deref()
                    .is_some_and(|p| p == "raw" || p.starts_with("raw.")) => {}
            Err(RenderFailure::Template(e)) => {
                error(format!("rule {rule:?}: {e}"));
                return;
            }
            _ => {}
        }
    }
}
