//! Issue 9, "A subscribable feed per host": `GET /calendar/{host secret}.ics` lists the host's bookings, read by an
//! independent parser (Python `icalendar`, pinned in `.ci/run`), on SQLite and PostgreSQL.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use common::process::{find_tool, run_bounded_blocking, skip_or_fail, tail};
use common::{Backend, Daemon, booking_body};

crate::on_both_backends!(the_host_feed_lists_its_bookings);

/// Parses an iCalendar text with `icalendar`: `{method, calname, events: [{uid, sequence, status, summary,
/// description, url, dtstart}]}`.
const PARSE: &str = r#"
import json, sys, icalendar
raw = open(sys.argv[1], "rb").read()
cal = icalendar.Calendar.from_ical(raw)
events = []
for ev in cal.walk("VEVENT"):
    events.append({
        "uid": str(ev.get("uid")),
        "sequence": int(ev.get("sequence")),
        "status": str(ev.get("status")),
        "summary": str(ev.get("summary")),
        "description": str(ev.get("description")),
        "url": str(ev.get("url")) if ev.get("url") is not None else None,
        "dtstart": ev.decoded("dtstart").strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
lines = raw.split(b"\r\n")
print(json.dumps({"method": str(cal.get("method")), "calname": str(cal.get("x-wr-calname")), "events": events,
                  "crlf": b"\n" not in raw.replace(b"\r\n", b""), "max_octets": max(len(l) for l in lines)}))
"#;

async fn parse(test: &str, text: &str) -> Option<Value> {
    let Some(python) = find_tool("python3") else {
        skip_or_fail(test, "python3 not found");
        return None;
    };
    if !Command::new(&python).args(["-c", "import icalendar"]).status().is_ok_and(|s| s.success()) {
        skip_or_fail(test, "icalendar is missing: python3 -m pip install 'icalendar==7.3.2'");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("feed.ics");
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(python);
    cmd.args(["-c", PARSE]).arg(&file);
    let run = run_bounded_blocking(cmd, Duration::from_secs(60), "icalendar").await;
    assert!(run.status.success(), "icalendar refused the feed:\n{text}\n{}", tail(&run.stderr, 30));
    Some(serde_json::from_str(&run.stdout).expect("JSON"))
}

async fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    let r = d.client().post(d.url(path)).bearer_auth(&d.api_key).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn the_host_feed_lists_its_bookings(backend: Backend) {
    const TEST: &str = "calendar_feed::the_host_feed_lists_its_bookings";
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let (s, host) = post(
        &d,
        "/v1/hosts",
        json!({"ref": "coach:feed", "display_name": "Dr. Ana Feed", "time_zone": "Europe/Berlin"}),
    )
    .await;
    assert_eq!(s, 201, "{host}");
    let secret = host["secret"].as_str().expect("the host secret, shown once").to_string();
    let mine = |start: i64, title: &str| {
        let mut b = booking_body(start, 1800);
        b["participants"][0]["ref"] = json!("coach:feed");
        b["title"] = json!(title);
        b
    };
    let (_, a) = d.create_booking(&mine(3600, "Physio, first visit")).await;
    let mut pending = mine(7200, "Follow-up, to confirm");
    pending["status"] = json!("pending");
    let (_, p) = d.create_booking(&pending).await;
    let (_, c) = d.create_booking(&mine(10_800, "Cancelled one")).await;
    assert_eq!(common::cancel_booking(&d, c["id"].as_str().unwrap()).await.0, 200);
    // Another host's booking, and one where "coach:feed" is the guest: neither is in this host's feed.
    let (_, other) = d.create_booking(&booking_body(3600, 1800)).await;
    let mut as_guest = booking_body(20_000, 1800);
    as_guest["participants"][1]["ref"] = json!("coach:feed");
    let (_, guest_side) = d.create_booking(&as_guest).await;

    let r = d.client().get(d.url(&format!("/calendar/{secret}.ics"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "text/calendar; charset=utf-8; method=PUBLISH");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let text = r.text().await.unwrap();
    assert!(!text.contains(other["id"].as_str().unwrap()) && !text.contains(guest_side["id"].as_str().unwrap()));
    let Some(cal) = parse(TEST, &text).await else { return };
    assert_eq!((&cal["method"], &cal["crlf"]), (&json!("PUBLISH"), &json!(true)), "{cal}");
    assert!(cal["max_octets"].as_u64().unwrap() <= 75, "{cal}");
    assert_eq!(cal["calname"], "Duet: Dr. Ana Feed");
    let events = cal["events"].as_array().unwrap();
    let statuses: Vec<(&str, &str)> =
        events.iter().map(|e| (e["summary"].as_str().unwrap(), e["status"].as_str().unwrap())).collect();
    assert_eq!(
        statuses,
        [("Physio, first visit", "CONFIRMED"), ("Follow-up, to confirm", "TENTATIVE"), ("Cancelled one", "CANCELLED")],
        "ordered by start: {cal}"
    );
    let first = &events[0];
    assert!(first["uid"].as_str().unwrap().contains(a["id"].as_str().unwrap()), "{first}");
    assert_eq!(first["sequence"], 0);
    let join = format!("/agenda/{secret}/call/{}", a["id"].as_str().unwrap());
    assert!(first["url"].as_str().unwrap().ends_with(&join), "{first}");
    assert!(first["description"].as_str().unwrap().contains("With J. Doe."), "{first}");
    assert_eq!(events[2]["url"], Value::Null, "no join link for a cancelled meeting");
    assert_eq!(events[2]["sequence"], 1, "the cancel raised the sequence");

    // A reschedule replaces the event: same UID, higher SEQUENCE, new start.
    let id = p["id"].as_str().unwrap();
    let r = d
        .client()
        .patch(d.url(&format!("/v1/bookings/{id}")))
        .bearer_auth(&d.api_key)
        .header("If-Match", "*")
        .json(&json!({"start_at": common::rfc3339_in(30_000), "end_at": common::rfc3339_in(31_800)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = d.client().get(d.url(&format!("/calendar/{secret}.ics"))).send().await.unwrap().text().await.unwrap();
    let Some(cal) = parse(TEST, &text).await else { return };
    let moved = cal["events"].as_array().unwrap().iter().find(|e| e["uid"] == events[1]["uid"]).expect("same UID");
    assert_eq!(moved["sequence"], 1);
    assert_ne!(moved["dtstart"], events[1]["dtstart"]);

    // Unknown secrets and paths are 404.
    for path in ["/calendar/hs_nope.ics", &format!("/calendar/{secret}"), "/calendar/x.ics"] {
        let r = d.client().get(d.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
}
