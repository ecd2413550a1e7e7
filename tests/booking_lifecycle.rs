//! Issue 8, booking lifecycle on both backends, at the HTTP level: statuses (`pending`, `confirmed`, `rejected`,
//! `cancelled`, derived `ended`, per-participant `no_show`) and their transitions, `Idempotency-Key` on create, and
//! `GET /v1/bookings` (filters, cursor pagination, tenant isolation).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::{Backend, Daemon, booking_body, participant, rfc3339_in};
use duet::booking::store::Store;

/// `method path` with the daemon's API key (or `key`), an optional JSON body and extra headers; returns (status,
/// headers, body).
async fn call(
    d: &Daemon,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = d.client().request(method, d.url(path)).bearer_auth(key.unwrap_or(&d.api_key));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let r = rb.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

async fn post(d: &Daemon, path: &str) -> (u16, Value) {
    let (s, _, b) = call(d, reqwest::Method::POST, path, None, None, &[]).await;
    (s, b)
}

async fn get(d: &Daemon, path: &str) -> (u16, Value) {
    let (s, _, b) = call(d, reqwest::Method::GET, path, None, None, &[]).await;
    (s, b)
}

fn link(booking: &Value, role: &str) -> String {
    participant(booking, role)["link_token"].as_str().expect("link_token").to_string()
}

async fn create(d: &Daemon, body: &Value) -> Value {
    let (s, b) = d.create_booking(body).await;
    assert_eq!(s, 201, "create: {b}");
    b
}

/// `body` for another host (a fresh `ref`): a second booking at the same time is not a double booking.
fn another_host(body: &Value) -> Value {
    let mut b = body.clone();
    b["participants"][0]["ref"] = booking_body(0, 1)["participants"][0]["ref"].clone();
    b
}

fn pending_body(start_in_s: i64, len_s: i64) -> Value {
    let mut b = booking_body(start_in_s, len_s);
    b["status"] = json!("pending");
    b
}

/// Records API key `key` for tenant `tenant` directly in the daemon's database (there is no tenant API in this
/// part); the daemon looks keys up on every request.
async fn add_tenant_key(d: &Daemon, backend: Backend, tenant: &str, key: &str) {
    let store = match backend {
        Backend::Sqlite => Store::open(&d.data_dir.join("duet.sqlite3")).await.expect("open SQLite"),
        Backend::Postgres => {
            Store::open_postgres(&d.db.as_ref().expect("test database").url, 2).await.expect("open PostgreSQL")
        }
    };
    let hash = Sha256::digest(key.as_bytes());
    assert!(store.upsert_api_key(&format!("key_{tenant}"), tenant, &hash, 1).await.expect("insert key"));
    store.close().await;
}

async fn transitions(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };

    // pending -> join 409 -> confirm -> join 200; repeats and refused moves.
    let b = create(&d, &pending_body(60, 1800)).await;
    assert_eq!(b["status"], "pending");
    let id = b["id"].as_str().unwrap().to_string();
    let seq0 = b["sequence"].as_i64().unwrap();
    let (s, _, body) = d.join(&link(&b, "host")).await;
    assert_eq!((s, body["error"].as_str()), (409, Some("booking_pending_confirmation")), "{body}");
    let (s, c) = post(&d, &format!("/v1/bookings/{id}/confirm")).await;
    assert_eq!((s, c["status"].as_str()), (200, Some("confirmed")), "{c}");
    assert!(c["sequence"].as_i64().unwrap() > seq0, "a status change bumps the sequence: {c}");
    let (s, again) = post(&d, &format!("/v1/bookings/{id}/confirm")).await;
    assert_eq!((s, again["status"].as_str()), (200, Some("confirmed")));
    assert_eq!(again["sequence"], c["sequence"], "confirming a confirmed booking changes nothing");
    let (s, _, body) = d.join(&link(&b, "host")).await;
    assert_eq!(s, 200, "a confirmed booking joins: {body}");
    let (s, e) = post(&d, &format!("/v1/bookings/{id}/reject")).await;
    assert_eq!((s, e["error"].as_str(), e["status"].as_str()), (409, Some("invalid_transition"), Some("confirmed")));
    let (s, x) = post(&d, &format!("/v1/bookings/{id}/cancel")).await;
    assert_eq!((s, x["status"].as_str()), (200, Some("cancelled")));
    for action in ["confirm", "reject"] {
        let (s, e) = post(&d, &format!("/v1/bookings/{id}/{action}")).await;
        assert_eq!((s, e["error"].as_str()), (409, Some("invalid_transition")), "{action} of cancelled: {e}");
    }
    let (s, e) = get(&d, &format!("/v1/bookings/{id}")).await;
    assert_eq!((s, e["status"].as_str()), (200, Some("cancelled")), "refused moves change nothing");

    // pending -> reject: links 410 booking_rejected; repeat 200; confirm and cancel refused.
    let r = create(&d, &pending_body(60, 1800)).await;
    let rid = r["id"].as_str().unwrap().to_string();
    let (s, rj) = post(&d, &format!("/v1/bookings/{rid}/reject")).await;
    assert_eq!((s, rj["status"].as_str()), (200, Some("rejected")), "{rj}");
    assert!(rj["sequence"].as_i64().unwrap() > r["sequence"].as_i64().unwrap());
    let (s, rj2) = post(&d, &format!("/v1/bookings/{rid}/reject")).await;
    assert_eq!((s, &rj2["sequence"]), (200, &rj["sequence"]), "rejecting twice is idempotent");
    for role in ["host", "guest"] {
        let (s, _, body) = d.join(&link(&r, role)).await;
        assert_eq!((s, body["error"].as_str()), (410, Some("booking_rejected")), "{role}: {body}");
    }
    for action in ["confirm", "cancel"] {
        let (s, e) = post(&d, &format!("/v1/bookings/{rid}/{action}")).await;
        assert_eq!((s, e["error"].as_str(), e["status"].as_str()), (409, Some("invalid_transition"), Some("rejected")));
    }

    // pending -> cancel works; links 410 booking_cancelled.
    let p = create(&d, &pending_body(60, 1800)).await;
    let (s, pc) = post(&d, &format!("/v1/bookings/{}/cancel", p["id"].as_str().unwrap())).await;
    assert_eq!((s, pc["status"].as_str()), (200, Some("cancelled")));
    let (s, _, body) = d.join(&link(&p, "guest")).await;
    assert_eq!((s, body["error"].as_str()), (410, Some("booking_cancelled")));

    // Unknown bookings 404; only pending and confirmed may be asked for on create.
    for action in ["confirm", "reject", "cancel"] {
        let (s, e) = post(&d, &format!("/v1/bookings/bkg_nope/{action}")).await;
        assert_eq!((s, e["error"].as_str()), (404, Some("not_found")));
    }
    for bad in ["rejected", "cancelled", "ended", "Pending"] {
        let mut body = booking_body(60, 1800);
        body["status"] = json!(bad);
        let (s, e) = d.create_booking(&body).await;
        assert_eq!((s, e["error"].as_str()), (400, Some("invalid_request")), "status {bad}: {e}");
    }
    let (s, e) = d.create_booking(&booking_body(60, 1800)).await;
    assert_eq!((s, e["status"].as_str()), (201, Some("confirmed")), "confirmed is the default");

    let text = d.metrics().await;
    assert_eq!(common::metric(&text, "duet_join_attempts_total{result=\"pending\"}"), Some(1.0));
    assert_eq!(common::metric(&text, "duet_join_attempts_total{result=\"rejected\"}"), Some(2.0));
}

/// A confirmed booking past its hard end reports `ended`; a participant who never joined by `join_cutoff_at` is a
/// `no_show`, one who joined is not.
async fn ended_and_no_show(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "[booking]\nstart_leeway = \"2h\"\noverrun_grace = \"1s\"\n") else {
        return;
    };
    let past = create(&d, &booking_body(-3600, 600)).await;
    assert_eq!(past["status"], "ended", "{past}");
    for role in ["host", "guest"] {
        assert_eq!(participant(&past, role)["no_show"], true, "{past}");
    }
    let future = create(&d, &booking_body(3600, 600)).await;
    assert_eq!(future["status"], "confirmed");
    assert_eq!(participant(&future, "guest")["no_show"], false);
    let pending_past = create(&d, &pending_body(-3600, 600)).await;
    assert_eq!(pending_past["status"], "pending", "only confirmed bookings end");
    assert_eq!(participant(&pending_past, "host")["no_show"], false, "no_show only on confirmed bookings");

    // A 2 s meeting starting now: the host joins, the guest does not.
    let live = create(&d, &booking_body(0, 2)).await;
    let (s, _, body) = d.join(&link(&live, "host")).await;
    assert_eq!(s, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let (s, after) = get(&d, &format!("/v1/bookings/{}", live["id"].as_str().unwrap())).await;
    assert_eq!((s, after["status"].as_str()), (200, Some("ended")), "{after}");
    assert_eq!(participant(&after, "host")["no_show"], false, "{after}");
    assert_eq!(participant(&after, "host")["joined"], true, "{after}");
    assert_eq!(participant(&after, "guest")["no_show"], true, "{after}");

    // A cancelled booking never reports ended or no-shows.
    let (s, c) = post(&d, &format!("/v1/bookings/{}/cancel", past["id"].as_str().unwrap())).await;
    assert_eq!((s, c["status"].as_str()), (200, Some("cancelled")));
    assert_eq!(participant(&c, "guest")["no_show"], false);

    let (s, page) = get(&d, "/v1/bookings?status=ended").await;
    assert_eq!(s, 200, "{page}");
    let ids: Vec<&str> = page["bookings"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![live["id"].as_str().unwrap()], "{page}");
    let (_, page) = get(&d, "/v1/bookings?status=confirmed").await;
    let ids: Vec<&str> = page["bookings"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![future["id"].as_str().unwrap()], "confirmed excludes ended: {page}");
}

fn without_links(mut v: Value) -> Value {
    for p in v["participants"].as_array_mut().unwrap() {
        let o = p.as_object_mut().unwrap();
        assert!(o.remove("link_token").is_some() && o.remove("join_url").is_some());
    }
    v
}

async fn idempotent_create(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let body = booking_body(600, 1800);
    let key = [("Idempotency-Key", "order-1182-create")];
    let (s, h, first) = call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(&body), &key).await;
    assert_eq!(s, 201, "{first}");
    assert!(h.get("idempotent-replayed").is_none());

    // Same body (members reordered: the hash is of the canonical body) -> the original status and body.
    let reordered: Value = serde_json::from_str(&{
        let mut m: Vec<(String, Value)> = body.as_object().unwrap().clone().into_iter().collect();
        m.reverse();
        format!("{{{}}}", m.iter().map(|(k, v)| format!("{:?}:{v}", k)).collect::<Vec<_>>().join(","))
    })
    .unwrap();
    for b in [&body, &reordered] {
        let (s, h, replay) = call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(b), &key).await;
        assert_eq!(s, 201, "{replay}");
        assert_eq!(h.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
        assert_eq!(h.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
        let mut expected = without_links(first.clone());
        expected["links_shown_once"] = json!(true);
        assert_eq!(replay, expected, "the original body, link tokens left out");
    }

    // Same key, other body -> 422; nothing created.
    let mut other = body.clone();
    other["title"] = json!("Another title");
    let (s, _, e) = call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(&other), &key).await;
    assert_eq!(
        (s, e["error"].as_str(), e["field"].as_str()),
        (422, Some("idempotency_key_reuse"), Some("Idempotency-Key"))
    );
    let (_, page) = get(&d, "/v1/bookings").await;
    assert_eq!(page["bookings"].as_array().unwrap().len(), 1, "{page}");

    // Bad input with a fresh key is not recorded: the fixed request then creates.
    let mut bad = body.clone();
    bad["end_at"] = bad["start_at"].clone();
    let k2 = [("Idempotency-Key", "retry-after-fix")];
    let (s, _, e) = call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(&bad), &k2).await;
    assert_eq!((s, e["error"].as_str()), (422, Some("invalid_duration")));
    let (s, h, _) = call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(&another_host(&body)), &k2).await;
    assert_eq!((s, h.get("idempotent-replayed").is_none()), (201, true));

    // Without the header every POST creates (each for another host: one host cannot be double-booked).
    for _ in 0..2 {
        let (s, _) = d.create_booking(&another_host(&body)).await;
        assert_eq!(s, 201);
    }
    let (_, page) = get(&d, "/v1/bookings").await;
    assert_eq!(page["bookings"].as_array().unwrap().len(), 4, "{page}");

    // Malformed keys -> 400.
    let long = "k".repeat(256);
    for bad_key in [long.as_str(), "tab\there"] {
        let (s, _, e) =
            call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(&body), &[("Idempotency-Key", bad_key)]).await;
        assert_eq!((s, e["error"].as_str()), (400, Some("invalid_idempotency_key")), "{bad_key:?}");
    }
    let max = "k".repeat(255);
    let (s, _, _) =
        call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(&another_host(&body)), &[("Idempotency-Key", &max)])
            .await;
    assert_eq!(s, 201, "255 characters are allowed");

    // Keys are per tenant: tenant B's same key creates B's own booking.
    add_tenant_key(&d, backend, "ten_b", "tenant-b-key-0123456789abcdef0123456789").await;
    let kb = Some("tenant-b-key-0123456789abcdef0123456789");
    let (s, h, b_first) = call(&d, reqwest::Method::POST, "/v1/bookings", kb, Some(&body), &key).await;
    assert_eq!((s, h.get("idempotent-replayed").is_none()), (201, true), "{b_first}");
    assert_ne!(b_first["id"], first["id"]);
}

/// Ten concurrent identical requests with one key create exactly one booking; the others replay it.
async fn concurrent_idempotent_creates(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let body = booking_body(600, 1800);
    let d = std::sync::Arc::new(d);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (d, body) = (d.clone(), body.clone());
            tokio::spawn(async move {
                call(&d, reqwest::Method::POST, "/v1/bookings", None, Some(&body), &[("Idempotency-Key", "same")]).await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let (s, h, b) = t.await.unwrap();
        assert_eq!(s, 201, "{b}");
        ids.insert(b["id"].as_str().unwrap().to_string());
        if h.get("idempotent-replayed").is_none() {
            fresh += 1;
        }
    }
    assert_eq!((ids.len(), fresh), (1, 1), "one booking, created once");
    let (_, page) = get(&d, "/v1/bookings").await;
    assert_eq!(page["bookings"].as_array().unwrap().len(), 1, "{page}");
}

fn ids_of(page: &Value) -> Vec<String> {
    page["bookings"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

async fn list_filters_and_pagination(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    // 7 bookings: starts at +1h (three of them, to test the id tie-break), +2h, +3h, +4h, +5h.
    let mut made = Vec::new();
    for (i, start) in [3600, 7200, 3600, 10800, 14400, 3600, 18000].into_iter().enumerate() {
        let mut body = if i == 1 { pending_body(start, 1800) } else { booking_body(start, 1800) };
        body["external_id"] = json!(format!("ext-{i}"));
        body["participants"][1]["ref"] = json!(format!("customer:{}", i % 2));
        // One host for all but two of the three at +1h (one host cannot have overlapping bookings).
        body["participants"][0]["ref"] = json!(match i {
            2 => "instructor:43",
            5 => "instructor:44",
            _ => "instructor:42",
        });
        let b = create(&d, &body).await;
        made.push((b["start_at"].as_str().unwrap().to_string(), b["id"].as_str().unwrap().to_string()));
    }
    made.sort();
    let expected: Vec<String> = made.iter().map(|(_, id)| id.clone()).collect();

    // All in one page, ordered by start then id.
    let (s, all) = get(&d, "/v1/bookings").await;
    assert_eq!((s, ids_of(&all)), (200, expected.clone()), "{all}");
    assert_eq!(all["next_cursor"], Value::Null);

    // Pages of 3: same order, no duplicates, null cursor at the end.
    let mut seen = Vec::new();
    let mut path = "/v1/bookings?limit=3".to_string();
    let mut pages = 0;
    loop {
        let (s, page) = get(&d, &path).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        seen.extend(ids_of(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/bookings?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!((seen, pages), (expected.clone(), 3));

    // Filters.
    let (_, p) = get(&d, "/v1/bookings?status=pending").await;
    assert_eq!(ids_of(&p).len(), 1);
    assert_eq!(p["bookings"][0]["external_id"], "ext-1");
    let (_, p) = get(&d, "/v1/bookings?external_id=ext-4").await;
    assert_eq!((ids_of(&p).len(), p["bookings"][0]["external_id"].as_str()), (1, Some("ext-4")));
    let (_, p) = get(&d, "/v1/bookings?participant_ref=customer:1").await;
    assert_eq!(ids_of(&p).len(), 3, "bookings 1, 3, 5: {p}");
    let (_, p) = get(&d, "/v1/bookings?participant_ref=instructor:42&status=confirmed").await;
    assert_eq!(ids_of(&p).len(), 4, "bookings 0, 3, 4, 6 (1 is pending): {p}");
    let from = rfc3339_in(5400).replace('+', "%2B");
    let to = rfc3339_in(16200).replace('+', "%2B");
    let (s, p) = get(&d, &format!("/v1/bookings?from={from}&to={to}")).await;
    assert_eq!((s, ids_of(&p).len()), (200, 3), "starts at +2h, +3h, +4h: {p}");
    let (_, p) = get(&d, "/v1/bookings?status=cancelled").await;
    assert!(ids_of(&p).is_empty());
    // A filtered walk in pages of 1.
    let mut path = "/v1/bookings?participant_ref=customer:1&limit=1".to_string();
    let mut walked = Vec::new();
    loop {
        let (_, page) = get(&d, &path).await;
        walked.extend(ids_of(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/bookings?participant_ref=customer:1&limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(walked.len(), 3);

    // Bad queries.
    let (_, p) = get(&d, "/v1/bookings?limit=2").await;
    let cursor = p["next_cursor"].as_str().unwrap().to_string();
    let mut tampered = cursor.clone().into_bytes();
    tampered[2] = if tampered[2] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (path, status, code) in [
        (format!("/v1/bookings?cursor={tampered}"), 400, "invalid_cursor"),
        ("/v1/bookings?cursor=bm90LWEtY3Vyc29y".to_string(), 400, "invalid_cursor"),
        ("/v1/bookings?cursor=%25%25".to_string(), 400, "invalid_cursor"),
        (format!("/v1/bookings?status=pending&cursor={cursor}"), 400, "invalid_cursor"),
        ("/v1/bookings?limit=0".to_string(), 422, "invalid_field"),
        ("/v1/bookings?limit=101".to_string(), 422, "invalid_field"),
        ("/v1/bookings?limit=ten".to_string(), 400, "invalid_request"),
        ("/v1/bookings?status=ongoing".to_string(), 400, "invalid_request"),
        ("/v1/bookings?sort=desc".to_string(), 400, "invalid_request"),
        ("/v1/bookings?from=2026-09-01T14:00:00".to_string(), 422, "invalid_datetime"),
    ] {
        let (s, e) = get(&d, &path).await;
        assert_eq!((s, e["error"].as_str()), (status, Some(code)), "{path}: {e}");
    }
    let (s, p) = get(&d, &format!("/v1/bookings?limit=2&cursor={cursor}")).await;
    assert_eq!((s, ids_of(&p)), (200, expected[2..4].to_vec()), "the untampered cursor still works");
    let (s, _, _) = call(&d, reqwest::Method::GET, "/v1/bookings", Some("wrong-key"), None, &[]).await;
    assert_eq!(s, 401);

    // Tenant isolation: tenant B sees none of A's bookings, and 404 on them.
    let kb = "tenant-b-key-0123456789abcdef0123456789";
    add_tenant_key(&d, backend, "ten_b", kb).await;
    let (s, _, p) = call(&d, reqwest::Method::GET, "/v1/bookings", Some(kb), None, &[]).await;
    assert_eq!((s, ids_of(&p).len()), (200, 0), "{p}");
    let (s, _, p) = call(&d, reqwest::Method::GET, "/v1/bookings?external_id=ext-4", Some(kb), None, &[]).await;
    assert_eq!((s, ids_of(&p).len()), (200, 0), "{p}");
    let a_id = &expected[0];
    for action in ["confirm", "reject", "cancel"] {
        let (s, _, _) =
            call(&d, reqwest::Method::POST, &format!("/v1/bookings/{a_id}/{action}"), Some(kb), None, &[]).await;
        assert_eq!(s, 404, "{action} of another tenant's booking");
    }
    let (s, _, b) =
        call(&d, reqwest::Method::POST, "/v1/bookings", Some(kb), Some(&booking_body(3600, 600)), &[]).await;
    assert_eq!(s, 201);
    let (_, _, p) = call(&d, reqwest::Method::GET, "/v1/bookings", Some(kb), None, &[]).await;
    assert_eq!(ids_of(&p), vec![b["id"].as_str().unwrap().to_string()]);
    // A's cursor is only a position: used by B it still lists only B's bookings.
    let (s, _, p) = call(&d, reqwest::Method::GET, &format!("/v1/bookings?cursor={cursor}"), Some(kb), None, &[]).await;
    assert_eq!(s, 200);
    assert!(ids_of(&p).iter().all(|id| !expected.contains(id)), "{p}");
    let (_, all_a) = get(&d, "/v1/bookings").await;
    assert_eq!(ids_of(&all_a), expected, "A does not see B's booking");
}

on_both_backends!(
    transitions,
    ended_and_no_show,
    idempotent_create,
    concurrent_idempotent_creates,
    list_filters_and_pagination
);
