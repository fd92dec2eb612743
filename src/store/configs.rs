//! The configurations deliveries were matched under, kept by hash: a delivery waiting for a
//! retry (or a dead letter retried) is sent with the rules and templates that matched its
//! event even after the rule was renamed or removed, the router restarted, or another instance
//! loaded other rules.

use super::{Millis, Store, StoreError, now_ms};

/// How long a configuration no longer serving is kept once no delivery waits on it.
pub const KEPT_FOR_MS: Millis = 30 * 86_400_000;

impl Store {
    /// Keeps a configuration's snapshot under its hash (once; later saves of the same hash
    /// only mark it as still in use).
    pub async fn save_config(&self, hash: &str, snapshot: &str) -> Result<(), StoreError> {
        let now = now_ms();
        on_pool!(writer self, pool => {
            sqlx::query(
                "INSERT INTO configs (hash, snapshot, saved_at) VALUES ($1, $2, $3)
                 ON CONFLICT (hash) DO UPDATE SET saved_at = excluded.saved_at",
            )
            .bind(hash)
            .bind(snapshot)
            .bind(now)
            .execute(pool)
            .await?;
            // A configuration some delivery still waits on (pending, being sent, or a dead
            // letter that may be retried), or an open digest will be sent with, is kept
            // however old.
            sqlx::query(
                "DELETE FROM configs WHERE saved_at < $1 AND NOT EXISTS (
                     SELECT 1 FROM events e JOIN deliveries d ON d.event_id = e.id
                     WHERE e.config_hash = configs.hash
                       AND d.status IN ('pending', 'sending', 'dead'))
                   AND NOT EXISTS (
                     SELECT 1 FROM digests g
                     WHERE g.config_hash = configs.hash AND g.closed_at IS NULL)",
            )
                .bind(now - KEPT_FOR_MS)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The snapshot kept under a hash, if any.
    pub async fn load_config(&self, hash: &str) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT snapshot FROM configs WHERE hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await?
        }))
    }
}
