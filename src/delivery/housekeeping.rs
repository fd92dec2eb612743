//! Housekeeping beside the sends: the heartbeat (this instance is alive, runs this
//! configuration, and is still sending these deliveries, whose leases it renews), the pruning
//! of old history, and the closer that sends due digests (see `digests`).

use super::dispatch::Dispatcher;
use super::in_flight::InFlight;
use crate::app::App;
use crate::store::{Store, now_ms};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often old history is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Intake keys (which recognise a repeated webhook) are kept at least this long.
const KEYS_AT_LEAST: Duration = Duration::from_secs(7 * 24 * 3600);

/// The running housekeeping tasks.
pub(super) struct Housekeeping {
    heartbeat: JoinHandle<()>,
    pruner: JoinHandle<()>,
    closer: JoinHandle<()>,
}

/// Starts the heartbeat and the pruning for the workers of `d`.
pub(super) fn start(d: &Dispatcher, store: &Store) -> Housekeeping {
    let s = &d.settings;
    Housekeeping {
        heartbeat: tokio::spawn(heartbeat_forever(
            d.app.clone(),
            store.clone(),
            d.in_flight.clone(),
            s.heartbeat,
            s.listen.clone(),
        )),
        pruner: tokio::spawn(prune_forever(store.clone(), s.history)),
        closer: tokio::spawn(super::digests::close_forever(d.app.clone(), store.clone())),
    }
}

impl Housekeeping {
    /// Stops the tasks.
    pub(super) fn stop(self) {
        self.heartbeat.abort();
        self.pruner.abort();
        self.closer.abort();
    }
}

/// Records every `every` that this instance is alive, with its configuration, and renews the
/// leases of the deliveries it is sending.
async fn heartbeat_forever(
    app: Arc<App>,
    store: Store,
    in_flight: InFlight,
    every: Duration,
    listen: String,
) {
    loop {
        let sending = in_flight.ids();
        if let Err(e) = store
            .heartbeat(&listen, &app.current().hash, &sending)
            .await
        {
            tracing::warn!(error = %e, "Cannot record this instance's heartbeat.");
        }
        tokio::time::sleep(every).await;
    }
}

/// Prunes finished history older than `history`, and intake keys older than
/// [`KEYS_AT_LEAST`] or `history` if longer, every [`PRUNE_EVERY`].
async fn prune_forever(store: Store, history: Duration) {
    let keys = history.max(KEYS_AT_LEAST);
    loop {
        let now = now_ms();
        match store
            .prune(
                now - history.as_millis() as i64,
                now - keys.as_millis() as i64,
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "Pruned old delivery history."),
            Err(e) => tracing::warn!(error = %e, "Cannot prune old delivery history."),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}
