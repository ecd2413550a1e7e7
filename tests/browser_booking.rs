//! The booking page in a real browser (issue 9, "Show it"): Debian's `chromium` driven by `playwright-core`
//! (`tests/browser/book.mjs`) with its time zone set to America/New_York, against a host whose schedule is in
//! Europe/Berlin. The page's script shows the page in the browser's zone; the visitor picks a time, fills in the
//! form, lands on the confirmation, opens the join link (the join page loads and checks it); a second visitor no
//! longer sees that time; next year's fall-back day of Europe/Berlin lists the wall times chrono-tz computes for New
//! York; axe-core finds no serious or critical violation on the booking page, the form and the confirmation; the
//! host agenda's Join button opens the join page, which joins as the host with the host secret; no
//! Content-Security-Policy violation.
//!
//! As in `tests/browser.rs`: the daemon and the browser share a network namespace of their own whose only interface
//! is `lo`; the test re-executes its own binary under `tests/browser/run-in-netns.sh`. Needs `/usr/bin/chromium`,
//! `node` and `npm ci --prefix tests/browser` (with `axe-core`); without them the test prints a SKIPPED line, or
//! fails when `CI` is set.

mod common;

use std::time::Duration;

use chrono::{Datelike, Days, NaiveDate, TimeZone, Weekday};
use chrono_tz::Tz;
use serde_json::{Value, json};

use common::browser::{RESULT_PREFIX, netns_test, node_scenario};
use common::{Daemon, assert_alive};

/// Set in the re-executed child, which runs inside the namespace.
const IN_NETNS: &str = "DUET_BROWSER_BOOKING_IN_NETNS";
/// book.mjs's own hard deadline; the child and the parent allow more on top.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The visitor's zone (the browser's `timezoneId`).
const VISITOR_ZONE: &str = "America/New_York";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_page_in_chromium() {
    const TEST: &str = "booking_page_in_chromium";
    netns_test(TEST, IN_NETNS, TIMEOUT + Duration::from_secs(90), None, book_in_netns).await;
}

async fn api(d: &Daemon, path: &str, body: Value) -> Value {
    let r = d.client().post(d.url(path)).bearer_auth(&d.api_key).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{path}: {v}");
    v
}

/// The last Sunday of October of `year`: the fall-back day of Europe/Berlin.
fn fall_back_day(year: i32) -> NaiveDate {
    let mut d = NaiveDate::from_ymd_opt(year, 10, 31).unwrap();
    while d.weekday() != Weekday::Sun {
        d = d.pred_opt().unwrap();
    }
    d
}

/// Inside the namespace: daemon, host in Berlin with 09:00-12:00 every day, a 30-minute event type, the scenario.
async fn book_in_netns() {
    let mut d = Daemon::start("[booking]\nhorizon = \"800d\"\n");
    let host =
        api(&d, "/v1/hosts", json!({"ref": "dr-berlin", "display_name": "Dr. Berlin", "time_zone": "Europe/Berlin"}))
            .await;
    let secret = host["secret"].as_str().unwrap();
    let days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let weekly: Vec<Value> =
        days.iter().map(|day| json!({"day": day, "intervals": [{"start": "09:00", "end": "12:00"}]})).collect();
    let s = api(
        &d,
        "/v1/hosts/dr-berlin/schedules",
        json!({"name": "mornings", "time_zone": "Europe/Berlin", "weekly": weekly}),
    )
    .await;
    api(
        &d,
        "/v1/event-types",
        json!({"host_ref": "dr-berlin", "schedule_id": s["id"], "slug": "consult", "title": "Consultation",
               "duration_minutes": 30, "minimum_notice_minutes": 0, "horizon_days": 730}),
    )
    .await;
    // Next year's fall-back day in Berlin, seen from New York (still on summer time then): the New York wall
    // times of the Berlin starts that fall on that New York date.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let year = chrono::Utc.timestamp_opt(now, 0).unwrap().year() + 1;
    let day = fall_back_day(year);
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let ny: Tz = VISITOR_ZONE.parse().unwrap();
    let mut expected = Vec::new();
    for bd in [day - Days::new(1), day, day + Days::new(1)] {
        for m in (9 * 60..12 * 60).step_by(30) {
            let t = berlin.from_local_datetime(&bd.and_hms_opt(m / 60, m % 60, 0).unwrap()).earliest().unwrap();
            let local = t.with_timezone(&ny);
            if local.date_naive() == day {
                expected.push(local.format("%H:%M").to_string());
            }
        }
    }
    // Berlin is on UTC+1 again, New York still on UTC-4: 09:00 in Berlin is 04:00 in New York (03:00 the day before).
    assert_eq!(expected.first().map(String::as_str), Some("04:00"), "{expected:?}");
    // A meeting of the host starting in two minutes (its window is open for the host): the agenda's Join.
    let start = now + 120;
    let soon = api(
        &d,
        "/v1/bookings",
        json!({"title": "Soon", "start_at": chrono::Utc.timestamp_opt(start, 0).unwrap().to_rfc3339(),
               "end_at": chrono::Utc.timestamp_opt(start + 1800, 0).unwrap().to_rfc3339(),
               "participants": [{"role": "host", "ref": "dr-berlin", "display_name": "Dr. Berlin"},
                                {"role": "guest", "display_name": "Early Guest"}]}),
    )
    .await;
    let soon_id = soon["id"].as_str().unwrap();
    let config = json!({
        "agendaPath": format!("/agenda/{secret}?date={}", chrono::Utc.timestamp_opt(start, 0).unwrap().with_timezone(&berlin).date_naive()),
        "agendaBooking": soon_id,
        "origin": format!("http://{}", d.http),
        "bookPath": "/book/ten_default/dr-berlin/consult",
        "timezoneId": VISITOR_ZONE,
        "dstDate": day.to_string(),
        "dstHeading": day.format("%A %-d %B %Y").to_string(),
        "dstTimes": expected,
    });
    let (json_line, result) = node_scenario("book.mjs", TIMEOUT, &[config.to_string()]).await;
    assert_eq!(result["pagePolicy"], duet::booking::pages::PAGES_CSP, "{result}");
    assert_eq!(result["csp"]["violations"], 0, "{result}");
    // The booking exists, made by the page, with the visitor's zone for the guest.
    let r = d.client().get(d.url("/v1/bookings")).bearer_auth(&d.api_key).send().await.unwrap();
    let list: Value = r.json().await.unwrap();
    let bookings = list["bookings"].as_array().unwrap();
    assert_eq!(bookings.len(), 2, "{list}");
    let booked = bookings.iter().find(|b| b["id"] != soon_id).unwrap();
    let guest = booked["participants"].as_array().unwrap().iter().find(|p| p["role"] == "guest").unwrap();
    assert_eq!(guest["display_name"], "Playwright Guest");
    assert_eq!(guest["time_zone"], VISITOR_ZONE);
    assert_eq!(booked["start_at"], result["slot"]["start"], "{result}");
    assert_eq!(result["agenda"]["role"], "host", "{result}");
    assert_alive(&mut d);
    println!("{RESULT_PREFIX}{json_line}");
}
