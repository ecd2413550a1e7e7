//! A per-source-IP rate limiter on the caller's clock, for replies and handshakes that an
//! unauthenticated source can ask for (the server's UDP 401s; the daemon's TLS handshakes).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// Hashed buckets: 4096 × 8 bytes. A collision only makes limiting stricter for the two sources
/// that share a bucket; the hash is keyed at random per limiter, so an attacker cannot aim a
/// collision at a chosen victim.
const BUCKETS: usize = 4096;

/// A token bucket of `burst` tokens refilled at `rate` per second for each source IP, kept as
/// GCRA "theoretical arrival times" (nanoseconds since the limiter's epoch) in a fixed table of
/// hashed buckets: no allocation after [`SourceRateLimiter::new`], O(1) per call. IPv6 sources
/// are keyed by their /64 (one subscriber's prefix), IPv4-mapped IPv6 as the IPv4 address.
/// Every bucket starts full.
#[derive(Debug)]
pub struct SourceRateLimiter {
    epoch: Instant,
    /// Per bucket: the instant (ns since `epoch`) at which the bucket is full again.
    tat: Vec<u64>,
    hasher: RandomState,
}

impl SourceRateLimiter {
    /// A limiter whose clock starts at `epoch` (earlier `now` values count as `epoch`).
    pub fn new(epoch: Instant) -> Self {
        SourceRateLimiter { epoch, tat: vec![0; BUCKETS], hasher: RandomState::new() }
    }

    /// Takes one token from `ip`'s bucket (capacity `burst`, refilled at `rate` tokens per
    /// second) and returns `true`, or returns `false` when it is empty. `rate` 0 or `burst` 0
    /// allow nothing.
    pub fn allow(&mut self, now: Instant, ip: IpAddr, rate: u32, burst: u32) -> bool {
        if rate == 0 || burst == 0 {
            return false;
        }
        let key = match crate::policy::canonical_ip(ip) {
            IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
            v4 => v4,
        };
        let now_ns = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let interval = 1_000_000_000 / u64::from(rate);
        let i = (self.hasher.hash_one(key) as usize) % BUCKETS;
        let Some(tat) = self.tat.get_mut(i) else {
            return false;
        };
        let next = (*tat).max(now_ns).saturating_add(interval);
        if next - now_ns > interval.saturating_mul(u64::from(burst)) {
            return false;
        }
        *tat = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rate_limiter_bursts_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut r = SourceRateLimiter::new(t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(r.allow(t0, ip, 10, 3));
        }
        assert!(!r.allow(t0, ip, 10, 3), "burst used up");
        assert!(!r.allow(t0 + Duration::from_millis(99), ip, 10, 3));
        assert!(r.allow(t0 + Duration::from_millis(100), ip, 10, 3), "one token per 100 ms at 10/s");
        assert!(!r.allow(t0 + Duration::from_millis(100), ip, 10, 3));
        // Idle for long: full again, never more than the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| r.allow(later, ip, 10, 3)).count(), 3);
        // A clock going backwards takes nothing extra.
        assert!(!r.allow(t0, ip, 10, 3));
        assert!(!r.allow(later, ip, 0, 3) && !r.allow(later, ip, 10, 0), "rate or burst 0: nothing");
        // One IPv6 /64 shares a bucket.
        let mut r = SourceRateLimiter::new(t0);
        let (a, b): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::ffff:2".parse().unwrap());
        assert!(r.allow(later, a, 1, 1));
        assert!(!r.allow(later, b, 1, 1));
    }
}
