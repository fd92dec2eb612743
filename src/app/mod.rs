//! The state the server, the reload triggers and the workers share: the current configuration
//! (swapped atomically on reload), the last reload's result, and the metrics. Reloads are
//! compile-then-swap: a configuration with any problem never serves. [`watch`] holds what
//! triggers them besides `POST /-/reload`.

pub mod watch;

use crate::config::{self, Config, ConfigPaths};
use crate::credentials::ListenerPolicy;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::event::Sources;
use crate::metrics::Metrics;
use crate::silence::Silences;
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
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
    pub paths: ConfigPaths,
    /// The webhook sources mounted.
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
    /// Whether sources may go without a credential: a reload that would leave one open on a
    /// public listener is refused, as the start would have been.
    policy: ListenerPolicy,
    /// The silences in force, as last read from the store.
    pub silences: Silences,
    /// Where configurations are kept by hash (set once the store is open): the one that
    /// matched a waiting delivery is compiled from there when it is no longer in memory.
    pub archive: std::sync::OnceLock<crate::store::Store>,
    /// One intake at a time keeps a new configuration.
    archiving: tokio::sync::Mutex<()>,
}

/// How many earlier configurations are kept in memory besides the serving one (the store keeps
/// every one that matched an event: see [`App::config_matched`]); each holds its compiled rules,
/// tens of MiB for 10,000 of them.
const KEPT_CONFIGS: usize = 1;

impl App {
    /// Loads the configuration for the first time; fails with every problem if it is invalid.
    /// `policy` decides which configurations later reloads may swap in (the caller checks the
    /// first one against it, to refuse the start in its own words).
    pub fn load(
        paths: ConfigPaths,
        sources: Sources,
        policy: ListenerPolicy,
    ) -> Result<Arc<App>, Diagnostics> {
        let config = config::load(&paths, &sources)?;
        let last_success_unix = AtomicI64::new(config.loaded_at.timestamp());
        let status = ReloadStatus {
            ok: true,
            at: config.loaded_at,
            trigger: "start".into(),
            errors: Diagnostics::default(),
        };
        Ok(Arc::new(App {
            paths,
            sources,
            config: ArcSwap::from_pointee(config),
            status: Mutex::new(status),
            reload_lock: Mutex::new(()),
            recent: Mutex::new(Vec::new()),
            metrics: Metrics::default(),
            last_success_unix,
            wake: tokio::sync::Notify::new(),
            policy,
            silences: Silences::default(),
            archive: std::sync::OnceLock::new(),
            archiving: tokio::sync::Mutex::new(()),
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

    /// The configuration with this hash: in memory, or compiled again from the store's copy
    /// (then kept in memory); the current one when neither has it (a configuration older than
    /// the store keeps, see `store::configs`).
    pub async fn config_matched(&self, hash: &str) -> Arc<Config> {
        match self.config_kept(hash).await {
            Some(config) => config,
            None => self.current(),
        }
    }

    /// The configuration with this hash, in memory or compiled again from the store's copy;
    /// `None` when neither has it, or the store cannot be read.
    pub async fn config_kept(&self, hash: &str) -> Option<Arc<Config>> {
        let found = self.config_for(hash);
        if found.hash == hash {
            return Some(found);
        }
        let store = self.archive.get()?;
        let snapshot = match store.load_config(hash).await {
            Ok(Some(text)) => text,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read a kept configuration.");
                return None;
            }
        };
        let sources = self.sources.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let snapshot: config::compile::Snapshot =
                serde_json::from_str(&snapshot).map_err(|e| e.to_string())?;
            config::compile::compile_snapshot(&snapshot, &sources).map_err(|d| d.to_string())
        })
        .await;
        match compiled {
            Ok(Ok(config)) if config.hash == hash => {
                // Compiled from the store's copy, for deliveries only: kept there, not serving.
                config.archived.store(true, Ordering::Release);
                config.retire(&self.current());
                let config = Arc::new(config);
                let mut recent = self.recent.lock().expect("recent lock");
                recent.push(config.clone());
                let excess = recent.len().saturating_sub(KEPT_CONFIGS);
                recent.drain(..excess);
                Some(config)
            }
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                tracing::warn!(
                    hash = %short_hash(hash),
                    "A kept configuration does not compile as it did (its templates or variables changed)."
                );
                None
            }
        }
    }

    /// Keeps the serving configuration in the store under its hash.
    pub async fn archive_current(&self) -> Result<(), crate::store::StoreError> {
        self.archive_config(&self.current()).await
    }

    /// Keeps a configuration in the store under its hash.
    pub async fn archive_config(&self, config: &Config) -> Result<(), crate::store::StoreError> {
        let Some(store) = self.archive.get() else {
            return Ok(());
        };
        // Only a configuration kept already lets go of its text.
        let Some(snapshot) = config.snapshot.load_full() else {
            return Ok(());
        };
        let snapshot = serde_json::to_string(&*snapshot).expect("a snapshot serialises");
        store.save_config(&config.hash, &snapshot).await?;
        config.archived.store(true, Ordering::Release);
        Ok(())
    }

    /// Keeps a configuration in the store unless this instance did already: intake calls it
    /// before the first event the configuration matches is stored. One caller saves; the
    /// others wait for it rather than save again.
    pub async fn ensure_archived(&self, config: &Config) -> Result<(), crate::store::StoreError> {
        if config.archived.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _one = self.archiving.lock().await;
        if config.archived.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.archive_config(config).await
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
        let result = self.swap_in(trigger);
        memory_freed();
        result
    }

    fn swap_in(&self, trigger: &str) -> Result<Arc<Config>, Diagnostics> {
        let serving = self.config.load_full();
        let result = config::load_beside(&self.paths, &self.sources, Some(&serving))
            .and_then(|new| admit(&self.policy, new));
        let now = Utc::now();
        let mut status = self.status.lock().expect("status lock");
        match result {
            Ok(new) => {
                let new = Arc::new(new);
                let old = self.config.swap(new.clone());
                // The configuration replaced is kept for the deliveries it matched, unless the
                // new one is the same (a reload of unchanged files), which serves its hash; no
                // configuration is kept twice.
                {
                    let mut recent = self.recent.lock().expect("recent lock");
                    recent.retain(|c| c.hash != new.hash && c.hash != old.hash);
                    if old.hash != new.hash {
                        old.retire(&new);
                        recent.push(old.clone());
                    } else if old.archived.load(Ordering::Acquire) {
                        // The same files: kept in the store already.
                        new.archived.store(true, Ordering::Release);
                    }
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
}

/// What the binary gives back the allocator's unused pages with (see [`on_memory_freed`]).
static MEMORY_FREED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what is called once much memory was freed (after a reload, the configuration replaced
/// and what compiling the new one left): the binary returns its allocator's unused pages to the
/// system, so that the next reload starts from what is in use.
pub fn on_memory_freed(release: fn()) {
    let _ = MEMORY_FREED.set(release);
}

fn memory_freed() {
    if let Some(release) = MEMORY_FREED.get() {
        release();
    }
}

/// `config`, unless `policy` refuses the sources it leaves open (the problem is placed in the
/// first rules file).
fn admit(policy: &ListenerPolicy, config: Config) -> Result<Config, Diagnostics> {
    match policy.check(&config.open_sources()) {
        Ok(()) => Ok(config),
        Err(open) => {
            let file = config.files.first().cloned().unwrap_or_default();
            Err(Diagnostics::one(Diagnostic::file(&file, open.to_string())))
        }
    }
}

/// The first 12 hex digits of a configuration hash, for logs.
pub fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
