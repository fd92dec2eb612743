//! Group commit: callers queue their writes here; one task writes whatever has queued up in one
//! transaction and answers each caller when that transaction is durable. Under load a batch
//! grows by itself while the previous commit is being written, so one fsync serves many writes.
//! [`Committer`] batches intake (a `200` waits for it); [`Recorder`] batches delivery results.

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

/// The handle intake uses to record an event durably.
#[derive(Clone)]
pub struct Committer(Batch<NewEvent, Intake>);

impl Committer {
    /// Starts the committing task on `store`.
    pub fn start(store: Store) -> Committer {
        Committer(Batch::start("events", move |events: Vec<NewEvent>| {
            let store = store.clone();
            async move { store.accept(&events).await }
        }))
    }

    /// Records an event; returns once it is committed (or refused).
    pub async fn submit(&self, event: NewEvent) -> Result<Intake, StoreError> {
        self.0.submit(event).await
    }
}

/// The handle workers use to record delivery attempts.
#[derive(Clone)]
pub struct Recorder(Batch<Finished, ()>);

impl Recorder {
    /// Starts the recording task on `store`.
    pub fn start(store: Store) -> Recorder {
        Recorder(Batch::start(
            "delivery results",
            move |done: Vec<Finished>| {
                let store = store.clone();
                async move {
                    let n = done.len();
                    store.finish(&done).await.map(|()| vec![(); n])
                }
            },
        ))
    }

    /// Records an attempt; returns once it is committed.
    pub async fn record(&self, finished: Finished) -> Result<(), StoreError> {
        self.0.submit(finished).await
    }
}
