//! Group commit: intake requests queue their events here; one task writes whatever has queued
//! up in one transaction and answers each request when that transaction is durable. Under load
//! the batch grows by itself while the previous commit is being written.

use super::{Intake, NewEvent, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Largest batch written in one transaction.
pub const MAX_BATCH: usize = 512;

type Request = (NewEvent, oneshot::Sender<Result<Intake, String>>);

/// The handle intake uses to record an event durably.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committing task on `store`.
    pub fn start(store: Store) -> Committer {
        let (tx, mut rx) = mpsc::channel::<Request>(MAX_BATCH * 8);
        tokio::spawn(async move {
            let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (events, replies): (Vec<NewEvent>, Vec<_>) = batch.drain(..).unzip();
                match store.accept(&events).await {
                    Ok(outcomes) => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, events = events.len(), "Events could not be stored; they were refused.");
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Committer { tx }
    }

    /// Records an event; returns once it is committed (or refused).
    pub async fn submit(&self, event: NewEvent) -> Result<Intake, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((event, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        match answer.await {
            Ok(Ok(intake)) => Ok(intake),
            Ok(Err(message)) => Err(StoreError::Database(sqlx::Error::Protocol(message))),
            Err(_) => Err(StoreError::Closed),
        }
    }
}
