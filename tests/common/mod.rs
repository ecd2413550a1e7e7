//! Shared harness for process-level tests: boots the real `duet` binary on 127.0.0.1 with port 0 listeners in a
//! temporary data directory, reads the one JSON "ready" line it prints on stdout, and talks to it as a client would.
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub mod browser;
pub mod cluster;
pub mod coturn;
pub mod pg;
pub mod process;
pub mod raw_http;
pub mod webhook_receiver;
pub mod webrtc_call;

/// A running daemon. Killed on drop.
pub struct Daemon {
    pub child: Child,
    pub http: SocketAddr,
    pub turn_udp: SocketAddr,
    pub admin: SocketAddr,
    pub api_key: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// The PostgreSQL database of a daemon started on [`Backend::Postgres`]; dropped after the process is killed.
    pub db: Option<pg::TestDb>,
}

/// The booking store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite database in the data directory.
    Sqlite,
    /// A PostgreSQL database of the test's own on the server of `DUET_TEST_DATABASE_URL` ([`pg::TestDb`]).
    Postgres,
}

/// The config TOML that puts a daemon on `backend` (empty for SQLite, `[database] url` for PostgreSQL) and the
/// database that must outlive it (PostgreSQL: a fresh [`pg::TestDb`]). `None` when PostgreSQL tests are skipped.
pub fn database_for(backend: Backend) -> Option<(String, Option<pg::TestDb>)> {
    match backend {
        Backend::Sqlite => Some((String::new(), None)),
        Backend::Postgres => {
            let db = pg::TestDb::create()?;
            Some((db.config(), Some(db)))
        }
    }
}

/// For each `async fn name(backend: Backend)` listed, defines the tests `name::sqlite` and `name::postgres` (the
/// latter SKIPPED without `DUET_TEST_DATABASE_URL`, see [`pg`]).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
}

impl Daemon {
    /// Boots `duet serve` in a fresh temporary data directory with every listener on 127.0.0.1:0.
    /// `extra_config` is TOML appended to a config file (e.g. "[booking]\noverrun_grace = \"1s\"\n").
    pub fn start(extra_config: &str) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut d = Self::start_in(&data_dir, extra_config);
        d._tmp = Some(tmp);
        d
    }

    /// Like [`Daemon::start`] on `backend`: on PostgreSQL with `[database] url` pointing at a fresh database of its
    /// own. `None` when PostgreSQL tests are skipped (no `DUET_TEST_DATABASE_URL`, see [`pg`]).
    pub fn start_on(backend: Backend, extra_config: &str) -> Option<Daemon> {
        let (db_config, db) = database_for(backend)?;
        let mut d = Daemon::start(&format!("{extra_config}\n{db_config}"));
        if backend == Backend::Postgres {
            assert!(!d.data_dir.join("duet.sqlite3").exists(), "a daemon on PostgreSQL must not create SQLite files");
        }
        d.db = db;
        Some(d)
    }

    pub fn start_in(data_dir: &Path, extra_config: &str) -> Daemon {
        start_in_with_ready(data_dir, extra_config).0
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// POST /v1/bookings with the API key; returns (status, body).
    pub async fn create_booking(&self, body: &Value) -> (u16, Value) {
        self.create_booking_with(&self.api_key, body).await
    }

    /// POST /v1/bookings with `Authorization: Bearer <api_key>`; returns (status, body).
    pub async fn create_booking_with(&self, api_key: &str, body: &Value) -> (u16, Value) {
        let r = self.client().post(self.url("/v1/bookings")).bearer_auth(api_key).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A booking that starts `start_in_s` seconds from now and lasts `len_s` seconds.
    pub async fn booking_now(&self, start_in_s: i64, len_s: i64) -> Value {
        let (status, body) = self.create_booking(&booking_body(start_in_s, len_s)).await;
        assert_eq!(status, 201, "create booking: {body}");
        body
    }

    /// POST /v1/join/{link_token}; returns (status, headers, body).
    pub async fn join(&self, link_token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self.client().post(self.url(&format!("/v1/join/{link_token}"))).json(&json!({})).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus text of the admin listener.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin)).await.unwrap().text().await.unwrap()
    }
}

impl Daemon {
    /// `kill -9`: sends SIGKILL to the daemon process (`Child::kill` on Unix), so it gets no chance to flush, close
    /// sockets or finish a transaction, and waits until it has exited.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the daemon with SIGKILL ([`Daemon::kill9`]; a no-op if it is already dead) and boots a new one with the
    /// same config file, so on the same data directory and database; the temporary directory and the test database
    /// move to the new daemon. Panics when it prints no ready line within 30 s.
    pub fn restart(mut self) -> Daemon {
        self.kill9();
        let config_path = self.data_dir.parent().expect("data_dir has a parent").join("config.toml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_duet"));
        cmd.args(["serve", "--config"]).arg(&config_path);
        let (child, ready) = spawn_ready(cmd);
        let api_key_file = PathBuf::from(ready["api_key_file"].as_str().expect("ready line names api_key_file"));
        let mut d = from_ready(child, &ready, &api_key_file, self.data_dir.clone());
        d._tmp = self._tmp.take();
        d.db = self.db.take();
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a PEM certificate chain and private key into `dir` as `cert.pem` and `key.pem`, the key with mode 0600 (the
/// daemon refuses a key file that group or others may read); returns their paths.
pub fn write_tls_pair(dir: &Path, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, cert_pem).unwrap_or_else(|e| panic!("write {}: {e}", cert.display()));
    std::fs::write(&key, key_pem).unwrap_or_else(|e| panic!("write {}: {e}", key.display()));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}

/// Runs the `duet` binary with `args` (e.g. `["api-key", "rotate", "--data-dir", …]`) to completion (60 s at most).
pub fn run_duet<I, S>(args: I) -> process::Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duet"));
    cmd.args(args);
    process::run_bounded(&mut cmd, Duration::from_secs(60))
}

/// RFC 3339 (UTC, seconds) for now + `offset_s`.
pub fn rfc3339_in(offset_s: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s);
    t.replace_nanosecond(0).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A booking body starting `start_in_s` seconds from now, lasting `len_s` seconds. Its host `ref` is new at every
/// call (`instructor:42-<n>`), so bookings made with it never collide under the no-double-booking rule; tests of
/// that rule (or of one host's bookings) set `participants[0].ref` themselves.
pub fn booking_body(start_in_s: i64, len_s: i64) -> Value {
    static HOSTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = HOSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "title": "Physio follow-up",
        "start_at": rfc3339_in(start_in_s),
        "end_at": rfc3339_in(start_in_s + len_s),
        "participants": [
            {"ref": format!("instructor:42-{n}"), "role": "host", "display_name": "Dr. Ana"},
            {"ref": "customer:977", "role": "guest", "display_name": "J. Doe"}
        ]
    })
}

/// The value of one un-labelled or labelled sample in Prometheus text, e.g. `metric(&text, "duet_x_total{a=\"b\"}")`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

/// Later TOML sections may repeat a table header already present (e.g. `[turn]`); merge them so the file stays valid.
fn merge_tables(text: &str) -> String {
    let mut order: Vec<String> = vec![String::new()];
    let mut sections: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            cur = t.to_string();
            if !sections.contains_key(&cur) {
                order.push(cur.clone());
            }
            sections.entry(cur.clone()).or_default();
            continue;
        }
        sections.entry(cur.clone()).or_default().push(line.to_string());
    }
    let mut out = String::new();
    for s in order {
        if !s.is_empty() {
            out.push_str(&s);
            out.push('\n');
        }
        // Later keys override earlier ones: keep the last assignment of each key.
        let lines = sections.remove(&s).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<&String> = Vec::new();
        for l in lines.iter().rev() {
            let key = l.split('=').next().unwrap_or("").trim().to_string();
            if l.contains('=') && !seen.insert(key) {
                continue;
            }
            kept.push(l);
        }
        for l in kept.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Boots `duet` with raw command-line arguments (e.g. `["serve", "--http-listen", "127.0.0.1:0"]`) in the working
/// directory `cwd`, writing no config file. `data_dir` is the directory of the `api_key_file` named in the ready line
/// (a relative path there is taken from `cwd`).
pub fn start_with_args(args: &[&str], cwd: &Path) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duet"));
    cmd.args(args).current_dir(cwd);
    let (child, ready) = spawn_ready(cmd);
    let api_key_file = cwd.join(ready["api_key_file"].as_str().expect("ready line names api_key_file"));
    let data_dir = api_key_file.parent().unwrap().to_path_buf();
    from_ready(child, &ready, &api_key_file, data_dir)
}

/// Writes the config file next to `data_dir` (every listener on 127.0.0.1:0, then `extra_config`); returns its path.
fn write_config(data_dir: &Path, extra_config: &str) -> PathBuf {
    std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
    let config_path = data_dir.parent().unwrap().join("config.toml");
    let config = format!(
        "data_dir = {dd:?}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[turn]\nlisten_udp = [\"127.0.0.1:0\"]\n\n{extra_config}",
        dd = data_dir.display().to_string()
    );
    std::fs::write(&config_path, merge_tables(&config)).unwrap();
    config_path
}

/// Runs `duet serve` as [`Daemon::start_in`] would and expects it to refuse to start: panics if it exits with 0 (or
/// keeps running for 30 s); returns the run for its stderr.
pub fn serve_refused(data_dir: &Path, extra_config: &str) -> process::Finished {
    let config_path = write_config(data_dir, extra_config);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duet"));
    cmd.args(["serve", "--config"]).arg(&config_path).env("RUST_LOG", "warn");
    let run = process::run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(!run.status.success(), "duet serve must refuse to start; it exited with 0:\n{}", run.stderr);
    run
}

/// Writes the config file next to `data_dir` (see [`write_config`]) and boots `duet serve` with it; also returns the
/// parsed ready line.
fn start_in_with_ready(data_dir: &Path, extra_config: &str) -> (Daemon, Value) {
    let config_path = write_config(data_dir, extra_config);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duet"));
    cmd.args(["serve", "--config"]).arg(&config_path);
    let (child, ready) = spawn_ready(cmd);
    let api_key_file = PathBuf::from(ready["api_key_file"].as_str().expect("ready line names api_key_file"));
    (from_ready(child, &ready, &api_key_file, data_dir.to_path_buf()), ready)
}

/// Spawns `cmd` (the duet binary; RUST_LOG from the environment, default `warn`; stdout piped, stderr inherited) and
/// waits for its ready line.
fn spawn_ready(mut cmd: Command) -> (Child, Value) {
    let mut child = cmd
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn duet");
    let ready = wait_ready(&mut child);
    (child, ready)
}

/// The [`Daemon`] of a child that printed `ready`; the API key is read from `api_key_file`.
fn from_ready(child: Child, ready: &Value, api_key_file: &Path, data_dir: PathBuf) -> Daemon {
    let addr = |k: &str| -> SocketAddr {
        ready_addr(ready, k).unwrap_or_else(|| panic!("ready line lacks an address for {k}: {ready}"))
    };
    // No file: the admin key was revoked (`duet api-key revoke`); the key is then empty.
    let api_key = match std::fs::read_to_string(api_key_file) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("read {}: {e}", api_key_file.display()),
    };
    Daemon {
        http: addr("http"),
        turn_udp: addr("turn_udp"),
        admin: addr("admin"),
        api_key,
        data_dir,
        child,
        _tmp: None,
        db: None,
    }
}

/// What a daemon started by [`start_on_captured`] wrote: its stderr (the log) in a file, its stdout lines in memory.
pub struct Captured {
    /// The file the daemon's stderr goes to.
    pub stderr: PathBuf,
    /// Every line the daemon printed on stdout so far (the ready line included).
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Captured {
    /// Everything captured so far: the stderr file's text, then the stdout lines.
    pub fn text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        for line in self.stdout.lock().unwrap().iter() {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// Like [`Daemon::start_on`], but with `RUST_LOG` removed from the daemon's environment (so `[log]` of
/// `extra_config` decides) and its stderr and stdout captured ([`Captured`]) instead of inherited.
pub fn start_on_captured(backend: Backend, extra_config: &str) -> Option<(Daemon, Captured)> {
    let (db_config, db) = database_for(backend)?;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let config_path = write_config(&data_dir, &format!("{extra_config}\n{db_config}"));
    let stderr = tmp.path().join("duet.stderr");
    let stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let mut child = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("create the stderr file"))
        .spawn()
        .expect("spawn duet");
    let ready = wait_ready_into(&mut child, Some(stdout.clone()));
    let api_key_file = PathBuf::from(ready["api_key_file"].as_str().expect("ready line names api_key_file"));
    let mut d = from_ready(child, &ready, &api_key_file, data_dir);
    if backend == Backend::Postgres {
        assert!(!d.data_dir.join("duet.sqlite3").exists(), "a daemon on PostgreSQL must not create SQLite files");
    }
    d._tmp = Some(tmp);
    d.db = db;
    Some((d, Captured { stderr, stdout }))
}

/// Waits (30 s at most) for the one JSON `ready` line on the child's stdout; kills the child if it never comes.
fn wait_ready(child: &mut Child) -> Value {
    wait_ready_into(child, None)
}

/// [`wait_ready`], also appending every stdout line (before and after the ready line) to `keep` when given.
fn wait_ready_into(child: &mut Child, keep: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>) -> Value {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(keep) = &keep {
                keep.lock().unwrap().push(line.clone());
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["event"] == "ready"
            {
                let _ = tx.send(v);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(ready) => ready,
        Err(_) => {
            let _ = child.kill();
            let status = child.wait();
            panic!("daemon printed no ready line within 30 s (exit: {status:?})");
        }
    }
}

/// The participant of `booking` (a create-booking response) with this role.
pub fn participant<'a>(booking: &'a Value, role: &str) -> &'a Value {
    booking["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["role"] == role))
        .unwrap_or_else(|| panic!("no {role} participant in {booking}"))
}

/// The TURN entry (the one with a username) of a join response's or welcome's `ice_servers`.
pub fn turn_server(ice_servers: &Value) -> &Value {
    ice_servers
        .as_array()
        .and_then(|s| s.iter().find(|s| s.get("username").is_some()))
        .unwrap_or_else(|| panic!("no TURN entry with a username in ice_servers {ice_servers}"))
}

/// Panics with the exit status if the daemon process is no longer running (it crashed or exited).
pub fn assert_alive(d: &mut Daemon) {
    match d.child.try_wait() {
        Ok(None) => {}
        Ok(Some(status)) => panic!("the duet daemon is no longer running: {status}"),
        Err(e) => panic!("cannot query the duet daemon process: {e}"),
    }
}

/// Opens a native signaling WebSocket with a join response's `session_token`: `Ok(first text frame)` (the `welcome`)
/// or `Err(close code)` when the server closes first (e.g. 4001 for a refused token). Panics after 10 s.
pub async fn signal_first_frame(join: &Value) -> Result<Value, u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!(
        "{}?token={}",
        join["signal_url"].as_str().expect("join has signal_url"),
        join["session_token"].as_str().expect("join has session_token")
    );
    let first = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("WebSocket upgrade");
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("a JSON text frame")),
                Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                other => panic!("signaling socket ended without a frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), first).await.unwrap_or_else(|_| panic!("no frame within 10 s"))
}

/// POST /v1/join for the participant of `booking` (a create-booking response) with `role`; asserts 200, returns the body.
pub async fn join_as(d: &Daemon, booking: &Value, role: &str) -> Value {
    let token = booking["participants"]
        .as_array()
        .expect("booking has participants")
        .iter()
        .find(|p| p["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in booking {booking}"))["link_token"]
        .as_str()
        .expect("participant has a link_token")
        .to_string();
    let (status, _, body) = d.join(&token).await;
    assert_eq!(status, 200, "join as {role}: {body}");
    body
}

/// The TURN entry of a join response's ice_servers: (url, username, credential).
pub fn turn_credentials(join: &Value) -> (String, String, String) {
    let servers = join["ice_servers"].as_array().expect("join response has ice_servers");
    let turn = servers
        .iter()
        .find(|s| s.get("username").is_some())
        .unwrap_or_else(|| panic!("no ice server with credentials in {join}"));
    let url = turn["urls"][0].as_str().expect("turn url").to_string();
    let username = turn["username"].as_str().expect("turn username").to_string();
    let credential = turn["credential"].as_str().expect("turn credential").to_string();
    (url, username, credential)
}

// ---------------------------------------------------------------------------------------------------------------
// Relay tests (relay_interop.rs, relay_security.rs): the ready line's TCP/TLS listeners, SIGHUP, cancellation, and a
// small long-term-credential TURN client over UDP built from the `stun` and `turn` crates' codecs.
// ---------------------------------------------------------------------------------------------------------------

/// Like [`Daemon::start`] (fresh temporary data directory, every listener on 127.0.0.1:0 unless `extra_config` says
/// otherwise), and also returns the parsed ready line, e.g. for its `turn_tcp` / `turn_tls` fields.
pub fn start_with_ready(extra_config: &str) -> (Daemon, Value) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut d, ready) = start_in_with_ready(&tmp.path().join("data"), extra_config);
    d._tmp = Some(tmp);
    (d, ready)
}

/// An address field of the ready line: `None` when it is null or absent (e.g. `turn_tls` without TLS listeners);
/// panics when it is present but not a socket address.
pub fn ready_addr(ready: &Value, key: &str) -> Option<SocketAddr> {
    match &ready[key] {
        Value::Null => None,
        Value::String(s) => {
            Some(s.parse().unwrap_or_else(|e| panic!("ready line field {key} = {s:?} is not an address: {e}")))
        }
        other => panic!("ready line field {key} must be an address string or null, got {other} in {ready}"),
    }
}

/// Sends SIGHUP to the daemon (reload of the TURNS certificate/key and of the TURN secrets in secrets.toml).
pub fn sighup(d: &Daemon) {
    let pid = d.child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().expect("run kill -HUP");
    assert!(status.success(), "kill -HUP {pid} failed: {status}");
}

/// POST /v1/bookings/{id}/cancel with the API key; returns (status, body).
pub async fn cancel_booking(d: &Daemon, booking_id: &str) -> (u16, Value) {
    let r = d
        .client()
        .post(d.url(&format!("/v1/bookings/{booking_id}/cancel")))
        .bearer_auth(&d.api_key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/bookings/{booking_id}/cancel: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The ERROR-CODE of a STUN message, if any.
pub fn stun_error_code(m: &stun::message::Message) -> Option<u16> {
    use stun::message::Getter;
    let mut e = stun::error_code::ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

/// Data that came back through the relay: from a Data indication (`peer` set) or a ChannelData message (`channel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub peer: Option<SocketAddr>,
    pub channel: Option<u16>,
    pub data: Vec<u8>,
}

/// How a [`TurnUdpClient`] reaches the relay: a connected UDP socket, or a TCP connection whose byte stream carries
/// STUN and ChannelData frames back to back (RFC 8656 §12.5), with the bytes read past the last whole frame.
enum Link {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpStream, std::sync::Mutex<Vec<u8>>),
}

impl Link {
    fn local_addr(&self) -> SocketAddr {
        match self {
            Link::Udp(s) => s.local_addr().unwrap(),
            Link::Tcp(s, _) => s.local_addr().unwrap(),
        }
    }

    /// Sends one datagram (UDP) or writes one frame (TCP); a closed connection is an error.
    async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(s) => s.send(bytes).await.map(|_| ()),
            Link::Tcp(s, _) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    s.writable().await?;
                    match s.try_write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Receives one datagram (UDP) or one whole frame (TCP) into `buf`; `Ok(0)` when the TCP connection closed.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (s, pending) = match self {
            Link::Udp(s) => return s.recv(buf).await,
            Link::Tcp(s, pending) => (s, pending),
        };
        loop {
            {
                let mut p = pending.lock().unwrap();
                if let Some(len) = frame_len(&p)
                    && p.len() >= len
                {
                    buf[..len].copy_from_slice(&p[..len]);
                    p.drain(..len);
                    return Ok(len);
                }
            }
            s.readable().await?;
            let mut chunk = [0u8; 4096];
            match s.try_read(&mut chunk) {
                Ok(0) => return Ok(0),
                Ok(n) => pending.lock().unwrap().extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A STUN Binding request with a fresh transaction ID.
fn binding_request() -> stun::message::Message {
    let setters: Vec<Box<dyn stun::message::Setter>> =
        vec![Box::new(stun::agent::TransactionId::new()), Box::new(stun::message::BINDING_REQUEST)];
    let mut req = stun::message::Message::new();
    req.build(&setters).expect("build Binding");
    req
}

/// The sum of every sample of the metric family `name` (all label values) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name || k.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
                .then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// Length of the frame at the start of a TCP TURN byte stream (RFC 8656 §12.5: STUN is 20 + its length field,
/// ChannelData 4 + its length padded to 4), once 4 bytes are there.
fn frame_len(b: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
    Some(if b[0] >> 6 == 1 { 4 + ((len + 3) & !3) } else { 20 + len })
}

/// A TURN client with long-term credentials (RFC 8489 §9.2: 401 challenge, then USERNAME, REALM, NONCE and
/// MESSAGE-INTEGRITY keyed with MD5(username:realm:password); 438 answered with the fresh nonce), over UDP
/// ([`TurnUdpClient::connect`]) or TCP ([`TurnUdpClient::connect_tcp`]). Messages are built with the `stun` crate and
/// the `turn` crate's attribute codecs (`turn::proto`). Every wait is bounded.
pub struct TurnUdpClient {
    link: Link,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: Option<String>,
    /// Data indications / ChannelData that arrived while a response was awaited.
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl TurnUdpClient {
    /// A client on a fresh loopback socket of the server's family, connected to `server`.
    pub async fn connect(server: SocketAddr, username: &str, password: &str) -> TurnUdpClient {
        let local = if server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" };
        let sock = tokio::net::UdpSocket::bind(local).await.expect("bind client UDP socket");
        sock.connect(server).await.expect("connect client UDP socket");
        Self::over(Link::Udp(sock), server, username, password)
    }

    /// A client over a new TCP connection to the relay's TCP listener `server`.
    pub async fn connect_tcp(server: SocketAddr, username: &str, password: &str) -> TurnUdpClient {
        let local = if server.is_ipv6() { "::1" } else { "127.0.0.1" };
        Self::connect_tcp_from(local.parse().unwrap(), server, username, password).await
    }

    /// [`Self::connect_tcp`] from the local address `from` (e.g. 127.0.0.2, another client IP on loopback).
    pub async fn connect_tcp_from(
        from: std::net::IpAddr,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> TurnUdpClient {
        let socket = if from.is_ipv6() { tokio::net::TcpSocket::new_v6() } else { tokio::net::TcpSocket::new_v4() }
            .expect("TCP socket");
        socket.bind(SocketAddr::new(from, 0)).unwrap_or_else(|e| panic!("bind a TCP socket on {from}: {e}"));
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(server))
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {server} timed out"))
            .unwrap_or_else(|e| panic!("TCP connect to {server}: {e}"));
        Self::over(Link::Tcp(stream, Default::default()), server, username, password)
    }

    fn over(link: Link, server: SocketAddr, username: &str, password: &str) -> TurnUdpClient {
        TurnUdpClient {
            link,
            server,
            username: username.to_string(),
            password: password.to_string(),
            realm: String::new(),
            nonce: None,
            pending: Default::default(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.link.local_addr()
    }

    /// Sends `req` and waits (5 s at most, retransmitting after 0.5, 1 and 2 s as RFC 8489 §6.2.1 does) for the
    /// response to its transaction. Relayed data arriving meanwhile is kept for [`Self::recv_relayed`].
    pub async fn transact(&mut self, req: &stun::message::Message) -> stun::message::Message {
        let start = std::time::Instant::now();
        let deadline = start + Duration::from_secs(5);
        let mut next_send = start;
        let mut rto = Duration::from_millis(500);
        let mut buf = vec![0u8; 65536];
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                panic!("no response to {} from {} within 5 s", req.typ, self.server);
            }
            if now >= next_send {
                self.link.send(&req.raw).await.expect("send STUN request");
                // Over TCP the stream is reliable: no retransmission (RFC 8489 §6.2.2), one wait of 5 s.
                next_send = if matches!(self.link, Link::Tcp(..)) { deadline } else { now + rto };
                rto *= 2;
            }
            let wait = next_send.min(deadline) - now;
            let Ok(r) = tokio::time::timeout(wait, self.link.recv(&mut buf)).await else { continue };
            let n = match r {
                Ok(0) if matches!(self.link, Link::Tcp(..)) => {
                    panic!("the relay closed the TCP connection while {} waited for a response", req.typ)
                }
                Ok(n) => n,
                // ICMP port unreachable from an earlier datagram; keep waiting.
                Err(_) => continue,
            };
            let bytes = &buf[..n];
            if n >= 4 && bytes[0] >> 6 == 1 {
                self.pending.push_back(bytes.to_vec());
                continue;
            }
            let mut m = stun::message::Message::new();
            m.raw = bytes.to_vec();
            if m.decode().is_err() {
                panic!("undecodable datagram from the relay while waiting for {}: {bytes:02x?}", req.typ);
            }
            if m.typ.class == stun::message::CLASS_INDICATION {
                self.pending.push_back(bytes.to_vec());
                continue;
            }
            if m.transaction_id == req.transaction_id {
                return m;
            }
        }
    }

    /// True when the relay closes this TCP connection within `wait` (frames arriving meanwhile are discarded);
    /// false when it is still open then. Panics for UDP.
    pub async fn closed_by_relay(&self, wait: Duration) -> bool {
        assert!(matches!(self.link, Link::Tcp(..)), "closed_by_relay needs a TCP client");
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::time::timeout_at(deadline, self.link.recv(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends an unauthenticated Binding request (RFC 8489 §3: the STUN service, no credentials) and returns the
    /// response.
    pub async fn binding(&mut self) -> stun::message::Message {
        let req = binding_request();
        self.transact(&req).await
    }

    /// Sends an unauthenticated Binding request without waiting for the response; `false` when the send failed
    /// (e.g. the TCP connection was closed).
    pub async fn send_binding(&self) -> bool {
        self.link.send(&binding_request().raw).await.is_ok()
    }

    /// The 401 challenge: sends an unauthenticated Allocate and stores REALM and NONCE.
    pub async fn challenge(&mut self) {
        use stun::message::Setter;
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::message::MessageType::new(stun::message::METHOD_ALLOCATE, stun::message::CLASS_REQUEST)),
            Box::new(turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP }),
        ];
        let mut req = stun::message::Message::new();
        req.build(&setters).expect("build Allocate");
        let resp = self.transact(&req).await;
        assert_eq!(
            stun_error_code(&resp),
            Some(401),
            "an unauthenticated Allocate must be challenged with 401: {resp}"
        );
        self.set_realm_nonce(&resp);
    }

    fn set_realm_nonce(&mut self, resp: &stun::message::Message) {
        use stun::textattrs::TextAttribute;
        self.realm = TextAttribute::get_from_as(resp, stun::attributes::ATTR_REALM)
            .unwrap_or_else(|e| panic!("{} without REALM ({e}): {resp}", stun_error_code(resp).unwrap_or(0)))
            .text;
        self.nonce = Some(
            TextAttribute::get_from_as(resp, stun::attributes::ATTR_NONCE)
                .unwrap_or_else(|e| panic!("{} without NONCE ({e}): {resp}", stun_error_code(resp).unwrap_or(0)))
                .text,
        );
    }

    fn integrity(&self) -> stun::integrity::MessageIntegrity {
        stun::integrity::MessageIntegrity::new_long_term_integrity(
            self.username.clone(),
            self.realm.clone(),
            self.password.clone(),
        )
    }

    /// A signed request of `method` with `attrs` (after a 401 challenge if no nonce is known yet); a 438 Stale Nonce
    /// is retried once with the new nonce. A response carrying MESSAGE-INTEGRITY must verify with our key.
    pub async fn request(
        &mut self,
        method: stun::message::Method,
        attrs: Vec<Box<dyn stun::message::Setter>>,
    ) -> stun::message::Message {
        use stun::message::Setter;
        use stun::textattrs::TextAttribute;
        if self.nonce.is_none() {
            self.challenge().await;
        }
        let mut resp = None;
        for _ in 0..2 {
            let mut setters: Vec<&dyn Setter> = Vec::new();
            let tid = stun::agent::TransactionId::new();
            let typ = stun::message::MessageType::new(method, stun::message::CLASS_REQUEST);
            let user = TextAttribute::new(stun::attributes::ATTR_USERNAME, self.username.clone());
            let realm = TextAttribute::new(stun::attributes::ATTR_REALM, self.realm.clone());
            let nonce = TextAttribute::new(stun::attributes::ATTR_NONCE, self.nonce.clone().unwrap_or_default());
            let integrity = self.integrity();
            setters.push(&tid);
            setters.push(&typ);
            setters.extend(attrs.iter().map(|a| a.as_ref()));
            setters.extend([&user as &dyn Setter, &realm, &nonce, &integrity, &stun::fingerprint::FINGERPRINT]);
            let mut req = stun::message::Message::new();
            req.write_header();
            for s in &setters {
                s.add_to(&mut req).expect("build signed request");
            }
            let r = self.transact(&req).await;
            if stun_error_code(&r) == Some(438) {
                self.set_realm_nonce(&r);
                resp = Some(r);
                continue;
            }
            resp = Some(r);
            break;
        }
        let mut resp = resp.unwrap();
        if resp.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY) {
            self.integrity()
                .check(&mut resp)
                .unwrap_or_else(|e| panic!("the response's MESSAGE-INTEGRITY does not verify ({e}): {resp}"));
        }
        resp
    }

    fn outcome(resp: &stun::message::Message, what: &str) -> Result<(), u16> {
        match resp.typ.class {
            stun::message::CLASS_SUCCESS_RESPONSE => Ok(()),
            stun::message::CLASS_ERROR_RESPONSE => {
                Err(stun_error_code(resp)
                    .unwrap_or_else(|| panic!("{what}: error response without ERROR-CODE: {resp}")))
            }
            _ => panic!("{what}: unexpected response class: {resp}"),
        }
    }

    /// Allocate (REQUESTED-TRANSPORT UDP plus `extra` attributes); the XOR-RELAYED-ADDRESS, or the error code.
    pub async fn allocate_with(&mut self, extra: Vec<Box<dyn stun::message::Setter>>) -> Result<SocketAddr, u16> {
        use stun::message::Getter;
        let mut attrs: Vec<Box<dyn stun::message::Setter>> =
            vec![Box::new(turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP })];
        attrs.extend(extra);
        let resp = self.request(stun::message::METHOD_ALLOCATE, attrs).await;
        Self::outcome(&resp, "Allocate")?;
        let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
        relayed
            .get_from(&resp)
            .unwrap_or_else(|e| panic!("Allocate success without XOR-RELAYED-ADDRESS ({e}): {resp}"));
        let mut lifetime = turn::proto::lifetime::Lifetime::default();
        lifetime.get_from(&resp).unwrap_or_else(|e| panic!("Allocate success without LIFETIME ({e}): {resp}"));
        assert!(lifetime.0 > Duration::ZERO, "Allocate success with LIFETIME 0: {resp}");
        Ok(SocketAddr::new(relayed.ip, relayed.port))
    }

    /// Allocate for UDP with the default (IPv4) family.
    pub async fn allocate(&mut self) -> Result<SocketAddr, u16> {
        self.allocate_with(vec![]).await
    }

    /// CreatePermission with one XOR-PEER-ADDRESS per peer.
    pub async fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), u16> {
        let attrs: Vec<Box<dyn stun::message::Setter>> = peers
            .iter()
            .map(|p| {
                Box::new(turn::proto::peeraddr::PeerAddress { ip: p.ip(), port: p.port() })
                    as Box<dyn stun::message::Setter>
            })
            .collect();
        let resp = self.request(stun::message::METHOD_CREATE_PERMISSION, attrs).await;
        Self::outcome(&resp, "CreatePermission")
    }

    /// ChannelBind of `channel` to `peer`.
    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), u16> {
        let attrs: Vec<Box<dyn stun::message::Setter>> = vec![
            Box::new(turn::proto::channum::ChannelNumber(channel)),
            Box::new(turn::proto::peeraddr::PeerAddress { ip: peer.ip(), port: peer.port() }),
        ];
        let resp = self.request(stun::message::METHOD_CHANNEL_BIND, attrs).await;
        Self::outcome(&resp, "ChannelBind")
    }

    /// Refresh with LIFETIME `lifetime_s` (0 deletes the allocation); the granted lifetime in seconds.
    pub async fn refresh(&mut self, lifetime_s: u64) -> Result<u64, u16> {
        use stun::message::Getter;
        let attrs: Vec<Box<dyn stun::message::Setter>> =
            vec![Box::new(turn::proto::lifetime::Lifetime(Duration::from_secs(lifetime_s)))];
        let resp = self.request(stun::message::METHOD_REFRESH, attrs).await;
        Self::outcome(&resp, "Refresh")?;
        let mut lifetime = turn::proto::lifetime::Lifetime::default();
        lifetime.get_from(&resp).unwrap_or_else(|e| panic!("Refresh success without LIFETIME ({e}): {resp}"));
        Ok(lifetime.0.as_secs())
    }

    /// A Send indication carrying `data` to `peer` (RFC 8656 §11).
    pub async fn send_indication(&self, peer: SocketAddr, data: &[u8]) {
        let setters: Vec<Box<dyn stun::message::Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::message::MessageType::new(stun::message::METHOD_SEND, stun::message::CLASS_INDICATION)),
            Box::new(turn::proto::peeraddr::PeerAddress { ip: peer.ip(), port: peer.port() }),
            Box::new(turn::proto::data::Data(data.to_vec())),
            Box::new(stun::fingerprint::FINGERPRINT),
        ];
        let mut m = stun::message::Message::new();
        m.build(&setters).expect("build Send indication");
        self.link.send(&m.raw).await.expect("send Send indication");
    }

    /// A ChannelData message on `channel` (RFC 8656 §12.4).
    pub async fn send_channel_data(&self, channel: u16, data: &[u8]) {
        let mut cd = turn::proto::chandata::ChannelData {
            data: data.to_vec(),
            number: turn::proto::channum::ChannelNumber(channel),
            raw: Vec::new(),
        };
        cd.encode();
        if matches!(self.link, Link::Tcp(..)) {
            // RFC 8656 §12.5: padded to a multiple of 4 over TCP.
            cd.raw.resize((cd.raw.len() + 3) & !3, 0);
        }
        self.link.send(&cd.raw).await.expect("send ChannelData");
    }

    /// The next relayed payload (Data indication or ChannelData) within `wait`; `None` if nothing came.
    pub async fn recv_relayed(&mut self, wait: Duration) -> Option<Relayed> {
        use stun::message::Getter;
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        loop {
            let bytes = match self.pending.pop_front() {
                Some(b) => b,
                None => match tokio::time::timeout_at(deadline, self.link.recv(&mut buf)).await {
                    Err(_) => return None,
                    Ok(Err(_)) => continue,
                    Ok(Ok(0)) if matches!(self.link, Link::Tcp(..)) => return None,
                    Ok(Ok(n)) => buf[..n].to_vec(),
                },
            };
            if bytes.len() >= 4 && bytes[0] >> 6 == 1 {
                let mut cd = turn::proto::chandata::ChannelData { raw: bytes.clone(), ..Default::default() };
                cd.decode().unwrap_or_else(|e| panic!("malformed ChannelData from the relay ({e}): {bytes:02x?}"));
                return Some(Relayed { peer: None, channel: Some(cd.number.0), data: cd.data });
            }
            let mut m = stun::message::Message::new();
            m.raw = bytes.clone();
            if m.decode().is_err() {
                panic!("undecodable datagram from the relay: {bytes:02x?}");
            }
            if m.typ == stun::message::MessageType::new(stun::message::METHOD_DATA, stun::message::CLASS_INDICATION) {
                let mut peer = turn::proto::peeraddr::PeerAddress::default();
                peer.get_from(&m).unwrap_or_else(|e| panic!("Data indication without XOR-PEER-ADDRESS ({e}): {m}"));
                let mut data = turn::proto::data::Data::default();
                data.get_from(&m).unwrap_or_else(|e| panic!("Data indication without DATA ({e}): {m}"));
                return Some(Relayed { peer: Some(SocketAddr::new(peer.ip, peer.port)), channel: None, data: data.0 });
            }
            // A late response to a retransmitted request: not data.
        }
    }
}

/// Receives one datagram on `sock` within `wait`: (payload, source), or `None`.
pub async fn recv_datagram(sock: &tokio::net::UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

/// A client of the `turn` crate (`turn::client::Client`) on `socket` for the relay at `server` (its STUN and TURN
/// server), with long-term credentials and `realm` in its config, listening.
pub async fn turn_crate_client(
    server: SocketAddr,
    socket: tokio::net::UdpSocket,
    username: &str,
    password: &str,
    realm: &str,
) -> turn::client::Client {
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_string(),
        password: password.to_string(),
        realm: realm.to_string(),
        software: String::new(),
        rto_in_ms: 0,
        conn: std::sync::Arc::new(socket),
        vnet: None,
    })
    .await
    .expect("turn client");
    client.listen().await.expect("turn client listens");
    client
}
