//! The `turn` crate's client (webrtc-rs, an independent TURN implementation) through Duet's relay: allocate with a
//! booking's credentials, then data both ways with a UDP peer. The crate's `RelayConn` installs the permission on the
//! first send and binds a channel, so the exchange covers CreatePermission, Send indications, ChannelBind and
//! ChannelData in both directions; a tap between client and server counts the ChannelData frames to prove the channel
//! is really used.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Daemon, join_as, metric, turn_crate_client, turn_credentials};
use tokio::net::UdpSocket;
use webrtc_util::Conn;

/// Forwards datagrams between one client and the server, counting ChannelData (first two bits 0b01, RFC 8656 §12)
/// per direction.
async fn tap(server: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let (up, down) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = Arc::new(tokio::sync::Mutex::new(None::<SocketAddr>));
    let addr = front.local_addr().unwrap();
    {
        let (front, back, up, client) = (front.clone(), back.clone(), up.clone(), client.clone());
        tokio::spawn(async move {
            let mut b = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut b).await {
                *client.lock().await = Some(from);
                if n > 0 && b[0] >> 6 == 1 {
                    up.fetch_add(1, Ordering::SeqCst);
                }
                let _ = back.send(&b[..n]).await;
            }
        });
    }
    {
        let down = down.clone();
        tokio::spawn(async move {
            let mut b = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut b).await {
                if n > 0 && b[0] >> 6 == 1 {
                    down.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(c) = *client.lock().await {
                    let _ = front.send_to(&b[..n], c).await;
                }
            }
        });
    }
    (addr, up, down)
}

#[tokio::test]
async fn turn_crate_client_relays_both_ways_over_a_channel() {
    let d = Daemon::start("");
    let booking = d.booking_now(0, 1800).await;
    let join = join_as(&d, &booking, "guest").await;
    let (_url, username, password) = turn_credentials(&join);
    let (front, channel_up, channel_down) = tap(d.turn_udp).await;

    let run = async {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = turn_crate_client(front, sock, &username, &password, "").await;
        let relay = client.allocate().await.expect("Allocate through Duet with the booking's credentials");
        let relayed = relay.local_addr().unwrap();
        assert!(relayed.ip().is_loopback(), "relayed address {relayed}");

        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut buf = vec![0u8; 2048];
        for i in 0..20u32 {
            let msg = format!("client->peer {i} {}", "x".repeat(i as usize * 50));
            relay.send_to(msg.as_bytes(), peer_addr).await.expect("send_to");
            let (n, from) = tokio::time::timeout(Duration::from_secs(3), peer.recv_from(&mut buf))
                .await
                .expect("peer got nothing")
                .unwrap();
            assert_eq!(&buf[..n], msg.as_bytes(), "payload to the peer");
            assert_eq!(from, relayed, "the peer sees the relayed address");
            let back = format!("peer->client {i}");
            peer.send_to(back.as_bytes(), relayed).await.unwrap();
            let (n, from) = tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
                .await
                .expect("client got nothing")
                .unwrap();
            assert_eq!(&buf[..n], back.as_bytes(), "payload to the client");
            assert_eq!(from, peer_addr, "the client sees the peer's address");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        relay.close().await.unwrap();
        client.close().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("turn crate exchange timed out");

    // The crate binds a channel once the permission exists: most traffic must have been ChannelData both ways.
    assert!(
        channel_up.load(Ordering::SeqCst) >= 15,
        "ChannelData client->server: {}",
        channel_up.load(Ordering::SeqCst)
    );
    assert!(
        channel_down.load(Ordering::SeqCst) >= 15,
        "ChannelData server->client: {}",
        channel_down.load(Ordering::SeqCst)
    );
    let m = d.metrics().await;
    assert!(metric(&m, "duet_turn_relayed_packets_total{direction=\"to_peer\"}").unwrap_or(0.0) >= 20.0);
    assert!(metric(&m, "duet_turn_relayed_packets_total{direction=\"to_client\"}").unwrap_or(0.0) >= 20.0);
}
