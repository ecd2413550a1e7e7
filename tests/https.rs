//! HTTPS on the HTTP listener and on the dedicated Virtual Y listener (`tls_cert` / `tls_key`): the API answers over
//! TLS, a Virtual Y upgrade outside any window gets 403 over TLS, and the join links use `https://`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, start_with_ready};

/// Sends one raw HTTP/1.1 request over TLS with `openssl s_client` and returns what came back: everything until the
/// server closes, or what arrived within 3 s for a kept-alive connection.
fn https_request(addr: &str, request: &str) -> String {
    use std::io::Read;
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", addr, "-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client (Debian package openssl)");
    child.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(50));
    String::from_utf8_lossy(&got.lock().unwrap()).into_owned()
}

fn self_signed(dir: &std::path::Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = common::write_tls_pair(dir, &cert.cert.pem(), &cert.signing_key.serialize_pem());
    (c.display().to_string(), k.display().to_string())
}

#[tokio::test]
async fn http_and_vy_listeners_serve_tls() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "openssl is needed for this test");
        eprintln!("SKIPPED: install openssl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (d, ready): (Daemon, _) = start_with_ready(&format!(
        "[http]\ntls_cert = {cert:?}\ntls_key = {key:?}\n\n[signaling.vy]\nlisten = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
    ));
    let http = d.http.to_string();
    let resp = https_request(&http, "GET /duet.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200"), "GET /duet.js over TLS: {}", &resp[..resp.len().min(200)]);
    let resp = https_request(
        &http,
        "POST /v1/join/nope HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("link_invalid_or_revoked"), "{resp}");

    let vy = ready["vy"].as_str().expect("vy listener in the ready line").to_string();
    let upgrade = "GET /any/path?meetingId=unknown-meeting HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n";
    let resp = https_request(&vy, upgrade);
    assert!(resp.starts_with("HTTP/1.1 403"), "vy upgrade outside any window over TLS: {resp}");

    // Join links and the signaling URL follow the listener's scheme.
    let resp = https_request(
        &http,
        &format!(
            "POST /v1/bookings HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{}",
            d.api_key,
            common::booking_body(60, 600).to_string().len(),
            common::booking_body(60, 600)
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(resp.contains("\"join_url\":\"https://"), "join links use https: {resp}");
}
