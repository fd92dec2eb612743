//! The template probe: every action is rendered at load against each mounted source's sample
//! event (every canonical field present, most of them null), so that a template naming a field
//! that does not exist (`{{lead.frist_name}}`) is caught at load, not at 3 a.m.

use crate::actions::{Action, RenderFailure};
use crate::event::Sources;
use crate::template::{Data, Template, Templates};

/// Each mounted source's sample event, made once per load for every action's probe (made
/// per action, the samples were a tenth of loading 10,000 rules).
pub(super) fn samples(sources: &Sources) -> Vec<Data> {
    sources
        .iter()
        .map(|source| Data::from(source.sample().into_value()))
        .collect()
}

/// Renders `action` against each source's sample; a template error is reported through
/// `error` once per action (the first source that shows it). A field under `raw` is the
/// payload as the tool sent it: one the sample lacks is no error.
pub(super) fn probe(
    action: &Action,
    templates: &Templates,
    samples: &[Data],
    rule: &str,
    mut error: impl FnMut(String),
) {
    for sample in samples {
        match action.render_data(sample, templates) {
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

/// Renders a key against each source's sample: the first sample's rendering, or why a sample
/// does not render (a field that does not exist; `raw` fields are the tool's own and pass).
pub(super) fn key(
    template: &Template,
    templates: &Templates,
    sources: &Sources,
) -> Result<String, String> {
    let mut first = None;
    for source in sources.iter() {
        let sample = Data::from(source.sample().into_value());
        match templates.render(template, &sample) {
            Ok(text) => {
                first.get_or_insert(text);
            }
            Err(e)
                if e.missing
                    .as_deref()
                    .is_some_and(|p| p == "raw" || p.starts_with("raw.")) =>
            {
                first.get_or_insert_with(String::new);
            }
            Err(e) => return Err(e.message),
        }
    }
    Ok(first.unwrap_or_default())
}
