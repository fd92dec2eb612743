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
use crate::store::{Attempt, Claim, Committer, Due, Finished, Next, Store, StoreError, now_ms};
use crate::template::Data;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

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

/// Deliveries in flight: their ids and how many per destination.
#[derive(Default)]
struct InFlight {
    ids: HashSet<i64>,
    per_destination: HashMap<String, usize>,
}

impl InFlight {
    /// Counts a send to `destination` if it is under `limit`.
    fn take(&mut self, destination: &str, limit: usize) -> bool {
        match self.per_destination.get_mut(destination) {
            Some(n) if *n >= limit => false,
            Some(n) => {
                *n += 1;
                true
            }
            None => {
                self.per_destination.insert(destination.to_string(), 1);
                true
            }
        }
    }

    /// Uncounts a send to `destination`.
    fn put(&mut self, destination: &str) {
        if let Some(n) = self.per_destination.get_mut(destination) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_destination.remove(destination);
            }
        }
    }

    /// No longer counts these deliveries as in flight (they go back to the store unsent).
    fn forget(&mut self, due: &[Due]) {
        for d in due {
            self.ids.remove(&d.id);
        }
    }
}

/// Intake's way to give the deliveries of an event it has just committed straight to this
/// instance's workers, without a round trip through the store: it reserves room for them
/// before the commit (then they are recorded as claimed), and sends them after it. When the
/// workers or a destination are busy there is no room, and the deliveries wait in the store
/// for a claim.
#[derive(Clone)]
pub struct Handoff {
    permits: Arc<Semaphore>,
    flight: Arc<Mutex<InFlight>>,
    per_destination: usize,
    open: Arc<AtomicBool>,
    backlog: Arc<AtomicBool>,
    /// How many times intake stored deliveries pending (see [`Handoff::stored_pending`]).
    stored: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Handed>,
}

/// Deliveries handed over by intake: their event, prepared for rendering, and their room.
type Handed = (Vec<Due>, Arc<Data>, Reservation);

/// Room reserved with the workers for the deliveries of one event: a worker each, counted
/// against each destination's limit. Dropped unused, it gives the room back.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    destinations: Vec<String>,
    flight: Arc<Mutex<InFlight>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut f = self.flight.lock().expect("in-flight lock");
        for d in &self.destinations {
            f.put(d);
        }
    }
}

impl Reservation {
    /// One delivery's share: its worker; its destination stays counted (the send uncounts it).
    fn take_one(&mut self, destination: &str) -> Option<OwnedSemaphorePermit> {
        let at = self.destinations.iter().position(|d| d == destination)?;
        let permit = self.permit.split(1)?;
        self.destinations.swap_remove(at);
        Some(permit)
    }
}

impl Handoff {
    /// Room for deliveries to these destinations to start now, or `None` (none to send, the
    /// workers or one of the destinations busy, or the workers not running).
    pub fn reserve(&self, destinations: &[&str]) -> Option<Reservation> {
        // While deliveries wait in the store, new ones queue behind them (no overtaking).
        if destinations.is_empty()
            || !self.open.load(Ordering::Acquire)
            || self.backlog.load(Ordering::Acquire)
        {
            return None;
        }
        let n = u32::try_from(destinations.len()).ok()?;
        let permit = self.permits.clone().try_acquire_many_owned(n).ok()?;
        let mut room = Reservation {
            permit,
            destinations: Vec::with_capacity(destinations.len()),
            flight: self.flight.clone(),
        };
        let mut f = self.flight.lock().expect("in-flight lock");
        for d in destinations {
            if !f.take(d, self.per_destination) {
                drop(f);
                return None; // `room` gives back what it counted.
            }
            room.destinations.push(d.to_string());
        }
        drop(f);
        Some(room)
    }

    /// Tells the workers that deliveries were stored pending for want of room: they look in
    /// the store again as sends finish.
    pub fn stored_pending(&self) {
        self.stored.fetch_add(1, Ordering::SeqCst);
        self.backlog.store(true, Ordering::SeqCst);
    }

    /// Gives the workers committed deliveries recorded as claimed. If the workers have
    /// stopped, the deliveries come back: put them back in the store (`Store::release`).
    ///
    /// The deliveries count as in flight here from now on, before the workers start them: the
    /// heartbeat must not take them for sends that never finished while they wait in the
    /// channel (behind a long run of claims, say).
    pub fn send(&self, due: Vec<Due>, event: Arc<Data>, room: Reservation) -> Result<(), Vec<Due>> {
        {
            let mut f = self.flight.lock().expect("in-flight lock");
            f.ids.extend(due.iter().map(|d| d.id));
        }
        self.tx
            .send((due, event, room))
            .map_err(|mpsc::error::SendError((due, _, _))| {
                self.flight.lock().expect("in-flight lock").forget(&due);
                due
            })
    }
}

/// How long a claim waits for more workers to come free when only a few are.
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// The nice value of the workers' threads: when the CPU is short, intake's threads run first.
const WORKER_NICE: i32 = 10;

/// A runtime for the workers (two threads) that gives way to intake: under a burst the router
/// acknowledges first (every acknowledged event is already on disk) and delivers with the CPU
/// left over, at full speed again as soon as the burst is over. When the CPU is not short,
/// the nice value changes nothing.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("switchboard-delivery")
        .on_thread_start(give_way)
        .enable_all()
        .build()
}

/// Lowers the calling thread's priority (raises its nice value), on Linux.
fn give_way() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority and gettid only read their arguments. On Linux the nice value belongs
    // to the thread, so this changes the calling thread alone.
    unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            WORKER_NICE,
        );
    }
}

/// Starts the workers (and the pruning of old history).
pub fn start(app: Arc<App>, store: Store, clients: Clients, mut settings: Settings) -> Workers {
    // Zero would mean no sends at all: at least one in flight, to all and to each destination.
    settings.concurrency = settings.concurrency.max(1);
    settings.per_destination = settings.per_destination.max(1);
    let (stop, stopped) = watch::channel(false);
    let committer = Committer::start(store.clone());
    let (tx, handed) = mpsc::unbounded_channel();
    let flight = Arc::new(Mutex::new(InFlight::default()));
    let handoff = Handoff {
        permits: Arc::new(Semaphore::new(settings.concurrency)),
        flight: flight.clone(),
        per_destination: settings.per_destination,
        open: Arc::new(AtomicBool::new(false)),
        backlog: Arc::new(AtomicBool::new(true)),
        stored: Arc::new(AtomicU64::new(0)),
        tx,
    };
    let shared = Arc::new(Shared {
        app,
        committer: committer.clone(),
        clients,
        settings,
        flight,
        backlog: handoff.backlog.clone(),
        stored: handoff.stored.clone(),
    });
    let work = dispatch(shared.clone(), store, handoff.clone(), handed, stopped);
    let task = match &shared.settings.runtime {
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

/// What the dispatcher shares with the deliveries it starts.
struct Shared {
    app: Arc<App>,
    committer: Committer,
    clients: Clients,
    settings: Settings,
    flight: Arc<Mutex<InFlight>>,
    /// The store may hold due deliveries the workers had no room for: a finished delivery
    /// wakes the dispatcher to look again.
    backlog: Arc<AtomicBool>,
    /// Counts intake's pending stores, so that a look does not clear `backlog` over one made
    /// while it ran.
    stored: Arc<AtomicU64>,
}

impl Shared {
    /// Starts a claimed delivery if its destination has room, holding `permit` until the send
    /// is over; gives the delivery back (dropping the permit) when the destination is at its
    /// limit.
    fn start_claimed(self: &Arc<Self>, due: Due, permit: OwnedSemaphorePermit) -> Option<Due> {
        {
            let mut f = self.flight.lock().expect("in-flight lock");
            if f.ids.contains(&due.id) {
                // Already being sent here (its lease lapsed and this instance took it again).
                return None;
            }
            if !f.take(&due.destination, self.settings.per_destination) {
                return Some(due);
            }
            f.ids.insert(due.id);
        }
        self.spawn(due, None, permit);
        None
    }

    /// Sends `due` (its destination already counted), then records the attempt.
    fn spawn(self: &Arc<Self>, due: Due, event: Option<Arc<Data>>, permit: OwnedSemaphorePermit) {
        let shared = self.clone();
        tokio::spawn(async move {
            let s = &*shared;
            // Gives the worker and the destination's slot back as soon as the send is over,
            // and the delivery (in flight until its attempt is recorded) at the end, however
            // they end (a panic included).
            let _sending = Sending {
                shared: shared.clone(),
                id: due.id,
            };
            let slot = Slot {
                shared: shared.clone(),
                destination: due.destination.clone(),
                permit: Some(permit),
            };
            deliver(
                &s.app,
                &s.committer,
                &s.clients,
                &s.settings.retry,
                &due,
                event,
                slot,
            )
            .await;
        });
    }

    /// A claim of up to `limit` deliveries, each destination's within the room it has left,
    /// skipping the deliveries in flight here.
    fn claim(&self, limit: u32) -> Claim {
        let f = self.flight.lock().expect("in-flight lock");
        Claim {
            limit,
            per_destination: u32::try_from(self.settings.per_destination).unwrap_or(u32::MAX),
            in_use: f
                .per_destination
                .iter()
                .map(|(d, &n)| (d.clone(), u32::try_from(n).unwrap_or(u32::MAX)))
                .collect(),
            in_flight: f.ids.iter().copied().collect(),
        }
    }

    /// Starts deliveries handed over by intake, in the room reserved for them. (Should one
    /// not match its reservation, it goes back to the store as pending.)
    async fn start_handed(
        self: &Arc<Self>,
        store: &Store,
        due: Vec<Due>,
        event: Arc<Data>,
        mut room: Reservation,
    ) {
        // Each counts as in flight since intake handed it over (see [`Handoff::send`]).
        let mut release = Vec::new();
        for d in due {
            let Some(permit) = room.take_one(&d.destination) else {
                release.push(d);
                continue;
            };
            self.spawn(d, Some(event.clone()), permit);
        }
        drop(room);
        if !release.is_empty() {
            self.backlog.store(true, Ordering::Release);
            self.flight.lock().expect("in-flight lock").forget(&release);
            let ids: Vec<i64> = release.iter().map(|d| d.id).collect();
            let _ = store.release(&ids).await;
        }
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    store: Store,
    handoff: Handoff,
    mut handed: mpsc::UnboundedReceiver<Handed>,
    mut stopped: watch::Receiver<bool>,
) {
    let app = shared.app.clone();
    let recovered = match store.recover().await {
        Ok(0) => true,
        Ok(n) => {
            tracing::info!(
                deliveries = n,
                "Picked up deliveries that were in flight when the router last stopped."
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot recover in-flight deliveries; every delivery goes through the store until the next start.");
            false
        }
    };
    // Only now may intake record deliveries as claimed: recovery would have reset them.
    handoff.open.store(recovered, Ordering::Release);
    let pruner = tokio::spawn(prune_forever(store.clone(), shared.settings.history));
    let heartbeat = tokio::spawn(heartbeat_forever(
        app.clone(),
        store.clone(),
        shared.flight.clone(),
        shared.settings.heartbeat,
        shared.settings.listen.clone(),
    ));
    let woken = app.clone();
    if let Err(e) = store
        .listen(Box::new(move || woken.wake.notify_one()))
        .await
    {
        tracing::warn!(error = %e, "Cannot listen for new deliveries from other instances; polling instead.");
    }
    let permits = handoff.permits.clone();
    let poll = shared.settings.poll;
    let claim_at_least = (shared.settings.concurrency / 4).max(1) as u32;
    // Look in the store at start, when woken, and at the latest at `deadline`; deliveries
    // handed over by intake start without a look.
    let mut look = true;
    let mut deadline = tokio::time::Instant::now();
    while !*stopped.borrow() {
        if look {
            look = false;
            // Set before counting free workers: a send finishing meanwhile wakes the next look.
            shared.backlog.store(true, Ordering::SeqCst);
            let stored = shared.stored.load(Ordering::SeqCst);
            let mut free = permits.available_permits() as u32;
            if free > 0 && free < claim_at_least {
                // Only a few workers free (sends finishing one by one under load): let a few
                // more finish, so that one claim (one transaction) serves several.
                tokio::time::sleep(CLAIM_GATHER).await;
                free = permits.available_permits() as u32;
            }
            if free == 0 {
                // No room to look now: the next finished delivery wakes this loop.
                deadline = tokio::time::Instant::now() + poll;
                continue;
            }
            let claim = shared.claim(free);
            let claimed = match shared.committer.claim(claim.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read due deliveries from the store; trying again in 1 s.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    look = true;
                    continue;
                }
            };
            let full = claimed.len() as u32 >= free;
            let busy = held_back(&claim, &claimed);
            let mut release = Vec::new();
            for due in claimed {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    release.push(due.id);
                    continue;
                };
                if let Some(due) = shared.start_claimed(due, permit) {
                    release.push(due.id);
                }
            }
            let more = full || busy || !release.is_empty();
            shared.backlog.store(more, Ordering::SeqCst);
            // Intake may have stored deliveries pending after this claim was committed: they
            // wait in the store, and what intake hands over next must not overtake them. (Read
            // after the store above: a pending store that this read misses sets the flag after
            // it.)
            if !more && shared.stored.load(Ordering::SeqCst) != stored {
                shared.backlog.store(true, Ordering::SeqCst);
            }
            if !release.is_empty() {
                let _ = store.release(&release).await;
            }
            if full && permits.available_permits() > 0 {
                look = true;
                continue;
            }
            let wait = match store.next_due().await {
                // Due now but not taken: its destination is at its limit. A send to it finishing
                // wakes this loop; looking every few milliseconds meanwhile would only load the
                // store.
                Ok(Some(at)) if at <= now_ms() && busy => poll,
                Ok(Some(at)) => {
                    Duration::from_millis((at - now_ms()).clamp(5, poll.as_millis() as i64) as u64)
                }
                _ => poll,
            };
            deadline = tokio::time::Instant::now() + wait;
        }
        tokio::select! {
            _ = app.wake.notified() => look = true,
            _ = tokio::time::sleep_until(deadline) => look = true,
            Some((due, event, room)) = handed.recv() => shared.start_handed(&store, due, event, room).await,
            _ = stopped.changed() => {},
        }
    }
    handoff.open.store(false, Ordering::Release);
    handed.close();
    while let Some((due, _, _)) = handed.recv().await {
        shared.flight.lock().expect("in-flight lock").forget(&due);
        let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
        let _ = store.release(&ids).await;
    }
    pruner.abort();
    heartbeat.abort();
    while !shared.flight.lock().expect("in-flight lock").ids.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `claim` may have left due deliveries in the store for want of room at their
/// destination: one was at its limit when claiming, or the claim filled one's room.
fn held_back(claim: &Claim, claimed: &[Due]) -> bool {
    let mut used: HashMap<&str, u32> = claim.in_use.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    for d in claimed {
        *used.entry(d.destination.as_str()).or_default() += 1;
    }
    used.values().any(|&n| n >= claim.per_destination)
}

/// A delivery in flight (sent or being sent, its attempt not yet recorded): dropped at the end,
/// it stops counting as this instance's.
struct Sending {
    shared: Arc<Shared>,
    id: i64,
}

impl Drop for Sending {
    fn drop(&mut self) {
        let mut f = self.shared.flight.lock().expect("in-flight lock");
        f.ids.remove(&self.id);
    }
}

/// A worker and a slot of a destination, held while a send is under way: dropped when the send
/// is over (the attempt is recorded after), it frees both and, if deliveries wait in the store,
/// wakes the dispatcher.
struct Slot {
    shared: Arc<Shared>,
    destination: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared
            .flight
            .lock()
            .expect("in-flight lock")
            .put(&self.destination);
        drop(self.permit.take());
        if self.shared.backlog.load(Ordering::Acquire) {
            self.shared.app.wake.notify_one();
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

/// Renders and sends one delivery, gives back its `slot`, then records the attempt and what
/// comes next.
async fn deliver(
    app: &App,
    recorder: &Committer,
    clients: &Clients,
    policy: &RetryPolicy,
    due: &Due,
    event: Option<Arc<Data>>,
    slot: Slot,
) {
    let started_at = now_ms();
    let clock = Instant::now();
    let attempt_no = due.attempts + 1;
    let o = attempt(app, clients, policy, due, event).await;
    drop(slot);
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
    let finished = Finished {
        id: due.id,
        attempt,
        next: o.next,
    };
    // The outcome is known: a failed write (its batch may have failed for another row's sake)
    // is tried again rather than leaving the delivery `sending`.
    for (n, wait) in RECORD_RETRIES.iter().enumerate() {
        match recorder.record(finished.clone()).await {
            Ok(()) => return,
            Err(StoreError::Closed) => break,
            Err(e) if n + 1 < RECORD_RETRIES.len() => {
                tracing::warn!(event_id, rule, delivery_id = due.id, error = %e, "Cannot record a delivery attempt; trying again.");
                tokio::time::sleep(*wait).await;
            }
            Err(_) => break,
        }
    }
    tracing::error!(
        event_id,
        rule,
        delivery_id = due.id,
        "Cannot record a delivery attempt; the delivery is taken up again once its lease (--lease) lapses."
    );
}

/// Waits between tries to record an attempt (the last entry is not waited).
const RECORD_RETRIES: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::ZERO,
];

/// One attempt: render and send, and decide what comes next.
async fn attempt(
    app: &App,
    clients: &Clients,
    policy: &RetryPolicy,
    due: &Due,
    event: Option<Arc<Data>>,
) -> Outcome {
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
    let event: Arc<Data> = match event {
        Some(event) => event,
        None => match serde_json::from_str::<Value>(&due.payload) {
            Ok(v) => Arc::new(Data::from(v)),
            Err(e) => {
                return fail(
                    Next::Dead,
                    format!("the stored event is not valid JSON: {e}"),
                    "bad_event",
                    kind,
                );
            }
        },
    };
    let message = match step.action.render_data(&event, &config.templates) {
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
async fn heartbeat_forever(
    app: Arc<App>,
    store: Store,
    flight: Arc<Mutex<InFlight>>,
    every: Duration,
    listen: String,
) {
    loop {
        let sending: Vec<i64> = {
            let f = flight.lock().expect("in-flight lock");
            f.ids.iter().copied().collect()
        };
        if let Err(e) = store
            .heartbeat(&listen, &app.current().hash, &sending)
            .await
        {
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

#[cfg(test)]
mod tests {
    use super::{Claim, Due, held_back};

    fn claim(in_use: &[(&str, u32)]) -> Claim {
        Claim {
            limit: 32,
            per_destination: 4,
            in_use: in_use.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
            in_flight: vec![],
        }
    }

    fn due(destination: &str) -> Due {
        Due {
            id: 1,
            event_id: String::new(),
            rule: String::new(),
            action_index: 0,
            destination: destination.into(),
            attempts: 0,
            config_hash: String::new(),
            payload: String::new(),
            received_at: 0,
        }
    }

    #[test]
    fn a_claim_held_back_deliveries_when_a_destination_is_or_became_full() {
        // At its limit when claiming: its due deliveries were not looked at.
        assert!(held_back(&claim(&[("slack", 4)]), &[]));
        // The claim filled the room left (3 in flight, 1 taken): more may be due.
        assert!(held_back(&claim(&[("slack", 3)]), &[due("slack")]));
        let four: Vec<Due> = (0..4).map(|_| due("crm")).collect();
        assert!(held_back(&claim(&[]), &four));
        // Room left everywhere: everything due was taken.
        assert!(!held_back(&claim(&[("slack", 2)]), &[due("slack")]));
        assert!(!held_back(&claim(&[]), &[due("crm"), due("slack")]));
    }
}
