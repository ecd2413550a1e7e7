//! Signaling load generator: the same PeerJS-protocol load against Duet's peerjs mode and against peerjs-server
//! (npm `peer`), and the equivalent load against Duet's native protocol. Run by `benches/signal_vs_peerjs.sh`, which
//! starts the servers and prints the side-by-side table; see BENCHMARKS.md ("Signaling") for figures.
//!
//! Everything targets 127.0.0.1 (any other host is refused); every mode is bounded in connections and time and stops
//! by itself.
//!
//! Modes:
//! - `idle`: opens `--connections` sockets and holds them `--hold` seconds, each sending a PeerJS `HEARTBEAT` every
//!   5 s as the PeerJS client does (native sockets answer the server's WebSocket pings instead). The sockets are
//!   spread over worker processes of at most `--per-worker` sockets (the file limit is per process) and over source
//!   addresses 127.0.0.B, 127.0.0.B+1, … (`--source-base` B, default 2) of at most `--per-source-ip` sockets each,
//!   so ephemeral ports never run short.
//!   Reports how many were opened and how many are still open at the end, and the server's VmRSS
//!   (/proc/<pid>/status) before, once all are open and at the end: memory per connection.
//! - `relay`: `--pairs` pairs of clients, each side sending at `--rate / (2 × pairs)` signals/s (keep it under the
//!   50/s per-socket limit of Duet's default config: pairs ≥ rate / 100): per side a repeating cycle (`--cycle`) of
//!   one `OFFER`/`ANSWER` frame of about 4 KB (a 3.7 KB Chrome audio + video SDP) and seven `CANDIDATE` frames of
//!   about 310 B (a 191 B candidate object), each carrying its send time (ns on this process's monotonic clock) in the
//!   payload. The receiver measures the one-way relay latency. Reports, over the measurement window after the
//!   warm-up, the sent and received counts, achieved rate, latency p50/p99/p99.9/max (`--histogram`: the whole
//!   distribution), the server's CPU time (utime + stime from /proc/<pid>/stat) and VmRSS.
//!
//! `--proto native` runs either mode against Duet's native protocol instead: one booking per pair is created with the
//! admin API key, both participants join (`POST /v1/join/{link_token}`), and the sockets connect to
//! `{signal_url}?token={session_token}`; relay messages are `{"type":"signal","session":N,"data":{…}}`. In cluster
//! mode `--guest-url` names another node for the guests' joins: their sockets land there while the hosts' stay on
//! `--url`'s node, so every signal crosses nodes over Redis (issue 10, `benches/cluster_load.sh`); `--server-pid`,
//! repeated, sums CPU and memory over the nodes and their redis-server.
//!
//! Usage (cargo appends `--bench`, which is ignored):
//! ```text
//! cargo bench --bench signal_load -- idle --url ws://127.0.0.1:9000/ --server-pid PID [--connections 20000]
//! cargo bench --bench signal_load -- relay --url ws://127.0.0.1:9000/ --server-pid PID [--pairs 100] [--rate 5000]
//! cargo bench --bench signal_load -- relay --proto native --url http://127.0.0.1:8080 --api-key-file DATA/api-key \
//!     --server-pid PID [--guest-url http://127.0.0.1:8090 --server-pid PID2 …]
//! ```
//! `--url` is the PeerJS base (the server's `path`, ending in `/`) or, with `--proto native`, Duet's HTTP root. The
//! last line of every run is `RESULT {json}` for the wrapper script.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<TcpStream>;

/// PeerJS clients send `HEARTBEAT` every `pingInterval` = 5000 ms (peers/peerjs lib/socket.ts).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT: &str = r#"{"type":"HEARTBEAT"}"#;
/// Upgrade plus first server frame (`OPEN` / `welcome`), per socket.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Default of `--cycle`: of each side's cycle of this many messages, the first is an OFFER/ANSWER and the rest
/// CANDIDATEs (trickle ICE: a browser gathers a handful of candidates per offer).
const CYCLE: u64 = 8;

#[derive(Parser)]
#[command(about = "Signaling load generator (127.0.0.1 only); see the doc comment of benches/signal_load.rs")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open N sockets, hold them, report held count and server memory per connection.
    Idle(IdleArgs),
    /// Pairs exchanging OFFER/ANSWER/CANDIDATE at a target rate; latency, achieved rate, server CPU.
    Relay(RelayArgs),
    /// Internal: one process of the idle mode (driven over stdin/stdout by the parent).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// peerjs-server 1.0 protocol (`{url}peerjs?key=…&id=…&token=…`).
    Peerjs,
    /// Duet's native v1 protocol (booking + join + `/v1/signal?token=…`).
    Native,
}

#[derive(Args)]
struct Target {
    /// Protocol spoken.
    #[arg(long, value_enum, default_value = "peerjs")]
    proto: Proto,
    /// PeerJS base URL (ws://127.0.0.1:PORT/PATH/) or, for native, Duet's HTTP root (http://127.0.0.1:PORT).
    #[arg(long)]
    url: String,
    /// PeerJS key.
    #[arg(long, default_value = "peerjs")]
    key: String,
    /// Duet's admin API key file (native only).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// The server's pid, for VmRSS and CPU time from /proc; repeat it for a server of several processes (the nodes
    /// of a cluster and their redis-server): their CPU times and VmRSS are summed.
    #[arg(long, required = true)]
    server_pid: Vec<u32>,
    /// Native only: the HTTP root through which each pair's guest joins (default: `--url`). Another node of the same
    /// cluster puts the guests' sockets there, the hosts' staying on `--url`'s node (cross-node signaling).
    #[arg(long)]
    guest_url: Option<String>,
    /// Name of the server in the output.
    #[arg(long, default_value = "server")]
    label: String,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Sockets to open.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 65)]
    hold: u64,
    /// Most sockets per worker process (each is a file descriptor; RLIMIT_NOFILE is per process).
    #[arg(long, default_value_t = 10_000)]
    per_worker: usize,
    /// Most sockets per source address 127.0.0.B, 127.0.0.B+1, … (B = `--source-base`)
    #[arg(long, default_value_t = 5_000)]
    per_source_ip: usize,
    /// Last byte B of the first source address; give runs that follow each other different ranges so the
    /// previous run's TIME_WAIT ports are not in the way.
    #[arg(long, default_value_t = 2)]
    source_base: u8,
    /// Upgrades in flight per worker.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Args)]
struct RelayArgs {
    #[command(flatten)]
    target: Target,
    /// Client pairs (2 sockets each).
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Total target rate, signals (relayed messages) per second, over all sockets.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load before the measurement starts.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// One OFFER/ANSWER (3 KB SDP) per this many messages of a socket, the others CANDIDATEs (1: SDP only).
    #[arg(long, default_value_t = CYCLE)]
    cycle: u64,
    /// Also print the latency distribution (power-of-two buckets of microseconds) to stderr.
    #[arg(long)]
    histogram: bool,
}

#[derive(Args)]
struct WorkerArgs {
    /// File of socket URLs, one per line.
    #[arg(long)]
    urls: PathBuf,
    #[arg(long)]
    offset: usize,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    per_source_ip: usize,
    #[arg(long)]
    source_base: u8,
    #[arg(long)]
    concurrency: usize,
    /// Send PeerJS HEARTBEATs.
    #[arg(long)]
    heartbeat: bool,
    /// Exit after this many seconds whatever happens (the parent normally closes stdin first).
    #[arg(long)]
    deadline: u64,
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench` to harness = false targets.
    let cli = Cli::parse_from(std::env::args().filter(|a| a != "--bench"));
    match cli.mode {
        Mode::Idle(a) => idle(a),
        Mode::Relay(a) => runtime()?.block_on(relay(a)),
        Mode::Worker(a) => runtime()?.block_on(worker(a)),
    }
}

/// One thread for the clients, leaving the other core to the server under test.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

// ---------------------------------------------------------------------------------------------------------------
// Endpoints: the socket URLs of each pair.

/// One client socket: its URL and, for PeerJS, its partner's id (the `dst` of what it sends and the `src` of
/// what it receives).
#[derive(Clone)]
struct Endpoint {
    url: String,
    partner: String,
}

/// `pairs` pairs of endpoints. PeerJS ids are fresh per run; native endpoints are one booking per pair.
async fn endpoints(target: &Target, pairs: usize) -> Result<Vec<[Endpoint; 2]>> {
    match target.proto {
        Proto::Peerjs => {
            ensure!(target.url.ends_with('/'), "--url must end with '/' (the PeerJS path)");
            ensure!(target.guest_url.is_none(), "--guest-url needs --proto native");
            let run = std::process::id();
            Ok((0..pairs)
                .map(|k| {
                    let (a, b) = (format!("a{run}x{k}"), format!("b{run}x{k}"));
                    let url =
                        |id: &str| format!("{}peerjs?key={}&id={id}&token=t{id}&version=1.5.5", target.url, target.key);
                    [Endpoint { url: url(&a), partner: b.clone() }, Endpoint { url: url(&b), partner: a }]
                })
                .collect())
        }
        Proto::Native => {
            let file = target.api_key_file.as_ref().context("--api-key-file is required with --proto native")?;
            let api_key = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let guest = target.guest_url.as_deref().unwrap_or(&target.url).trim_end_matches('/');
            native_endpoints(target.url.trim_end_matches('/'), guest, api_key.trim(), pairs).await
        }
    }
}

/// Creates `pairs` bookings (starting in a minute, one hour long) through `http` and joins the host of each through
/// `http` and the guest through `guest_http` (the same node, or another node of the cluster).
async fn native_endpoints(http: &str, guest_http: &str, api_key: &str, pairs: usize) -> Result<Vec<[Endpoint; 2]>> {
    check_local(&http.parse::<Uri>()?)?;
    check_local(&guest_http.parse::<Uri>()?)?;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let out: Vec<Result<[Endpoint; 2]>> = futures_util::stream::iter(0..pairs)
        .map(|k| {
            let client = &client;
            async move {
                let now = time::OffsetDateTime::now_utc();
                let at =
                    |s: i64| (now + time::Duration::seconds(s)).format(&time::format_description::well_known::Rfc3339);
                let body = json!({
                    "title": format!("bench {k}"),
                    "start_at": at(60)?,
                    "end_at": at(3660)?,
                    "participants": [
                        {"ref": format!("host:{k}"), "role": "host", "display_name": "Host"},
                        {"ref": format!("guest:{k}"), "role": "guest", "display_name": "Guest"}
                    ]
                });
                let r = client.post(format!("{http}/v1/bookings")).bearer_auth(api_key).json(&body).send().await?;
                ensure!(r.status().as_u16() == 201, "POST /v1/bookings: {}", r.status());
                let booking: Value = r.json().await?;
                let mut ends = Vec::with_capacity(2);
                for (role, via) in [("host", http), ("guest", guest_http)] {
                    let link = booking["participants"]
                        .as_array()
                        .and_then(|ps| ps.iter().find(|p| p["role"] == role))
                        .and_then(|p| p["link_token"].as_str())
                        .with_context(|| format!("no {role} link_token in {booking}"))?;
                    let r = client.post(format!("{via}/v1/join/{link}")).json(&json!({})).send().await?;
                    ensure!(r.status().as_u16() == 200, "POST /v1/join: {}", r.status());
                    let join: Value = r.json().await?;
                    let (Some(url), Some(token)) = (join["signal_url"].as_str(), join["session_token"].as_str()) else {
                        bail!("join answer without signal_url/session_token: {join}");
                    };
                    ends.push(Endpoint { url: format!("{url}?token={token}"), partner: String::new() });
                }
                let [a, b]: [Endpoint; 2] = ends.try_into().map_err(|_| anyhow!("two roles"))?;
                Ok([a, b])
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    eprintln!("created and joined {pairs} bookings in {:.1} s", started.elapsed().as_secs_f64());
    out.into_iter().collect()
}

/// Refuses any target but 127.0.0.1 / localhost.
fn check_local(uri: &Uri) -> Result<SocketAddr> {
    let host = uri.host().context("URL without host")?;
    ensure!(host == "127.0.0.1" || host == "localhost", "only 127.0.0.1 is allowed as target, not {host}");
    let port = uri.port_u16().context("URL without port")?;
    Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))
}

/// The source address of socket number `index`: 127.0.0.`base` for the first `per_ip`, then the next, …
fn source_ip(base: u8, index: usize, per_ip: usize) -> Result<Ipv4Addr> {
    let n = usize::from(base.max(2)) + index / per_ip.max(1);
    ensure!(n <= 254, "too many source addresses; raise --per-source-ip");
    Ok(Ipv4Addr::new(127, 0, 0, n as u8))
}

// ---------------------------------------------------------------------------------------------------------------
// Sockets.

/// Small client buffers (tungstenite defaults to 128 KiB each way) so 20 000 client sockets stay cheap.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0)
}

/// Connects from `src`, upgrades, and waits for the first server frame, which must be PeerJS `OPEN` or native
/// `welcome`; returns the socket.
async fn open(url: &str, src: Ipv4Addr, proto: Proto) -> Result<Ws> {
    let dst = check_local(&url.parse::<Uri>()?)?;
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(src, 0))).with_context(|| format!("bind {src}"))?;
    let stream = socket.connect(dst).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await.context("upgrade")?;
    let first = next_json(&mut ws).await?;
    let want = if proto == Proto::Peerjs { "OPEN" } else { "welcome" };
    ensure!(first["type"] == want, "first frame is not {want}: {first}");
    Ok(ws)
}

/// The next text frame as JSON (control frames skipped).
async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// Keeps an idle socket open until the server closes it: reads (which also answers WebSocket pings) and, for
/// PeerJS, sends `HEARTBEAT` every 5 s starting at `first_beat`.
async fn hold(mut ws: Ws, heartbeat: bool, first_beat: Instant) {
    let mut beat = interval_at(first_beat, HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = beat.tick(), if heartbeat => {
                if ws.send(Message::Text(HEARTBEAT.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// /proc readings.

impl Target {
    /// `Vm*` line `field` (e.g. `VmRSS`) summed over the server's processes, KiB.
    fn server_kib(&self, field: &str) -> Result<u64> {
        kib_sum(&self.server_pid, field)
    }

    /// CPU time (utime + stime) summed over the server's processes, seconds.
    fn server_cpu(&self) -> Result<f64> {
        cpu_sum(&self.server_pid)
    }
}

/// `Vm*` line `field` summed over `pids`, KiB.
fn kib_sum(pids: &[u32], field: &str) -> Result<u64> {
    pids.iter().map(|&pid| vm_kib(pid, field)).sum()
}

/// [`cpu_secs`] summed over `pids`.
fn cpu_sum(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| cpu_secs(pid)).sum()
}

/// VmRSS (or another `Vm*` line) of `pid`, KiB.
fn vm_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of `pid`, seconds (fields 14 and 15 of /proc/<pid>/stat, in clock ticks of 1/100 s: USER_HZ is
/// 100 on Linux, see proc(5)).
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: count fields after the last ')'.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f[11].parse()?, f[12].parse()?);
    Ok((utime + stime) as f64 / 100.0)
}

// ---------------------------------------------------------------------------------------------------------------
// idle

/// A worker process of the idle mode and its pipes.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn read_json(&mut self) -> Result<Value> {
        let mut line = String::new();
        ensure!(self.stdout.read_line(&mut line)? > 0, "worker exited early");
        Ok(serde_json::from_str(&line)?)
    }
}

fn idle(a: IdleArgs) -> Result<()> {
    let t = &a.target;
    let pairs = a.connections.div_ceil(2);
    let eps = runtime()?.block_on(endpoints(t, pairs))?;
    let urls: Vec<&str> = eps.iter().flatten().map(|e| e.url.as_str()).take(a.connections).collect();
    let file = std::env::temp_dir().join(format!("signal_load-{}.urls", std::process::id()));
    std::fs::write(&file, urls.join("\n") + "\n")?;
    source_ip(a.source_base, a.connections.saturating_sub(1), a.per_source_ip)?; // enough source addresses?

    let rss_before = t.server_kib("VmRSS")?;
    let cpu_before = t.server_cpu()?;
    let started = std::time::Instant::now();
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for offset in (0..a.connections).step_by(a.per_worker.max(1)) {
        let count = a.per_worker.min(a.connections - offset);
        let mut child = Command::new(&exe)
            .arg("worker")
            .args(["--urls", file.to_str().context("temp path")?])
            .args(["--offset", &offset.to_string(), "--count", &count.to_string()])
            .args(["--per-source-ip", &a.per_source_ip.to_string(), "--source-base", &a.source_base.to_string()])
            .args(["--concurrency", &a.concurrency.to_string()])
            .args(["--deadline", &(a.hold + 600).to_string()])
            .args((t.proto == Proto::Peerjs).then_some("--heartbeat"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a worker")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        workers.push(Worker { child, stdin, stdout });
    }
    let (mut opened, mut failed, mut errors) = (0u64, 0u64, Vec::new());
    for w in &mut workers {
        let v = w.read_json()?;
        opened += v["opened"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
        if let Some(e) = v["error"].as_str() {
            errors.push(e.to_string());
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    let rss_open = t.server_kib("VmRSS")?;
    eprintln!(
        "{}: opened {opened} of {} in {open_secs:.1} s ({failed} failed{}), server VmRSS {rss_before} -> {rss_open} \
         KiB; holding {} s",
        t.label,
        a.connections,
        errors.first().map(|e| format!(", first error: {e}")).unwrap_or_default(),
        a.hold
    );
    std::thread::sleep(Duration::from_secs(a.hold));
    let mut held = 0u64;
    for w in &mut workers {
        let stdin = w.stdin.as_mut().context("worker stdin")?;
        stdin.write_all(b"count\n")?;
        stdin.flush()?;
        held += w.read_json()?["alive"].as_u64().unwrap_or(0);
    }
    let rss_held = t.server_kib("VmRSS")?;
    let rss_peak = t.server_kib("VmHWM")?;
    let cpu = t.server_cpu()? - cpu_before;
    for w in &mut workers {
        w.stdin.take(); // EOF: the worker closes its sockets and exits.
    }
    for w in &mut workers {
        let _ = w.child.wait();
    }
    let per_conn = |rss: u64| if held > 0 { rss.saturating_sub(rss_before) as f64 / held as f64 } else { f64::NAN };
    let result = json!({
        "mode": "idle", "label": t.label, "proto": proto_name(t.proto), "attempted": a.connections,
        "opened": opened, "failed": failed, "held": held, "open_secs": open_secs, "hold_secs": a.hold,
        "rss_before_kib": rss_before, "rss_open_kib": rss_open, "rss_held_kib": rss_held, "rss_peak_kib": rss_peak,
        "kib_per_conn": per_conn(rss_held), "server_cpu_s": cpu, "first_error": errors.first(),
    });
    eprintln!(
        "{}: held {held} of {} after {} s; VmRSS {rss_before} -> {rss_held} KiB = {:.1} KiB per connection \
         (peak {rss_peak} KiB); server CPU {cpu:.2} s",
        t.label,
        a.connections,
        a.hold,
        per_conn(rss_held)
    );
    println!("RESULT {result}");
    Ok(())
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Peerjs => "peerjs",
        Proto::Native => "native",
    }
}

/// A worker: opens its share of the URLs, prints `{"opened","failed","error"}`, then answers each `count` line on
/// stdin with `{"alive":n}`; exits at stdin EOF or at the deadline.
async fn worker(a: WorkerArgs) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(a.deadline);
    let text = std::fs::read_to_string(&a.urls)?;
    let proto = if a.heartbeat { Proto::Peerjs } else { Proto::Native };
    let alive = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    for (i, url) in text.lines().enumerate().skip(a.offset).take(a.count) {
        let src = source_ip(a.source_base, i, a.per_source_ip)?;
        let permit = permits.clone().acquire_owned().await?;
        let (url, alive, done) = (url.to_string(), alive.clone(), done_tx.clone());
        // Heartbeats spread evenly over the 5 s period.
        let first_beat = started + HEARTBEAT_EVERY + HEARTBEAT_EVERY.mul_f64((i % 1000) as f64 / 1000.0);
        tokio::spawn(async move {
            let ws = timeout(OPEN_TIMEOUT, open(&url, src, proto)).await;
            drop(permit);
            match ws {
                Ok(Ok(ws)) => {
                    alive.fetch_add(1, Ordering::Relaxed);
                    let _ = done.send(Ok(()));
                    hold(ws, a.heartbeat, first_beat).await;
                    alive.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => drop(done.send(Err(format!("{e:#}")))),
                Err(_) => drop(done.send(Err("timed out opening".into()))),
            }
        });
    }
    drop(done_tx);
    let (mut opened, mut failed, mut error) = (0u64, 0u64, None);
    for _ in 0..a.count {
        match done_rx.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(e)) => {
                failed += 1;
                error.get_or_insert(e);
            }
            None => break,
        }
    }
    println!("{}", json!({"opened": opened, "failed": failed, "error": error}));
    // Commands from the parent; a thread because stdin is blocking.
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd.as_deref() {
                Some("count") => println!("{}", json!({"alive": alive.load(Ordering::Relaxed)})),
                Some(_) => {}
                None => break,
            },
            _ = sleep_until(deadline) => break,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// relay

/// A Chrome-style audio + video offer (3.7 KB; the candidates are trickled afterwards, as PeerJS does).
const SDP: &str = "v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0 1\r
a=extmap-allow-mixed\r
a=msid-semantic: WMS 3f2c9a1e-6b7d-4e1a-9c3f-2b8d7e6a5f41\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:Xk3v\r
a=ice-pwd:9bQe2r8Lz1mT5yWc0HfKd7Jp\r
a=ice-options:trickle\r
a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3F:1E:3C:9A:2D:8B:5E:7F:C0:41:6D:19\r
a=setup:actpass\r
a=mid:0\r
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=sendrecv\r
a=msid:3f2c9a1e-6b7d-4e1a-9c3f-2b8d7e6a5f41 8d1c5b3a-2e4f-4a6b-9c8d-7e6f5a4b3c2d\r
a=rtcp-mux\r
a=rtcp-rsize\r
a=rtpmap:111 opus/48000/2\r
a=rtcp-fb:111 transport-cc\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=rtpmap:63 red/48000/2\r
a=fmtp:63 111/111\r
a=rtpmap:9 G722/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:13 CN/8000\r
a=rtpmap:110 telephone-event/48000\r
a=rtpmap:126 telephone-event/8000\r
a=ssrc:1429739487 cname:q3Vt7YbN2kLm9PxR\r
a=ssrc:1429739487 msid:3f2c9a1e-6b7d-4e1a-9c3f-2b8d7e6a5f41 8d1c5b3a-2e4f-4a6b-9c8d-7e6f5a4b3c2d\r
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 46 98 99 100 101 112 113\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:Xk3v\r
a=ice-pwd:9bQe2r8Lz1mT5yWc0HfKd7Jp\r
a=ice-options:trickle\r
a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3F:1E:3C:9A:2D:8B:5E:7F:C0:41:6D:19\r
a=setup:actpass\r
a=mid:1\r
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r
a=extmap:13 urn:3gpp:video-orientation\r
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r
a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type\r
a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing\r
a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r
a=sendrecv\r
a=msid:3f2c9a1e-6b7d-4e1a-9c3f-2b8d7e6a5f41 c7b6a5d4-3e2f-4b1a-8c9d-0e1f2a3b4c5d\r
a=rtcp-mux\r
a=rtcp-rsize\r
a=rtpmap:96 VP8/90000\r
a=rtcp-fb:96 goog-remb\r
a=rtcp-fb:96 transport-cc\r
a=rtcp-fb:96 ccm fir\r
a=rtcp-fb:96 nack\r
a=rtcp-fb:96 nack pli\r
a=rtpmap:97 rtx/90000\r
a=fmtp:97 apt=96\r
a=rtpmap:102 H264/90000\r
a=rtcp-fb:102 goog-remb\r
a=rtcp-fb:102 transport-cc\r
a=rtcp-fb:102 ccm fir\r
a=rtcp-fb:102 nack\r
a=rtcp-fb:102 nack pli\r
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r
a=rtpmap:103 rtx/90000\r
a=fmtp:103 apt=102\r
a=rtpmap:98 VP9/90000\r
a=rtcp-fb:98 goog-remb\r
a=rtcp-fb:98 transport-cc\r
a=rtcp-fb:98 ccm fir\r
a=rtcp-fb:98 nack\r
a=rtcp-fb:98 nack pli\r
a=fmtp:98 profile-id=0\r
a=rtpmap:99 rtx/90000\r
a=fmtp:99 apt=98\r
a=rtpmap:45 AV1/90000\r
a=rtcp-fb:45 goog-remb\r
a=rtcp-fb:45 transport-cc\r
a=rtcp-fb:45 ccm fir\r
a=rtcp-fb:45 nack\r
a=rtcp-fb:45 nack pli\r
a=rtpmap:46 rtx/90000\r
a=fmtp:46 apt=45\r
a=rtpmap:112 red/90000\r
a=rtpmap:113 ulpfec/90000\r
a=ssrc-group:FID 2718281828 3141592653\r
a=ssrc:2718281828 cname:q3Vt7YbN2kLm9PxR\r
a=ssrc:2718281828 msid:3f2c9a1e-6b7d-4e1a-9c3f-2b8d7e6a5f41 c7b6a5d4-3e2f-4b1a-8c9d-0e1f2a3b4c5d\r
a=ssrc:3141592653 cname:q3Vt7YbN2kLm9PxR\r
a=ssrc:3141592653 msid:3f2c9a1e-6b7d-4e1a-9c3f-2b8d7e6a5f41 c7b6a5d4-3e2f-4b1a-8c9d-0e1f2a3b4c5d\r
";

/// The `candidate` object of a trickled host candidate, as `RTCIceCandidate.toJSON()` gives it.
const CANDIDATE: &str = concat!(
    r#"{"candidate":"candidate:3184786364 1 udp 2122260223 192.168.1.23 53124 typ host generation 0 ufrag Xk3v "#,
    r#"network-id 1 network-cost 10","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"Xk3v"}"#
);

/// Builds the frames one socket sends.
struct Frames {
    proto: Proto,
    /// PeerJS `dst` (the partner's id).
    dst: String,
    /// Native session (from `ready`).
    session: u64,
    /// Offer (initiator) or answer.
    sdp_kind: &'static str,
    /// One SDP per `cycle` messages.
    cycle: u64,
    /// The SDP as a JSON string literal.
    sdp_json: Arc<str>,
}

impl Frames {
    /// Message `seq` of this socket, stamped with `ts` (ns since the run's base instant).
    fn build(&self, seq: u64, ts: u64) -> String {
        let (cid, sdp) = (seq / self.cycle, seq.is_multiple_of(self.cycle));
        let (dst, session, kind, sdp) = (&self.dst, self.session, self.sdp_kind, sdp.then_some(&self.sdp_json));
        match (self.proto, sdp) {
            (Proto::Peerjs, Some(sdp)) => format!(
                concat!(
                    r#"{{"type":"{upper}","dst":"{dst}","payload":{{"sdp":{{"type":"{kind}","sdp":{sdp}}},"#,
                    r#""type":"media","connectionId":"mc_{cid}","metadata":null,"ts":{ts}}}}}"#
                ),
                upper = kind.to_ascii_uppercase(),
                dst = dst,
                kind = kind,
                sdp = sdp,
                cid = cid,
                ts = ts
            ),
            (Proto::Peerjs, None) => format!(
                concat!(
                    r#"{{"type":"CANDIDATE","dst":"{dst}","payload":{{"candidate":{candidate},"#,
                    r#""type":"media","connectionId":"mc_{cid}","ts":{ts}}}}}"#
                ),
                dst = dst,
                candidate = CANDIDATE,
                cid = cid,
                ts = ts
            ),
            (Proto::Native, Some(sdp)) => {
                format!(r#"{{"type":"signal","session":{session},"data":{{"type":"{kind}","sdp":{sdp},"ts":{ts}}}}}"#)
            }
            (Proto::Native, None) => format!(
                concat!(
                    r#"{{"type":"signal","session":{session},"#,
                    r#""data":{{"type":"candidate","candidate":{candidate},"ts":{ts}}}}}"#
                ),
                session = session,
                candidate = CANDIDATE,
                ts = ts
            ),
        }
    }
}

/// What the receiver reads of a relayed frame: PeerJS `{type,src,dst,payload}` or native `{type,…,data}`.
#[derive(Deserialize)]
struct Relayed {
    #[serde(rename = "type")]
    kind: String,
    src: Option<String>,
    payload: Option<Stamp>,
    data: Option<Stamp>,
}

#[derive(Deserialize)]
struct Stamp {
    ts: Option<u64>,
}

/// The measurement window on the run's clock: messages sent (by their stamp) in `[start, end)` count.
#[derive(Clone, Copy)]
struct Window {
    base: Instant,
    start: u64,
    end: u64,
}

impl Window {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    fn contains(&self, ts: u64) -> bool {
        (self.start..self.end).contains(&ts)
    }
}

#[derive(Default)]
struct SideStats {
    sent: u64,
    received: u64,
    latencies_ns: Vec<u64>,
    wrong_src: u64,
    other_frames: u64,
    closed: Option<String>,
}

async fn send_loop(
    mut sink: SplitSink<Ws, Message>,
    frames: Frames,
    first: Instant,
    period: Duration,
    stop: Instant,
    w: Window,
) -> SideStats {
    let mut s = SideStats::default();
    let mut tick = interval_at(first, period);
    // A late tick is skipped, not made up in a burst: the achieved rate shows an overload, and no socket exceeds
    // its rate limit catching up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut beat = interval_at(first + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
    let heartbeat = frames.proto == Proto::Peerjs;
    let mut seq = 0;
    loop {
        tokio::select! {
            biased;
            _ = sleep_until(stop) => break,
            _ = tick.tick() => {
                let ts = w.now();
                if let Err(e) = sink.send(Message::Text(frames.build(seq, ts).into())).await {
                    s.closed = Some(format!("send: {e}"));
                    break;
                }
                seq += 1;
                s.sent += u64::from(w.contains(ts));
            }
            _ = beat.tick(), if heartbeat => {
                if sink.send(Message::Text(HEARTBEAT.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    s
}

async fn receive_loop(mut stream: SplitStream<Ws>, expect_src: String, stop: Instant, w: Window) -> SideStats {
    let mut s = SideStats::default();
    loop {
        let m = tokio::select! {
            _ = sleep_until(stop) => break,
            m = stream.next() => m,
        };
        match m {
            Some(Ok(Message::Text(t))) => {
                let now = w.now();
                let Ok(f) = serde_json::from_str::<Relayed>(&t) else {
                    s.other_frames += 1;
                    continue;
                };
                let Some(ts) = f.payload.or(f.data).and_then(|p| p.ts) else {
                    s.other_frames += 1; // e.g. native `ready` or `window`
                    continue;
                };
                if f.kind != "signal" && f.src.as_deref() != Some(&expect_src) {
                    s.wrong_src += 1;
                }
                if w.contains(ts) {
                    s.received += 1;
                    s.latencies_ns.push(now.saturating_sub(ts));
                }
            }
            Some(Ok(Message::Close(c))) => {
                s.closed = Some(format!("closed by the server: {c:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                s.closed = Some(format!("read: {e}"));
                break;
            }
            None => {
                s.closed = Some("connection closed".into());
                break;
            }
        }
    }
    s
}

/// Native: reads until `ready` and returns its session.
async fn native_session(ws: &mut Ws) -> Result<u64> {
    loop {
        let v = next_json(ws).await?;
        if v["type"] == "ready" {
            return v["session"].as_u64().context("ready without session");
        }
    }
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn relay(a: RelayArgs) -> Result<()> {
    let t = &a.target;
    ensure!(a.pairs > 0 && a.rate > 0.0 && a.duration > 0, "--pairs, --rate and --duration must be positive");
    let per_socket = a.rate / (2 * a.pairs) as f64;
    let eps = endpoints(t, a.pairs).await?;
    let src = source_ip(2, 0, usize::MAX)?;
    let started = std::time::Instant::now();
    let mut sockets = Vec::with_capacity(2 * a.pairs);
    for [x, y] in &eps {
        for ep in [x, y] {
            let ws = timeout(OPEN_TIMEOUT, open(&ep.url, src, t.proto)).await.context("opening timed out")??;
            sockets.push((ep.clone(), ws));
        }
    }
    let mut sessions = vec![0; sockets.len()];
    if t.proto == Proto::Native {
        for (i, (_, ws)) in sockets.iter_mut().enumerate() {
            sessions[i] = timeout(OPEN_TIMEOUT, native_session(ws)).await.context("no ready")??;
        }
    }
    eprintln!(
        "{}: {} sockets open in {:.1} s; {} pairs at {:.0} signals/s in total ({per_socket:.1}/s per socket), \
         {} s warm-up + {} s measured",
        t.label,
        sockets.len(),
        started.elapsed().as_secs_f64(),
        a.pairs,
        a.rate,
        a.warmup,
        a.duration
    );

    let base = Instant::now();
    let first = base + Duration::from_millis(200);
    let start = first + Duration::from_secs(a.warmup);
    let end = start + Duration::from_secs(a.duration);
    let w = Window { base, start: (start - base).as_nanos() as u64, end: (end - base).as_nanos() as u64 };
    let period = Duration::from_secs_f64(1.0 / per_socket);
    let sdp_json: Arc<str> = serde_json::to_string(SDP)?.into();
    let n = sockets.len();
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for (i, (ep, ws)) in sockets.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let frames = Frames {
            proto: t.proto,
            dst: ep.partner.clone(),
            session: sessions[i],
            sdp_kind: if i % 2 == 0 { "offer" } else { "answer" },
            cycle: a.cycle.max(1),
            sdp_json: sdp_json.clone(),
        };
        // Sockets start evenly spread over one period, so the total load is smooth.
        let phase = period.mul_f64(i as f64 / n as f64);
        senders.push(tokio::spawn(send_loop(sink, frames, first + phase, period, end, w)));
        receivers.push(tokio::spawn(receive_loop(stream, ep.partner, end + Duration::from_secs(2), w)));
    }
    let pids = t.server_pid.clone();
    let sampler = tokio::spawn(async move {
        sleep_until(start).await;
        let before = (cpu_sum(&pids), cpu_secs(std::process::id()));
        sleep_until(end).await;
        let after = (cpu_sum(&pids), cpu_secs(std::process::id()));
        Ok::<_, anyhow::Error>((after.0? - before.0?, after.1? - before.1?, kib_sum(&pids, "VmRSS")?))
    });

    let mut total = SideStats::default();
    let mut closes = Vec::new();
    for h in senders.into_iter().chain(receivers) {
        let s = h.await?;
        total.sent += s.sent;
        total.received += s.received;
        total.wrong_src += s.wrong_src;
        total.other_frames += s.other_frames;
        total.latencies_ns.extend(s.latencies_ns);
        closes.extend(s.closed);
    }
    let (server_cpu, client_cpu, rss) = sampler.await??;
    let lat = &mut total.latencies_ns;
    lat.sort_unstable();
    let us = |q: f64| quantile(lat, q) as f64 / 1000.0;
    let achieved = total.received as f64 / a.duration as f64;
    let per_1000 = if total.received > 0 { server_cpu / total.received as f64 * 1000.0 } else { f64::NAN };
    let result = json!({
        "mode": "relay", "label": t.label, "proto": proto_name(t.proto), "pairs": a.pairs, "target_rate": a.rate,
        "duration_s": a.duration, "sent": total.sent, "received": total.received,
        "lost": total.sent.saturating_sub(total.received), "achieved_rate": achieved,
        "p50_us": us(0.50), "p99_us": us(0.99), "p999_us": us(0.999), "max_us": us(1.0),
        "server_cpu_s": server_cpu, "server_cpu_s_per_1000": per_1000, "client_cpu_s": client_cpu,
        "server_rss_kib": rss, "wrong_src": total.wrong_src, "closes": closes.len(), "first_close": closes.first(),
    });
    eprintln!(
        "{}: sent {} received {} ({:.0}/s of {:.0}/s), one-way latency p50 {:.0} us p99 {:.0} us p99.9 {:.0} us max \
         {:.0} us; server CPU {server_cpu:.2} s ({per_1000:.3} s per 1000 signals), client CPU {client_cpu:.2} s, \
         server VmRSS {rss} KiB{}",
        t.label,
        total.sent,
        total.received,
        achieved,
        a.rate,
        us(0.50),
        us(0.99),
        us(0.999),
        us(1.0),
        closes.first().map(|c| format!("; {} sockets closed, first: {c}", closes.len())).unwrap_or_default()
    );
    if a.histogram {
        print_histogram(lat);
    }
    println!("RESULT {result}");
    Ok(())
}

/// Counts of latencies per power-of-two bucket of microseconds, e.g. `[64, 128) us: 4321`.
fn print_histogram(sorted_ns: &[u64]) {
    let mut lo = 0u64;
    let mut i = 0;
    while i < sorted_ns.len() {
        let hi = if lo == 0 { 1 } else { lo * 2 };
        let n = sorted_ns[i..].partition_point(|&ns| ns < hi * 1000);
        if n > 0 {
            eprintln!("  [{lo}, {hi}) us: {n}");
        }
        i += n;
        lo = hi;
    }
}
