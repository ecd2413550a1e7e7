//! Issue 8, "Show it: crash safety", on both backends at the process level: `kill -9` the daemon in the middle of a
//! burst of concurrent writes, restart it on the same data directory / database, and check that every acknowledged
//! write is there with its acknowledged content and that nothing is half-written.
//!
//! The burst: `WORKERS` concurrent clients, each running chains of writes on bookings of its own: a create with an
//! `Idempotency-Key` (half of them `pending`), then `confirm` (pending ones), then a reschedule (`PATCH
//! /v1/bookings/{id}` with `If-Match`, a later `end_at`), then `cancel`. A write is *acknowledged* when
//! its 2xx answer arrived before the kill; a write whose request was sent but whose answer never came is *in flight*
//! and may or may not have been applied, never partly.
//!
//! After each kill, before the restart, the database is checked directly (every booking has exactly two
//! participants, a host and a guest; no participant or idempotency record without its booking; SQLite's
//! `integrity_check`). After the restart, through the API: every acknowledged booking is there with the acknowledged
//! title, times, participants, and the status and sequence of its last acknowledged write (or of the in-flight write
//! that followed it); a replay of every create key answers the acknowledged booking (`Idempotent-Replayed: true`,
//! the original body without links); a replay of an in-flight create either replays a whole booking or creates it now;
//! the list holds exactly the bookings the clients know of; and the daemon serves (create, join) before the next
//! round. Three rounds per backend, on one data directory / database, so the writes of earlier rounds are checked again
//! after every later kill.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use common::{Backend, Daemon, booking_body, participant};

/// Concurrent clients of the burst.
const WORKERS: usize = 16;
/// Kill/restart rounds per backend.
const ROUNDS: usize = 3;
/// Acknowledged writes of a round before the kill may come (then a jitter of 0-150 ms).
const ACKS_BEFORE_KILL: usize = 40;

/// A write of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Create,
    Confirm,
    Reschedule,
    Cancel,
}

impl Write {
    /// The status a booking has after this write.
    fn target(self, pending_create: bool) -> &'static str {
        match self {
            Write::Create if pending_create => "pending",
            Write::Create | Write::Confirm | Write::Reschedule => "confirmed",
            Write::Cancel => "cancelled",
        }
    }
}

/// One booking's writes as its client saw them.
#[derive(Debug, Clone)]
struct Chain {
    key: String,
    body: Value,
    pending: bool,
    /// The acknowledged create answer (with links).
    created: Option<Value>,
    /// The answer of the last acknowledged write (create or transition).
    last: Option<Value>,
    /// The write sent without an answer (the kill came first).
    in_flight: Option<Write>,
    /// The `end_at` the reschedule asks for (RFC 3339): 15 minutes after the created one.
    new_end: String,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// One write; `Err` on a transport error (the daemon is gone), panics on an answer other than the expected 2xx.
async fn send(
    c: &reqwest::Client,
    d: &(String, String),
    w: Write,
    chain: &Chain,
) -> Result<(u16, Option<String>, Value), ()> {
    let (base, key) = d;
    let req = match w {
        Write::Create => c.post(format!("{base}/v1/bookings")).header("Idempotency-Key", &chain.key).json(&chain.body),
        Write::Reschedule => {
            let id = chain.created.as_ref().unwrap()["id"].as_str().unwrap();
            let seq = chain.last.as_ref().unwrap()["sequence"].as_i64().unwrap();
            c.patch(format!("{base}/v1/bookings/{id}"))
                .header("If-Match", format!("\"{seq}\""))
                .json(&json!({"end_at": chain.new_end}))
        }
        Write::Confirm | Write::Cancel => {
            let id = chain.created.as_ref().unwrap()["id"].as_str().unwrap();
            let op = if w == Write::Confirm { "confirm" } else { "cancel" };
            c.post(format!("{base}/v1/bookings/{id}/{op}"))
        }
    };
    let r = req.bearer_auth(key).send().await.map_err(|_| ())?;
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body: Value = r.json().await.map_err(|_| ())?;
    Ok((status, replayed, body))
}

/// A client of the burst: chains of create → confirm (pending ones) → cancel until `stop` or the daemon dies.
async fn worker(
    d: (String, String),
    round: usize,
    w: usize,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<Chain> {
    let c = client();
    let mut chains = Vec::new();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let pending = n % 2 == 0;
        let mut body = booking_body(3600 + (w * 1000 + n) as i64 * 60, 1800);
        body["title"] = json!(format!("crash r{round} w{w} n{n}"));
        if pending {
            body["status"] = json!("pending");
        }
        let end = time::OffsetDateTime::parse(body["end_at"].as_str().unwrap(), &Rfc3339).unwrap();
        let new_end = (end + time::Duration::minutes(15)).format(&Rfc3339).unwrap();
        let mut chain = Chain {
            key: format!("crash-r{round}-w{w}-n{n}"),
            new_end,
            body,
            pending,
            created: None,
            last: None,
            in_flight: None,
        };
        let writes: &[Write] = if pending {
            &[Write::Create, Write::Confirm, Write::Reschedule, Write::Cancel]
        } else {
            &[Write::Create, Write::Reschedule, Write::Cancel]
        };
        let mut dead = false;
        for &write in writes {
            chain.in_flight = Some(write);
            match send(&c, &d, write, &chain).await {
                Err(()) => {
                    dead = true;
                    break;
                }
                Ok((status, _, body)) => {
                    let want = if write == Write::Create { 201 } else { 200 };
                    assert_eq!(status, want, "{write:?} of {}: {body}", chain.key);
                    assert_eq!(body["status"], write.target(pending), "{write:?} of {}: {body}", chain.key);
                    if write == Write::Create {
                        chain.created = Some(body.clone());
                    }
                    chain.last = Some(body);
                    chain.in_flight = None;
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        chains.push(chain);
        if dead {
            break;
        }
    }
    chains
}

/// `v` (a create answer) without `link_token` / `join_url`, as an idempotent replay answers it.
fn as_replayed(v: &Value) -> Value {
    let mut v = v.clone();
    for p in v["participants"].as_array_mut().unwrap() {
        let o = p.as_object_mut().unwrap();
        o.remove("link_token");
        o.remove("join_url");
    }
    v["links_shown_once"] = json!(true);
    v
}

/// The members of a booking that no write of the burst changes (`end_at` is the reschedule's).
fn fixed_part(v: &Value) -> Value {
    let ps: Vec<Value> = v["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!({"id": p["id"], "ref": p["ref"], "role": p["role"], "display_name": p["display_name"]}))
        .collect();
    json!({"id": v["id"], "title": v["title"], "start_at": v["start_at"],
           "external_id": v["external_id"], "created_at": v["created_at"], "participants": ps})
}

/// Checks the database directly (the daemon is dead): whole bookings only, no orphans, SQLite's integrity check.
async fn check_database(d: &Daemon, backend: Backend) {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", d.data_dir.join("duet.sqlite3").display()),
        Backend::Postgres => d.db.as_ref().unwrap().url.clone(),
    };
    let mut c = sqlx::AnyConnection::connect(&url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    for (what, sql) in [
        (
            "bookings without exactly one host and one guest",
            "SELECT COUNT(*) FROM bookings b WHERE (SELECT COUNT(*) FROM participants p WHERE p.booking_id = b.id) <> 2 \
             OR NOT EXISTS (SELECT 1 FROM participants p WHERE p.booking_id = b.id AND p.role = 'host') \
             OR NOT EXISTS (SELECT 1 FROM participants p WHERE p.booking_id = b.id AND p.role = 'guest')",
        ),
        (
            "participants without their booking",
            "SELECT COUNT(*) FROM participants p WHERE NOT EXISTS (SELECT 1 FROM bookings b WHERE b.id = p.booking_id)",
        ),
        (
            "idempotency records without their booking",
            "SELECT COUNT(*) FROM idempotency_keys k WHERE NOT EXISTS (SELECT 1 FROM bookings b WHERE b.id = k.booking_id)",
        ),
        (
            "bookings with an unknown status",
            "SELECT COUNT(*) FROM bookings WHERE status NOT IN ('pending', 'confirmed', 'rejected', 'cancelled')",
        ),
    ] {
        let n: i64 = sqlx::query(sql).fetch_one(&mut c).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0);
        assert_eq!(n, 0, "{what} after kill -9 ({backend:?})");
    }
    if backend == Backend::Sqlite {
        let ok: String = sqlx::query("PRAGMA integrity_check").fetch_one(&mut c).await.unwrap().get(0);
        assert_eq!(ok, "ok", "SQLite integrity_check after kill -9");
    }
    c.close().await.unwrap();
}

async fn get_booking(d: &Daemon, id: &str) -> (u16, Value) {
    let r = d.client().get(d.url(&format!("/v1/bookings/{id}"))).bearer_auth(&d.api_key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Every booking `GET /v1/bookings` lists (all pages).
async fn list_all(d: &Daemon) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = d.url("/v1/bookings?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = d.client().get(url).bearer_auth(&d.api_key).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        out.extend(v["bookings"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// After a restart: every chain's booking as acknowledged (or one in-flight write further), replays answer the
/// acknowledged booking, in-flight creates are whole or absent, the list holds exactly the known bookings. Returns how
/// many in-flight writes were found applied and how many not.
async fn check_after_restart(d: &Daemon, chains: &mut [Chain], probes: &BTreeSet<String>) -> (usize, usize) {
    let (mut applied, mut not_applied) = (0, 0);
    let c = client();
    let dd = (d.url(""), d.api_key.clone());
    for chain in chains.iter_mut() {
        // Replay the create: acknowledged ones answer the acknowledged booking; in-flight ones either replay a
        // whole booking (it committed) or create it now (it did not), and the chain goes on from that answer.
        let (status, replayed, body) = send(&c, &dd, Write::Create, chain).await.expect("daemon answers");
        assert_eq!(status, 201, "replay of {}: {body}", chain.key);
        match &chain.created {
            Some(created) => {
                assert_eq!(replayed.as_deref(), Some("true"), "replay of acknowledged {}: {body}", chain.key);
                assert_eq!(body, as_replayed(created), "replay of {} answers the acknowledged booking", chain.key);
            }
            None => {
                assert_eq!(chain.in_flight, Some(Write::Create), "{chain:?}");
                if replayed.as_deref() == Some("true") {
                    applied += 1;
                } else {
                    not_applied += 1;
                }
                assert_eq!(body["status"], Write::Create.target(chain.pending), "{body}");
                assert_eq!(body["title"], chain.body["title"], "{body}");
                chain.created = Some(body.clone());
                chain.last = Some(body);
                chain.in_flight = None;
            }
        }
        let created = chain.created.as_ref().unwrap();
        let last = chain.last.as_ref().unwrap();
        let id = created["id"].as_str().unwrap();
        let (s, now) = get_booking(d, id).await;
        assert_eq!(s, 200, "acknowledged booking {id} ({}) is gone: {now}", chain.key);
        assert_eq!(fixed_part(&now), fixed_part(created), "booking {id} as created");
        assert_eq!(now["participants"].as_array().map(Vec::len), Some(2), "{now}");
        assert_eq!(
            (participant(&now, "host")["role"].as_str(), participant(&now, "guest")["role"].as_str()),
            (Some("host"), Some("guest"))
        );
        let seq = last["sequence"].as_i64().unwrap();
        let acknowledged =
            now["status"] == last["status"] && now["sequence"].as_i64() == Some(seq) && now["end_at"] == last["end_at"];
        let one_further = chain.in_flight.is_some_and(|w| {
            let end = if w == Write::Reschedule { json!(chain.new_end) } else { last["end_at"].clone() };
            w != Write::Create
                && now["status"] == w.target(chain.pending)
                && now["sequence"].as_i64() == Some(seq + 1)
                && now["end_at"] == end
        });
        assert!(
            acknowledged || one_further,
            "booking {id} ({}): acknowledged status {} sequence {seq} end {}, in flight {:?}; after restart {} sequence \
             {} end {}",
            chain.key,
            last["status"],
            last["end_at"],
            chain.in_flight,
            now["status"],
            now["sequence"],
            now["end_at"]
        );
        if one_further {
            chain.last = Some(now.clone());
            applied += 1;
        } else if chain.in_flight.is_some() {
            not_applied += 1;
        }
        chain.in_flight = None;
    }
    let known: BTreeSet<String> =
        chains.iter().map(|c| c.created.as_ref().unwrap()["id"].as_str().unwrap().to_string()).collect();
    let listed: BTreeMap<String, Value> =
        list_all(d).await.into_iter().map(|b| (b["id"].as_str().unwrap().to_string(), b)).collect();
    let extra: Vec<&String> = listed.keys().filter(|id| !known.contains(*id) && !probes.contains(*id)).collect();
    assert!(extra.is_empty(), "bookings nobody created (half-written or phantom): {extra:?}");
    for id in &known {
        assert!(listed.contains_key(id), "acknowledged booking {id} missing from the list");
    }
    for b in listed.values() {
        assert_eq!(b["participants"].as_array().map(Vec::len), Some(2), "{b}");
        assert!(["pending", "confirmed", "rejected", "cancelled"].contains(&b["status"].as_str().unwrap()), "{b}");
    }
    (applied, not_applied)
}

/// The daemon serves normally: a new booking is created and both participants join it; returns its id.
async fn serves(d: &Daemon) -> String {
    let mut body = booking_body(0, 600);
    body["title"] = json!("probe after restart");
    let (s, b) = d.create_booking(&body).await;
    assert_eq!(s, 201, "create after restart: {b}");
    for role in ["host", "guest"] {
        let token = participant(&b, role)["link_token"].as_str().unwrap();
        let (s, _, j) = d.join(token).await;
        assert_eq!(s, 200, "join as {role} after restart: {j}");
    }
    b["id"].as_str().unwrap().to_string()
}

async fn kill9_during_writes(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let started = std::time::Instant::now();
    let mut chains: Vec<Chain> = Vec::new();
    let mut probes = BTreeSet::new();
    for round in 0..ROUNDS {
        let acks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let dd = (d.url(""), d.api_key.clone());
        let handles: Vec<_> =
            (0..WORKERS).map(|w| tokio::spawn(worker(dd.clone(), round, w, acks.clone(), stop.clone()))).collect();
        // Kill in the middle of the burst: once some writes were acknowledged, after a jitter.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while acks.load(Ordering::Relaxed) < ACKS_BEFORE_KILL && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let jitter =
            u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos());
        tokio::time::sleep(Duration::from_millis(jitter % 150)).await;
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        let mut round_chains = Vec::new();
        for h in handles {
            round_chains.extend(h.await.expect("worker"));
        }
        let acked = round_chains.iter().filter(|c| c.created.is_some()).count();
        let rescheduled =
            round_chains.iter().filter(|c| c.last.as_ref().is_some_and(|l| l["end_at"] == json!(c.new_end))).count();
        assert!(rescheduled > 0, "round {round}: no reschedule was acknowledged before the kill");
        let in_flight = round_chains.iter().filter(|c| c.in_flight.is_some()).count();
        assert!(acked >= ACKS_BEFORE_KILL / 3, "round {round}: only {acked} creates acknowledged before the kill");
        assert!(in_flight > 0, "round {round}: the kill came with no write in flight");
        chains.extend(round_chains);

        check_database(&d, backend).await;
        d = d.restart();
        let (applied, not_applied) = check_after_restart(&d, &mut chains, &probes).await;
        eprintln!(
            "{backend:?} round {round}: {acked} creates and {rescheduled} reschedules acknowledged; of {in_flight} \
             writes in flight at the kill, {applied} were applied, {not_applied} not"
        );
        probes.insert(serves(&d).await);
    }
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

on_both_backends!(kill9_during_writes);
