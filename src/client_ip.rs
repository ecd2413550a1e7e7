//! The client's address behind reverse proxies, and the key per-IP limits count by.
//!
//! A request's TCP peer is the client unless that peer is in `[http] trusted_proxies`. From a trusted peer the
//! client address is read from the one header `[http] forwarded_header` names, the header the operator's proxy sets:
//! `X-Forwarded-For` (default; the de facto form, a comma-separated list, the nearest hop last; nginx's
//! `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`) or `Forwarded` (RFC 7239 §4, `for=` parameters).
//! The other header is ignored: a proxy that only appends to one of them passes the other through as the client
//! wrote it, so reading it would let a client choose its address. The list is walked from the
//! right (the hop nearest to us) and every address that is itself a trusted proxy is skipped: the first address that is
//! not is the client. This is the "rightmost untrusted" rule of MDN's X-Forwarded-For security notes and of nginx's
//! `real_ip_recursive on`; the leftmost entry is whatever the client chose to send and is never trusted. A header
//! that cannot be parsed, or whose entries are all trusted, falls back to the nearest parseable hop or to the peer.
//!
//! Per-IP limits key IPv6 clients by their /64 ([`IpKey`]): one subscriber line usually gets a /64 (or shorter), so
//! keying by /128 lets a single host rotate through 2^64 addresses and evade every per-IP cap.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use duet_relay::policy::{IpNet, canonical_ip};

/// The key of one client for per-IP limits: an IPv4 address (IPv4-mapped IPv6 forms are canonicalised to IPv4),
/// or the /64 network of an IPv6 address (the low 64 bits zeroed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey(IpAddr);

impl IpKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> IpKey {
        match canonical_ip(ip) {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpKey(IpAddr::V6(Ipv6Addr::from(bits)))
            }
            v4 => IpKey(v4),
        }
    }

    /// The address (IPv4) or /64 network address (IPv6) this key stands for.
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// The forwarding header a trusted proxy sets (`[http] forwarded_header`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (config `"x-forwarded-for"`, the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239; config `"forwarded"`).
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            other => Err(format!("{other:?}: expected \"x-forwarded-for\" or \"forwarded\"")),
        }
    }
}

/// Whether `ip` is one of the `trusted` proxies.
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    trusted.iter().any(|n| n.contains(ip))
}

/// The client address of a request that arrived from TCP peer `peer`: `peer` itself unless it is a trusted proxy,
/// else the rightmost address of `header` that is not a trusted proxy (module docs).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet], header: ForwardedHeader) -> IpAddr {
    let peer_ip = canonical_ip(peer.ip());
    if !is_trusted(trusted, peer_ip) {
        return peer_ip;
    }
    let hops = forwarded_hops(headers, header);
    let mut nearest = peer_ip;
    for hop in hops.iter().rev() {
        let Some(ip) = hop else {
            // An obfuscated or unparseable hop ("unknown", "_hidden"): what lies left of it cannot be trusted.
            return nearest;
        };
        let ip = canonical_ip(*ip);
        if !is_trusted(trusted, ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// The hops of `header`, in order: for `Forwarded` every `for=` of every element, for `X-Forwarded-For` every
/// entry; `None` for a hop that is not an IP address. Several header lines are one list (RFC 9110 §5.3).
fn forwarded_hops(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    if header == ForwardedHeader::Forwarded {
        let mut hops = Vec::new();
        let lines = headers.get_all("forwarded").into_iter().filter_map(|v| v.to_str().ok());
        for element in lines.flat_map(|line| line.split(',')) {
            for pair in element.split(';') {
                let Some((name, value)) = pair.split_once('=') else { continue };
                if name.trim().eq_ignore_ascii_case("for") {
                    hops.push(parse_node(value.trim().trim_matches('"')));
                }
            }
        }
        return hops;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// An RFC 7239 §6 node (`192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`, `[2001:db8::1]:80`) or a bare IPv6 address
/// as X-Forwarded-For writes it.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_sends() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9")]);
        let peer: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            assert_eq!(client_ip(peer, &h, &[], header), peer.ip());
            assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"]), header), peer.ip());
        }
    }

    #[test]
    fn trusted_proxy_gives_the_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        // The client forged "1.1.1.1"; the proxy appended the real address.
        let (xff, fwd) = (ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.3")]);
        assert_eq!(client_ip(peer, &h, &trusted, xff), "203.0.113.9".parse::<IpAddr>().unwrap());
        let h = headers(&[("forwarded", "for=1.1.1.1, for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3")]);
        assert_eq!(client_ip(peer, &h, &trusted, fwd), "2001:db8::1".parse::<IpAddr>().unwrap());
        // Only the configured header counts: a proxy that appends to X-Forwarded-For passes a client's own
        // `Forwarded` through, and the other way round.
        let h = headers(&[("forwarded", "for=192.0.2.60"), ("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(client_ip(peer, &h, &trusted, xff), "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &h, &trusted, fwd), "192.0.2.60".parse::<IpAddr>().unwrap());
        // Several header lines are one list.
        let h = headers(&[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "10.0.0.9")]);
        assert_eq!(client_ip(peer, &h, &trusted, xff), "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!("Forwarded".parse(), Ok(fwd));
        assert!("x-real-ip".parse::<ForwardedHeader>().is_err());
    }

    #[test]
    fn missing_or_opaque_hops_fall_back_to_the_nearest_known() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let (xff, fwd) = (ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded);
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted, xff), peer.ip());
        let h = headers(&[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.5")]);
        assert_eq!(client_ip(peer, &h, &trusted, xff), "10.0.0.5".parse::<IpAddr>().unwrap());
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_ip(peer, &h, &trusted, fwd), peer.ip());
    }

    #[test]
    fn ipv6_is_keyed_by_64_and_mapped_v4_by_v4() {
        let a = IpKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(IpKey::of("::ffff:192.0.2.1".parse().unwrap()), IpKey::of("192.0.2.1".parse().unwrap()));
    }
}
