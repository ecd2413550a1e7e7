//! The data directory: created on first start with mode 0700; holds the SQLite database, the generated secrets
//! (`secrets.toml`, 0600) and the admin API key (`api-key`, 0600). Files readable by others are refused at start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::booking::tokens::{LEGACY_KID, SessionKeys};

/// Secrets generated on first start and kept in `secrets.toml`: 32 random bytes each, base64 in the file. Every secret
/// must be at least 32 bytes (a shorter one is refused at start and on SIGHUP, naming it).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// The single HS256 session key of older files (key id [`LEGACY_KID`]); `session_keys` replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    /// TURN REST shared secrets; the first signs new credentials, all are accepted (rotation).
    pub turn_secrets: Vec<String>,
    /// Key of the relay's stateless nonces.
    pub nonce_key: String,
    /// HS256 session keys, newest first: the first signs new session tokens (JWT `kid` = its `kid`), every one
    /// verifies the tokens carrying its `kid` (rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_keys: Vec<SessionKeyEntry>,
}

/// One `[[session_keys]]` entry of `secrets.toml`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKeyEntry {
    /// Key id written in the JWT header: 1 to 64 ASCII letters, digits, `-`, `_` or `.`; unique.
    pub kid: String,
    /// The key, base64 of at least 32 bytes.
    pub key: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

/// Shortest accepted secret, in bytes (RFC 7518 §3.2: an HS256 key at least as long as the hash output, 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

impl Secrets {
    /// Decoded session keys as `(kid, key)`, newest first. Errors name the entry: not base64, shorter than 32 bytes, a
    /// bad or repeated `kid`, both or neither of `session_key` and `session_keys`.
    pub fn session_keys(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        match (&self.session_key, self.session_keys.is_empty()) {
            (Some(_), false) => bail!(
                "secrets.toml: both `session_key` and `session_keys`; move `session_key` into `session_keys` with kid \"{LEGACY_KID}\""
            ),
            (None, true) => bail!("secrets.toml: `session_keys` needs at least one key"),
            (Some(k), true) => out.push((LEGACY_KID.to_string(), decode32("session_key", k)?)),
            (None, false) => {
                for (i, e) in self.session_keys.iter().enumerate() {
                    let name = format!("session_keys[{i}] (kid {:?})", e.kid);
                    let kid_ok = (1..=64).contains(&e.kid.len())
                        && e.kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                    if !kid_ok {
                        bail!("secrets.toml: `{name}`: kid must be 1 to 64 ASCII letters, digits, '-', '_' or '.'");
                    }
                    if out.iter().any(|(kid, _)| *kid == e.kid) {
                        bail!("secrets.toml: `{name}`: this kid is used twice");
                    }
                    out.push((e.kid.clone(), decode32(&name, &e.key)?));
                }
            }
        }
        Ok(out)
    }

    /// The session keys as a [`SessionKeys`] (the first signs).
    pub fn session_keyring(&self) -> anyhow::Result<SessionKeys> {
        let keys = self.session_keys()?;
        let ((kid, key), older) = keys.split_first().context("secrets.toml: no session key")?;
        Ok(older.iter().fold(SessionKeys::new(kid, key), |k, (kid, key)| k.with_older(kid, key)))
    }

    /// TURN secrets as HMAC keys (the bytes of the text, as coturn uses its `static-auth-secret`), first first.
    /// Errors: none listed, or one shorter than 32 bytes (named by its index).
    pub fn turn_secret_bytes(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        if self.turn_secrets.is_empty() {
            bail!("secrets.toml: `turn_secrets` needs at least one secret");
        }
        for (i, t) in self.turn_secrets.iter().enumerate() {
            if t.len() < MIN_SECRET_BYTES {
                bail!(
                    "secrets.toml: `turn_secrets[{i}]` is {} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -base64 32`)",
                    t.len()
                );
            }
        }
        Ok(self.turn_secrets.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    /// Decoded nonce key.
    pub fn nonce_key_bytes(&self) -> anyhow::Result<[u8; 32]> {
        let v = decode32("nonce_key", &self.nonce_key)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&v[..32]);
        Ok(out)
    }

    /// Checks every secret (see the getters' errors).
    fn validate(&self) -> anyhow::Result<()> {
        self.session_keys()?;
        self.turn_secret_bytes()?;
        self.nonce_key_bytes()?;
        Ok(())
    }
}

fn decode32(name: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    let v = STANDARD.decode(s.trim()).with_context(|| format!("secrets.toml: `{name}` is not base64"))?;
    if v.len() < MIN_SECRET_BYTES {
        bail!(
            "secrets.toml: `{name}` is {} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -base64 32`)",
            v.len()
        );
    }
    Ok(v)
}

fn random_b64() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    STANDARD.encode(b)
}

/// Opened data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// Its path.
    pub path: PathBuf,
    /// `secrets_file` (or `DUET_SECRETS_FILE`): the secrets come from this file instead of `<path>/secrets.toml`, and
    /// are never generated (e.g. a systemd credential, or the same file mounted on every node of a cluster).
    secrets_file: Option<PathBuf>,
}

impl DataDir {
    /// Creates the directory (0700) if missing. Errors: it is not a directory, or group or others have any
    /// permission on it (the message gives the `chmod 700`).
    pub fn open(path: &Path) -> anyhow::Result<DataDir> {
        if !path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("creating data directory {}", path.display()))?;
        }
        let meta = fs::metadata(path).with_context(|| format!("data directory {}", path.display()))?;
        if !meta.is_dir() {
            bail!("data directory {} is not a directory", path.display());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "data directory {} has mode {mode:o}: it holds the database, secrets.toml and api-key and must not be \
                 accessible to others (chmod 700 {})",
                path.display(),
                path.display()
            );
        }
        Ok(DataDir { path: path.to_path_buf(), secrets_file: None })
    }

    /// Path of the SQLite database, created empty with mode 0600 if missing (SQLite gives its `-wal` and `-shm`
    /// files the same mode).
    pub fn database(&self) -> anyhow::Result<PathBuf> {
        let p = self.path.join("duet.sqlite3");
        if !p.exists() {
            write_private(&p, b"")?;
        }
        Ok(p)
    }

    /// Path of the admin API key file.
    pub fn api_key_file(&self) -> PathBuf {
        self.path.join("api-key")
    }

    /// Reads the secrets from `file` instead of `secrets.toml` in the directory ([`DataDir::secrets`]).
    pub fn with_secrets_file(mut self, file: Option<PathBuf>) -> DataDir {
        self.secrets_file = file;
        self
    }

    /// Loads `secrets.toml`, generating it (0600) on first start; or the configured `secrets_file`, which must exist
    /// (it is never generated) and be private like `secrets.toml`.
    pub fn secrets(&self) -> anyhow::Result<Secrets> {
        let p = self.secrets_file.clone().unwrap_or_else(|| self.path.join("secrets.toml"));
        if self.secrets_file.is_some() && !p.exists() {
            bail!("secrets_file {} does not exist (it is never generated: copy a secrets.toml there)", p.display());
        }
        if p.exists() {
            check_private(&p)?;
            let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let s: Secrets = toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            s.validate().with_context(|| format!("checking {}", p.display()))?;
            return Ok(s);
        }
        let s = Secrets {
            session_key: None,
            turn_secrets: vec![random_b64()],
            nonce_key: random_b64(),
            session_keys: vec![SessionKeyEntry { kid: LEGACY_KID.to_string(), key: random_b64() }],
        };
        let text = format!(
            "# Generated by duet on first start. Keep private (0600). Secrets of at least 32 bytes; SIGHUP re-reads them.\n\
             # turn_secrets: the first signs new TURN credentials; add a new one in front to rotate.\n\
             # [[session_keys]]: the first signs new session tokens; add a new entry (new kid) in front to rotate.\n{}",
            toml::to_string(&s)?
        );
        write_private(&p, text.as_bytes())?;
        Ok(s)
    }

    /// Reads the admin API key file: `None` when it is missing or blank (never generated, or revoked with `duet
    /// api-key revoke`). Errors: a file readable by others, or a key shorter than 32 characters.
    pub fn read_api_key(&self) -> anyhow::Result<Option<String>> {
        let p = self.api_key_file();
        if !p.exists() {
            return Ok(None);
        }
        check_private(&p)?;
        let k = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string();
        if k.is_empty() {
            return Ok(None);
        }
        if k.len() < 32 {
            bail!(
                "{}: API key too short (at least 32 characters; `duet api-key rotate` writes a new one)",
                p.display()
            );
        }
        Ok(Some(k))
    }

    /// Replaces the admin API key file with `key` (mode 0600, owned like the data directory) in two steps, so the
    /// caller can record the key elsewhere in between: [`DataDir::stage_api_key`] writes `api-key.new`, then
    /// [`StagedApiKey::commit`] renames it over `api-key` (atomic) or dropping it removes it.
    pub fn stage_api_key(&self, key: &str) -> anyhow::Result<StagedApiKey> {
        let tmp = self.path.join("api-key.new");
        // A leftover from an interrupted rotation holds a key that was never committed.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", tmp.display()));
            }
            _ => {}
        }
        write_private(&tmp, format!("{key}\n").as_bytes())?;
        // Run as root (e.g. next to a systemd DynamicUser service) the file must stay readable by the daemon.
        let dir = fs::metadata(&self.path)?;
        let _ = std::os::unix::fs::chown(&tmp, Some(dir.uid()), Some(dir.gid()));
        Ok(StagedApiKey { tmp, dest: self.api_key_file(), done: false })
    }

    /// Removes the admin API key file (after a revocation); a missing file is fine.
    pub fn remove_api_key(&self) -> anyhow::Result<()> {
        let p = self.api_key_file();
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        }
    }
}

/// A new API key written next to the `api-key` file, not yet in place; removed on drop unless committed.
#[derive(Debug)]
pub struct StagedApiKey {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl StagedApiKey {
    /// Renames the staged file over `api-key`.
    pub fn commit(mut self) -> anyhow::Result<()> {
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.dest.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for StagedApiKey {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A fresh admin API key: `dk_` and 192 random bits, base64url (35 characters).
pub fn new_api_key() -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    format!("dk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// Refuses a secret file (secrets, API key, TLS private key) that group or others may read or write; the message
/// names the file and gives the `chmod 600`.
pub(crate) fn check_private(p: &Path) -> anyhow::Result<()> {
    let mode = fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} has mode {:o}: it holds secrets and must not be accessible to others (chmod 600)",
            p.display(),
            mode & 0o777
        );
    }
    Ok(())
}

fn write_private(p: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("creating {}", p.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_private_and_stable() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::open(&t.path().join("d")).unwrap();
        let s1 = d.secrets().unwrap();
        let s2 = d.secrets().unwrap();
        assert_eq!(s1.session_keys().unwrap(), s2.session_keys().unwrap());
        let mode = fs::metadata(d.path.join("secrets.toml")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(d.read_api_key().unwrap(), None);
        let k1 = new_api_key();
        d.stage_api_key(&k1).unwrap().commit().unwrap();
        assert_eq!(d.read_api_key().unwrap(), Some(k1.clone()));
        assert_eq!(fs::metadata(d.api_key_file()).unwrap().permissions().mode() & 0o777, 0o600);
        // A staged key that is dropped leaves the file alone.
        drop(d.stage_api_key(&new_api_key()).unwrap());
        assert_eq!(d.read_api_key().unwrap(), Some(k1));
        assert!(!d.path.join("api-key.new").exists());
        d.remove_api_key().unwrap();
        assert_eq!(d.read_api_key().unwrap(), None);
        assert_eq!(fs::metadata(&d.path).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn open_data_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d");
        fs::DirBuilder::new().mode(0o755).create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        let e = DataDir::open(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 700 {}", p.display())) && e.contains("755"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        DataDir::open(&p).unwrap();
    }

    fn with<R>(edit: impl FnOnce(&mut toml::Table) -> R) -> anyhow::Result<Secrets> {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::open(&t.path().join("d")).unwrap();
        d.secrets().unwrap();
        let path = d.path.join("secrets.toml");
        let mut table: toml::Table = toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut table);
        fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
        d.secrets()
    }

    fn key_entry(kid: &str, key: &str) -> toml::Value {
        toml::Value::Table(toml::toml! { kid = kid key = key })
    }

    #[test]
    fn short_secrets_are_refused_naming_them() {
        let short = STANDARD.encode([1u8; 31]);
        let long = STANDARD.encode([2u8; 32]);
        let e = with(|t| {
            t.insert(
                "turn_secrets".into(),
                toml::Value::Array(vec![long.clone().into(), "only-20-bytes-secret".into()]),
            )
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("`turn_secrets[1]` is 20 bytes; at least 32"), "{e:#}");
        let e = with(|t| {
            t.insert("session_keys".into(), toml::Value::Array(vec![key_entry("s2", &long), key_entry("s1", &short)]))
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains(r#"`session_keys[1] (kid "s1")` is 31 bytes"#), "{e:#}");
        let e = with(|t| {
            t.remove("session_keys");
            t.insert("session_key".into(), short.clone().into());
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("`session_key` is 31 bytes"), "{e:#}");
        let e = with(|t| {
            t.insert("nonce_key".into(), short.clone().into());
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("`nonce_key` is 31 bytes"), "{e:#}");
    }

    #[test]
    fn session_key_forms() {
        let a = STANDARD.encode([3u8; 32]);
        let b = STANDARD.encode([4u8; 40]);
        // The single key of older files is kid "s1".
        let s = with(|t| {
            t.remove("session_keys");
            t.insert("session_key".into(), a.clone().into());
        })
        .unwrap();
        assert_eq!(s.session_keys().unwrap(), vec![("s1".to_string(), vec![3u8; 32])]);
        assert_eq!(s.session_keyring().unwrap().signing_kid(), "s1");
        let s = with(|t| {
            t.insert("session_keys".into(), toml::Value::Array(vec![key_entry("2027-01", &b), key_entry("s1", &a)]))
        })
        .unwrap();
        assert_eq!(s.session_keys().unwrap().iter().map(|k| k.0.as_str()).collect::<Vec<_>>(), ["2027-01", "s1"]);
        assert_eq!(s.session_keyring().unwrap().signing_kid(), "2027-01");
        for (what, edit) in [
            (
                "both",
                Box::new(|t: &mut toml::Table| drop(t.insert("session_key".into(), a.clone().into())))
                    as Box<dyn FnOnce(&mut toml::Table)>,
            ),
            (
                "repeated kid",
                Box::new(|t: &mut toml::Table| {
                    t.insert("session_keys".into(), toml::Value::Array(vec![key_entry("k", &a), key_entry("k", &b)]));
                }),
            ),
            (
                "bad kid",
                Box::new(|t: &mut toml::Table| {
                    t.insert("session_keys".into(), toml::Value::Array(vec![key_entry("a b", &a)]));
                }),
            ),
            ("none", Box::new(|t: &mut toml::Table| drop(t.remove("session_keys")))),
        ] {
            assert!(with(edit).is_err(), "{what} must be refused");
        }
    }

    #[test]
    fn world_readable_secrets_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::open(&t.path().join("d")).unwrap();
        d.secrets().unwrap();
        fs::set_permissions(d.path.join("secrets.toml"), fs::Permissions::from_mode(0o644)).unwrap();
        let e = d.secrets().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
