//! Hosts, availability schedules, event types, `GET /v1/slots` and `POST /v1/event-types/{id}/bookings` against
//! the real daemon, on SQLite and PostgreSQL: CRUD and tenant isolation, slots on spring-forward and fall-back days
//! in Europe/Berlin and America/New_York, a schedule in one zone shown in another, a booked slot disappearing (both
//! create paths), minimum notice, maximum per day, and bad input.

mod common;

use chrono::{Datelike, Duration, NaiveDate, Utc, Weekday};
use serde_json::{Value, json};

use common::{Backend, Daemon, participant};

/// Bookings up to two years ahead are accepted (the DST days tested are next year's).
const CONFIG: &str = "[booking]\nhorizon = \"800d\"\n";

/// Sends `method path` with `key` and an optional JSON body; (status, JSON body or null).
async fn call(d: &Daemon, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = d.client();
    let url = d.url(path);
    let req = match method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "PATCH" => c.patch(url),
        "DELETE" => c.delete(url),
        _ => unreachable!("{method}"),
    };
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let r = req.bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(d, &d.api_key, method, path, body).await
}

/// Creates host `reference` in `zone`; its JSON.
async fn host(d: &Daemon, reference: &str, zone: &str) -> Value {
    let body = json!({"ref": reference, "display_name": format!("Dr. {reference}"), "email": "dr@clinic.example", "time_zone": zone});
    let (status, h) = api(d, "POST", "/v1/hosts", Some(body)).await;
    assert_eq!(status, 201, "{h}");
    h
}

/// Creates a schedule of `host_ref` in `zone` with the same intervals every day; its id.
async fn every_day(d: &Daemon, host_ref: &str, zone: &str, intervals: Value) -> String {
    let days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let weekly: Vec<Value> = days.iter().map(|day| json!({"day": day, "intervals": intervals})).collect();
    let body = json!({"name": "every day", "time_zone": zone, "weekly": weekly});
    let (status, s) = api(d, "POST", &format!("/v1/hosts/{host_ref}/schedules"), Some(body)).await;
    assert_eq!(status, 201, "{s}");
    s["id"].as_str().unwrap().to_string()
}

/// Creates an event type of `host_ref` on `schedule` with `extra` members; its JSON.
async fn event_type(d: &Daemon, host_ref: &str, schedule: &str, slug: &str, extra: Value) -> Value {
    let mut body = json!({"host_ref": host_ref, "schedule_id": schedule, "slug": slug, "title": "Consultation",
                          "duration_minutes": 30, "minimum_notice_minutes": 0, "horizon_days": 730});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, e) = api(d, "POST", "/v1/event-types", Some(body)).await;
    assert_eq!(status, 201, "{e}");
    e
}

/// `GET /v1/slots` with the query `q`; the answer (status 200 asserted).
async fn slots(d: &Daemon, q: &str) -> Value {
    let (status, body) = api(d, "GET", &format!("/v1/slots?{q}"), None).await;
    assert_eq!(status, 200, "{q}: {body}");
    body
}

/// The slots of local date `date` in an answer of `GET /v1/slots`.
fn day<'a>(answer: &'a Value, date: &str) -> Vec<&'a Value> {
    answer["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["date"] == date)
        .flat_map(|d| d["slots"].as_array().unwrap())
        .collect()
}

/// `start_at` of every slot of `date`.
fn starts(answer: &Value, date: &str) -> Vec<String> {
    day(answer, date).iter().map(|s| s["start_at"].as_str().unwrap().to_string()).collect()
}

/// The `n`th `weekday` of `month` of `year` (n = -1: the last).
fn nth_weekday(year: i32, month: u32, weekday: Weekday, n: i32) -> NaiveDate {
    if n > 0 {
        NaiveDate::from_weekday_of_month_opt(year, month, weekday, n as u8).unwrap()
    } else {
        let mut d = NaiveDate::from_ymd_opt(year, month + 1, 1).unwrap().pred_opt().unwrap();
        while d.weekday() != weekday {
            d = d.pred_opt().unwrap();
        }
        d
    }
}

/// The clock (chrono is built without its `clock` feature).
fn utc_now() -> chrono::DateTime<Utc> {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    chrono::DateTime::from_timestamp(s as i64, 0).unwrap()
}

/// Next year (every DST day of it is ahead of the clock and within two years).
fn next_year() -> i32 {
    utc_now().year() + 1
}

fn q_range(host_ref: &str, slug: &str, date: NaiveDate, zone: Option<&str>) -> String {
    let from = format!("{}T00:00:00Z", date.pred_opt().unwrap());
    let to = format!("{}T00:00:00Z", date + Duration::days(2));
    let mut q = format!("host_ref={host_ref}&event_type={slug}&from={from}&to={to}");
    if let Some(z) = zone {
        q += &format!("&time_zone={z}");
    }
    q
}

/// Hosts: create (secret once), read, change, rotate, delete; `ref` unique and fixed; another tenant sees 404.
async fn hosts_crud_and_isolation(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let h = host(&d, "coach:7", "Europe/Berlin").await;
    let secret = h["secret"].as_str().unwrap();
    assert!(secret.starts_with("hs_") && secret.len() >= 40, "{h}");
    assert_eq!((h["ref"].as_str(), h["time_zone"].as_str()), (Some("coach:7"), Some("Europe/Berlin")));
    let (status, again) =
        api(&d, "POST", "/v1/hosts", Some(json!({"ref": "coach:7", "display_name": "X", "time_zone": "UTC"}))).await;
    assert_eq!((status, again["error"].as_str(), again["field"].as_str()), (409, Some("host_ref_taken"), Some("ref")));
    let (status, bad) =
        api(&d, "POST", "/v1/hosts", Some(json!({"ref": "c:8", "display_name": "X", "time_zone": "Mars/Base"}))).await;
    assert_eq!((status, bad["error"].as_str()), (422, Some("invalid_time_zone")), "{bad}");
    let (status, bad) =
        api(&d, "POST", "/v1/hosts", Some(json!({"ref": "c:8", "display_name": "X", "time_zone": "UTC", "x": 1})))
            .await;
    assert_eq!((status, bad["error"].as_str()), (400, Some("invalid_request")), "{bad}");

    let (status, got) = api(&d, "GET", "/v1/hosts/coach:7", None).await;
    assert_eq!(status, 200, "{got}");
    assert!(got.get("secret").is_none(), "the secret is shown once: {got}");
    let (status, changed) =
        api(&d, "PATCH", "/v1/hosts/coach:7", Some(json!({"display_name": "Coach Seven", "email": null}))).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!((changed["display_name"].as_str(), &changed["email"]), (Some("Coach Seven"), &Value::Null));
    let (status, bad) = api(&d, "PATCH", "/v1/hosts/coach:7", Some(json!({"ref": "coach:8"}))).await;
    assert_eq!((status, bad["field"].as_str()), (422, Some("ref")), "{bad}");
    let (status, rotated) = api(&d, "POST", "/v1/hosts/coach:7/secret/rotate", None).await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated["secret"].as_str().is_some_and(|s| s.starts_with("hs_") && s != secret), "{rotated}");
    let (_, list) = api(&d, "GET", "/v1/hosts", None).await;
    assert_eq!(list["hosts"].as_array().unwrap().len(), 1, "{list}");

    // Another tenant's key: 404 for every object of this tenant, and its own list is empty.
    let (_, t) = api(&d, "POST", "/v1/admin/tenants", Some(json!({"name": "other"}))).await;
    let (status, k) = api(
        &d,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"tenant_id": t["id"], "scopes": ["bookings:read", "bookings:write"]})),
    )
    .await;
    assert_eq!(status, 201, "{k}");
    let other = k["key"].as_str().unwrap();
    let sched = every_day(&d, "coach:7", "Europe/Berlin", json!([{"start": "09:00", "end": "17:00"}])).await;
    let evt = event_type(&d, "coach:7", &sched, "intro", json!({})).await;
    let evt_id = evt["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", "/v1/hosts/coach:7".to_string()),
        ("PATCH", "/v1/hosts/coach:7".to_string()),
        ("DELETE", "/v1/hosts/coach:7".to_string()),
        ("POST", "/v1/hosts/coach:7/secret/rotate".to_string()),
        ("GET", format!("/v1/hosts/coach:7/schedules/{sched}")),
        ("GET", format!("/v1/event-types/{evt_id}")),
        ("DELETE", format!("/v1/event-types/{evt_id}")),
        ("POST", format!("/v1/event-types/{evt_id}/bookings")),
        ("GET", "/v1/slots?host_ref=coach:7&event_type=intro".to_string()),
    ] {
        let body = if method == "GET" || method == "DELETE" { None } else { Some(json!({})) };
        let (status, got) = call(&d, other, method, &path, body).await;
        assert_eq!((status, got["error"].as_str()), (404, Some("not_found")), "{method} {path}: {got}");
    }
    let (_, list) = call(&d, other, "GET", "/v1/hosts", None).await;
    assert_eq!(list["hosts"], json!([]));
    let (_, list) = call(&d, other, "GET", "/v1/event-types", None).await;
    assert_eq!(list["event_types"], json!([]));
    // Nothing changed for the owner; deleting the host takes its schedules and event types.
    let (status, _) = api(&d, "GET", &format!("/v1/event-types/{evt_id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = api(&d, "DELETE", "/v1/hosts/coach:7", None).await;
    assert_eq!(status, 204);
    for path in ["/v1/hosts/coach:7".to_string(), format!("/v1/event-types/{evt_id}")] {
        let (status, _) = api(&d, "GET", &path, None).await;
        assert_eq!(status, 404, "{path}");
    }
}

/// Schedules and event types: checks with the member at fault, normalisation, uniqueness, schedule in use.
async fn schedules_and_event_types(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    host(&d, "h1", "America/New_York").await;
    let body = json!({"name": "week", "weekly": [
        {"day": "friday", "intervals": [{"start": "13:00", "end": "17:00"}, {"start": "09:00", "end": "12:00"}]},
        {"day": "monday", "intervals": [{"start": "09:00", "end": "24:00"}]}],
        "overrides": [{"date": "2030-12-24", "intervals": []}]});
    let (status, s) = api(&d, "POST", "/v1/hosts/h1/schedules", Some(body)).await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["time_zone"], "America/New_York", "the host's zone by default");
    assert_eq!(s["weekly"][0]["day"], "monday");
    assert_eq!(s["weekly"][1]["intervals"][0], json!({"start": "09:00", "end": "12:00"}));
    let sid = s["id"].as_str().unwrap();
    for (bad, field) in [
        (
            json!({"day": "monday", "intervals": [{"start": "09:00", "end": "12:00"}, {"start": "11:59", "end": "13:00"}]}),
            "weekly[0].intervals[1]",
        ),
        (json!({"day": "monday", "intervals": [{"start": "9:00", "end": "12:00"}]}), "weekly[0].intervals[0].start"),
        (json!({"day": "monday", "intervals": [{"start": "12:00", "end": "12:00"}]}), "weekly[0].intervals[0].end"),
    ] {
        let (status, e) = api(&d, "POST", "/v1/hosts/h1/schedules", Some(json!({"name": "x", "weekly": [bad]}))).await;
        assert_eq!(
            (status, e["error"].as_str(), e["field"].as_str()),
            (422, Some("invalid_field"), Some(field)),
            "{e}"
        );
    }
    let (status, e) = api(&d, "POST", "/v1/hosts/nobody/schedules", Some(json!({"name": "x"}))).await;
    assert_eq!(status, 404, "{e}");
    let (status, patched) =
        api(&d, "PATCH", &format!("/v1/hosts/h1/schedules/{sid}"), Some(json!({"time_zone": "Asia/Tokyo"}))).await;
    assert_eq!((status, patched["time_zone"].as_str()), (200, Some("Asia/Tokyo")), "{patched}");
    assert_eq!(patched["overrides"], s["overrides"], "members not sent are kept");

    let e = event_type(&d, "h1", sid, "intro-30", json!({"buffer_after_minutes": 10})).await;
    assert_eq!((e["slot_interval_minutes"].as_i64(), e["kind"].as_str()), (Some(30), Some("hosted")), "{e}");
    let base = json!({"host_ref": "h1", "schedule_id": sid, "slug": "intro-30", "title": "t", "duration_minutes": 30});
    let (status, dup) = api(&d, "POST", "/v1/event-types", Some(base.clone())).await;
    assert_eq!((status, dup["error"].as_str()), (409, Some("slug_taken")), "{dup}");
    for (change, code, field) in [
        (json!({"slug": "Intro"}), "invalid_field", "slug"),
        (json!({"slug": "b", "duration_minutes": 0}), "invalid_field", "duration_minutes"),
        (json!({"slug": "b", "schedule_id": "sch_nope"}), "unknown_schedule", "schedule_id"),
        (json!({"slug": "b", "host_ref": "nobody"}), "unknown_host", "host_ref"),
        (json!({"slug": "b", "kind": "external_link"}), "missing_field", "external_url"),
        (
            json!({"slug": "b", "kind": "external_link", "external_url": "http://x.example"}),
            "invalid_field",
            "external_url",
        ),
        (json!({"slug": "b", "max_per_day": 0}), "invalid_field", "max_per_day"),
    ] {
        let mut body = base.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, got) = api(&d, "POST", "/v1/event-types", Some(body)).await;
        assert_eq!(
            (status, got["error"].as_str(), got["field"].as_str()),
            (422, Some(code), Some(field)),
            "{change}: {got}"
        );
    }
    let eid = e["id"].as_str().unwrap();
    let (status, p) = api(
        &d,
        "PATCH",
        &format!("/v1/event-types/{eid}"),
        Some(json!({"slot_interval_minutes": 15, "requires_confirmation": true})),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (p["slot_interval_minutes"].as_i64(), p["requires_confirmation"].as_bool(), p["buffer_after_minutes"].as_i64()),
        (Some(15), Some(true), Some(10))
    );
    let (status, got) = api(&d, "DELETE", &format!("/v1/hosts/h1/schedules/{sid}"), None).await;
    assert_eq!((status, got["error"].as_str()), (409, Some("schedule_in_use")), "{got}");
    let (_, list) = api(&d, "GET", "/v1/event-types?host_ref=h1", None).await;
    assert_eq!(list["event_types"].as_array().unwrap().len(), 1);
    let (status, _) = api(&d, "DELETE", &format!("/v1/event-types/{eid}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = api(&d, "DELETE", &format!("/v1/hosts/h1/schedules/{sid}"), None).await;
    assert_eq!(status, 204);
}

/// Spring forward skips the gap, fall back offers the repeated hour once (its first occurrence), in Berlin and New
/// York. The expected instants follow from the zones' offsets (CET +01:00 / CEST +02:00, EST -05:00 / EDT -04:00).
async fn dst_days_in_two_zones(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let y = next_year();
    // (zone, spring day, fall day, winter offset hours, the repeated wall hour)
    let zones = [
        ("Europe/Berlin", nth_weekday(y, 3, Weekday::Sun, -1), nth_weekday(y, 10, Weekday::Sun, -1), 1i64, 2),
        ("America/New_York", nth_weekday(y, 3, Weekday::Sun, 2), nth_weekday(y, 11, Weekday::Sun, 1), -5, 1),
    ];
    for (i, (zone, spring, fall, winter, repeated)) in zones.into_iter().enumerate() {
        let href = format!("dst-{i}");
        host(&d, &href, zone).await;
        // Spring: 01:00-04:00 wall time, 30 min slots. 02:00-03:00 does not exist.
        let s = every_day(&d, &href, zone, json!([{"start": "01:00", "end": "04:00"}])).await;
        event_type(&d, &href, &s, "half", json!({})).await;
        let answer = slots(&d, &q_range(&href, "half", spring, None)).await;
        assert_eq!(answer["time_zone"], zone);
        let got: Vec<(&str, &str)> = day(&answer, &spring.to_string())
            .iter()
            .map(|s| (s["local_time"].as_str().unwrap(), s["local_start_at"].as_str().unwrap()))
            .collect();
        let w = |h: i64| format!("{:+03}:00", h);
        let expect = [
            ("01:00", format!("{spring}T01:00:00{}", w(winter))),
            ("01:30", format!("{spring}T01:30:00{}", w(winter))),
            ("03:00", format!("{spring}T03:00:00{}", w(winter + 1))),
            ("03:30", format!("{spring}T03:30:00{}", w(winter + 1))),
        ];
        assert_eq!(got.len(), 4, "{zone} {spring}: {got:?}");
        for (g, e) in got.iter().zip(&expect) {
            assert_eq!((g.0, g.1), (e.0, e.1.as_str()), "{zone} {spring}");
        }
        // The instants: 01:00 winter time is 01:00 - winter offset UTC; 03:00 summer time is one hour later.
        let t0 = chrono::DateTime::parse_from_rfc3339(&expect[0].1).unwrap().timestamp();
        let utc: Vec<i64> = day(&answer, &spring.to_string())
            .iter()
            .map(|s| chrono::DateTime::parse_from_rfc3339(s["start_at"].as_str().unwrap()).unwrap().timestamp())
            .collect();
        assert_eq!(utc, [t0, t0 + 1800, t0 + 3600, t0 + 5400], "{zone}: two real hours of slots");
        assert!(day(&answer, &spring.to_string()).iter().all(|s| s["start_at"].as_str().unwrap().ends_with('Z')));

        // Fall: 00:00-04:00 wall time, 60 min slots. The repeated hour is offered once, on summer time.
        let s = every_day(&d, &href, zone, json!([{"start": "00:00", "end": "04:00"}])).await;
        event_type(&d, &href, &s, "hour", json!({"duration_minutes": 60})).await;
        let answer = slots(&d, &q_range(&href, "hour", fall, None)).await;
        let got: Vec<(String, String)> = day(&answer, &fall.to_string())
            .iter()
            .map(|s| (s["local_time"].as_str().unwrap().into(), s["local_start_at"].as_str().unwrap().into()))
            .collect();
        let walls: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(walls, ["00:00", "01:00", "02:00", "03:00"], "{zone} {fall}");
        let rep = &got[repeated as usize].1;
        assert_eq!(rep, &format!("{fall}T{repeated:02}:00:00{}", w(winter + 1)), "{zone}: the first occurrence");
        // After the repeated hour the wall clock is on winter time.
        assert_eq!(got[3].1, format!("{fall}T03:00:00{}", w(winter)), "{zone}");
        // Each start is unique and ascending.
        let all: Vec<String> = answer["days"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["slots"].as_array().unwrap())
            .map(|s| s["start_at"].as_str().unwrap().to_string())
            .collect();
        assert!(all.windows(2).all(|p| p[0] < p[1]), "{all:?}");
    }
}

/// A schedule in one zone shown in another: the same instants, local times and dates of the asked zone (a Tokyo
/// morning is the previous evening in Los Angeles; Berlin 09:00 is 04:00 in New York between the two DST changes).
async fn schedule_in_another_zone(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    host(&d, "tokyo", "Asia/Tokyo").await;
    let s = every_day(&d, "tokyo", "Asia/Tokyo", json!([{"start": "08:00", "end": "09:00"}])).await;
    event_type(&d, "tokyo", &s, "call", json!({"duration_minutes": 60})).await;
    let date = NaiveDate::from_ymd_opt(next_year(), 1, 15).unwrap();
    let own = slots(&d, &q_range("tokyo", "call", date, None)).await;
    let la = slots(&d, &q_range("tokyo", "call", date, Some("America/Los_Angeles"))).await;
    assert_eq!(la["time_zone"], "America/Los_Angeles");
    assert_eq!(la["schedule_time_zone"], "Asia/Tokyo");
    let tokyo_day = day(&own, &date.to_string());
    assert_eq!(tokyo_day.len(), 1);
    assert_eq!(tokyo_day[0]["start_at"], format!("{}T23:00:00Z", date.pred_opt().unwrap()));
    // Shown in Los Angeles (PST, -08:00): 15:00 on the previous date.
    let la_day = day(&la, &date.pred_opt().unwrap().to_string());
    assert!(
        la_day.iter().any(|s| s["start_at"] == tokyo_day[0]["start_at"]
            && s["local_time"] == "15:00"
            && s["local_start_at"] == format!("{}T15:00:00-08:00", date.pred_opt().unwrap())),
        "{la}"
    );
    let flat = |a: &Value| -> Vec<String> {
        a["days"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["slots"].as_array().unwrap())
            .map(|s| s["start_at"].to_string())
            .collect()
    };
    assert_eq!(flat(&own), flat(&la), "the zone changes only the presentation");

    // Berlin 09:00 in the weeks New York is on summer time and Berlin is not yet: 04:00 EDT (08:00Z).
    host(&d, "berlin", "Europe/Berlin").await;
    let s = every_day(&d, "berlin", "Europe/Berlin", json!([{"start": "09:00", "end": "09:30"}])).await;
    event_type(&d, "berlin", &s, "call", json!({})).await;
    let y = next_year();
    let between = nth_weekday(y, 3, Weekday::Sun, 2) + Duration::days(3);
    assert!(between < nth_weekday(y, 3, Weekday::Sun, -1));
    let ny = slots(&d, &q_range("berlin", "call", between, Some("America/New_York"))).await;
    let got = day(&ny, &between.to_string());
    assert_eq!(got.len(), 1, "{ny}");
    assert_eq!(got[0]["start_at"], format!("{between}T08:00:00Z"));
    assert_eq!(got[0]["local_start_at"], format!("{between}T04:00:00-04:00"));
}

/// A slot booked with `POST /v1/bookings` (the host participant's `ref`) or `POST /v1/event-types/{id}/bookings`
/// disappears with its buffers; booking it again is 409 `slot_unavailable`; the booking carries the event type.
async fn booked_slots_disappear(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    host(&d, "physio", "UTC").await;
    let s = every_day(&d, "physio", "UTC", json!([{"start": "09:00", "end": "12:00"}])).await;
    let e = event_type(&d, "physio", &s, "visit", json!({"buffer_after_minutes": 15})).await;
    let eid = e["id"].as_str().unwrap();
    let date = (utc_now() + Duration::days(10)).date_naive();
    let q = q_range("physio", "visit", date, None);
    let at = |hm: &str| format!("{date}T{hm}:00Z");
    let all = ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"].map(at).to_vec();
    assert_eq!(starts(&slots(&d, &q).await, &date.to_string()), all);

    // An app booking 10:00-10:30 of the host (no buffers of its own). The event type's 15 min after a booking make
    // 09:30 (ends 10:00, buffer to 10:15) unavailable too.
    let mut b = common::booking_body(0, 0);
    b["start_at"] = json!(at("10:00"));
    b["end_at"] = json!(at("10:30"));
    b["participants"][0]["ref"] = json!("physio");
    let (status, booked) = d.create_booking(&b).await;
    assert_eq!(status, 201, "{booked}");
    assert_eq!(starts(&slots(&d, &q).await, &date.to_string()), ["09:00", "10:30", "11:00", "11:30"].map(at));

    // Booking from the slot: 11:00.
    let guest =
        json!({"display_name": "J. Doe", "email": "jd@example.org", "time_zone": "Europe/Madrid", "locale": "es"});
    let (status, made) = api(
        &d,
        "POST",
        &format!("/v1/event-types/{eid}/bookings"),
        Some(json!({"start_at": "2000-01-01T00:00:00Z", "guest": guest})),
    )
    .await;
    assert_eq!((status, made["error"].as_str()), (409, Some("slot_unavailable")), "a past start: {made}");
    let (status, made) = api(
        &d,
        "POST",
        &format!("/v1/event-types/{eid}/bookings"),
        Some(json!({"start_at": at("11:00"), "guest": guest, "note": "knee\nagain"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!((made["status"].as_str(), made["title"].as_str()), (Some("confirmed"), Some("Consultation")));
    assert_eq!(
        (made["start_at"].as_str(), made["end_at"].as_str()),
        (Some(at("11:00").as_str()), Some(at("11:30").as_str()))
    );
    assert_eq!((made["buffer_before_s"].as_i64(), made["buffer_after_s"].as_i64()), (Some(0), Some(900)));
    let h = participant(&made, "host");
    assert_eq!(
        (h["ref"].as_str(), h["display_name"].as_str(), h["time_zone"].as_str()),
        (Some("physio"), Some("Dr. physio"), Some("UTC"))
    );
    let g = participant(&made, "guest");
    assert_eq!((g["email"].as_str(), g["locale"].as_str()), (Some("jd@example.org"), Some("es")));
    assert!(g["link_token"].is_string() && h["join_url"].is_string(), "links shown once: {made}");
    // 10:30 ends at 11:00, its buffer runs into the 11:00 booking; 11:30 starts within that booking's buffer.
    assert_eq!(starts(&slots(&d, &q).await, &date.to_string()), [at("09:00")]);
    let (status, again) = api(
        &d,
        "POST",
        &format!("/v1/event-types/{eid}/bookings"),
        Some(json!({"start_at": at("11:00"), "guest": guest})),
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str(), again["field"].as_str()),
        (409, Some("slot_unavailable"), Some("start_at"))
    );
    let (status, off) = api(
        &d,
        "POST",
        &format!("/v1/event-types/{eid}/bookings"),
        Some(json!({"start_at": at("09:10"), "guest": guest})),
    )
    .await;
    assert_eq!((status, off["error"].as_str()), (409, Some("slot_unavailable")), "not on the grid: {off}");

    // A retry with the same Idempotency-Key replays the booking instead of finding its own slot taken.
    let retry = || {
        d.client()
            .post(d.url(&format!("/v1/event-types/{eid}/bookings")))
            .bearer_auth(&d.api_key)
            .header("Idempotency-Key", "slot-retry-1")
            .json(&json!({"start_at": at("09:00"), "guest": {"display_name": "Retry"}}))
            .send()
    };
    let first = retry().await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let first: Value = first.json().await.unwrap();
    let second = retry().await.unwrap();
    assert_eq!(second.status().as_u16(), 201);
    assert_eq!(second.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    let (status, _) = common::cancel_booking(&d, first["id"].as_str().unwrap()).await;
    assert_eq!(status, 200);

    // Cancelling frees the slots again.
    let (status, _) = common::cancel_booking(&d, made["id"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(starts(&slots(&d, &q).await, &date.to_string()), ["09:00", "10:30", "11:00", "11:30"].map(at));

    // An event type that requires confirmation books `pending`, an external-link one carries its URL.
    let p = event_type(
        &d,
        "physio",
        &s,
        "confirm",
        json!({"requires_confirmation": true, "kind": "external_link",
        "external_url": "https://meet.example.com/physio"}),
    )
    .await;
    let (status, pending) = api(
        &d,
        "POST",
        &format!("/v1/event-types/{}/bookings", p["id"].as_str().unwrap()),
        Some(json!({"start_at": at("09:00"), "guest": {"display_name": "A"}})),
    )
    .await;
    assert_eq!(status, 201, "{pending}");
    assert_eq!(
        (pending["status"].as_str(), pending["kind"].as_str(), pending["external_url"].as_str()),
        (Some("pending"), Some("external_link"), Some("https://meet.example.com/physio"))
    );
    // A pending booking blocks the host too.
    assert_eq!(starts(&slots(&d, &q).await, &date.to_string()), ["10:30", "11:00", "11:30"].map(at));
    // Bad guest input names the member.
    let (status, bad) = api(
        &d,
        "POST",
        &format!("/v1/event-types/{eid}/bookings"),
        Some(json!({"start_at": at("11:30"), "guest": {"display_name": "A", "time_zone": "Nowhere/City"}})),
    )
    .await;
    assert_eq!(
        (status, bad["error"].as_str(), bad["field"].as_str()),
        (422, Some("invalid_time_zone"), Some("guest.time_zone")),
        "{bad}"
    );
}

/// Minimum notice hides the next hours; `max_per_day` closes a local date once it holds that many bookings of the
/// event type.
async fn minimum_notice_and_max_per_day(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    host(&d, "nurse", "Europe/Berlin").await;
    let s = every_day(&d, "nurse", "Europe/Berlin", json!([{"start": "00:00", "end": "24:00"}])).await;
    event_type(&d, "nurse", &s, "soon", json!({"minimum_notice_minutes": 180})).await;
    let now = utc_now();
    let from = now.format("%Y-%m-%dT%H:%M:%SZ");
    let to = (now + Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let answer = slots(&d, &format!("host_ref=nurse&event_type=soon&from={from}&to={to}")).await;
    let first = answer["days"][0]["slots"][0]["start_at"].as_str().unwrap();
    let first = chrono::DateTime::parse_from_rfc3339(first).unwrap().timestamp();
    let earliest = now.timestamp() + 180 * 60;
    // The first offered start is the first half hour at or after now + 3 h (Berlin's offset is whole hours).
    assert!(first >= earliest - 2 && first < earliest + 1800, "first {first}, earliest {earliest}");
    assert_eq!(first % 1800, 0);

    let e = event_type(&d, "nurse", &s, "daily", json!({"max_per_day": 2, "duration_minutes": 60})).await;
    let eid = e["id"].as_str().unwrap();
    // A date (and its next) with 24 wall-clock hours in Berlin: Berlin changes clocks only in March and October.
    let mut date = (now + Duration::days(20)).date_naive();
    while [3, 10].contains(&date.month()) || [3, 10].contains(&date.succ_opt().unwrap().month()) {
        date += Duration::days(7);
    }
    let q = format!(
        "host_ref=nurse&event_type=daily&from={}T00:00:00Z&to={}T00:00:00Z",
        date - Duration::days(1),
        date + Duration::days(3)
    );
    let before = slots(&d, &q).await;
    assert_eq!(day(&before, &date.to_string()).len(), 24, "{before}");
    let next = date.succ_opt().unwrap().to_string();
    assert_eq!(day(&before, &next).len(), 24);
    // Two bookings of the date (Berlin 10:00 and 23:00, the latter on the next UTC date) fill it.
    let guest = json!({"display_name": "G"});
    for hm in ["10:00", "23:00"] {
        let start = day(&before, &date.to_string()).iter().find(|s| s["local_time"] == hm).unwrap()["start_at"].clone();
        let (status, b) = api(
            &d,
            "POST",
            &format!("/v1/event-types/{eid}/bookings"),
            Some(json!({"start_at": start, "guest": guest})),
        )
        .await;
        assert_eq!(status, 201, "{b}");
        assert_eq!(b["status"], "confirmed");
        if hm == "10:00" {
            // After one booking the date still has the others (minus the booked hour).
            assert_eq!(day(&slots(&d, &q).await, &date.to_string()).len(), 23);
        }
    }
    let after = slots(&d, &q).await;
    assert!(day(&after, &date.to_string()).is_empty(), "{after}");
    // The next date is not limited by it.
    assert_eq!(day(&after, &next).len(), 24);
    let start = day(&before, &date.to_string())[5]["start_at"].clone();
    let (status, full) =
        api(&d, "POST", &format!("/v1/event-types/{eid}/bookings"), Some(json!({"start_at": start, "guest": guest})))
            .await;
    assert_eq!((status, full["error"].as_str()), (409, Some("slot_unavailable")), "{full}");
    // Another event type of the host is not limited, but the host is busy at the booked hours.
    let other = slots(
        &d,
        &format!("host_ref=nurse&event_type=soon&from={date}T00:00:00Z&to={}T00:00:00Z", date + Duration::days(1)),
    )
    .await;
    let berlin_day: usize = other["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["date"] == date.to_string())
        .map(|x| x["slots"].as_array().unwrap().len())
        .sum();
    assert!(berlin_day > 0 && berlin_day < 48, "{berlin_day}");
}

/// Bad queries of `GET /v1/slots` get their status and code, never a 5xx.
async fn slot_query_errors(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    host(&d, "h", "UTC").await;
    let s = every_day(&d, "h", "UTC", json!([{"start": "09:00", "end": "10:00"}])).await;
    event_type(&d, "h", &s, "e", json!({})).await;
    for (q, status, code) in [
        ("host_ref=h&event_type=e&from=2030-01-01T00:00:00Z&to=2030-03-05T00:00:00Z", 400, "range_too_long"),
        ("host_ref=h&event_type=e&from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", 422, "invalid_field"),
        ("host_ref=h&event_type=e&from=2030-01-01T00:00:00", 422, "invalid_datetime"),
        ("host_ref=h&event_type=e&time_zone=Mars/Base", 422, "invalid_time_zone"),
        ("host_ref=h&event_type=e&colour=red", 400, "invalid_request"),
        ("host_ref=h", 400, "invalid_request"),
        ("host_ref=nobody&event_type=e", 404, "not_found"),
        ("host_ref=h&event_type=nope", 404, "not_found"),
        ("host_ref=h%00&event_type=e", 404, "not_found"),
    ] {
        let (got, body) = api(&d, "GET", &format!("/v1/slots?{q}"), None).await;
        assert_eq!((got, body["error"].as_str()), (status, Some(code)), "{q}: {body}");
    }
    // Exactly 62 days is fine; the event type's id works as well as its slug.
    let (_, list) = api(&d, "GET", "/v1/event-types?host_ref=h", None).await;
    let id = list["event_types"][0]["id"].as_str().unwrap();
    let (got, body) = api(
        &d,
        "GET",
        &format!(
            "/v1/slots?host_ref=h&event_type={id}&to={}",
            (utc_now() + Duration::days(62)).format("%Y-%m-%dT%H:%M:%SZ")
        ),
        None,
    )
    .await;
    assert_eq!(got, 200, "{body}");
    assert!(body["days"].as_array().unwrap().len() >= 60, "{body}");
}

on_both_backends!(
    hosts_crud_and_isolation,
    schedules_and_event_types,
    dst_days_in_two_zones,
    schedule_in_another_zone,
    booked_slots_disappear,
    minimum_notice_and_max_per_day,
    slot_query_errors,
);
