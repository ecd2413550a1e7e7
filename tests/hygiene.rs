//! Hygiene proven by a test (issue 13), on SQLite and on PostgreSQL: a full run with distinctive names, emails, refs,
//! notes, metadata, external ids and titles through every path (create with `Idempotency-Key` and its replay, confirm
//! a pending booking, join both sides, a relayed call of two `webrtc`-crate peers, a browser summary, reschedule with
//! `If-Match`, link rotation, webhooks to a receiver, emails to a real SMTP server, the booking page, the manage page,
//! the host agenda, a booking by form post, cancel), once with `[log] format = "text"` and once with `"json"`, both at
//! `level = "debug"`. The daemon's stderr and stdout, the admin `/metrics` text at the end and every response header
//! of every HTTP request the test made are then scanned for each distinctive value and for every link token, session
//! token, TURN credential, API key, webhook secret and host secret the run saw: none may appear, except in the few
//! response headers listed in [`allowed_in_header`]. The scanner itself is checked: it must find the guest's name in
//! the create response's body, where it belongs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use webrtc::data_channel::DataChannelEvent;

use common::process::{KillOnDrop, find_tool, skip_or_fail};
use common::webhook_receiver::Receiver;
use common::webrtc_call::connect;
use common::{Backend, Captured, Daemon, participant, rfc3339_in};

crate::on_both_backends!(nothing_personal_in_logs_metrics_or_headers);

/// The distinctive personal values of a run: every one is scanned for (case-insensitively) in logs, metrics and
/// headers. The host's `ref` is not among them: it is part of the public booking page address.
const HOST_NAME: &str = "Zyxwvut Quintessa";
const HOST_EMAIL: &str = "qz-host-7f3@hygiene.example";
const GUEST_REF: &str = "ref-7f3-secret";
const GUEST_NAME: &str = "Ombrivane Taxifrellow";
const GUEST_EMAIL: &str = "qz-patient-7f3@hygiene.example";
const TITLE: &str = "Knee-rehab Pelvisquark";
const EXTERNAL_ID: &str = "ext-7f3-Vortimbral";
const METADATA_VALUE: &str = "meta-7f3-Glossarynth";
const PAGE_GUEST_NAME: &str = "Kwellbridge Anunciata";
const PAGE_GUEST_EMAIL: &str = "qz-page-7f3@hygiene.example";
const PAGE_NOTE: &str = "note-7f3 sciatica Plumbrovex";
const API_GUEST_NAME: &str = "Fennimore Dravosque";
const API_GUEST_EMAIL: &str = "qz-api-7f3@hygiene.example";
const API_NOTE: &str = "note-7f3 migraine Tessellund";
const HOST_REF: &str = "hyg-host";
const SLUG: &str = "hyg-consult";

/// Listeners on 127.0.0.1 only (the harness), webhooks to a receiver on 127.0.0.1, a meeting both left ends after 1 s.
fn config(format: &str, smtp_port: u16) -> String {
    format!(
        "[log]\nlevel = \"debug\"\nformat = \"{format}\"\n\
         [webhooks]\nallow_private = [\"127.0.0.0/8\"]\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n\
         [calls]\nend_grace = \"1s\"\nsweep_interval = \"200ms\"\n\
         [booking]\nhorizon = \"800d\"\n\
         [email]\nfrom = \"Duet Clinic <noreply@duet.test>\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp_port}\n\
         tls = \"plain\"\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n"
    )
}

/// The test runs both log formats (one daemon each) on `backend`.
async fn nothing_personal_in_logs_metrics_or_headers(backend: Backend) {
    let test = "nothing_personal_in_logs_metrics_or_headers";
    let Some(python) = python(test) else { return };
    for format in ["text", "json"] {
        if !run(backend, format, &python).await {
            return;
        }
    }
}

/// One response the test got: what was asked, and every header of the answer.
struct Seen {
    what: String,
    headers: Vec<(String, String)>,
}

/// Every HTTP request of the test goes through here: a client that follows no redirects, and the record of every
/// response's headers.
struct Http {
    client: reqwest::Client,
    seen: Vec<Seen>,
}

impl Http {
    fn new() -> Http {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Http { client, seen: Vec::new() }
    }

    /// Sends `req`, records its headers under `what`; (status, headers, body text).
    async fn send(&mut self, what: String, req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
        let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        self.seen.push(Seen {
            what: what.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        });
        (status, headers, r.text().await.unwrap_or_else(|e| panic!("{what}: body: {e}")))
    }

    /// An API request with the daemon's key; (status, headers, JSON body).
    async fn api(
        &mut self,
        d: &Daemon,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.client.request(method.parse().unwrap(), d.url(path)).bearer_auth(&d.api_key);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, headers, text) = self.send(format!("{method} {path}"), req).await;
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GET `path` without credentials (a page); (status, headers, body).
    async fn page(&mut self, d: &Daemon, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        self.send(format!("GET {path}"), self.client.get(d.url(path))).await
    }
}

/// The secrets and personal values a run saw, each with what it is.
#[derive(Default)]
struct Needles(Vec<(String, String)>);

impl Needles {
    fn add(&mut self, kind: &str, value: &str) {
        assert!(value.len() >= 8, "{kind} {value:?} is too short to scan for without false alarms");
        self.0.push((kind.to_string(), value.to_string()));
        // As it would appear in a URL query or a form body.
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        if encoded != value {
            self.0.push((format!("{kind} (URL-encoded)"), encoded));
        }
    }

    /// A session token (JWT): the whole token and its signature (a log could cut a token but not forge one).
    fn add_jwt(&mut self, kind: &str, token: &str) {
        self.add(kind, token);
        let sig = token.rsplit('.').next().unwrap_or_default();
        self.add(&format!("{kind} signature"), sig);
    }

    /// Every needle found in `haystack`: (kind, value, the line around it).
    fn find_in(&self, haystack: &str) -> Vec<(String, String, String)> {
        let lower = haystack.to_lowercase();
        let mut found = Vec::new();
        for (kind, value) in &self.0 {
            let v = value.to_lowercase();
            if let Some(at) = lower.find(&v) {
                let start = lower[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = lower[at..].find('\n').map_or(lower.len(), |i| at + i);
                let line: String = haystack.get(start..end).unwrap_or("").chars().take(400).collect();
                found.push((kind.clone(), value.clone(), line));
            }
        }
        found
    }
}

/// The response headers that carry a value on purpose: the `Location` of the booking page's form post is the new
/// guest's manage page (their link), as a browser must be sent there. Nothing else.
fn allowed_in_header(what: &str, header: &str, kind: &str) -> bool {
    what.starts_with("POST /book/") && header == "location" && kind == "link token (page guest)"
}

/// Python 3 with `aiosmtpd` (pinned in `.ci/run`), or `None` (SKIPPED, or a failure under CI).
fn python(test: &str) -> Option<PathBuf> {
    let Some(python) = find_tool("python3") else {
        skip_or_fail(test, "python3 not found");
        return None;
    };
    let probe = Command::new(&python).args(["-c", "import aiosmtpd"]).output().unwrap();
    if !probe.status.success() {
        skip_or_fail(test, "aiosmtpd is missing: python3 -m pip install 'aiosmtpd==1.4.6'");
        return None;
    }
    Some(python)
}

/// `tests/email/smtp_sink.py` on 127.0.0.1: (port, its directory of messages, the process).
fn smtp_sink(python: &Path) -> (u16, tempfile::TempDir, KillOnDrop) {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/email/smtp_sink.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(dir.path())
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp_sink.py");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("smtp_sink.py said {line:?}: {e}"));
    (ready["port"].as_u64().expect("port") as u16, dir, KillOnDrop(child))
}

/// The messages the sink accepted so far, as raw text.
fn mails(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".eml") {
            out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

/// Waits up to `limit` for `done`, polling every 200 ms; panics with `what` and the end of the daemon's log when it
/// never holds.
async fn wait_until(limit: Duration, what: &str, log: &Captured, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            panic!(
                "{what}: not within {limit:?}; the daemon's log ends with:\n{}",
                common::process::tail(&log.text(), 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One full run with the log in `format`; false when it was skipped (PostgreSQL without a server).
async fn run(backend: Backend, format: &str, python: &Path) -> bool {
    let (smtp_port, mail_dir, _sink) = smtp_sink(python);
    let Some((d, captured)) = common::start_on_captured(backend, &config(format, smtp_port)) else { return false };
    let rx = Receiver::start().await;
    let mut http = Http::new();
    let mut needles = Needles::default();
    for (kind, v) in [
        ("host name", HOST_NAME),
        ("host email", HOST_EMAIL),
        ("guest ref", GUEST_REF),
        ("guest name", GUEST_NAME),
        ("guest email", GUEST_EMAIL),
        ("title", TITLE),
        ("external id", EXTERNAL_ID),
        ("metadata value", METADATA_VALUE),
        ("page guest name", PAGE_GUEST_NAME),
        ("page guest email", PAGE_GUEST_EMAIL),
        ("page note", PAGE_NOTE),
        ("API guest name", API_GUEST_NAME),
        ("API guest email", API_GUEST_EMAIL),
        ("API note", API_NOTE),
    ] {
        needles.add(kind, v);
    }
    needles.add("admin API key", &d.api_key);

    // A webhook endpoint for every event.
    let (status, _, ep) =
        http.api(&d, "POST", "/v1/webhook-endpoints", Some(json!({"url": rx.url("/hooks")})), &[]).await;
    assert_eq!(status, 201, "{ep}");
    let whsec = ep["secret"].as_str().expect("the endpoint's secret");
    needles.add("webhook secret", whsec);
    needles.add("webhook secret key", whsec.trim_start_matches("whsec_"));

    // A pending booking with every personal field, created with an Idempotency-Key and replayed.
    let body = json!({
        "title": TITLE,
        "start_at": rfc3339_in(60),
        "end_at": rfc3339_in(60 + 1800),
        "status": "pending",
        "external_id": EXTERNAL_ID,
        "metadata": {"case": METADATA_VALUE},
        "participants": [
            {"ref": "hyg-host-api", "role": "host", "display_name": HOST_NAME, "email": HOST_EMAIL},
            {"ref": GUEST_REF, "role": "guest", "display_name": GUEST_NAME, "email": GUEST_EMAIL,
             "time_zone": "Europe/Berlin", "locale": "de"}
        ]
    });
    let idem = [("Idempotency-Key", "idem-hygiene-7f3-0001")];
    let (status, _, booking) = http.api(&d, "POST", "/v1/bookings", Some(body.clone()), &idem).await;
    assert_eq!(status, 201, "{booking}");
    let (status, _, replay) = http.api(&d, "POST", "/v1/bookings", Some(body), &idem).await;
    assert_eq!((status, &replay["id"]), (201, &booking["id"]), "the replay answers the same booking: {replay}");
    let id = booking["id"].as_str().unwrap().to_string();
    let guest_id = participant(&booking, "guest")["id"].as_str().unwrap().to_string();
    let mut links: Vec<String> = Vec::new();
    for role in ["host", "guest"] {
        let link = participant(&booking, role)["link_token"].as_str().expect("link_token").to_string();
        needles.add(&format!("link token ({role})"), &link);
        links.push(link);
    }
    // The scanner works: the guest's name is in the create response's body, where it belongs.
    let canary = needles.find_in(&booking.to_string());
    assert!(
        canary.iter().any(|(_, v, _)| v == GUEST_NAME) && canary.iter().any(|(_, v, _)| v == &links[1]),
        "the scanner must find the guest's name and link in the create response: {canary:?}"
    );

    let (status, _, confirmed) = http.api(&d, "POST", &format!("/v1/bookings/{id}/confirm"), None, &[]).await;
    assert_eq!(status, 200, "{confirmed}");

    // Both sides join; their session tokens and TURN credentials are secrets too.
    let mut joins = Vec::new();
    for link in &links {
        let path = format!("/v1/join/{link}");
        let req = http.client.post(d.url(&path)).json(&json!({}));
        let (status, _, text) = http.send(format!("POST {path}"), req).await;
        assert_eq!(status, 200, "{text}");
        let j: Value = serde_json::from_str(&text).unwrap();
        needles.add_jwt("session token", j["session_token"].as_str().expect("session_token"));
        let (_, _, credential) = common::turn_credentials(&j);
        needles.add("TURN credential", &credential);
        joins.push(j);
    }
    // The join page of each side.
    for link in &links {
        let (status, _, _) = http.page(&d, &format!("/j/{link}")).await;
        assert_eq!(status, 200);
    }

    // A relayed call: the host sends, the guest echoes.
    tokio::time::timeout(Duration::from_secs(60), async {
        let c = connect(&d, &id, &joins[0], &joins[1]).await;
        let guest_dc = c.guest_dc.clone();
        let echo = tokio::spawn(async move {
            let mut n = 0;
            while n < 5 {
                match guest_dc.poll().await {
                    Some(DataChannelEvent::OnMessage(m)) => {
                        guest_dc.send(m.data).await.expect("guest echoes");
                        n += 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        });
        for _ in 0..5 {
            c.host_dc.send_text("hello through the relay").await.expect("host sends");
        }
        let mut answered = 0;
        while answered < 5 {
            match tokio::time::timeout(Duration::from_secs(20), c.host_dc.poll()).await {
                Ok(Some(DataChannelEvent::OnMessage(_))) => answered += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("{answered} of 5 echoes came"),
            }
        }
        echo.await.unwrap();
        c.host_pc.close().await.expect("host closes");
        c.guest_pc.close().await.expect("guest closes");
        for t in &c.tasks {
            t.abort();
        }
    })
    .await
    .expect("the call did not complete within 60 s");

    // The join page's browser summary.
    let summary = json!({
        "candidate_pair": {"local_type": "relay", "remote_type": "srflx", "protocol": "udp", "relay_protocol": "udp"},
        "round_trip_time_ms": 41.5, "packet_loss": 0.0, "inbound_bitrate_bps": 850000,
        "outbound_bitrate_bps": 910000, "user_agent_family": "firefox"
    });
    let path = format!("/v1/join/{}/report", links[1]);
    let req =
        http.client.post(d.url(&path)).header("content-type", "text/plain;charset=UTF-8").body(summary.to_string());
    let (status, _, text) = http.send(format!("POST {path}"), req).await;
    assert_eq!(status, 204, "{text}");

    // Link rotation: the new link works, the old one is gone.
    let path = format!("/v1/bookings/{id}/participants/{guest_id}/link/rotate");
    let (status, _, rotated) = http.api(&d, "POST", &path, None, &[]).await;
    assert_eq!(status, 200, "{rotated}");
    let new_link = rotated["link_token"].as_str().expect("new link_token").to_string();
    needles.add("link token (rotated guest)", &new_link);
    let path = format!("/v1/join/{}", links[1]);
    let (status, _, _) = http.send(format!("POST {path}"), http.client.post(d.url(&path)).json(&json!({}))).await;
    assert_eq!(status, 404, "the old link is gone");
    let path = format!("/v1/join/{new_link}");
    let (status, _, text) = http.send(format!("POST {path}"), http.client.post(d.url(&path)).json(&json!({}))).await;
    assert_eq!(status, 200, "{text}");
    let j: Value = serde_json::from_str(&text).unwrap();
    needles.add_jwt("session token", j["session_token"].as_str().unwrap());
    needles.add("TURN credential", &common::turn_credentials(&j).2);
    for path in [format!("/v1/bookings/{id}/report"), format!("/v1/bookings/{id}/participants/{guest_id}/invite.ics")] {
        let (status, _, _) = http.api(&d, "GET", &path, None, &[]).await;
        assert_eq!(status, 200, "GET {path}");
    }

    // A host with a booking page, a schedule and an event type; the host secret opens the agenda.
    let (status, _, host) = http
        .api(
            &d,
            "POST",
            "/v1/hosts",
            Some(json!({"ref": HOST_REF, "display_name": HOST_NAME, "time_zone": "UTC", "email": HOST_EMAIL})),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{host}");
    let host_secret = host["secret"].as_str().expect("host secret").to_string();
    needles.add("host secret", &host_secret);
    let days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let weekly: Vec<Value> =
        days.iter().map(|day| json!({"day": day, "intervals": [{"start": "00:00", "end": "23:30"}]})).collect();
    let (status, _, schedule) = http
        .api(
            &d,
            "POST",
            &format!("/v1/hosts/{HOST_REF}/schedules"),
            Some(json!({"name": "hours", "time_zone": "UTC", "weekly": weekly})),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{schedule}");
    let body = json!({"host_ref": HOST_REF, "schedule_id": schedule["id"], "slug": SLUG, "title": "Consultation",
                      "duration_minutes": 30, "minimum_notice_minutes": 0, "horizon_days": 730});
    let (status, _, event_type) = http.api(&d, "POST", "/v1/event-types", Some(body), &[]).await;
    assert_eq!(status, 201, "{event_type}");
    let evt = event_type["id"].as_str().unwrap().to_string();

    // The booking page, a booking by form post (303 to the guest's manage page), the manage page.
    let page = format!("/book/ten_default/{HOST_REF}/{SLUG}");
    let (status, _, html) = http.page(&d, &page).await;
    assert_eq!(status, 200, "{html}");
    let starts: Vec<i64> =
        html.split("&amp;start=").skip(1).filter_map(|s| s.split('"').next()?.parse().ok()).collect();
    assert!(starts.len() >= 3, "the booking page offers times: {html}");
    let (status, _, form) = http.page(&d, &format!("{page}?start={}", starts[1])).await;
    assert_eq!(status, 200, "{form}");
    let form_token = form
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("a form token")
        .to_string();
    let start = starts[1].to_string();
    let fields = [
        ("token", form_token.as_str()),
        ("start", &start),
        ("tz", "Europe/Berlin"),
        ("name", PAGE_GUEST_NAME),
        ("email", PAGE_GUEST_EMAIL),
        ("note", PAGE_NOTE),
    ];
    let form_body: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    let req = http
        .client
        .post(d.url(&page))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", format!("http://{}", d.http))
        .body(form_body);
    let (status, headers, text) = http.send(format!("POST {page}"), req).await;
    assert_eq!(status, 303, "{text}");
    let location = headers.get("location").expect("Location").to_str().unwrap().to_string();
    let page_link = location.rsplit('/').next().unwrap().to_string();
    needles.add("link token (page guest)", &page_link);
    let (status, _, manage) = http.page(&d, &format!("/manage/{page_link}")).await;
    assert_eq!(status, 200, "{manage}");

    // A booking from the event type by API, with a note.
    let guest = json!({"display_name": API_GUEST_NAME, "email": API_GUEST_EMAIL, "time_zone": "Europe/Madrid"});
    let start_at = time::OffsetDateTime::from_unix_timestamp(starts[2])
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, _, by_api) = http
        .api(
            &d,
            "POST",
            &format!("/v1/event-types/{evt}/bookings"),
            Some(json!({"start_at": start_at, "guest": guest, "note": API_NOTE})),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{by_api}");
    for p in by_api["participants"].as_array().unwrap() {
        if let Some(link) = p["link_token"].as_str() {
            needles.add("link token (event type booking)", link);
        }
    }

    // The host agenda.
    let (status, _, agenda) = http.page(&d, &format!("/agenda/{host_secret}")).await;
    assert_eq!(status, 200, "{agenda}");

    // Bad input carrying personal values and wrong secrets: refused, and not logged either. A wrong link or secret
    // may be a real one mistyped by a character, so it is as secret as a right one.
    let bad_email = "qz-bad 7f3 Quintessa@@hygiene";
    needles.add("invalid email", bad_email);
    let mut bad = json!({"title": TITLE, "start_at": rfc3339_in(7200), "end_at": rfc3339_in(9000),
        "participants": [{"ref": GUEST_REF, "role": "guest", "display_name": GUEST_NAME, "email": bad_email},
                         {"ref": "hyg-host-api", "role": "host", "display_name": HOST_NAME}]});
    let (status, _, answer) = http.api(&d, "POST", "/v1/bookings", Some(bad.clone()), &[]).await;
    assert_eq!(status, 422, "{answer}");
    bad["participants"][0]["email"] = json!(GUEST_EMAIL);
    bad["start_at"] = json!(format!("{}-Quintessa", rfc3339_in(7200)));
    let (status, _, answer) = http.api(&d, "POST", "/v1/bookings", Some(bad), &[]).await;
    assert_eq!(status, 422, "{answer}");
    let req = http
        .client
        .post(d.url("/v1/bookings"))
        .bearer_auth(&d.api_key)
        .header("content-type", "application/json")
        .body(format!("{{\"title\": \"{TITLE}\", \"participants\": [{{\"email\": \"{GUEST_EMAIL}\""));
    let (status, _, text) = http.send("POST /v1/bookings (broken JSON)".into(), req).await;
    assert_eq!(status, 400, "{text}");
    let wrong_link = format!("{}x", &new_link[..new_link.len() - 1]);
    let wrong_secret = format!("{}x", &host_secret[..host_secret.len() - 1]);
    needles.add("wrong link token", &wrong_link);
    needles.add("wrong host secret", &wrong_secret);
    let path = format!("/v1/join/{wrong_link}");
    let (status, _, _) = http.send(format!("POST {path}"), http.client.post(d.url(&path)).json(&json!({}))).await;
    assert_eq!(status, 404);
    // The join page is static (its script asks the API); the manage page and the agenda answer 404.
    let (status, _, _) = http.page(&d, &format!("/j/{wrong_link}")).await;
    assert_eq!(status, 200);
    for path in [format!("/manage/{wrong_link}"), format!("/agenda/{wrong_secret}")] {
        let (status, _, _) = http.page(&d, &path).await;
        assert_eq!(status, 404, "GET {path}");
    }
    // A signaling upgrade with the new session token: its response headers are recorded too.
    let url = format!("{}?token={}", j["signal_url"].as_str().unwrap(), j["session_token"].as_str().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(url.as_str()).await.expect("WebSocket upgrade");
    http.seen.push(Seen {
        what: "GET /v1/signal (upgrade)".into(),
        headers: response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    });
    let _ = ws.close(None).await;
    let wrong_session = format!("{}x", &j["session_token"].as_str().unwrap()[..40]);
    needles.add("forged session token", &wrong_session);
    let forged = json!({"signal_url": j["signal_url"], "session_token": wrong_session});
    assert!(common::signal_first_frame(&forged).await.is_err(), "a forged session token is refused");
    let (status, _, _) = http.api(&d, "GET", "/v1/bookings", None, &[]).await;
    assert_eq!(status, 200);
    let wrong_key = format!("{}x", &d.api_key[..d.api_key.len() - 1]);
    needles.add("wrong API key", &wrong_key);
    let req = http.client.get(d.url("/v1/bookings")).bearer_auth(&wrong_key);
    let (status, _, _) = http.send("GET /v1/bookings (wrong key)".into(), req).await;
    assert_eq!(status, 401);

    // Reschedule (a new start, a new title) with the ETag of a GET.
    let (status, headers, _) = http.api(&d, "GET", &format!("/v1/bookings/{id}"), None, &[]).await;
    assert_eq!(status, 200);
    let etag = headers.get("etag").expect("ETag").to_str().unwrap().to_string();
    let patch = json!({"start_at": rfc3339_in(5400), "end_at": rfc3339_in(7200), "title": format!("{TITLE} moved")});
    let (status, _, moved) =
        http.api(&d, "PATCH", &format!("/v1/bookings/{id}"), Some(patch), &[("If-Match", &etag)]).await;
    assert_eq!(status, 200, "{moved}");

    // Cancel the first booking.
    let (status, _, cancelled) = http.api(&d, "POST", &format!("/v1/bookings/{id}/cancel"), None, &[]).await;
    assert_eq!(status, 200, "{cancelled}");

    // Webhooks and emails went out (their log lines are written by then).
    wait_until(Duration::from_secs(30), "booking.cancelled at the receiver", &captured, || {
        rx.hits().iter().any(|h| h.json()["type"] == "booking.cancelled" && h.body.contains(id.as_str()))
    })
    .await;
    wait_until(Duration::from_secs(30), "a cancellation email to the guest", &captured, || {
        mails(mail_dir.path()).iter().any(|m| m.contains(GUEST_EMAIL) && m.contains("METHOD:CANCEL"))
    })
    .await;
    assert!(
        mails(mail_dir.path()).iter().any(|m| m.contains(PAGE_GUEST_EMAIL)),
        "the page guest got a confirmation email"
    );

    // The metrics at the end.
    let metrics_url = format!("http://{}/metrics", d.admin);
    let (status, _, metrics) = http.send("GET /metrics".into(), http.client.get(&metrics_url)).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("duet_"), "{metrics}");
    // Let the last log lines reach the file, then stop the daemon.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut d = d;
    d.kill9();
    // Read before `d` goes: the file is in its temporary directory.
    let log = captured.text();
    drop(d);

    let mut leaks = Vec::new();
    assert!(log.lines().count() > 20, "a debug run writes a log; got:\n{log}");
    if format == "json" {
        let first = log.lines().find(|l| l.starts_with('{')).expect("JSON log lines");
        serde_json::from_str::<Value>(first).unwrap_or_else(|e| panic!("a JSON log line ({e}): {first}"));
    }
    assert!(log.contains("DEBUG") || log.contains("\"level\":\"DEBUG\""), "the log is at debug level:\n{log}");
    // The scan reads the lines of this run: the booking's own (non-personal) id is logged, e.g. at link rotation.
    assert!(log.lines().any(|l| l.contains(id.as_str()) && l.contains("link rotated")), "{log}");
    for (kind, value, line) in needles.find_in(&log) {
        leaks.push(format!("log ({format}): {kind} {value:?} in: {line}"));
    }
    for (kind, value, line) in needles.find_in(&metrics) {
        leaks.push(format!("metrics: {kind} {value:?} in: {line}"));
    }
    for seen in &http.seen {
        for (name, v) in &seen.headers {
            for (kind, value, _) in needles.find_in(v) {
                if !allowed_in_header(&seen.what, name, &kind) {
                    leaks.push(format!("header {name} of {}: {kind} {value:?} in {v:?}", seen.what));
                }
            }
        }
    }
    // The allowed header did carry its link (so the exception is narrow, and the header scan sees it).
    let post = http.seen.iter().find(|s| s.what.starts_with("POST /book/")).expect("the form post");
    let loc: String = post.headers.iter().filter(|(n, _)| n == "location").map(|(_, v)| v.clone()).collect();
    assert!(needles.find_in(&loc).iter().any(|(_, v, _)| v == &page_link), "{loc}");
    assert!(http.seen.len() >= 25, "every request is recorded: {}", http.seen.len());
    assert!(leaks.is_empty(), "personal data or secrets leaked ({} found):\n{}", leaks.len(), leaks.join("\n"));
    true
}
