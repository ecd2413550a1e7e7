//! Checks before a WebSocket upgrade that apply to every signaling mode: the `Origin` allow-list, the number of
//! sockets per client, and the rate of refused upgrades per client.
//!
//! Clients are keyed by [`IpKey`] of their address as [`crate::client_ip::client_ip`] finds it (behind
//! `[http] trusted_proxies` the forwarded client, IPv6 by /64). Two counts per client:
//! - **pending**: upgrades whose credential is being checked, and refused sockets while they receive their close
//!   code; a short cap (`signaling.max_pending_upgrades_per_ip`), so bogus upgrades cannot hold the real cap;
//! - **admitted**: sockets whose session token (or Virtual Y meeting) verified (`signaling.max_connections_per_ip`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use dashmap::DashMap;

use crate::client_ip::IpKey;

/// Counts open signaling sockets per client.
#[derive(Clone)]
pub struct ConnectionGuard {
    per_ip: Arc<DashMap<IpKey, u32>>,
    max: u32,
}

/// One counted socket; dropping it gives the place back.
pub struct Slot {
    per_ip: Arc<DashMap<IpKey, u32>>,
    ip: IpKey,
}

impl Slot {
    /// The client this place is counted for.
    pub fn ip(&self) -> IpKey {
        self.ip
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.per_ip.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl ConnectionGuard {
    /// At most `max` sockets per client.
    pub fn new(max: u32) -> ConnectionGuard {
        ConnectionGuard { per_ip: Arc::new(DashMap::new()), max }
    }

    /// Takes a place for `ip`, or `None` when it already holds `max` sockets.
    pub fn acquire(&self, ip: IpKey) -> Option<Slot> {
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { per_ip: self.per_ip.clone(), ip })
    }

    /// Sockets `ip` holds now.
    pub fn count(&self, ip: IpKey) -> u32 {
        self.per_ip.get(&ip).map_or(0, |n| *n)
    }
}

/// Token bucket per client for refused upgrades (Virtual Y: unknown or closed meetings, occupied slots): a burst of
/// [`RefusalLimiter::BURST`], refilled at `per_minute`. An upgrade takes a token before its lookup
/// ([`RefusalLimiter::try_take`]) and gives it back when admitted ([`RefusalLimiter::refund`]); a socket the hub
/// refuses later (slot taken) costs one more ([`RefusalLimiter::charge`]). While a client's bucket is empty its
/// upgrades are answered 429 before any lookup, so meeting ids cannot be enumerated fast (the security review guessed
/// 300 in 0.1 s). A Virtual Y client waiting for its window polls about once a second (it retries 1 s after each
/// refusal), which the default 60 per minute sustains; several such clients behind one address share the bucket and
/// get an occasional 429, after which they simply retry.
///
/// Memory is bounded: buckets that have refilled are swept, at most once a second, when the table holds
/// [`RefusalLimiter::SWEEP_AT`] entries; past [`RefusalLimiter::MAX_ENTRIES`] new clients are not tracked (the
/// limiter fails open for them: an attacker with that many addresses gets a burst per address whatever the table does;
/// the per-client socket caps still hold).
#[derive(Clone)]
pub struct RefusalLimiter {
    inner: Arc<Mutex<Buckets>>,
    per_second: f64,
}

#[derive(Default)]
struct Buckets {
    /// Tokens and when they were counted, per client.
    by_client: HashMap<IpKey, (f64, Instant)>,
    /// When full buckets were last swept.
    swept: Option<Instant>,
}

impl RefusalLimiter {
    /// Refusals a client may collect at once before it is slowed down.
    pub const BURST: f64 = 20.0;
    /// Table size that triggers a sweep of full buckets.
    pub const SWEEP_AT: usize = 10_000;
    /// Most clients tracked at once.
    pub const MAX_ENTRIES: usize = 100_000;

    /// A limiter refilling `per_minute` refusals per minute (0: no limit).
    pub fn new(per_minute: u32) -> RefusalLimiter {
        RefusalLimiter { inner: Arc::default(), per_second: f64::from(per_minute) / 60.0 }
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(since).as_secs_f64() * self.per_second).min(Self::BURST)
    }

    /// Takes a token of `ip` at `now` if it has one: `false` means the client is over its rate (answer 429).
    pub fn try_take(&self, ip: IpKey, now: Instant) -> bool {
        self.adjust(ip, now, -1.0, true)
    }

    /// Gives back the token of an upgrade that was admitted.
    pub fn refund(&self, ip: IpKey, now: Instant) {
        self.adjust(ip, now, 1.0, false);
    }

    /// Takes a token of `ip` for a socket refused after its upgrade (even if the bucket is empty).
    pub fn charge(&self, ip: IpKey, now: Instant) {
        self.adjust(ip, now, -1.0, false);
    }

    /// Adds `delta` tokens to `ip`'s bucket (refilled to `now`, kept within 0 and the burst). With `need`, refuses
    /// (returns `false`, changes nothing) when fewer than one token is left.
    fn adjust(&self, ip: IpKey, now: Instant, delta: f64, need: bool) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let level = b.by_client.get(&ip).map_or(Self::BURST, |&(tokens, since)| self.level(tokens, since, now));
        if need && level < 1.0 {
            return false;
        }
        let level = (level + delta).clamp(0.0, Self::BURST);
        if level >= Self::BURST {
            b.by_client.remove(&ip);
            return true;
        }
        if b.by_client.len() >= Self::SWEEP_AT
            && !b.by_client.contains_key(&ip)
            && b.swept.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            b.swept = Some(now);
            b.by_client.retain(|_, &mut (tokens, since)| self.level(tokens, since, now) < Self::BURST);
        }
        if b.by_client.len() < Self::MAX_ENTRIES || b.by_client.contains_key(&ip) {
            b.by_client.insert(ip, (level, now));
        }
        true
    }
}

/// `Ok` when the request's `Origin` is allowed: any origin when the list is empty; a request without `Origin`
/// (not a browser) is allowed too, since the browser is what the list protects. Otherwise HTTP 403.
pub fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), StatusCode> {
    if allowed.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => Ok(()),
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/'))) => Ok(()),
        Some(_) => Err(StatusCode::FORBIDDEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> IpKey {
        IpKey::of(s.parse().unwrap())
    }

    #[test]
    fn slots_are_counted_and_returned() {
        let g = ConnectionGuard::new(2);
        let ip = key("192.0.2.1");
        let a = g.acquire(ip).unwrap();
        let _b = g.acquire(ip).unwrap();
        assert!(g.acquire(ip).is_none());
        assert!(g.acquire(key("192.0.2.2")).is_some(), "another IP has its own count");
        drop(a);
        assert!(g.acquire(ip).is_some());
    }

    #[test]
    fn ipv6_clients_of_one_64_share_a_count() {
        let g = ConnectionGuard::new(1);
        let _a = g.acquire(key("2001:db8::1")).unwrap();
        assert!(g.acquire(key("2001:db8::ffff:1")).is_none(), "same /64");
        assert!(g.acquire(key("2001:db8:0:1::1")).is_some(), "another /64");
    }

    #[test]
    fn refusals_are_limited_and_refill() {
        let l = RefusalLimiter::new(60);
        let ip = key("198.51.100.1");
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(l.try_take(ip, t0));
        }
        assert!(!l.try_take(ip, t0), "burst used up");
        assert!(l.try_take(key("198.51.100.2"), t0), "others are not affected");
        assert!(l.try_take(ip, t0 + Duration::from_millis(1100)), "one per second comes back");
        assert!(!l.try_take(ip, t0 + Duration::from_millis(1100)));
        l.refund(ip, t0 + Duration::from_millis(1100));
        assert!(l.try_take(ip, t0 + Duration::from_millis(1100)), "an admitted upgrade gives its token back");
        assert!(RefusalLimiter::new(0).try_take(ip, t0));
        // A client that is never refused leaves no entry behind.
        let other = key("198.51.100.3");
        assert!(l.try_take(other, t0));
        l.refund(other, t0);
        assert!(!l.inner.lock().unwrap().by_client.contains_key(&other));
    }

    #[test]
    fn origin_list() {
        let mut h = HeaderMap::new();
        assert!(check_origin(&[], &h).is_ok());
        let allowed = vec!["https://clinic.example".to_string()];
        assert!(check_origin(&allowed, &h).is_ok(), "no Origin: not a browser");
        h.insert(header::ORIGIN, "https://clinic.example".parse().unwrap());
        assert!(check_origin(&allowed, &h).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert_eq!(check_origin(&allowed, &h), Err(StatusCode::FORBIDDEN));
    }
}
