//! Silences as the store keeps them (see `silence`): added, read while in force (or since a
//! time, for listing), and expired early; and rule memory read without a transaction, for
//! `test --explain --store`.

use super::memory::{Needs, Overlay};
use super::{Millis, Store, StoreError};
use std::collections::HashMap;

/// A silence's row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SilenceRow {
    /// Its id.
    pub id: String,
    /// `[[field, value], …]` as JSON.
    pub matchers: String,
    /// The rule it is limited to.
    pub rule: Option<String>,
    /// Why.
    pub comment: String,
    /// When it was added.
    pub created_at: Millis,
    /// When it ends.
    pub ends_at: Millis,
}

impl Store {
    /// Keeps a new silence.
    pub async fn add_silence(&self, row: &SilenceRow) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_silence(row).await)
    }

    /// The silences that end after `after`, oldest first.
    pub async fn silences(&self, after: Millis) -> Result<Vec<SilenceRow>, StoreError> {
        dispatch!(self, s => s.silences(after).await)
    }

    /// Ends a silence at `now` if it is still in force; returns whether it was.
    pub async fn expire_silence(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        dispatch!(self, s => s.expire_silence(id, now).await)
    }

    /// The rule memory a decider needs, read as it stands at `now`, without changing anything
    /// (nor locking it).
    pub async fn peek(&self, needs: &Needs, now: Millis) -> Result<Overlay, StoreError> {
        let mut cells = HashMap::new();
        for slot in &needs.cells {
            let cell = dispatch!(self, s => s.peek_cell(slot).await)?;
            cells.insert(slot.clone(), cell);
        }
        let mut counts = HashMap::new();
        for span in &needs.spans {
            let n = dispatch!(self, s => s.peek_count(span).await)?;
            counts.insert(span.clone(), n);
        }
        Ok(Overlay::new(now, cells, counts))
    }
}
