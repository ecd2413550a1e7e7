//! Keys and secrets (issue 7 items 13 and 14): the admin API key is rotated and revoked with `duet api-key` while the
//! daemon runs and survives a replaced `api-key` file at restart; secrets.toml and TLS keys are checked.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Daemon, booking_body, run_duet};

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
    let mut args = vec!["api-key".as_ref(), action.as_ref(), "--data-dir".as_ref(), data_dir.as_os_str()];
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
/// key revoked (no new key is generated) until the next rotate.
#[tokio::test]
async fn api_key_rotate_and_revoke_while_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = Daemon::start_in(&dir, "");
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
    let d = Daemon::start_in(&dir, "");
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
