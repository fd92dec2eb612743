//! The checkpointer: a connection of its own that copies the WAL into the database file
//! shortly after commits, so that this work stays out of the group commits intake waits for.

use sqlx::SqliteConnection;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the checkpointer waits after a commit before copying the WAL into the database:
/// one checkpoint covers the commits of that time.
const CHECKPOINT_AFTER: Duration = Duration::from_millis(20);

/// How often the checkpointer runs when no commit wakes it (a checkpoint with nothing to copy
/// costs next to nothing).
const CHECKPOINT_IDLE: Duration = Duration::from_secs(5);

/// Starts the checkpointer on `conn`: [`CHECKPOINT_AFTER`] after a commit wakes it, and every
/// [`CHECKPOINT_IDLE`] otherwise, it copies the WAL into the database with a passive
/// checkpoint, which runs beside the writer and never waits for it. Returns what wakes it; it
/// stops (and closes `conn`) once every sender is gone.
pub(super) fn start(mut conn: SqliteConnection) -> mpsc::Sender<()> {
    let (wake, mut woken) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            match tokio::time::timeout(CHECKPOINT_IDLE, woken.recv()).await {
                // A commit: wait a little, and the commits of the wait are covered too.
                Ok(Some(())) => {
                    tokio::time::sleep(CHECKPOINT_AFTER).await;
                    while woken.try_recv().is_ok() {}
                }
                // Every clone of the store is gone.
                Ok(None) => break,
                // No commit for a while: the other writes (heartbeats, releases, pruning) are
                // copied too, so an idle router's WAL does not creep up to the backstop.
                Err(_) => {}
            }
            // On an error it tries again at the next commit or idle turn; meanwhile the
            // backstop bounds the WAL. One warning per run of failures, not one per commit.
            match sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("The store's WAL is checkpointed again.");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "Cannot checkpoint the store's WAL; commits go on, and checkpoint by themselves once it is long.");
                }
                Err(_) => {}
            }
        }
    });
    wake
}
