//! Real-browser tests (tests/browser.rs, tests/browser_modes.rs): Debian's `chromium` driven by `playwright-core`
//! scenarios in tests/browser/*.mjs.
//!
//! The daemon and the browser must share a network namespace of their own whose only interface is `lo`, so every
//! ICE candidate is on loopback and nothing reaches another interface of the machine. Each test re-executes its own
//! binary (that test only) under `tests/browser/run-in-netns.sh`, which makes that namespace; inside, the child boots
//! the daemon, runs its node scenario and checks the outcome, and the parent checks that the child passed. Without
//! `/usr/bin/chromium`, `node` or `npm ci --prefix tests/browser`, or without a way to make the namespace, the test
//! prints a SKIPPED line, or fails when `CI` is set.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::process::{find_tool, run_bounded, run_bounded_blocking, skip_or_fail};
use super::{Daemon, metric, participant};

/// Prefix of the child's line carrying the scenario's JSON result.
pub const RESULT_PREFIX: &str = "BROWSER_RESULT ";

/// tests/browser: the node scenarios, their pages and node_modules.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("DUET_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What the browser tests need on the machine, or why they cannot run.
pub fn prerequisites() -> Result<(), String> {
    let dir = browser_dir();
    let chromium = chromium();
    if !chromium.is_file() {
        return Err(format!(
            "{} not found; install Debian's browser with `apt-get install chromium` (.ci/run does)",
            chromium.display()
        ));
    }
    if find_tool("node").is_none() {
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

/// What follows `prefix` on the last line of `text` that holds it (libtest may print `test name ... ` before it).
pub fn line_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().rev().find_map(|l| l.find(prefix).map(|i| &l[i + prefix.len()..]))
}

/// One browser test. In the re-executed child (environment variable `in_netns` set) this runs `inside`. In the
/// parent it checks the prerequisites, re-executes this test binary (test `test` only) under run-in-netns.sh with
/// `in_netns` set, within `limit` (after taking `one_at_a_time`, if given), and checks that the child passed and
/// printed its [`RESULT_PREFIX`] line.
pub async fn netns_test<F: Future<Output = ()>>(
    test: &str,
    in_netns: &str,
    limit: Duration,
    one_at_a_time: Option<&'static Mutex<()>>,
    inside: impl FnOnce() -> F,
) {
    netns_test_env(test, in_netns, limit, one_at_a_time, &[], inside).await
}

/// [`netns_test`] with `env` (name, value) set in the re-executed child's environment, e.g. a database URL that
/// works from inside the namespace (see `pg::UnixBridge`).
pub async fn netns_test_env<F: Future<Output = ()>>(
    test: &str,
    in_netns: &str,
    limit: Duration,
    one_at_a_time: Option<&'static Mutex<()>>,
    env: &[(&str, String)],
    inside: impl FnOnce() -> F,
) {
    if std::env::var_os(in_netns).is_some() {
        return inside().await;
    }
    if let Err(why) = prerequisites() {
        return skip_or_fail(test, &why);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(browser_dir().join("run-in-netns.sh"));
    cmd.arg(&exe).args([test, "--exact", "--nocapture", "--test-threads=1"]).env(in_netns, "1");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let done = tokio::task::spawn_blocking(move || {
        let _one = one_at_a_time.map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        run_bounded(&mut cmd, limit)
    })
    .await
    .expect("join the child");
    if done.status.code() == Some(97) {
        // run-in-netns.sh: no network namespace can be made here.
        return skip_or_fail(test, &format!("no network namespace for the browser test: {}", done.stderr.trim()));
    }
    done.assert_success("the browser test inside its network namespace");
    let result = line_after(&done.stdout, RESULT_PREFIX)
        .unwrap_or_else(|| panic!("the child passed without a result line:\n{}\n{}", done.stdout, done.stderr));
    let _ = writeln!(std::io::stderr(), "{test}: {result}");
}

/// Runs `node <script> --timeout-ms <timeout> <args>` in tests/browser (killed after `timeout` + 30 s); returns its
/// JSON result line, raw and parsed, after checking that it passed (exit 0 and `"ok": true`).
pub async fn node_scenario(script: &str, timeout: Duration, args: &[String]) -> (String, Value) {
    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir()).arg(script).args(["--timeout-ms", &timeout.as_millis().to_string()]).args(args);
    let done = run_bounded_blocking(cmd, timeout + Duration::from_secs(30), "node").await;
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

/// The `join_url` of the participant of `booking` (a create-booking response) with this role.
pub fn join_url(booking: &Value, role: &str) -> String {
    participant(booking, role)["join_url"].as_str().expect("join_url").to_string()
}

/// A page's `pcSummary` (harness.mjs): inbound video bytes and a relay candidate in the selected pair.
pub fn assert_relayed_video(who: &str, stats: &Value) {
    assert!(stats["inbound"]["video"].as_u64().unwrap_or(0) > 0, "{who}: no inbound video bytes: {stats}");
    let pair = &stats["pair"];
    assert!(
        pair["local"]["type"] == "relay" || pair["remote"]["type"] == "relay",
        "{who}: the selected candidate pair has no relay candidate: {pair}"
    );
}

/// The daemon's relay carried bytes both ways; returns the metrics text.
pub async fn assert_relay_metrics(d: &Daemon) -> String {
    let text = d.metrics().await;
    for direction in ["to_peer", "to_client"] {
        let sample = format!("duet_turn_relayed_bytes_total{{direction=\"{direction}\"}}");
        let bytes = metric(&text, &sample).unwrap_or(0.0);
        assert!(bytes > 0.0, "{sample} is {bytes} after a relayed call");
    }
    text
}
