//! Real browsers end to end (issue 4, browser test 1): two Duet join pages in Debian's `chromium`, driven by
//! `playwright-core` (`tests/browser/call.mjs`), call each other through the signaling hub with relay-only ICE; both
//! pages must show inbound video in `getStats()` over a selected candidate pair with a relay candidate, and the
//! daemon's `/metrics` must count the relayed bytes.
//!
//! The daemon and the browser must share a network namespace of their own whose only interface is `lo`, so every
//! ICE candidate is on loopback and nothing reaches another interface of the machine. The test re-executes its own
//! binary (this test only) under `tests/browser/run-in-netns.sh`, which makes that namespace (`unshare --net`,
//! `ip link set lo up`); inside, the child boots the daemon with `Daemon::start`, creates a booking, runs node and
//! reads the metrics, and the parent checks that the child passed.
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`), `node` and `npm ci --prefix tests/browser`; without them
//! the test prints a SKIPPED line, or fails when `CI` is set (`.ci/run` installs them).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, assert_alive, metric, participant};
use serde_json::Value;

/// Set in the re-executed child, which runs inside the namespace.
const IN_NETNS: &str = "DUET_BROWSER_TEST_IN_NETNS";
/// Prefix of the child's line carrying call.mjs's JSON result.
const RESULT_PREFIX: &str = "BROWSER_RESULT ";
/// call.mjs's own hard deadline; the child and the parent allow more on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

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

/// What the browser test needs on the machine, or why it cannot run.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_pages_call_through_hub_and_relay_in_chromium() {
    const TEST: &str = "join_pages_call_through_hub_and_relay_in_chromium";
    if std::env::var_os(IN_NETNS).is_some() {
        return call_in_netns().await;
    }
    if let Err(why) = prerequisites() {
        return skip_or_fail(TEST, &why);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(browser_dir().join("run-in-netns.sh"));
    cmd.arg(&exe).args([TEST, "--exact", "--nocapture", "--test-threads=1"]).env(IN_NETNS, "1");
    let done = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, CALL_TIMEOUT + Duration::from_secs(90)))
        .await
        .expect("join the child");
    if done.status.code() == Some(97) {
        // run-in-netns.sh: no network namespace can be made here.
        return skip_or_fail(TEST, &format!("no network namespace for the browser test: {}", done.stderr.trim()));
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
    let _ = writeln!(std::io::stderr(), "browser call: {result}");
}

/// Inside the namespace: daemon, booking, two chromium pages, metrics.
async fn call_in_netns() {
    let mut d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let url = |role: &str| participant(&booking, role)["join_url"].as_str().expect("join_url").to_string();
    let (host_url, guest_url) = (url("host"), url("guest"));

    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir())
        .arg("call.mjs")
        .args(["--timeout-ms", &CALL_TIMEOUT.as_millis().to_string()])
        .arg(d.http.to_string())
        .args([&host_url, &guest_url]);
    let done = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, CALL_TIMEOUT + Duration::from_secs(30)))
        .await
        .expect("join node");
    let json_line = done.stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let result: Value = serde_json::from_str(json_line).unwrap_or(Value::Null);
    assert!(
        done.status.success() && result["ok"] == true,
        "call.mjs failed ({}).\n--- stdout ---\n{}\n--- stderr ---\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    for role in ["host", "guest"] {
        let page = &result["pages"][role];
        assert!(page["inbound"]["video"].as_u64().unwrap_or(0) > 0, "{role}: no inbound video bytes: {page}");
        let pair = &page["pair"];
        assert!(
            pair["local"]["type"] == "relay" || pair["remote"]["type"] == "relay",
            "{role}: the selected candidate pair has no relay candidate: {pair}"
        );
    }

    let text = d.metrics().await;
    for direction in ["to_peer", "to_client"] {
        let sample = format!("duet_turn_relayed_bytes_total{{direction=\"{direction}\"}}");
        let bytes = metric(&text, &sample).unwrap_or(0.0);
        assert!(bytes > 0.0, "{sample} is {bytes} after a relayed call");
    }
    let allocations = metric(&text, "duet_turn_allocations_total{result=\"ok\"}").unwrap_or(0.0);
    assert!(allocations >= 2.0, "expected an allocation per page, metrics count {allocations}");
    assert_alive(&mut d);
    println!("{RESULT_PREFIX}{json_line}");
}

/// debug.mjs's own hard deadline; the child and the parent allow more on top.
const DEBUG_TIMEOUT: Duration = Duration::from_secs(90);

/// Browser test 2: the join page's `?debug=1` diagnostics panel shows a relay candidate and a relay candidate pair
/// (screenshot in /tmp/duet-debug.png); mute, a camera swap with `replaceTrack` (no renegotiation), an ICE restart
/// asked for by the guest, and a dropped signaling socket (new session, fresh peer connections) all keep the call up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_page_debug_panel_and_recovery_in_chromium() {
    const TEST: &str = "join_page_debug_panel_and_recovery_in_chromium";
    if std::env::var_os(IN_NETNS).is_some() {
        return debug_in_netns().await;
    }
    if let Err(why) = prerequisites() {
        return skip_or_fail(TEST, &why);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(browser_dir().join("run-in-netns.sh"));
    cmd.arg(&exe).args([TEST, "--exact", "--nocapture", "--test-threads=1"]).env(IN_NETNS, "1");
    let done = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, DEBUG_TIMEOUT + Duration::from_secs(90)))
        .await
        .expect("join the child");
    if done.status.code() == Some(97) {
        return skip_or_fail(TEST, &format!("no network namespace for the browser test: {}", done.stderr.trim()));
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
    let _ = writeln!(std::io::stderr(), "browser debug panel: {result}");
}

/// Inside the namespace: daemon, booking, the debug scenario.
async fn debug_in_netns() {
    let mut d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let url = |role: &str| participant(&booking, role)["join_url"].as_str().expect("join_url").to_string();
    let (host_url, guest_url) = (url("host"), url("guest"));
    let shot = std::env::var("DUET_DEBUG_SCREENSHOT").unwrap_or_else(|_| "/tmp/duet-debug.png".into());

    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir())
        .arg("debug.mjs")
        .args(["--timeout-ms", &DEBUG_TIMEOUT.as_millis().to_string(), "--screenshot", &shot])
        .arg(d.http.to_string())
        .args([&host_url, &guest_url]);
    let done = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, DEBUG_TIMEOUT + Duration::from_secs(30)))
        .await
        .expect("join node");
    let json_line = done.stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let result: Value = serde_json::from_str(json_line).unwrap_or(Value::Null);
    assert!(
        done.status.success() && result["ok"] == true,
        "debug.mjs failed ({}).\n--- stdout ---\n{}\n--- stderr ---\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    let panel = &result["panel"];
    assert!(panel["relayCandidates"].as_u64().unwrap_or(0) > 0, "no relay candidate in the panel: {panel}");
    assert!(
        panel["pairLocal"] == "relay" || panel["pairRemote"] == "relay",
        "the panel's selected pair has no relay candidate: {panel}"
    );
    assert!(result["sessions"]["after"].as_u64() > result["sessions"]["before"].as_u64(), "no new session: {result}");
    assert_alive(&mut d);
    println!("{RESULT_PREFIX}{json_line}");
}
