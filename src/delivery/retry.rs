//! The retry policy: when to try a failed delivery again, and when to give up. Whether a failure
//! is worth retrying is decided where the answer is read (the channel's [`SendError`]); this file
//! only decides *when*.
//!
//! [`SendError`]: crate::actions::SendError

use std::time::Duration;

/// Backoff schedule, attempt limit and the cap on a peer's `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the 2nd, 3rd, … attempt; the last entry repeats.
    pub schedule: Vec<Duration>,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured (a longer one is cut to this).
    pub max_retry_after: Duration,
    /// Random spread around each delay, as a fraction (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 8 attempts over about 3 hours: 1 s, 5 s, 30 s, 2 min, 10 min, 30 min, 2 h.
    fn default() -> Self {
        RetryPolicy {
            schedule: [1, 5, 30, 120, 600, 1800, 7200]
                .map(Duration::from_secs)
                .to_vec(),
            max_attempts: 8,
            max_retry_after: Duration::from_secs(3600),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Parses a schedule written as `1s,5s,30s,2m`.
    pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
        let schedule = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if schedule.is_empty() {
            return Err("the retry schedule is empty; write it like 1s,5s,30s,2m".into());
        }
        Ok(schedule)
    }

    /// The delay before the next attempt after `attempts_made` attempts, or `None` when the
    /// delivery is out of attempts. A `Retry-After` is honoured: never earlier than it asks.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let i = (attempts_made.max(1) as usize - 1).min(self.schedule.len().saturating_sub(1));
        let base = self
            .schedule
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(1));
        let spread = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        let delay = base.mul_f64(spread.max(0.0));
        Some(match retry_after {
            Some(asked) => delay.max(asked.min(self.max_retry_after)),
            None => delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(1), Duration::from_secs(10)],
            max_attempts: 4,
            max_retry_after: Duration::from_secs(60),
            jitter: 0.2,
        }
    }

    #[test]
    fn follows_the_schedule_with_jitter_and_repeats_the_last_step() {
        let p = policy();
        for _ in 0..100 {
            let d = p.next_delay(1, None).unwrap();
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
            let d = p.next_delay(3, None).unwrap();
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }

    #[test]
    fn gives_up_after_max_attempts() {
        assert!(policy().next_delay(3, None).is_some());
        assert!(policy().next_delay(4, None).is_none());
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let p = policy();
        assert!(p.next_delay(1, Some(Duration::from_secs(2))).unwrap() >= Duration::from_secs(2));
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(3600))).unwrap(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn parses_schedules() {
        assert_eq!(
            RetryPolicy::parse_schedule("1s, 500ms,2m").unwrap(),
            vec![
                Duration::from_secs(1),
                Duration::from_millis(500),
                Duration::from_secs(120)
            ]
        );
        assert!(RetryPolicy::parse_schedule("soon").is_err());
        assert!(RetryPolicy::parse_schedule("").is_err());
    }
}
