//! Per-socket token bucket (sustained `rate` messages per second, burst `2 * rate`).

use std::time::Instant;

/// One token in bucket units: nanotokens, so that refill is exact integer arithmetic at nanosecond resolution.
const TOKEN: u64 = 1_000_000_000;

/// A token bucket on virtual time. `rate == 0` disables limiting.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    /// Available nanotokens, at most `capacity(rate)`.
    tokens: u64,
    /// Instant of the last refill; never moves backwards.
    last: Instant,
}

/// Bucket size in nanotokens: a burst of twice the per-second rate.
fn capacity(rate: u32) -> u64 {
    u64::from(rate).saturating_mul(2).saturating_mul(TOKEN)
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(now: Instant, rate: u32) -> Self {
        TokenBucket { tokens: capacity(rate), last: now }
    }

    /// Refills for the time since the last call and takes one token. Returns false when the bucket is empty.
    pub(crate) fn take(&mut self, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        let add = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).saturating_mul(u64::from(rate));
        self.tokens = self.tokens.saturating_add(add).min(capacity(rate));
        if now > self.last {
            self.last = now;
        }
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_is_twice_the_rate_then_refills_at_rate() {
        let t0 = crate::virtual_base();
        let mut b = TokenBucket::new(t0, 10);
        for _ in 0..20 {
            assert!(b.take(t0, 10));
        }
        assert!(!b.take(t0, 10));
        // 100 ms at 10/s refills exactly one token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(t1, 10));
        assert!(!b.take(t1, 10));
        // A long pause refills at most the burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(b.take(t2, 10));
        }
        assert!(!b.take(t2, 10));
    }

    #[test]
    fn zero_rate_disables_and_time_going_backwards_is_harmless() {
        let t0 = crate::virtual_base() + Duration::from_secs(10);
        let mut b = TokenBucket::new(t0, 0);
        for _ in 0..1000 {
            assert!(b.take(t0, 0));
        }
        let mut b = TokenBucket::new(t0, 1);
        assert!(b.take(t0, 1));
        assert!(b.take(t0 - Duration::from_secs(5), 1));
        assert!(!b.take(t0 - Duration::from_secs(5), 1));
    }
}
