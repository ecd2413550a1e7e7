//! Shared harness for process-level tests: boots the real `duet` binary on 127.0.0.1 with port 0 listeners in a
//! temporary data directory, reads the one JSON "ready" line it prints on stdout, and talks to it as a client would.
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// A running daemon. Killed on drop.
pub struct Daemon {
    pub child: Child,
    pub http: SocketAddr,
    pub turn_udp: SocketAddr,
    pub admin: SocketAddr,
    pub api_key: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
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

    pub fn start_in(data_dir: &Path, extra_config: &str) -> Daemon {
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let config_path = data_dir.parent().unwrap().join("config.toml");
        let config = format!(
            "data_dir = {dd:?}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[turn]\nlisten_udp = [\"127.0.0.1:0\"]\n\n{extra_config}",
            dd = data_dir.display().to_string()
        );
        std::fs::write(&config_path, merge_tables(&config)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_duet"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn duet");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["event"] == "ready"
                {
                    let _ = tx.send(v);
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).expect("daemon printed no ready line within 30 s");
        let addr = |k: &str| -> SocketAddr { ready[k].as_str().unwrap().parse().unwrap() };
        let api_key_file = ready["api_key_file"].as_str().unwrap().to_string();
        let api_key = std::fs::read_to_string(&api_key_file).unwrap().trim().to_string();
        Daemon {
            child,
            http: addr("http"),
            turn_udp: addr("turn_udp"),
            admin: addr("admin"),
            api_key,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// POST /v1/bookings with the API key; returns (status, body).
    pub async fn create_booking(&self, body: &Value) -> (u16, Value) {
        let r =
            self.client().post(self.url("/v1/bookings")).bearer_auth(&self.api_key).json(body).send().await.unwrap();
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

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 3339 (UTC, seconds) for now + `offset_s`.
pub fn rfc3339_in(offset_s: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s);
    t.replace_nanosecond(0).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap()
}

pub fn booking_body(start_in_s: i64, len_s: i64) -> Value {
    json!({
        "title": "Physio follow-up",
        "start_at": rfc3339_in(start_in_s),
        "end_at": rfc3339_in(start_in_s + len_s),
        "participants": [
            {"ref": "instructor:42", "role": "host", "display_name": "Dr. Ana"},
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn duet");
    let ready = wait_ready(&mut child);
    let addr = |k: &str| -> SocketAddr {
        ready[k].as_str().unwrap_or_else(|| panic!("ready line lacks {k}: {ready}")).parse().unwrap()
    };
    let api_key_file = cwd.join(ready["api_key_file"].as_str().expect("ready line names api_key_file"));
    let api_key = std::fs::read_to_string(&api_key_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", api_key_file.display()))
        .trim()
        .to_string();
    Daemon {
        http: addr("http"),
        turn_udp: addr("turn_udp"),
        admin: addr("admin"),
        api_key,
        data_dir: api_key_file.parent().unwrap().to_path_buf(),
        child,
        _tmp: None,
    }
}

/// Waits (30 s at most) for the one JSON `ready` line on the child's stdout; kills the child if it never comes.
fn wait_ready(child: &mut Child) -> Value {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
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
