//! Criterion micro-benches of the relay core's per-packet work, without sockets: what one relayed datagram costs the
//! sans-IO [`Server`](duet_relay::Server) in each direction, and decoding a STUN request.
//!
//! Run: `cargo bench -p duet-relay --bench hot_path`. Figures and the machine are in BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::{Client, Harness, addr, config};
use criterion::{Criterion, Throughput, criterion_main};
use duet_relay::stun::{Attribute, Message, Method};
use duet_relay::{ChannelNumber, ClientDelivery};

const PEER: &str = "8.8.8.8:5000";
/// A media-sized payload (RTP with video, research/turn.md §4.2 profile D).
const PAYLOAD: usize = 1200;

fn setup() -> (Harness, Client, std::net::SocketAddr) {
    let mut h = Harness::new(config());
    let mut c = Client::new("192.0.2.10:40000", "bkg_bench", "par_bench", common::UNIX0 + 3600);
    let relay = c.allocate(&mut h);
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(addr(PEER))],
    );
    assert_eq!(common::error(&resp), None, "ChannelBind");
    (h, c, relay)
}

fn hot_path(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));

    let (mut h, c, _) = setup();
    let mut packet = vec![0u8; 4 + PAYLOAD];
    duet_relay::channel::write_channel_data_header(&mut packet, ChannelNumber::new(0x4000).unwrap(), PAYLOAD as u16);
    g.bench_function("client_to_peer_channel_data_1200B", |b| {
        b.iter(|| {
            let t = h.server.handle_client_input(h.now, c.five_tuple, black_box(&packet));
            assert!(t.is_some());
        })
    });

    let (mut h, _, relay) = setup();
    // The driver's relay socket is bound where the harness said; its real address is the bound one.
    let bound = std::net::SocketAddr::new("198.51.100.10".parse().unwrap(), relay.port());
    g.bench_function("peer_to_client_channel_data_1200B", |b| {
        b.iter(|| {
            let d = h.server.handle_peer_input(h.now, bound, addr(PEER), black_box(PAYLOAD));
            assert!(matches!(d, Some(ClientDelivery::ChannelData { .. })));
        })
    });

    let mut c = Client::new("192.0.2.11:40000", "bkg_bench", "par_bench", common::UNIX0 + 3600);
    let binding = c.unauthenticated(Method::BINDING, &[]);
    g.bench_function("stun_decode_binding_request", |b| {
        b.iter(|| black_box(Message::decode(black_box(&binding)).is_ok()))
    });
    g.finish();
}

// The macro defines an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::hot_path);
}
use group::benches;
criterion_main!(benches);
