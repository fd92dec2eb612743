//! Per-client rate limiting of failed webhook requests. A request that fails authentication or
//! parsing costs its client one token; a client out of tokens is answered 429 with
//! `Retry-After` before its body is read. Requests that authenticate cost nothing, so a flood
//! from one client never limits SmartLead's own deliveries. When a source asks for no
//! credential, every request counts.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-client token buckets, and the clients currently refused.
pub struct Limiter {
    buckets: Option<DefaultKeyedRateLimiter<IpAddr>>,
    refused: Mutex<HashMap<IpAddr, Instant>>,
}

impl Limiter {
    /// `per_second` failed requests per client on average, with bursts of `burst`; 0 turns
    /// limiting off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let buckets = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Limiter {
            buckets,
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// How long this client must wait, if it is refused now.
    pub fn refused_for(&self, client: IpAddr) -> Option<Duration> {
        let mut refused = self.refused.lock().expect("limiter lock");
        let until = *refused.get(&client)?;
        let now = Instant::now();
        if until <= now {
            refused.remove(&client);
            return None;
        }
        Some(until - now)
    }

    /// Counts one failed request against the client.
    pub fn penalise(&self, client: IpAddr) {
        let Some(buckets) = &self.buckets else { return };
        if let Err(not_until) = buckets.check_key(&client) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut refused = self.refused.lock().expect("limiter lock");
            refused.insert(
                client,
                Instant::now() + wait.max(Duration::from_millis(100)),
            );
            if refused.len() > 10_000 {
                let now = Instant::now();
                refused.retain(|_, until| *until > now);
                buckets.retain_recent();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_burst_is_refused_and_others_are_not() {
        let l = Limiter::new(1, 3);
        let flood: IpAddr = "198.51.100.7".parse().unwrap();
        let other: IpAddr = "203.0.113.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.refused_for(flood).is_none());
            l.penalise(flood);
        }
        l.penalise(flood);
        let wait = l.refused_for(flood).expect("refused after the burst");
        assert!(wait <= Duration::from_secs(1));
        assert!(l.refused_for(other).is_none());
    }

    #[test]
    fn zero_turns_limiting_off() {
        let l = Limiter::new(0, 0);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..1000 {
            l.penalise(ip);
        }
        assert!(l.refused_for(ip).is_none());
    }
}
