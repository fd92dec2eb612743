//! The command line: `serve`, `check` and `test` (SPEC section 2). Arguments are parsed by clap
//! (flags win over their environment variables); each command returns an exit code.

use crate::actions::Clients;
use crate::app::{App, short_hash};
use crate::config::{self, Diagnostics, Sources};
use crate::delivery::{self, RetryPolicy};
use crate::event;
use crate::rules::Verdict;
use crate::server::{self, Guard, State};
use crate::store::{DeliveryView, Filter, Store};
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
    /// Log level or filter (`debug`, `info,switchboard=debug`); wins over RUST_LOG.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_LEVEL")]
    log_level: Option<String>,
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
    /// Dead letters: list, retry or discard (the router may be running or stopped).
    Dlq(DlqArgs),
    /// Delivery history, newest first.
    Deliveries(DeliveriesArgs),
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
    #[command(flatten)]
    store: StoreArgs,
    /// Delays between attempts of a failed delivery (the last one repeats).
    #[arg(long, env = "SWITCHBOARD_RETRY_SCHEDULE", default_value = "1s,5s,30s,2m,10m,30m,2h", value_parser = RetryPolicy::parse_schedule)]
    retry_schedule: std::vec::Vec<Duration>,
    /// Attempts per delivery, the first included, before it becomes a dead letter.
    #[arg(long, env = "SWITCHBOARD_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Sends in flight at once.
    #[arg(long, env = "SWITCHBOARD_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// Sends in flight to one destination at once.
    #[arg(long, env = "SWITCHBOARD_PER_DESTINATION", default_value_t = 4)]
    per_destination: usize,
    /// How long delivered history is kept (dead letters stay until retried or discarded).
    #[arg(long, env = "SWITCHBOARD_HISTORY", default_value = "7d", value_parser = humantime::parse_duration)]
    history: Duration,
    /// Listen beyond loopback even though no webhook authentication is configured.
    #[arg(long)]
    insecure: bool,
    /// Failed webhook requests (bad credentials or bodies) allowed per client per second
    /// before it is answered 429; 0 turns limiting off.
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT", default_value_t = 10)]
    rate_limit: u32,
    /// Burst of failed requests allowed per client.
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT_BURST", default_value_t = 50)]
    rate_limit_burst: u32,
    /// With PostgreSQL: how long a claimed delivery stays with an instance that stops renewing it
    /// (an instance that died); other instances take it over after this. With SQLite: a
    /// delivery whose send did not finish (a failure inside the router) is sent again once this
    /// has passed since it was claimed (and a heartbeat, a quarter of it, has come).
    #[arg(long, env = "SWITCHBOARD_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// `/readyz` answers 503 while more deliveries than this are pending.
    #[arg(long, env = "SWITCHBOARD_READY_MAX_PENDING", default_value_t = 100_000)]
    ready_max_pending: u64,
    /// How long shutdown waits for deliveries in flight.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

/// The delivery store.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Delivery store: sqlite://PATH (created on start), or sqlite::memory: to keep nothing.
    #[arg(
        long = "store",
        global = true,
        env = "SWITCHBOARD_STORE",
        default_value = "sqlite://switchboard.db"
    )]
    url: String,
}

impl StoreArgs {
    /// Opens an existing store (for the history and dead-letter commands).
    async fn open_existing(&self) -> Result<Store, String> {
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if !std::path::Path::new(path).exists() {
                return Err(format!(
                    "no store at {path}: start the router first, or name it with --store or SWITCHBOARD_STORE"
                ));
            }
        }
        Store::open(&self.url).await.map_err(|e| e.to_string())
    }
}

#[derive(Debug, Args)]
struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters with their attempts.
    List,
    /// Send one dead letter (or all of them) again.
    Retry {
        /// The dead letter's id.
        #[arg(required_unless_present = "all")]
        id: Option<i64>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Drop a dead letter for good.
    Discard {
        /// The dead letter's id.
        id: i64,
    },
}

#[derive(Debug, Args)]
struct DeliveriesArgs {
    /// Only this status: pending, sending, delivered, dead, discarded, skipped.
    #[arg(long, value_parser = ["pending", "sending", "delivered", "dead", "discarded", "skipped"])]
    status: Option<String>,
    /// Only this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Only this lead (email).
    #[arg(long)]
    lead: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
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
    // Held to the end: dropping it writes out the log lines still queued.
    let _logs = init_logging(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
        Command::Test(args) => test(&args),
        Command::Dlq(args) => block_on(dlq(args)),
        Command::Deliveries(args) => block_on(deliveries(args)),
    }
}

/// Logs go to stderr through a writer thread: a request formats its line and moves on, and the
/// thread writes whatever has queued up in one go (one syscall for many lines under load). The
/// queue blocks rather than drops when full, so no line is lost; the returned guard writes out
/// the rest when the command ends.
fn init_logging(
    format: LogFormat,
    level: Option<&str>,
) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("switchboard-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

fn print_problems(errors: &Diagnostics) {
    for e in errors.iter() {
        eprintln!("{e}");
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let delivery_runtime = delivery::runtime().expect("the delivery runtime starts");
    let delivery_handle = delivery_runtime.handle().clone();
    let code = runtime.block_on(async move {
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
        let open = app.current().open_sources();
        if !args.listen.ip().is_loopback() && !open.is_empty() && !args.insecure {
            eprintln!(
                "switchboard: refusing to listen on {} with no authentication for /webhooks/{}: anyone who finds the URL could post fake replies into your channels.\n\
                 Configure `sources: {{ {}: {{ secret_key: ${{SMARTLEAD_SECRET_KEY}} }} }}` (or token, hmac_secret, allow_ips) in the rules file, or pass --insecure to accept that risk. See SECURITY.md.",
                args.listen,
                open.join(", /webhooks/"),
                open[0]
            );
            return ExitCode::FAILURE;
        }
        if !args.listen.ip().is_loopback() && !args.insecure {
            app.require_credentials(args.listen);
        }
        let admin_token = std::env::var("SWITCHBOARD_ADMIN_TOKEN").ok();
        if !args.listen.ip().is_loopback() && admin_token.as_deref().is_none_or(str::is_empty) {
            tracing::warn!("SWITCHBOARD_ADMIN_TOKEN is not set: /-/reload and /api/ are refused to every caller (the router listens beyond loopback).");
        }
        let options = crate::store::Options { lease: args.lease.max(Duration::from_secs(1)) };
        let store = match Store::open_with(&args.store.url, &options).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("switchboard: cannot open the store {}: {e}", args.store.url);
                return ExitCode::FAILURE;
            }
        };
        let config = app.current();
        for w in config.warnings.iter() {
            tracing::warn!("{w}");
        }
        let settings = delivery::Settings {
            concurrency: args.concurrency.max(1),
            per_destination: args.per_destination.max(1),
            retry: RetryPolicy { schedule: args.retry_schedule, max_attempts: args.max_attempts, ..RetryPolicy::default() },
            history: args.history,
            heartbeat: (args.lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)),
            listen: listener.local_addr().unwrap_or(args.listen).to_string(),
            runtime: store.runtime_free().then_some(delivery_handle),
            ..delivery::Settings::default()
        };
        let workers = delivery::start(app.clone(), store.clone(), Clients::new(), settings);
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
        let bound = listener.local_addr().unwrap_or(args.listen);
        tracing::info!(
            listen = %bound,
            rules = config.rules.rules().len(),
            hash = %short_hash(&config.hash),
            store = %args.store.url,
            "switchboard is listening: POST events to http://{bound}/webhooks/smartlead"
        );
        drop(config);
        let guard = Arc::new(Guard::new(args.listen, admin_token, args.rate_limit, args.rate_limit_burst));
        let state = State {
            app,
            store,
            committer: workers.committer(),
            handoff: workers.handoff(),
            sources: Arc::new(event::sources()),
            guard,
            ready_max_pending: args.ready_max_pending,
        };
        server::serve(listener, state, shutdown_signal()).await;
        tracing::info!("Stopped accepting events; finishing deliveries in flight.");
        if !workers.shutdown(args.shutdown_grace).await {
            tracing::warn!("Some deliveries did not finish in time; they are kept and resume at the next start.");
        }
        ExitCode::SUCCESS
    });
    // Sends still running past the grace period are abandoned; they resume at the next start.
    delivery_runtime.shutdown_timeout(Duration::from_millis(100));
    code
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
    let mut event = source.normalise(payload);
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

fn print_verdict(v: &Verdict, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}{} {}", if v.holds { "✓" } else { "✗" }, v.what);
    for p in &v.parts {
        print_verdict(p, depth + 1);
    }
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(f)
}

async fn dlq(args: DlqArgs) -> ExitCode {
    let store = match args.store.open_existing().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard dlq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result =
        match args.command {
            DlqCommand::List => {
                let filter = Filter {
                    status: Some("dead".into()),
                    limit: Some(1000),
                    with_history: true,
                    ..Filter::default()
                };
                store.list(&filter).await.map(|list| {
                    if list.is_empty() {
                        println!("No dead letters.");
                    }
                    print_deliveries(&list, true);
                })
            }
            DlqCommand::Retry { id, all } => store
                .retry_dead(if all { None } else { id })
                .await
                .map(|n| match (n, id) {
                    (0, Some(id)) if !all => println!("No dead letter with id {id}."),
                    (n, _) => println!(
                        "Requeued {n} dead letter(s); a running router sends them within a second."
                    ),
                }),
            DlqCommand::Discard { id } => store.discard(id).await.map(|found| {
                if found {
                    println!("Discarded dead letter {id}.");
                } else {
                    println!("No dead letter with id {id}.");
                }
            }),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard dlq: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn deliveries(args: DeliveriesArgs) -> ExitCode {
    let store = match args.store.open_existing().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard deliveries: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = Filter {
        status: args.status,
        rule: args.rule,
        lead: args.lead,
        limit: Some(args.limit),
        with_history: args.json,
    };
    match store.list(&filter).await {
        Ok(list) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(list) => {
            print_deliveries(&list, false);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard deliveries: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_deliveries(list: &[DeliveryView], history: bool) {
    if list.is_empty() {
        return;
    }
    println!(
        "{:<6} {:<10} {:<9} {:<24} {:<18} {:<28} {:>3}  LAST ERROR",
        "ID", "STATUS", "ACTION", "RULE", "EVENT", "LEAD", "TRY"
    );
    for d in list {
        println!(
            "{:<6} {:<10} {:<9} {:<24} {:<18} {:<28} {:>3}  {}",
            d.id,
            d.status,
            d.action,
            d.rule,
            d.event_type,
            d.lead_email.as_deref().unwrap_or("-"),
            d.attempts,
            d.last_error.as_deref().unwrap_or("")
        );
        if history {
            for a in &d.history {
                let code = a.status_code.map(|c| format!(" {c}")).unwrap_or_default();
                println!(
                    "         {} {}{code} ({} ms) {}",
                    a.at,
                    a.outcome,
                    a.duration_ms,
                    a.error.as_deref().unwrap_or("")
                );
            }
        }
    }
}
