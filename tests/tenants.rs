//! Tenants and API keys (issue 8, first bullet), on SQLite and on PostgreSQL: tenant isolation (404), scopes (403
//! `insufficient_scope`), expired and revoked keys (401, one body), the `/v1/admin/` endpoints, `duet tenant` and
//! `duet api-key create|list|rotate|revoke` against a running daemon, and an old SQLite database upgraded in place.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use common::{Backend, Daemon, booking_body, run_duet};

crate::on_both_backends!(
    tenant_keys_see_only_their_tenant,
    scopes_are_checked_per_endpoint,
    admin_endpoints_need_the_admin_scope,
    admin_endpoints_refuse_bad_input,
    expired_and_revoked_keys_get_401,
    cli_manages_tenants_and_keys_of_a_running_daemon,
);

/// One request with `Authorization: Bearer <key>` (none when `key` is empty); returns (status, headers, body).
async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = d.client().request(method.parse().unwrap(), d.url(path));
    if !key.is_empty() {
        r = r.bearer_auth(key);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

/// `POST /v1/admin/tenants` with the daemon's admin key; the new tenant's id.
async fn new_tenant(d: &Daemon, name: &str) -> String {
    let (status, _, body) = call(d, "POST", "/v1/admin/tenants", &d.api_key, Some(&json!({"name": name}))).await;
    assert_eq!(status, 201, "create tenant: {body}");
    assert_eq!(body["name"], name);
    assert!(body["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    body["id"].as_str().expect("tenant id").to_string()
}

/// `POST /v1/admin/api-keys` with the daemon's admin key; (key id, key).
async fn new_key(d: &Daemon, tenant: &str, scopes: &[&str], extra: Value) -> (String, String) {
    let mut req = json!({"tenant_id": tenant, "scopes": scopes});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    let (status, _, body) = call(d, "POST", "/v1/admin/api-keys", &d.api_key, Some(&req)).await;
    assert_eq!(status, 201, "create key: {body}");
    assert_eq!(body["tenant_id"], tenant);
    assert_eq!(body["revoked_at"], Value::Null);
    assert!(body.get("key_hash").is_none(), "{body}");
    (body["id"].as_str().unwrap().to_string(), body["key"].as_str().expect("the key, once").to_string())
}

/// The 401 every refused key gets: `unauthorized`, `WWW-Authenticate: Bearer`, one body.
fn assert_unauthorized(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{what}");
    assert_eq!(body, &json!({"error": "unauthorized", "message": "missing or invalid API key"}), "{what}");
}

/// 403 `insufficient_scope` naming `scope` (member, message, `WWW-Authenticate`).
fn assert_insufficient_scope(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, scope: &str, what: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    assert_eq!(body["error"], "insufficient_scope", "{what}: {body}");
    assert_eq!(body["scope"], scope, "{what}: {body}");
    assert!(body["message"].as_str().unwrap().contains(scope), "{what}: {body}");
    let www = headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(www.contains("insufficient_scope") && www.contains(scope), "{what}: {www}");
}

/// A key of tenant A gets 404 for tenant B's booking (read and cancel), the same 404 as an unknown id; the owner
/// reads it; an operator key of the default tenant is no bookings superuser either.
async fn tenant_keys_see_only_their_tenant(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let a = new_tenant(&d, "Clinic A").await;
    let b = new_tenant(&d, "Gym B").await;
    assert_ne!(a, b);
    let (_, key_a) = new_key(&d, &a, &["bookings:read", "bookings:write"], json!({})).await;
    let (_, key_b) = new_key(&d, &b, &["bookings:read", "bookings:write"], json!({})).await;

    let (status, booking) = d.create_booking_with(&key_a, &booking_body(600, 1800)).await;
    assert_eq!(status, 201, "{booking}");
    let id = booking["id"].as_str().unwrap();
    let path = format!("/v1/bookings/{id}");

    let (status, _, body) = call(&d, "GET", &path, &key_a, None).await;
    assert_eq!((status, body["id"].as_str()), (200, Some(id)), "{body}");
    let (status, _, not_found) = call(&d, "GET", &path, &key_b, None).await;
    assert_eq!(status, 404, "tenant B reads A's booking: {not_found}");
    let (status, _, unknown) = call(&d, "GET", "/v1/bookings/bkg_00000000000000000000000000000000", &key_b, None).await;
    assert_eq!((status, &unknown), (404, &not_found), "no existence oracle");
    let (status, _, body) = call(&d, "POST", &format!("{path}/cancel"), &key_b, Some(&json!({}))).await;
    assert_eq!(status, 404, "tenant B cancels A's booking: {body}");
    let (status, _, body) = call(&d, "GET", &path, &d.api_key, None).await;
    assert_eq!(status, 404, "the operator key acts for the default tenant only: {body}");
    let (status, _, body) = call(&d, "GET", &path, &key_a, None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("confirmed")), "B's cancel changed nothing: {body}");
}

/// `bookings:read` reads but cannot create or cancel (403 naming `bookings:write`); `bookings:write` creates and
/// cancels but cannot read (403 naming `bookings:read`); a 403 writes nothing.
async fn scopes_are_checked_per_endpoint(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let t = new_tenant(&d, "Desk").await;
    let (_, read) = new_key(&d, &t, &["bookings:read"], json!({"name": "reporting"})).await;
    let (_, write) = new_key(&d, &t, &["bookings:write"], json!({})).await;

    let body = booking_body(600, 1800);
    let (status, headers, refused) = call(&d, "POST", "/v1/bookings", &read, Some(&body)).await;
    assert_insufficient_scope(status, &headers, &refused, "bookings:write", "read-only key creates");
    let (status, created) = d.create_booking_with(&write, &body).await;
    assert_eq!(status, 201, "the write key creates: {created}");
    let path = format!("/v1/bookings/{}", created["id"].as_str().unwrap());

    let (status, headers, refused) = call(&d, "GET", &path, &write, None).await;
    assert_insufficient_scope(status, &headers, &refused, "bookings:read", "write-only key reads");
    let (status, _, got) = call(&d, "GET", &path, &read, None).await;
    assert_eq!(status, 200, "{got}");
    let (status, headers, refused) = call(&d, "POST", &format!("{path}/cancel"), &read, Some(&json!({}))).await;
    assert_insufficient_scope(status, &headers, &refused, "bookings:write", "read-only key cancels");
    let (_, _, got) = call(&d, "GET", &path, &read, None).await;
    assert_eq!(got["status"], "confirmed", "a refused cancel changes nothing");
    for action in ["confirm", "reject"] {
        let (status, headers, refused) = call(&d, "POST", &format!("{path}/{action}"), &read, Some(&json!({}))).await;
        assert_insufficient_scope(status, &headers, &refused, "bookings:write", &format!("read-only key {action}s"));
    }
    let (status, headers, refused) = call(&d, "GET", "/v1/bookings", &write, None).await;
    assert_insufficient_scope(status, &headers, &refused, "bookings:read", "write-only key lists");
    let (status, _, page) = call(&d, "GET", "/v1/bookings", &read, None).await;
    assert_eq!((status, page["bookings"].as_array().map(Vec::len)), (200, Some(1)), "{page}");
    let (status, _, got) = call(&d, "POST", &format!("{path}/cancel"), &write, Some(&json!({}))).await;
    assert_eq!((status, got["status"].as_str()), (200, Some("cancelled")), "{got}");
}

/// Every `/v1/admin/` endpoint: 401 without a key, 403 `insufficient_scope` (`admin`) for a key with every booking
/// scope; with the operator key: tenants and keys created and listed, the key shown only at creation.
async fn admin_endpoints_need_the_admin_scope(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let t = new_tenant(&d, "Tenant T").await;
    let (kid, key) = new_key(&d, &t, &["bookings:read", "bookings:write"], json!({"name": "backend"})).await;
    let endpoints: [(&str, String, Option<Value>); 5] = [
        ("POST", "/v1/admin/tenants".into(), Some(json!({"name": "x"}))),
        ("GET", "/v1/admin/tenants".into(), None),
        ("POST", "/v1/admin/api-keys".into(), Some(json!({"tenant_id": t, "scopes": ["bookings:read"]}))),
        ("GET", format!("/v1/admin/api-keys?tenant_id={t}"), None),
        ("POST", format!("/v1/admin/api-keys/{kid}/revoke"), None),
    ];
    for (method, path, body) in &endpoints {
        let (status, headers, got) = call(&d, method, path, &key, body.as_ref()).await;
        assert_insufficient_scope(status, &headers, &got, "admin", &format!("{method} {path} with a tenant key"));
        let (status, headers, got) = call(&d, method, path, "", body.as_ref()).await;
        assert_unauthorized(status, &headers, &got, &format!("{method} {path} without a key"));
    }
    // Nothing was created or revoked by the refused calls.
    let (status, _, tenants) = call(&d, "GET", "/v1/admin/tenants", &d.api_key, None).await;
    assert_eq!(status, 200, "{tenants}");
    let names: Vec<&str> = tenants["tenants"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "Tenant T"], "{tenants}");
    assert_eq!(tenants["tenants"][0]["id"], "ten_default");
    let (status, _, keys) = call(&d, "GET", &format!("/v1/admin/api-keys?tenant_id={t}"), &d.api_key, None).await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(
        keys["api_keys"],
        json!([{"id": kid, "tenant_id": t, "name": "backend", "scopes": ["bookings:read", "bookings:write"],
                "created_at": keys["api_keys"][0]["created_at"], "expires_at": null, "revoked_at": null}]),
        "the list shows the row, never the key or its hash"
    );
    assert!(!keys.to_string().contains(&key));
    // All tenants: the admin key of the default tenant has every scope.
    let (_, _, all) = call(&d, "GET", "/v1/admin/api-keys", &d.api_key, None).await;
    let admin = all["api_keys"].as_array().unwrap().iter().find(|k| k["id"] == "key_admin").expect("key_admin").clone();
    assert_eq!(admin["tenant_id"], "ten_default");
    assert_eq!(admin["scopes"], json!(["bookings:read", "bookings:write", "admin"]));
    assert!(!all.to_string().contains(&d.api_key));
    // An operator key created through the API can administer too.
    let (_, operator) = new_key(&d, "ten_default", &["admin"], json!({})).await;
    let (status, _, got) =
        call(&d, "POST", "/v1/admin/tenants", &operator, Some(&json!({"name": "by operator"}))).await;
    assert_eq!(status, 201, "{got}");
    // Revoke: idempotent, unknown id 404.
    let path = format!("/v1/admin/api-keys/{kid}/revoke");
    let (status, _, first) = call(&d, "POST", &path, &d.api_key, None).await;
    assert_eq!(status, 200, "{first}");
    assert!(first["revoked_at"].as_str().is_some(), "{first}");
    let (status, _, second) = call(&d, "POST", &path, &d.api_key, None).await;
    assert_eq!((status, &second), (200, &first), "a second revoke changes nothing");
    let (status, _, got) = call(&d, "POST", "/v1/admin/api-keys/key_nope/revoke", &d.api_key, None).await;
    assert_eq!((status, got["error"].as_str()), (404, Some("not_found")), "{got}");
}

/// Bad input on the admin endpoints gets the codes of the README API table, and creates nothing.
async fn admin_endpoints_refuse_bad_input(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let t = new_tenant(&d, "T").await;
    let cases: [(&str, Value, u16, &str, Option<&str>); 10] = [
        ("/v1/admin/tenants", json!({}), 422, "missing_field", Some("name")),
        ("/v1/admin/tenants", json!({"name": ""}), 422, "invalid_field", Some("name")),
        ("/v1/admin/tenants", json!({"name": "a\u{7}b"}), 422, "invalid_field", Some("name")),
        ("/v1/admin/tenants", json!({"name": "x", "plan": "gold"}), 400, "invalid_request", Some("plan")),
        (
            "/v1/admin/api-keys",
            json!({"tenant_id": "ten_nope", "scopes": ["bookings:read"]}),
            422,
            "unknown_tenant",
            Some("tenant_id"),
        ),
        ("/v1/admin/api-keys", json!({"tenant_id": t, "scopes": []}), 422, "invalid_field", Some("scopes")),
        ("/v1/admin/api-keys", json!({"tenant_id": t, "scopes": ["admin"]}), 422, "invalid_field", Some("scopes")),
        (
            "/v1/admin/api-keys",
            json!({"tenant_id": t, "scopes": ["bookings:read"], "expires_at": "2020-01-01T00:00:00Z"}),
            422,
            "invalid_field",
            Some("expires_at"),
        ),
        (
            "/v1/admin/api-keys",
            json!({"tenant_id": t, "scopes": ["bookings:read"], "expires_at": "2030-01-01T00:00:00"}),
            422,
            "invalid_datetime",
            Some("expires_at"),
        ),
        ("/v1/admin/api-keys", json!({"tenant_id": t, "scopes": ["everything"]}), 400, "invalid_request", None),
    ];
    for (path, body, status, code, field) in cases {
        let (got, _, resp) = call(&d, "POST", path, &d.api_key, Some(&body)).await;
        assert_eq!((got, resp["error"].as_str()), (status, Some(code)), "{path} {body}: {resp}");
        assert_eq!(resp["field"].as_str(), field, "{path} {body}: {resp}");
    }
    let (status, _, resp) = call(&d, "GET", "/v1/admin/api-keys?tenant=x", &d.api_key, None).await;
    assert_eq!((status, resp["error"].as_str()), (400, Some("invalid_request")), "{resp}");
    let (_, _, tenants) = call(&d, "GET", "/v1/admin/tenants", &d.api_key, None).await;
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 2, "nothing created: {tenants}");
    let (_, _, keys) = call(&d, "GET", &format!("/v1/admin/api-keys?tenant_id={t}"), &d.api_key, None).await;
    assert_eq!(keys["api_keys"], json!([]), "nothing created");
}

/// An expired key and a revoked key get the 401 of an unknown key (same body, `WWW-Authenticate`), at once.
async fn expired_and_revoked_keys_get_401(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let t = new_tenant(&d, "T").await;
    let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 5;
    let soon = time::OffsetDateTime::from_unix_timestamp(soon).unwrap();
    let expires = soon.format(&time::format_description::well_known::Rfc3339).unwrap();
    let (_, expiring) = new_key(&d, &t, &["bookings:read", "bookings:write"], json!({"expires_at": expires})).await;
    let (kid, revoked) = new_key(&d, &t, &["bookings:read", "bookings:write"], json!({})).await;
    let (status, body) = d.create_booking_with(&expiring, &booking_body(600, 1800)).await;
    assert_eq!(status, 201, "before its expiry: {body}");
    let (status, body) = d.create_booking_with(&revoked, &booking_body(600, 1800)).await;
    assert_eq!(status, 201, "before its revocation: {body}");

    let (status, _, got) = call(&d, "POST", &format!("/v1/admin/api-keys/{kid}/revoke"), &d.api_key, None).await;
    assert_eq!(status, 200, "{got}");
    let (status, headers, got) = call(&d, "POST", "/v1/bookings", &revoked, Some(&booking_body(600, 1800))).await;
    assert_unauthorized(status, &headers, &got, "a revoked key, right after the revoke");
    let (status, headers, got) = call(&d, "GET", "/v1/admin/tenants", "dk_unknown", None).await;
    assert_unauthorized(status, &headers, &got, "an unknown key");

    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let (status, headers, got) = call(&d, "POST", "/v1/bookings", &expiring, Some(&booking_body(600, 1800))).await;
    assert_unauthorized(status, &headers, &got, "an expired key");
    let (_, _, keys) = call(&d, "GET", &format!("/v1/admin/api-keys?tenant_id={t}"), &d.api_key, None).await;
    let row = keys["api_keys"].as_array().unwrap().iter().find(|k| k["revoked_at"].is_null()).expect("expired key");
    assert_eq!(row["expires_at"], expires.as_str(), "{keys}");
}

/// `duet <args> <flag> <path>` (flag `--data-dir` on SQLite, `--config` on PostgreSQL); (success, stdout, stderr).
fn duet_cli(target: &(&str, PathBuf), args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push(target.0.as_ref());
    all.push(target.1.as_os_str());
    let run = run_duet(&all);
    (run.status.success(), run.stdout, run.stderr)
}

/// `duet tenant create|list` and `duet api-key create|list|rotate|revoke KEY_ID` against the database of a running
/// daemon: the key printed once works at once, the list shows the row and never a key, revoke and rotate act from
/// the next request on.
async fn cli_manages_tenants_and_keys_of_a_running_daemon(backend: Backend) {
    let Some((db_config, _db)) = common::database_for(backend) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = Daemon::start_in(&dir, &db_config);
    let target = match backend {
        Backend::Sqlite => ("--data-dir", dir.clone()),
        Backend::Postgres => ("--config", tmp.path().join("config.toml")),
    };
    let cli = |args: &[&str]| {
        let (ok, out, err) = duet_cli(&target, args);
        assert!(ok, "duet {args:?} failed: {err}");
        out
    };

    let tenant = cli(&["tenant", "create", "Physio Clinic"]).trim().to_string();
    assert!(tenant.starts_with("ten_"), "{tenant}");
    let list = cli(&["tenant", "list"]);
    assert!(list.contains(&tenant) && list.contains("Physio Clinic") && list.contains("ten_default"), "{list}");
    let (_, _, tenants) = call(&d, "GET", "/v1/admin/tenants", &d.api_key, None).await;
    assert!(tenants.to_string().contains(&tenant), "the daemon sees the CLI's tenant: {tenants}");

    let key = cli(&[
        "api-key",
        "create",
        "--tenant",
        &tenant,
        "--scopes",
        "bookings:read,bookings:write",
        "--name",
        "app",
        "--expires",
        "30d",
    ])
    .trim()
    .to_string();
    assert!(key.starts_with("dk_"), "create prints the key: {key}");
    let (status, body) = d.create_booking_with(&key, &booking_body(600, 1800)).await;
    assert_eq!(status, 201, "the CLI's key works at once: {body}");

    let listed: Value = serde_json::from_str(&cli(&["api-key", "list", "--tenant", &tenant, "--json"])).unwrap();
    let row = &listed["api_keys"][0];
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!((row["tenant_id"].as_str(), row["name"].as_str()), (Some(tenant.as_str()), Some("app")), "{row}");
    assert_eq!(row["scopes"], json!(["bookings:read", "bookings:write"]));
    assert!(row["expires_at"].as_str().is_some() && row["revoked_at"].is_null(), "{row}");
    let kid = row["id"].as_str().unwrap().to_string();
    let table = cli(&["api-key", "list"]);
    for part in
        [kid.as_str(), tenant.as_str(), "app", "bookings:read,bookings:write", "key_admin", "EXPIRES", "REVOKED"]
    {
        assert!(table.contains(part), "the list shows {part}: {table}");
    }
    assert!(!table.contains(&key) && !table.contains(&d.api_key), "the list never shows keys: {table}");

    let rotated = cli(&["api-key", "rotate", &kid]).trim().to_string();
    assert!(rotated.starts_with("dk_") && rotated != key, "{rotated}");
    let (status, _) = d.create_booking_with(&key, &booking_body(600, 1800)).await;
    assert_eq!(status, 401, "the old key after rotate");
    let (status, _) = d.create_booking_with(&rotated, &booking_body(600, 1800)).await;
    assert_eq!(status, 201, "the rotated key");

    let out = cli(&["api-key", "revoke", &kid]);
    assert!(out.contains("revoked") && out.contains(&kid), "{out}");
    let (status, _) = d.create_booking_with(&rotated, &booking_body(600, 1800)).await;
    assert_eq!(status, 401, "the revoked key at once");
    assert!(dir.join("api-key").exists(), "revoking another key leaves the admin key file alone");
    let (status, _) = d.create_booking_with(&d.api_key, &booking_body(600, 1800)).await;
    assert_eq!(status, 201, "the admin key still works");
    let listed: Value = serde_json::from_str(&cli(&["api-key", "list", "--tenant", &tenant, "--json"])).unwrap();
    assert!(listed["api_keys"][0]["revoked_at"].as_str().is_some(), "{listed}");

    // Refusals: exit 1 with a message, nothing written.
    for (args, says) in [
        (vec!["api-key", "create", "--tenant", &tenant, "--scopes", "admin"], "admin"),
        (vec!["api-key", "create", "--tenant", "ten_nope", "--scopes", "bookings:read"], "tenant"),
        (vec!["api-key", "create", "--tenant", &tenant, "--scopes", "root"], "root"),
        (vec!["api-key", "create", "--tenant", &tenant, "--scopes", "bookings:read", "--expires", "soon"], "--expires"),
        (vec!["api-key", "revoke", "key_nope"], "key_nope"),
        (vec!["api-key", "rotate", "key_nope"], "key_nope"),
    ] {
        let (ok, out, err) = duet_cli(&target, &args);
        assert!(!ok, "duet {args:?} must fail: {out}");
        assert!(err.contains(says), "duet {args:?} says why: {err}");
    }
    let listed: Value = serde_json::from_str(&cli(&["api-key", "list", "--tenant", &tenant, "--json"])).unwrap();
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 1, "{listed}");
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A data directory of a version before tenants (migration 0001 only, its `key_admin` row matching the `api-key`
/// file, a booking) keeps working after the upgrade: the same key creates and reads bookings and administers
/// tenants (all scopes), and the old booking is still there.
#[tokio::test]
async fn old_sqlite_database_keeps_working_after_upgrade() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o700);
    let key = "dk_the-key-of-an-older-version-0123456789";
    std::fs::write(dir.join("api-key"), format!("{key}\n")).unwrap();
    chmod(&dir.join("api-key"), 0o600);

    // The database exactly as the older binary left it: migration 1 recorded by sqlx, no tenants table.
    let db = dir.join("duet.sqlite3");
    let pool =
        SqlitePool::connect_with(SqliteConnectOptions::new().filename(&db).create_if_missing(true)).await.unwrap();
    let init = duet::booking::store::SQLITE_MIGRATIONS.iter().find(|m| m.version == 1).unwrap();
    let old_dir = tmp.path().join("old-migrations");
    std::fs::create_dir(&old_dir).unwrap();
    std::fs::write(old_dir.join("0001_init.sql"), init.sql.as_bytes()).unwrap();
    sqlx::migrate::Migrator::new(old_dir.as_path()).await.unwrap().run(&pool).await.unwrap();
    let hash = duet::api_key::key_hash(key);
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, key_hash, created_at) VALUES ('key_admin', 'ten_default', $1, 5)",
    )
    .bind(&hash)
    .execute(&pool)
    .await
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    sqlx::query(
        "INSERT INTO bookings (id, tenant_id, title, start_at, end_at, host_opens_at, opens_at, join_cutoff_at, \
         hard_end_at, status, created_at, updated_at) VALUES ('bkg_old', 'ten_default', 'old', $1, $2, $1, $1, $2, $2, \
         'confirmed', $3, $3)",
    )
    .bind(now + 3600)
    .bind(now + 7200)
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(&pool).await.unwrap();
    assert!(!tables.iter().any(|t| t == "tenants"), "the old schema has no tenants: {tables:?}");
    pool.close().await;

    let d = Daemon::start_in(&dir, "");
    assert_eq!(d.api_key, key);
    let (status, body) = d.create_booking_with(key, &booking_body(600, 1800)).await;
    assert_eq!(status, 201, "the old key creates: {body}");
    let (status, _, body) = call(&d, "GET", "/v1/bookings/bkg_old", key, None).await;
    assert_eq!((status, body["title"].as_str()), (200, Some("old")), "the old booking is there: {body}");
    let (status, _, body) = call(&d, "POST", "/v1/admin/tenants", key, Some(&json!({"name": "new"}))).await;
    assert_eq!(status, 201, "the old key administers: {body}");
    let (_, _, keys) = call(&d, "GET", "/v1/admin/api-keys?tenant_id=ten_default", key, None).await;
    assert_eq!(keys["api_keys"][0]["id"], "key_admin", "{keys}");
    assert_eq!(keys["api_keys"][0]["scopes"], json!(["bookings:read", "bookings:write", "admin"]), "{keys}");
    let (_, _, tenants) = call(&d, "GET", "/v1/admin/tenants", key, None).await;
    assert_eq!(tenants["tenants"][0]["id"], "ten_default", "{tenants}");
}
