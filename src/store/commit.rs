//! Group commit: callers queue their writes here; one task writes whatever has queued up in one
//! transaction and answers each caller when that transaction is durable. Under load a batch
//! grows by itself while the previous commit is being written, so one fsync serves many writes.
//! Intake's events (a `200` waits for their commit) and the workers' attempt records share the
//! queue and its transactions.

use super::{Finished, Intake, NewEvent, Store, StoreError};
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

/// Largest batch written in one transaction.
pub const MAX_BATCH: usize = 512;

type Reply<R> = oneshot::Sender<Result<R, String>>;

/// A queue of writes served by one task, in batches.
struct Batch<T, R> {
    tx: mpsc::Sender<(T, Reply<R>)>,
}

impl<T, R> Clone for Batch<T, R> {
    fn clone(&self) -> Self {
        Batch {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batch<T, R> {
    fn start<F, Fut>(what: &'static str, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(MAX_BATCH * 8);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.drain(..).unzip();
                let n = items.len();
                match write(items).await {
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
        });
        Batch { tx }
    }

    async fn submit(&self, item: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        match answer.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(message)) => Err(StoreError::Database(sqlx::Error::Protocol(message))),
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
}

/// The answer to one [`Write`].
enum Written {
    Event(Intake),
    Finished,
}

/// The one queue of writes: intake's events and the workers' attempt records share each
/// transaction, so one commit (one fsync) serves both.
#[derive(Clone)]
pub struct Committer(Batch<Write, Written>);

impl Committer {
    /// Starts the committing task on `store`.
    pub fn start(store: Store) -> Committer {
        Committer(Batch::start(
            "events and delivery results",
            move |writes: Vec<Write>| {
                let store = store.clone();
                async move {
                    let mut events = Vec::new();
                    let mut done = Vec::new();
                    let kinds: Vec<bool> = writes
                        .into_iter()
                        .map(|w| match w {
                            Write::Event(e) => {
                                events.push(e);
                                true
                            }
                            Write::Finished(f) => {
                                done.push(f);
                                false
                            }
                        })
                        .collect();
                    let intakes = store.write(&events, &done).await?;
                    if intakes.len() != events.len() {
                        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                            "the store answered for {} of {} events",
                            intakes.len(),
                            events.len()
                        ))));
                    }
                    let mut intakes = intakes.into_iter();
                    Ok(kinds
                        .into_iter()
                        .map(|event| match event {
                            true => Written::Event(intakes.next().expect("one answer per event")),
                            false => Written::Finished,
                        })
                        .collect())
                }
            },
        ))
    }

    /// Records an event; returns once it is committed (or refused).
    pub async fn submit(&self, event: NewEvent) -> Result<Intake, StoreError> {
        match self.0.submit(Write::Event(event)).await? {
            Written::Event(intake) => Ok(intake),
            Written::Finished => Err(StoreError::Closed),
        }
    }

    /// Records an attempt; returns once it is committed.
    pub async fn record(&self, finished: Finished) -> Result<(), StoreError> {
        self.0.submit(Write::Finished(finished)).await.map(|_| ())
    }
}
