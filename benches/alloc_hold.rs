//! Allocation holder: opens `count` UDP client sockets on 127.0.0.1 and makes one TURN allocation from each with the
//! given long-term credentials, then holds them for `hold_s` seconds (refreshing nothing: the default lifetime is 10
//! minutes). Prints a JSON line with how many succeeded and how long it took. Used by `benches/alloc_hold.sh`, which
//! reads the server's RSS before and after to report memory per idle allocation (DESIGN §9: 10 000 allocations).
//!
//! `cargo bench --bench alloc_hold -- <turn-udp-addr> <realm> <username> <password> <count> <hold_s>`

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use duet_relay::long_term_key;
use duet_relay::stun::{Attribute, Class, Message, MessageEncoder, Method, TransactionId, attr};

fn request(tid: u32, attrs: &[Attribute<'_>], auth: Option<(&str, &str, &str, &[u8; 16])>) -> Vec<u8> {
    let mut t = [7u8; 12];
    t[..4].copy_from_slice(&tid.to_be_bytes());
    let mut e = MessageEncoder::new(Class::Request, Method::ALLOCATE, TransactionId(t));
    for a in attrs {
        e.attribute(a);
    }
    if let Some((user, realm, nonce, key)) = auth {
        e.attribute(&Attribute::Username(user)).attribute(&Attribute::Realm(realm)).attribute(&Attribute::Nonce(nonce));
        e.message_integrity(key);
    }
    e.finish().expect("encodable request")
}

fn exchange(sock: &UdpSocket, server: SocketAddr, req: &[u8], buf: &mut [u8]) -> Option<usize> {
    for _ in 0..3 {
        sock.send_to(req, server).ok()?;
        if let Ok((n, _)) = sock.recv_from(buf) {
            return Some(n);
        }
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [server, realm, user, pass, count, hold] = args.as_slice() else {
        eprintln!("usage: alloc_hold <turn-udp-addr> <realm> <username> <password> <count> <hold_s>");
        std::process::exit(2);
    };
    let server: SocketAddr = server.parse().expect("server address");
    let count: usize = count.parse().expect("count");
    let hold = Duration::from_secs(hold.parse().expect("hold seconds"));
    let key = long_term_key(user, realm, pass);
    let transport = [Attribute::RequestedTransport(17)];
    let mut buf = vec![0u8; 2048];

    // One 401 gives a nonce; nonces are stateless (valid from any source until they go stale), so every other
    // allocation is a single round trip.
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    first.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let n = exchange(&first, server, &request(0, &transport, None), &mut buf).expect("no answer from the server");
    let nonce = match Message::decode(&buf[..n]).ok().and_then(|m| m.get(attr::NONCE)) {
        Some(Ok(Attribute::Nonce(n))) => n.to_string(),
        _ => panic!("no NONCE in the first answer"),
    };

    let start = Instant::now();
    let mut sockets = Vec::with_capacity(count);
    let mut ok = 0usize;
    for i in 0..count {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("client socket (raise ulimit -n)");
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let req = request(i as u32 + 1, &transport, Some((user, realm, &nonce, &key)));
        if let Some(n) = exchange(&sock, server, &req, &mut buf)
            && Message::decode(&buf[..n]).is_ok_and(|m| m.class() == Class::SuccessResponse)
        {
            ok += 1;
        }
        sockets.push(sock);
    }
    let took = start.elapsed();
    println!(
        "{{\"requested\":{count},\"allocated\":{ok},\"seconds\":{:.2},\"allocations_per_second\":{:.0}}}",
        took.as_secs_f64(),
        ok as f64 / took.as_secs_f64()
    );
    std::thread::sleep(hold);
    drop(sockets);
}
