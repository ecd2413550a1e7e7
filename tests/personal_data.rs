//! Personal data (issue 13), on SQLite and on PostgreSQL: a booking past its retention time loses its personal
//! fields (API and database) and keeps its figures, and a second purge run changes nothing, while a tenant with a
//! longer retention keeps its booking; an erasure by email removes the person from three bookings, two webhook
//! deliveries and a call report, their links answer 404, a `data_subject.erased` event carries only counts, and the
//! export before lists exactly what the test created; another tenant's key erases and sees nothing; `duet erase`
//! does what the API does.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection, Row};

use common::webhook_receiver::Receiver;
use common::{Backend, Daemon, booking_body, participant, run_duet};

crate::on_both_backends!(
    retention_purges_personal_data_and_keeps_figures,
    erasure_by_email_removes_the_person_everywhere,
    the_cli_erases_like_the_api,
);

/// Receivers on 127.0.0.1 may be endpoints; personal data is kept 1 s after the hard end; the purge runs every
/// 200 ms.
const CONFIG: &str = "[webhooks]\nallow_private = [\"127.0.0.0/8\"]\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n\
                      [retention]\npersonal_data = \"1s\"\ninterval = \"200ms\"\n";

/// One API request with `key`; (status, body).
async fn call(d: &Daemon, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = d.client().request(method.parse().unwrap(), d.url(path)).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A direct connection to the daemon's database (to check what the API does not show, e.g. webhook payloads).
async fn db(d: &Daemon, backend: Backend) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", d.data_dir.join("duet.sqlite3").display()),
        Backend::Postgres => d.db.as_ref().unwrap().url.clone(),
    };
    sqlx::AnyConnection::connect(&url).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// Every stored text of booking `id` that may carry personal data: the booking row, its participants, its webhook
/// payloads, its browser summaries, its idempotency records and email rows, as one JSON value.
async fn stored(c: &mut sqlx::AnyConnection, id: &str) -> Value {
    let b = sqlx::query(
        "SELECT title, note, metadata, external_id, host_ref, purged_at, start_at, end_at, hard_end_at, status \
         FROM bookings WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *c)
    .await
    .unwrap();
    let opt = |name: &str| b.try_get::<Option<String>, _>(name).unwrap();
    let booking = json!({
        "title": b.try_get::<String, _>("title").unwrap(), "note": opt("note"), "metadata": opt("metadata"),
        "external_id": opt("external_id"), "host_ref": opt("host_ref"),
        "purged_at": b.try_get::<Option<i64>, _>("purged_at").unwrap(),
        "times": [b.try_get::<i64, _>("start_at").unwrap(), b.try_get::<i64, _>("end_at").unwrap(),
                  b.try_get::<i64, _>("hard_end_at").unwrap()],
        "status": b.try_get::<String, _>("status").unwrap(),
    });
    let ps: Vec<Value> = sqlx::query(
        "SELECT id, display_name, ref, email, time_zone, locale, link_token_enc FROM participants \
         WHERE booking_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *c)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let s = |n: &str| r.try_get::<Option<String>, _>(n).unwrap();
        json!([s("id"), s("display_name"), s("ref"), s("email"), s("time_zone"), s("locale"), s("link_token_enc")])
    })
    .collect();
    let payloads = strings(c, "SELECT payload FROM webhook_deliveries WHERE booking_id = $1 ORDER BY id", id).await;
    let summaries = strings(c, "SELECT summary FROM call_client_reports WHERE booking_id = $1", id).await;
    let idem: i64 = sqlx::query("SELECT COUNT(*) FROM idempotency_keys WHERE booking_id = $1")
        .bind(id)
        .fetch_one(&mut *c)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    json!({"booking": booking, "participants": ps, "payloads": payloads, "summaries": summaries,
           "idempotency_records": idem})
}

/// The first column of `sql` (one parameter: `id`), as strings.
async fn strings(c: &mut sqlx::AnyConnection, sql: &str, id: &str) -> Vec<String> {
    sqlx::query(sql)
        .bind(id)
        .fetch_all(&mut *c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect()
}

/// Waits (20 s at most) until the admin metric `name` is at least `min`; returns it.
async fn metric_at_least(d: &Daemon, name: &str, min: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = common::metric(&d.metrics().await, name).unwrap_or(0.0);
        if v >= min {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {v} (< {min})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A booking body with distinctive personal data: the guest `guest_name` <`guest_email`> (ref `guest_ref`),
/// metadata with a remark and an external id; it starts `start_in_s` from now, lasts `len_s`, and its hard end is its end.
fn personal_booking(start_in_s: i64, len_s: i64, guest_name: &str, guest_email: &str, guest_ref: &str) -> Value {
    let mut b = booking_body(start_in_s, len_s);
    b["title"] = json!(format!("Therapy with {guest_name}"));
    b["metadata"] = json!({"patient_file": format!("file-of-{guest_ref}"), "remark": format!("{guest_name} asked about knee pain")});
    b["external_id"] = json!(format!("ext-{guest_ref}-{start_in_s}-{len_s}"));
    b["join_policy"] = json!({"overrun_grace_s": 0});
    b["participants"][0]["email"] = json!("dr.ana@clinic.example");
    b["participants"][1] = json!({"role": "guest", "ref": guest_ref, "display_name": guest_name,
                                  "email": guest_email, "time_zone": "Europe/Berlin", "locale": "de-DE"});
    b
}

/// Creates a booking with `key`; its JSON (201 expected).
async fn create(d: &Daemon, key: &str, body: &Value) -> Value {
    let (status, b) = call(d, key, "POST", "/v1/bookings", Some(body.clone())).await;
    assert_eq!(status, 201, "create booking: {b}");
    b
}

fn link(b: &Value, role: &str) -> String {
    participant(b, role)["link_token"].as_str().expect("link_token").to_string()
}

/// A tenant with a `bookings:read bookings:write` key; (tenant id, key).
async fn tenant_with_key(d: &Daemon, name: &str) -> (String, String) {
    let (status, t) = call(d, &d.api_key, "POST", "/v1/admin/tenants", Some(json!({"name": name}))).await;
    assert_eq!(status, 201, "{t}");
    let tid = t["id"].as_str().unwrap().to_string();
    let req = json!({"tenant_id": tid, "scopes": ["bookings:read", "bookings:write"]});
    let (status, k) = call(d, &d.api_key, "POST", "/v1/admin/api-keys", Some(req)).await;
    assert_eq!(status, 201, "{k}");
    (tid, k["key"].as_str().unwrap().to_string())
}

async fn retention_purges_personal_data_and_keeps_figures(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let rx = Receiver::start().await;
    let (status, ep) =
        call(&d, &d.api_key, "POST", "/v1/webhook-endpoints", Some(json!({"url": rx.url("/hooks")}))).await;
    assert_eq!(status, 201, "{ep}");
    // Another tenant keeps personal data an hour after the hard end.
    let (other, other_key) = tenant_with_key(&d, "long retention").await;
    let (status, r) = call(
        &d,
        &d.api_key,
        "PUT",
        &format!("/v1/admin/tenants/{other}/retention"),
        Some(json!({"retention_s": 3600})),
    )
    .await;
    assert_eq!((status, &r), (200, &json!({"retention_s": 3600})));
    let (status, r) = call(&d, &d.api_key, "GET", &format!("/v1/admin/tenants/{other}/retention"), None).await;
    assert_eq!((status, &r), (200, &json!({"retention_s": 3600})));
    let (status, r) =
        call(&d, &d.api_key, "PUT", &format!("/v1/admin/tenants/{other}/retention"), Some(json!({"retention_s": -1})))
            .await;
    assert_eq!((status, &r["field"]), (422, &json!("retention_s")), "{r}");

    // Ends 4 s from now (hard end = end: no overrun grace); personal data goes 1 s later.
    let body = personal_booking(1, 3, "Rosa Retention", "rosa.retention@example.org", "patient:rosa");
    let b = create(&d, &d.api_key, &body).await;
    let id = b["id"].as_str().unwrap().to_string();
    let kept =
        create(&d, &other_key, &personal_booking(1, 3, "Karl Kept", "karl.kept@example.org", "patient:karl")).await;
    let kept_id = kept["id"].as_str().unwrap().to_string();
    // A browser summary of the guest, before the hard end.
    let summary = json!({"round_trip_time_ms": 42.0, "packet_loss": 0.01, "user_agent_family": "firefox",
                         "candidate_pair": {"local_type": "host", "remote_type": "srflx", "protocol": "udp"}});
    let r = d.client().post(d.url(&format!("/v1/join/{}/report", link(&b, "guest")))).json(&summary).send().await;
    assert_eq!(r.unwrap().status().as_u16(), 204);
    rx.wait_for(Duration::from_secs(10), "booking.created delivered", |h| {
        h.iter().any(|h| h.json()["data"]["id"] == id.as_str())
    })
    .await;
    let mut c = db(&d, backend).await;
    let before = stored(&mut c, &id).await;
    for v in ["Rosa Retention", "rosa.retention@example.org", "patient:rosa", "knee pain", "file-of-patient:rosa"] {
        assert!(before.to_string().contains(v), "{v} not stored before the purge: {before}");
    }
    let (_, report_before) = call(&d, &d.api_key, "GET", &format!("/v1/bookings/{id}/report"), None).await;

    metric_at_least(&d, "duet_retention_purged_bookings_total", 1.0).await;
    let after = stored(&mut c, &id).await;
    let text = after.to_string();
    for v in
        ["Rosa", "rosa.retention", "patient:rosa", "knee", "file-of", "ext-", "Berlin", "de-DE", "dr.ana", "firefox"]
    {
        assert!(!text.contains(v), "{v} still stored after the purge: {after}");
    }
    assert_eq!(after["booking"]["title"], "(purged)", "{after}");
    assert!(after["booking"]["purged_at"].is_i64(), "{after}");
    assert_eq!(after["booking"]["times"], before["booking"]["times"]);
    assert_eq!(after["booking"]["status"], before["booking"]["status"]);
    assert_eq!(after["idempotency_records"], 0);
    for p in after["participants"].as_array().unwrap() {
        assert_eq!(p, &json!([p[0], "(purged)", null, null, null, null, null]), "{after}");
    }
    let payloads = after["payloads"].as_array().unwrap();
    assert!(!payloads.is_empty());
    for p in payloads {
        let p: Value = serde_json::from_str(p.as_str().unwrap()).unwrap();
        assert_eq!(p["data"], json!({"booking_id": id, "purged": true}), "{p}");
    }
    // The API shows the same: times and status kept, personal fields gone, the link dead.
    let (status, got) = call(&d, &d.api_key, "GET", &format!("/v1/bookings/{id}"), None).await;
    assert_eq!(status, 200, "{got}");
    for k in ["start_at", "end_at", "window"] {
        assert_eq!(got[k], b[k], "{k}: {got}");
    }
    assert_eq!(participant(&got, "guest")["display_name"], "(purged)", "{got}");
    assert!(participant(&got, "guest").get("email").is_none_or(Value::is_null), "{got}");
    let (status, _, _) = d.join(&link(&b, "guest")).await;
    assert_eq!(status, 404);
    // The call report keeps its figures; the browser summary keeps only quality figures.
    let (status, report) = call(&d, &d.api_key, "GET", &format!("/v1/bookings/{id}/report"), None).await;
    assert_eq!(status, 200, "{report}");
    let guest_of =
        |r: &Value| r["participants"].as_array().unwrap().iter().find(|p| p["role"] == "guest").cloned().unwrap();
    let (g0, g1) = (guest_of(&report_before), guest_of(&report));
    assert_eq!(g1["browser_summary"], json!({"round_trip_time_ms": 42.0, "packet_loss": 0.01}), "{report}");
    for k in ["joined", "connected_ms", "relay_bytes_to_peer", "relay_bytes_to_client"] {
        assert_eq!(g0.get(k), g1.get(k), "{k}");
    }
    // The other tenant's booking ended at the same time but is kept for an hour.
    let kept_now = stored(&mut c, &kept_id).await;
    assert!(kept_now.to_string().contains("Karl Kept"), "{kept_now}");
    assert!(kept_now["booking"]["purged_at"].is_null(), "{kept_now}");

    // A second (and third) run changes nothing.
    let runs = metric_at_least(&d, "duet_retention_runs_total", 1.0).await;
    let purged = common::metric(&d.metrics().await, "duet_retention_purged_bookings_total").unwrap();
    metric_at_least(&d, "duet_retention_runs_total", runs + 2.0).await;
    assert_eq!(stored(&mut c, &id).await, after);
    assert_eq!(common::metric(&d.metrics().await, "duet_retention_purged_bookings_total").unwrap(), purged);
    let (_, again) = call(&d, &d.api_key, "GET", &format!("/v1/bookings/{id}"), None).await;
    assert_eq!(again, got);
}

async fn erasure_by_email_removes_the_person_everywhere(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let rx = Receiver::start().await;
    let (name, email, reference) = ("Erin Subject", "Erin.Subject@Example.org", "patient:erin");
    // Booking 1 before any endpoint; bookings 2 and 3 each give one booking.created delivery; a booking of someone
    // else gives a third delivery that is not about Erin.
    let b1 = create(&d, &d.api_key, &personal_booking(60, 1800, name, email, reference)).await;
    let (status, ep) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/webhook-endpoints",
        Some(json!({"url": rx.url("/created"), "event_types": ["booking.created"]})),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    let (status, ep2) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/webhook-endpoints",
        Some(json!({"url": rx.url("/erased"), "event_types": ["data_subject.erased"]})),
    )
    .await;
    assert_eq!(status, 201, "{ep2}");
    let b2 = create(&d, &d.api_key, &personal_booking(7200, 1800, name, email, reference)).await;
    let b3 = create(&d, &d.api_key, &personal_booking(14_400, 1800, name, email, reference)).await;
    let other =
        create(&d, &d.api_key, &personal_booking(60, 1800, "Olga Other", "olga@example.org", "patient:olga")).await;
    let ids: Vec<&str> = [&b1, &b2, &b3].iter().map(|b| b["id"].as_str().unwrap()).collect();
    let summary = json!({"round_trip_time_ms": 30.0, "user_agent_family": "chrome"});
    let r = d.client().post(d.url(&format!("/v1/join/{}/report", link(&b1, "guest")))).json(&summary).send().await;
    assert_eq!(r.unwrap().status().as_u16(), 204);

    // Bad selectors and scopes.
    for (body, status, code) in [
        (json!({}), 422, "missing_field"),
        (json!({"ref": reference, "email": email}), 422, "invalid_field"),
        (json!({"email": "not-an-address"}), 422, "invalid_field"),
        (json!({"ref": ""}), 422, "invalid_field"),
        (json!({"name": name}), 400, "invalid_request"),
    ] {
        for path in ["/v1/data-subjects/erase", "/v1/data-subjects/export"] {
            let (s, e) = call(&d, &d.api_key, "POST", path, Some(body.clone())).await;
            assert_eq!((s, e["error"].as_str()), (status, Some(code)), "{path} {body}: {e}");
        }
    }
    let (status, k) = call(
        &d,
        &d.api_key,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"tenant_id": "ten_default", "scopes": ["bookings:read"]})),
    )
    .await;
    assert_eq!(status, 201, "{k}");
    let (status, e) =
        call(&d, k["key"].as_str().unwrap(), "POST", "/v1/data-subjects/erase", Some(json!({"email": email}))).await;
    assert_eq!((status, e["error"].as_str()), (403, Some("insufficient_scope")), "{e}");

    // The export lists exactly what the test created.
    let by_email = json!({"email": "erin.subject@example.org"});
    let created_deliveries = rx
        .wait_for(Duration::from_secs(10), "three booking.created", |h| {
            h.iter().filter(|h| h.path == "/created").count() == 3
        })
        .await;
    let (status, export) = call(&d, &d.api_key, "POST", "/v1/data-subjects/export", Some(by_email.clone())).await;
    assert_eq!(status, 200, "{export}");
    let guest_ids: Vec<&str> =
        [&b1, &b2, &b3].iter().map(|b| participant(b, "guest")["id"].as_str().unwrap()).collect();
    // Sorted: bookings made in one second may come in any order.
    let got_ids = |k: &str, f: &str| -> Vec<String> {
        let mut v: Vec<String> =
            export[k].as_array().unwrap().iter().map(|v| v[f].as_str().unwrap().to_string()).collect();
        v.sort();
        v
    };
    let sorted = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(got_ids("participants", "id"), sorted(&guest_ids), "{export}");
    assert_eq!(got_ids("participants", "booking_id"), sorted(&ids));
    assert_eq!(got_ids("bookings", "id"), sorted(&ids));
    for (p, b) in export["participants"].as_array().unwrap().iter().zip(export["bookings"].as_array().unwrap()) {
        assert_eq!(p["booking_id"], b["id"], "participants and bookings in one order");
    }
    let p0 = &export["participants"][0];
    assert_eq!(
        (&p0["display_name"], &p0["email"], &p0["ref"], &p0["time_zone"], &p0["locale"]),
        (&json!(name), &json!(email), &json!(reference), &json!("Europe/Berlin"), &json!("de-DE")),
    );
    assert!(!export.to_string().contains("link_token"), "secrets in the export: {export}");
    for b in export["bookings"].as_array().unwrap() {
        assert_eq!(b["title"], format!("Therapy with {name}"));
        assert_eq!(b["metadata"]["remark"], format!("{name} asked about knee pain"));
    }
    assert_eq!(got_ids("webhook_deliveries", "event_type"), ["booking.created", "booking.created"]);
    let by_id = |v: &Value| v["data"]["id"].as_str().unwrap_or_default().to_string();
    let mut sent: Vec<Value> =
        created_deliveries.iter().map(|h| h.json()).filter(|e| e["data"]["id"] != other["id"]).collect();
    sent.sort_by_key(by_id);
    let mut exported: Vec<Value> =
        export["webhook_deliveries"].as_array().unwrap().iter().map(|d| d["payload"].clone()).collect();
    exported.sort_by_key(by_id);
    assert_eq!(exported, sent, "the exported payloads are the ones sent");
    assert_eq!(export["call_reports"].as_array().unwrap().len(), 1, "{export}");
    assert_eq!(export["call_reports"][0]["booking_id"], ids[0]);
    assert_eq!(export["call_reports"][0]["browser_summary"], summary);
    assert_eq!((export["emails"].as_array().unwrap().len(), export["hosts"].as_array().unwrap().len()), (0, 0));

    // Another tenant's key sees and erases nothing of this tenant.
    let (_, other_key) = tenant_with_key(&d, "neighbour").await;
    let (status, e) = call(&d, &other_key, "POST", "/v1/data-subjects/export", Some(by_email.clone())).await;
    assert_eq!(status, 200, "{e}");
    for k in ["participants", "hosts", "bookings", "webhook_deliveries", "emails", "call_reports"] {
        assert_eq!(e[k], json!([]), "{k}: {e}");
    }
    let (status, e) = call(&d, &other_key, "POST", "/v1/data-subjects/erase", Some(by_email.clone())).await;
    let zero = json!({"participants": 0, "bookings": 0, "hosts": 0, "webhook_deliveries": 0, "emails": 0,
                      "call_reports": 0, "idempotency_records": 0});
    assert_eq!((status, &e["erased"]), (200, &zero), "{e}");
    let (_, still) = call(&d, &d.api_key, "POST", "/v1/data-subjects/export", Some(by_email.clone())).await;
    assert_eq!(still, export, "another tenant's erasure changed nothing");

    // The erasure.
    let (status, e) = call(&d, &d.api_key, "POST", "/v1/data-subjects/erase", Some(by_email.clone())).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(
        e["erased"],
        json!({"participants": 3, "bookings": 3, "hosts": 0, "webhook_deliveries": 2, "emails": 0,
               "call_reports": 1, "idempotency_records": 0}),
    );
    for b in [&b1, &b2, &b3] {
        let (status, _, _) = d.join(&link(b, "guest")).await;
        assert_eq!(status, 404, "the erased guest's link");
        let (status, _, _) = d.join(&link(b, "host")).await;
        assert_ne!(status, 404, "the host's link still works");
    }
    let mut c = db(&d, backend).await;
    for id in &ids {
        let s = stored(&mut c, id).await.to_string();
        for v in ["Erin", "erin", "patient:erin", "knee", "chrome"] {
            assert!(!s.contains(v), "{v} still stored for {id}: {s}");
        }
    }
    let o = stored(&mut c, other["id"].as_str().unwrap()).await.to_string();
    assert!(o.contains("Olga Other") && o.contains("olga@example.org"), "someone else's data is kept: {o}");
    let (_, report) = call(&d, &d.api_key, "GET", &format!("/v1/bookings/{}/report", ids[0]), None).await;
    assert!(!report.to_string().contains("chrome"), "{report}");
    // The event carries the counts and nothing erased.
    let hits =
        rx.wait_for(Duration::from_secs(10), "data_subject.erased", |h| h.iter().any(|h| h.path == "/erased")).await;
    let event = hits.iter().find(|h| h.path == "/erased").unwrap();
    assert_eq!(event.json()["type"], "data_subject.erased");
    assert_eq!(event.json()["data"]["erased"], e["erased"]);
    for v in ["Erin", "erin", "patient:erin", ids[0], ids[1], ids[2]] {
        assert!(!event.body.contains(v), "{v} in the event: {}", event.body);
    }
    // Afterwards the export is empty and a second erasure finds nothing.
    let (_, after) = call(&d, &d.api_key, "POST", "/v1/data-subjects/export", Some(by_email.clone())).await;
    for k in ["participants", "hosts", "bookings", "webhook_deliveries", "emails", "call_reports"] {
        assert_eq!(after[k], json!([]), "{k}: {after}");
    }
    let (status, e) = call(&d, &d.api_key, "POST", "/v1/data-subjects/erase", Some(json!({"ref": reference}))).await;
    assert_eq!((status, &e["erased"]), (200, &zero), "{e}");
}

async fn the_cli_erases_like_the_api(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, CONFIG) else { return };
    let reference = "patient:cli";
    let b1 = create(&d, &d.api_key, &personal_booking(60, 1800, "Cleo Cli", "cleo@example.org", reference)).await;
    let b2 = create(&d, &d.api_key, &personal_booking(7200, 1800, "Cleo Cli", "cleo@example.org", reference)).await;
    let r = d
        .client()
        .post(d.url(&format!("/v1/join/{}/report", link(&b1, "guest"))))
        .json(&json!({"packet_loss": 0.5}))
        .send()
        .await;
    assert_eq!(r.unwrap().status().as_u16(), 204);
    let config = d.data_dir.parent().unwrap().join("config.toml");
    let args = |extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = vec!["erase".into(), "--config".into(), config.clone().into()];
        a.extend(extra.iter().map(Into::into));
        a
    };
    // Neither or both selectors, or an unknown tenant: refused, nothing erased.
    assert!(!run_duet(args(&["--tenant", "ten_default"])).status.success());
    assert!(
        !run_duet(args(&["--tenant", "ten_default", "--ref", reference, "--email", "cleo@example.org"]))
            .status
            .success()
    );
    let run = run_duet(args(&["--tenant", "ten_nobody", "--ref", reference]));
    assert!(!run.status.success() && run.stderr.contains("no tenant"), "{}", run.stderr);
    let (_, export) = call(&d, &d.api_key, "POST", "/v1/data-subjects/export", Some(json!({"ref": reference}))).await;
    assert_eq!(export["participants"].as_array().unwrap().len(), 2, "{export}");

    let run = run_duet(args(&["--tenant", "ten_default", "--ref", reference]));
    run.assert_success("duet erase");
    let out: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    assert_eq!(
        out["erased"],
        json!({"participants": 2, "bookings": 2, "hosts": 0, "webhook_deliveries": 0, "emails": 0,
               "call_reports": 1, "idempotency_records": 0}),
    );
    for b in [&b1, &b2] {
        let (status, _, _) = d.join(&link(b, "guest")).await;
        assert_eq!(status, 404);
        let (_, got) = call(&d, &d.api_key, "GET", &format!("/v1/bookings/{}", b["id"].as_str().unwrap()), None).await;
        assert!(!got.to_string().contains("Cleo") && !got.to_string().contains("cleo@"), "{got}");
    }
    let (_, export) = call(&d, &d.api_key, "POST", "/v1/data-subjects/export", Some(json!({"ref": reference}))).await;
    assert_eq!(export["participants"], json!([]), "{export}");
    let run = run_duet(args(&["--tenant", "ten_default", "--email", "cleo@example.org"]));
    run.assert_success("duet erase again");
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap()["erased"]["participants"], 0);
}
