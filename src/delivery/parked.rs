//! Events parked in memory: intake keeps the prepared event of deliveries it stored pending
//! (the workers had no room, or deliveries were already waiting), so that the claim that later
//! takes them starts the send without parsing the stored JSON again, which is most of what a
//! claimed delivery costs beyond a handed one. The store stays the record: an event not found
//! here (over the budget, expired, or parked by another instance) is read from it as before.
//!
//! Bounded in the stored JSON's bytes. A full budget keeps what it holds rather than making
//! room: claims take deliveries oldest first, so the oldest parked events are the next used.
//! Entries expire after a while (their deliveries may be claimed by another instance, or held
//! for a retry), removed when something is parked.

use crate::template::Data;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Parked events: see the module documentation.
pub(super) struct Parked {
    inner: Mutex<Inner>,
    budget: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Inner {
    /// By event id: time-ordered (UUIDv7), so the first entries are the oldest.
    events: BTreeMap<String, Entry>,
    bytes: usize,
}

struct Entry {
    data: Arc<Data>,
    /// Deliveries that have not taken it yet.
    left: usize,
    bytes: usize,
    parked_at: Instant,
}

/// Stored JSON kept parked at most: a second of a backlog at a few thousand events a second.
pub(super) const BUDGET: usize = 2 << 20;

/// How long an event stays parked.
pub(super) const TTL: Duration = Duration::from_secs(30);

impl Parked {
    pub(super) fn new(budget: usize, ttl: Duration) -> Self {
        Parked {
            inner: Mutex::new(Inner::default()),
            budget,
            ttl,
        }
    }

    /// Parks `data` for its `deliveries` pending ones; `bytes` is its stored JSON's length.
    pub(super) fn park(&self, event_id: &str, data: Arc<Data>, deliveries: usize, bytes: usize) {
        if deliveries == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(first) = inner.events.first_entry() {
            if now.duration_since(first.get().parked_at) < self.ttl {
                break;
            }
            let gone = first.remove();
            inner.bytes -= gone.bytes;
        }
        if inner.bytes + bytes > self.budget {
            return;
        }
        inner.bytes += bytes;
        inner.events.insert(
            event_id.to_string(),
            Entry {
                data,
                left: deliveries,
                bytes,
                parked_at: now,
            },
        );
    }

    /// The parked event of a delivery about to start, if it is here; it stays parked for the
    /// event's other deliveries.
    pub(super) fn take(&self, event_id: &str) -> Option<Arc<Data>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.events.get_mut(event_id)?;
        entry.left -= 1;
        let data = entry.data.clone();
        if entry.left == 0 {
            let bytes = entry.bytes;
            inner.events.remove(event_id);
            inner.bytes -= bytes;
        }
        Some(data)
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(id: &str) -> Arc<Data> {
        Arc::new(Data::from(
            json!({"event": "EMAIL_REPLIED", "event_id": id}),
        ))
    }

    fn id(n: u64) -> String {
        // Time-ordered as the router's ids are.
        format!("0190-{n:08}")
    }

    #[test]
    fn an_event_serves_each_of_its_deliveries_once() {
        let p = Parked::new(1000, TTL);
        p.park(&id(1), data(&id(1)), 2, 100);
        let first = p.take(&id(1)).expect("parked");
        assert_eq!(first.value()["event_id"], id(1));
        assert!(p.take(&id(1)).is_some(), "its second delivery");
        assert!(p.take(&id(1)).is_none(), "gone once both took it");
        assert_eq!(p.bytes(), 0);
        assert!(p.take(&id(2)).is_none(), "never parked");
    }

    #[test]
    fn a_full_budget_keeps_the_oldest_and_refuses_the_newest() {
        let p = Parked::new(250, TTL);
        for n in 1..=3 {
            p.park(&id(n), data(&id(n)), 1, 100);
        }
        assert!(p.take(&id(3)).is_none(), "over the budget: not parked");
        assert!(p.take(&id(1)).is_some());
        // Room again.
        p.park(&id(4), data(&id(4)), 1, 100);
        assert!(p.take(&id(2)).is_some());
        assert!(p.take(&id(4)).is_some());
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn expired_events_make_room_for_new_ones() {
        let p = Parked::new(250, Duration::ZERO);
        p.park(&id(1), data(&id(1)), 1, 200);
        // Parking the next expires the first (a zero time to live), so it fits.
        p.park(&id(2), data(&id(2)), 1, 200);
        assert!(p.take(&id(1)).is_none(), "expired");
        assert!(p.take(&id(2)).is_some());
    }
}
