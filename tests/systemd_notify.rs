//! `Type=notify` (systemd/duet.service): the daemon reports READY=1 once every listener is bound, RELOADING=1 with
//! MONOTONIC_USEC then READY=1 around a SIGHUP reload, and STATUS=draining then STOPPING=1 on SIGTERM (no call is
//! running, so the drain ends at once), on the datagram socket named by `NOTIFY_SOCKET` (sd_notify(3)).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_reloading_stopping_are_notified() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn duet");
    let pid = child.id().to_string();
    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "first notification: {ready:?}");

    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let reloading = next(&sock);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading:?}");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading:?}");
    assert!(next(&sock).lines().any(|l| l == "READY=1"), "READY=1 after the reload");

    // SIGTERM drains (STATUS=draining) and, with no call running, stops at once.
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.lines().any(|l| l == "STOPPING=1")) {
        assert!(seen.len() < 5, "no STOPPING=1 after SIGTERM: {seen:?}");
        seen.push(next(&sock));
    }
    assert!(seen[0].lines().any(|l| l == "STATUS=draining"), "draining first: {seen:?}");
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}
