//! `check` and `test`: the configuration validated, and an event run through it dry.

use super::ConfigArgs;
use crate::app::short_hash;
use crate::config;
use crate::config::Config;
use crate::event::Sources;
use crate::rules::{Once, Verdict};
use crate::template::{Data, Template};
use clap::Args;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

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
    print!("{}", describe_event(&event));
    if args.explain {
        println!("\nRules:");
        for (i, verdict) in config.rules.explain(&event) {
            let rule = config.rules.get(i);
            match verdict {
                None if !rule.enabled => println!("  - {} (disabled)", rule.name),
                None => println!(
                    "  - {} (not evaluated: an earlier rule stopped evaluation)",
                    rule.name
                ),
                Some(v) => {
                    let stop = if v.holds && rule.stop { ", stop" } else { "" };
                    println!("  {} {}{stop}", if v.holds { "✓" } else { "✗" }, rule.name);
                    print_verdict(&v, 2);
                    if v.holds
                        && let Some(clause) = &rule.unless_seen
                    {
                        let key = explain_key(&clause.same, &config, &event);
                        let within = humantime::format_duration(clause.within);
                        let events = clause.events.join(", ");
                        println!(
                            "    unless_seen: {key}; stops the rule if an event of {events} with it was accepted in the last {within}"
                        );
                    }
                    if v.holds
                        && let Some(once) = &rule.once
                    {
                        println!("    {}", explain_once(once, &config, &event));
                    }
                    if v.holds
                        && let Some(t) = &rule.throttle
                    {
                        let key = explain_key(&t.key, &config, &event);
                        let per = humantime::format_duration(t.per);
                        let kind = if t.rolling { "rolling" } else { "fixed" };
                        println!(
                            "    throttle: {key}; at most {} per {per} ({kind} window)",
                            t.limit
                        );
                    }
                }
            }
        }
    }
    let matched = config.rules.matching(&event);
    println!(
        "\nMatched {} rule(s){}",
        matched.len(),
        if matched.is_empty() { "." } else { ":" }
    );
    for i in matched {
        let rule = config.rules.get(i);
        println!("\n== rule {} ==", rule.name);
        for (n, step) in rule.actions.iter().enumerate() {
            let action = &step.action;
            println!("\n-- action {} ({}) --", n + 1, action.kind());
            if let Some(vars) = action.unconfigured() {
                println!("(would be skipped: the destination is not configured; set {vars})");
            }
            match action.render(&event, &config.templates) {
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

/// What `once` would decide, with no state (every key starts free in a dry run).
fn explain_once(once: &Once, config: &Config, event: &Value) -> String {
    let hold = match once.hold {
        Some(h) => format!("for {}", humantime::format_duration(h)),
        None => "for ever".to_string(),
    };
    let key = explain_key(&once.key, config, event);
    format!("once: {key}; fires if no other event took it (then it stays taken {hold})")
}

/// A key as a dry run renders it (the event goes through undecided when it renders empty).
fn explain_key(key: &Template, config: &Config, event: &Value) -> String {
    match config.templates.render(key, &Data::new(event)) {
        Ok(key) if key.chars().any(char::is_alphanumeric) => format!("key {key:?}"),
        Ok(_) => "the key renders empty (the event goes through undecided)".to_string(),
        Err(e) => format!("the key does not render ({e}; the event goes through undecided)"),
    }
}

fn print_verdict(v: &Verdict, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}{} {}", if v.holds { "✓" } else { "✗" }, v.what);
    for p in &v.parts {
        print_verdict(p, depth + 1);
    }
}
