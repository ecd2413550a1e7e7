//! Issue 8, "a host is never double-booked", on both backends at the HTTP level: two `pending` or `confirmed`
//! bookings of one host `ref` (in one tenant) never have intersecting blocked intervals `[start_at - buffer_before_s,
//! end_at + buffer_after_s)`; a create that would gets `409 slot_unavailable`, also under 20 concurrent creates.

mod common;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::{Backend, Daemon, booking_body};
use duet::booking::store::Store;

/// An instant about one hour from now, fixed at the first call (Unix seconds): every booking of these tests starts
/// at `base() + offset`, so the offsets of bookings made at different moments compare exactly.
fn base() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| time::OffsetDateTime::now_utc().unix_timestamp() + 3600)
}

/// RFC 3339 of `base() + offset`.
fn at(offset: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(base() + offset).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A confirmed booking of host `host` (`None`: no `ref`) from `base() + start` lasting `len` seconds.
fn body(host: Option<&str>, start: i64, len: i64) -> Value {
    let mut b = booking_body(0, len);
    b["start_at"] = json!(at(start));
    b["end_at"] = json!(at(start + len));
    b["participants"][0]["ref"] = json!(host);
    b
}

/// [`body`] with buffers.
fn buffered(host: &str, start: i64, len: i64, before: i64, after: i64) -> Value {
    let mut b = body(Some(host), start, len);
    b["buffer_before_s"] = json!(before);
    b["buffer_after_s"] = json!(after);
    b
}

async fn created(d: &Daemon, b: &Value) -> Value {
    let (s, r) = d.create_booking(b).await;
    assert_eq!(s, 201, "create {b}: {r}");
    r
}

/// Asserts that `b` is refused with 409 `slot_unavailable` naming `conflicting` (the caller's own booking).
async fn refused(d: &Daemon, b: &Value, conflicting: &Value) {
    let (s, r) = d.create_booking(b).await;
    assert_eq!((s, r["error"].as_str()), (409, Some("slot_unavailable")), "create {b}: {r}");
    assert_eq!(r["field"], "start_at", "{r}");
    assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    assert_eq!(r["conflicting_booking_id"], conflicting["id"], "{r}");
}

async fn post(d: &Daemon, path: &str) -> (u16, Value) {
    let r = d.client().post(d.url(path)).bearer_auth(&d.api_key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The number of bookings `GET /v1/bookings?participant_ref=<host>` lists.
async fn count_of(d: &Daemon, host: &str) -> usize {
    let r = d
        .client()
        .get(d.url(&format!("/v1/bookings?participant_ref={host}")))
        .bearer_auth(&d.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    v["bookings"].as_array().unwrap().len()
}

/// Overlaps are refused (409, nothing stored); touching intervals, other hosts and hosts without `ref` are fine.
async fn overlap_refused_touching_allowed(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let first = created(&d, &body(Some("coach:1"), 0, 1800)).await;
    assert_eq!((first["buffer_before_s"].as_i64(), first["buffer_after_s"].as_i64()), (Some(0), Some(0)));
    // Same interval, inside, around, overlapping either end.
    for (start, len) in [(0, 1800), (600, 600), (-600, 3600), (-600, 601), (1799, 600)] {
        refused(&d, &body(Some("coach:1"), start, len), &first).await;
    }
    // A pending booking is held to the rule too.
    let mut pending = body(Some("coach:1"), 900, 1800);
    pending["status"] = json!("pending");
    refused(&d, &pending, &first).await;
    assert_eq!(count_of(&d, "coach:1").await, 1, "nothing of the refused creates is stored");
    // Touching: end == next start, on both sides.
    created(&d, &body(Some("coach:1"), 1800, 1800)).await;
    created(&d, &body(Some("coach:1"), -1800, 1800)).await;
    // Another host, and hosts without a ref (not checked), at the same time.
    created(&d, &body(Some("coach:2"), 0, 1800)).await;
    created(&d, &body(None, 0, 1800)).await;
    created(&d, &body(None, 0, 1800)).await;
    // The guest's ref plays no part: the same person as guest of two overlapping bookings is fine.
    let mut g = body(Some("coach:3"), 0, 1800);
    g["participants"][1]["ref"] = json!("coach:1");
    created(&d, &g).await;
    assert_eq!(count_of(&d, "coach:1").await, 4);
}

/// Buffers widen the blocked interval on their side: touching bookings conflict once either has a buffer between
/// them; the buffers are stored and echoed.
async fn buffers_block(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let first = created(&d, &buffered("coach:1", 0, 1800, 300, 600)).await;
    assert_eq!((first["buffer_before_s"].as_i64(), first["buffer_after_s"].as_i64()), (Some(300), Some(600)));
    let (s, got) = d
        .client()
        .get(d.url(&format!("/v1/bookings/{}", first["id"].as_str().unwrap())))
        .bearer_auth(&d.api_key)
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    let got: Value = got.json().await.unwrap();
    assert_eq!((s, got["buffer_before_s"].as_i64(), got["buffer_after_s"].as_i64()), (200, Some(300), Some(600)));

    // Its buffer_after (600 s) blocks a booking touching its end, up to 600 s after it.
    refused(&d, &body(Some("coach:1"), 1800, 600), &first).await;
    refused(&d, &body(Some("coach:1"), 2399, 600), &first).await;
    // Its buffer_before (300 s) blocks one ending up to 300 s before its start.
    refused(&d, &body(Some("coach:1"), -900, 900), &first).await;
    refused(&d, &body(Some("coach:1"), -1000, 701), &first).await;
    // The new booking's own buffers count too.
    refused(&d, &buffered("coach:1", 2400, 600, 1, 0), &first).await;
    refused(&d, &buffered("coach:1", -1200, 900, 0, 1), &first).await;
    // Just outside both buffers: fine (blocked intervals touch).
    created(&d, &body(Some("coach:1"), 2400, 600)).await;
    created(&d, &body(Some("coach:1"), -1200, 900)).await;
    // The buffers of one host never block another.
    created(&d, &body(Some("coach:2"), 1800, 600)).await;
}

/// Records API key `key` for `tenant` in the daemon's database.
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

/// The rule is per tenant: another tenant's host with the same `ref` is another host, and a refusal never names
/// another tenant's booking.
async fn other_tenant_is_another_host(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let key_b = "tenant-b-key-0123456789abcdef0123456789";
    add_tenant_key(&d, backend, "ten_b", key_b).await;
    let a = created(&d, &body(Some("coach:1"), 0, 1800)).await;
    let (s, b) = d.create_booking_with(key_b, &body(Some("coach:1"), 0, 1800)).await;
    assert_eq!(s, 201, "{b}");
    // Tenant B's second overlapping booking is refused naming B's own booking, not A's.
    let (s, r) = d.create_booking_with(key_b, &body(Some("coach:1"), 600, 1800)).await;
    assert_eq!((s, r["error"].as_str()), (409, Some("slot_unavailable")), "{r}");
    assert_eq!(r["conflicting_booking_id"], b["id"], "{r}");
    assert_ne!(r["conflicting_booking_id"], a["id"]);
}

/// Cancel and reject free the slot; confirm keeps a pending booking blocking.
async fn cancel_and_reject_free_the_slot(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let first = created(&d, &body(Some("coach:1"), 0, 1800)).await;
    refused(&d, &body(Some("coach:1"), 0, 1800), &first).await;
    let (s, c) = post(&d, &format!("/v1/bookings/{}/cancel", first["id"].as_str().unwrap())).await;
    assert_eq!((s, c["status"].as_str()), (200, Some("cancelled")), "{c}");
    let mut p = body(Some("coach:1"), 0, 1800);
    p["status"] = json!("pending");
    let pending = created(&d, &p).await;
    refused(&d, &body(Some("coach:1"), 600, 600), &pending).await;
    let (s, r) = post(&d, &format!("/v1/bookings/{}/reject", pending["id"].as_str().unwrap())).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("rejected")), "{r}");
    let mut p = body(Some("coach:1"), 600, 600);
    p["status"] = json!("pending");
    let pending = created(&d, &p).await;
    let (s, r) = post(&d, &format!("/v1/bookings/{}/confirm", pending["id"].as_str().unwrap())).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("confirmed")), "confirming a blocking booking: {r}");
    refused(&d, &body(Some("coach:1"), 0, 1800), &pending).await;
    // Cancelling again (idempotent) changes nothing; the cancelled ones stay out of the way.
    let (s, _) = post(&d, &format!("/v1/bookings/{}/cancel", first["id"].as_str().unwrap())).await;
    assert_eq!(s, 200);
    created(&d, &body(Some("coach:1"), 1200, 600)).await;
}

/// A refused create records no `Idempotency-Key`: the same key succeeds once the slot is free.
async fn refusal_is_not_recorded_for_idempotency(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let first = created(&d, &body(Some("coach:1"), 0, 1800)).await;
    let b = body(Some("coach:1"), 600, 600);
    let send =
        || d.client().post(d.url("/v1/bookings")).bearer_auth(&d.api_key).header("Idempotency-Key", "k-1").json(&b);
    let r = send().send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let (s, _) = post(&d, &format!("/v1/bookings/{}/cancel", first["id"].as_str().unwrap())).await;
    assert_eq!(s, 200);
    let r = send().send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
}

/// Buffers outside 0-86400 seconds are 422 `invalid_field`; a buffer of another type is 400 `invalid_request`.
async fn bad_buffers(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    for (field, v) in
        [("buffer_before_s", json!(-1)), ("buffer_after_s", json!(86_401)), ("buffer_before_s", json!(i64::MAX))]
    {
        let mut b = body(Some("coach:1"), 0, 1800);
        b[field] = v.clone();
        let (s, r) = d.create_booking(&b).await;
        assert_eq!(
            (s, r["error"].as_str(), r["field"].as_str()),
            (422, Some("invalid_field"), Some(field)),
            "{v}: {r}"
        );
    }
    for v in [json!("60"), json!(1.5), json!(null)] {
        let mut b = body(Some("coach:1"), 0, 1800);
        b["buffer_after_s"] = v.clone();
        let (s, r) = d.create_booking(&b).await;
        assert_eq!((s, r["error"].as_str()), (400, Some("invalid_request")), "{v}: {r}");
    }
    assert_eq!(count_of(&d, "coach:1").await, 0);
    let ok = created(&d, &buffered("coach:1", 0, 1800, 86_400, 86_400)).await;
    assert_eq!(ok["buffer_after_s"], 86_400);
}

/// 20 concurrent creates of overlapping bookings for one host: exactly one 201 and nineteen 409 `slot_unavailable`,
/// and exactly one booking stored.
async fn twenty_parallel_creates(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let d = std::sync::Arc::new(d);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let d = d.clone();
            // Different but pairwise overlapping intervals (all contain base() + 1140 .. base() + 1800).
            let b = body(Some("coach:busy"), i * 60, 1800);
            tokio::spawn(async move { d.create_booking(&b).await })
        })
        .collect();
    let mut created = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (201, b) => created.push(b),
            (409, r) => {
                assert_eq!(r["error"], "slot_unavailable", "{r}");
                refused += 1;
            }
            (s, r) => panic!("unexpected {s}: {r}"),
        }
    }
    assert_eq!((created.len(), refused), (1, 19));
    assert_eq!(count_of(&d, "coach:busy").await, 1);
}

crate::on_both_backends!(
    overlap_refused_touching_allowed,
    buffers_block,
    other_tenant_is_another_host,
    cancel_and_reject_free_the_slot,
    refusal_is_not_recorded_for_idempotency,
    bad_buffers,
    twenty_parallel_creates
);
