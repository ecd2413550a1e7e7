//! Other programs in process-level tests: run one with a deadline (killed, with its output in the panic, when it
//! overruns), keep one in the background until dropped, find tools on PATH, and the SKIPPED / `CI` rule for tests
//! whose tools are missing.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A finished process: its exit status and everything it printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Panics with the exit status and the output unless the process exited with 0; `what` names the process.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}).\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` (stdin /dev/null) to completion; kills it and panics with its output if it runs longer than `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Finished {
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

/// [`run_bounded`] on a blocking thread of the tokio runtime (`what` names the join in a panic).
pub async fn run_bounded_blocking(mut cmd: Command, limit: Duration, what: &str) -> Finished {
    tokio::task::spawn_blocking(move || run_bounded(&mut cmd, limit))
        .await
        .unwrap_or_else(|e| panic!("join {what}: {e}"))
}

/// The last `n` lines of `text`, joined.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A background process killed (by its own handle) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first file called `name` in a directory of PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Prints a SKIPPED line for `test` (straight to the process's stderr: libtest's capture would hide a println! of a
/// passing test).
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

/// Fails under CI (`CI` set), or prints a SKIPPED line.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}");
    }
    skip(test, why);
}

/// True when all `tools` are on PATH. Otherwise fails under CI, or prints a SKIPPED line (naming the missing tools
/// and `install`, the command that installs them) and returns false.
pub fn tools_available(test: &str, tools: &[&str], install: &str) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| find_tool(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(test, &format!("test tools missing from PATH: {}; install them with `{install}`", missing.join(", ")));
    false
}
