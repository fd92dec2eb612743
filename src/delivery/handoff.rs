//! The intake handoff: intake gives the deliveries of an event it has just committed straight
//! to this instance's workers, without a round trip through the store. It reserves room for
//! them before the commit (then they are recorded as claimed, `sending`) and hands them over
//! after it. When the workers or a destination are busy, or deliveries already wait in the
//! store, there is no room, and the new deliveries wait in the store for a claim.

use super::backlog::Backlog;
use super::in_flight::{DestinationSlot, InFlight, Tracked};
use crate::store::Due;
use crate::template::Data;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Intake's side of the handoff.
#[derive(Clone)]
pub struct Handoff {
    permits: Arc<Semaphore>,
    in_flight: InFlight,
    /// Whether the workers take handed deliveries (after recovery at start, until shutdown).
    open: Arc<AtomicBool>,
    backlog: Arc<Backlog>,
    tx: mpsc::UnboundedSender<Handed>,
}

/// Room reserved with the workers for the deliveries of one event: a worker each, counted
/// against each destination's limit. Dropped unused, it gives the room back.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    slots: Vec<DestinationSlot>,
}

/// Deliveries handed over by intake, each counted in flight, with their event (prepared for
/// rendering) and their room.
pub(super) struct Handed {
    pub(super) due: Vec<(Due, Tracked)>,
    pub(super) event: Arc<Data>,
    pub(super) room: Reservation,
}

/// The workers' side of the handoff: what intake hands over, and the switch that opens it.
pub(super) struct Receiver {
    pub(super) handed: mpsc::UnboundedReceiver<Handed>,
    open: Arc<AtomicBool>,
}

/// A handoff and its receiving end, closed until [`Receiver::open`].
pub(super) fn channel(
    permits: Arc<Semaphore>,
    in_flight: InFlight,
    backlog: Arc<Backlog>,
) -> (Handoff, Receiver) {
    let (tx, handed) = mpsc::unbounded_channel();
    let open = Arc::new(AtomicBool::new(false));
    let handoff = Handoff {
        permits,
        in_flight,
        open: open.clone(),
        backlog,
        tx,
    };
    (handoff, Receiver { handed, open })
}

impl Receiver {
    /// From now on intake may record deliveries as claimed and hand them over (recovery at
    /// start would have reset them before).
    pub(super) fn open(&self) {
        self.open.store(true, SeqCst);
    }

    /// No more handing over: what intake reserves from now on goes to the store.
    pub(super) fn close(&mut self) {
        self.open.store(false, SeqCst);
        self.handed.close();
    }
}

impl Reservation {
    /// One delivery's share: its worker and its destination's slot.
    pub(super) fn take_one(
        &mut self,
        destination: &str,
    ) -> Option<(OwnedSemaphorePermit, DestinationSlot)> {
        let at = self
            .slots
            .iter()
            .position(|s| s.destination() == destination)?;
        let permit = self.permit.split(1)?;
        Some((permit, self.slots.swap_remove(at)))
    }
}

impl Handoff {
    /// Room for deliveries to these destinations to start now, or `None` (none to send, the
    /// workers or one of the destinations busy, deliveries waiting in the store, or the
    /// workers not running).
    pub fn reserve(&self, destinations: &[&str]) -> Option<Reservation> {
        // While deliveries wait in the store, new ones queue behind them (no overtaking).
        if destinations.is_empty() || !self.open.load(SeqCst) || self.backlog.is_set() {
            return None;
        }
        let n = u32::try_from(destinations.len()).ok()?;
        let permit = self.permits.clone().try_acquire_many_owned(n).ok()?;
        let slots = self.in_flight.slots(destinations)?;
        Some(Reservation { permit, slots })
    }

    /// Tells the workers that deliveries were stored pending for want of room: they look in
    /// the store again as sends finish.
    pub fn stored_pending(&self) {
        self.backlog.stored_pending();
    }

    /// Gives the workers committed deliveries recorded as claimed. If the workers have
    /// stopped, the deliveries come back: put them back in the store (`Store::release`).
    ///
    /// The deliveries count as in flight from here, before the workers start them: the
    /// heartbeat must not take them for sends that never finished while they wait in the
    /// channel (behind a long run of claims, say). A delivery already in flight here is being
    /// sent: it is neither sent again nor given back.
    pub fn send(&self, due: Vec<Due>, event: Arc<Data>, room: Reservation) -> Result<(), Vec<Due>> {
        // A delivery just created is in flight nowhere yet (ids are never reused).
        let due = due
            .into_iter()
            .filter_map(|d| self.in_flight.track(d.id).map(|tracked| (d, tracked)))
            .collect();
        let handed = Handed { due, event, room };
        self.tx
            .send(handed)
            .map_err(|mpsc::error::SendError(h)| h.due.into_iter().map(|(d, _)| d).collect())
    }
}
