//! Keys and secrets (issue 7 items 13 and 14): the admin API key is rotated and revoked with `duet api-key` while the
//! daemon runs and survives a replaced `api-key` file at restart; secrets.toml and TLS keys are checked.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use common::{
    Backend, Daemon, booking_body, join_as, run_duet, serve_refused, sighup, signal_first_frame, write_tls_pair,
};

crate::on_both_backends!(api_key_rotate_and_revoke_while_running);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).permissions().mode() & 0o777
}

/// Asserts the status of a create-booking request made with `key` (201 live, 401 refused).
async fn assert_key(d: &Daemon, key: &str, status: u16, what: &str) {
    let (got, body) = d.create_booking_with(key, &booking_body(600, 1800)).await;
    assert_eq!(got, status, "{what}: {body}");
    if status == 401 {
        assert_eq!(body["error"], "unauthorized", "{what}: {body}");
    }
}

/// `duet api-key <action> --data-dir <dir> [extra]`, which must succeed; its stdout.
fn api_key_cli(action: &str, data_dir: &Path, extra: &[&str]) -> String {
    api_key_cli_with(action, "--data-dir", data_dir, extra)
}

/// `duet api-key <action> <flag> <path> [extra]` (flag `--data-dir` or `--config`), which must succeed; its stdout.
fn api_key_cli_with(action: &str, flag: &str, path: &Path, extra: &[&str]) -> String {
    let mut args = vec!["api-key".as_ref(), action.as_ref(), flag.as_ref(), path.as_os_str()];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let run = run_duet(&args);
    run.assert_success(&format!("duet api-key {action}"));
    run.stdout
}

fn read_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("api-key")).expect("api-key file").trim().to_string()
}

/// Item 13: `duet api-key rotate` while the daemon runs: the old key gets 401 at once, the new key (in the 0600 file,
/// not on stdout unless `--print`) gets 201. `duet api-key revoke`: 401, the file is removed, and a restart keeps the
/// key revoked (no new key is generated) until the next rotate. On PostgreSQL the CLI finds the database through
/// `--config` (`[database] url`); on SQLite through `--data-dir`.
async fn api_key_rotate_and_revoke_while_running(backend: Backend) {
    let Some((db_config, _db)) = common::database_for(backend) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let api_key_cli = |action: &str, dir: &Path, extra: &[&str]| match backend {
        Backend::Sqlite => api_key_cli(action, dir, extra),
        // The config file Daemon::start_in writes next to the data directory.
        Backend::Postgres => api_key_cli_with(action, "--config", &dir.parent().unwrap().join("config.toml"), extra),
    };
    let d = Daemon::start_in(&dir, &db_config);
    let first = d.api_key.clone();
    assert_key(&d, &first, 201, "the generated key").await;

    let out = api_key_cli("rotate", &dir, &[]);
    let second = read_key(&dir);
    assert_ne!(second, first, "rotate writes a new key");
    assert_eq!(mode(&dir.join("api-key")), 0o600, "the rotated api-key file");
    assert!(out.contains(&dir.join("api-key").display().to_string()), "rotate says where the key is: {out}");
    assert!(!out.contains(&second), "rotate must not print the key without --print: {out}");
    assert_key(&d, &first, 401, "the old key right after rotate").await;
    assert_key(&d, &second, 201, "the new key right after rotate").await;

    let printed = api_key_cli("rotate", &dir, &["--print"]).trim().to_string();
    let third = read_key(&dir);
    assert_eq!(printed, third, "--print prints the new key, as written to the file");
    assert_key(&d, &second, 401, "the second key after another rotate").await;
    assert_key(&d, &third, 201, "the third key").await;

    let out = api_key_cli("revoke", &dir, &[]);
    assert!(out.contains("revoked"), "{out}");
    assert!(!dir.join("api-key").exists(), "revoke removes the api-key file");
    assert_key(&d, &third, 401, "the revoked key").await;

    // A restart does not resurrect the admin key, nor generate a new one.
    drop(d);
    let d = Daemon::start_in(&dir, &db_config);
    assert!(!dir.join("api-key").exists(), "a restart after revoke must not generate a key");
    assert_key(&d, &third, 401, "the revoked key after a restart").await;
    assert_key(&d, &first, 401, "the first key after a restart").await;

    api_key_cli("rotate", &dir, &[]);
    let fourth = read_key(&dir);
    assert_key(&d, &fourth, 201, "a key rotated in after the revocation").await;
    assert_key(&d, &third, 401, "the revoked key after the next rotate").await;
}

/// Item 13: replacing the `api-key` file and restarting makes its content the admin key; the old key gets 401. (This
/// failed at start with `UNIQUE constraint failed: api_keys.id`.)
#[tokio::test]
async fn replaced_api_key_file_becomes_the_key_at_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = Daemon::start_in(&dir, "");
    let old = d.api_key.clone();
    drop(d);
    let new = format!("dk_{}", "operator-chosen-key-0123456789abcdef");
    std::fs::write(dir.join("api-key"), format!("{new}\n")).unwrap();
    std::fs::set_permissions(dir.join("api-key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start_in(&dir, "");
    assert_eq!(d.api_key, new);
    assert_key(&d, &new, 201, "the key of the replaced file").await;
    assert_key(&d, &old, 401, "the key that was replaced").await;
}

/// `duet api-key` on a directory where the daemon never ran is a clear error, and creates nothing.
#[test]
fn api_key_cli_refuses_a_missing_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nothing-here");
    let run = run_duet(["api-key".as_ref(), "rotate".as_ref(), "--data-dir".as_ref(), dir.as_os_str()]);
    assert!(!run.status.success(), "rotate without a data directory must fail");
    assert!(run.stderr.contains("duet serve"), "the error says what to do: {}", run.stderr);
    assert!(!dir.exists(), "nothing is created");
}

// ---------------------------------------------------------------------------------------------------------------
// Item 14: secrets.toml, session key rotation, permissions
// ---------------------------------------------------------------------------------------------------------------

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Edits `<data_dir>/secrets.toml` in place (it keeps its 0600 mode).
fn edit_secrets(data_dir: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let path = data_dir.join("secrets.toml");
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut table);
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
}

/// `session_keys = [{kid, key}, …]`, newest first.
fn set_session_keys(table: &mut toml::Table, keys: &[(&str, &str)]) {
    let entries = keys
        .iter()
        .map(|(kid, key)| {
            let mut t = toml::Table::new();
            t.insert("kid".into(), (*kid).into());
            t.insert("key".into(), (*key).into());
            toml::Value::Table(t)
        })
        .collect();
    table.remove("session_key");
    table.insert("session_keys".into(), toml::Value::Array(entries));
}

/// The `kid` in the JWT header of a join response's session token.
fn kid(join: &Value) -> String {
    let token = join["session_token"].as_str().expect("session_token");
    let head = token.split('.').next().unwrap();
    let head: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head).unwrap())
        .expect("JWT header is JSON");
    head["kid"].as_str().unwrap_or_else(|| panic!("JWT header without kid: {head}")).to_string()
}

/// Item 14: a new session key put first in secrets.toml and SIGHUP: new joins get tokens with its `kid`, a token of the
/// old key still opens the signaling socket; a short key on a later SIGHUP is refused and the running keys stay;
/// once the old key is removed its tokens are refused (close 4001).
#[tokio::test]
async fn session_key_rotates_on_sighup() {
    let d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let old_join = join_as(&d, &booking, "host").await;
    assert_eq!(kid(&old_join), "s1", "the generated session key's kid");
    let table: toml::Table =
        toml::from_str(&std::fs::read_to_string(d.data_dir.join("secrets.toml")).unwrap()).unwrap();
    // The generated entry, or the single `session_key` of older files.
    let old_key = table
        .get("session_keys")
        .and_then(|k| k[0]["key"].as_str())
        .or_else(|| table.get("session_key").and_then(|k| k.as_str()))
        .expect("a session key in secrets.toml")
        .to_string();

    let new_key = b64(&rand::random::<[u8; 32]>());
    edit_secrets(&d.data_dir, |t| set_session_keys(t, &[("s2", &new_key), ("s1", &old_key)]));
    sighup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_join = loop {
        let j = join_as(&d, &booking, "guest").await;
        if kid(&j) == "s2" {
            break j;
        }
        assert!(Instant::now() < deadline, "10 s after SIGHUP joins still get kid {}", kid(&j));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let welcome = signal_first_frame(&old_join).await.expect("a token of the old key must still open the socket");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let welcome = signal_first_frame(&new_join).await.expect("a token of the new key must open the socket");
    assert_eq!(welcome["type"], "welcome", "{welcome}");

    // A key of 31 bytes: the reload is refused, s2 keeps signing, s1 tokens keep verifying.
    edit_secrets(&d.data_dir, |t| set_session_keys(t, &[("s3", &b64(&[7u8; 31])), ("s2", &new_key)]));
    sighup(&d);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kid(&join_as(&d, &booking, "guest").await), "s2", "a refused reload keeps the running keys");
    assert_eq!(signal_first_frame(&old_join).await.map(|w| w["type"].clone()), Ok("welcome".into()));

    // The old key retired: its tokens are refused.
    edit_secrets(&d.data_dir, |t| set_session_keys(t, &[("s2", &new_key)]));
    sighup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match signal_first_frame(&old_join).await {
            Err(4001) => break,
            other => assert!(Instant::now() < deadline, "10 s after retiring s1 its token still gets {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let welcome = signal_first_frame(&new_join).await.expect("s2 tokens after retiring s1");
    assert_eq!(welcome["type"], "welcome");
}

/// Item 14: start is refused with an error naming what to fix: a data directory with mode 0755 (`chmod 700`), a TURN
/// secret or a session key shorter than 32 bytes (naming the entry). Each fixed, the daemon starts.
#[tokio::test]
async fn start_refuses_open_data_dir_and_short_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let run = serve_refused(&dir, "");
    assert!(run.stderr.contains(&format!("chmod 700 {}", dir.display())), "{}", run.stderr);
    chmod(&dir, 0o700);
    drop(Daemon::start_in(&dir, ""));

    let table: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("secrets.toml")).unwrap()).unwrap();
    let turn = table["turn_secrets"][0].as_str().unwrap().to_string();
    edit_secrets(&dir, |t| {
        t.insert("turn_secrets".into(), toml::Value::Array(vec![turn.clone().into(), "twenty-byte-secret!!".into()]));
    });
    let run = serve_refused(&dir, "");
    assert!(run.stderr.contains("`turn_secrets[1]` is 20 bytes; at least 32"), "{}", run.stderr);
    edit_secrets(&dir, |t| {
        t.insert("turn_secrets".into(), toml::Value::Array(vec![turn.clone().into()]));
    });

    edit_secrets(&dir, |t| set_session_keys(t, &[("s2", &b64(&[1u8; 16]))]));
    let run = serve_refused(&dir, "");
    assert!(run.stderr.contains(r#"`session_keys[0] (kid "s2")` is 16 bytes"#), "{}", run.stderr);
    // The single-key form of older files still works (kid "s1").
    edit_secrets(&dir, |t| {
        t.remove("session_keys");
        t.insert("session_key".into(), b64(&[2u8; 32]).into());
    });
    let d = Daemon::start_in(&dir, "");
    let booking = d.booking_now(60, 1800).await;
    assert_eq!(kid(&join_as(&d, &booking, "host").await), "s1");
}

/// A self-signed certificate for localhost: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("self-signed certificate");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// Item 14: a TLS key file that group or others may read is refused at start for every TLS listener (`[http]`,
/// `[turn]`, `[signaling.vy]`), naming the section and the `chmod 600`.
#[tokio::test]
async fn start_refuses_a_tls_key_readable_by_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = self_signed();
    let (cert, key) = write_tls_pair(tmp.path(), &cert_pem, &key_pem);
    chmod(&key, 0o644);
    let pair = format!("tls_cert = {:?}\ntls_key = {:?}\n", cert.display().to_string(), key.display().to_string());
    for (section, extra) in [
        ("[http]", format!("[http]\n{pair}")),
        ("[turn]", format!("[turn]\nlisten_tls = [\"127.0.0.1:0\"]\n{pair}")),
        ("[signaling.vy]", format!("[signaling.vy]\nlisten = \"127.0.0.1:0\"\n{pair}")),
    ] {
        let run = serve_refused(&tmp.path().join("data"), &extra);
        let err = &run.stderr;
        assert!(err.contains(section) && err.contains("has mode 644") && err.contains("chmod 600"), "{section}: {err}");
    }
}

/// A TLS handshake with `addr` (as `localhost`) that trusts only `cert_pem`: whether it succeeds, i.e. whether that
/// certificate is the one served.
async fn serves_certificate(addr: SocketAddr, cert_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.expect("certificate PEM")).expect("a usable trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTPS listener");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    matches!(tokio::time::timeout(Duration::from_secs(10), handshake).await, Ok(Ok(_)))
}

/// Item 14: on SIGHUP a new key file readable by others is refused and the running pair stays; fixed to 0600, the
/// next SIGHUP loads it.
#[tokio::test]
async fn sighup_refuses_a_tls_key_readable_by_others() {
    let tls_dir = tempfile::tempdir().unwrap();
    let (a, b) = (self_signed(), self_signed());
    let (cert, key) = write_tls_pair(tls_dir.path(), &a.0, &a.1);
    let d = Daemon::start(&format!(
        "[http]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ));
    assert!(serves_certificate(d.http, &a.0).await, "certificate A at start");

    write_tls_pair(tls_dir.path(), &b.0, &b.1);
    chmod(&key, 0o640);
    sighup(&d);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(serves_certificate(d.http, &a.0).await, "a key readable by the group must not be loaded on SIGHUP");
    assert!(!serves_certificate(d.http, &b.0).await, "certificate B must not be served with a 0640 key");

    chmod(&key, 0o600);
    sighup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !serves_certificate(d.http, &b.0).await {
        assert!(Instant::now() < deadline, "10 s after SIGHUP with a 0600 key certificate B is not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
