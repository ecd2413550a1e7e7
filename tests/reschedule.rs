//! Issue 8, "Reschedule and extend": `PATCH /v1/bookings/{id}` with `If-Match` (428, 412, 409, 422 as research
//! booking.md §7.7 says), the booking's own join policy, the host's extension from inside the call
//! (`POST /v1/join/{link}/extend`), old session tokens refused, the `window` frame on live sockets, and a reschedule
//! that survives a restart at the relay. Every test runs on SQLite and PostgreSQL. The live call that runs past its
//! old hard end is in tests/e2e_call.rs.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{Backend, Daemon, booking_body, join_as, participant, rfc3339_in, signal_first_frame};

crate::on_both_backends!(
    patch_needs_if_match_and_raises_the_sequence,
    patch_validates_like_create,
    patch_refuses_closed_bookings_and_other_tenants,
    patch_keeps_the_host_free,
    old_session_tokens_stop_and_live_sockets_get_the_window,
    the_host_extends_from_inside_the_call,
    a_reschedule_survives_a_restart_at_the_relay
);

/// PATCH `/v1/bookings/{id}` with the daemon's key, `If-Match` when given; (status, ETag, JSON body).
async fn patch(d: &Daemon, id: &str, if_match: Option<&str>, body: &Value) -> (u16, Option<String>, Value) {
    patch_with(d, &d.api_key, id, if_match, body).await
}

async fn patch_with(
    d: &Daemon,
    key: &str,
    id: &str,
    if_match: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut req = d.client().patch(d.url(&format!("/v1/bookings/{id}"))).bearer_auth(key).json(body);
    if let Some(m) = if_match {
        req = req.header("If-Match", m);
    }
    let r = req.send().await.expect("PATCH");
    let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
    (r.status().as_u16(), etag, r.json().await.unwrap_or(Value::Null))
}

async fn get(d: &Daemon, id: &str) -> (u16, Option<String>, Value) {
    let r = d.client().get(d.url(&format!("/v1/bookings/{id}"))).bearer_auth(&d.api_key).send().await.unwrap();
    let etag = r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
    (r.status().as_u16(), etag, r.json().await.unwrap_or(Value::Null))
}

/// POST `/v1/join/{link}/extend`; (status, JSON body).
async fn extend(d: &Daemon, link: &str, body: Value) -> (u16, Value) {
    let r = d.client().post(d.url(&format!("/v1/join/{link}/extend"))).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Asserts an error answer: status, `error` code and, when given, `field`.
fn assert_error(case: &str, got: &(u16, Option<String>, Value), status: u16, code: &str, field: Option<&str>) {
    assert_eq!(got.0, status, "{case}: {}", got.2);
    assert_eq!(got.2["error"], code, "{case}: {}", got.2);
    if let Some(f) = field {
        assert_eq!(got.2["field"], f, "{case}: {}", got.2);
    }
}

fn link_of(booking: &Value, role: &str) -> String {
    participant(booking, role)["link_token"].as_str().expect("link_token").to_string()
}

async fn created(d: &Daemon, body: &Value) -> Value {
    let (s, b) = d.create_booking(body).await;
    assert_eq!(s, 201, "{b}");
    b
}

/// Unix seconds of an RFC 3339 member.
fn unix(v: &Value) -> i64 {
    let text = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .unix_timestamp()
}

async fn patch_needs_if_match_and_raises_the_sequence(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = created(&d, &booking_body(3600, 1800)).await;
    let id = b["id"].as_str().unwrap();
    let (s, etag, _) = get(&d, id).await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"0\"")), "GET carries the ETag");

    let moved = json!({"start_at": rfc3339_in(7200), "end_at": rfc3339_in(9000)});
    let r = patch(&d, id, None, &moved).await;
    assert_error("no If-Match", &r, 428, "precondition_required", Some("If-Match"));
    let r = patch(&d, id, Some("\"5\""), &moved).await;
    assert_error("wrong sequence", &r, 412, "precondition_failed", Some("If-Match"));
    assert_eq!(r.2["sequence"], 0, "412 names the current sequence: {}", r.2);
    let r = patch(&d, id, Some("W/\"0\""), &moved).await;
    assert_error("a weak tag never matches (RFC 9110 §13.1.1)", &r, 412, "precondition_failed", None);
    assert_eq!(get(&d, id).await.2["start_at"], b["start_at"], "refused PATCHes changed nothing");

    let (s, etag, p) = patch(&d, id, Some("\"0\""), &moved).await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"1\"")), "{p}");
    assert_eq!((&p["id"], &p["sequence"], &p["status"]), (&b["id"], &json!(1), &json!("confirmed")), "{p}");
    assert_eq!(unix(&p["start_at"]), unix(&moved["start_at"]));
    assert_eq!(unix(&p["end_at"]), unix(&moved["end_at"]));
    assert_eq!(unix(&p["window"]["opens_at"]), unix(&moved["start_at"]) - 600, "the window follows: {p}");
    assert_eq!(unix(&p["window"]["hard_end_at"]), unix(&moved["end_at"]) + 900, "{p}");
    assert!(p["rescheduled_at"].is_string(), "{p}");
    assert_eq!(
        p["participants"],
        b["participants"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|x| {
                        let mut x = x.clone();
                        x.as_object_mut().unwrap().retain(|k, _| k != "link_token" && k != "join_url");
                        x
                    })
                    .collect::<Vec<_>>()
            })
            .map(Value::from)
            .unwrap(),
        "participants and their links stay"
    );

    let r = patch(&d, id, Some("\"0\""), &json!({"title": "late"})).await;
    assert_error("the old sequence after a change", &r, 412, "precondition_failed", None);
    assert_eq!(r.2["sequence"], 1);

    // `*` matches any version; title and metadata only.
    let (s, etag, p) =
        patch(&d, id, Some("*"), &json!({"title": "Physio, second visit", "metadata": {"visit": "V-2"}})).await;
    assert_eq!((s, etag.as_deref()), (200, Some("\"2\"")), "{p}");
    assert_eq!((&p["title"], &p["metadata"]), (&json!("Physio, second visit"), &json!({"visit": "V-2"})));
    assert_eq!(unix(&p["start_at"]), unix(&moved["start_at"]), "times kept");

    // The same values again change nothing: no new sequence.
    let (s, etag, p) = patch(&d, id, Some("\"2\""), &json!({"title": "Physio, second visit"})).await;
    assert_eq!((s, etag.as_deref(), &p["sequence"]), (200, Some("\"2\""), &json!(2)), "{p}");

    // The booking's own join policy: no overrun grace, guests from 5 minutes before.
    let policy = json!({"join_policy": {"overrun_grace_s": 0, "early_join_s": 300}});
    let (s, _, p) = patch(&d, id, Some("\"2\""), &policy).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["join_policy"], json!({"early_join_s": 300, "host_early_join_s": null, "overrun_grace_s": 0}));
    assert_eq!(p["window"]["hard_end_at"], p["end_at"], "{p}");
    assert_eq!(unix(&p["window"]["opens_at"]), unix(&p["start_at"]) - 300, "{p}");
    assert_eq!(unix(&p["window"]["host_opens_at"]), unix(&p["start_at"]) - 900, "the host keeps the default");
    assert_eq!(get(&d, id).await.2["sequence"], 3, "stored");
}

async fn patch_validates_like_create(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let b = created(&d, &booking_body(3600, 1800)).await;
    let id = b["id"].as_str().unwrap();
    let cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        ("unknown member", json!({"ends": "soon"}), 400, "invalid_request", None),
        ("wrong type", json!({"title": 5}), 400, "invalid_request", None),
        ("not an object", json!([1]), 400, "invalid_request", None),
        ("no offset", json!({"start_at": "2030-01-01T10:00:00"}), 422, "invalid_datetime", Some("start_at")),
        ("end before start", json!({"end_at": rfc3339_in(1800)}), 422, "invalid_duration", Some("end_at")),
        (
            "longer than max_duration",
            json!({"end_at": rfc3339_in(3600 + 9 * 3600)}),
            422,
            "invalid_duration",
            Some("end_at"),
        ),
        ("start in the past", json!({"start_at": rfc3339_in(-600)}), 422, "start_in_past", Some("start_at")),
        (
            "beyond the horizon",
            json!({"start_at": rfc3339_in(400 * 86_400), "end_at": rfc3339_in(400 * 86_400 + 1800)}),
            422,
            "outside_booking_horizon",
            Some("start_at"),
        ),
        ("empty title", json!({"title": ""}), 422, "invalid_field", Some("title")),
        ("control character", json!({"title": "a\u{7}b"}), 422, "invalid_field", Some("title")),
        ("metadata not an object", json!({"metadata": [1]}), 422, "invalid_field", Some("metadata")),
        (
            "early join too long",
            json!({"join_policy": {"early_join_s": 3601}}),
            422,
            "invalid_field",
            Some("join_policy.early_join_s"),
        ),
        (
            "negative grace",
            json!({"join_policy": {"overrun_grace_s": -1}}),
            422,
            "invalid_field",
            Some("join_policy.overrun_grace_s"),
        ),
        ("unknown policy member", json!({"join_policy": {"late_join_s": 1}}), 400, "invalid_request", None),
    ];
    for (case, body, status, code, field) in cases {
        let r = patch(&d, id, Some("\"0\""), &body).await;
        assert_error(case, &r, status, code, field);
    }
    let (_, _, now) = get(&d, id).await;
    assert_eq!((&now["sequence"], &now["start_at"], &now["title"]), (&json!(0), &b["start_at"], &b["title"]));
    common::assert_alive(&mut d);

    // Create takes the same join policy, checked the same way.
    let mut body = booking_body(3600, 1800);
    body["join_policy"] = json!({"host_early_join_s": 4000});
    let (s, e) = d.create_booking(&body).await;
    assert_eq!((s, &e["error"], &e["field"]), (422, &json!("invalid_field"), &json!("join_policy.host_early_join_s")));
    body["join_policy"] = json!({"host_early_join_s": 60});
    let (s, c) = d.create_booking(&body).await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(unix(&c["window"]["host_opens_at"]), unix(&c["start_at"]) - 60, "{c}");
}

async fn patch_refuses_closed_bookings_and_other_tenants(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = created(&d, &booking_body(3600, 1800)).await;
    let id = b["id"].as_str().unwrap();
    let later = json!({"end_at": rfc3339_in(3600 + 2400)});

    let admin = |path: &'static str, body: Value| {
        let d = &d;
        async move {
            let r = d.client().post(d.url(path)).bearer_auth(&d.api_key).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()
        }
    };
    let tenant = admin("/v1/admin/tenants", json!({"name": "Other clinic"})).await;
    let other = admin("/v1/admin/api-keys", json!({"tenant_id": tenant["id"], "scopes": ["bookings:write"]})).await;
    let reader = admin("/v1/admin/api-keys", json!({"tenant_id": "ten_default", "scopes": ["bookings:read"]})).await;
    let r = patch_with(&d, other["key"].as_str().unwrap(), id, Some("\"0\""), &later).await;
    assert_error("another tenant's key", &r, 404, "not_found", None);
    let r = patch_with(&d, reader["key"].as_str().unwrap(), id, Some("\"0\""), &later).await;
    assert_error("a read-only key", &r, 403, "insufficient_scope", None);
    let r = patch_with(&d, "duet_nope", id, Some("\"0\""), &later).await;
    assert_eq!(r.0, 401);
    let r = patch(&d, "bkg_unknown", Some("\"0\""), &later).await;
    assert_error("unknown booking", &r, 404, "not_found", None);

    let (s, c) = common::cancel_booking(&d, id).await;
    assert_eq!(s, 200, "{c}");
    let r = patch(&d, id, Some("\"1\""), &later).await;
    assert_error("cancelled", &r, 409, "booking_not_modifiable", None);
    assert_eq!(r.2["status"], "cancelled");

    // A rejected one too.
    let mut body = booking_body(7200, 1800);
    body["status"] = json!("pending");
    let p = created(&d, &body).await;
    let pid = p["id"].as_str().unwrap();
    // Pending bookings can be moved.
    let (s, _, moved) = patch(&d, pid, Some("\"0\""), &json!({"end_at": rfc3339_in(7200 + 2400)})).await;
    assert_eq!((s, &moved["status"]), (200, &json!("pending")), "{moved}");
    let r = d.client().post(d.url(&format!("/v1/bookings/{pid}/reject"))).bearer_auth(&d.api_key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = patch(&d, pid, Some("*"), &later).await;
    assert_error("rejected", &r, 409, "booking_not_modifiable", None);
}

async fn patch_keeps_the_host_free(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let at = |start: i64, len: i64| {
        let mut b = booking_body(start, len);
        b["participants"][0]["ref"] = json!("coach:7");
        b
    };
    let first = created(&d, &at(3600, 1800)).await;
    let second = created(&d, &at(7200, 1800)).await;
    let id = second["id"].as_str().unwrap();
    let overlap = json!({"start_at": rfc3339_in(4500), "end_at": rfc3339_in(6300)});
    let r = patch(&d, id, Some("\"0\""), &overlap).await;
    assert_error("overlap", &r, 409, "slot_unavailable", None);
    assert_eq!(r.2["conflicting_booking_id"], first["id"], "{}", r.2);
    let (_, _, kept) = get(&d, id).await;
    assert_eq!((&kept["start_at"], &kept["sequence"]), (&second["start_at"], &json!(0)), "nothing half-written");
    // Extending the first into the second is refused too; touching is fine.
    let fid = first["id"].as_str().unwrap();
    let r = patch(&d, fid, Some("\"0\""), &json!({"end_at": rfc3339_in(7201)})).await;
    assert_error("extension into the next booking", &r, 409, "slot_unavailable", None);
    let (s, _, p) = patch(&d, fid, Some("\"0\""), &json!({"end_at": second["start_at"]})).await;
    assert_eq!(s, 200, "an end touching the next start: {p}");
}

async fn old_session_tokens_stop_and_live_sockets_get_the_window(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = created(&d, &booking_body(60, 1800)).await;
    let id = b["id"].as_str().unwrap();
    let host = join_as(&d, &b, "host").await;
    let guest = join_as(&d, &b, "guest").await;
    let url = format!("{}?token={}", host["signal_url"].as_str().unwrap(), host["session_token"].as_str().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
    let welcome = next_text(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");

    let new_end = rfc3339_in(60 + 2700);
    let (s, _, p) = patch(&d, id, Some("\"0\""), &json!({"end_at": new_end})).await;
    assert_eq!(s, 200, "{p}");
    let frame = next_text(&mut ws).await;
    assert_eq!((&frame["type"], &frame["event"], &frame["sequence"]), (&json!("window"), &json!("changed"), &json!(1)));
    assert_eq!(frame["window"], p["window"], "the frame carries the new window");

    // The guest's token was issued under sequence 0: refused (4001, join again); a fresh join works.
    assert_eq!(signal_first_frame(&guest).await, Err(4001));
    let fresh = join_as(&d, &b, "guest").await;
    assert_eq!(signal_first_frame(&fresh).await.map(|w| w["type"].clone()), Ok(json!("welcome")));
    assert_eq!(unix(&fresh["window"]["hard_end_at"]), unix(&json!(new_end)) + 900);
}

/// The next JSON text frame of a signaling socket (pings skipped); panics after 10 s or when the socket ends.
async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let fut = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.expect("a frame within 10 s")
}

async fn the_host_extends_from_inside_the_call(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "[booking]\nhost_extend_max = \"20m\"\n") else { return };
    let at = |start: i64, len: i64| {
        let mut b = booking_body(start, len);
        b["participants"][0]["ref"] = json!("coach:9");
        b
    };
    // Now-ish, 30 minutes; the host's next booking starts 15 minutes after its end.
    let b = created(&d, &at(60, 1800)).await;
    let next = created(&d, &at(60 + 1800 + 900, 1800)).await;
    let (host, guest) = (link_of(&b, "host"), link_of(&b, "guest"));

    let (s, e) = extend(&d, &guest, json!({"minutes": 5})).await;
    assert_eq!((s, &e["error"]), (403, &json!("host_only")), "{e}");
    let (s, e) = extend(&d, &host, json!({"minutes": 5})).await;
    assert_eq!((s, &e["error"]), (409, &json!("booking_not_modifiable")), "before the host joined: {e}");
    let (s, e) = extend(&d, "no-such-link", json!({"minutes": 5})).await;
    assert_eq!((s, &e["error"]), (404, &json!("link_invalid_or_revoked")), "{e}");

    join_as(&d, &b, "host").await;
    for (body, status, code) in [
        (json!({"minutes": 0}), 422, "invalid_field"),
        (json!({"minutes": 121}), 422, "invalid_field"),
        (json!({"minutes": "5"}), 400, "invalid_request"),
        (json!({"by": 5}), 400, "invalid_request"),
    ] {
        let (s, e) = extend(&d, &host, body.clone()).await;
        assert_eq!((s, &e["error"]), (status, &json!(code)), "{body}: {e}");
    }

    let (s, a) = extend(&d, &host, json!({"minutes": 10})).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(unix(&a["end_at"]), unix(&b["end_at"]) + 600);
    assert_eq!((&a["extended_s"], &a["remaining_s"], &a["sequence"]), (&json!(600), &json!(600), &json!(1)));
    assert_eq!(unix(&a["window"]["hard_end_at"]), unix(&b["end_at"]) + 600 + 900);
    let (_, _, g) = get(&d, b["id"].as_str().unwrap()).await;
    assert_eq!((&g["end_at"], &g["sequence"]), (&a["end_at"], &json!(1)), "stored: {g}");

    // Ten more minutes would reach into the next booking (15 minutes after the original end).
    let (s, e) = extend(&d, &host, json!({"minutes": 10})).await;
    assert_eq!((s, &e["error"]), (409, &json!("slot_unavailable")), "{e}");
    assert!(e.get("conflicting_booking_id").is_none(), "a link holder is not told other bookings' ids: {e}");
    // More than the configured total.
    let (s, e) = extend(&d, &host, json!({"minutes": 11})).await;
    assert_eq!((s, &e["error"], &e["remaining_s"]), (422, &json!("extension_limit"), &json!(600)), "{e}");
    // After the next booking moves away, the rest of the allowance is usable.
    let nid = next["id"].as_str().unwrap();
    let (s, _, _) =
        patch(&d, nid, Some("\"0\""), &json!({"start_at": rfc3339_in(4 * 3600), "end_at": rfc3339_in(5 * 3600)})).await;
    assert_eq!(s, 200);
    let (s, a) = extend(&d, &host, json!({"minutes": 10})).await;
    assert_eq!((s, &a["extended_s"], &a["remaining_s"]), (200, &json!(1200), &json!(0)), "{a}");
    let (s, e) = extend(&d, &host, json!({"minutes": 1})).await;
    assert_eq!((s, &e["error"], &e["remaining_s"]), (422, &json!("extension_limit"), &json!(0)), "{e}");
}

async fn a_reschedule_survives_a_restart_at_the_relay(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    // Open now, ends in 4 s with no overrun grace: TURN credentials issued now expire in 4 s.
    let mut body = booking_body(1, 3);
    body["join_policy"] = json!({"overrun_grace_s": 0});
    let b = created(&d, &body).await;
    let join = join_as(&d, &b, "host").await;
    let (_, username, password) = common::turn_credentials(&join);
    let (s, _, p) = patch(&d, b["id"].as_str().unwrap(), Some("\"0\""), &json!({"end_at": rfc3339_in(120)})).await;
    assert_eq!(s, 200, "{p}");
    let d = d.restart();
    // Past the credential's own expiry: the restarted relay knows the booking's new hard end from the database.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = common::turn_crate_client(d.turn_udp, socket, &username, &password, "duet").await;
    let relay = tokio::time::timeout(Duration::from_secs(10), client.allocate()).await.expect("an answer in 10 s");
    if let Err(e) = &relay {
        panic!("Allocate with a credential of the extended booking after restart: {e}");
    }
    drop(relay);
    let _ = client.close().await;

    // A credential of a booking that was not extended is refused after its expiry (the same check, failing).
    let mut body = booking_body(1, 2);
    body["join_policy"] = json!({"overrun_grace_s": 0});
    let short = created(&d, &body).await;
    let (_, username, password) = common::turn_credentials(&join_as(&d, &short, "host").await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = common::turn_crate_client(d.turn_udp, socket, &username, &password, "duet").await;
    let r = tokio::time::timeout(Duration::from_secs(10), client.allocate()).await.expect("an answer in 10 s");
    assert!(r.is_err(), "an expired credential allocated");
    let _ = client.close().await;
}
