//! Issue 10, "Operations": `/metrics` behind HTTP Basic auth, `/readyz` with its JSON reasons and checks, and one
//! structured `duet::call` log line per call lifecycle event (never a token or SDP).

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Daemon, join_as, start_on_captured, turn_credentials};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use webrtc_util::Conn;

#[tokio::test]
async fn metrics_basic_auth_guards_metrics_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pw = tmp.path().join("metrics-password");
    std::fs::write(&pw, "a-long-metrics-password\n").expect("write");
    let d = Daemon::start(&format!(
        "[admin]\nmetrics_basic_auth_user = \"prom\"\nmetrics_basic_auth_password_file = {:?}\n",
        pw.display().to_string()
    ));
    let url = format!("http://{}/metrics", d.admin);
    let c = reqwest::Client::new();
    let r = c.get(&url).send().await.expect("GET /metrics");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"].to_str().unwrap(), "Basic realm=\"duet-metrics\", charset=\"UTF-8\"");
    let body: Value = r.json().await.expect("JSON error body");
    assert_eq!(body["error"], "unauthorized");
    let r = c.get(&url).basic_auth("prom", Some("wrong-password-xxxxx")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "a wrong password");
    let r = c.get(&url).basic_auth("prom", Some("a-long-metrics-password")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("duet_build_info"), "the metrics text");
    for open in ["/healthz", "/readyz"] {
        let r = c.get(format!("http://{}{open}", d.admin)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open} stays open");
    }
    // Half a configuration is refused at start, naming the key.
    let run = common::serve_refused(&tmp.path().join("other"), "[admin]\nmetrics_basic_auth_user = \"prom\"\n");
    assert!(run.stderr.contains("admin.metrics_basic_auth_password_file"), "{}", run.stderr);
}

#[tokio::test]
async fn readyz_reports_its_checks_as_json() {
    let d = Daemon::start("");
    let r = reqwest::get(format!("http://{}/readyz", d.admin)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["reasons"], serde_json::json!([]), "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert_eq!(body["checks"]["draining"], false, "{body}");
    assert_eq!(body["checks"]["listeners"]["http"], "ok", "{body}");
    assert!(body["checks"].get("redis").is_none(), "no Redis check on a single node: {body}");
}

/// The `duet::call` lines of the captured log.
fn call_lines(text: &str) -> Vec<String> {
    text.lines().filter(|l| l.contains("duet::call")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_log_line_per_call_lifecycle_event() {
    let Some((d, log)) = start_on_captured(Backend::Sqlite, "[log]\nlevel = \"info\"\nformat = \"json\"\n") else {
        return;
    };
    let booking = d.booking_now(60, 1800).await;
    let id = booking["id"].as_str().unwrap().to_string();
    let host = join_as(&d, &booking, "host").await;
    let guest = join_as(&d, &booking, "guest").await;
    let open =
        |j: &Value| format!("{}?token={}", j["signal_url"].as_str().unwrap(), j["session_token"].as_str().unwrap());
    let (mut h, _) = tokio_tungstenite::connect_async(open(&host)).await.expect("host socket");
    let (mut g, _) = tokio_tungstenite::connect_async(open(&guest)).await.expect("guest socket");
    // A TURN allocation of the guest, then freed.
    let (_, username, password) = turn_credentials(&guest);
    let turn = {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        common::turn_crate_client(d.turn_udp, socket, &username, &password, "duet").await
    };
    let relay = turn.allocate().await.expect("allocate");
    let sdp_marker = "v=0-sdp-marker-7f3a";
    let signal = format!(r#"{{"type":"signal","session":1,"data":{{"type":"offer","sdp":"{sdp_marker}"}}}}"#);
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.send(Message::text(signal)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Closing the relayed connection refreshes the allocation with lifetime 0 (RFC 8656 §7): it ends now.
    relay.close().await.expect("close the allocation");
    turn.close().await.expect("close the TURN client");
    g.close(None).await.expect("close");
    let (status, _) = common::cancel_booking(&d, &id).await;
    assert_eq!(status, 200);
    let _ = h.next().await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let want = ["joined", "ready", "left", "room_closed", "relay_started", "relay_ended"];
    let lines = loop {
        let lines = call_lines(&log.text());
        let has = |e: &str| lines.iter().any(|l| l.contains(&format!("\"event\":\"{e}\"")));
        if want.iter().all(|e| has(e)) || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = lines.join("\n");
    for e in want {
        let of: Vec<Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["event"] == e)
            .collect();
        assert!(!of.is_empty(), "no {e} line:\n{text}");
        for v in &of {
            assert_eq!(v["fields"]["booking"], id.as_str(), "{v}");
            assert_eq!(v["fields"]["node"], "local", "{v}");
        }
    }
    let joined = lines.iter().filter(|l| l.contains("\"event\":\"joined\"")).count();
    assert_eq!(joined, 2, "one joined line per participant:\n{text}");
    assert!(text.contains("\"role\":\"host\"") && text.contains("\"role\":\"guest\""), "{text}");
    assert!(text.contains("\"in_room_ms\""), "{text}");
    assert!(text.contains("\"bytes_to_peer\"") && text.contains("\"duration_ms\""), "{text}");
    let all = log.text();
    for secret in
        [host["session_token"].as_str().unwrap(), guest["session_token"].as_str().unwrap(), &password, sdp_marker]
    {
        assert!(!all.contains(secret), "the log holds a token, credential or SDP");
    }
}

/// `secrets_file`: the secrets come from a file outside the data directory (a systemd credential, or one file for
/// every node of a cluster); it is never generated, and a missing one is refused at start.
#[tokio::test]
async fn secrets_come_from_a_secrets_file() {
    let first = Daemon::start("");
    let tmp = tempfile::tempdir().expect("tempdir");
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    let file = creds.join("secrets.toml");
    std::fs::copy(first.data_dir.join("secrets.toml"), &file).expect("copy");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("chmod");
    let data = tmp.path().join("data");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nsecrets_file = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [turn]\nlisten_udp = [\"127.0.0.1:0\"]\n",
            data.display().to_string(),
            file.display().to_string()
        ),
    )
    .expect("write config");
    let second = common::start_with_args(&["serve", "--config", config.to_str().expect("utf-8")], tmp.path());
    assert!(!data.join("secrets.toml").exists(), "no secrets.toml is generated next to the database");
    // The same session keys: a session token issued by the first daemon is accepted by the second's hub.
    let booking = first.booking_now(60, 1800).await;
    let join = join_as(&first, &booking, "host").await;
    let url =
        format!("ws://{}/v1/signal?token={}", second.http, join["session_token"].as_str().expect("session token"));
    let r = tokio_tungstenite::connect_async(&url).await;
    // The second daemon has its own database: the token verifies (same key), then the booking is unknown there.
    match r {
        Ok((mut ws, _)) => {
            let frame = ws.next().await;
            assert!(
                !matches!(&frame, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 4001),
                "a token signed with the shared key is not refused as a bad token: {frame:?}"
            );
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_ne!(resp.status().as_u16(), 401, "a token signed with the shared key verifies")
        }
        Err(e) => panic!("{e}"),
    }
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "data_dir = {:?}\nsecrets_file = \"/nonexistent/secrets.toml\"\n",
            tmp.path().join("d2").display().to_string()
        ),
    )
    .expect("write config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_duet"));
    cmd.args(["serve", "--config"]).arg(&bad).env("RUST_LOG", "warn");
    let run = common::process::run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(!run.status.success(), "a missing secrets_file is refused");
    assert!(run.stderr.contains("/nonexistent/secrets.toml"), "{}", run.stderr);
}
