//! coturn's test tools against the daemon's relay (tests/coturn_interop.rs, tests/relay_interop.rs):
//! `turnutils_uclient` loads with their output parsed and checked against the relay's metrics, and a
//! `turnutils_peer` UDP echo peer on a free pair of ports.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{KillOnDrop, run_bounded_blocking, tail, tools_available};
use super::{Daemon, metric};

/// uclient runs are timing-sensitive (loss is counted); run them one at a time within a test binary.
pub static UCLIENT_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// True when all coturn `tools` are on PATH. Otherwise fails under CI, or prints a SKIPPED line and returns false.
pub fn coturn_available(test: &str, tools: &[&str]) -> bool {
    tools_available(test, tools, "apt-get install coturn")
}

/// A UDP port p on `ip` such that p and p+1 are both free (turnutils_peer binds both).
pub fn free_udp_port_pair(ip: &str) -> u16 {
    for _ in 0..50 {
        let a = UdpSocket::bind((ip, 0)).unwrap();
        let p = a.local_addr().unwrap().port();
        if p == u16::MAX {
            continue;
        }
        if UdpSocket::bind((ip, p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of UDP ports on {ip}");
}

/// Starts `turnutils_peer` (a UDP echo server) on ip:port and waits until it holds the port.
pub fn start_echo_peer(ip: &str, port: u16) -> KillOnDrop {
    let child = Command::new("turnutils_peer")
        .args(["-L", ip, "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn turnutils_peer");
    let mut peer = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The peer does not set SO_REUSEADDR for us: once our own bind fails, it is listening.
    while UdpSocket::bind((ip, port)).is_ok() {
        if let Some(status) = peer.0.try_wait().unwrap() {
            panic!("turnutils_peer exited early: {status}");
        }
        assert!(Instant::now() < deadline, "turnutils_peer did not bind {ip}:{port} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

/// The numbers a finished uclient run reports on its last lines.
#[derive(Debug)]
pub struct UclientTotals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parses `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` (the final one, without `msz=`) and
/// `Total lost packets L (x%)`.
pub fn parse_uclient(stdout: &str) -> Option<UclientTotals> {
    let totals = stdout.lines().rev().find(|l| l.contains("start_mclient: tot_send_msgs="))?;
    let lost_line = stdout.lines().rev().find(|l| l.contains("Total lost packets"))?;
    Some(UclientTotals {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: number_after(lost_line, "Total lost packets")?,
    })
}

/// `duet_turn_relayed_packets_total{direction=…}` in a metrics text (0 when absent).
pub fn relayed_packets(text: &str, direction: &str) -> f64 {
    metric(text, &format!("duet_turn_relayed_packets_total{{direction=\"{direction}\"}}")).unwrap_or(0.0)
}

/// Runs one uclient load (4 clients x 200 messages of 170 B every 5 ms, `args` choosing transport and mode) against
/// `server` with `username` / `credential`, 90 s at most, and checks that every message came back and that the relay's
/// metrics account for the relayed packets and the 4 allocations.
pub async fn uclient_load(d: &Daemon, server: SocketAddr, args: &[&str], username: &str, credential: &str, test: &str) {
    let load = UclientLoad { clients: 4, messages: 200, limit: Duration::from_secs(90) };
    uclient_load_sized(d, server, args, username, credential, &load, test).await;
}

/// The size of a uclient run: `clients` (`-m`) sending `messages` (`-n`) of 170 B every 5 ms each, killed (and the
/// test failed) after `limit`.
pub struct UclientLoad {
    pub clients: u64,
    pub messages: u64,
    pub limit: Duration,
}

/// [`uclient_load`] with the size of `load`: every message sent must come back, with matching relay metrics and at
/// least `load.clients` successful allocations.
pub async fn uclient_load_sized(
    d: &Daemon,
    server: SocketAddr,
    args: &[&str],
    username: &str,
    credential: &str,
    load: &UclientLoad,
    test: &str,
) {
    let before = d.metrics().await;
    let mut cmd = Command::new("turnutils_uclient");
    let (clients, messages) = (load.clients.to_string(), load.messages.to_string());
    cmd.args(args)
        .args(["-m", &clients, "-n", &messages, "-l", "170", "-z", "5", "-c", "-g"])
        .args(["-u", username, "-w", credential, "-p", &server.port().to_string()])
        .arg(server.ip().to_string());
    let shown = format!("{cmd:?}");
    let run = run_bounded_blocking(cmd, load.limit, "turnutils_uclient").await;
    let last = tail(&run.stdout, 15);
    assert!(
        run.status.success(),
        "{test}: {shown} failed ({}).\nstdout tail:\n{last}\nstderr:\n{}",
        run.status,
        run.stderr
    );
    let totals = parse_uclient(&run.stdout).unwrap_or_else(|| {
        panic!("{test}: no totals in turnutils_uclient output.\nstdout tail:\n{last}\nstderr:\n{}", run.stderr)
    });
    assert!(totals.sent > 0, "{test}: uclient sent nothing: {totals:?}\n{last}");
    let want = load.clients * load.messages;
    assert_eq!(totals.sent, want, "{test}: {clients} clients x {messages} messages should be sent: {totals:?}\n{last}");
    assert_eq!(totals.lost, 0, "{test}: packets lost through the relay: {totals:?}\n{last}");
    assert_eq!(totals.sent, totals.received, "{test}: every message sent must come back: {totals:?}\n{last}");

    let after = d.metrics().await;
    let to_peer = relayed_packets(&after, "to_peer") - relayed_packets(&before, "to_peer");
    let to_client = relayed_packets(&after, "to_client") - relayed_packets(&before, "to_client");
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
        ok_allocs >= load.clients as f64,
        "{test}: {clients} uclient allocations succeeded but duet_turn_allocations_total{{result=\"ok\"}} grew by \
         {ok_allocs}"
    );
}
