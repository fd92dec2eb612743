//! `check` and `test`: the configuration validated, and an event run through it dry.

use super::explain::{dry_run, outcome};
use super::{ConfigArgs, StoreArgs};
use crate::app::short_hash;
use crate::config;
use crate::event::Sources;
use crate::rules::Verdict as Holds;
use crate::store::memory::Verdict;
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
    let run = super::block_on(async {
        let store = match &args.store {
            Some(url) => Some(StoreArgs { url: url.clone() }.open_to_read().await?),
            None => None,
        };
        dry_run(&config, event, store.as_ref()).await
    });
    let run = match run {
        Ok(run) => run,
        Err(e) => {
            eprintln!("switchboard test: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", describe_event(&run.event));
    // Each matched rule's deliveries among the event's.
    let mut ranges = std::collections::HashMap::new();
    let mut at = 0;
    for &i in &run.plan.matched {
        let n = config.rules.get(i).actions.len();
        ranges.insert(i, at..at + n);
        at += n;
    }
    if args.explain {
        println!("\nRules:");
        // The conditions read the event as the store would keep it (an open's count filled).
        for (i, verdict) in config.rules.explain(&run.event) {
            let rule = config.rules.get(i);
            let Some(v) = verdict else {
                match rule.enabled {
                    false => println!("  - {} (disabled)", rule.name),
                    true => println!(
                        "  - {} (not evaluated: an earlier rule stopped evaluation)",
                        rule.name
                    ),
                }
                continue;
            };
            let matched = ranges.get(&i).is_some_and(|r| {
                run.verdicts[r.clone()]
                    .iter()
                    .any(|v| *v != Verdict::Unmatched)
            });
            let stop = if matched && rule.stop { ", stop" } else { "" };
            println!("  {} {}{stop}", if matched { "✓" } else { "✗" }, rule.name);
            print_verdict(&v, 2);
            for m in run.plan.missing.iter().filter(|m| m.rule == rule.name) {
                let why = m.error.as_deref().unwrap_or("it renders empty");
                println!("    a key does not render ({why}): the event goes through undecided");
            }
            for (_, note) in run.notes.iter().filter(|(r, _)| *r == i) {
                println!("    {note}");
            }
        }
    }
    let matched: Vec<usize> = run
        .plan
        .matched
        .iter()
        .copied()
        .filter(|i| {
            run.verdicts[ranges[i].clone()]
                .iter()
                .any(|v| *v != Verdict::Unmatched)
        })
        .collect();
    println!(
        "\nMatched {} rule(s){}",
        matched.len(),
        if matched.is_empty() { "." } else { ":" }
    );
    for i in matched {
        let rule = config.rules.get(i);
        println!("\n== rule {} ==", rule.name);
        for (n, step) in rule.actions.iter().enumerate() {
            let at = ranges[&i].start + n;
            let action = &step.action;
            println!(
                "\n-- action {} ({}): {} --",
                n + 1,
                action.kind(),
                outcome(run.verdicts[at])
            );
            if let Some(vars) = action.unconfigured() {
                println!("(would be skipped: the destination is not configured; set {vars})");
            }
            match action.render(&run.event_for(at), &config.templates) {
                Ok(message) => println!("{}", message.describe().trim_end()),
                Err(e) => println!("(would fail: {e})"),
            }
        }
    }
    println!("\nNothing was sent (dry run).");
    ExitCode::SUCCESS
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

fn describe_event(e: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "Event: {} (sent as {}) at {}\nCampaign: {} ({})\nLead: {} <{}>\n",
        s(&e["event"]),
        s(&e["source_event"]),
        s(&e["timestamp"]),
        s(&e["campaign"]["name"]),
        s(&e["campaign"]["id"]),
        s(&e["lead"]["name"]),
        s(&e["lead"]["email"]),
    )
}

fn print_verdict(v: &Holds, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}{} {}", if v.holds { "✓" } else { "✗" }, v.what);
    for p in &v.parts {
        print_verdict(p, depth + 1);
    }
}
