//! Interop with coturn's test clients: `turnutils_uclient` pushes real traffic through Duet's TURN relay (channels
//! and Send indications, client-to-client and via a `turnutils_peer` echo peer) and `turnutils_stunclient` does a
//! Binding. Needs the `coturn` package; without it the tests print a SKIPPED line, or fail when `CI` is set.

mod common;

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, join_as, metric, turn_credentials};

const TOOLS: [&str; 3] = ["turnutils_uclient", "turnutils_peer", "turnutils_stunclient"];

/// Room for the allocations one uclient run makes with a single credential.
const UCLIENT_CONFIG: &str = "[turn]\nallocations_per_credential = 10\n";

/// uclient runs are timing-sensitive (loss is counted); run them one at a time within this test binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// True when all coturn tools are on PATH. Otherwise fails under CI, or prints a SKIPPED line and returns false.
fn coturn_available(test: &str) -> bool {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| find_tool(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: coturn test tools missing from PATH: {}; install them with `apt-get install coturn`",
            missing.join(", ")
        );
    }
    // Straight to the process's stderr: libtest's capture would hide a println! of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: install coturn ({test} needs {} on PATH; `apt-get install coturn`)",
        missing.join(", ")
    );
    false
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion; kills it and panics with its output if it runs longer than `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (out.join().unwrap(), err.join().unwrap());
            panic!("{what} did not finish within {limit:?}; killed it.\nstdout:\n{o}\nstderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// A background process killed (by its own handle) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP port p on 127.0.0.1 such that p and p+1 are both free (turnutils_peer binds both).
fn free_udp_port_pair() -> u16 {
    for _ in 0..50 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p == u16::MAX {
            continue;
        }
        if UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of UDP ports on 127.0.0.1");
}

/// Starts `turnutils_peer` (a UDP echo server) on 127.0.0.1:port and waits until it holds the port.
fn start_echo_peer(port: u16) -> KillOnDrop {
    let child = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn turnutils_peer");
    let mut peer = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The peer does not set SO_REUSEADDR for us: once our own bind fails, it is listening.
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        if let Some(status) = peer.0.try_wait().unwrap() {
            panic!("turnutils_peer exited early: {status}");
        }
        assert!(Instant::now() < deadline, "turnutils_peer did not bind 127.0.0.1:{port} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

/// The numbers a finished uclient run reports on its last lines.
#[derive(Debug)]
struct UclientTotals {
    sent: u64,
    received: u64,
    lost: u64,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parses `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` (the final one, without `msz=`) and
/// `Total lost packets L (x%)`.
fn parse_uclient(stdout: &str) -> Option<UclientTotals> {
    let totals = stdout.lines().rev().find(|l| l.contains("start_mclient: tot_send_msgs="))?;
    let lost_line = stdout.lines().rev().find(|l| l.contains("Total lost packets"))?;
    Some(UclientTotals {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: number_after(lost_line, "Total lost packets")?,
    })
}

/// Books a call open now, joins as host, and returns the TURN (port, username, credential) from ice_servers.
async fn fresh_turn_credentials(d: &Daemon) -> (u16, String, String) {
    let booking = d.booking_now(60, 1800).await;
    let join = join_as(d, &booking, "host").await;
    let (url, username, credential) = turn_credentials(&join);
    let port: u16 = url
        .strip_prefix("turn:127.0.0.1:")
        .and_then(|r| r.split('?').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected TURN url {url:?} (want turn:127.0.0.1:PORT?transport=udp)"));
    assert_eq!(port, d.turn_udp.port(), "the TURN url in ice_servers must point at the relay's UDP listener");
    (port, username, credential)
}

fn relayed(text: &str, direction: &str) -> f64 {
    metric(text, &format!("duet_turn_relayed_packets_total{{direction=\"{direction}\"}}")).unwrap_or(0.0)
}

/// Runs one uclient load (4 clients x 200 messages of 170 B every 5 ms) with fresh credentials and checks that
/// every message came back, and that the relay's metrics account for the relayed packets.
async fn uclient_run(mode_args: &[&str], test: &str) {
    if !coturn_available(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    // `uclient -m 4` holds 6 (-y) to 7 (-e) allocations at once on one credential (4.6.1, measured), more than the
    // default quota of 4, which answers the 5th with 486.
    let d = Daemon::start(UCLIENT_CONFIG);
    let (port, username, credential) = fresh_turn_credentials(&d).await;
    let before = d.metrics().await;

    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(mode_args)
        .args(["-m", "4", "-n", "200", "-l", "170", "-z", "5", "-c", "-X", "-g"])
        .args(["-u", &username, "-w", &credential, "-p", &port.to_string()])
        .arg("127.0.0.1");
    let run = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, Duration::from_secs(90))).await.unwrap();
    let tail: String = {
        let lines: Vec<&str> = run.stdout.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    assert!(
        run.status.success(),
        "{test}: turnutils_uclient {mode_args:?} failed ({}).\nstdout tail:\n{tail}\nstderr:\n{}",
        run.status,
        run.stderr
    );
    let totals = parse_uclient(&run.stdout).unwrap_or_else(|| {
        panic!("{test}: no totals in turnutils_uclient output.\nstdout tail:\n{tail}\nstderr:\n{}", run.stderr)
    });
    assert!(totals.sent > 0, "{test}: uclient sent nothing: {totals:?}\n{tail}");
    assert_eq!(totals.sent, 800, "{test}: 4 clients x 200 messages should be sent: {totals:?}\n{tail}");
    assert_eq!(totals.lost, 0, "{test}: packets lost through the relay: {totals:?}\n{tail}");
    assert_eq!(totals.sent, totals.received, "{test}: every message sent must come back: {totals:?}\n{tail}");

    let after = d.metrics().await;
    let to_peer = relayed(&after, "to_peer") - relayed(&before, "to_peer");
    let to_client = relayed(&after, "to_client") - relayed(&before, "to_client");
    assert!(
        to_peer >= totals.sent as f64,
        "{test}: duet_turn_relayed_packets_total{{direction=\"to_peer\"}} grew by {to_peer}, but uclient sent {} \
         messages through the relay.\n{after}",
        totals.sent
    );
    assert!(
        to_client >= totals.received as f64,
        "{test}: duet_turn_relayed_packets_total{{direction=\"to_client\"}} grew by {to_client}, but uclient \
         received {} relayed messages.\n{after}",
        totals.received
    );
    let ok_allocs = metric(&after, "duet_turn_allocations_total{result=\"ok\"}").unwrap_or(0.0)
        - metric(&before, "duet_turn_allocations_total{result=\"ok\"}").unwrap_or(0.0);
    assert!(
        ok_allocs >= 4.0,
        "{test}: 4 uclient allocations succeeded but duet_turn_allocations_total{{result=\"ok\"}} grew by {ok_allocs}"
    );
}

#[tokio::test]
async fn uclient_client_to_client_over_channels() {
    uclient_run(&["-y"], "uclient_client_to_client_over_channels").await;
}

#[tokio::test]
async fn uclient_client_to_client_over_send_indications() {
    uclient_run(&["-y", "-s"], "uclient_client_to_client_over_send_indications").await;
}

#[tokio::test]
async fn uclient_echo_peer_over_channels() {
    let test = "uclient_echo_peer_over_channels";
    if !coturn_available(test) {
        return;
    }
    let port = free_udp_port_pair();
    let _peer = start_echo_peer(port);
    uclient_run(&["-e", "127.0.0.1", "-r", &port.to_string()], test).await;
}

#[tokio::test]
async fn uclient_echo_peer_over_send_indications() {
    let test = "uclient_echo_peer_over_send_indications";
    if !coturn_available(test) {
        return;
    }
    let port = free_udp_port_pair();
    let _peer = start_echo_peer(port);
    uclient_run(&["-s", "-e", "127.0.0.1", "-r", &port.to_string()], test).await;
}

#[tokio::test]
async fn stunclient_gets_mapped_address() {
    let test = "stunclient_gets_mapped_address";
    if !coturn_available(test) {
        return;
    }
    let d = Daemon::start("");
    let before = metric(&d.metrics().await, "duet_stun_binding_requests_total").unwrap_or(0.0);
    let port = d.turn_udp.port().to_string();
    let run = tokio::task::spawn_blocking(move || {
        run_bounded(Command::new("turnutils_stunclient").args(["-p", &port, "127.0.0.1"]), Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "turnutils_stunclient failed ({}).\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    // e.g. "0: : IPv4. UDP reflexive addr: 127.0.0.1:38870"
    let mapped = run
        .stdout
        .lines()
        .chain(run.stderr.lines())
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no mapped address in stunclient output:\n{}\n{}", run.stdout, run.stderr))
        .trim()
        .to_string();
    let mapped: std::net::SocketAddr =
        mapped.parse().unwrap_or_else(|e| panic!("stunclient printed an unparsable mapped address {mapped:?}: {e}"));
    assert_eq!(mapped.ip().to_string(), "127.0.0.1", "mapped address of a loopback client");
    assert_ne!(mapped.port(), 0, "mapped port");
    let after = metric(&d.metrics().await, "duet_stun_binding_requests_total").unwrap_or(0.0);
    assert!(after > before, "duet_stun_binding_requests_total did not grow after a Binding ({before} -> {after})");
}
