//! `serve`: the flags, turned into the router's [`Options`], and the signals that stop it.

use crate::delivery::{self, RetryPolicy};
use crate::router::{self, Options, StartError};
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// `serve`'s flags.
#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    config: super::ConfigArgs,
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    store: super::StoreArgs,
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
    /// A name (besides 127.0.0.1, localhost and [::1]) the admin API answers to when it runs
    /// without SWITCHBOARD_ADMIN_TOKEN; repeat it, or separate names with commas.
    #[arg(
        long = "allowed-host",
        env = "SWITCHBOARD_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
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
    /// How long one send may take in all (connect, greeting, commands, body, answer) before
    /// it is abandoned and retried later.
    #[arg(long, env = "SWITCHBOARD_SEND_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    send_deadline: Duration,
    /// How long a webhook waits for its commit before it is answered 503 with Retry-After
    /// (SmartLead gives up at 30 s); also how long a write may take before /readyz says stalled.
    #[arg(long, env = "SWITCHBOARD_ANSWER_DEADLINE", default_value = "20s", value_parser = humantime::parse_duration)]
    answer_deadline: Duration,
    /// Connections open at once, in all (keep it under the open-files limit, `ulimit -n`).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 1000)]
    max_connections: usize,
    /// Connections open at once from one client address (behind a reverse proxy, every client
    /// is the proxy: raise it there).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 100
    )]
    max_connections_per_client: usize,
    /// How long a connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Serve the web console at /console (same access as /api: the admin token, or loopback).
    #[arg(long, env = "SWITCHBOARD_CONSOLE", default_value = "on", value_parser = ["on", "off"])]
    console: String,
}

impl ServeArgs {
    fn options(self) -> Options {
        let mut options = Options::new(self.config.paths(), self.store.url);
        options.lease = self.lease;
        options.delivery = delivery::Settings {
            concurrency: self.concurrency,
            per_destination: self.per_destination,
            retry: RetryPolicy {
                schedule: self.retry_schedule,
                max_attempts: self.max_attempts,
                ..RetryPolicy::default()
            },
            history: self.history,
            send_deadline: self.send_deadline,
            ..delivery::Settings::default()
        };
        options.insecure = self.insecure;
        options.admin_token = std::env::var("SWITCHBOARD_ADMIN_TOKEN").ok();
        options.allowed_hosts = self.allowed_hosts;
        options.rate_limit = self.rate_limit;
        options.rate_limit_burst = self.rate_limit_burst;
        options.ready_max_pending = self.ready_max_pending;
        options.shutdown_grace = self.shutdown_grace;
        options.console = self.console == "on";
        options.answer_deadline = self.answer_deadline;
        options.limits = crate::server::connections::Limits {
            max_connections: self.max_connections.max(1),
            max_per_client: self.max_connections_per_client.max(1),
            header_deadline: self.idle_timeout,
            ..crate::server::connections::Limits::default()
        };
        options
    }
}

/// Runs the router until SIGTERM or Ctrl-C.
pub(super) fn serve(args: ServeArgs) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    runtime.block_on(async move {
        let listen = args.listen;
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "switchboard: cannot listen on {listen}: {e} (set --listen or SWITCHBOARD_LISTEN)"
                );
                return ExitCode::FAILURE;
            }
        };
        match router::run(args.options(), listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(StartError::Config(errors)) => {
                super::print_problems(&errors);
                eprintln!(
                    "switchboard: the configuration has {} problem(s); not starting (run `switchboard check`)",
                    errors.len()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("switchboard: {e}");
                ExitCode::FAILURE
            }
        }
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
