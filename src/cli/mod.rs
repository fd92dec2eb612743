//! The command line: `serve`, `check`, `test`, `dlq`, `deliveries` and `silence`. Arguments
//! are parsed by clap (flags win over their environment variables); each command returns an
//! exit code, and `main` maps it to the process's.

mod history;
mod serve;
mod silence;
mod test;

use crate::config::ConfigPaths;
use crate::diagnostic::Diagnostics;
use crate::store::{self, Store};
use clap::{Args, Parser, Subcommand, ValueEnum};
use history::{DeliveriesArgs, DlqArgs};
use serve::ServeArgs;
use silence::SilenceArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use test::TestArgs;

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
    /// Silences: add, list or expire (the router may be running or stopped).
    Silence(SilenceArgs),
}

/// Where the configuration lives.
#[derive(Debug, Args)]
pub(super) struct ConfigArgs {
    /// Rules file, or a directory of *.yaml files.
    #[arg(long, env = "SWITCHBOARD_RULES", default_value = "rules/rules.yaml")]
    rules: PathBuf,
    /// Templates directory.
    #[arg(long, env = "SWITCHBOARD_TEMPLATES", default_value = "templates")]
    templates: PathBuf,
}

impl ConfigArgs {
    fn paths(&self) -> ConfigPaths {
        ConfigPaths {
            rules: self.rules.clone(),
            templates: self.templates.clone(),
        }
    }
}

/// The delivery store.
#[derive(Debug, Args)]
pub(super) struct StoreArgs {
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
        self.open_existing_with(&store::Options::default()).await
    }

    /// Opens an existing store only to read it: its schema is left as it is.
    async fn open_to_read(&self) -> Result<Store, String> {
        let options = store::Options {
            migrate: false,
            ..store::Options::default()
        };
        self.open_existing_with(&options).await
    }

    async fn open_existing_with(&self, options: &store::Options) -> Result<Store, String> {
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if !std::path::Path::new(path).exists() {
                return Err(format!(
                    "no store at {path}: start the router first, or name it with --store or SWITCHBOARD_STORE"
                ));
            }
        }
        Store::open_with(&self.url, options)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it writes out the log lines still queued.
    let _logs = init_logging(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Check(args) => test::check(&args),
        Command::Test(args) => test::test(&args),
        Command::Dlq(args) => block_on(history::dlq(args)),
        Command::Deliveries(args) => block_on(history::deliveries(args)),
        Command::Silence(args) => block_on(silence::silence(args)),
    }
}

/// Log lines queued for the writer thread at most (see [`init_logging`]).
const LOG_QUEUE_LINES: usize = 16_384;

/// Logs go to stderr through a writer thread: a request formats its line and moves on, and the
/// thread writes whatever has queued up in one go (one syscall for many lines under load). The
/// queue blocks rather than drops when full, so no line is lost; the returned guard writes out
/// the rest when the command ends.
///
/// The queue is allocated whole at start, 32 bytes a line: the default of 128,000 lines took
/// 4 MiB of the resident set for a backlog the writer never builds; [`LOG_QUEUE_LINES`] is
/// about a second of lines at full load.
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
        .buffered_lines_limit(LOG_QUEUE_LINES)
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

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(f)
}
