//! The deliveries in flight on this instance: which ones (so that none is sent twice at once,
//! and the heartbeat knows what this instance is still sending) and how many sends are under
//! way to each destination (so that none gets more than its limit).
//!
//! Both are held through tokens that give back what they hold when dropped, however the send
//! ends (a panic included): a [`Tracked`] delivery stays in flight until its attempt is
//! recorded, a [`DestinationSlot`] counts until its send is over.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// The in-flight set, shared by intake's handoff, the dispatcher, the sends and the heartbeat.
#[derive(Clone)]
pub(super) struct InFlight {
    inner: Arc<Mutex<Inner>>,
    limit: usize,
}

#[derive(Default)]
struct Inner {
    ids: HashSet<i64>,
    /// Sends under way per destination; a destination with none has no entry.
    per_destination: HashMap<String, usize>,
}

/// A delivery counted as in flight; dropped, it no longer is.
pub(super) struct Tracked {
    set: InFlight,
    id: i64,
}

/// One send under way to a destination; dropped, it frees the destination's room.
pub(super) struct DestinationSlot {
    set: InFlight,
    destination: String,
}

/// What a claim must know of this instance: the sends under way per destination, and the
/// deliveries in flight.
pub(super) struct Snapshot {
    /// `(destination, sends under way)`, destinations with none left out.
    pub(super) in_use: Vec<(String, u32)>,
    /// The deliveries in flight.
    pub(super) ids: Vec<i64>,
}

impl InFlight {
    /// An empty set allowing `limit` sends at once to each destination (at least 1).
    pub(super) fn new(limit: usize) -> Self {
        InFlight {
            inner: Arc::default(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the counts as they were between two whole
        // updates: every update below is complete or not begun.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A send to `destination`, if it has room.
    pub(super) fn slot(&self, destination: &str) -> Option<DestinationSlot> {
        self.slots(&[destination])?.pop()
    }

    /// A send to each of `destinations` (a destination may be named more than once), if all of
    /// them have room; otherwise none is counted. One lock for all: two reservations racing
    /// for the same destinations cannot each take part and both fail.
    pub(super) fn slots(&self, destinations: &[&str]) -> Option<Vec<DestinationSlot>> {
        let mut inner = self.lock();
        for (i, d) in destinations.iter().enumerate() {
            if !inner.take(d, self.limit) {
                destinations[..i].iter().for_each(|d| inner.put(d));
                return None;
            }
        }
        drop(inner);
        let slot = |d: &&str| DestinationSlot {
            set: self.clone(),
            destination: d.to_string(),
        };
        Some(destinations.iter().map(slot).collect())
    }

    /// Counts a delivery as in flight, unless it already is (its lease lapsed and a claim
    /// took it again while this instance is still sending it).
    pub(super) fn track(&self, id: i64) -> Option<Tracked> {
        self.lock().ids.insert(id).then(|| Tracked {
            set: self.clone(),
            id,
        })
    }

    /// The deliveries in flight now.
    pub(super) fn ids(&self) -> Vec<i64> {
        self.lock().ids.iter().copied().collect()
    }

    /// What a claim must know of this instance now.
    pub(super) fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            in_use: inner
                .per_destination
                .iter()
                .map(|(d, &n)| (d.clone(), u32::try_from(n).unwrap_or(u32::MAX)))
                .collect(),
            ids: inner.ids.iter().copied().collect(),
        }
    }

    /// The most sends under way to one destination.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.set.lock().ids.remove(&self.id);
    }
}

impl DestinationSlot {
    /// The destination this send goes to.
    pub(super) fn destination(&self) -> &str {
        &self.destination
    }
}

impl Drop for DestinationSlot {
    fn drop(&mut self) {
        self.set.lock().put(&self.destination);
    }
}

impl Inner {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_use(set: &InFlight) -> Vec<(String, u32)> {
        let mut v = set.snapshot().in_use;
        v.sort();
        v
    }

    #[test]
    fn a_destination_never_gets_more_than_its_limit_and_a_finished_send_frees_its_room() {
        let set = InFlight::new(2);
        let a = set.slot("slack").expect("room");
        let b = set.slot("slack").expect("room");
        assert!(set.slot("slack").is_none(), "at its limit");
        let other = set
            .slot("crm")
            .expect("another destination has its own room");
        assert_eq!(in_use(&set), [("crm".into(), 1), ("slack".into(), 2)]);
        drop(a);
        let c = set.slot("slack").expect("room again");
        drop((b, c, other));
        assert!(
            set.snapshot().in_use.is_empty(),
            "no destination left counted"
        );
    }

    #[test]
    fn several_destinations_are_taken_all_or_none() {
        let set = InFlight::new(1);
        let busy = set.slot("crm").unwrap();
        assert!(set.slots(&["slack", "crm"]).is_none());
        assert_eq!(in_use(&set), [("crm".into(), 1)], "slack was given back");
        // One destination named twice needs room for two.
        assert!(set.slots(&["slack", "slack"]).is_none());
        drop(busy);
        let both = set.slots(&["slack", "crm"]).expect("room for both");
        assert_eq!(
            both.iter().map(|s| s.destination()).collect::<Vec<_>>(),
            ["slack", "crm"]
        );
        drop(both);
        assert!(set.snapshot().in_use.is_empty());
    }

    #[test]
    fn a_delivery_is_in_flight_once_until_its_token_is_dropped() {
        let set = InFlight::new(4);
        let t = set.track(7).expect("not yet in flight");
        assert!(set.track(7).is_none(), "the same delivery twice");
        let u = set.track(8).unwrap();
        let mut ids = set.ids();
        ids.sort();
        assert_eq!(ids, [7, 8]);
        assert_eq!(set.snapshot().ids.len(), 2);
        drop(t);
        assert_eq!(set.ids(), [8]);
        assert!(set.track(7).is_some(), "free to be taken again");
        drop(u);
    }

    #[test]
    fn a_send_that_panics_still_gives_back_its_room_and_its_delivery() {
        let set = InFlight::new(1);
        let moved = set.clone();
        let result = std::thread::spawn(move || {
            let _slot = moved.slot("slack").unwrap();
            let _tracked = moved.track(1).unwrap();
            panic!("the send failed inside the router");
        })
        .join();
        assert!(result.is_err());
        assert!(set.slot("slack").is_some());
        assert!(set.ids().is_empty());
    }

    #[test]
    fn a_limit_of_zero_means_one() {
        let set = InFlight::new(0);
        assert_eq!(set.limit(), 1);
        let _one = set.slot("slack").expect("one send");
        assert!(set.slot("slack").is_none());
    }
}
