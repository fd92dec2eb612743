//! Delivery: workers take due deliveries from the store, render and send them, and record each
//! attempt. Each (event, rule, action) is its own delivery, retried on its own per the
//! [`RetryPolicy`]; one that runs out of attempts, or fails permanently, becomes a dead letter.
//!
//! At most `concurrency` sends are in flight, and at most `per_destination` to any one
//! destination, so one slow endpoint does not hold up the others. On shutdown the workers stop
//! claiming, finish what is in flight within a bound, and leave the rest in the store.
//!
//! - this file: the settings, and starting and stopping the workers;
//! - [`handoff`]: intake's way to give a committed event's deliveries straight to the workers;
//! - `dispatch`: the loop that claims due deliveries and starts sends;
//! - `attempt`: one send, its outcome, and its record;
//! - `housekeeping`: the heartbeat and the pruning of old history;
//! - [`digests`]: the closer, which turns due digests into deliveries;
//! - [`runtime`]: the workers' threads, beside intake's at the same priority;
//! - `in_flight` and `backlog`: the in-flight set and the backlog flag, the state the rest
//!   shares;
//! - [`retry`]: when to try again.

mod attempt;
mod backlog;
pub mod digests;
mod dispatch;
pub mod handoff;
mod housekeeping;
mod in_flight;
pub mod retry;
mod runtime;

pub use handoff::{Handoff, Reservation};
pub use retry::RetryPolicy;
pub use runtime::runtime;

use crate::actions::Clients;
use crate::app::App;
use crate::store::{Committer, Store};
use backlog::Backlog;
use dispatch::Dispatcher;
use in_flight::InFlight;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

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
    /// Where the workers run: a runtime of their own (see [`runtime`]), or, when `None`, the
    /// caller's.
    pub runtime: Option<tokio::runtime::Handle>,
    /// How long one send may take in all before it is abandoned as a (retryable) timeout.
    pub send_deadline: Duration,
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
            runtime: None,
            send_deadline: crate::actions::SEND_DEADLINE,
        }
    }
}

/// The running workers.
pub struct Workers {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    committer: Committer,
    handoff: Handoff,
}

/// Starts the workers (and the housekeeping beside them).
pub fn start(app: Arc<App>, store: Store, clients: Clients, mut settings: Settings) -> Workers {
    // Zero would mean no sends at all: at least one in flight, to all and to each destination.
    settings.concurrency = settings.concurrency.max(1);
    settings.per_destination = settings.per_destination.max(1);
    let (stop, stopped) = watch::channel(false);
    let committer = Committer::start(store.clone());
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let in_flight = InFlight::new(settings.per_destination);
    let backlog = Arc::new(Backlog::default());
    let (handoff, receiver) = handoff::channel(permits.clone(), in_flight.clone(), backlog.clone());
    let runtime = settings.runtime.clone();
    let dispatcher = Arc::new(Dispatcher {
        app,
        committer: committer.clone(),
        clients,
        settings,
        in_flight,
        backlog,
        permits,
        sends: TaskTracker::new(),
    });
    let work = dispatch::run(dispatcher, store, receiver, stopped);
    let task = match runtime {
        Some(runtime) => runtime.spawn(work),
        None => tokio::spawn(work),
    };
    Workers {
        stop,
        task,
        committer,
        handoff,
    }
}

impl Workers {
    /// Where intake commits events: the queue the workers record their attempts in.
    pub fn committer(&self) -> Committer {
        self.committer.clone()
    }

    /// Where intake hands the deliveries of a committed event to these workers.
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// Stops claiming deliveries and waits for those in flight, for at most `grace`. Whatever
    /// has not finished stays in the store for the next start. Returns whether all finished.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(grace, self.task).await.is_ok()
    }
}
