//! The probes' view of the store. `/readyz` and `/metrics` answer anyone who can reach the
//! router, so they read the delivery counts through this cache: the store is asked at most once
//! per interval, however many clients poll and however often, and concurrent probes share one
//! answer.

use crate::store::{Counts, StoreError};
use std::future::Future;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a probe waits for the store's counts; a store that takes longer is reported as not
/// answering (for the interval), rather than holding every probe until it does.
const PATIENCE: Duration = Duration::from_secs(2);

/// The delivery counts the probes answer with, at most `every` old.
pub struct ProbeCounts {
    every: Duration,
    last: Mutex<Option<(Instant, Result<Counts, String>)>>,
}

impl ProbeCounts {
    /// Counts reused for `every`.
    pub fn new(every: Duration) -> Self {
        ProbeCounts {
            every,
            last: Mutex::new(None),
        }
    }

    /// The counts (or why the store could not give them), asking the store with `load` when the
    /// last answer is older than the interval. One caller asks at a time, for at most
    /// `PATIENCE`; the others wait for its answer rather than ask again.
    pub async fn get<F, Fut>(&self, load: F) -> Result<Counts, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Counts, StoreError>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < self.every
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(PATIENCE, load()).await {
            Ok(counts) => counts.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the store did not answer within {} s",
                PATIENCE.as_secs()
            )),
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn the_store_is_asked_at_most_once_per_interval_whatever_the_polling() {
        let probes = Arc::new(ProbeCounts::new(Duration::from_secs(1)));
        let loads = Arc::new(AtomicU64::new(0));
        let probe = |probes: Arc<ProbeCounts>, loads: Arc<AtomicU64>| async move {
            probes
                .get(|| async {
                    let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
                    // A slow store: the probes arriving meanwhile wait for this answer.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(Counts {
                        pending: n,
                        ..Counts::default()
                    })
                })
                .await
        };
        let polls: Vec<_> = (0..100)
            .map(|_| tokio::spawn(probe(probes.clone(), loads.clone())))
            .collect();
        for p in polls {
            assert_eq!(p.await.unwrap().unwrap().pending, 1);
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "one store query for 100 probes"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            probe(probes.clone(), loads.clone()).await.unwrap().pending,
            1
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(
            probe(probes.clone(), loads.clone()).await.unwrap().pending,
            2
        );
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_not_asked_again_within_the_interval() {
        let probes = ProbeCounts::new(Duration::from_secs(1));
        let loads = AtomicU64::new(0);
        for _ in 0..10 {
            let answer = probes
                .get(|| async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Err(StoreError::Closed)
                })
                .await;
            assert!(answer.unwrap_err().contains("shutting down"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_is_reported_without_holding_every_probe() {
        let probes = ProbeCounts::new(Duration::from_secs(1));
        let stuck = probes
            .get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Counts::default())
            })
            .await;
        assert!(stuck.unwrap_err().contains("did not answer within 2 s"));
        // The next probes within the interval get the same answer at once.
        let again = probes.get(|| async { Ok(Counts::default()) }).await;
        assert!(again.is_err());
    }
}
