//! Reconnect backoff: exponential with full jitter.
//!
//! After a broker or server restart, every appliance reconnects. Fixed or
//! purely exponential delays make them return in synchronized waves; full
//! jitter (a uniformly random delay between zero and the exponential cap)
//! spreads ten thousand nodes evenly over the window instead.
//!
//! Pure: the caller supplies the random numbers.

use std::time::Duration;

/// The longest an agent waits between attempts to reach the broker: after
/// a server restart, every node is back within this (plus one attempt).
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The defaults agents use to reach the broker: 0.5 s doubling up to
    /// [`RECONNECT_CAP`].
    pub fn for_reconnect() -> Self {
        Backoff::new(Duration::from_millis(500), RECONNECT_CAP)
    }

    /// The delay before the next attempt. `random` is any uniformly distributed u64.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = exp.as_nanos() as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
    }

    /// The ceiling of the next delay, without consuming an attempt.
    pub fn current_cap(&self) -> Duration {
        self.base
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap)
    }

    /// Call after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_double_up_to_the_limit() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let caps: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.current_cap().as_millis() as u64;
                b.next_delay(u64::MAX);
                c
            })
            .collect();
        assert_eq!(
            caps,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        b.reset();
        assert_eq!(b.current_cap(), Duration::from_millis(500));
    }

    #[test]
    fn delays_are_jittered_within_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(b.next_delay(0), Duration::ZERO);
        assert!(b.next_delay(u64::MAX) <= Duration::from_secs(1));
        assert_eq!(b.next_delay(1_000_000_001), Duration::ZERO);
        assert_eq!(b.next_delay(500_000_000), Duration::from_millis(500));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(3600));
        for _ in 0..100 {
            assert!(b.next_delay(u64::MAX) <= Duration::from_secs(3600));
        }
    }
}
