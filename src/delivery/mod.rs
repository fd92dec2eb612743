//! Delivery: accepted events wait in a bounded in-process queue; workers turn each
//! (event, rule, action) into a rendered message and send it, with at most `concurrency`
//! sends in flight. A failed delivery is logged with its event, rule, action and reason.
//!
//! Each job carries the configuration that matched it, so an event accepted before a reload
//! finishes under the rules it started with.

use crate::actions::Clients;
use crate::app::App;
use crate::config::Config;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// One accepted event with the rules it matched.
pub struct Job {
    /// The canonical event.
    pub event: Arc<Value>,
    /// The configuration that matched it.
    pub config: Arc<Config>,
    /// Positions of the matching rules in `config`.
    pub rules: Vec<usize>,
}

/// The sending side of the delivery queue.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Job>,
}

/// The queue is full: the router is not keeping up, so the caller should retry later.
#[derive(Debug, thiserror::Error)]
#[error("the delivery queue is full")]
pub struct QueueFull;

impl Queue {
    /// Hands a job to the workers without waiting.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        self.tx.try_send(job).map_err(|_| QueueFull)
    }

    /// Jobs waiting for a worker.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The worker pool; [`Workers::shutdown`] finishes what was accepted.
pub struct Workers {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Queue and worker limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Jobs the queue holds before intake answers 503.
    pub capacity: usize,
    /// Sends in flight at once.
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            capacity: 10_000,
            concurrency: 32,
        }
    }
}

/// Starts the workers.
pub fn start(app: Arc<App>, clients: Clients, limits: Limits) -> (Queue, Workers) {
    let (tx, mut rx) = mpsc::channel::<Job>(limits.capacity.max(1));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let permits = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    let task = tokio::spawn(async move {
        let mut running = JoinSet::new();
        loop {
            let job = tokio::select! {
                job = rx.recv() => job,
                _ = &mut stopped => {
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(job) = job else { break };
            for &rule in &job.rules {
                for action in 0..job.config.rules.get(rule).actions.len() {
                    let permit = permits
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("semaphore open");
                    let (app, clients, event, config) = (
                        app.clone(),
                        clients.clone(),
                        job.event.clone(),
                        job.config.clone(),
                    );
                    running.spawn(async move {
                        deliver(&app, &clients, &event, &config, rule, action).await;
                        drop(permit);
                    });
                }
            }
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    });
    (Queue { tx }, Workers { stop, task })
}

impl Workers {
    /// Stops taking new jobs, delivers every job already queued, and waits for the sends in
    /// flight, for at most `grace`. Returns whether everything finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.stop.send(());
        tokio::time::timeout(grace, self.task).await.is_ok()
    }
}

/// Renders and sends one (event, rule, action), and logs the outcome.
async fn deliver(
    app: &App,
    clients: &Clients,
    event: &Value,
    config: &Config,
    rule: usize,
    action: usize,
) {
    let rule = config.rules.get(rule);
    let act = &rule.actions[action];
    let event_id = crate::event::event_id(event);
    let label = format!("{}#{}", act.kind(), action + 1);
    let counters = &app.counters;
    if let Some(vars) = act.unconfigured() {
        counters.deliveries_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(event_id, rule = %rule.name, action = %label, "Delivery skipped: its destination is not configured; set {vars} to enable it.");
        return;
    }
    let message = match act.render(event, &config.templates) {
        Ok(m) => m,
        Err(e) => {
            counters.deliveries_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(event_id, rule = %rule.name, action = %label, reason = %e, "Delivery failed: the message could not be rendered.");
            return;
        }
    };
    match message.send(clients).await {
        Ok(()) => {
            counters.deliveries_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(event_id, rule = %rule.name, action = %label, "Delivered.");
        }
        Err(e) => {
            counters.deliveries_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event_id, rule = %rule.name, action = %label, retryable = e.retryable, reason = %e, "Delivery failed.");
        }
    }
}
