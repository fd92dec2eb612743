//! Delivery: workers take due deliveries from the store, render and send them, and record each
//! attempt. Each (event, rule, action) is its own delivery, retried on its own per the
//! [`RetryPolicy`]; one that runs out of attempts, or fails permanently, becomes a dead letter.
//!
//! At most `concurrency` sends are in flight, and at most `per_destination` to any one
//! destination, so one slow endpoint does not hold up the others. On shutdown the workers stop
//! claiming, finish what is in flight within a bound, and leave the rest in the store.

pub mod retry;

pub use retry::RetryPolicy;

use crate::actions::Clients;
use crate::app::App;
use crate::metrics::ActionLabels;
use crate::store::{Attempt, Due, Finished, Next, Recorder, Store, now_ms};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Worker limits and the retry policy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sends in flight at once.
    pub concurrency: usize,
    /// Sends in flight to one destination.
    pub per_destination: usize,
    /// When to retry and when to give up.
    pub retry: RetryPolicy,
    /// How long delivered history is kept.
    pub history: Duration,
    /// How often to look for due deliveries when nothing wakes the workers.
    pub poll: Duration,
    /// How often this instance records that it is alive and renews its leases.
    pub heartbeat: Duration,
    /// The address this instance listens on (shown in `/api/status`).
    pub listen: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 32,
            per_destination: 4,
            retry: RetryPolicy::default(),
            history: Duration::from_secs(7 * 24 * 3600),
            poll: Duration::from_secs(1),
            heartbeat: Duration::from_secs(5),
            listen: String::new(),
        }
    }
}

/// The running workers.
pub struct Workers {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Deliveries in flight: their ids and how many per destination.
#[derive(Default)]
struct InFlight {
    ids: HashSet<i64>,
    per_destination: HashMap<String, usize>,
}

/// Starts the workers (and the pruning of old history).
pub fn start(app: Arc<App>, store: Store, clients: Clients, settings: Settings) -> Workers {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(dispatch(app, store, clients, settings, stopped));
    Workers { stop, task }
}

impl Workers {
    /// Stops claiming deliveries and waits for those in flight, for at most `grace`. Whatever
    /// has not finished stays in the store for the next start. Returns whether all finished.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(grace, self.task).await.is_ok()
    }
}

async fn dispatch(
    app: Arc<App>,
    store: Store,
    clients: Clients,
    s: Settings,
    mut stopped: watch::Receiver<bool>,
) {
    match store.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deliveries = n,
            "Picked up deliveries that were in flight when the router last stopped."
        ),
        Err(e) => tracing::error!(error = %e, "Cannot recover in-flight deliveries."),
    }
    let pruner = tokio::spawn(prune_forever(store.clone(), s.history));
    let heartbeat = tokio::spawn(heartbeat_forever(
        app.clone(),
        store.clone(),
        s.heartbeat,
        s.listen.clone(),
    ));
    let woken = app.clone();
    if let Err(e) = store
        .listen(Box::new(move || woken.wake.notify_one()))
        .await
    {
        tracing::warn!(error = %e, "Cannot listen for new deliveries from other instances; polling instead.");
    }
    let permits = Arc::new(Semaphore::new(s.concurrency.max(1)));
    let recorder = Recorder::start(store.clone());
    let flight = Arc::new(Mutex::new(InFlight::default()));
    let settings = Arc::new(s);
    while !*stopped.borrow() {
        let busy: Vec<String> = {
            let f = flight.lock().expect("in-flight lock");
            f.per_destination
                .iter()
                .filter(|(_, n)| **n >= settings.per_destination)
                .map(|(d, _)| d.clone())
                .collect()
        };
        let free = permits.available_permits() as u32;
        let claimed = match store.claim(free, &busy).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read due deliveries from the store; trying again in 1 s.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut release = Vec::new();
        let mut started = 0;
        for due in claimed {
            let admitted = {
                let mut f = flight.lock().expect("in-flight lock");
                let n = f
                    .per_destination
                    .entry(due.destination.clone())
                    .or_default();
                if *n >= settings.per_destination {
                    false
                } else {
                    *n += 1;
                    f.ids.insert(due.id);
                    true
                }
            };
            let permit = admitted
                .then(|| permits.clone().try_acquire_owned().ok())
                .flatten();
            let Some(permit) = permit else {
                if admitted {
                    forget(&flight, &due);
                }
                release.push(due.id);
                continue;
            };
            started += 1;
            let (app, recorder, clients, settings, flight) = (
                app.clone(),
                recorder.clone(),
                clients.clone(),
                settings.clone(),
                flight.clone(),
            );
            tokio::spawn(async move {
                deliver(&app, &recorder, &clients, &settings.retry, &due).await;
                forget(&flight, &due);
                drop(permit);
                app.wake.notify_one();
            });
        }
        if !release.is_empty() {
            let _ = store.release(&release).await;
        }
        if started > 0 && permits.available_permits() > 0 {
            continue;
        }
        let wait = match store.next_due().await {
            Ok(Some(at)) => Duration::from_millis(
                (at - now_ms()).clamp(5, settings.poll.as_millis() as i64) as u64,
            ),
            _ => settings.poll,
        };
        tokio::select! {
            _ = app.wake.notified() => {},
            _ = tokio::time::sleep(wait) => {},
            _ = stopped.changed() => {},
        }
    }
    pruner.abort();
    heartbeat.abort();
    while !flight.lock().expect("in-flight lock").ids.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn forget(flight: &Mutex<InFlight>, due: &Due) {
    let mut f = flight.lock().expect("in-flight lock");
    f.ids.remove(&due.id);
    if let Some(n) = f.per_destination.get_mut(&due.destination) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            f.per_destination.remove(&due.destination);
        }
    }
}

/// What one attempt came to.
struct Outcome {
    next: Next,
    error: Option<String>,
    status: Option<u16>,
    /// The metric reason (`none` when delivered).
    reason: &'static str,
    /// The action's kind, when the rule still exists.
    kind: &'static str,
}

/// Renders and sends one delivery, then records the attempt and what comes next.
async fn deliver(
    app: &App,
    recorder: &Recorder,
    clients: &Clients,
    policy: &RetryPolicy,
    due: &Due,
) {
    let started_at = now_ms();
    let clock = Instant::now();
    let attempt_no = due.attempts + 1;
    let o = attempt(app, clients, policy, due).await;
    let (event_id, rule, action, destination) = (
        &due.event_id,
        &due.rule,
        due.action_index + 1,
        &due.destination,
    );
    let reason = o.error.as_deref().unwrap_or("");
    let m = &app.metrics;
    match &o.next {
        Next::Delivered => {
            m.delivery(o.kind, destination, "delivered", "none");
            let waited = (now_ms() - due.received_at).max(0) as f64 / 1000.0;
            m.delivery_latency
                .get_or_create(&ActionLabels { action: o.kind })
                .observe(waited);
            tracing::info!(
                event_id,
                rule,
                action,
                destination,
                attempt = attempt_no,
                "Delivered."
            );
        }
        Next::Retry(at) => {
            m.delivery(o.kind, destination, "retried", o.reason);
            let retry_in_ms = at - now_ms();
            tracing::warn!(
                event_id,
                rule,
                action,
                destination,
                attempt = attempt_no,
                retry_in_ms,
                reason,
                "Delivery failed; will retry."
            );
        }
        Next::Dead => {
            m.delivery(o.kind, destination, "dead", o.reason);
            tracing::error!(
                event_id,
                rule,
                action,
                destination,
                attempt = attempt_no,
                delivery_id = due.id,
                reason,
                "Delivery failed for good; kept as a dead letter (switchboard dlq list)."
            );
        }
        Next::Skipped => {
            m.delivery(o.kind, destination, "skipped", o.reason);
            tracing::info!(
                event_id,
                rule,
                action,
                destination,
                "Delivery skipped: {reason}."
            );
        }
    }
    let attempt = Attempt {
        started_at,
        duration_ms: clock.elapsed().as_millis() as i64,
        status_code: o.status,
        error: o.error,
    };
    if let Err(e) = recorder
        .record(Finished {
            id: due.id,
            attempt,
            next: o.next,
        })
        .await
    {
        tracing::error!(event_id, rule, delivery_id = due.id, error = %e, "Cannot record a delivery attempt; it will be retried after a restart.");
    }
}

/// One attempt: render and send, and decide what comes next.
async fn attempt(app: &App, clients: &Clients, policy: &RetryPolicy, due: &Due) -> Outcome {
    let fail = |next, error: String, reason, kind| Outcome {
        next,
        error: Some(error),
        status: None,
        reason,
        kind,
    };
    let config = app.config_for(&due.config_hash);
    let Some(step) = config
        .rules
        .by_name(&due.rule)
        .and_then(|r| r.actions.get(due.action_index as usize))
    else {
        let error = format!(
            "rule {:?} action {} is no longer in the configuration",
            due.rule,
            due.action_index + 1
        );
        return fail(Next::Dead, error, "rule_removed", "unknown");
    };
    let kind = step.action.kind();
    if let Some(vars) = step.action.unconfigured() {
        return fail(
            Next::Skipped,
            format!("its destination is not configured; set {vars} to enable it"),
            "unconfigured",
            kind,
        );
    }
    let event: Value = match serde_json::from_str(&due.payload) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                Next::Dead,
                format!("the stored event is not valid JSON: {e}"),
                "bad_event",
                kind,
            );
        }
    };
    let message = match step.action.render(&event, &config.templates) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                Next::Dead,
                format!("the message could not be rendered: {e}"),
                "render",
                kind,
            );
        }
    };
    match message.send(clients).await {
        Ok(()) => Outcome {
            next: Next::Delivered,
            error: None,
            status: None,
            reason: "none",
            kind,
        },
        Err(e) => {
            let next = match e
                .retryable
                .then(|| policy.next_delay(due.attempts + 1, e.retry_after))
                .flatten()
            {
                Some(delay) => Next::Retry(now_ms() + delay.as_millis() as i64),
                None => Next::Dead,
            };
            Outcome {
                next,
                status: e.status,
                reason: e.reason(),
                error: Some(e.message),
                kind,
            }
        }
    }
}

/// Records every `every` that this instance is alive, with its configuration, and renews the
/// leases of the deliveries it is sending.
async fn heartbeat_forever(app: Arc<App>, store: Store, every: Duration, listen: String) {
    loop {
        if let Err(e) = store.heartbeat(&listen, &app.current().hash).await {
            tracing::warn!(error = %e, "Cannot record this instance's heartbeat.");
        }
        tokio::time::sleep(every).await;
    }
}

/// Prunes finished history older than `history` (and intake keys older than 7 days, or
/// `history` if longer) every ten minutes.
async fn prune_forever(store: Store, history: Duration) {
    let keys = history.max(Duration::from_secs(7 * 24 * 3600));
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
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}
