//! The composition root: the whole router (configuration, store, delivery workers, reload
//! triggers, HTTP server) built from [`Options`] and served on a listener until a shutdown
//! future resolves. The command line and the integration tests both start it through [`run`],
//! so what the tests exercise is what `serve` runs.

use crate::actions::Clients;
use crate::app::{App, short_hash, watch};
use crate::config::ConfigPaths;
use crate::credentials::{ListenerPolicy, OpenSources};
use crate::delivery;
use crate::diagnostic::Diagnostics;
use crate::event::Sources;
use crate::server::{self, AdminAccess, BadHostName, Limiter, ProbeCounts, State};
use crate::silence;
use crate::store::{self, Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Everything `serve` is told: where the configuration and the store are, how deliveries are
/// made, who may use the admin endpoints. (No `Debug`: it holds the admin token.)
#[derive(Clone)]
pub struct Options {
    /// The rules and templates.
    pub config: ConfigPaths,
    /// The webhook sources mounted at `/webhooks/{name}`.
    pub sources: Sources,
    /// The store's URL (`sqlite://PATH`, `sqlite::memory:`, `postgres://…`).
    pub store: String,
    /// How long a claimed delivery stays with an instance that stopped renewing it
    /// (PostgreSQL), or stays `sending` without being sent (SQLite). At least 1 s.
    pub lease: Duration,
    /// The delivery workers' limits, retry policy and history.
    pub delivery: delivery::Settings,
    /// Serve sources that ask for no credential on a listener beyond loopback.
    pub insecure: bool,
    /// The token the admin endpoints ask for (`SWITCHBOARD_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Names besides the loopback ones that the admin endpoints answer to when they are open
    /// without a token (`--allowed-host`).
    pub allowed_hosts: Vec<String>,
    /// Failed webhook requests allowed per client per second (0: no limit).
    pub rate_limit: u32,
    /// The burst of failed webhook requests allowed per client.
    pub rate_limit_burst: u32,
    /// `/readyz` answers 503 past this many pending deliveries.
    pub ready_max_pending: u64,
    /// How long shutdown waits for the sends in flight.
    pub shutdown_grace: Duration,
    /// How long `/readyz` and `/metrics` reuse the delivery counts they read from the store.
    pub probe_interval: Duration,
    /// Serve the web console at `/console` (`--console on|off`).
    pub console: bool,
    /// How long a webhook waits for its commit before it is answered 503 (and how long a write
    /// may be under way before `/readyz` reports the store stalled).
    pub answer_deadline: Duration,
    /// The listener's limits: connections in all and per client, header and request deadlines.
    pub limits: server::connections::Limits,
}

impl Options {
    /// The defaults of `serve` for a configuration and a store.
    pub fn new(config: ConfigPaths, store: impl Into<String>) -> Self {
        Options {
            config,
            sources: Sources::default(),
            store: store.into(),
            lease: Duration::from_secs(30),
            delivery: delivery::Settings::default(),
            insecure: false,
            admin_token: None,
            allowed_hosts: Vec::new(),
            rate_limit: 10,
            rate_limit_burst: 50,
            ready_max_pending: 100_000,
            shutdown_grace: Duration::from_secs(10),
            probe_interval: Duration::from_secs(1),
            console: true,
            answer_deadline: Duration::from_secs(20),
            limits: server::connections::Limits::default(),
        }
    }
}

/// Why the router did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration has problems (every one of them).
    #[error("the configuration has {n} problem(s):\n{0}", n = .0.len())]
    Config(Diagnostics),
    /// A source asks for no credential on a listener beyond loopback.
    #[error("refusing to listen on {listen}: {reason}", listen = .0.listen, reason = .0.reason())]
    OpenSources(OpenSources),
    /// The store cannot be opened.
    #[error("cannot open the store {url}: {error}")]
    Store {
        /// The store's URL.
        url: String,
        /// What went wrong.
        error: StoreError,
    },
    /// The listener has no local address.
    #[error("the listener has no address: {0}")]
    Listener(std::io::Error),
    /// An `--allowed-host` that is not a name.
    #[error(transparent)]
    AllowedHost(BadHostName),
    /// `SWITCHBOARD_ADMIN_TOKEN` is set but empty: the operator meant a token and has none.
    #[error(
        "SWITCHBOARD_ADMIN_TOKEN is set but empty: set it to a token (it guards /-/reload, /api and the console) or unset it"
    )]
    EmptyAdminToken,
    /// The workers' runtime cannot start (no threads).
    #[error("cannot start the delivery workers' threads: {0}")]
    Runtime(std::io::Error),
}

/// Runs the router on `listener` until `shutdown` resolves, then stops accepting requests,
/// finishes those in progress and gives the sends in flight `shutdown_grace` to finish
/// (whatever has not finished stays in the store for the next start).
pub async fn run(
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listen = listener.local_addr().map_err(StartError::Listener)?;
    // An empty token would leave the admin API as open as no token at all, silently.
    if options
        .admin_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err(StartError::EmptyAdminToken);
    }
    let policy = ListenerPolicy::new(listen, options.insecure);
    let app = App::load(options.config.clone(), options.sources.clone(), policy)
        .map_err(StartError::Config)?;
    let config = app.current();
    policy
        .check(&config.open_sources())
        .map_err(StartError::OpenSources)?;
    let access = AdminAccess::new(listen, options.admin_token.clone(), &options.allowed_hosts)
        .map_err(StartError::AllowedHost)?;
    if !options.allowed_hosts.is_empty() && !access.uses_allowed_hosts() {
        tracing::warn!(
            "--allowed-host has no effect: the admin API asks for SWITCHBOARD_ADMIN_TOKEN (or is off beyond loopback), whatever the name."
        );
    }
    if access.closed() {
        tracing::warn!(
            "SWITCHBOARD_ADMIN_TOKEN is not set: /-/reload and /api/ are refused to every caller (the router listens beyond loopback)."
        );
    }
    let store_options = store::Options {
        lease: options.lease.max(Duration::from_secs(1)),
        migrate: true,
    };
    let store = Store::open_with(&options.store, &store_options)
        .await
        .map_err(|error| StartError::Store {
            url: options.store.clone(),
            error,
        })?;
    for w in config.warnings.iter() {
        tracing::warn!("{w}");
    }
    // The workers run on a runtime of their own when the store allows it (see
    // `delivery::runtime`); a PostgreSQL connection belongs to the runtime that opened it.
    let mut runtime = WorkersRuntime(match store.runtime_free() {
        true => Some(delivery::runtime().map_err(StartError::Runtime)?),
        false => None,
    });
    let settings = delivery::Settings {
        heartbeat: heartbeat(options.lease, options.delivery.heartbeat),
        listen: listen.to_string(),
        runtime: runtime.0.as_ref().map(|r| r.handle().clone()),
        ..options.delivery.clone()
    };
    if let Err(e) = app.silences.refresh(&store).await {
        tracing::warn!(error = %e, "Cannot read the silences; trying again in a second.");
    }
    let silences = tokio::spawn(refresh_silences(app.clone(), store.clone()));
    // Every configuration that matches events is kept in the store before it serves long.
    let _ = app.archive.set(store.clone());
    if let Err(e) = app.archive_current().await {
        tracing::warn!(error = %e, "Cannot keep the configuration in the store; trying again.");
    }
    let archiver = tokio::spawn(archive_configs(app.clone()));
    let clients = Clients {
        deadline: settings.send_deadline,
        ..Clients::new()
    };
    let workers = delivery::start(app.clone(), store.clone(), clients, settings);
    let _watch = watch::watch(app.clone())
        .inspect_err(|e| tracing::warn!(error = %e, "Cannot watch the rules for changes; reload with SIGHUP or POST /-/reload."))
        .ok();
    let sighup = watch::reload_on_sighup(app.clone())
        .inspect_err(|e| tracing::warn!(error = %e, "Cannot handle SIGHUP."))
        .ok();
    announce(listen, &app, &options.store);
    drop(config);
    let console = options
        .console
        .then(|| server::console::Console::new(&access));
    let state = State {
        app,
        store,
        committer: workers.committer(),
        handoff: workers.handoff(),
        access,
        limiter: Limiter::new(options.rate_limit, options.rate_limit_burst),
        probes: ProbeCounts::new(options.probe_interval),
        ready_max_pending: options.ready_max_pending,
        answer_deadline: options.answer_deadline,
        intakes: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_INTAKES)),
        limits: server::connections::Limits {
            // A webhook may wait its answer deadline for the commit after its body came.
            request_deadline: options
                .limits
                .request_deadline
                .max(options.answer_deadline + Duration::from_secs(1)),
            ..options.limits.clone()
        },
        console,
        closing: tokio_util::sync::CancellationToken::new(),
    };
    server::serve(listener, state, shutdown).await;
    tracing::info!("Stopped accepting events; finishing deliveries in flight.");
    if let Some(task) = sighup {
        task.abort();
    }
    silences.abort();
    archiver.abort();
    if !workers.shutdown(options.shutdown_grace).await {
        tracing::warn!(
            "Some deliveries did not finish in time; they are kept and resume at the next start."
        );
    }
    if let Some(runtime) = runtime.0.take() {
        // Sends still running past the grace period are abandoned; they resume at the next
        // start. A runtime cannot be dropped from async code: it is shut down from a thread
        // that may block.
        let _ = tokio::task::spawn_blocking(move || {
            runtime.shutdown_timeout(Duration::from_millis(100))
        })
        .await;
    }
    Ok(())
}

/// Reads the silences in force every [`silence::REFRESH`]: those added by the CLI or by another
/// instance apply here within that time.
async fn refresh_silences(app: Arc<App>, store: Store) {
    let mut failing = false;
    loop {
        tokio::time::sleep(silence::REFRESH).await;
        match app.silences.refresh(&store).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "Cannot read the silences; the last ones read still apply.");
            }
            Err(_) => {}
        }
    }
}

/// Webhooks that may wait for their commit at once: a store that stalls makes the rest wait
/// nowhere (503 at once) instead of piling up in memory.
const MAX_WAITING_INTAKES: usize = 4096;

/// Keeps each configuration that serves in the store: a new one within a second of its reload
/// (a delivery it matched may wait for a retry past later reloads and restarts), and the
/// serving one renewed every ten minutes (so it is kept for a while after it is replaced).
async fn archive_configs(app: Arc<App>) {
    let mut saved = app.current().hash.clone();
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let hash = app.current().hash.clone();
        if hash == saved && renewed.elapsed() < Duration::from_secs(600) {
            continue;
        }
        match app.archive_current().await {
            Ok(()) => {
                saved = hash;
                renewed = tokio::time::Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot keep the configuration in the store; trying again.")
            }
        }
    }
}

/// The workers' runtime, shut down without waiting should `run` be dropped before its end (a
/// runtime dropped in async code would block it, or panic).
struct WorkersRuntime(Option<tokio::runtime::Runtime>);

impl Drop for WorkersRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// How often the workers record that they are alive and renew their leases: a quarter of the
/// lease (three heartbeats can be missed before it lapses) but at least 200 ms, or the
/// settings' own heartbeat if that is more often (never more often than every 10 ms).
fn heartbeat(lease: Duration, settings: Duration) -> Duration {
    let from_lease = (lease / 4).max(Duration::from_millis(200));
    settings.min(from_lease).max(Duration::from_millis(10))
}

fn announce(listen: SocketAddr, app: &App, store: &str) {
    let config = app.current();
    let webhooks: Vec<String> = app
        .sources
        .names()
        .iter()
        .map(|name| format!("http://{listen}/webhooks/{name}"))
        .collect();
    tracing::info!(
        listen = %listen,
        rules = config.rules.rules().len(),
        hash = %short_hash(&config.hash),
        store = %store,
        "switchboard is listening: POST events to {}",
        webhooks.join(" or ")
    );
}
