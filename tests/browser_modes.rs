//! Real browsers in Duet's drop-in signaling modes (issue 4, browser tests 2 and 3), in Debian's `chromium` driven by
//! `playwright-core`, with relay-only ICE:
//! - **vy**: two pages using **simple-peer** from npm with the Virtual Y client's signaling logic
//!   (`tests/browser/vy.mjs`, `pages/vy-client.js`) call each other through the hub in `vy` mode
//!   (`?meetingId=<external_id>&isInstructorRole=…`), media added after `connect` as the Virtual Y client does;
//! - **peerjs**: two pages using the **peerjs** client from npm (`tests/browser/peerjs.mjs`,
//!   `pages/peerjs-client.js`) register with session tokens as `key` (scoped to the booking), call with media and
//!   a data connection, then do a data round with the static key.
//!
//! Both must show inbound video in `getStats()` over a selected candidate pair with a relay candidate, and the
//! daemon's `/metrics` must count the relayed bytes. The TURN credentials come from `POST /v1/join` of the booking's
//! participants.
//!
//! As in `tests/browser.rs`: the daemon and the browser share a network namespace of their own whose only interface
//! is `lo`; each test re-executes its own binary (that test only) under `tests/browser/run-in-netns.sh`. Needs
//! `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; without them the test prints a SKIPPED line, or
//! fails when `CI` is set.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Daemon, assert_alive, booking_body, join_as, metric};
use serde_json::{Value, json};

/// Set in the re-executed child, which runs inside the namespace.
const IN_NETNS: &str = "DUET_BROWSER_MODES_IN_NETNS";
/// Prefix of the child's line carrying the scenario's JSON result.
const RESULT_PREFIX: &str = "BROWSER_RESULT ";
/// The scenarios' own hard deadline; the child and the parent allow more on top.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);
/// One browser scenario at a time in this binary (two chromium instances on a small CI machine slow both down).
static ONE_BROWSER: Mutex<()> = Mutex::new(());

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("DUET_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// Fails under CI, or prints a SKIPPED line (straight to stderr: libtest would hide a println! of a passing test).
fn skip_or_fail(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

/// What the browser tests need on the machine, or why they cannot run.
fn prerequisites() -> Result<(), String> {
    let dir = browser_dir();
    let chromium = chromium();
    if !chromium.is_file() {
        return Err(format!(
            "{} not found; install Debian's browser with `apt-get install chromium` (.ci/run does)",
            chromium.display()
        ));
    }
    if !on_path("node") {
        return Err("node not found on PATH (Node.js 18 or later)".into());
    }
    for module in ["playwright-core", "simple-peer", "peerjs"] {
        if !dir.join("node_modules").join(module).join("package.json").is_file() {
            return Err(format!(
                "tests/browser/node_modules/{module} missing; run `npm ci --prefix tests/browser` (.ci/run does)"
            ));
        }
    }
    Ok(())
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
        std::thread::sleep(Duration::from_millis(100));
    };
    Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// What follows `prefix` on the last line of `text` that holds it (libtest may print `test name ... ` before it).
fn line_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().rev().find_map(|l| l.find(prefix).map(|i| &l[i + prefix.len()..]))
}

/// The parent's side: re-executes this test binary (test `test` only) inside a fresh network namespace and checks
/// that the child passed.
async fn in_namespace(test: &'static str) {
    if let Err(why) = prerequisites() {
        return skip_or_fail(test, &why);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(browser_dir().join("run-in-netns.sh"));
    cmd.arg(&exe).args([test, "--exact", "--nocapture", "--test-threads=1"]).env(IN_NETNS, "1");
    let done = tokio::task::spawn_blocking(move || {
        let _one = ONE_BROWSER.lock().unwrap_or_else(|p| p.into_inner());
        run_bounded(&mut cmd, SCENARIO_TIMEOUT + Duration::from_secs(90))
    })
    .await
    .expect("join the child");
    if done.status.code() == Some(97) {
        // run-in-netns.sh: no network namespace can be made here.
        return skip_or_fail(test, &format!("no network namespace for the browser test: {}", done.stderr.trim()));
    }
    assert!(
        done.status.success(),
        "the browser test failed inside its network namespace ({}).\n--- stdout ---\n{}\n--- stderr ---\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    let result = line_after(&done.stdout, RESULT_PREFIX)
        .unwrap_or_else(|| panic!("the child passed without a result line:\n{}\n{}", done.stdout, done.stderr));
    let _ = writeln!(std::io::stderr(), "{test}: {result}");
}

/// Runs `node <script> --timeout-ms … <config>` in tests/browser; returns its JSON result line after checking that
/// it passed.
async fn scenario(script: &'static str, config: &Value) -> (String, Value) {
    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir())
        .arg(script)
        .args(["--timeout-ms", &SCENARIO_TIMEOUT.as_millis().to_string()])
        .arg(config.to_string());
    let done = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, SCENARIO_TIMEOUT + Duration::from_secs(30)))
        .await
        .expect("join node");
    let json_line = done.stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("").to_string();
    let result: Value = serde_json::from_str(&json_line).unwrap_or(Value::Null);
    assert!(
        done.status.success() && result["ok"] == true,
        "{script} failed ({}).\n--- stdout ---\n{}\n--- stderr ---\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    (json_line, result)
}

/// A page's `pcSummary`: inbound video bytes and a relay candidate in the selected pair.
fn assert_relayed_video(who: &str, stats: &Value) {
    assert!(stats["inbound"]["video"].as_u64().unwrap_or(0) > 0, "{who}: no inbound video bytes: {stats}");
    let pair = &stats["pair"];
    assert!(
        pair["local"]["type"] == "relay" || pair["remote"]["type"] == "relay",
        "{who}: the selected candidate pair has no relay candidate: {pair}"
    );
}

/// The daemon's relay carried bytes both ways.
async fn assert_relay_metrics(d: &Daemon) -> String {
    let text = d.metrics().await;
    for direction in ["to_peer", "to_client"] {
        let sample = format!("duet_turn_relayed_bytes_total{{direction=\"{direction}\"}}");
        let bytes = metric(&text, &sample).unwrap_or(0.0);
        assert!(bytes > 0.0, "{sample} is {bytes} after a relayed call");
    }
    text
}

// ---------------------------------------------------------------------------------------------------------------
// vy: simple-peer pages
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vy_simple_peer_pages_call_through_hub_and_relay_in_chromium() {
    const TEST: &str = "vy_simple_peer_pages_call_through_hub_and_relay_in_chromium";
    if std::env::var_os(IN_NETNS).is_some() {
        return vy_in_netns().await;
    }
    in_namespace(TEST).await;
}

/// Inside the namespace: daemon, a booking with an `external_id` (the Virtual Y meeting id), the participants' TURN
/// credentials from joins, two simple-peer pages.
async fn vy_in_netns() {
    let mut d = Daemon::start("");
    let meeting = uuid::Uuid::new_v4().to_string();
    let mut body = booking_body(60, 1800);
    body["external_id"] = json!(meeting);
    let (status, booking) = d.create_booking(&body).await;
    assert_eq!(status, 201, "create booking: {booking}");
    let host = join_as(&d, &booking, "host").await;
    let guest = join_as(&d, &booking, "guest").await;
    let config = json!({
        "ws": format!("ws://{}", d.http),
        "path": "/",
        "meetingId": meeting,
        "instructor": {"iceServers": host["ice_servers"]},
        "customer": {"iceServers": guest["ice_servers"]},
    });
    let (json_line, result) = scenario("vy.mjs", &config).await;

    for (role, other) in [("instructor", "customer"), ("customer", "instructor")] {
        let page = &result["pages"][role];
        assert_relayed_video(role, &page["stats"]);
        assert!(page["ready"].as_u64().unwrap_or(0) >= 1, "{role}: no `ready` frame: {page}");
        assert_eq!(page["badFrames"], json!([]), "{role}: the hub sent frames that are not relayed JSON: {page}");
        assert_eq!(page["closes"], json!([]), "{role}: the hub closed the socket: {page}");
        let hello = format!("{{\"action\":\"receiveChatMessage\",\"payload\":\"hello from the {other}\"}}");
        assert!(
            page["data"].as_array().is_some_and(|d| d.iter().any(|m| m == hello.as_str())),
            "{role}: the {other}'s data-channel message did not arrive: {page}"
        );
    }
    // The customer (non-initiator) added its stream after `connect`: simple-peer asked the instructor to
    // renegotiate through signaling, and the hub relayed it (simple-peer #779: filtering it breaks customer media).
    let (customer, instructor) = (&result["pages"]["customer"], &result["pages"]["instructor"]);
    assert!(
        customer["signalsOut"]["renegotiate"].as_u64().unwrap_or(0) >= 1
            && instructor["signalsIn"]["renegotiate"].as_u64().unwrap_or(0) >= 1,
        "the customer's `renegotiate` signal must reach the instructor: customer sent {}, instructor got {}",
        customer["signalsOut"],
        instructor["signalsIn"]
    );

    let text = assert_relay_metrics(&d).await;
    let relayed = metric(&text, "duet_signal_messages_total{direction=\"in\",type=\"relay\"}").unwrap_or(0.0);
    assert!(relayed >= 4.0, "vy frames counted in metrics: {relayed}");
    let ready = metric(&text, "duet_signal_ready_total").unwrap_or(0.0);
    assert!(ready >= 1.0, "the vy pair counted in duet_signal_ready_total: {ready}");
    assert_alive(&mut d);
    println!("{RESULT_PREFIX}{json_line}");
}

// ---------------------------------------------------------------------------------------------------------------
// peerjs: peerjs client pages
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peerjs_pages_connect_through_hub_and_relay_in_chromium() {
    const TEST: &str = "peerjs_pages_connect_through_hub_and_relay_in_chromium";
    if std::env::var_os(IN_NETNS).is_some() {
        return peerjs_in_netns().await;
    }
    in_namespace(TEST).await;
}

/// Inside the namespace: daemon with peerjs mode on, a booking, the participants' session tokens (the `key`) and TURN
/// credentials from joins, two peerjs pages.
async fn peerjs_in_netns() {
    let mut d = Daemon::start("[signaling.peerjs]\nenabled = true\n");
    let booking = d.booking_now(60, 1800).await;
    let host = join_as(&d, &booking, "host").await;
    let guest = join_as(&d, &booking, "guest").await;
    let config = json!({
        "host": d.http.ip().to_string(),
        "port": d.http.port(),
        "path": "/",
        "caller": {"id": "instructor-1", "key": host["session_token"], "iceServers": host["ice_servers"]},
        "callee": {"id": "customer-1", "key": guest["session_token"], "iceServers": guest["ice_servers"]},
        "staticKey": "peerjs",
    });
    let (json_line, result) = scenario("peerjs.mjs", &config).await;

    for (role, other) in [("caller", "customer-1"), ("callee", "instructor-1")] {
        let page = &result["pages"][role];
        assert_relayed_video(role, &page["stats"]);
        assert!(page["streams"].as_u64().unwrap_or(0) >= 1, "{role}: no remote stream: {page}");
        let hello = format!("hello from {other}");
        assert!(
            page["data"].as_array().is_some_and(|d| d.iter().any(|m| m == hello.as_str())),
            "{role}: the data message of {other} did not arrive: {page}"
        );
        let again = &result["staticKey"][role];
        assert!(
            again["data"].as_array().is_some_and(|d| d.iter().any(|m| m == hello.as_str())),
            "{role}: no data message with the static key: {again}"
        );
    }

    let text = assert_relay_metrics(&d).await;
    for kind in ["OFFER", "ANSWER", "CANDIDATE"] {
        let n = metric(&text, &format!("duet_signal_messages_total{{direction=\"in\",type=\"{kind}\"}}"));
        assert!(n.unwrap_or(0.0) >= 1.0, "peerjs {kind} frames counted in metrics: {n:?}");
    }
    assert_alive(&mut d);
    println!("{RESULT_PREFIX}{json_line}");
}
