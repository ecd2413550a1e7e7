//! The booking store on both backends (SQLite file, PostgreSQL database of the test's own): the same calls, the same
//! answers. PostgreSQL cases print SKIPPED without `DUET_TEST_DATABASE_URL` (see `common/pg.rs`).

mod common;

use duet::booking::store::{
    Backend as StoreBackend, Booking, IdempotencyRecord, IdempotentCreate, Kind, LinkChange, ListFilter,
    NewParticipant, Status, StatusFilter, Store, StoreError, Transition,
};
use duet::booking::window::{JoinWindow, Role};

use common::Backend;
use common::pg::TestDb;

/// An open store with what keeps its database alive.
struct Opened {
    store: Store,
    _db: Option<TestDb>,
    _tmp: tempfile::TempDir,
}

/// Opens a fresh store on `backend`; `None` when PostgreSQL tests are skipped.
async fn open(backend: Backend) -> Option<Opened> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, db) = match backend {
        Backend::Sqlite => (Store::open(&tmp.path().join("duet.sqlite3")).await.expect("open SQLite"), None),
        Backend::Postgres => {
            let db = TestDb::create()?;
            (Store::open_postgres(&db.url, 4).await.expect("open PostgreSQL"), Some(db))
        }
    };
    let expected = if backend == Backend::Sqlite { StoreBackend::Sqlite } else { StoreBackend::Postgres };
    assert_eq!(store.backend(), expected);
    assert!(store.ping().await, "a fresh store answers its ping");
    Some(Opened { store, _db: db, _tmp: tmp })
}

const T0: i64 = 1_800_000_000;

/// A confirmed booking `id` of `tenant` from T0 + 1 h to T0 + 2 h (hard end 15 min later), no buffers, with its host
/// (`ref` `instructor:<id>`, so fixtures never collide under the no-double-booking rule) and guest rows; link token
/// hashes are derived from `id`.
fn booking(id: &str, tenant: &str, external_id: Option<&str>) -> (Booking, Vec<NewParticipant>) {
    let (start, end) = (T0 + 3600, T0 + 7200);
    let b = Booking {
        id: id.into(),
        tenant_id: tenant.into(),
        title: format!("title of {id}"),
        external_id: external_id.map(String::from),
        start_at: start,
        end_at: end,
        window: JoinWindow {
            host_opens_at: start - 900,
            opens_at: start - 600,
            join_cutoff_at: end,
            hard_end_at: end + 900,
        },
        status: Status::Confirmed,
        sequence: 0,
        created_at: T0,
        updated_at: T0,
        buffer_before_s: 0,
        buffer_after_s: 0,
        participants: Vec::new(),
        kind: duet::booking::store::Kind::Hosted,
        external_url: None,
        metadata: None,
        join_policy: Default::default(),
        max_hard_end_at: end + 900,
        rescheduled_at: None,
        extended_s: 0,
        event_type_id: None,
        note: None,
    };
    let host = format!("instructor:{id}");
    let parts = [(Role::Host, Some(host.as_str()), "Dr. Ana"), (Role::Guest, None, "J. Doe")]
        .into_iter()
        .map(|(role, reference, name)| NewParticipant {
            id: format!("par_{id}_{}", role.as_str()),
            role,
            reference: reference.map(String::from),
            display_name: name.into(),
            link_token_hash: link_hash(id, role),
            link_token_enc: None,
            email: None,
            time_zone: None,
            locale: None,
        })
        .collect();
    (b, parts)
}

fn link_hash(id: &str, role: Role) -> Vec<u8> {
    duet::booking::tokens::link_token_hash(&format!("lnk_{id}_{}", role.as_str()))
}

async fn create_get_cancel(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let (b, parts) = booking("bkg_1", "ten_a", Some("order-1"));
    s.create_booking(&b, &parts).await.expect("create");

    let got = s.booking(Some("ten_a"), "bkg_1").await.unwrap().expect("the booking");
    assert_eq!((got.title.as_str(), got.external_id.as_deref()), ("title of bkg_1", Some("order-1")));
    assert_eq!((got.start_at, got.end_at, got.window), (b.start_at, b.end_at, b.window));
    assert_eq!((got.status, got.sequence, got.created_at, got.updated_at), (Status::Confirmed, 0, T0, T0));
    let roles: Vec<_> =
        got.participants.iter().map(|p| (p.role, p.reference.clone(), p.display_name.clone())).collect();
    assert_eq!(
        roles,
        [(Role::Host, Some("instructor:bkg_1".into()), "Dr. Ana".into()), (Role::Guest, None, "J. Doe".into())]
    );
    assert!(s.booking(Some("ten_b"), "bkg_1").await.unwrap().is_none(), "another tenant's booking is not found");
    assert!(s.booking(None, "bkg_1").await.unwrap().is_some());
    assert!(s.booking(None, "bkg_none").await.unwrap().is_none());

    let (lb, lp) = s.by_link(&link_hash("bkg_1", Role::Guest)).await.unwrap().expect("link");
    assert_eq!((lb.id.as_str(), lp.role, lp.first_joined_at), ("bkg_1", Role::Guest, None));
    assert!(s.by_link(&[0u8; 32]).await.unwrap().is_none());
    s.mark_joined(&lp.id, T0 + 3000).await.unwrap();
    s.mark_joined(&lp.id, T0 + 3100).await.unwrap();
    let (_, lp) = s.by_link(&link_hash("bkg_1", Role::Guest)).await.unwrap().unwrap();
    assert_eq!(lp.first_joined_at, Some(T0 + 3000), "the first admission is kept");

    assert!(s.cancel("ten_b", "bkg_1", T0 + 10).await.unwrap().is_none(), "another tenant cannot cancel");
    let (c, changed) = s.cancel("ten_a", "bkg_1", T0 + 10).await.unwrap().expect("cancel");
    assert!(changed);
    assert_eq!((c.status, c.sequence, c.updated_at), (Status::Cancelled, 1, T0 + 10));
    let (c, changed) = s.cancel("ten_a", "bkg_1", T0 + 20).await.unwrap().expect("second cancel");
    assert!(!changed, "a second cancel changes nothing");
    assert_eq!((c.sequence, c.updated_at), (1, T0 + 10));
}

async fn duplicate_external_id(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let (b, p) = booking("bkg_1", "ten_a", Some("order-1"));
    s.create_booking(&b, &p).await.unwrap();
    let (b2, p2) = booking("bkg_2", "ten_a", Some("order-1"));
    let e = s.create_booking(&b2, &p2).await.unwrap_err();
    assert!(matches!(e, StoreError::DuplicateExternalId), "{e:?}");
    assert!(s.booking(None, "bkg_2").await.unwrap().is_none(), "nothing of the refused booking is stored");
    assert!(s.by_link(&link_hash("bkg_2", Role::Host)).await.unwrap().is_none());
    // The same external_id in another tenant, and any number of bookings without one, are fine.
    let (b3, p3) = booking("bkg_3", "ten_b", Some("order-1"));
    s.create_booking(&b3, &p3).await.unwrap();
    for id in ["bkg_4", "bkg_5"] {
        let (b, p) = booking(id, "ten_a", None);
        s.create_booking(&b, &p).await.unwrap();
    }
    // A reused link token hash is a database error, not a duplicate external_id.
    let (b6, mut p6) = booking("bkg_6", "ten_a", None);
    p6[0].link_token_hash = link_hash("bkg_1", Role::Host);
    let e = s.create_booking(&b6, &p6).await.unwrap_err();
    assert!(matches!(e, StoreError::Db(_)), "{e:?}");
    assert!(s.booking(None, "bkg_6").await.unwrap().is_none(), "the transaction was rolled back");
}

async fn revocations_and_vy_lookup(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    for (id, tenant, ext) in [("bkg_1", "ten_a", "m-1"), ("bkg_2", "ten_a", "m-2"), ("bkg_3", "ten_b", "m-1")] {
        let (b, p) = booking(id, tenant, Some(ext));
        s.create_booking(&b, &p).await.unwrap();
    }
    let hard_end = T0 + 7200 + 900;
    let live = s.live_by_external_id("ten_a", "m-1", T0).await.unwrap().expect("live meeting");
    assert_eq!((live.id.as_str(), live.participants.len()), ("bkg_1", 2));
    assert_eq!(s.live_by_external_id("ten_b", "m-1", T0).await.unwrap().map(|b| b.id), Some("bkg_3".into()));
    assert!(s.live_by_external_id("ten_a", "m-9", T0).await.unwrap().is_none());
    assert!(s.live_by_external_id("ten_a", "m-1", hard_end).await.unwrap().is_none(), "past its hard end");

    assert!(s.live_revocations(T0).await.unwrap().is_empty());
    s.cancel("ten_a", "bkg_2", T0 + 1).await.unwrap();
    assert!(s.live_by_external_id("ten_a", "m-2", T0).await.unwrap().is_none(), "a cancelled meeting is not live");
    assert_eq!(s.live_revocations(T0).await.unwrap(), [("bkg_2".to_string(), hard_end)]);
    assert!(s.live_revocations(hard_end).await.unwrap().is_empty(), "over once the window ended");
}

async fn api_keys(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let (h1, h2) = (vec![1u8; 32], vec![2u8; 32]);
    assert!(s.api_key("key_admin").await.unwrap().is_none());
    assert!(s.upsert_api_key("key_admin", "ten_default", &h1, 10).await.unwrap(), "inserted");
    assert!(!s.upsert_api_key("key_admin", "ten_default", &h1, 11).await.unwrap(), "the same hash changes nothing");
    assert_eq!(s.tenant_for_key(&h1).await.unwrap().as_deref(), Some("ten_default"));
    assert!(s.upsert_api_key("key_admin", "ten_default", &h2, 12).await.unwrap(), "replaced");
    assert_eq!(s.tenant_for_key(&h1).await.unwrap(), None, "the old key stops at once");
    assert!(s.revoke_api_key("key_admin", 13).await.unwrap());
    assert!(!s.revoke_api_key("key_admin", 14).await.unwrap(), "already revoked");
    assert!(!s.revoke_api_key("key_none", 14).await.unwrap());
    assert_eq!(s.tenant_for_key(&h2).await.unwrap(), None);
    let row = s.api_key("key_admin").await.unwrap().expect("row");
    assert_eq!((row.key_hash, row.created_at, row.revoked_at), (h2.clone(), 12, Some(13)));
    assert!(!s.upsert_api_key("key_admin", "ten_default", &h2, 15).await.unwrap(), "a revoked key stays revoked");
    assert!(s.upsert_api_key("key_admin", "ten_default", &h1, 16).await.unwrap(), "a new key is live again");
    assert_eq!(s.api_key("key_admin").await.unwrap().unwrap().revoked_at, None);
    let e = s.upsert_api_key("key_other", "ten_default", &h1, 17).await.unwrap_err();
    assert!(matches!(e, StoreError::Db(_)), "another id with the same hash is refused: {e:?}");
}

/// Tenants and scoped keys: the migration's default tenant, a key needs an existing tenant (checked in its insert),
/// scopes round-trip sorted, expiry and revocation make a key not live, rotation keeps the row and changes the key.
async fn tenants_and_scoped_keys(backend: Backend) {
    use duet::api_key::Scope;
    use duet::booking::store::ApiKey;
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let tenants = s.tenants().await.unwrap();
    assert_eq!(tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["ten_default"], "made by migration 0002");
    s.ensure_tenant("ten_default", "other name", 1).await.unwrap();
    assert_eq!(s.tenant("ten_default").await.unwrap().unwrap().name, "default", "ensure_tenant keeps a tenant");
    let a = s.create_tenant("ten_a", "A", T0).await.unwrap();
    assert_eq!(s.tenant("ten_a").await.unwrap(), Some(a));
    assert!(matches!(s.create_tenant("ten_a", "again", T0).await, Err(StoreError::Db(_))), "ids are unique");

    let key = |id: &str, tenant: &str, hash: u8, expires_at: Option<i64>| ApiKey {
        id: id.into(),
        tenant_id: tenant.into(),
        name: Some(format!("name of {id}")),
        scopes: vec![Scope::BookingsRead, Scope::BookingsWrite],
        key_hash: vec![hash; 32],
        created_at: T0,
        expires_at,
        revoked_at: None,
    };
    assert!(matches!(s.create_api_key(&key("key_x", "ten_nope", 9, None)).await, Err(StoreError::UnknownTenant)));
    assert!(s.api_key("key_x").await.unwrap().is_none(), "nothing written for an unknown tenant");
    s.create_api_key(&key("key_1", "ten_a", 1, Some(T0 + 60))).await.unwrap();
    let row = s.api_key_by_hash(&[1; 32]).await.unwrap().expect("by hash");
    assert_eq!(
        (row.id.as_str(), row.tenant_id.as_str(), row.name.as_deref(), row.expires_at),
        ("key_1", "ten_a", Some("name of key_1"), Some(T0 + 60))
    );
    assert_eq!(row.scopes, [Scope::BookingsRead, Scope::BookingsWrite]);
    assert!(row.is_live(T0 + 59) && !row.is_live(T0 + 60), "live until its expiry");
    assert!(s.revoke_api_key("key_1", T0 + 1).await.unwrap());
    assert!(!s.api_key("key_1").await.unwrap().unwrap().is_live(T0 + 2), "revoked");
    assert!(s.rotate_api_key("key_1", &[3; 32], T0 + 5).await.unwrap());
    assert!(s.api_key_by_hash(&[1; 32]).await.unwrap().is_none(), "the old key is gone");
    let rotated = s.api_key_by_hash(&[3; 32]).await.unwrap().expect("rotated");
    assert_eq!((rotated.id.as_str(), rotated.created_at, rotated.revoked_at), ("key_1", T0 + 5, None));
    assert_eq!(rotated.expires_at, Some(T0 + 60), "rotation keeps the expiry");
    assert!(!s.rotate_api_key("key_nope", &[4; 32], T0).await.unwrap());

    s.upsert_api_key("key_admin", "ten_default", &[7; 32], T0).await.unwrap();
    assert_eq!(s.api_key("key_admin").await.unwrap().unwrap().scopes, Scope::ALL, "the admin key has every scope");
    let of_a: Vec<String> = s.api_keys(Some("ten_a")).await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(of_a, ["key_1"]);
    assert_eq!(s.api_keys(None).await.unwrap().len(), 2);
}

/// Status transitions: allowed moves bump the sequence, repeats are unchanged, others refused; rejected bookings are
/// revoked at start like cancelled ones and hidden from the Virtual Y lookup, as pending ones are.
async fn transitions_and_revocations(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let (mut b, parts) = booking("bkg_p", "ten_a", Some("order-p"));
    b.status = Status::Pending;
    s.create_booking(&b, &parts).await.unwrap();
    assert!(s.live_by_external_id("ten_a", "order-p", T0).await.unwrap().is_none(), "pending is not live");
    let (after, t) = s.transition("ten_a", "bkg_p", Status::Rejected, &[Status::Pending], T0).await.unwrap().unwrap();
    assert_eq!((after.status, after.sequence, t), (Status::Rejected, 1, Transition::Changed));
    let (_, t) = s.transition("ten_a", "bkg_p", Status::Rejected, &[Status::Pending], T0).await.unwrap().unwrap();
    assert_eq!(t, Transition::Unchanged);
    let (after, t) = s.transition("ten_a", "bkg_p", Status::Confirmed, &[Status::Pending], T0).await.unwrap().unwrap();
    assert_eq!((after.status, after.sequence, t), (Status::Rejected, 1, Transition::Refused));
    assert_eq!(
        s.cancel("ten_a", "bkg_p", T0).await.unwrap().map(|(b, c)| (b.status, c)),
        Some((Status::Rejected, false))
    );
    assert!(s.transition("ten_b", "bkg_p", Status::Confirmed, &[Status::Pending], T0).await.unwrap().is_none());
    assert_eq!(s.live_revocations(T0).await.unwrap(), vec![("bkg_p".to_string(), b.window.hard_end_at)]);
}

/// One `Idempotency-Key` inserts one booking; the second insert gets the record back and inserts nothing; an
/// expired record is replaced; a duplicate external_id leaves the key free.
async fn idempotency_records(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let rec = |id: &str, at: i64| IdempotencyRecord {
        key: "k1".into(),
        request_hash: vec![7; 32],
        booking_id: id.into(),
        status_code: 201,
        response: format!("{{\"id\":\"{id}\"}}"),
        created_at: at,
    };
    let (b1, p1) = booking("bkg_1", "ten_a", Some("x1"));
    assert_eq!(s.create_booking_idempotent(&b1, &p1, &rec("bkg_1", T0)).await.unwrap(), IdempotentCreate::Created);
    let (b2, p2) = booking("bkg_2", "ten_a", Some("x2"));
    assert_eq!(
        s.create_booking_idempotent(&b2, &p2, &rec("bkg_2", T0 + 10)).await.unwrap(),
        IdempotentCreate::Existing(rec("bkg_1", T0))
    );
    assert!(s.booking(None, "bkg_2").await.unwrap().is_none(), "nothing inserted");
    assert!(s.idempotency_record("ten_b", "k1", T0).await.unwrap().is_none(), "per tenant");
    let later = T0 + 86_400;
    assert!(s.idempotency_record("ten_a", "k1", later).await.unwrap().is_none(), "kept 24 h");
    assert_eq!(s.create_booking_idempotent(&b2, &p2, &rec("bkg_2", later)).await.unwrap(), IdempotentCreate::Created);
    let (b3, p3) = booking("bkg_3", "ten_a", Some("x2"));
    let mut r3 = rec("bkg_3", later);
    r3.key = "k3".into();
    assert!(matches!(s.create_booking_idempotent(&b3, &p3, &r3).await, Err(StoreError::DuplicateExternalId)));
    assert!(s.idempotency_record("ten_a", "k3", later).await.unwrap().is_none(), "rolled back with the booking");
    assert_eq!(s.purge_idempotency_keys(later + 86_400).await.unwrap(), 1);
}

/// `list`: tenant scope, order by start then id, keyset position, filters, derived ended.
async fn list_bookings(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    for (id, tenant, shift) in
        [("bkg_b", "ten_a", 0), ("bkg_a", "ten_a", 0), ("bkg_c", "ten_a", -3600), ("bkg_z", "ten_z", 0)]
    {
        let (mut b, parts) = booking(id, tenant, None);
        b.start_at += shift;
        b.window.hard_end_at += shift;
        s.create_booking(&b, &parts).await.unwrap();
    }
    let f = ListFilter { limit: 10, now: T0, ..Default::default() };
    let ids = |v: Vec<Booking>| v.into_iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list("ten_a", &f).await.unwrap()), ["bkg_c", "bkg_a", "bkg_b"]);
    let after = ListFilter { after: Some((T0 + 3600, "bkg_a".into())), ..f.clone() };
    assert_eq!(ids(s.list("ten_a", &after).await.unwrap()), ["bkg_b"]);
    let limited = ListFilter { limit: 1, ..f.clone() };
    let page = s.list("ten_a", &limited).await.unwrap();
    assert_eq!((page.len(), page[0].participants.len()), (1, 2));
    let by_ref = ListFilter { participant_ref: Some("instructor:bkg_b".into()), ..f.clone() };
    assert_eq!(ids(s.list("ten_a", &by_ref).await.unwrap()), ["bkg_b"]);
    let by_ref = ListFilter { participant_ref: Some("instructor:bkg_c".into()), from: Some(T0 + 3600), ..f.clone() };
    assert!(s.list("ten_a", &by_ref).await.unwrap().is_empty());
    let ended = ListFilter { status: Some(StatusFilter::Ended), now: T0 + 7200, ..f.clone() };
    assert_eq!(ids(s.list("ten_a", &ended).await.unwrap()), ["bkg_c"]);
    let confirmed = ListFilter { status: Some(StatusFilter::Confirmed), ..ended.clone() };
    assert_eq!(ids(s.list("ten_a", &confirmed).await.unwrap()), ["bkg_a", "bkg_b"]);
}

crate::on_both_backends!(
    create_get_cancel,
    duplicate_external_id,
    revocations_and_vy_lookup,
    api_keys,
    tenants_and_scoped_keys,
    transitions_and_revocations,
    idempotency_records,
    list_bookings,
    participant_fields_links_and_kinds
);

/// A PostgreSQL that cannot be reached at start is a clear error naming `database.url`, without its password.
#[test]
fn unreachable_postgres_is_a_start_error_naming_database_url() {
    let tmp = tempfile::tempdir().unwrap();
    let run = common::serve_refused(
        &tmp.path().join("data"),
        "[database]\nurl = \"postgres://duet:s3cret-pw@127.0.0.1:1/duet\"\n",
    );
    assert!(run.stderr.contains("database.url") && run.stderr.contains("refused"), "{}", run.stderr);
    assert!(run.stderr.contains("postgres://duet:<redacted>@127.0.0.1:1/duet"), "{}", run.stderr);
    assert!(!run.stderr.contains("s3cret-pw"), "the password leaked: {}", run.stderr);
}

/// `duet check-config` shows the database URL with its password hidden; a bad scheme names `database.url`.
#[test]
fn check_config_hides_the_database_password() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "[database]\nurl = \"postgres://duet:s3cret-pw@db.internal/duet\"\n").unwrap();
    let run = common::run_duet(["check-config".as_ref(), "--config".as_ref(), config.as_os_str()]);
    run.assert_success("duet check-config");
    assert!(run.stdout.contains("postgres://duet:<redacted>@db.internal/duet"), "{}", run.stdout);
    assert!(!run.stdout.contains("s3cret-pw") && !run.stderr.contains("s3cret-pw"), "{}", run.stdout);
    std::fs::write(&config, "[database]\nurl = \"mysql://duet:s3cret-pw@db.internal/duet\"\n").unwrap();
    let run = common::run_duet(["check-config".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("database.url") && !run.stderr.contains("s3cret-pw"), "{}", run.stderr);
}

/// `/readyz` pings the store: 200 on a live PostgreSQL database, 503 `database_unreachable` once it is gone.
#[tokio::test]
async fn readyz_reports_a_lost_postgres_database() {
    let Some(d) = common::Daemon::start_on(Backend::Postgres, "") else { return };
    let readyz = || async {
        let r = reqwest::get(format!("http://{}/readyz", d.admin)).await.expect("GET /readyz");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    assert_eq!(readyz().await.0, 200);
    d.db.as_ref().expect("the daemon's database").drop_database();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = readyz().await;
        if status == 503 {
            assert!(body.contains("database_unreachable"), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz still {status} {body} after the database was dropped");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A booking `id` of `tenant` whose host has `host` as `ref` (`None`: none), from `T0 + start` lasting `len` seconds
/// with buffers `before` / `after`, in `status`.
fn hosted(
    id: &str,
    tenant: &str,
    host: Option<&str>,
    start: i64,
    len: i64,
    buffers: (i64, i64),
    status: Status,
) -> (Booking, Vec<NewParticipant>) {
    let (mut b, mut parts) = booking(id, tenant, None);
    b.start_at = T0 + start;
    b.end_at = T0 + start + len;
    b.window = JoinWindow {
        host_opens_at: b.start_at - 900,
        opens_at: b.start_at - 600,
        join_cutoff_at: b.end_at,
        hard_end_at: b.end_at + 900,
    };
    (b.buffer_before_s, b.buffer_after_s) = buffers;
    b.status = status;
    parts[0].reference = host.map(String::from);
    (b, parts)
}

/// Creates a booking made by [`hosted`] and returns the store's answer.
async fn try_create(s: &Store, (b, p): (Booking, Vec<NewParticipant>)) -> Result<(), StoreError> {
    s.create_booking(&b, &p).await
}

/// The no-double-booking rule in the store: overlaps (buffers included) of one host in one tenant are refused with
/// `SlotUnavailable` and write nothing; touching intervals, other hosts, other tenants and hosts without `ref` are
/// fine; cancel and reject free the interval; `host_conflict` names the booking in the way.
async fn host_overlaps(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let (c, p) = (Status::Confirmed, Status::Pending);
    try_create(s, hosted("bkg_1", "ten_a", Some("h"), 0, 1800, (0, 0), c)).await.expect("first");
    let e = try_create(s, hosted("bkg_2", "ten_a", Some("h"), 1799, 600, (0, 0), c)).await.unwrap_err();
    assert!(matches!(e, StoreError::SlotUnavailable), "{e:?}");
    assert!(s.booking(None, "bkg_2").await.unwrap().is_none(), "nothing of the refused booking is stored");
    assert!(s.by_link(&link_hash("bkg_2", Role::Host)).await.unwrap().is_none());
    let e = try_create(s, hosted("bkg_2", "ten_a", Some("h"), -600, 601, (0, 0), p)).await.unwrap_err();
    assert!(matches!(e, StoreError::SlotUnavailable), "pending is in the rule: {e:?}");
    assert_eq!(s.host_conflict("ten_a", "h", T0 + 100, T0 + 200, "bkg_x").await.unwrap().as_deref(), Some("bkg_1"));
    assert_eq!(s.host_conflict("ten_a", "h", T0 + 100, T0 + 200, "bkg_1").await.unwrap(), None, "itself excluded");
    assert_eq!(s.host_conflict("ten_a", "h", T0 + 1800, T0 + 2000, "bkg_x").await.unwrap(), None, "touching");
    assert_eq!(s.host_conflict("ten_b", "h", T0 + 100, T0 + 200, "bkg_x").await.unwrap(), None, "other tenant");
    // Touching on both sides; other host; other tenant; no ref.
    try_create(s, hosted("bkg_3", "ten_a", Some("h"), 1800, 600, (0, 0), c)).await.expect("touching after");
    try_create(s, hosted("bkg_4", "ten_a", Some("h"), -600, 600, (0, 0), p)).await.expect("touching before");
    try_create(s, hosted("bkg_5", "ten_a", Some("h2"), 0, 1800, (0, 0), c)).await.expect("another host");
    try_create(s, hosted("bkg_6", "ten_b", Some("h"), 0, 1800, (0, 0), c)).await.expect("another tenant");
    try_create(s, hosted("bkg_7", "ten_a", None, 0, 1800, (0, 0), c)).await.expect("no ref");
    try_create(s, hosted("bkg_8", "ten_a", None, 0, 1800, (0, 0), c)).await.expect("no ref, twice");
    // Buffers: bkg_3 ends at 2400; a buffer on either side closes the gap.
    let e = try_create(s, hosted("bkg_9", "ten_a", Some("h"), 2400, 600, (1, 0), c)).await.unwrap_err();
    assert!(matches!(e, StoreError::SlotUnavailable), "{e:?}");
    try_create(s, hosted("bkg_9", "ten_a", Some("h"), 2400, 600, (0, 300), c)).await.expect("touching, buffer after");
    let e = try_create(s, hosted("bkg_10", "ten_a", Some("h"), 3299, 600, (0, 0), c)).await.unwrap_err();
    assert!(matches!(e, StoreError::SlotUnavailable), "inside bkg_9's buffer_after: {e:?}");
    let b9 = s.booking(None, "bkg_9").await.unwrap().unwrap();
    assert_eq!((b9.buffer_before_s, b9.buffer_after_s, b9.blocked()), (0, 300, (T0 + 2400, T0 + 3300)));
    // Cancel (confirmed) and reject (pending) free their intervals.
    s.cancel("ten_a", "bkg_1", T0).await.unwrap().unwrap();
    try_create(s, hosted("bkg_11", "ten_a", Some("h"), 0, 1800, (0, 0), p)).await.expect("after cancel");
    let e = try_create(s, hosted("bkg_12", "ten_a", Some("h"), 0, 1800, (0, 0), c)).await.unwrap_err();
    assert!(matches!(e, StoreError::SlotUnavailable), "{e:?}");
    let (_, t) = s.transition("ten_a", "bkg_11", Status::Rejected, &[Status::Pending], T0).await.unwrap().unwrap();
    assert_eq!(t, Transition::Changed);
    try_create(s, hosted("bkg_12", "ten_a", Some("h"), 0, 1800, (0, 0), p)).await.expect("after reject");
    // Confirming a pending booking keeps it blocking (and passes the check).
    let (b, t) = s.transition("ten_a", "bkg_12", Status::Confirmed, &[Status::Pending], T0).await.unwrap().unwrap();
    assert_eq!((t, b.status), (Transition::Changed, Status::Confirmed));
    let e = try_create(s, hosted("bkg_13", "ten_a", Some("h"), 900, 60, (0, 0), c)).await.unwrap_err();
    assert!(matches!(e, StoreError::SlotUnavailable), "{e:?}");
    // A cancelled or rejected booking may be created over anything (it blocks nothing).
    try_create(s, hosted("bkg_14", "ten_a", Some("h"), 0, 1800, (0, 0), Status::Cancelled)).await.expect("cancelled");
}

/// 20 concurrent inserts of overlapping bookings of one host: exactly one succeeds, 19 get `SlotUnavailable`.
async fn concurrent_overlapping_creates(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = o.store.clone();
            tokio::spawn(async move {
                try_create(&s, hosted(&format!("bkg_{i}"), "ten_a", Some("h"), i * 60, 1800, (0, 0), Status::Confirmed))
                    .await
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::SlotUnavailable) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, refused), (1, 19));
    let f = ListFilter { limit: 100, now: T0, ..Default::default() };
    assert_eq!(o.store.list("ten_a", &f).await.unwrap().len(), 1);
}

/// A database of the version before migration 4 with live bookings that already overlap: the migration keeps every
/// row, exempts the later-created of each overlapping pair (host_ref cleared) so the rule can be created, and the
/// rule then holds for new writes, updates of times included (checked by the database itself).
async fn migration_4_exempts_existing_overlaps(backend: Backend) {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (url, db, all) = match backend {
        Backend::Sqlite => {
            let path = tmp.path().join("duet.sqlite3");
            (format!("sqlite://{}?mode=rwc", path.display()), None, &duet::booking::store::SQLITE_MIGRATIONS)
        }
        Backend::Postgres => {
            let Some(db) = TestDb::create() else { return };
            (db.url.clone(), Some(db), &duet::booking::store::POSTGRES_MIGRATIONS)
        }
    };
    let old_dir = tmp.path().join("migrations");
    std::fs::create_dir(&old_dir).unwrap();
    for m in all.iter().filter(|m| m.version < 4) {
        std::fs::write(old_dir.join(format!("{:04}_{}.sql", m.version, m.description)), m.sql.as_bytes()).unwrap();
    }
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    sqlx::migrate::Migrator::new(old_dir.as_path()).await.unwrap().run(&pool).await.expect("migrations 1-3");
    // (id, host ref, start, end, status, created_at)
    let rows = [
        ("bkg_1", Some("h"), 3600, 7200, "confirmed", 10),  // kept
        ("bkg_2", Some("h"), 5400, 9000, "pending", 20),    // overlaps bkg_1: exempt
        ("bkg_3", Some("h"), 7200, 10800, "confirmed", 30), // overlaps bkg_2 only: exempt
        ("bkg_4", Some("h"), 3600, 7200, "cancelled", 5),   // not live: kept
        ("bkg_5", Some("h2"), 3600, 7200, "confirmed", 40), // another host: kept
        ("bkg_6", None, 3600, 7200, "confirmed", 50),       // no ref
    ];
    for (i, (id, host, start, end, status, created)) in rows.iter().enumerate() {
        sqlx::query(
            "INSERT INTO bookings (id, tenant_id, title, start_at, end_at, host_opens_at, opens_at, join_cutoff_at, \
             hard_end_at, status, sequence, created_at, updated_at) \
             VALUES ($1, 'ten_a', 't', $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
        )
        .bind(*id)
        .bind(T0 + start)
        .bind(T0 + end)
        .bind(T0 + start - 900)
        .bind(T0 + start - 600)
        .bind(T0 + end)
        .bind(T0 + end + 900)
        .bind(*status)
        .bind(*created)
        .bind(*created)
        .execute(&pool)
        .await
        .expect("old booking");
        for (role, r) in [("host", *host), ("guest", Some("guest"))] {
            sqlx::query(
                "INSERT INTO participants (id, booking_id, role, ref, display_name, link_token_hash) \
                 VALUES ($1, $2, $3, $4, 'X', $5)",
            )
            .bind(format!("par_{id}_{role}"))
            .bind(*id)
            .bind(role)
            .bind(r)
            .bind(vec![i as u8, role.len() as u8])
            .execute(&pool)
            .await
            .expect("old participant");
        }
    }
    pool.close().await;

    let store = match backend {
        Backend::Sqlite => Store::open(&tmp.path().join("duet.sqlite3")).await.expect("migrate to 4"),
        Backend::Postgres => Store::open_postgres(&url, 4).await.expect("migrate to 4"),
    };
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    let hosts: Vec<(String, Option<String>, i64, i64)> =
        sqlx::query("SELECT id, host_ref, buffer_before_s, buffer_after_s FROM bookings ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
    let expected: Vec<(String, Option<String>, i64, i64)> = [
        ("bkg_1", Some("h")),
        ("bkg_2", None),
        ("bkg_3", None),
        ("bkg_4", Some("h")),
        ("bkg_5", Some("h2")),
        ("bkg_6", None),
    ]
    .into_iter()
    .map(|(id, h)| (id.to_string(), h.map(String::from), 0, 0))
    .collect();
    assert_eq!(hosts, expected);
    for id in ["bkg_1", "bkg_2", "bkg_3", "bkg_4", "bkg_5", "bkg_6"] {
        let b = store.booking(Some("ten_a"), id).await.unwrap().expect("row kept");
        assert_eq!(b.participants.len(), 2);
    }
    // Exempt rows change status freely; bkg_1 still blocks, the exempt bkg_3 does not.
    let (_, t) = store.transition("ten_a", "bkg_2", Status::Confirmed, &[Status::Pending], T0).await.unwrap().unwrap();
    assert_eq!(t, Transition::Changed);
    let e = try_create(&store, hosted("bkg_7", "ten_a", Some("h"), 3000, 1200, (0, 0), Status::Confirmed))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::SlotUnavailable), "{e:?}");
    try_create(&store, hosted("bkg_7", "ten_a", Some("h"), 9000, 1800, (0, 0), Status::Confirmed))
        .await
        .expect("over bkg_3");
    // Updates are checked by the database too (e.g. a reschedule): moving bkg_5 onto host h, or moving bkg_7 into
    // bkg_1, fails.
    for sql in [
        "UPDATE bookings SET host_ref = 'h' WHERE id = 'bkg_5'",
        "UPDATE bookings SET start_at = start_at - 5400 WHERE id = 'bkg_7'",
        "UPDATE bookings SET buffer_before_s = 1801 WHERE id = 'bkg_7'",
    ] {
        let e = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        let msg = e.to_string();
        assert!(msg.contains("bookings_host_no_overlap"), "{sql}: {msg}");
    }
    sqlx::query("UPDATE bookings SET buffer_before_s = 1800 WHERE id = 'bkg_7'")
        .execute(&pool)
        .await
        .expect("touching");
    pool.close().await;
    store.close().await;
    drop(db);
}

crate::on_both_backends!(host_overlaps, concurrent_overlapping_creates, migration_4_exempts_existing_overlaps);

/// Migration 0005: participants' `email`, `time_zone`, `locale` and link epoch, booking `kind`, `external_url` and
/// `metadata` round-trip; `set_link` replaces the hash, bumps the epoch and marks or clears the revocation, scoped to
/// the tenant and the booking.
async fn participant_fields_links_and_kinds(backend: Backend) {
    let Some(o) = open(backend).await else { return };
    let s = &o.store;
    let (mut b, mut parts) = booking("bkg_1", "ten_a", None);
    b.kind = Kind::ExternalLink;
    b.external_url = Some("https://meet.example.com/x".into());
    b.metadata = Some(r#"{"z": 1, "a":[ 2 ]}"#.into());
    parts[0].email = Some("ana@clinic.example".into());
    parts[0].time_zone = Some("Europe/Berlin".into());
    parts[1].locale = Some("en-GB".into());
    s.create_booking(&b, &parts).await.expect("create");
    let got = s.booking(Some("ten_a"), "bkg_1").await.unwrap().unwrap();
    assert_eq!((got.kind, got.external_url.as_deref()), (Kind::ExternalLink, Some("https://meet.example.com/x")));
    assert_eq!(got.metadata.as_deref(), Some(r#"{"z": 1, "a":[ 2 ]}"#), "metadata kept byte for byte");
    let (h, g) = (&got.participants[0], &got.participants[1]);
    assert_eq!(
        (h.email.as_deref(), h.time_zone.as_deref(), h.locale.as_deref()),
        (Some("ana@clinic.example"), Some("Europe/Berlin"), None)
    );
    assert_eq!(
        (g.email.as_deref(), g.locale.as_deref(), g.link_epoch, g.link_revoked_at),
        (None, Some("en-GB"), 0, None)
    );

    // Another tenant, another booking, an unknown participant: nothing.
    let new_hash = duet::booking::tokens::link_token_hash("new");
    assert!(s.set_link("ten_b", "bkg_1", &g.id, (&new_hash, None), LinkChange::Rotate, T0).await.unwrap().is_none());
    assert!(s.set_link("ten_a", "bkg_2", &g.id, (&new_hash, None), LinkChange::Rotate, T0).await.unwrap().is_none());
    assert!(
        s.set_link("ten_a", "bkg_1", "par_nope", (&new_hash, None), LinkChange::Rotate, T0).await.unwrap().is_none()
    );
    assert!(s.by_link(&link_hash("bkg_1", Role::Guest)).await.unwrap().is_some(), "nothing changed");

    let (_, p) = s.set_link("ten_a", "bkg_1", &g.id, (&new_hash, None), LinkChange::Rotate, T0).await.unwrap().unwrap();
    assert_eq!((p.link_epoch, p.link_revoked_at), (1, None));
    assert!(s.by_link(&link_hash("bkg_1", Role::Guest)).await.unwrap().is_none(), "old link gone");
    assert!(s.by_link(&new_hash).await.unwrap().is_some(), "new link works");
    let gone = duet::booking::tokens::link_token_hash("nobody holds this");
    let (bk, p) =
        s.set_link("ten_a", "bkg_1", &g.id, (&gone, None), LinkChange::Revoke, T0 + 5).await.unwrap().unwrap();
    assert_eq!((p.link_epoch, p.link_revoked_at), (2, Some(T0 + 5)));
    assert!(s.by_link(&new_hash).await.unwrap().is_none(), "revoked link gone");
    assert_eq!((bk.sequence, bk.participants[0].link_epoch), (0, 0), "the booking and the host are untouched");
}
