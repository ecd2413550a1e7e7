//! Peer address policy: which peers an allocation may talk to (DESIGN §4, research/turn.md
//! §3.2). Deny by default for everything that is not public unicast, after canonicalising IPv6
//! forms that embed an IPv4 address, so `::ffff:127.0.0.1` is loopback (coturn
//! CVE-2026-27624) and `::` / `0.0.0.0` are never reachable (CVE-2020-26262).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IP prefix such as `10.0.0.0/8` or `fe80::/10`. A v4 prefix only matches v4 addresses and
/// a v6 prefix only v6 addresses (compare after canonicalising, see [`PeerPolicy::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// Network address (host bits may be set; they are ignored).
    pub addr: IpAddr,
    /// Prefix length in bits: 0..=32 for v4, 0..=128 for v6.
    pub prefix: u8,
}

/// Why a string is not an [`IpNet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetError {
    /// The address part does not parse.
    #[error("invalid IP address")]
    Address,
    /// The prefix length does not parse or exceeds 32 (v4) / 128 (v6).
    #[error("invalid prefix length")]
    Prefix,
}

impl IpNet {
    /// A prefix; errors with [`IpNetError::Prefix`] when `prefix` is too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(IpNetError::Prefix);
        }
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside the prefix (same family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_match(u128::from(net.to_bits()), u128::from(ip.to_bits()), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match(net.to_bits(), ip.to_bits(), self.prefix, 128),
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, prefix: u8, width: u32) -> bool {
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        return true;
    }
    let shift = width - prefix;
    (net >> shift) == (ip >> shift)
}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// Parses `"addr/prefix"` or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| IpNetError::Address)?;
        let prefix = match p {
            Some(p) => p.trim().parse().map_err(|_| IpNetError::Prefix)?,
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
        };
        IpNet::new(addr, prefix)
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a peer address was refused (for 403 Forbidden and the metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum PeerDenied {
    /// 0.0.0.0/8, `::`, or port 0. Never allowed, not even by the allow list.
    #[error("unspecified address")]
    Unspecified,
    /// One of the server's own listener/admin addresses (loop attack). Never allowed.
    #[error("server's own address")]
    OwnAddress,
    /// Matched the configured deny list.
    #[error("deny-listed")]
    DenyListed,
    /// 127.0.0.0/8, ::1.
    #[error("loopback")]
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16) or ULA fc00::/7.
    #[error("private")]
    Private,
    /// 169.254/16 (cloud metadata 169.254.169.254), fe80::/10.
    #[error("link-local")]
    LinkLocal,
    /// 100.64/10 (CGNAT, RFC 6598).
    #[error("shared address space")]
    SharedAddressSpace,
    /// 224/4, ff00::/8.
    #[error("multicast")]
    Multicast,
    /// 255.255.255.255.
    #[error("broadcast")]
    Broadcast,
    /// TEST-NETs 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    #[error("documentation")]
    Documentation,
    /// 198.18/15 (RFC 2544).
    #[error("benchmarking")]
    Benchmarking,
    /// Transition mechanisms: 192.88.99/24, Teredo 2001::/32, 6to4 2002::/16, NAT64 64:ff9b::/96
    /// and 64:ff9b:1::/48.
    #[error("transition mechanism")]
    Translation,
    /// 100::/64 (discard-only, RFC 6666).
    #[error("discard-only")]
    Discard,
    /// Other IANA special-purpose space: 192.0.0/24, 240/4, 5f00::/16, fec0::/10, IPv4-compatible
    /// ::/96.
    #[error("reserved")]
    Reserved,
}

impl PeerDenied {
    /// A short stable label for metrics (`"loopback"`, `"private"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            PeerDenied::Unspecified => "unspecified",
            PeerDenied::OwnAddress => "own_address",
            PeerDenied::DenyListed => "deny_listed",
            PeerDenied::Loopback => "loopback",
            PeerDenied::Private => "private",
            PeerDenied::LinkLocal => "link_local",
            PeerDenied::SharedAddressSpace => "shared_address_space",
            PeerDenied::Multicast => "multicast",
            PeerDenied::Broadcast => "broadcast",
            PeerDenied::Documentation => "documentation",
            PeerDenied::Benchmarking => "benchmarking",
            PeerDenied::Translation => "translation",
            PeerDenied::Discard => "discard",
            PeerDenied::Reserved => "reserved",
        }
    }
}

/// How an IPv6 address embeds an IPv4 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Embedding {
    /// ::ffff:a.b.c.d: the same host as the IPv4 address.
    Mapped,
    /// ::a.b.c.d (deprecated), 64:ff9b::/96 (NAT64), 2002:AABB:CCDD::/48 (6to4).
    Other,
}

fn embedded_ipv4(ip: Ipv6Addr) -> Option<(Ipv4Addr, Embedding)> {
    let bits = ip.to_bits();
    let low = Ipv4Addr::from_bits(bits as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some((v4, Embedding::Mapped));
    }
    if bits >> 32 == 0 && bits > 1 {
        return Some((low, Embedding::Other));
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some((low, Embedding::Other));
    }
    if bits >> 112 == 0x2002 {
        return Some((Ipv4Addr::from_bits((bits >> 80) as u32), Embedding::Other));
    }
    None
}

/// The IPv4 address an IPv6 address stands for (IPv4-mapped, IPv4-compatible except `::` and
/// `::1`, NAT64 64:ff9b::/96, 6to4 2002::/16), else the address itself.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some((v4, _)) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> (u32, u8) {
    (u32::from_be_bytes([a, b, c, d]), prefix)
}

/// IPv4 special-purpose ranges denied by default (IANA registry, research/turn.md §3.2).
const V4_DENY: &[((u32, u8), PeerDenied)] = &[
    (v4(127, 0, 0, 0, 8), PeerDenied::Loopback),
    (v4(10, 0, 0, 0, 8), PeerDenied::Private),
    (v4(172, 16, 0, 0, 12), PeerDenied::Private),
    (v4(192, 168, 0, 0, 16), PeerDenied::Private),
    (v4(169, 254, 0, 0, 16), PeerDenied::LinkLocal),
    (v4(100, 64, 0, 0, 10), PeerDenied::SharedAddressSpace),
    (v4(192, 0, 0, 0, 24), PeerDenied::Reserved),
    (v4(192, 0, 2, 0, 24), PeerDenied::Documentation),
    (v4(198, 51, 100, 0, 24), PeerDenied::Documentation),
    (v4(203, 0, 113, 0, 24), PeerDenied::Documentation),
    (v4(198, 18, 0, 0, 15), PeerDenied::Benchmarking),
    (v4(192, 88, 99, 0, 24), PeerDenied::Translation),
    (v4(255, 255, 255, 255, 32), PeerDenied::Broadcast),
    (v4(224, 0, 0, 0, 4), PeerDenied::Multicast),
    (v4(240, 0, 0, 0, 4), PeerDenied::Reserved),
];

const fn v6(hi: u128, prefix: u8) -> (u128, u8) {
    (hi, prefix)
}

/// IPv6 special-purpose ranges denied by default.
const V6_DENY: &[((u128, u8), PeerDenied)] = &[
    (v6(1, 128), PeerDenied::Loopback),
    (v6(0, 96), PeerDenied::Reserved), // IPv4-compatible (after :: and ::1 above)
    (v6(0xfc00 << 112, 7), PeerDenied::Private),
    (v6(0xfe80 << 112, 10), PeerDenied::LinkLocal),
    (v6(0xfec0 << 112, 10), PeerDenied::Reserved),
    (v6(0xff00 << 112, 8), PeerDenied::Multicast),
    (v6(0x2001_0000 << 96, 32), PeerDenied::Translation),
    (v6(0x2002 << 112, 16), PeerDenied::Translation),
    (v6(0x0064_ff9b_0000_0000_0000_0000 << 32, 96), PeerDenied::Translation),
    (v6(0x0064_ff9b_0001 << 80, 48), PeerDenied::Translation),
    (v6(0x0100 << 112, 64), PeerDenied::Discard),
    (v6(0x2001_0db8 << 96, 32), PeerDenied::Documentation),
    (v6(0x3fff << 112, 20), PeerDenied::Documentation),
    (v6(0x5f00 << 112, 16), PeerDenied::Reserved),
];

fn special_purpose(ip: IpAddr) -> Option<PeerDenied> {
    match ip {
        IpAddr::V4(a) => {
            let bits = u128::from(a.to_bits());
            V4_DENY.iter().find(|((net, p), _)| prefix_match(u128::from(*net), bits, *p, 32)).map(|(_, r)| *r)
        }
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            V6_DENY.iter().find(|((net, p), _)| prefix_match(*net, bits, *p, 128)).map(|(_, r)| *r)
        }
    }
}

/// Deny-by-default peer address policy (DESIGN §4).
///
/// Order of [`PeerPolicy::check`]: (1) unspecified addresses and port 0 are always denied;
/// (2) the server's `own_addresses` (exact IP and port; an unspecified own IP such as
/// `0.0.0.0:3478` matches every IP on that port) are always denied, whatever `allow` says;
/// (3) `deny` entries; (4) an `allow` entry admits an address that the built-in special-purpose
/// table would deny; (5) the table. IPv6 forms embedding IPv4 are checked as the embedded IPv4
/// address, and, except for IPv4-mapped, also as themselves (so 6to4 and NAT64 need both an
/// acceptable IPv4 address and an allow entry for their IPv6 prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Prefixes admitted although in a default-denied range (e.g. `127.0.0.1/32` for tests).
    pub allow: Vec<IpNet>,
    /// Prefixes denied in addition to the defaults; takes precedence over `allow`.
    pub deny: Vec<IpNet>,
    /// The server's own listener, admin and HTTP socket addresses.
    pub own_addresses: Vec<SocketAddr>,
}

impl PeerPolicy {
    /// The default policy plus loopback (127.0.0.0/8, ::1) allowed: for the daemon's
    /// all-loopback default configuration and tests.
    pub fn allow_loopback() -> Self {
        PeerPolicy {
            allow: vec![
                IpNet { addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 },
                IpNet { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix: 128 },
            ],
            deny: Vec::new(),
            own_addresses: Vec::new(),
        }
    }

    /// Whether a permission / channel towards `peer` may be installed.
    ///
    /// Errors: the [`PeerDenied`] reason. Cost: linear in the list lengths (tens of entries);
    /// called on CreatePermission/ChannelBind only, never per packet.
    pub fn check(&self, peer: SocketAddr) -> Result<(), PeerDenied> {
        let ip = peer.ip();
        let embedded = match ip {
            IpAddr::V6(a) => embedded_ipv4(a),
            IpAddr::V4(_) => None,
        };
        let canonical = embedded.map_or(ip, |(a, _)| IpAddr::V4(a));
        if peer.port() == 0 || ip.is_unspecified() || is_this_network(canonical) {
            return Err(PeerDenied::Unspecified);
        }
        let own = self
            .own_addresses
            .iter()
            .any(|own| own.port() == peer.port() && (own.ip().is_unspecified() || canonical_ip(own.ip()) == canonical));
        if own {
            return Err(PeerDenied::OwnAddress);
        }
        if self.deny.iter().any(|n| n.contains(ip) || n.contains(canonical)) {
            return Err(PeerDenied::DenyListed);
        }
        self.verdict(canonical)?;
        if let Some((_, Embedding::Other)) = embedded {
            self.verdict(ip)?;
        }
        Ok(())
    }

    fn verdict(&self, ip: IpAddr) -> Result<(), PeerDenied> {
        if self.allow.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        special_purpose(ip).map_or(Ok(()), Err)
    }
}

fn is_this_network(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] == 0,
        IpAddr::V6(a) => a.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipnet_parse_and_contains() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.0".parse().unwrap()));
        assert!(!n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let n: IpNet = "fe80::/10".parse().unwrap();
        assert!(n.contains("febf::1".parse().unwrap()));
        assert!(!n.contains("fec0::1".parse().unwrap()));
        let n: IpNet = "127.0.0.1".parse().unwrap();
        assert_eq!(n.prefix, 32);
        let n: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(n.contains("8.8.8.8".parse().unwrap()));
        assert_eq!("10.0.0.0/33".parse::<IpNet>(), Err(IpNetError::Prefix));
        assert_eq!("10.0.0/8".parse::<IpNet>(), Err(IpNetError::Address));
        assert_eq!("::/129".parse::<IpNet>(), Err(IpNetError::Prefix));
    }

    #[test]
    fn default_denies_special_purpose() {
        let p = PeerPolicy::default();
        let cases = [
            ("0.0.0.0:80", PeerDenied::Unspecified),
            ("0.1.2.3:80", PeerDenied::Unspecified),
            ("[::]:80", PeerDenied::Unspecified),
            ("[::ffff:0.0.0.0]:80", PeerDenied::Unspecified),
            ("8.8.8.8:0", PeerDenied::Unspecified),
            ("127.0.0.1:80", PeerDenied::Loopback),
            ("[::1]:80", PeerDenied::Loopback),
            ("[::ffff:127.0.0.1]:80", PeerDenied::Loopback),
            ("[::127.0.0.1]:80", PeerDenied::Loopback),
            ("[64:ff9b::7f00:1]:80", PeerDenied::Loopback),
            ("[2002:7f00:1::]:80", PeerDenied::Loopback),
            ("[2002:a00:1::5]:80", PeerDenied::Private),
            ("10.0.0.1:80", PeerDenied::Private),
            ("172.31.255.255:80", PeerDenied::Private),
            ("192.168.1.1:80", PeerDenied::Private),
            ("[fd00::1]:80", PeerDenied::Private),
            ("169.254.169.254:80", PeerDenied::LinkLocal),
            ("[::ffff:169.254.169.254]:80", PeerDenied::LinkLocal),
            ("[fe80::1]:80", PeerDenied::LinkLocal),
            ("100.64.0.1:80", PeerDenied::SharedAddressSpace),
            ("224.0.0.1:80", PeerDenied::Multicast),
            ("[ff02::1]:80", PeerDenied::Multicast),
            ("255.255.255.255:80", PeerDenied::Broadcast),
            ("240.0.0.1:80", PeerDenied::Reserved),
            ("192.0.0.8:80", PeerDenied::Reserved),
            ("192.0.2.1:80", PeerDenied::Documentation),
            ("198.51.100.1:80", PeerDenied::Documentation),
            ("203.0.113.1:80", PeerDenied::Documentation),
            ("[2001:db8::1]:80", PeerDenied::Documentation),
            ("[3fff::1]:80", PeerDenied::Documentation),
            ("198.19.0.1:80", PeerDenied::Benchmarking),
            ("192.88.99.1:80", PeerDenied::Translation),
            ("[2001::1]:80", PeerDenied::Translation),
            ("[2002:808:808::]:80", PeerDenied::Translation),
            ("[64:ff9b::808:808]:80", PeerDenied::Translation),
            ("[64:ff9b:1::1]:80", PeerDenied::Translation),
            ("[100::1]:80", PeerDenied::Discard),
            ("[5f00::1]:80", PeerDenied::Reserved),
            ("[fec0::1]:80", PeerDenied::Reserved),
            ("[::8.8.8.8]:80", PeerDenied::Reserved),
        ];
        for (addr, want) in cases {
            assert_eq!(p.check(sa(addr)), Err(want), "{addr}");
        }
        for ok in ["8.8.8.8:3478", "[2606:4700::1111]:443", "[::ffff:8.8.8.8]:53", "1.1.1.1:1"] {
            assert_eq!(p.check(sa(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn allow_list_overrides_defaults_but_not_hard_denies() {
        let mut p = PeerPolicy::allow_loopback();
        p.own_addresses.push(sa("127.0.0.1:3478"));
        p.own_addresses.push(sa("0.0.0.0:9090"));
        assert_eq!(p.check(sa("127.0.0.1:5000")), Ok(()));
        assert_eq!(p.check(sa("[::ffff:127.0.0.1]:5000")), Ok(()));
        assert_eq!(p.check(sa("[::1]:5000")), Ok(()));
        assert_eq!(p.check(sa("127.0.0.1:3478")), Err(PeerDenied::OwnAddress));
        assert_eq!(p.check(sa("[::ffff:127.0.0.1]:3478")), Err(PeerDenied::OwnAddress));
        assert_eq!(p.check(sa("127.0.0.2:9090")), Err(PeerDenied::OwnAddress));
        assert_eq!(p.check(sa("0.0.0.0:5000")), Err(PeerDenied::Unspecified));
        assert_eq!(p.check(sa("169.254.169.254:80")), Err(PeerDenied::LinkLocal));
        p.allow.push("0.0.0.0/0".parse().unwrap());
        assert_eq!(p.check(sa("0.0.0.0:5000")), Err(PeerDenied::Unspecified));
        p.deny.push("8.8.8.0/24".parse().unwrap());
        assert_eq!(p.check(sa("8.8.8.8:53")), Err(PeerDenied::DenyListed));
        assert_eq!(p.check(sa("[::ffff:8.8.8.8]:53")), Err(PeerDenied::DenyListed));
    }

    #[test]
    fn canonicalises() {
        assert_eq!(canonical_ip("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(canonical_ip("2002:102:304::1".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(canonical_ip("64:ff9b::102:304".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(canonical_ip("::1".parse().unwrap()), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(canonical_ip("::".parse().unwrap()), "::".parse::<IpAddr>().unwrap());
    }
}
