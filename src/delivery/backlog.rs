//! The backlog flag: whether deliveries may be waiting in the store that this instance's
//! workers have not taken. While it is set, intake stores new deliveries pending instead of
//! handing them straight to the workers (they must not overtake those already waiting), and
//! every send that finishes wakes the dispatcher to look in the store again.
//!
//! Only a look at the store clears it, and only when the look left nothing behind and intake
//! stored nothing pending while it ran. All of it is sequentially consistent: a pending store
//! that a look's check misses sets the flag after that look clears it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// See the module documentation.
pub(super) struct Backlog {
    set: AtomicBool,
    /// How many times intake stored deliveries pending.
    stored: AtomicU64,
}

/// A look at the store under way: what it must know when it ends.
#[must_use = "a look ends with `Backlog::finish`"]
pub(super) struct Look {
    stored: u64,
}

impl Default for Backlog {
    /// Set: at start the store may hold anything.
    fn default() -> Self {
        Backlog {
            set: AtomicBool::new(true),
            stored: AtomicU64::new(0),
        }
    }
}

impl Backlog {
    /// Whether deliveries may be waiting in the store.
    pub(super) fn is_set(&self) -> bool {
        self.set.load(SeqCst)
    }

    /// Deliveries were left in the store (given back unsent, or not taken for want of room).
    pub(super) fn set(&self) {
        self.set.store(true, SeqCst);
    }

    /// Intake stored deliveries pending (no room to hand them over).
    pub(super) fn stored_pending(&self) {
        self.stored.fetch_add(1, SeqCst);
        self.set.store(true, SeqCst);
    }

    /// A look at the store begins. The flag is set for as long as it runs, so that a send
    /// finishing meanwhile wakes the next look.
    pub(super) fn look(&self) -> Look {
        self.set.store(true, SeqCst);
        Look {
            stored: self.stored.load(SeqCst),
        }
    }

    /// The look ends: `more` says whether it may have left due deliveries behind. The flag is
    /// cleared only when it did not and intake stored nothing pending since it began.
    pub(super) fn finish(&self, look: Look, more: bool) {
        self.set.store(more, SeqCst);
        // Read after the store: a pending store this misses sets the flag after it.
        if !more && self.stored.load(SeqCst) != look.stored {
            self.set.store(true, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn it_starts_set_and_only_a_look_that_left_nothing_clears_it() {
        let b = Backlog::default();
        assert!(b.is_set(), "at start the store may hold anything");
        let look = b.look();
        b.finish(look, true);
        assert!(b.is_set(), "the look left deliveries behind");
        let look = b.look();
        assert!(b.is_set(), "set while a look runs");
        b.finish(look, false);
        assert!(!b.is_set());
        b.set();
        assert!(b.is_set());
    }

    #[test]
    fn a_pending_store_during_a_look_keeps_it_set() {
        let b = Backlog::default();
        let look = b.look();
        b.stored_pending();
        b.finish(look, false);
        assert!(b.is_set(), "the store holds what intake stored meanwhile");
        // The next look, with no store during it, clears it.
        let look = b.look();
        b.finish(look, false);
        assert!(!b.is_set());
        // A store after a look ended sets it again.
        b.stored_pending();
        assert!(b.is_set());
    }

    #[test]
    fn a_pending_store_racing_a_look_is_never_lost() {
        // Whatever the interleaving, once both are done the flag is set: the store happened
        // during or after the look, and nothing has looked since.
        for _ in 0..2_000 {
            let b = Arc::new(Backlog::default());
            let look = b.look();
            let storer = {
                let b = b.clone();
                std::thread::spawn(move || b.stored_pending())
            };
            b.finish(look, false);
            storer.join().unwrap();
            assert!(b.is_set());
        }
    }
}
