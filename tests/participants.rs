//! Issue 8, "Participants" and "Two kinds of booking": participants' `email`, `time_zone`, `locale`; link rotation
//! and revocation; booking `metadata`; `kind: "external_link"` bookings. Every test runs on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{Backend, Daemon, booking_body, join_as, participant, signal_first_frame};

crate::on_both_backends!(
    participant_fields_are_stored_and_echoed,
    participant_fields_are_validated,
    metadata_is_echoed_verbatim_and_limited,
    rotate_replaces_the_link_and_ends_old_sessions,
    old_links_lose_their_relay_allocations,
    revoke_ends_the_link_and_the_socket,
    link_calls_are_404_outside_the_tenant,
    external_link_bookings_join_with_the_url,
    external_link_create_is_validated
);

/// A raw POST with the daemon's API key; returns (status, body text).
async fn post_raw(d: &Daemon, path: &str, body: String) -> (u16, String) {
    post_raw_with(d, &d.api_key, path, body).await
}

async fn post_raw_with(d: &Daemon, key: &str, path: &str, body: String) -> (u16, String) {
    let r = d
        .client()
        .post(d.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// POST with the daemon's API key and an empty body; returns (status, JSON body).
async fn post(d: &Daemon, path: &str) -> (u16, Value) {
    let (s, t) = post_raw(d, path, String::new()).await;
    (s, serde_json::from_str(&t).unwrap_or(Value::Null))
}

async fn get(d: &Daemon, path: &str) -> (u16, Value) {
    let r = d.client().get(d.url(path)).bearer_auth(&d.api_key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Asserts an error answer: status, `error` code and `field`.
fn assert_error(case: &str, got: (u16, &Value), status: u16, code: &str, field: Option<&str>) {
    assert_eq!(got.0, status, "{case}: {}", got.1);
    assert_eq!(got.1["error"], code, "{case}: {}", got.1);
    if let Some(f) = field {
        assert_eq!(got.1["field"], f, "{case}: {}", got.1);
    }
}

fn link_of(booking: &Value, role: &str) -> String {
    participant(booking, role)["link_token"].as_str().expect("link_token").to_string()
}

async fn create(d: &Daemon, body: &Value) -> (u16, Value) {
    d.create_booking(body).await
}

async fn participant_fields_are_stored_and_echoed(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let mut body = booking_body(600, 1800);
    body["participants"][0]["email"] = json!("ana@clinic.example");
    body["participants"][0]["time_zone"] = json!("Europe/Berlin");
    body["participants"][0]["locale"] = json!("en-GB");
    body["participants"][1]["time_zone"] = json!("UTC");
    body["participants"][1]["locale"] = json!("es");
    let (s, created) = create(&d, &body).await;
    assert_eq!(s, 201, "{created}");
    let (s, got) = get(&d, &format!("/v1/bookings/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(s, 200);
    for b in [&created, &got] {
        let host = participant(b, "host");
        assert_eq!(
            (&host["email"], &host["time_zone"], &host["locale"], &host["link_revoked"]),
            (&json!("ana@clinic.example"), &json!("Europe/Berlin"), &json!("en-GB"), &json!(false)),
            "{b}"
        );
        let guest = participant(b, "guest");
        assert_eq!(
            (&guest["email"], &guest["time_zone"], &guest["locale"]),
            (&Value::Null, &json!("UTC"), &json!("es"))
        );
        assert_eq!((&b["kind"], &b["external_url"], &b["metadata"]), (&json!("hosted"), &Value::Null, &Value::Null));
    }
}

async fn participant_fields_are_validated(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let long_email = format!("{}@example.org", "a".repeat(60) + &".b".repeat(100));
    let cases: &[(usize, &str, Value, u16, &str)] = &[
        (0, "email", json!("not-an-email"), 422, "invalid_field"),
        (0, "email", json!("ana @clinic.example"), 422, "invalid_field"),
        (1, "email", json!("jd@localhost"), 422, "invalid_field"),
        (0, "email", json!(long_email), 422, "invalid_field"),
        (1, "time_zone", json!("Mars/Olympus_Mons"), 422, "invalid_time_zone"),
        (0, "time_zone", json!("europe/berlin"), 422, "invalid_time_zone"),
        (0, "time_zone", json!(""), 422, "invalid_time_zone"),
        (0, "locale", json!("english!"), 422, "invalid_field"),
        (1, "locale", json!("en_GB"), 422, "invalid_field"),
        (1, "locale", json!("e"), 422, "invalid_field"),
        (0, "email", json!(42), 400, "invalid_request"),
    ];
    for (i, member, value, status, code) in cases {
        let mut body = booking_body(600, 1800);
        body["participants"][*i][*member] = value.clone();
        let (s, err) = create(&d, &body).await;
        let field = format!("participants[{i}].{member}");
        let want_field = (*status == 422).then_some(field.as_str());
        assert_error(&format!("{member} = {value}"), (s, &err), *status, code, want_field);
    }
    common::assert_alive(&mut d);
    let (s, b) = create(&d, &booking_body(600, 1800)).await;
    assert_eq!(s, 201, "still serves: {b}");
}

async fn metadata_is_echoed_verbatim_and_limited(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    // Key order, spacing and numbers exactly as sent.
    let meta = r#"{"z_last": 1.50, "a": [1, {"b": "V-1182"}], "clinic_visit_id":"V-1182"}"#;
    let mut body = booking_body(600, 1800).to_string();
    body.insert_str(body.len() - 1, &format!(r#","metadata":{meta}"#));
    let (s, text) = post_raw(&d, "/v1/bookings", body).await;
    assert_eq!(s, 201, "{text}");
    assert!(text.contains(&format!(r#""metadata":{meta}"#)), "metadata verbatim in the create answer: {text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_string();
    let r = d.client().get(d.url(&format!("/v1/bookings/{id}"))).bearer_auth(&d.api_key).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!(r#""metadata":{meta}"#)), "metadata verbatim in GET: {text}");
    let r = d.client().get(d.url("/v1/bookings")).bearer_auth(&d.api_key).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!(r#""metadata":{meta}"#)), "metadata verbatim in the list: {text}");

    // Exactly 4096 bytes is accepted, 4097 refused.
    let fill = |n: usize| format!(r#"{{"k":"{}"}}"#, "x".repeat(n - 8));
    assert_eq!(fill(4096).len(), 4096);
    let mut ok = booking_body(600, 1800);
    ok["metadata"] = serde_json::from_str(&fill(4096)).unwrap();
    let (s, b) = create(&d, &ok).await;
    assert_eq!(s, 201, "4096 bytes: {b}");
    let bad: &[(&str, Value)] = &[
        ("4097 bytes", serde_json::from_str(&fill(4097)).unwrap()),
        ("an array", json!([1, 2])),
        ("a string", json!("V-1182")),
        ("5 levels", json!({"a": {"b": {"c": {"d": {"e": 1}}}}})),
    ];
    for (case, m) in bad {
        let mut body = booking_body(600, 1800);
        body["metadata"] = m.clone();
        let (s, err) = create(&d, &body).await;
        assert_error(case, (s, &err), 422, "invalid_field", Some("metadata"));
    }
    let mut four = booking_body(600, 1800);
    four["metadata"] = json!({"a": {"b": {"c": {"d": 1}}}});
    assert_eq!(create(&d, &four).await.0, 201, "4 levels are fine");
}

/// Opens a native socket with `join`'s session token and reads the `welcome`; returns the socket.
async fn open_socket(
    join: &Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}?token={}", join["signal_url"].as_str().unwrap(), join["session_token"].as_str().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("welcome in time");
    match first {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "welcome", "{v}");
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    ws
}

/// Reads until the server closes the socket; returns the close code.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> u16 {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map_or(1005, |f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("socket ended without a close frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("closed within 10 s")
}

async fn rotate_replaces_the_link_and_ends_old_sessions(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = d.booking_now(60, 1800).await;
    let id = b["id"].as_str().unwrap();
    let host = participant(&b, "host")["id"].as_str().unwrap().to_string();
    let old_link = link_of(&b, "host");
    let old_join = join_as(&d, &b, "host").await;
    let guest_join = join_as(&d, &b, "guest").await;
    let mut host_ws = open_socket(&old_join).await;
    let mut guest_ws = open_socket(&guest_join).await;

    let (s, rotated) = post(&d, &format!("/v1/bookings/{id}/participants/{host}/link/rotate")).await;
    assert_eq!(s, 200, "{rotated}");
    let new_link = rotated["link_token"].as_str().expect("new link_token").to_string();
    assert_ne!(new_link, old_link);
    assert!(rotated["join_url"].as_str().unwrap().ends_with(&format!("/j/{new_link}")), "{rotated}");
    assert_eq!(
        (&rotated["id"], &rotated["role"], &rotated["link_revoked"]),
        (&json!(host), &json!("host"), &json!(false))
    );

    // The live socket of the host is closed 4001; the guest stays and hears that the host left.
    assert_eq!(close_code(&mut host_ws).await, 4001);
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Text(t))) = guest_ws.next().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "peer-left" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("peer-left to the guest");
    assert_eq!(left["type"], "peer-left");

    // Old link 404 at once, old session token refused, new link joins and its token is admitted.
    let (s, _, err) = d.join(&old_link).await;
    assert_error("old link", (s, &err), 404, "link_invalid_or_revoked", None);
    assert_eq!(signal_first_frame(&old_join).await.err(), Some(4001), "old session token refused");
    let (s, _, new_join) = d.join(&new_link).await;
    assert_eq!(s, 200, "{new_join}");
    let welcome = signal_first_frame(&new_join).await.expect("new token admitted");
    assert_eq!(welcome["type"], "welcome");
    // The guest's token is untouched by the host's rotation.
    assert_eq!(signal_first_frame(&guest_join).await.expect("guest still admitted")["type"], "welcome");
    // The link is never shown again.
    let (_, got) = get(&d, &format!("/v1/bookings/{id}")).await;
    assert!(participant(&got, "host").get("link_token").is_none(), "{got}");
}

async fn revoke_ends_the_link_and_the_socket(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = d.booking_now(60, 1800).await;
    let id = b["id"].as_str().unwrap();
    let guest = participant(&b, "guest")["id"].as_str().unwrap().to_string();
    let link = link_of(&b, "guest");
    let joined = join_as(&d, &b, "guest").await;
    let mut ws = open_socket(&joined).await;

    let path = format!("/v1/bookings/{id}/participants/{guest}/link/revoke");
    let (s, revoked) = post(&d, &path).await;
    assert_eq!(s, 200, "{revoked}");
    assert_eq!(revoked["link_revoked"], true, "{revoked}");
    assert!(revoked.get("link_token").is_none() && revoked.get("join_url").is_none(), "{revoked}");
    assert_eq!(close_code(&mut ws).await, 4004);
    let (s, _, err) = d.join(&link).await;
    assert_error("revoked link", (s, &err), 404, "link_invalid_or_revoked", None);
    assert_eq!(signal_first_frame(&joined).await.err(), Some(4001), "session token of a revoked link");
    let (_, got) = get(&d, &format!("/v1/bookings/{id}")).await;
    assert_eq!(participant(&got, "guest")["link_revoked"], true, "{got}");
    assert_eq!(participant(&got, "host")["link_revoked"], false, "{got}");
    // Idempotent; the host is unaffected.
    assert_eq!(post(&d, &path).await.0, 200);
    join_as(&d, &b, "host").await;
    // A rotation gives the participant a working link again.
    let (s, rotated) = post(&d, &format!("/v1/bookings/{id}/participants/{guest}/link/rotate")).await;
    assert_eq!((s, &rotated["link_revoked"]), (200, &json!(false)), "{rotated}");
    let (s, _, j) = d.join(rotated["link_token"].as_str().unwrap()).await;
    assert_eq!(s, 200, "{j}");
}

async fn link_calls_are_404_outside_the_tenant(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = d.booking_now(600, 1800).await;
    let id = b["id"].as_str().unwrap();
    let host = participant(&b, "host")["id"].as_str().unwrap();
    let guest_of_other = d.booking_now(600, 1800).await;
    let foreign_pid = participant(&guest_of_other, "guest")["id"].as_str().unwrap();
    for op in ["rotate", "revoke"] {
        for (case, path) in [
            ("unknown participant", format!("/v1/bookings/{id}/participants/par_nope/link/{op}")),
            ("participant of another booking", format!("/v1/bookings/{id}/participants/{foreign_pid}/link/{op}")),
            ("unknown booking", format!("/v1/bookings/bkg_nope/participants/{host}/link/{op}")),
        ] {
            let (s, err) = post(&d, &path).await;
            assert_error(&format!("{op}: {case}"), (s, &err), 404, "not_found", None);
        }
    }
    // Another tenant's key: 404; a key without bookings:write: 403.
    let admin = |path: &str, body: Value| {
        let (d, path) = (&d, path.to_string());
        async move {
            let (s, t) = post_raw(d, &path, body.to_string()).await;
            assert_eq!(s, 201, "{path}: {t}");
            serde_json::from_str::<Value>(&t).unwrap()
        }
    };
    let tenant = admin("/v1/admin/tenants", json!({"name": "Other clinic"})).await;
    let other =
        admin("/v1/admin/api-keys", json!({"tenant_id": tenant["id"], "scopes": ["bookings:read", "bookings:write"]}))
            .await;
    let reader = admin("/v1/admin/api-keys", json!({"tenant_id": "ten_default", "scopes": ["bookings:read"]})).await;
    let path = format!("/v1/bookings/{id}/participants/{host}/link/rotate");
    let (s, t) = post_raw_with(&d, other["key"].as_str().unwrap(), &path, String::new()).await;
    assert_error("another tenant", (s, &serde_json::from_str(&t).unwrap()), 404, "not_found", None);
    let (s, t) = post_raw_with(&d, reader["key"].as_str().unwrap(), &path, String::new()).await;
    assert_error("read-only key", (s, &serde_json::from_str(&t).unwrap()), 403, "insufficient_scope", None);
    // Nothing changed: the original link still joins (window opens 15 min before start for the host).
    let (s, _, _) = d.join(&link_of(&b, "host")).await;
    assert_eq!(s, 200);
}

fn external_body(start_in_s: i64, len_s: i64, url: &str) -> Value {
    let mut b = booking_body(start_in_s, len_s);
    b["kind"] = json!("external_link");
    b["external_url"] = json!(url);
    b
}

async fn external_link_bookings_join_with_the_url(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let url = "https://meet.example.com/abc-defg-hij?pwd=x";
    let (s, b) = create(&d, &external_body(60, 1800, url)).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!((&b["kind"], &b["external_url"]), (&json!("external_link"), &json!(url)));
    let (_, got) = get(&d, &format!("/v1/bookings/{}", b["id"].as_str().unwrap())).await;
    assert_eq!((&got["kind"], &got["external_url"]), (&json!("external_link"), &json!(url)));

    for role in ["host", "guest"] {
        let j = join_as(&d, &b, role).await;
        assert_eq!((&j["kind"], &j["external_url"], &j["role"]), (&json!("external_link"), &json!(url), &json!(role)));
        assert!(j["window"]["hard_end_at"].is_string(), "{j}");
        for absent in ["session_token", "ice_servers", "signal_url"] {
            assert!(j.get(absent).is_none(), "no {absent} for an external link: {j}");
        }
    }
    // Signaling never admits it, even with a correctly signed token.
    let keys = duet::data_dir::DataDir::open(&d.data_dir).unwrap().secrets().unwrap().session_keyring().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let host = participant(&b, "host");
    let claims = duet::booking::tokens::SessionClaims {
        iss: duet::booking::tokens::ISSUER.into(),
        aud: duet::booking::tokens::AUDIENCE.into(),
        sub: host["id"].as_str().unwrap().into(),
        jti: "forged".into(),
        iat: now,
        nbf: now - 60,
        exp: now + 600,
        bkg: b["id"].as_str().unwrap().into(),
        role: duet::booking::window::Role::Host,
        seq: 0,
        pep: 0,
    };
    let forged = json!({"signal_url": format!("ws://{}/v1/signal", d.http), "session_token": keys.sign(&claims)});
    assert_eq!(signal_first_frame(&forged).await.err(), Some(4004), "an external-link booking has no room");

    // The same window and status rules as a hosted booking.
    let (_, early) = create(&d, &external_body(7200, 1800, url)).await;
    let (s, _, err) = d.join(&link_of(&early, "guest")).await;
    assert_error("too early", (s, &err), 403, "join_too_early", None);
    let mut pending = external_body(60, 1800, url);
    pending["status"] = json!("pending");
    let (_, pending) = create(&d, &pending).await;
    let (s, _, err) = d.join(&link_of(&pending, "guest")).await;
    assert_error("pending", (s, &err), 409, "booking_pending_confirmation", None);
    let (s, _) = post(&d, &format!("/v1/bookings/{}/cancel", b["id"].as_str().unwrap())).await;
    assert_eq!(s, 200);
    let (s, _, err) = d.join(&link_of(&b, "guest")).await;
    assert_error("cancelled", (s, &err), 410, "booking_cancelled", None);
}

async fn external_link_create_is_validated(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let long = format!("https://meet.example.com/{}", "a".repeat(2048));
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("http URL", external_body(600, 1800, "http://meet.example.com/x"), 422, "invalid_field"),
        ("no host", external_body(600, 1800, "https://"), 422, "invalid_field"),
        ("javascript URL", external_body(600, 1800, "javascript:alert(1)"), 422, "invalid_field"),
        ("spaces", external_body(600, 1800, "https://meet.example.com/a b"), 422, "invalid_field"),
        ("over 2048", external_body(600, 1800, &long), 422, "invalid_field"),
        (
            "missing URL",
            {
                let mut b = booking_body(600, 1800);
                b["kind"] = json!("external_link");
                b
            },
            422,
            "missing_field",
        ),
        (
            "URL on a hosted booking",
            {
                let mut b = booking_body(600, 1800);
                b["external_url"] = json!("https://meet.example.com/x");
                b
            },
            422,
            "invalid_field",
        ),
    ];
    for (case, body, status, code) in cases {
        let (s, err) = create(&d, &body).await;
        assert_error(case, (s, &err), status, code, Some("external_url"));
    }
    let mut bad_kind = booking_body(600, 1800);
    bad_kind["kind"] = json!("zoom");
    let (s, err) = create(&d, &bad_kind).await;
    assert_error("unknown kind", (s, &err), 400, "invalid_request", None);
    common::assert_alive(&mut d);
    let ok = format!("https://meet.example.com/{}", "a".repeat(2048 - 25));
    assert_eq!(ok.len(), 2048);
    let (s, b) = create(&d, &external_body(600, 1800, &ok)).await;
    assert_eq!(s, 201, "2048 characters: {b}");
}

/// Allocates a TURN relay with a join answer's credentials; `Ok` or the error text.
async fn allocate(d: &Daemon, join: &Value) -> (turn::client::Client, Result<(), String>) {
    let (_, username, password) = common::turn_credentials(join);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = common::turn_crate_client(d.turn_udp, socket, &username, &password, "duet").await;
    let r = match tokio::time::timeout(Duration::from_secs(10), client.allocate()).await {
        Err(_) => Err("no answer within 10 s".to_string()),
        Ok(Ok(_relay)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
    };
    (client, r)
}

/// The number of live UDP allocations once it equals `want`, or after 5 s.
async fn active_allocations(d: &Daemon, want: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = common::metric(&d.metrics().await, "duet_turn_allocations_active{transport=\"udp\"}").unwrap_or(-1.0);
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rotation or revocation also ends the old link at the relay: its allocations are torn down at once (media
/// relayed for it stops) and its TURN credentials are refused, also after a restart; the new link's credentials and
/// the other participant's keep working.
async fn old_links_lose_their_relay_allocations(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = d.booking_now(60, 1800).await;
    let id = b["id"].as_str().unwrap().to_string();
    let (host, guest) =
        (participant(&b, "host")["id"].as_str().unwrap(), participant(&b, "guest")["id"].as_str().unwrap());
    let old_host = join_as(&d, &b, "host").await;
    let guest_join = join_as(&d, &b, "guest").await;
    let (_c1, r) = allocate(&d, &old_host).await;
    assert_eq!(r, Ok(()), "the host's first allocation");
    let (_c2, r) = allocate(&d, &guest_join).await;
    assert_eq!(r, Ok(()), "the guest's allocation");
    assert_eq!(active_allocations(&d, 2.0).await, 2.0);

    let (s, rotated) = post(&d, &format!("/v1/bookings/{id}/participants/{host}/link/rotate")).await;
    assert_eq!(s, 200, "{rotated}");
    assert_eq!(active_allocations(&d, 1.0).await, 1.0, "the old link's allocation is torn down at once");
    let (_c3, r) = allocate(&d, &old_host).await;
    assert!(r.is_err(), "the old link's TURN credentials still allocate");
    let (s, _, new_host) = d.join(rotated["link_token"].as_str().unwrap()).await;
    assert_eq!(s, 200, "{new_host}");
    let (_, new_user, _) = common::turn_credentials(&new_host);
    assert!(new_user.ends_with(&format!(":{host}.1")), "the new credentials carry the link epoch: {new_user}");
    let (_c4, r) = allocate(&d, &new_host).await;
    assert_eq!(r, Ok(()), "the new link's credentials allocate");
    assert_eq!(active_allocations(&d, 2.0).await, 2.0, "the guest's allocation was untouched");

    let (s, revoked) = post(&d, &format!("/v1/bookings/{id}/participants/{guest}/link/revoke")).await;
    assert_eq!(s, 200, "{revoked}");
    assert_eq!(active_allocations(&d, 1.0).await, 1.0, "the revoked guest's allocation is torn down at once");

    // After a restart the rule is rebuilt from the database.
    let d = d.restart();
    let (_c5, r) = allocate(&d, &old_host).await;
    assert!(r.is_err(), "after restart the old link's credentials allocate");
    let (_c6, r) = allocate(&d, &guest_join).await;
    assert!(r.is_err(), "after restart the revoked guest's credentials allocate");
    let (_c7, r) = allocate(&d, &new_host).await;
    assert_eq!(r, Ok(()), "after restart the new link's credentials allocate");
}
