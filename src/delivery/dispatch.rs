//! Dispatch: the loop that takes due deliveries from the store (a claim) and the deliveries
//! intake hands over, and starts each as a send within the workers' limits.
//!
//! It looks in the store at start, when woken (a send finished while deliveries wait, intake
//! stored some pending, another instance announced some) and at the latest when the next
//! delivery is due. Deliveries handed over by intake start without a look.

use super::Settings;
use super::attempt;
use super::backlog::Backlog;
use super::handoff::{Handed, Receiver};
use super::housekeeping;
use super::in_flight::{DestinationSlot, InFlight, Tracked};
use crate::actions::Clients;
use crate::app::App;
use crate::store::{Claim, Committer, Due, Store, now_ms};
use crate::template::Data;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;

/// How long a claim waits for more workers to come free when only a few are.
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// What the dispatch loop shares with the sends it starts.
pub(super) struct Dispatcher {
    pub(super) app: Arc<App>,
    pub(super) committer: Committer,
    pub(super) clients: Clients,
    pub(super) settings: Settings,
    pub(super) in_flight: InFlight,
    pub(super) backlog: Arc<Backlog>,
    /// One per send under way: at most `concurrency`.
    pub(super) permits: Arc<Semaphore>,
    /// Every send started, so that shutdown can wait for them.
    pub(super) sends: TaskTracker,
}

/// A worker and a destination's slot, held while a send is under way: dropped when the send is
/// over (its attempt is recorded after), it frees both and, if deliveries wait in the store,
/// wakes the dispatcher.
pub(super) struct Busy {
    slot: Option<DestinationSlot>,
    permit: Option<OwnedSemaphorePermit>,
    dispatcher: Arc<Dispatcher>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Room first, then the wake-up: the look it wakes must see the room.
        drop(self.slot.take());
        drop(self.permit.take());
        if self.dispatcher.backlog.is_set() {
            self.dispatcher.app.wake.notify_one();
        }
    }
}

/// What a look at the store leaves the loop to do.
enum AfterLook {
    /// Look again at once.
    Again,
    /// Wait for a wake-up, a handed delivery or this moment.
    Until(tokio::time::Instant),
}

impl Dispatcher {
    /// Starts a claimed delivery if its destination has room, holding `permit` until the send
    /// is over; gives the delivery back (dropping the permit) when the destination is at its
    /// limit.
    fn start_claimed(self: &Arc<Self>, due: Due, permit: OwnedSemaphorePermit) -> Option<Due> {
        // Already being sent here: its lease lapsed and this instance took it again.
        let tracked = self.in_flight.track(due.id)?;
        let Some(slot) = self.in_flight.slot(&due.destination) else {
            return Some(due);
        };
        self.spawn(due, tracked, None, permit, slot);
        None
    }

    /// Sends `due`, then records the attempt; it stays in flight until then.
    fn spawn(
        self: &Arc<Self>,
        due: Due,
        tracked: Tracked,
        event: Option<Arc<Data>>,
        permit: OwnedSemaphorePermit,
        slot: DestinationSlot,
    ) {
        let busy = Busy {
            slot: Some(slot),
            permit: Some(permit),
            dispatcher: self.clone(),
        };
        let dispatcher = self.clone();
        self.sends.spawn(async move {
            let _in_flight = tracked;
            attempt::deliver(&dispatcher, &due, event, busy).await;
        });
    }

    /// A claim of up to `limit` deliveries, each destination's within the room it has left,
    /// skipping the deliveries in flight here.
    fn claim(&self, limit: u32) -> Claim {
        let now = self.in_flight.snapshot();
        Claim {
            limit,
            per_destination: u32::try_from(self.in_flight.limit()).unwrap_or(u32::MAX),
            in_use: now.in_use,
            in_flight: now.ids,
        }
    }

    /// Starts deliveries handed over by intake, in the room reserved for them. (Should one
    /// not match its reservation, it goes back to the store as pending.)
    async fn start_handed(self: &Arc<Self>, store: &Store, handed: Handed) {
        let Handed {
            due,
            event,
            mut room,
        } = handed;
        let mut release = Vec::new();
        for (d, tracked) in due {
            let Some((permit, slot)) = room.take_one(&d.destination) else {
                release.push(d.id);
                continue;
            };
            self.spawn(d, tracked, Some(event.clone()), permit, slot);
        }
        drop(room);
        if !release.is_empty() {
            self.backlog.set();
            let _ = store.release(&release).await;
        }
    }

    /// Claims what is due for the workers free now and starts it.
    async fn look(self: &Arc<Self>, store: &Store) -> AfterLook {
        let poll = self.settings.poll;
        let claim_at_least = (self.settings.concurrency / 4).max(1) as u32;
        let look = self.backlog.look();
        let mut free = self.permits.available_permits() as u32;
        if free > 0 && free < claim_at_least {
            // Only a few workers free (sends finishing one by one under load): let a few more
            // finish, so that one claim (one transaction) serves several.
            tokio::time::sleep(CLAIM_GATHER).await;
            free = self.permits.available_permits() as u32;
        }
        if free == 0 {
            // No room to look now; the backlog stays set, so the next finished send wakes a
            // look.
            drop(look);
            return AfterLook::Until(tokio::time::Instant::now() + poll);
        }
        let claim = self.claim(free);
        let claimed = match self.committer.claim(claim.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read due deliveries from the store; trying again in 1 s.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return AfterLook::Again;
            }
        };
        let full = claimed.len() as u32 >= free;
        let busy = held_back(&claim, &claimed);
        let mut release = Vec::new();
        for due in claimed {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                release.push(due.id);
                continue;
            };
            if let Some(due) = self.start_claimed(due, permit) {
                release.push(due.id);
            }
        }
        self.backlog
            .finish(look, full || busy || !release.is_empty());
        if !release.is_empty() {
            let _ = store.release(&release).await;
        }
        if full && self.permits.available_permits() > 0 {
            return AfterLook::Again;
        }
        let wait = match store.next_due().await {
            // Due now but not taken: its destination is at its limit. A send to it finishing
            // wakes this loop; looking every few milliseconds meanwhile would only load the
            // store.
            Ok(Some(at)) if at <= now_ms() && busy => poll,
            Ok(Some(at)) => {
                Duration::from_millis((at - now_ms()).clamp(5, poll.as_millis() as i64) as u64)
            }
            _ => poll,
        };
        AfterLook::Until(tokio::time::Instant::now() + wait)
    }
}

/// Runs the workers until `stopped`: recovery, housekeeping, then claims and handed
/// deliveries; at the end, what intake handed over unstarted goes back to the store and the
/// sends under way are waited for.
pub(super) async fn run(
    d: Arc<Dispatcher>,
    store: Store,
    mut receiver: Receiver,
    mut stopped: watch::Receiver<bool>,
) {
    match store.recover().await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(
                    deliveries = n,
                    "Picked up deliveries that were in flight when the router last stopped."
                );
            }
            // Only now may intake record deliveries as claimed: recovery would have reset them.
            receiver.open();
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot recover in-flight deliveries; every delivery goes through the store until the next start.");
        }
    }
    let housekeeping = housekeeping::start(&d, &store);
    let woken = d.app.clone();
    if let Err(e) = store
        .listen(Box::new(move || woken.wake.notify_one()))
        .await
    {
        tracing::warn!(error = %e, "Cannot listen for new deliveries from other instances; polling instead.");
    }
    let mut look = true;
    let mut deadline = tokio::time::Instant::now();
    while !*stopped.borrow() {
        if look {
            look = false;
            match d.look(&store).await {
                AfterLook::Again => {
                    look = true;
                    continue;
                }
                AfterLook::Until(at) => deadline = at,
            }
        }
        tokio::select! {
            _ = d.app.wake.notified() => look = true,
            _ = tokio::time::sleep_until(deadline) => look = true,
            Some(handed) = receiver.handed.recv() => d.start_handed(&store, handed).await,
            _ = stopped.changed() => {},
        }
    }
    receiver.close();
    while let Some(handed) = receiver.handed.recv().await {
        let ids: Vec<i64> = handed.due.iter().map(|(d, _)| d.id).collect();
        drop(handed);
        let _ = store.release(&ids).await;
    }
    housekeeping.stop();
    d.sends.close();
    d.sends.wait().await;
}

/// Whether `claim` may have left due deliveries in the store for want of room at their
/// destination: one was at its limit when claiming, or the claim filled one's room.
fn held_back(claim: &Claim, claimed: &[Due]) -> bool {
    let mut used: HashMap<&str, u32> = claim.in_use.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    for d in claimed {
        *used.entry(d.destination.as_str()).or_default() += 1;
    }
    used.values().any(|&n| n >= claim.per_destination)
}

#[cfg(test)]
mod tests {
    use super::{Claim, Due, held_back};

    fn claim(in_use: &[(&str, u32)]) -> Claim {
        Claim {
            limit: 32,
            per_destination: 4,
            in_use: in_use.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
            in_flight: vec![],
        }
    }

    fn due(destination: &str) -> Due {
        Due {
            id: 1,
            event_id: String::new(),
            rule: String::new(),
            action_index: 0,
            destination: destination.into(),
            attempts: 0,
            context: None,
            config_hash: String::new(),
            payload: String::new(),
            received_at: 0,
        }
    }

    #[test]
    fn a_claim_held_back_deliveries_when_a_destination_is_or_became_full() {
        // At its limit when claiming: its due deliveries were not looked at.
        assert!(held_back(&claim(&[("slack", 4)]), &[]));
        // The claim filled the room left (3 in flight, 1 taken): more may be due.
        assert!(held_back(&claim(&[("slack", 3)]), &[due("slack")]));
        let four: Vec<Due> = (0..4).map(|_| due("crm")).collect();
        assert!(held_back(&claim(&[]), &four));
        // Room left everywhere: everything due was taken.
        assert!(!held_back(&claim(&[("slack", 2)]), &[due("slack")]));
        assert!(!held_back(&claim(&[]), &[due("crm"), due("slack")]));
    }
}
