//! Group commit: callers queue their writes here; one task writes whatever has queued up in one
//! transaction and answers each caller when that transaction is durable. Under load a batch
//! grows by itself while the previous commit is being written, so one fsync serves many writes.
//! Intake's events (a `200` waits for their commit), the workers' attempt records and their
//! claims share the queue and its transactions.
//!
//! With SQLite the committing task runs on a thread of its own: it waits on SQLite's thread for
//! each commit, and its wake-ups would otherwise queue behind the requests and sends on the
//! runtime's workers.

use super::{Claim, Due, Finished, Intake, NewEvent, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Largest batch written in one transaction.
pub const MAX_BATCH: usize = 512;

/// How long the queue stays empty before the committer counts as idle.
const IDLE_AFTER: Duration = Duration::from_millis(2);

type Reply<R> = oneshot::Sender<Result<R, String>>;

/// A queue of writes served by one task, in batches.
struct Batch<T, R> {
    tx: mpsc::Sender<(T, Reply<R>)>,
    health: Arc<Health>,
}

impl<T, R> Clone for Batch<T, R> {
    fn clone(&self) -> Self {
        Batch {
            tx: self.tx.clone(),
            health: self.health.clone(),
        }
    }
}

/// How the writes go: what readiness reports.
struct Health {
    /// The last write's error and when it came, until a write succeeds.
    failing: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// When the write under way began, in ms after `base` plus one (0 when none is).
    writing_since: std::sync::atomic::AtomicU64,
    /// The monotonic clock's origin for `writing_since`.
    base: std::time::Instant,
}

/// How long a failed write keeps readiness down when no write comes after it (the workers'
/// claims write every second, so a store still failing fails again well within this).
const FAILURE_SHOWN_FOR: Duration = Duration::from_secs(10);

impl Health {
    fn new() -> Self {
        Health {
            failing: std::sync::Mutex::new(None),
            writing_since: std::sync::atomic::AtomicU64::new(0),
            base: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }
}

impl<T: Send + 'static, R: Send + 'static> Batch<T, R> {
    /// Starts the task: `write` writes each batch; `idle` runs when nothing has come for
    /// [`IDLE_AFTER`].
    fn start<F, Fut, I, IFut>(what: &'static str, own_thread: bool, write: F, idle: I) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
        I: Fn() -> IFut + Send + 'static,
        IFut: Future<Output = ()> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(MAX_BATCH * 8);
        let health = Arc::new(Health::new());
        let batch_health = health.clone();
        let serve = async move {
            let health = batch_health;
            let mut batch = Vec::with_capacity(MAX_BATCH);
            loop {
                let received =
                    match tokio::time::timeout(IDLE_AFTER, rx.recv_many(&mut batch, MAX_BATCH))
                        .await
                    {
                        Ok(n) => n,
                        Err(_) => {
                            idle().await;
                            rx.recv_many(&mut batch, MAX_BATCH).await
                        }
                    };
                if received == 0 {
                    break;
                }
                let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.drain(..).unzip();
                let n = items.len();
                health.writing_since.store(health.now(), Ordering::Relaxed);
                let written = write(items).await;
                health.writing_since.store(0, Ordering::Relaxed);
                *health.failing.lock().expect("health lock") = written
                    .as_ref()
                    .err()
                    .map(|e| (std::time::Instant::now(), e.to_string()));
                match written {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, writes = n, "Cannot write {what} to the store.");
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        };
        if !own_thread {
            tokio::spawn(serve);
            return Batch { tx, health };
        }
        // The thread ends when every sender is gone (the router has stopped).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the committer starts");
        std::thread::Builder::new()
            .name("switchboard-commit".into())
            .spawn(move || runtime.block_on(serve))
            .expect("the committer's thread starts");
        Batch { tx, health }
    }

    async fn submit(&self, item: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        match answer.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(message)) => Err(StoreError::Batch(message)),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// What one caller asks to have written.
enum Write {
    /// An accepted webhook (intake waits for it before answering).
    Event(NewEvent),
    /// A delivery attempt and what comes next.
    Finished(Finished),
    /// The workers asking for due deliveries.
    Claim(Claim),
}

/// Which kind of [`Write`] stood at a place in a batch (its answer goes back there).
enum Kind {
    Event,
    Finished,
    Claim,
}

/// The answer to one [`Write`].
enum Written {
    Event(Intake),
    Finished,
    Claimed(Vec<Due>),
}

/// The one queue of writes: intake's events, the workers' attempt records and their claims
/// share each transaction, so one commit (one fsync) serves them all.
///
/// With PostgreSQL a claim runs in a transaction of its own beside the queue (`claims`): it
/// locks only rows nobody holds (`SKIP LOCKED`), so it needs no turn in the queue, and waiting
/// for one (the commit under way, then its own) held the workers' sends to a claim every 10 ms
/// or so once deliveries waited in the store: about 4,500 a second with 64 workers.
#[derive(Clone)]
pub struct Committer {
    queue: Batch<Write, Written>,
    claims: Option<Store>,
}

impl Committer {
    /// Starts the committing task on `store`.
    pub fn start(store: Store) -> Committer {
        let idle = store.clone();
        let own_thread = store.runtime_free();
        let claims = match &store {
            Store::Postgres(_) => Some(store.clone()),
            Store::Sqlite(_) => None,
        };
        let queue = Batch::start(
            "events and delivery results",
            own_thread,
            move |writes: Vec<Write>| {
                let store = store.clone();
                async move {
                    let mut events = Vec::new();
                    let mut done = Vec::new();
                    let mut claims = Vec::new();
                    let kinds: Vec<Kind> = writes
                        .into_iter()
                        .map(|w| match w {
                            Write::Event(e) => {
                                events.push(e);
                                Kind::Event
                            }
                            Write::Finished(f) => {
                                done.push(f);
                                Kind::Finished
                            }
                            Write::Claim(c) => {
                                claims.push(c);
                                Kind::Claim
                            }
                        })
                        .collect();
                    let outcome = store.write(&events, &done, &claims).await?;
                    if outcome.intakes.len() != events.len()
                        || outcome.claimed.len() != claims.len()
                    {
                        return Err(StoreError::Mismatch(format!(
                            "the store answered for {} of {} events and {} of {} claims",
                            outcome.intakes.len(),
                            events.len(),
                            outcome.claimed.len(),
                            claims.len()
                        )));
                    }
                    let mut intakes = outcome.intakes.into_iter();
                    let mut claimed = outcome.claimed.into_iter();
                    Ok(kinds
                        .into_iter()
                        .map(|kind| match kind {
                            Kind::Event => {
                                Written::Event(intakes.next().expect("one answer per event"))
                            }
                            Kind::Finished => Written::Finished,
                            Kind::Claim => {
                                Written::Claimed(claimed.next().expect("one answer per claim"))
                            }
                        })
                        .collect())
                }
            },
            move || {
                let store = idle.clone();
                async move { store.pause().await }
            },
        );
        Committer { queue, claims }
    }

    /// Whether writes succeed: `Err` with why when the last one failed (until one succeeds), or
    /// when the one under way has taken longer than `stall` (a locked or frozen store).
    pub fn health(&self, stall: Duration) -> Result<(), String> {
        let health = &self.queue.health;
        if let Some((at, e)) = health.failing.lock().expect("health lock").clone()
            && at.elapsed() < FAILURE_SHOWN_FOR
        {
            return Err(format!("the last write to the store failed: {e}"));
        }
        let since = health.writing_since.load(Ordering::Relaxed);
        let waited = health.now().saturating_sub(since);
        if since != 0 && waited > stall.as_millis() as u64 {
            return Err(format!(
                "a write to the store has been under way for {:.1} s",
                waited as f64 / 1000.0
            ));
        }
        Ok(())
    }

    /// Records an event; returns once it is committed (or refused).
    pub async fn submit(&self, event: NewEvent) -> Result<Intake, StoreError> {
        match self.queue.submit(Write::Event(event)).await? {
            Written::Event(intake) => Ok(intake),
            _ => Err(StoreError::Mismatch(
                "an event was answered as another write".into(),
            )),
        }
    }

    /// Claims due deliveries for this instance's workers (see [`Store::write`]); returns once
    /// the claim is committed.
    pub async fn claim(&self, claim: Claim) -> Result<Vec<Due>, StoreError> {
        if let Some(store) = &self.claims {
            let mut outcome = store.write(&[], &[], &[claim]).await?;
            return outcome
                .claimed
                .pop()
                .ok_or_else(|| StoreError::Mismatch("the store answered no claim".into()));
        }
        match self.queue.submit(Write::Claim(claim)).await? {
            Written::Claimed(due) => Ok(due),
            _ => Err(StoreError::Mismatch(
                "a claim was answered as another write".into(),
            )),
        }
    }

    /// Records an attempt; returns once it is committed.
    pub async fn record(&self, finished: Finished) -> Result<(), StoreError> {
        self.queue
            .submit(Write::Finished(finished))
            .await
            .map(|_| ())
    }
}
