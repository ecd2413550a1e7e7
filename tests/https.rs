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
        "[http]\ntls_cert = {cert:?}\ntls_key = {key:?}\n\n[signaling.vy]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
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

/// A TLS client (tokio-rustls) that trusts only the self-signed `cert_pem`.
fn tls_connector(cert_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("PEM certificate");
    roots.add(der).expect("trust the test certificate");
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Slowloris over TLS (issue 7 item 5): with `header_read_timeout = "2s"`, a client that never starts the handshake,
/// one idle after the handshake and one trickling a request head after it are all closed within 6 s, on the HTTPS
/// listener and on the Virtual Y TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_close_slowloris_after_the_handshake() {
    use common::raw_http::{connect_from, send_until_closed};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (mut d, ready): (Daemon, _) = start_with_ready(&format!(
        "[http]\ntls_cert = {cert:?}\ntls_key = {key:?}\nheader_read_timeout = \"2s\"\n\n\
         [signaling.vy]\nlisten = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
    ));
    let connector = tls_connector(&std::fs::read_to_string(&cert).unwrap());
    let vy = common::ready_addr(&ready, "vy").expect("vy listener in the ready line");
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    let limit = Duration::from_secs(6);
    let mut failures = Vec::new();
    for (listener, addr) in [("https", d.http), ("vy", vy)] {
        let tcp = connect_from(local, addr).await;
        if let Err(e) = send_until_closed(tcp, b"", None, limit).await {
            failures.push(format!("{listener}: no TLS handshake: {e}"));
        }
        for (what, head, trickle) in [
            ("idle after the handshake", "", None),
            ("request head trickled", "GET /duet.js HTTP/1.1\r\nHost: localhost\r\n", Some(Duration::from_millis(500))),
        ] {
            let tcp = connect_from(local, addr).await;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
                .await
                .unwrap_or_else(|_| panic!("{listener}: TLS handshake within 5 s"))
                .unwrap_or_else(|e| panic!("{listener}: TLS handshake: {e}"));
            if let Err(e) = send_until_closed(tls, head.as_bytes(), trickle, limit).await {
                failures.push(format!("{listener}: {what}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "not closed within {limit:?} (header_read_timeout 2 s):\n{}", failures.join("\n"));
    common::assert_alive(&mut d);
}
