//! `check` and `test`: the configuration validated, and an event run through it dry.

use super::{ConfigArgs, StoreArgs};
use crate::app::short_hash;
use crate::config;
use crate::event::Sources;
use crate::explain;
use clap::Args;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `test`'s flags.
#[derive(Debug, Args)]
pub(super) struct TestArgs {
    /// The event: a JSON file, or - for standard input.
    #[arg(long)]
    event: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
    /// Also print every rule's conditions with their verdicts.
    #[arg(long)]
    explain: bool,
    /// The webhook source the event comes from (default: the first one mounted).
    #[arg(long)]
    source: Option<String>,
    /// Read rule memory and silences from this store (without changing it); without it every
    /// key starts empty.
    #[arg(long = "store", value_name = "URL")]
    store: Option<String>,
}

/// Validates the configuration and prints every problem.
pub(super) fn check(args: &ConfigArgs) -> ExitCode {
    match config::load(&args.paths(), &Sources::default()) {
        Ok(config) => {
            for w in config.warnings.iter() {
                println!("{}", w.to_string().replacen(": ", ": warning: ", 1));
            }
            println!(
                "ok: {} rule(s) in {} file(s), {} template file(s); config hash {}",
                config.rules.rules().len(),
                config.files.len(),
                config.templates.file_names().count(),
                short_hash(&config.hash)
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors.iter() {
                println!("{e}");
            }
            println!("{} problem(s) found", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Shows what an event would match and exactly what would be sent, sending nothing.
pub(super) fn test(args: &TestArgs) -> ExitCode {
    let payload = match read_event(&args.event) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("switchboard test: {message}");
            return ExitCode::FAILURE;
        }
    };
    let sources = Sources::default();
    let source = match &args.source {
        Some(name) => sources.get(name),
        None => sources.iter().next(),
    };
    let Some(source) = source else {
        let known = sources.names().join(", ");
        let name = args.source.as_deref().unwrap_or_default();
        eprintln!("switchboard test: unknown source {name:?}; known: {known}");
        return ExitCode::FAILURE;
    };
    let config = match config::load(&args.config.paths(), &sources) {
        Ok(c) => c,
        Err(errors) => {
            super::print_problems(&errors);
            eprintln!(
                "switchboard test: the configuration has {} problem(s)",
                errors.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut event = source.normalise(payload);
    event.event_id = "test".into();
    let event = event.into_value();
    let config = Arc::new(config);
    let report = super::block_on(async {
        let store = match &args.store {
            Some(url) => Some(StoreArgs { url: url.clone() }.open_to_read().await?),
            None => None,
        };
        explain::run(&config, event, store.as_ref()).await
    });
    match report {
        Ok(report) => {
            print!("{}", report.to_text(args.explain));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard test: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_event(path: &PathBuf) -> Result<serde_json::Map<String, Value>, String> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!(
            "{}: the event must be a JSON object",
            path.display()
        )),
        Err(e) => Err(format!(
            "{}:{}:{}: not valid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )),
    }
}
