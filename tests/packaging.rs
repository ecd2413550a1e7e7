//! The Debian package (README "Operate"), as an operator gets it: `cargo deb` builds it, `dpkg-deb` shows its files
//! and conffiles, `dpkg -i` installs it (the postinst creates the `duet` system user), `systemd-analyze verify` checks
//! the installed unit, the unit's own ExecStartPre and ExecStart command lines run as its `User=` with the installed
//! config (listeners moved to free loopback ports) until `/healthz` answers and SIGTERM stops the daemon, then `dpkg
//! -r` and `dpkg -P` remove it again.
//!
//! Bounded in time: the package is made from the `duet` binary this test run already built (`cargo deb --no-build`
//! with the profile of `CARGO_BIN_EXE_duet`, `--fast` compression; a few seconds), never from a new release build;
//! every command has a deadline. It needs root, dpkg and cargo-deb (`.ci/run` installs it); without them it prints
//! `SKIPPED: …` and passes (under `CI` it fails). It refuses (SKIPPED) to touch a machine with a real Duet install
//! (a `duet` package of another version, /usr/bin/duet, /etc/duet/config.toml or /var/lib/duet it did not make),
//! and cleans up what an interrupted earlier run left: the test's package carries the revision
//! [`TEST_REVISION`] and its state directory the file [`MARKER`].
//!
//! `units_agree` (no root needed) keeps `systemd/duet.service` (for `cargo install`) and the package's
//! `debian/duet.service` the same unit but for the binary path and the user.

#[allow(dead_code, missing_docs)]
#[path = "common/process.rs"]
mod process;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use process::{Finished, find_tool, run_bounded, skip_or_fail};

/// The Debian revision of the package this test builds (`0.1.0-0~packagingtest`): an installed `duet` with it was
/// left by an interrupted run of this test and may be purged; any other installed `duet` is a real install.
const TEST_REVISION: &str = "0~packagingtest";

/// Written into /var/lib/duet when this test creates it: a state directory without it is real data.
const MARKER: &str = ".duet-packaging-test";

const STATE_DIR: &str = "/var/lib/duet";
const UNIT: &str = "/lib/systemd/system/duet.service";
/// The GECOS of the user debian/duet.sysusers creates.
const USER_GECOS: &str = "Duet call infrastructure";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, limit: Duration) -> Finished {
    run_bounded(cmd, limit)
}

fn ok(cmd: &mut Command, limit: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let f = run(cmd, limit);
    f.assert_success(&what);
    f
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The version of the installed `duet` package, if any.
fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status} ${Version}", "duet"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, version) = text.split_once(' ')?;
    // "config-files" (removed, not purged) still owns the conffiles: purging it is ours to do too.
    (out.status.success() && status != "not-installed").then(|| version.to_string())
}

/// Why this machine holds a Duet installation this test must not touch, if it does.
fn real_install() -> Option<String> {
    if let Some(v) = installed_version()
        && !v.ends_with(TEST_REVISION)
    {
        return Some(format!("the package duet {v} is installed"));
    }
    if installed_version().is_none() {
        for path in ["/usr/bin/duet", "/etc/duet/config.toml", UNIT] {
            if Path::new(path).exists() {
                return Some(format!("{path} exists and belongs to no duet package"));
            }
        }
    }
    let state = Path::new(STATE_DIR);
    if state.exists() && !state.join(MARKER).exists() {
        return Some(format!("{STATE_DIR} exists and was not made by this test"));
    }
    None
}

/// Purges the test's package, removes the state directory it made and the user its package created. Safe to run
/// when any of them is absent; never touches a real install ([`real_install`] was checked first).
fn clean_machine() {
    if installed_version().is_some_and(|v| v.ends_with(TEST_REVISION)) {
        ok(Command::new("dpkg").args(["--purge", "duet"]), Duration::from_secs(120));
    }
    let state = Path::new(STATE_DIR);
    if state.join(MARKER).exists() {
        std::fs::remove_dir_all(state).unwrap_or_else(|e| panic!("remove {STATE_DIR}: {e}"));
    }
    let passwd = Command::new("getent").args(["passwd", "duet"]).output().expect("run getent");
    let entry = String::from_utf8_lossy(&passwd.stdout).to_string();
    if entry.split(':').nth(4) == Some(USER_GECOS) && installed_version().is_none() && !state.exists() {
        ok(Command::new("userdel").arg("duet"), Duration::from_secs(30));
    }
}

/// Cleans the machine when dropped, also after a failed assertion.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        clean_machine();
    }
}

/// A background process killed (by its own pid) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` over HTTP/1.1 on `addr`: (status, body). Errors when nothing answers within 2 s.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The values of `key=` in a unit file (comments skipped), in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// A command line of the unit as argv; the test's units use no quoting, specifiers or variables there.
fn argv(line: &str) -> Vec<String> {
    assert!(!line.contains(['"', '\'', '%', '$']), "unit command line needs a real parser: {line}");
    line.split_whitespace().map(str::to_string).collect()
}

/// The profile (`dev`, `release`, …) and target directory of the `duet` binary of this test run.
fn built_binary() -> (String, PathBuf) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_duet"));
    let profile_dir = bin.parent().expect("binary in a profile directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => panic!("no profile directory in {}", bin.display()),
    };
    let target = profile_dir.parent().expect("profile directory in a target directory").to_path_buf();
    (profile, target)
}

#[test]
fn deb_installs_runs_and_purges() {
    const TEST: &str = "packaging::deb_installs_runs_and_purges";
    if !is_root() {
        skip_or_fail(TEST, "needs root (dpkg -i, a system user)");
        return;
    }
    let tools = ["dpkg", "dpkg-deb", "dpkg-query", "systemd-analyze", "systemd-tmpfiles", "setpriv", "userdel"];
    let missing: Vec<_> = tools.iter().filter(|t| find_tool(t).is_none()).collect();
    if !missing.is_empty() {
        skip_or_fail(TEST, &format!("tools missing from PATH: {missing:?}"));
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !Command::new(&cargo).args(["deb", "--version"]).output().is_ok_and(|o| o.status.success()) {
        skip_or_fail(
            TEST,
            "`cargo deb` is missing; install it with `cargo install cargo-deb --version 3.8.0 --locked`",
        );
        return;
    }
    if let Some(why) = real_install() {
        skip_or_fail(TEST, &format!("this machine has a real Duet install, not touched: {why}"));
        return;
    }
    let started = Instant::now();
    clean_machine();
    let _cleanup = Cleanup;

    // Build the package from the binary this run built.
    let (profile, target) = built_binary();
    let out = tempfile::tempdir().expect("tempdir");
    let f = ok(
        Command::new(&cargo)
            .current_dir(manifest_dir())
            .env("CARGO_TARGET_DIR", &target)
            .args(["deb", "--no-build", "--offline", "--fast", "--profile", &profile, "--deb-revision", TEST_REVISION])
            .arg("--manifest-path")
            .arg(manifest_dir().join("Cargo.toml"))
            .arg("--output")
            .arg(out.path()),
        Duration::from_secs(180),
    );
    let deb = PathBuf::from(f.stdout.lines().last().expect("cargo deb prints the package path").trim());
    assert!(deb.is_file(), "cargo deb printed {deb:?}, not a file; stderr: {}", f.stderr);
    let version = format!("{}-{TEST_REVISION}", env!("CARGO_PKG_VERSION"));

    // What it holds.
    let fields =
        ok(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args(["Package", "Version", "Depends"]), T30).stdout;
    assert!(fields.contains("Package: duet\n"), "{fields}");
    assert!(fields.contains(&format!("Version: {version}\n")), "{fields}");
    assert!(fields.contains("libc6"), "Depends lists the shared libraries: {fields}");
    assert!(fields.contains("systemd-sysusers"), "Depends names who runs sysusers.d: {fields}");
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&deb), T30).stdout;
    let files: BTreeSet<&str> =
        listing.lines().filter(|l| !l.starts_with('d')).filter_map(|l| l.split_whitespace().last()).collect();
    let expected: BTreeSet<&str> = [
        "./usr/bin/duet",
        "./etc/duet/config.toml",
        "./usr/lib/systemd/system/duet.service",
        "./usr/lib/sysusers.d/duet.conf",
        "./usr/lib/tmpfiles.d/duet.conf",
        "./usr/share/doc/duet/README.md",
        "./usr/share/doc/duet/copyright",
    ]
    .into();
    assert_eq!(files, expected, "files of the package:\n{listing}");
    let duet_line = listing.lines().find(|l| l.ends_with("./usr/bin/duet")).unwrap();
    assert!(duet_line.starts_with("-rwxr-xr-x 0/0 "), "{duet_line}");
    let conffiles = ok(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles"), T30).stdout;
    assert_eq!(conffiles.trim(), "/etc/duet/config.toml", "conffiles");
    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&deb), T30).stdout;
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(script), "maintainer script {script} generated: {info}");
    }
    let postinst = ok(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"), T30).stdout;
    assert!(postinst.contains("systemd-sysusers") && postinst.contains("duet.conf"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper enable duet.service"), "the unit is enabled: {postinst}");

    // Install: on this machine systemd is not PID 1; the postinst must still succeed and create the user.
    ok(Command::new("dpkg").arg("-i").arg(&deb), Duration::from_secs(120));
    assert_eq!(installed_version().as_deref(), Some(version.as_str()));
    let v = ok(Command::new("/usr/bin/duet").arg("--version"), T30).stdout;
    assert_eq!(v.trim(), format!("duet {}", env!("CARGO_PKG_VERSION")));
    let config = std::fs::read("/etc/duet/config.toml").expect("installed config");
    assert_eq!(config, std::fs::read(manifest_dir().join("config.toml.example")).unwrap(), "config is the example");
    let unit = std::fs::read_to_string(UNIT).expect("installed unit");
    assert_eq!(unit, std::fs::read_to_string(manifest_dir().join("debian/duet.service")).unwrap());
    let passwd = ok(Command::new("getent").args(["passwd", "duet"]), T30).stdout;
    let user: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(user.get(4..7), Some(&[USER_GECOS, STATE_DIR, "/usr/sbin/nologin"][..]), "{passwd}");
    assert_ne!(user[2], "0", "a system user, not root");
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/duet.service").is_symlink(),
        "the postinst enabled the unit"
    );

    // The installed unit, as systemd would load it (it checks that ExecStart's binary exists).
    let verify = run(Command::new("systemd-analyze").args(["verify", UNIT]), Duration::from_secs(60));
    let complaints: Vec<&str> =
        verify.stderr.lines().chain(verify.stdout.lines()).filter(|l| l.contains("duet")).collect();
    assert!(verify.status.success() && complaints.is_empty(), "systemd-analyze verify {UNIT}:\n{complaints:#?}");

    // The state directory, as systemd-tmpfiles at boot or StateDirectory= at start make it (the marker first, so an
    // interrupted run leaves a directory the next run knows as its own).
    std::fs::create_dir(STATE_DIR).expect("create the state directory");
    std::fs::write(Path::new(STATE_DIR).join(MARKER), "made by tests/packaging.rs\n").unwrap();
    ok(Command::new("systemd-tmpfiles").args(["--create", "duet.conf"]), T30);
    let stat = ok(Command::new("stat").args(["-c", "%U:%G %a", STATE_DIR]), T30).stdout;
    assert_eq!(stat.trim(), "duet:duet 700", "{STATE_DIR} after tmpfiles.d");

    // "Start" the unit: its User=, Group=, UMask=, ExecStartPre= and ExecStart= command lines, as systemd would run them
    // (clean environment, working directory /), with the listeners on free loopback ports.
    let uid = unit_values(&unit, "User").pop().expect("User=");
    let gid = unit_values(&unit, "Group").pop().expect("Group=");
    let umask = unit_values(&unit, "UMask").pop().expect("UMask=");
    let as_service = |args: &[String]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--no-new-privs", "--pdeathsig", "KILL", "--"])
            .args(["/bin/sh", "-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
            .args(args)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_LOG", "warn");
        c
    };
    for pre in unit_values(&unit, "ExecStartPre") {
        ok(&mut as_service(&argv(&pre)), T30);
    }
    let mut start = argv(&unit_values(&unit, "ExecStart").pop().expect("ExecStart="));
    assert_eq!(start[0], "/usr/bin/duet");
    start.extend(
        ["--http-listen", "127.0.0.1:0", "--turn-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
            .map(String::from),
    );
    let mut daemon = Running(
        as_service(&start).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn"),
    );
    let stdout = daemon.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["event"] == "ready"
            {
                let _ = tx.send(v);
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30)).expect("the packaged daemon prints its ready line");
    let admin: SocketAddr = ready["admin"].as_str().and_then(|a| a.parse().ok()).expect("admin address");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(admin, "/healthz") {
            Ok((200, _)) => break,
            r if Instant::now() > deadline => panic!("/healthz on {admin}: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200);
    let metrics = http_get(admin, "/metrics").unwrap().1;
    assert!(metrics.contains(&format!("duet_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{metrics}");
    assert!(metrics.contains("duet_database_up 1"), "{metrics}");
    for file in ["secrets.toml", "api-key", "duet.sqlite3"] {
        let stat = ok(Command::new("stat").args(["-c", "%U %a"]).arg(Path::new(STATE_DIR).join(file)), T30).stdout;
        assert_eq!(stat.trim(), "duet 600", "{file} in the state directory");
    }
    // SIGTERM drains (no call is running) and exits.
    ok(Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]), T30);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");

    // Remove keeps the conffile, purge removes it; the state directory is the operator's (README "Operate").
    ok(Command::new("dpkg").args(["-r", "duet"]), Duration::from_secs(120));
    assert!(!Path::new("/usr/bin/duet").exists() && !Path::new(UNIT).exists());
    assert!(Path::new("/etc/duet/config.toml").exists(), "dpkg -r keeps the conffile");
    ok(Command::new("dpkg").args(["-P", "duet"]), Duration::from_secs(120));
    assert!(!Path::new("/etc/duet/config.toml").exists(), "dpkg -P removes the conffile");
    assert!(installed_version().is_none());
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/duet.service").exists(), "purge disables the unit");
    assert!(Path::new(STATE_DIR).join("secrets.toml").exists(), "purge leaves the data alone");
    clean_machine();
    assert!(!Path::new(STATE_DIR).exists());
    assert!(!ok(Command::new("getent").arg("passwd"), T30).stdout.lines().any(|l| l.starts_with("duet:")));
    assert!(started.elapsed() < Duration::from_secs(300), "took {:?}", started.elapsed());
}

const T30: Duration = Duration::from_secs(30);

/// The directives of a unit file: `key=value` lines without comments, as a set.
fn directives(text: &str) -> BTreeSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

#[test]
fn units_agree() {
    let manual = std::fs::read_to_string(manifest_dir().join("systemd/duet.service")).unwrap();
    let packaged = std::fs::read_to_string(manifest_dir().join("debian/duet.service")).unwrap();
    let manual = directives(&manual.replace("/usr/local/bin/duet", "/usr/bin/duet"));
    let packaged = directives(&packaged);
    let only_manual: BTreeSet<&str> = manual.difference(&packaged).map(String::as_str).collect();
    let only_packaged: BTreeSet<&str> = packaged.difference(&manual).map(String::as_str).collect();
    assert_eq!(only_manual, ["DynamicUser=yes"].into(), "systemd/duet.service only");
    assert_eq!(only_packaged, ["User=duet", "Group=duet", "RemoveIPC=yes"].into(), "debian/duet.service only");
    let sysusers = std::fs::read_to_string(manifest_dir().join("debian/duet.sysusers")).unwrap();
    assert!(
        sysusers.lines().any(|l| l == format!("u duet - \"{USER_GECOS}\" {STATE_DIR}")),
        "debian/duet.sysusers creates the unit's user: {sysusers}"
    );
    let tmpfiles = std::fs::read_to_string(manifest_dir().join("debian/duet.tmpfile")).unwrap();
    assert!(tmpfiles.lines().any(|l| l == format!("d {STATE_DIR} 0700 duet duet -")), "{tmpfiles}");
}
