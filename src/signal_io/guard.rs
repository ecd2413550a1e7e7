//! Checks before a WebSocket upgrade that apply to every signaling mode: the `Origin` allow-list and the number of
//! open sockets per client IP.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use dashmap::DashMap;

/// Counts open signaling sockets per client IP.
#[derive(Clone)]
pub struct ConnectionGuard {
    per_ip: Arc<DashMap<IpAddr, u32>>,
    max: u32,
}

/// One counted socket; dropping it gives the place back.
pub struct Slot {
    per_ip: Arc<DashMap<IpAddr, u32>>,
    ip: IpAddr,
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
    /// At most `max` sockets per IP.
    pub fn new(max: u32) -> ConnectionGuard {
        ConnectionGuard { per_ip: Arc::new(DashMap::new()), max }
    }

    /// Takes a place for `ip`, or `None` when it already holds `max` sockets.
    pub fn acquire(&self, ip: IpAddr) -> Option<Slot> {
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { per_ip: self.per_ip.clone(), ip })
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

    #[test]
    fn slots_are_counted_and_returned() {
        let g = ConnectionGuard::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = g.acquire(ip).unwrap();
        let _b = g.acquire(ip).unwrap();
        assert!(g.acquire(ip).is_none());
        assert!(g.acquire("192.0.2.2".parse().unwrap()).is_some(), "another IP has its own count");
        drop(a);
        assert!(g.acquire(ip).is_some());
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
