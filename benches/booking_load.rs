//! Booking API load generator (issue 8, "Show it: benchmark"): creates/s under a closed loop and joins/s under an
//! open loop against one running Duet daemon, or against several nodes of one cluster in round robin (issue 10).
//! Run by `benches/booking_load.sh`, which builds release, starts a daemon on SQLite and one on PostgreSQL, runs this
//! against each and prints the side-by-side table, and by `benches/cluster_load.sh` (one node on PostgreSQL next to
//! three nodes on the same PostgreSQL); figures in BENCHMARKS.md ("Booking API", "Cluster mode").
//!
//! `--url` may be given several times (or comma-separated): request number i of each measurement (create, join)
//! goes to the i-th URL modulo their number, so the load is spread evenly over the nodes (round robin).
//!
//! Three measurements, one after the other:
//! - **creates**: `--clients` concurrent clients each send `POST /v1/bookings` (one booking, two participants, a new
//!   host `ref` each time so the no-double-booking rule never refuses one; no `Idempotency-Key`), the next as soon as
//!   the previous answered, for `--create-secs` seconds (0: skipped). Reports answered 201s per second and their
//!   latency p50/p99.
//! - **joins**: first `--join-bookings` bookings are created that are joinable now; then `POST /v1/join/{link_token}`
//!   is sent at a fixed rate of `--join-rate` per second (open loop: request i is due at start + i / rate whatever
//!   the earlier answers did) for `--join-secs` seconds (after `--join-warmup-secs` seconds of the same load that
//!   are not counted, default 0), cycling over both participants' link tokens. Latency counts
//!   from the due instant (so a stalled server or generator shows in it: no coordinated omission). Every join reads
//!   the booking by link hash and writes the participant's `first_joined_at` (a write per join). Reports the achieved
//!   rate of 200s, latency p50/p99/max, and errors (any other status or transport error).
//! - **saturated joins** (only with `--join-clients N`, N > 0): N clients in a closed loop send `POST
//!   /v1/join/{link_token}` over the same tokens, the next as soon as the previous answered, for `--join-max-secs`
//!   seconds: the most joins/s the node(s) answer on this machine, with their latency p50/p99.
//!
//! Everything targets 127.0.0.1 (other hosts are refused) and stops by itself. Without a subcommand it prints its
//! usage and does nothing, so building or running benches in bulk never loads anything.
//!
//! Usage (cargo appends `--bench`, which is ignored):
//! ```text
//! cargo bench --bench booking_load -- run --url http://127.0.0.1:8080 [--url http://127.0.0.1:8090 …] \
//!     --api-key-file DATA/api-key --label sqlite [--clients 16] [--create-secs 10] [--join-rate 1000] \
//!     [--join-secs 10] [--join-warmup-secs 0] [--timeline] [--join-bookings 200] [--join-clients 0] \
//!     [--join-max-secs 10]
//! ```
//! The last line is `RESULT {json}` for the wrapper script: `label`, `nodes`, `creates_per_s`, `create_p50_ms`,
//! `create_p99_ms`, `create_errors`, `joins_per_s`, `join_rate`, `join_p50_ms`, `join_p99_ms`, `join_max_ms`,
//! `join_errors`, and with `--join-clients`: `join_clients`, `sat_joins_per_s`, `sat_join_p50_ms`,
//! `sat_join_p99_ms`, `sat_join_errors` (latencies in ms; an empty measurement gives `null`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "Booking API load generator (127.0.0.1 only); see the doc comment of benches/booking_load.rs")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Closed-loop creates, then open-loop joins; prints `RESULT {json}`.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Duet's HTTP root, e.g. http://127.0.0.1:8080 (127.0.0.1 only); several (repeated or comma-separated) are
    /// used in round robin.
    #[arg(long, required = true, value_delimiter = ',')]
    url: Vec<String>,
    /// The admin API key file (`<data_dir>/api-key`).
    #[arg(long)]
    api_key_file: PathBuf,
    /// Name of the run in the RESULT line (e.g. `sqlite`).
    #[arg(long, default_value = "duet")]
    label: String,
    /// Concurrent clients of the create loop.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of creates measured.
    #[arg(long, default_value_t = 10)]
    create_secs: u64,
    /// Joins per second sent (open loop).
    #[arg(long, default_value_t = 1000)]
    join_rate: u64,
    /// Seconds of joins measured.
    #[arg(long, default_value_t = 10)]
    join_secs: u64,
    /// Seconds of open-loop joins sent before the measured ones, at the same rate, not counted (0: none).
    #[arg(long, default_value_t = 0)]
    join_warmup_secs: u64,
    /// Print the open-loop joins' latency per second (warm-up included) to stderr.
    #[arg(long)]
    timeline: bool,
    /// Bookings created beforehand for the joins (two link tokens each).
    #[arg(long, default_value_t = 200)]
    join_bookings: usize,
    /// Concurrent clients of the saturated (closed-loop) joins; 0 skips them.
    #[arg(long, default_value_t = 0)]
    join_clients: usize,
    /// Seconds of saturated joins measured.
    #[arg(long, default_value_t = 10)]
    join_max_secs: u64,
}

/// The RESULT line.
#[derive(Serialize)]
struct Report {
    label: String,
    nodes: usize,
    clients: usize,
    creates: usize,
    creates_per_s: f64,
    create_p50_ms: f64,
    create_p99_ms: f64,
    create_errors: u64,
    join_rate: u64,
    join_warmup_secs: u64,
    joins: usize,
    joins_per_s: f64,
    join_p50_ms: f64,
    join_p99_ms: f64,
    join_max_ms: f64,
    join_errors: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    saturated: Option<Saturated>,
}

/// The saturated joins of the RESULT line (flattened into it).
#[derive(Serialize)]
struct Saturated {
    join_clients: usize,
    sat_joins: usize,
    sat_joins_per_s: f64,
    sat_join_p50_ms: f64,
    sat_join_p99_ms: f64,
    sat_join_errors: u64,
}

/// The members of a create answer the generator reads.
#[derive(Deserialize)]
struct Created {
    participants: Vec<CreatedParticipant>,
}

#[derive(Deserialize)]
struct CreatedParticipant {
    link_token: String,
}

/// RFC 3339 (UTC, seconds) for now + `offset_s`.
fn rfc3339_in(offset_s: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s);
    t.replace_nanosecond(0).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A create body for host `host`, from now + `start_in_s`, 30 minutes long.
fn body(host: &str, start_in_s: i64) -> serde_json::Value {
    json!({
        "title": "Load test",
        "start_at": rfc3339_in(start_in_s),
        "end_at": rfc3339_in(start_in_s + 1800),
        "participants": [
            {"ref": host, "role": "host", "display_name": "Dr. Load"},
            {"ref": "customer:load", "role": "guest", "display_name": "J. Load"}
        ]
    })
}

/// The `q` quantile (0-1) of sorted latencies (µs), in ms.
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

struct Target {
    client: reqwest::Client,
    /// The nodes' HTTP roots, without a trailing `/`.
    bases: Vec<String>,
    key: String,
}

impl Target {
    /// The HTTP root for request number `n` (round robin).
    fn base(&self, n: u64) -> &str {
        &self.bases[(n % self.bases.len() as u64) as usize]
    }

    /// POST /v1/bookings to the node of request `n`; `Ok(answer)` on 201.
    async fn create(&self, n: u64, host: &str, start_in_s: i64) -> Result<Created> {
        let r = self
            .client
            .post(format!("{}/v1/bookings", self.base(n)))
            .bearer_auth(&self.key)
            .json(&body(host, start_in_s))
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        ensure!(status.as_u16() == 201, "create answered {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }
}

/// Unique host refs across runs and clients.
fn host_ref(label: &str, n: u64) -> String {
    static RUN: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let run =
        RUN.get_or_init(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    format!("load:{label}:{run}:{n}")
}

async fn creates(t: &Arc<Target>, args: &RunArgs, hosts: &Arc<AtomicU64>) -> (Vec<u64>, u64, f64) {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.create_secs);
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            let (t, hosts, errors, label) = (t.clone(), hosts.clone(), errors.clone(), args.label.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let n = hosts.fetch_add(1, Ordering::Relaxed);
                    let host = host_ref(&label, n);
                    let sent = Instant::now();
                    match t.create(n, &host, 3600).await {
                        Ok(_) => lat.push(sent.elapsed().as_micros() as u64),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("create: {e:#}");
                            }
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.expect("create client"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    (lat, errors.load(Ordering::Relaxed), secs)
}

/// Creates `--join-bookings` bookings joinable now by both sides (hosts from start - 15 min, guests from start - 10
/// min); returns their link tokens.
async fn join_tokens(t: &Arc<Target>, args: &RunArgs, hosts: &Arc<AtomicU64>) -> Result<Arc<Vec<String>>> {
    let mut tokens = Vec::new();
    for _ in 0..args.join_bookings {
        let n = hosts.fetch_add(1, Ordering::Relaxed);
        let host = host_ref(&args.label, n);
        let b = t.create(n, &host, 300).await.context("creating the bookings to join")?;
        tokens.extend(b.participants.into_iter().map(|p| p.link_token));
    }
    Ok(Arc::new(tokens))
}

/// One `POST /v1/join/{token}` to the node of request `i`: true on a 200 with its whole body read. Prints the
/// first few failures (`errors` counts them all).
async fn join_once(t: &Target, i: u64, token: &str, errors: &AtomicU64) -> bool {
    let r = t.client.post(format!("{}/v1/join/{token}", t.base(i))).json(&json!({})).send().await;
    let ok = match r {
        Ok(r) if r.status().as_u16() == 200 => r.bytes().await.is_ok(),
        Ok(r) => {
            if errors.load(Ordering::Relaxed) < 3 {
                eprintln!("join answered {}: {}", r.status(), r.text().await.unwrap_or_default());
            }
            false
        }
        Err(e) => {
            if errors.load(Ordering::Relaxed) < 3 {
                eprintln!("join: {e}");
            }
            false
        }
    };
    if !ok {
        errors.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// Open-loop joins: `--join-warmup-secs` of load not counted, then `--join-secs` measured. Returns the measured
/// latencies (µs, sorted), the errors among the measured requests and the measured seconds.
async fn joins(t: &Arc<Target>, args: &RunArgs, tokens: &Arc<Vec<String>>) -> (Vec<u64>, u64, f64) {
    let errors = Arc::new(AtomicU64::new(0));
    let warmup = args.join_rate * args.join_warmup_secs;
    let total = warmup + args.join_rate * args.join_secs;
    let period = Duration::from_nanos(1_000_000_000 / args.join_rate.max(1));
    let first = Instant::now() + Duration::from_millis(50);
    let start = first + period * warmup as u32;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = first + period * i as u32;
        tokio::time::sleep_until(due).await;
        let (t, tokens, errors) = (t.clone(), tokens.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let token = &tokens[i as usize % tokens.len()];
            let ok = join_once(&t, i, token, &errors).await;
            (due, ok.then(|| due.elapsed().as_micros() as u64))
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    // Per second of the run (warm-up included), for --timeline: answered joins and their latencies.
    let mut seconds: Vec<Vec<u64>> = Vec::new();
    for task in tasks {
        let (due, answered) = task.await.expect("join task");
        if args.timeline {
            let second = (due - first).as_secs() as usize;
            seconds.resize_with(seconds.len().max(second + 1), Vec::new);
            seconds[second].extend(answered);
        }
        if due >= start {
            match answered {
                Some(us) => lat.push(us),
                None => failed += 1,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    for (i, mut s) in seconds.into_iter().enumerate() {
        s.sort_unstable();
        let phase = if (i as u64) < args.join_warmup_secs { " (warm-up)" } else { "" };
        eprintln!(
            "  second {i}{phase}: {} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            s.len(),
            quantile_ms(&s, 0.5),
            quantile_ms(&s, 0.99),
            s.last().map_or(f64::NAN, |&m| m as f64 / 1000.0)
        );
    }
    (lat, failed, secs)
}

/// Saturated joins: `--join-clients` clients in a closed loop for `--join-max-secs`; latency from each send.
async fn saturated_joins(t: &Arc<Target>, args: &RunArgs, tokens: &Arc<Vec<String>>) -> (Vec<u64>, u64, f64) {
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.join_max_secs);
    let tasks: Vec<_> = (0..args.join_clients)
        .map(|_| {
            let (t, tokens, errors, next) = (t.clone(), tokens.clone(), errors.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    if join_once(&t, i, &tokens[i as usize % tokens.len()], &errors).await {
                        lat.push(sent.elapsed().as_micros() as u64);
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.expect("join client"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    (lat, errors.load(Ordering::Relaxed), secs)
}

async fn run(args: RunArgs) -> Result<()> {
    for u in &args.url {
        let url = url::Url::parse(u).with_context(|| format!("--url {u}"))?;
        if url.host_str() != Some("127.0.0.1") {
            bail!("--url must be on 127.0.0.1, not {u}");
        }
    }
    ensure!(args.clients > 0 && args.join_rate > 0 && args.join_bookings > 0, "counts must be positive");
    let key = std::fs::read_to_string(&args.api_key_file)
        .with_context(|| format!("read {}", args.api_key_file.display()))?
        .trim()
        .to_string();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(512).build()?;
    let bases = args.url.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
    let t = Arc::new(Target { client, bases, key });
    let hosts = Arc::new(AtomicU64::new(0));

    let (cl, create_errors, csecs) = creates(&t, &args, &hosts).await;
    eprintln!("{}: {} creates in {csecs:.1} s, {create_errors} errors", args.label, cl.len());
    let tokens = join_tokens(&t, &args, &hosts).await?;
    let (jl, join_errors, jsecs) = joins(&t, &args, &tokens).await;
    eprintln!("{}: {} joins in {jsecs:.1} s, {join_errors} errors", args.label, jl.len());
    let saturated = if args.join_clients > 0 {
        let (sl, errors, secs) = saturated_joins(&t, &args, &tokens).await;
        eprintln!(
            "{}: {} saturated joins ({} clients) in {secs:.1} s, {errors} errors",
            args.label,
            sl.len(),
            args.join_clients
        );
        Some(Saturated {
            join_clients: args.join_clients,
            sat_joins: sl.len(),
            sat_joins_per_s: sl.len() as f64 / secs,
            sat_join_p50_ms: quantile_ms(&sl, 0.50),
            sat_join_p99_ms: quantile_ms(&sl, 0.99),
            sat_join_errors: errors,
        })
    } else {
        None
    };
    let report = Report {
        label: args.label.clone(),
        nodes: t.bases.len(),
        clients: args.clients,
        creates: cl.len(),
        creates_per_s: if cl.is_empty() { 0.0 } else { cl.len() as f64 / csecs },
        create_p50_ms: quantile_ms(&cl, 0.50),
        create_p99_ms: quantile_ms(&cl, 0.99),
        create_errors,
        join_rate: args.join_rate,
        join_warmup_secs: args.join_warmup_secs,
        joins: jl.len(),
        joins_per_s: jl.len() as f64 / jsecs,
        join_p50_ms: quantile_ms(&jl, 0.50),
        join_p99_ms: quantile_ms(&jl, 0.99),
        join_max_ms: jl.last().map_or(f64::NAN, |&m| m as f64 / 1000.0),
        join_errors,
        saturated,
    };
    println!("RESULT {}", serde_json::to_string(&report)?);
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` appends `--bench`.
    let cli = Cli::parse_from(std::env::args().filter(|a| a != "--bench"));
    let Some(Mode::Run(args)) = cli.mode else {
        eprintln!("booking_load: nothing to do without `run …` (see benches/booking_load.sh)");
        return Ok(());
    };
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(args))
}
