//! Raw HTTP/1.1 over TCP (or any stream, e.g. TLS) for tests of the accept path: connect from a chosen loopback
//! address, send partial or oversized request heads, and measure how long the server takes to close. Every wait is
//! bounded.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `server` from `from` (any port), e.g. 127.0.0.2 to look like another client on loopback.
pub async fn connect_from(from: IpAddr, server: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("TCP socket");
    sock.bind(SocketAddr::new(from, 0)).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    tokio::time::timeout(Duration::from_secs(5), sock.connect(server))
        .await
        .unwrap_or_else(|_| panic!("connect {from} -> {server}: no answer within 5 s"))
        .unwrap_or_else(|e| panic!("connect {from} -> {server}: {e}"))
}

/// How a connection ended while the client kept (or stopped) writing.
#[derive(Debug)]
pub struct Closed {
    /// From the first byte written (or the call) to EOF or a reset.
    pub after: Duration,
    /// Everything the server sent before closing.
    pub received: Vec<u8>,
}

impl Closed {
    /// What the server sent, as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Writes `head`, then (with `trickle`) one more header line every `trickle` interval, all the while reading, until
/// the server closes (EOF, reset, or a write that fails): `Ok(Closed)`. `Err(what was received)` when the connection
/// is still open after `limit`.
pub async fn send_until_closed<S>(
    stream: S,
    head: &[u8],
    trickle: Option<Duration>,
    limit: Duration,
) -> Result<Closed, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut write_failed = wr.write_all(head).await.is_err() || wr.flush().await.is_err();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    let mut next_line = tokio::time::Instant::now() + trickle.unwrap_or(limit);
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(Closed { after: start.elapsed(), received }),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep_until(next_line), if trickle.is_some() && !write_failed => {
                write_failed = wr.write_all(b"X-Slow: 1\r\n").await.is_err() || wr.flush().await.is_err();
                next_line += trickle.unwrap();
                if write_failed {
                    // The peer closed: the read side reports it at once.
                    continue;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!(
                    "still open after {limit:?}; received {:?}",
                    String::from_utf8_lossy(&received[..received.len().min(300)])
                ));
            }
        }
    }
}

/// `GET path` with `Connection: close` from `from`: the whole response as text, or `Err` when the server closed
/// without answering (e.g. a connection cap) or did not finish within 10 s.
pub async fn get_from(from: IpAddr, server: SocketAddr, path: &str) -> Result<String, String> {
    let stream = connect_from(from, server).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: duet.test\r\nConnection: close\r\n\r\n");
    let closed = send_until_closed(stream, request.as_bytes(), None, Duration::from_secs(10)).await?;
    if closed.received.is_empty() { Err("closed without a response".into()) } else { Ok(closed.text()) }
}
