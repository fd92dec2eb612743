//! The state the server, the reload triggers and the workers share: the current configuration
//! (swapped atomically on reload), the last reload's result, and the metrics.

use crate::config::{self, Config, Diagnostic, Diagnostics, Sources};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// The result of the most recent reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// Whether it succeeded (the new configuration is serving).
    pub ok: bool,
    /// When it was attempted.
    pub at: DateTime<Utc>,
    /// What asked for it: `start`, `file change`, `SIGHUP`, `POST /-/reload`.
    pub trigger: String,
    /// Every problem, when it failed.
    pub errors: Diagnostics,
}

/// Shared router state.
pub struct App {
    /// Where the configuration is loaded from.
    pub sources: Sources,
    config: ArcSwap<Config>,
    status: Mutex<ReloadStatus>,
    reload_lock: Mutex<()>,
    recent: Mutex<Vec<Arc<Config>>>,
    /// Metrics for `/metrics`.
    pub metrics: Metrics,
    /// Unix time of the last successful reload.
    pub last_success_unix: AtomicI64,
    /// Woken when new deliveries are stored, so workers need not wait for their next poll.
    pub wake: tokio::sync::Notify,
    /// The listener beyond loopback that `serve` started without `--insecure`: a reload that
    /// would leave a source with no credential there is refused, as the start would have been.
    public: std::sync::OnceLock<std::net::SocketAddr>,
}

/// How many earlier configurations are kept (besides the serving one) so that pending
/// deliveries finish under the rules that matched them.
const KEPT_CONFIGS: usize = 1;

impl App {
    /// Loads the configuration for the first time; fails with every problem if it is invalid.
    pub fn load(sources: Sources) -> Result<Arc<App>, Diagnostics> {
        let config = config::load(&sources)?;
        let last_success_unix = AtomicI64::new(config.loaded_at.timestamp());
        let status = ReloadStatus {
            ok: true,
            at: config.loaded_at,
            trigger: "start".into(),
            errors: Diagnostics::default(),
        };
        Ok(Arc::new(App {
            sources,
            config: ArcSwap::from_pointee(config),
            status: Mutex::new(status),
            reload_lock: Mutex::new(()),
            recent: Mutex::new(Vec::new()),
            metrics: Metrics::default(),
            last_success_unix,
            wake: tokio::sync::Notify::new(),
            public: std::sync::OnceLock::new(),
        }))
    }

    /// The configuration serving now. Holders keep theirs through a reload.
    pub fn current(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The configuration with this hash if it is still in memory (the one that matched a
    /// pending delivery), else the current one.
    pub fn config_for(&self, hash: &str) -> Arc<Config> {
        let current = self.current();
        if current.hash == hash {
            return current;
        }
        let recent = self.recent.lock().expect("recent lock");
        recent
            .iter()
            .rev()
            .find(|c| c.hash == hash)
            .cloned()
            .unwrap_or(current)
    }

    /// From now on every source must ask for a credential: the router listens on `listen`,
    /// beyond loopback, and was not started with `--insecure`.
    pub fn require_credentials(&self, listen: std::net::SocketAddr) {
        let _ = self.public.set(listen);
    }

    /// `config`, unless it would leave a source open on a public listener (see
    /// [`App::require_credentials`]).
    fn guard(&self, config: Config) -> Result<Config, Diagnostics> {
        let Some(listen) = self.public.get() else {
            return Ok(config);
        };
        let open = config.open_sources();
        let Some(first) = open.first() else {
            return Ok(config);
        };
        let file = config.files.first().cloned().unwrap_or_default();
        Err(Diagnostics::one(Diagnostic::file(
            &file,
            format!(
                "this configuration asks no credential for /webhooks/{}, and the router listens on {listen}, beyond loopback: anyone who finds the URL could post events. Set sources.{first}.secret_key (or token, hmac_secret, allow_ips), or restart with --insecure to accept that risk (SECURITY.md)",
                open.join(", /webhooks/"),
            ),
        )))
    }

    /// The last reload's result.
    pub fn reload_status(&self) -> ReloadStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// Compiles the configuration again and, only if all of it is valid, swaps it in. On error
    /// the old configuration keeps serving and the errors are logged and kept for `/api/status`.
    /// Blocking (it reads files and compiles): call it from a blocking context.
    pub fn reload(&self, trigger: &str) -> Result<Arc<Config>, Diagnostics> {
        let _one_at_a_time = self.reload_lock.lock().expect("reload lock");
        let result = config::load(&self.sources).and_then(|new| self.guard(new));
        let now = Utc::now();
        let mut status = self.status.lock().expect("status lock");
        match result {
            Ok(new) => {
                let new = Arc::new(new);
                let old = self.config.swap(new.clone());
                {
                    let mut recent = self.recent.lock().expect("recent lock");
                    recent.push(old.clone());
                    let excess = recent.len().saturating_sub(KEPT_CONFIGS);
                    recent.drain(..excess);
                }
                self.last_success_unix
                    .store(now.timestamp(), Ordering::Relaxed);
                *status = ReloadStatus {
                    ok: true,
                    at: now,
                    trigger: trigger.into(),
                    errors: Diagnostics::default(),
                };
                tracing::info!(
                    trigger,
                    rules = new.rules.rules().len(),
                    hash = %short_hash(&new.hash),
                    changed = old.hash != new.hash,
                    "Configuration reloaded."
                );
                for w in new.warnings.iter() {
                    tracing::warn!("{w}");
                }
                Ok(new)
            }
            Err(errors) => {
                for e in errors.iter() {
                    tracing::error!(
                        trigger,
                        "Reload failed, the previous rules keep serving: {e}"
                    );
                }
                *status = ReloadStatus {
                    ok: false,
                    at: now,
                    trigger: trigger.into(),
                    errors: errors.clone(),
                };
                Err(errors)
            }
        }
    }

    /// `/api/status`: what is loaded and how the last reload went.
    pub fn status_json(&self) -> Value {
        let config = self.current();
        let rules = config.rules.rules();
        json!({
            "rules_loaded": rules.len(),
            "rules_enabled": rules.iter().filter(|r| r.enabled).count(),
            "rules": rules.iter().map(|r| json!({
                "name": r.name,
                "enabled": r.enabled,
                "file": r.origin.0,
                "line": r.origin.1,
                "actions": r.actions.iter().map(|a| a.action.kind()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "config_hash": config.hash,
            "loaded_at": config.loaded_at,
            "files": config.files,
            "warnings": config.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "last_reload": self.reload_status_json(),
        })
    }

    fn reload_status_json(&self) -> Value {
        let s = self.reload_status();
        json!({
            "ok": s.ok,
            "at": s.at,
            "trigger": s.trigger,
            "errors": s.errors.iter().map(|d| json!({
                "file": d.file,
                "line": d.line,
                "column": d.column,
                "message": d.message,
                "text": d.to_string(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The first 12 hex digits of a configuration hash, for logs.
pub fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
