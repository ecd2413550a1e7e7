//! The booking page, the guest's manage page and the host agenda (README, "Booking page and agenda") against the
//! real daemon, on SQLite and PostgreSQL: free times in the asked zone, form posts refused without a valid form token
//! or from another origin (nothing booked), a booking by form post (303 to the manage page, the slot gone for the
//! next visitor), the per-client booking limit (429), cancel and reschedule from the manage page and their refusal
//! inside the notice, the agenda's day, its cancel and its host join, 404 for other tenants and wrong secrets, and
//! HTML escaping.

mod common;

use chrono::{Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use common::{Backend, Daemon};

/// Bookings up to two years ahead; the booking limit high unless a test lowers it.
const CONFIG: &str = "[booking]\nhorizon = \"800d\"\n";

const TENANT: &str = "ten_default";

/// A client that does not follow redirects (the 303s are what is checked).
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = client();
    let req = match method {
        "GET" => c.get(d.url(path)),
        "POST" => c.post(d.url(path)),
        "PATCH" => c.patch(d.url(path)).header("If-Match", "*"),
        _ => unreachable!("{method}"),
    };
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let r = req.bearer_auth(&d.api_key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A host in `zone` named `name`, a schedule of `from`-`to` local every day, and a 30-minute event type `slug`
/// (no minimum notice); (host secret, event type id).
async fn setup(
    d: &Daemon,
    reference: &str,
    name: &str,
    zone: &str,
    from: &str,
    to: &str,
    slug: &str,
) -> (String, String) {
    let body = json!({"ref": reference, "display_name": name, "time_zone": zone});
    let (status, h) = api(d, "POST", "/v1/hosts", Some(body)).await;
    assert_eq!(status, 201, "{h}");
    let days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let weekly: Vec<Value> =
        days.iter().map(|day| json!({"day": day, "intervals": [{"start": from, "end": to}]})).collect();
    let (status, s) = api(
        d,
        "POST",
        &format!("/v1/hosts/{reference}/schedules"),
        Some(json!({"name": "hours", "time_zone": zone, "weekly": weekly})),
    )
    .await;
    assert_eq!(status, 201, "{s}");
    let body = json!({"host_ref": reference, "schedule_id": s["id"], "slug": slug, "title": "Consultation",
                      "duration_minutes": 30, "minimum_notice_minutes": 0, "horizon_days": 730});
    let (status, e) = api(d, "POST", "/v1/event-types", Some(body)).await;
    assert_eq!(status, 201, "{e}");
    (h["secret"].as_str().unwrap().to_string(), e["id"].as_str().unwrap().to_string())
}

/// GET `path`; (status, headers, body).
async fn get(d: &Daemon, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client().get(d.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// POSTs `fields` as a form to `path` with `origin` (none when `None`); (status, Location, body).
async fn post_form(d: &Daemon, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> (u16, String, String) {
    let body: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    let mut req = client().post(d.url(path)).header("content-type", "application/x-www-form-urlencoded").body(body);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, location, r.text().await.unwrap())
}

/// This daemon's origin, as a browser on its pages sends it.
fn origin(d: &Daemon) -> String {
    format!("http://{}", d.http)
}

/// The slot starts (Unix seconds) a page offers, in order.
fn starts(html: &str) -> Vec<i64> {
    html.split("&amp;start=").skip(1).filter_map(|s| s.split('"').next()?.parse().ok()).collect()
}

/// The `HH:MM` labels of the slot links under the day heading `heading` (up to the next heading).
fn times_on(html: &str, heading: &str) -> Vec<String> {
    let Some(section) = html.split(&format!("<h3>{heading}</h3>")).nth(1) else { return Vec::new() };
    let section = section.split("<h3>").next().unwrap_or("");
    section
        .split("class=\"slot\"")
        .skip(1)
        .filter_map(|s| Some(s.split_once('>')?.1.split('<').next()?.to_string()))
        .collect()
}

/// The value of the first hidden `token` field after `after` in `html`.
fn token(html: &str, after: &str) -> String {
    let rest = html.split_once(after).map_or(html, |(_, r)| r);
    let v = rest.split("name=\"token\" value=\"").nth(1).expect("a form token");
    v.split('"').next().unwrap().to_string()
}

/// The booking page path of event type `slug` of host `reference`.
fn page_path(reference: &str, slug: &str) -> String {
    format!("/book/{TENANT}/{reference}/{slug}")
}

/// Books `start` through the page as a browser would (form page, then POST with this origin); (status, Location).
async fn book(d: &Daemon, path: &str, start: i64, name: &str) -> (u16, String) {
    let (status, _, form) = get(d, &format!("{path}?start={start}")).await;
    assert_eq!(status, 200, "{form}");
    let t = token(&form, "<form");
    let s = start.to_string();
    let fields = [
        ("token", t.as_str()),
        ("start", &s),
        ("tz", "Europe/Berlin"),
        ("name", name),
        ("email", "guest@example.org"),
        ("note", ""),
    ];
    let (status, location, body) = post_form(d, path, &fields, Some(&origin(d))).await;
    assert!(status == 303 || status >= 400, "{status}: {body}");
    (status, location)
}

/// The bookings of the tenant.
async fn bookings(d: &Daemon) -> Vec<Value> {
    let (status, list) = api(d, "GET", "/v1/bookings?limit=100", None).await;
    assert_eq!(status, 200, "{list}");
    list["bookings"].as_array().cloned().unwrap_or_default()
}

/// Now, Unix seconds.
fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The local date `days` after today in `tz`.
fn date_in(tz: Tz, days: u64) -> NaiveDate {
    Utc.timestamp_opt(now_s(), 0).unwrap().with_timezone(&tz).date_naive() + Days::new(days)
}

fn heading(d: NaiveDate) -> String {
    d.format("%A %-d %B %Y").to_string()
}

async fn page_lists_slots_in_the_asked_zone(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    setup(&d, "dr-a", "Dr. A", "Europe/Berlin", "09:00", "12:00", "consult").await;
    let path = page_path("dr-a", "consult");
    let ny: Tz = "America/New_York".parse().unwrap();
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let day = date_in(ny, 30);
    // What the schedule gives on `day` in New York: the Berlin starts of the dates around it, seen from there.
    let mut expected = Vec::new();
    for bd in [day.pred_opt().unwrap(), day, day.succ_opt().unwrap()] {
        for m in (9 * 60..12 * 60).step_by(30) {
            let t = berlin.from_local_datetime(&bd.and_hms_opt(m / 60, m % 60, 0).unwrap()).earliest().unwrap();
            let local = t.with_timezone(&ny);
            if local.date_naive() == day {
                expected.push(local.format("%H:%M").to_string());
            }
        }
    }
    assert!(!expected.is_empty());
    let (status, headers, html) = get(&d, &format!("{path}?tz=America/New_York&from={day}")).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(times_on(&html, &heading(day)), expected, "{html}");
    assert!(html.contains("Consultation") && html.contains("Dr. A") && html.contains("30 minutes"), "{html}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    assert!(html.contains("<option selected>America/New_York</option>"), "the zone selector shows the zone");
    // Without `tz`: the host's zone, wall times as in the schedule.
    let bday = date_in(berlin, 30);
    let (_, _, html) = get(&d, &format!("{path}?from={bday}")).await;
    assert_eq!(times_on(&html, &heading(bday)), ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]);
    // A later page starts where the navigation says.
    assert!(html.contains(&format!("from={}", bday + Days::new(7))), "later days link");
    // A zone that is not IANA: 400 page.
    let (status, _, _) = get(&d, &format!("{path}?tz=Mars/Olympus")).await;
    assert_eq!(status, 400);
    // The last date chrono knows (date arithmetic past it would panic) and other far dates: a 400 page, and the
    // daemon still serves.
    for from in ["%2B262142-12-31", "9999-12-31"] {
        let (status, _, html) = get(&d, &format!("{path}?from={from}")).await;
        assert_eq!(status, 400, "from={from}: {html}");
    }
    let (status, _, _) = get(&d, &path).await;
    assert_eq!(status, 200);
}

async fn form_posts_need_token_and_origin(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    setup(&d, "dr-b", "Dr. B", "Europe/Berlin", "09:00", "17:00", "consult").await;
    let path = page_path("dr-b", "consult");
    let (_, _, html) = get(&d, &format!("{path}?from={}", date_in("Europe/Berlin".parse().unwrap(), 3))).await;
    let offered = starts(&html);
    let (slot, other) = (offered[0], offered[1]);
    let (_, _, form) = get(&d, &format!("{path}?start={slot}")).await;
    let good = token(&form, "<form");
    let s = slot.to_string();
    let me = origin(&d);
    let fields = |t: &str| {
        vec![
            ("token", t.to_string()),
            ("start", s.clone()),
            ("tz", "Europe/Berlin".into()),
            ("name", "Ann".into()),
            ("email", "ann@example.org".into()),
        ]
    };
    let as_refs = |v: &Vec<(&'static str, String)>| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    let send = |f: Vec<(&'static str, String)>, o: Option<String>| {
        let d = &d;
        let path = path.clone();
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(d, &path, &f, o.as_deref()).await
        }
    };
    // No token, a tampered one, one for another slot, and a good one from another site: 403, nothing booked.
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    let (_, _, other_form) = get(&d, &format!("{path}?start={other}")).await;
    let other_token = token(&other_form, "<form");
    for (what, t, o) in [
        ("no token", String::new(), Some(me.clone())),
        ("tampered token", tampered, Some(me.clone())),
        ("another slot's token", other_token, Some(me.clone())),
        ("foreign origin", good.clone(), Some("https://evil.example".to_string())),
        ("null origin", good.clone(), Some("null".to_string())),
    ] {
        let (status, _, body) = send(as_refs(&fields(&t)), o).await;
        assert_eq!(status, 403, "{what}: {body}");
    }
    assert!(bookings(&d).await.is_empty(), "a refused post booked something");
    // A bad field: the form again (422), nothing booked.
    let mut bad = fields(&good);
    bad[4].1 = "not-an-email".into();
    let (status, _, body) = send(bad, Some(me.clone())).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("aria-invalid=\"true\""), "{body}");
    assert!(bookings(&d).await.is_empty());
    // The good post: 303 to the manage page; the booking exists, confirmed, with the guest's zone.
    let (status, location, body) = send(fields(&good), Some(me.clone())).await;
    assert_eq!(status, 303, "{body}");
    assert!(location.starts_with("/manage/"), "{location}");
    let all = bookings(&d).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], "confirmed");
    let (status, headers, manage) = get(&d, &location).await;
    assert_eq!(status, 200, "{manage}");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    let link = location.trim_start_matches("/manage/");
    assert!(manage.contains(&format!("href=\"/j/{link}\"")), "join link");
    assert!(manage.contains(&format!("href=\"/v1/join/{link}/invite.ics\"")), "calendar link");
    assert!(manage.contains("Confirmed."), "{manage}");
    // The slot is gone for the next visitor, whose form page for it says so (409).
    let (_, _, html) = get(&d, &format!("{path}?from={}", date_in("Europe/Berlin".parse().unwrap(), 3))).await;
    assert!(!starts(&html).contains(&slot), "the booked slot is still offered");
    assert!(starts(&html).contains(&other));
    let (status, _, _) = get(&d, &format!("{path}?start={slot}")).await;
    assert_eq!(status, 409);
    // Replaying the good post: the slot is taken (409), still one booking.
    let (status, _, _) = send(fields(&good), Some(me)).await;
    assert_eq!(status, 409);
    assert_eq!(bookings(&d).await.len(), 1);
}

async fn pending_event_type_and_rate_limit(backend: Backend) {
    let config = format!("{CONFIG}[booking_page]\nbookings_per_hour = 2\n");
    let Some(d) = Daemon::start_on(backend, &config) else { return };
    let (_, evt) = setup(&d, "dr-c", "Dr. C", "Europe/Berlin", "09:00", "17:00", "consult").await;
    let (status, e) =
        api(&d, "PATCH", &format!("/v1/event-types/{evt}"), Some(json!({"requires_confirmation": true}))).await;
    assert_eq!(status, 200, "{e}");
    let path = page_path("dr-c", "consult");
    let (_, _, html) = get(&d, &format!("{path}?from={}", date_in("Europe/Berlin".parse().unwrap(), 2))).await;
    let offered = starts(&html);
    let (status, location) = book(&d, &path, offered[0], "First").await;
    assert_eq!(status, 303);
    let (_, _, manage) = get(&d, &location).await;
    assert!(manage.contains("Waiting for confirmation from Dr. C."), "{manage}");
    assert_eq!(bookings(&d).await[0]["status"], "pending");
    assert_eq!(book(&d, &path, offered[1], "Second").await.0, 303);
    let (status, _) = book(&d, &path, offered[2], "Third").await;
    assert_eq!(status, 429, "the third booking of the hour from one address");
    assert_eq!(bookings(&d).await.len(), 2);
}

async fn manage_cancel_and_reschedule(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    setup(&d, "dr-d", "Dr. D", "Europe/Berlin", "00:00", "24:00", "consult").await;
    let path = page_path("dr-d", "consult");
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let (_, _, html) = get(&d, &format!("{path}?from={}", date_in(berlin, 5))).await;
    let offered = starts(&html);
    let (_, location) = book(&d, &path, offered[0], "Ben").await;
    let me = origin(&d);
    // Reschedule: the page lists free times as forms; moving keeps the id and the duration.
    let (status, _, resched) = get(&d, &format!("{location}/reschedule?from={}", date_in(berlin, 6))).await;
    assert_eq!(status, 200, "{resched}");
    let target: i64 =
        resched.split("name=\"start\" value=\"").nth(3).unwrap().split('"').next().unwrap().parse().unwrap();
    let form_of_target = resched.split("<form").find(|f| f.contains(&format!("value=\"{target}\""))).unwrap();
    let tok = token(form_of_target, "");
    let ts = target.to_string();
    let (status, back, body) =
        post_form(&d, &format!("{location}/reschedule"), &[("token", &tok), ("start", &ts)], Some(&me)).await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(back, location);
    let b = &bookings(&d).await[0];
    assert_eq!(b["start_at"], Utc.timestamp_opt(target, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string());
    assert_eq!(b["sequence"], 1);
    // A token for one time does not move the booking to another.
    let other = (target + 3600).to_string();
    let (status, _, _) =
        post_form(&d, &format!("{location}/reschedule"), &[("token", &tok), ("start", &other)], Some(&me)).await;
    assert_eq!(status, 403);
    // Cancel from the manage page.
    let (_, _, manage) = get(&d, &location).await;
    let tok = token(&manage, "class=\"cancel\"");
    let (status, _, _) =
        post_form(&d, &format!("{location}/cancel"), &[("token", &tok)], Some("https://evil.example")).await;
    assert_eq!(status, 403);
    assert_eq!(bookings(&d).await[0]["status"], "confirmed");
    let (status, back, _) = post_form(&d, &format!("{location}/cancel"), &[("token", &tok)], Some(&me)).await;
    assert_eq!((status, back.as_str()), (303, location.as_str()));
    assert_eq!(bookings(&d).await[0]["status"], "cancelled");
    let (_, _, manage) = get(&d, &location).await;
    assert!(manage.contains("Cancelled.") && !manage.contains("class=\"cancel\""), "{manage}");

    // Inside the notice (24 h): the page offers no change, and a form token taken earlier is refused.
    let (_, _, html) = get(&d, &format!("{path}?from={}", date_in(berlin, 8))).await;
    let (_, location) = book(&d, &path, starts(&html)[0], "Cleo").await;
    let (_, _, manage) = get(&d, &location).await;
    let tok = token(&manage, "class=\"cancel\"");
    let id =
        bookings(&d).await.iter().find(|b| b["status"] == "confirmed").unwrap()["id"].as_str().unwrap().to_string();
    let soon = now_s() + 3 * 3600;
    let soon = soon - soon % 1800;
    let body = json!({"start_at": Utc.timestamp_opt(soon, 0).unwrap().to_rfc3339(),
                      "end_at": Utc.timestamp_opt(soon + 1800, 0).unwrap().to_rfc3339()});
    let (status, patched) = api(&d, "PATCH", &format!("/v1/bookings/{id}"), Some(body)).await;
    assert_eq!(status, 200, "{patched}");
    let (_, _, manage) = get(&d, &location).await;
    assert!(manage.contains("id=\"too-late\"") && !manage.contains("class=\"cancel\""), "{manage}");
    let (status, _, _) = post_form(&d, &format!("{location}/cancel"), &[("token", &tok)], Some(&me)).await;
    assert_eq!(status, 409);
    let (status, _, _) = get(&d, &format!("{location}/reschedule")).await;
    assert_eq!(status, 409);
    let (status, b) = api(&d, "GET", &format!("/v1/bookings/{id}"), None).await;
    assert_eq!((status, b["status"].as_str()), (200, Some("confirmed")));
    // A link that is not a guest's: 404.
    let (status, _, _) = get(&d, "/manage/not-a-link").await;
    assert_eq!(status, 404);
}

async fn agenda_day_cancel_and_join(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let (secret, _) = setup(&d, "dr-e", "Dr. E", "Europe/Berlin", "00:00", "24:00", "consult").await;
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let path = page_path("dr-e", "consult");
    let day = date_in(berlin, 4);
    let (_, _, html) = get(&d, &format!("{path}?from={day}")).await;
    let slot = starts(&html)
        .into_iter()
        .find(|t| Utc.timestamp_opt(*t, 0).unwrap().with_timezone(&berlin).date_naive() == day)
        .unwrap();
    book(&d, &path, slot, "Dana <b>").await;
    let id = bookings(&d).await[0]["id"].as_str().unwrap().to_string();
    let (status, headers, agenda) = get(&d, &format!("/agenda/{secret}?date={day}")).await;
    assert_eq!(status, 200, "{agenda}");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(agenda.contains(&format!("data-booking=\"{id}\"")), "{agenda}");
    assert!(agenda.contains("Dana &lt;b&gt;") && !agenda.contains("Dana <b>"), "escaped guest name");
    let hhmm = Utc.timestamp_opt(slot, 0).unwrap().with_timezone(&berlin).format("%H:%M").to_string();
    assert!(agenda.contains(&hhmm), "{agenda}");
    assert!(agenda.contains(&format!("href=\"?date={}\"", day.succ_opt().unwrap())), "next day link");
    let (_, _, next) = get(&d, &format!("/agenda/{secret}?date={}", day.succ_opt().unwrap())).await;
    assert!(next.contains("id=\"empty\"") && !next.contains(&id), "{next}");
    // Cancel from the agenda: refused from another origin, done from this one.
    let row = agenda.split(&format!("data-booking=\"{id}\"")).nth(1).unwrap();
    let tok = token(row, "");
    let cancel = format!("/agenda/{secret}/cancel/{id}");
    let (status, _, _) = post_form(&d, &cancel, &[("token", &tok)], Some("https://evil.example")).await;
    assert_eq!(status, 403);
    let (status, _, _) = post_form(&d, &cancel, &[("token", "1.AAAA")], Some(&origin(&d))).await;
    assert_eq!(status, 403);
    let (status, back, _) = post_form(&d, &cancel, &[("token", &tok)], Some(&origin(&d))).await;
    assert_eq!((status, back), (303, format!("/agenda/{secret}?date={day}")));
    assert_eq!(bookings(&d).await[0]["status"], "cancelled");
    // Join as host from the agenda: a booking of the host starting in a minute.
    let start = now_s() + 60;
    let body = json!({"title": "Now", "start_at": Utc.timestamp_opt(start, 0).unwrap().to_rfc3339(),
                      "end_at": Utc.timestamp_opt(start + 1800, 0).unwrap().to_rfc3339(),
                      "participants": [{"role": "host", "ref": "dr-e", "display_name": "Dr. E"},
                                       {"role": "guest", "display_name": "Gus"}]});
    let (status, now) = api(&d, "POST", "/v1/bookings", Some(body)).await;
    assert_eq!(status, 201, "{now}");
    let now_id = now["id"].as_str().unwrap();
    let (_, _, today) = get(&d, &format!("/agenda/{secret}")).await;
    assert!(today.contains(&format!("href=\"/agenda/{secret}/call/{now_id}\"")), "{today}");
    let (status, headers, page) = get(&d, &format!("/agenda/{secret}/call/{now_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-security-policy"], duet::daemon::JOIN_PAGE_CSP);
    assert!(page.contains("/join.js"));
    let r = client().post(d.url(&format!("/agenda/{secret}/join/{now_id}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["role"], "host", "{j}");
    assert!(j["session_token"].as_str().is_some_and(|t| !t.is_empty()), "{j}");
    assert_eq!(j["booking"]["id"], now_id);
    // The cancelled booking: the join rules answer (410), not the agenda.
    let r = client().post(d.url(&format!("/agenda/{secret}/join/{id}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 410);
    // A wrong secret, or a booking of another host: 404.
    let (status, _, _) = get(&d, "/agenda/hs_wrong").await;
    assert_eq!(status, 404);
    let (other_secret, _) = setup(&d, "dr-f", "Dr. F", "Europe/Berlin", "09:00", "17:00", "consult").await;
    let r = client().post(d.url(&format!("/agenda/{other_secret}/join/{now_id}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (status, _, _) = get(&d, &format!("/agenda/{other_secret}/call/{now_id}")).await;
    assert_eq!(status, 404);
}

async fn other_tenants_and_escaping(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    setup(&d, "dr-x", "<script>alert(1)</script> & Co", "Europe/Berlin", "09:00", "17:00", "consult").await;
    let (status, _, html) = get(&d, &page_path("dr-x", "consult")).await;
    assert_eq!(status, 200);
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co"), "{html}");
    assert!(!html.contains("<script>alert"), "{html}");
    let (status, t) = api(&d, "POST", "/v1/admin/tenants", Some(json!({"name": "other"}))).await;
    assert_eq!(status, 201, "{t}");
    let other = t["id"].as_str().unwrap();
    for path in [
        format!("/book/{other}/dr-x/consult"),
        format!("/book/{TENANT}/dr-x/nope"),
        format!("/book/{TENANT}/nobody/consult"),
        "/book/ten_nope/dr-x/consult".to_string(),
    ] {
        let (status, headers, body) = get(&d, &path).await;
        assert_eq!(status, 404, "{path}");
        assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"), "{body}");
    }
    // A post to another tenant's path books nothing there.
    let (status, _, _) = post_form(&d, &format!("/book/{other}/dr-x/consult"), &[("token", "x")], None).await;
    assert_eq!(status, 404);
}

on_both_backends!(
    page_lists_slots_in_the_asked_zone,
    form_posts_need_token_and_origin,
    pending_event_type_and_rate_limit,
    manage_cancel_and_reschedule,
    agenda_day_cancel_and_join,
    other_tenants_and_escaping,
);
