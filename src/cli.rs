//! The command line: `serve`, `check` and `test` (SPEC section 2). Arguments are parsed by clap
//! (flags win over their environment variables); each command returns an exit code.

use crate::actions::Clients;
use crate::app::{App, short_hash};
use crate::config::{self, Diagnostics, Sources};
use crate::delivery::{self, Limits};
use crate::event;
use crate::rules::Verdict;
use crate::server::{self, State};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// switchboard: routes SmartLead webhook events to Slack, email and HTTP by rules you write.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive webhooks and deliver notifications.
    Serve(ServeArgs),
    /// Validate the rules and templates; print every problem as PATH:LINE:COL: message.
    Check(ConfigArgs),
    /// Dry run: show which rules an event matches and exactly what would be sent.
    Test(TestArgs),
}

/// Where the configuration lives.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Rules file, or a directory of *.yaml files.
    #[arg(long, env = "SWITCHBOARD_RULES", default_value = "rules/rules.yaml")]
    rules: PathBuf,
    /// Templates directory.
    #[arg(long, env = "SWITCHBOARD_TEMPLATES", default_value = "templates")]
    templates: PathBuf,
}

impl ConfigArgs {
    fn sources(&self) -> Sources {
        Sources {
            rules: self.rules.clone(),
            templates: self.templates.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Delivery store (durable delivery arrives with the store; today deliveries are in memory).
    #[arg(
        long,
        env = "SWITCHBOARD_STORE",
        default_value = "sqlite://switchboard.db"
    )]
    store: String,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The event: a JSON file, or - for standard input.
    #[arg(long)]
    event: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
    /// Also print every rule's conditions with their verdicts.
    #[arg(long)]
    explain: bool,
    /// The webhook source the event comes from.
    #[arg(long, default_value = "smartlead")]
    source: String,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
        Command::Test(args) => test(&args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_problems(errors: &Diagnostics) {
    for e in errors.iter() {
        eprintln!("{e}");
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    runtime.block_on(async move {
        let app = match App::load(args.config.sources()) {
            Ok(app) => app,
            Err(errors) => {
                print_problems(&errors);
                eprintln!("switchboard: the configuration has {} problem(s); not starting (run `switchboard check`)", errors.len());
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("switchboard: cannot listen on {}: {e} (set --listen or SWITCHBOARD_LISTEN)", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let config = app.current();
        for w in config.warnings.iter() {
            tracing::warn!("{w}");
        }
        let (queue, workers) = delivery::start(app.clone(), Clients::new(), Limits::default());
        let _watch = match config::watch::watch(app.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot watch the rules for changes; reload with SIGHUP or POST /-/reload.");
                None
            }
        };
        if let Err(e) = config::watch::reload_on_sighup(app.clone()) {
            tracing::warn!(error = %e, "Cannot handle SIGHUP.");
        }
        tracing::info!(
            listen = %args.listen,
            rules = config.rules.rules().len(),
            hash = %short_hash(&config.hash),
            "switchboard is listening: POST events to http://{}/webhooks/smartlead", args.listen
        );
        drop(config);
        let state = State { app, queue, sources: Arc::new(event::sources()) };
        server::serve(listener, state, shutdown_signal()).await;
        tracing::info!("Stopped accepting events; finishing queued deliveries.");
        if !workers.shutdown(Duration::from_secs(10)).await {
            tracing::warn!("Some deliveries did not finish within 10 s of shutdown.");
        }
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn check(args: &ConfigArgs) -> ExitCode {
    match config::load(&args.sources()) {
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

fn test(args: &TestArgs) -> ExitCode {
    let payload = match read_event(&args.event) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("switchboard test: {message}");
            return ExitCode::FAILURE;
        }
    };
    let sources = event::sources();
    let Some(source) = sources.iter().find(|s| s.name() == args.source) else {
        eprintln!("switchboard test: unknown source {:?}", args.source);
        return ExitCode::FAILURE;
    };
    let config = match config::load(&args.config.sources()) {
        Ok(c) => c,
        Err(errors) => {
            print_problems(&errors);
            eprintln!(
                "switchboard test: the configuration has {} problem(s)",
                errors.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut event = source.normalise(&payload);
    event["event_id"] = Value::String("test".into());
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
        for (n, action) in rule.actions.iter().enumerate() {
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

fn print_verdict(v: &Verdict, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}{} {}", if v.holds { "✓" } else { "✗" }, v.what);
    for p in &v.parts {
        print_verdict(p, depth + 1);
    }
}
