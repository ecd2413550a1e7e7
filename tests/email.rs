//! ICS invitations and email (issue 9), on SQLite and on PostgreSQL. A real SMTP server (Python `aiosmtpd`, started
//! by the test on 127.0.0.1 with a port the kernel picks) catches the mail; Python's `email` package parses it and
//! the `icalendar` package (an independent iCalendar parser) reads the invitations (`tests/email/*.py`). Checked:
//! each participant gets its own message with its own link and never the other's; confirmation, reminder (after a
//! link rotation: the new link), reschedule (higher SEQUENCE, new DTSTART) and cancellation (`METHOD:CANCEL`, higher
//! SEQUENCE) with a matching `method=` on the attachment; a revoked participant gets no reminder; `kill -9` during a
//! burst of sends loses no message and sends none twice; the invite routes (API key and link).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::process::{KillOnDrop, find_tool, run_bounded_blocking, skip_or_fail, tail};
use common::{Backend, Daemon, booking_body, metric, participant, rfc3339_in};

crate::on_both_backends!(
    each_participant_gets_its_own_invitations,
    kill9_during_sends_loses_none_and_sends_none_twice,
    invite_routes_serve_each_participant_its_own_file,
);

/// The scripts beside this file.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/email").join(name)
}

/// Python 3 with `aiosmtpd` and `icalendar` (pinned in `.ci/run`), or `None` (SKIPPED, or a failure under CI).
fn python(test: &str) -> Option<PathBuf> {
    let Some(python) = find_tool("python3") else {
        skip_or_fail(test, "python3 not found");
        return None;
    };
    let probe = Command::new(&python).args(["-c", "import aiosmtpd, icalendar"]).output().unwrap();
    if !probe.status.success() {
        skip_or_fail(
            test,
            "aiosmtpd or icalendar is missing: python3 -m pip install 'aiosmtpd==1.4.6' 'icalendar==7.3.2'",
        );
        return None;
    }
    Some(python)
}

/// The SMTP server of a test: `smtp_sink.py` writing every accepted message into a directory of its own.
struct Sink {
    python: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    _process: KillOnDrop,
}

impl Sink {
    /// Starts the server; `delay` is how long it waits before accepting each message.
    fn start(python: &Path, delay: Duration) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python)
            .arg(script("smtp_sink.py"))
            .arg(dir.path())
            .arg(delay.as_secs_f64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp_sink.py");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("smtp_sink.py said {line:?}: {e}"));
        let port = ready["port"].as_u64().expect("port") as u16;
        Sink { python: python.to_path_buf(), port, dir, _process: KillOnDrop(child) }
    }

    /// The `[email]` section that sends to this server.
    fn config(&self, extra: &str) -> String {
        format!(
            "[email]\nfrom = \"Duet Clinic <noreply@duet.test>\"\nreply_to = \"desk@duet.test\"\nsmtp_host = \"127.0.0.1\"\n\
             smtp_port = {}\ntls = \"plain\"\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n{extra}",
            self.port
        )
    }

    /// How many messages were accepted so far (without parsing them).
    fn count(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".eml")))
            .count()
    }

    /// Every message received so far, parsed by `inspect_mail.py`.
    async fn messages(&self) -> Vec<Value> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(script("inspect_mail.py")).arg(self.dir.path());
        let run = run_bounded_blocking(cmd, Duration::from_secs(60), "inspect_mail.py").await;
        assert!(run.status.success(), "inspect_mail.py failed:\n{}", tail(&run.stderr, 30));
        serde_json::from_str(&run.stdout).expect("inspect_mail.py prints JSON")
    }

    /// Waits (up to `limit`) until `done` holds for the messages; returns them.
    async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.messages().await;
            if done(&m) {
                return m;
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = m.iter().map(|x| format!("{} {}", x["kind"], x["to"])).collect();
                panic!("{what}: not within {limit:?}; got {summary:#?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Parses one iCalendar text with `icalendar` (`inspect_mail.py --ics`).
    async fn parse_ics(&self, text: &str) -> Value {
        let file = self.dir.path().join("route.ics.in");
        std::fs::write(&file, text).unwrap();
        let mut cmd = Command::new(&self.python);
        cmd.arg(script("inspect_mail.py")).arg("--ics").arg(&file);
        let run = run_bounded_blocking(cmd, Duration::from_secs(60), "inspect_mail.py --ics").await;
        assert!(run.status.success(), "icalendar refused the file:\n{text}\n{}", tail(&run.stderr, 30));
        serde_json::from_str(&run.stdout).unwrap()
    }
}

/// A booking body with addresses: host `host@clinic.test` (Berlin), guest `guest@example.test` (New York).
fn body_with_emails(start_in_s: i64, len_s: i64) -> Value {
    let mut b = booking_body(start_in_s, len_s);
    b["title"] = json!("Physio, follow-up; room 2");
    b["participants"][0]["email"] = json!("host@clinic.test");
    b["participants"][0]["time_zone"] = json!("Europe/Berlin");
    b["participants"][1]["email"] = json!("guest@example.test");
    b["participants"][1]["time_zone"] = json!("America/New_York");
    b
}

async fn call(d: &Daemon, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = d.client().request(method.parse().unwrap(), d.url(path)).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn join_url(booking: &Value, role: &str) -> String {
    participant(booking, role)["join_url"].as_str().expect("join_url").to_string()
}

/// The messages of `kind` for booking `id` (by the `UID` of their invitation).
fn of<'a>(msgs: &'a [Value], id: &str, kind: &str) -> Vec<&'a Value> {
    let uid = format!("{id}@127.0.0.1");
    msgs.iter().filter(|m| m["kind"] == kind && m["ics"]["uid"] == uid.as_str()).collect()
}

/// The one message of `kind` for booking `id` to `to`.
fn one<'a>(msgs: &'a [Value], id: &str, kind: &str, to: &str) -> &'a Value {
    let found: Vec<&Value> = of(msgs, id, kind).into_iter().filter(|m| m["rcpt_tos"] == json!([to])).collect();
    assert_eq!(found.len(), 1, "one {kind} to {to}: {found:#?}");
    found[0]
}

/// Asserts message `m` carries `own` (its recipient's link) in the text, the HTML and the invitation, and never
/// `other` (the other participant's link).
fn assert_own_link(m: &Value, own: &str, other: &str) {
    let (text, html) = (m["text"].as_str().unwrap(), m["html"].as_str().unwrap());
    assert!(text.contains(own) && html.contains(&own.replace('/', "&#x2f;")), "own link missing: {m:#}");
    assert_eq!(m["ics"]["url"], own, "{m:#}");
    assert_eq!(m["ics"]["location"], own, "{m:#}");
    assert!(m["ics"]["description"].as_str().unwrap().contains(own));
    let token = other.rsplit('/').next().unwrap();
    assert!(!m.to_string().contains(token), "the other participant's link leaked: {m:#}");
}

/// Asserts the attachment is a well-formed invitation: CRLF, lines of at most 75 octets, one event, `method=` on
/// the Content-Type equal to the calendar's METHOD.
fn assert_well_formed(m: &Value, method: &str) {
    let ics = &m["ics"];
    assert_eq!(ics["crlf"], true, "{m:#}");
    assert!(ics["max_octets"].as_u64().unwrap() <= 75, "{m:#}");
    assert_eq!(ics["events"], 1);
    assert_eq!(ics["method"], method, "{m:#}");
    assert_eq!(ics["method_param"], method, "{m:#}");
    assert!(ics["content_type"].as_str().unwrap().starts_with("text/calendar"), "{m:#}");
    assert_eq!(ics["filename"], "invite.ics");
    assert_eq!(ics["dtstamp_utc"], true);
}

async fn each_participant_gets_its_own_invitations(backend: Backend) {
    let test = "email::each_participant_gets_its_own_invitations";
    let Some(python) = python(test) else { return };
    let sink = Sink::start(&python, Duration::ZERO);
    let Some(d) = Daemon::start_on(backend, &sink.config("reminders = [\"1m\"]\n")) else { return };

    // A confirmed booking 80 s ahead: a reminder is due 20 s from now. A second one whose guest link is revoked.
    let (status, a) = d.create_booking(&body_with_emails(80, 1800)).await;
    assert_eq!(status, 201, "{a}");
    let (status, b) = d.create_booking(&body_with_emails(80, 1800)).await;
    assert_eq!(status, 201, "{b}");
    let (a_id, b_id) = (a["id"].as_str().unwrap().to_string(), b["id"].as_str().unwrap().to_string());
    let (host_a, guest_a) = (join_url(&a, "host"), join_url(&a, "guest"));
    let msgs = sink
        .wait_for(Duration::from_secs(20), "4 confirmations", |m| {
            m.iter().filter(|x| x["kind"] == "confirmation").count() == 4
        })
        .await;
    let to_host = one(&msgs, &a_id, "confirmation", "host@clinic.test");
    let to_guest = one(&msgs, &a_id, "confirmation", "guest@example.test");
    for (m, own, other) in [(to_host, &host_a, &guest_a), (to_guest, &guest_a, &host_a)] {
        assert_well_formed(m, "REQUEST");
        assert_own_link(m, own, other);
        assert_eq!(m["ics"]["sequence"], 0);
        assert_eq!(m["ics"]["status"], "CONFIRMED");
        assert_eq!(m["ics"]["dtstart"], a["start_at"], "{m:#}");
        assert_eq!(m["ics"]["dtend"], a["end_at"]);
        assert_eq!(m["ics"]["summary"], "Physio, follow-up; room 2");
        assert_eq!(m["ics"]["organizer"], "mailto:host@clinic.test");
        assert_eq!(m["ics"]["organizer_cn"], "Dr. Ana");
        assert_eq!(m["ics"]["attendees"], json!(["mailto:guest@example.test"]));
        assert!(m["message_id"].as_str().unwrap().ends_with("@127.0.0.1>"));
        assert!(m["subject"].as_str().unwrap().starts_with("Confirmed: Physio, follow-up; room 2"));
    }
    assert!(to_guest["to"].as_str().unwrap().contains("J. Doe"));
    // Each reads the time in its own zone.
    assert!(to_host["text"].as_str().unwrap().contains("(Europe/Berlin)"));
    assert!(to_guest["text"].as_str().unwrap().contains("(America/New_York)"));

    // The guest of `a` gets a new link before the reminder; the guest of `b` loses its link.
    let (status, rotated) = call(
        &d,
        &d.api_key,
        "POST",
        &format!("/v1/bookings/{a_id}/participants/{}/link/rotate", participant(&a, "guest")["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_guest_a = rotated["join_url"].as_str().unwrap().to_string();
    let b_guest = participant(&b, "guest")["id"].as_str().unwrap().to_string();
    let (status, _) =
        call(&d, &d.api_key, "POST", &format!("/v1/bookings/{b_id}/participants/{b_guest}/link/revoke"), None).await;
    assert_eq!(status, 200);

    let msgs = sink
        .wait_for(Duration::from_secs(40), "3 reminders", |m| m.iter().filter(|x| x["kind"] == "reminder").count() >= 3)
        .await;
    let reminder = one(&msgs, &a_id, "reminder", "guest@example.test");
    assert_well_formed(reminder, "REQUEST");
    assert_own_link(reminder, &new_guest_a, &host_a);
    assert!(!reminder.to_string().contains(guest_a.rsplit('/').next().unwrap()), "the rotated-away link was mailed");
    assert!(reminder["subject"].as_str().unwrap().contains("in 1 minute"), "{reminder:#}");
    assert_own_link(one(&msgs, &a_id, "reminder", "host@clinic.test"), &host_a, &new_guest_a);
    one(&msgs, &b_id, "reminder", "host@clinic.test");
    assert!(
        of(&msgs, &b_id, "reminder").iter().all(|m| m["rcpt_tos"] != json!(["guest@example.test"])),
        "a revoked participant got a reminder"
    );

    // Reschedule `a` an hour later: new times, a higher SEQUENCE, the reminder moved (not sent now).
    let r = d
        .client()
        .patch(d.url(&format!("/v1/bookings/{a_id}")))
        .bearer_auth(&d.api_key)
        .header("If-Match", "\"0\"")
        .json(&json!({"start_at": rfc3339_in(3600), "end_at": rfc3339_in(5400)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let moved: Value = r.json().await.unwrap();
    let msgs = sink
        .wait_for(Duration::from_secs(20), "2 reschedules", |m| {
            m.iter().filter(|x| x["kind"] == "reschedule").count() == 2
        })
        .await;
    let seq_after_reschedule = moved["sequence"].as_i64().unwrap();
    assert!(seq_after_reschedule > 0);
    for (to, own, other) in [("host@clinic.test", &host_a, &new_guest_a), ("guest@example.test", &new_guest_a, &host_a)]
    {
        let m = one(&msgs, &a_id, "reschedule", to);
        assert_well_formed(m, "REQUEST");
        assert_own_link(m, own, other);
        assert_eq!(m["ics"]["sequence"], seq_after_reschedule);
        assert_eq!(m["ics"]["dtstart"], moved["start_at"]);
    }

    // Cancel: METHOD:CANCEL with a higher SEQUENCE, to both.
    let (status, cancelled) = call(&d, &d.api_key, "POST", &format!("/v1/bookings/{a_id}/cancel"), None).await;
    assert_eq!(status, 200);
    let msgs = sink
        .wait_for(Duration::from_secs(20), "2 cancellations", |m| {
            m.iter().filter(|x| x["kind"] == "cancellation").count() == 2
        })
        .await;
    for to in ["host@clinic.test", "guest@example.test"] {
        let m = one(&msgs, &a_id, "cancellation", to);
        assert_well_formed(m, "CANCEL");
        assert_eq!(m["ics"]["status"], "CANCELLED");
        assert_eq!(m["ics"]["sequence"], cancelled["sequence"]);
        assert!(m["ics"]["sequence"].as_i64().unwrap() > seq_after_reschedule);
        assert!(m["subject"].as_str().unwrap().starts_with("Cancelled:"));
    }
    // Nothing else arrives (the moved reminders were removed by the cancel), and the counter says what was sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = sink.messages().await;
    assert_eq!(all.len(), 4 + 3 + 2 + 2, "{all:#?}");
    let ids: std::collections::BTreeSet<&str> = all.iter().map(|m| m["message_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "one Message-ID per message");
    assert_eq!(metric(&d.metrics().await, "duet_email_sent_total{result=\"sent\"}"), Some(all.len() as f64));
}

async fn kill9_during_sends_loses_none_and_sends_none_twice(backend: Backend) {
    let test = "email::kill9_during_sends_loses_none_and_sends_none_twice";
    let Some(python) = python(test) else { return };
    // Each message is accepted 1 s after its DATA: the kill lands while sends are under way.
    let sink = Sink::start(&python, Duration::from_secs(1));
    // Reminders 1 min before a start 85 s ahead: due about 25 s from now, after the kill and the restart.
    let Some(mut d) = Daemon::start_on(backend, &sink.config("reminders = [\"1m\"]\n")) else { return };
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (status, b) = d.create_booking(&body_with_emails(85, 1800)).await;
        assert_eq!(status, 201, "{b}");
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    let expected = ids.len() * 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count() < 3 {
        assert!(Instant::now() < deadline, "no mail within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Half-way through the next batch's DATA: those sends are cut off before the server accepted them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.kill9();
    let before = sink.count();
    assert!(before < expected, "everything was sent before the kill: the test proves nothing");
    let d = d.restart();
    sink.wait_for(Duration::from_secs(90), "every confirmation and reminder", |m| {
        let ids: std::collections::BTreeSet<&str> = m.iter().map(|x| x["message_id"].as_str().unwrap()).collect();
        ids.len() >= 2 * expected
    })
    .await;
    // Anything still coming (a resend is accepted 1 s after its DATA) has arrived after 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let msgs = sink.messages().await;
    for (id, kind, to) in ids.iter().flat_map(|id| {
        ["confirmation", "reminder"]
            .into_iter()
            .flat_map(move |k| ["host@clinic.test", "guest@example.test"].into_iter().map(move |to| (id, k, to)))
    }) {
        {
            let found: Vec<&Value> = of(&msgs, id, kind).into_iter().filter(|m| m["rcpt_tos"] == json!([to])).collect();
            assert!(!found.is_empty(), "lost: the {kind} of {id} to {to}");
            // A second copy can only be the resend of a message accepted just before the kill, recognisable by
            // its Message-ID; any other repeat is a message sent twice.
            let distinct: std::collections::BTreeSet<&str> =
                found.iter().map(|m| m["message_id"].as_str().unwrap()).collect();
            assert_eq!(distinct.len(), 1, "the {kind} of {id} to {to} was sent as two messages: {found:#?}");
        }
    }
    assert!(
        msgs.len() <= 2 * expected + 1,
        "more than the one resend a kill can cause: {} of {}",
        msgs.len(),
        2 * expected
    );
    assert_eq!(metric(&d.metrics().await, "duet_email_sent_total{result=\"failed\"}"), None);
}

async fn invite_routes_serve_each_participant_its_own_file(backend: Backend) {
    let test = "email::invite_routes_serve_each_participant_its_own_file";
    let Some(python) = python(test) else { return };
    // Invitations work without [email]; the sink here is only the parser's scratch directory.
    let sink = Sink::start(&python, Duration::ZERO);
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let mut body = body_with_emails(3600, 1800);
    body["status"] = json!("pending");
    body["participants"][1].as_object_mut().unwrap().remove("email");
    let (status, b) = d.create_booking(&body).await;
    assert_eq!(status, 201, "{b}");
    let id = b["id"].as_str().unwrap();
    let (host, guest) = (join_url(&b, "host"), join_url(&b, "guest"));
    let guest_token = participant(&b, "guest")["link_token"].as_str().unwrap().to_string();
    let host_pid = participant(&b, "host")["id"].as_str().unwrap().to_string();

    let fetch = |path: String, key: Option<String>| {
        let (client, url) = (d.client(), d.url(&path));
        async move {
            let mut r = client.get(url);
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            let cache = r.headers().get("cache-control").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            (status, ct, cache, r.text().await.unwrap())
        }
    };
    // The guest by its link: its own link only, TENTATIVE while pending.
    let (status, ct, cache, text) = fetch(format!("/v1/join/{guest_token}/invite.ics"), None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ct, "text/calendar; charset=utf-8; method=REQUEST");
    assert_eq!(cache, "no-store");
    let ics = sink.parse_ics(&text).await;
    assert_eq!((ics["method"].as_str(), ics["status"].as_str()), (Some("REQUEST"), Some("TENTATIVE")));
    assert_eq!(ics["uid"], format!("{id}@127.0.0.1"));
    assert_eq!(ics["sequence"], 0);
    assert_eq!(ics["dtstart"], b["start_at"]);
    assert_eq!((ics["url"].as_str(), ics["location"].as_str()), (Some(guest.as_str()), Some(guest.as_str())));
    assert_eq!(ics["crlf"], true);
    assert!(!text.contains(host.rsplit('/').next().unwrap()), "the guest's file has the host's link");
    // The guest has no address: a urn:uuid calendar address, its name as CN.
    assert!(ics["attendees"][0].as_str().unwrap().starts_with("urn:uuid:"), "{ics}");

    // The host's file by the API: the host's link (decrypted from link_token_enc), never the guest's.
    let (status, _, _, text) =
        fetch(format!("/v1/bookings/{id}/participants/{host_pid}/invite.ics"), Some(d.api_key.clone())).await;
    assert_eq!(status, 200, "{text}");
    let ics = sink.parse_ics(&text).await;
    assert_eq!(ics["url"], host.as_str());
    assert!(!text.contains(&guest_token), "the host's file has the guest's link");

    // Confirm, then cancel: CONFIRMED, then METHOD:CANCEL with a higher SEQUENCE.
    let (status, confirmed) = call(&d, &d.api_key, "POST", &format!("/v1/bookings/{id}/confirm"), None).await;
    assert_eq!(status, 200);
    let (_, _, _, text) = fetch(format!("/v1/join/{guest_token}/invite.ics"), None).await;
    let ics = sink.parse_ics(&text).await;
    assert_eq!((ics["status"].as_str(), ics["sequence"].as_i64()), (Some("CONFIRMED"), confirmed["sequence"].as_i64()));
    let (status, _) = call(&d, &d.api_key, "POST", &format!("/v1/bookings/{id}/cancel"), None).await;
    assert_eq!(status, 200);
    let (status, ct, _, text) = fetch(format!("/v1/join/{guest_token}/invite.ics"), None).await;
    assert_eq!((status, ct.as_str()), (200, "text/calendar; charset=utf-8; method=CANCEL"));
    let cancelled = sink.parse_ics(&text).await;
    assert_eq!((cancelled["method"].as_str(), cancelled["status"].as_str()), (Some("CANCEL"), Some("CANCELLED")));
    assert!(cancelled["sequence"].as_i64() > ics["sequence"].as_i64());
    assert_eq!(cancelled["uid"], ics["uid"]);

    // Bad input: JSON errors, never a file.
    let (status, _, _, text) = fetch("/v1/join/nope/invite.ics".into(), None).await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"], "link_invalid_or_revoked");
    let (status, _, _, text) =
        fetch(format!("/v1/bookings/{id}/participants/par_nope/invite.ics"), Some(d.api_key.clone())).await;
    assert_eq!((status, serde_json::from_str::<Value>(&text).unwrap()["error"].as_str()), (404, Some("not_found")));
    let (status, _, _, _) = fetch(format!("/v1/bookings/{id}/participants/{host_pid}/invite.ics"), None).await;
    assert_eq!(status, 401);
    // A revoked link answers 404.
    let gid = participant(&b, "guest")["id"].as_str().unwrap();
    let (status, _) =
        call(&d, &d.api_key, "POST", &format!("/v1/bookings/{id}/participants/{gid}/link/revoke"), None).await;
    assert_eq!(status, 200);
    let (status, _, _, _) = fetch(format!("/v1/join/{guest_token}/invite.ics"), None).await;
    assert_eq!(status, 404);
    // Another tenant's key gets 404 for this booking's files.
    let (status, tenant) =
        call(&d, &d.api_key, "POST", "/v1/admin/tenants", Some(json!({"name": "Other clinic"}))).await;
    assert_eq!(status, 201);
    let (status, key) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"tenant_id": tenant["id"], "scopes": ["bookings:read"]})),
    )
    .await;
    assert_eq!(status, 201);
    let other = key["key"].as_str().unwrap().to_string();
    let (status, _, _, text) =
        fetch(format!("/v1/bookings/{id}/participants/{host_pid}/invite.ics"), Some(other)).await;
    assert_eq!((status, serde_json::from_str::<Value>(&text).unwrap()["error"].as_str()), (404, Some("not_found")));
}
