//! API keys and tenants.
//!
//! Every key belongs to one tenant, has [`Scope`]s and an optional expiry, and is stored only as its SHA-256; it is
//! shown once, when created or rotated. `admin` keys are operator keys: only keys of the default tenant
//! [`DEFAULT_TENANT`] may hold the `admin` scope, and with it they manage every tenant and key
//! ([`create_key`] refuses `admin` for other tenants). Keys of other tenants reach only their own tenant's bookings.
//!
//! The admin API key: a random key in `<data_dir>/api-key` (0600) whose SHA-256 is the `key_admin` row of the
//! `api_keys` table. The daemon looks the hash up on every request (no cache), so `duet api-key rotate` and `duet
//! api-key revoke`, run while the daemon serves (SQLite WAL), take effect from the next request.
//!
//! Start-up ([`ensure_admin_key`]): the key in the file becomes the admin key (a replaced file replaces the key); with
//! no file a key is generated, unless the admin key was revoked: then none is generated and the API answers 401 until
//! `duet api-key rotate` issues a new key (a restart never undoes a revocation).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::booking::store::{ApiKey, Store, StoreError, Tenant};
use crate::data_dir::{DataDir, new_api_key};

/// Key id of the admin API key.
pub const ADMIN_KEY_ID: &str = "key_admin";
/// Tenant the admin key acts for.
pub const DEFAULT_TENANT: &str = "ten_default";

/// What an API key may do. Wire and stored form: `bookings:read`, `bookings:write`, `admin`. Scopes are independent
/// (`admin` does not imply the booking scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Scope {
    /// `GET /v1/bookings/{id}` (and the other reads).
    #[serde(rename = "bookings:read")]
    BookingsRead,
    /// Create, cancel and change bookings.
    #[serde(rename = "bookings:write")]
    BookingsWrite,
    /// `/v1/admin/`: tenants and API keys (operator keys of the default tenant only).
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// Every scope (the admin key `key_admin` has them all).
    pub const ALL: [Scope; 3] = [Scope::BookingsRead, Scope::BookingsWrite, Scope::Admin];

    /// Wire and stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::BookingsRead => "bookings:read",
            Scope::BookingsWrite => "bookings:write",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown scope `{s}` (scopes: bookings:read, bookings:write, admin)"))
    }
}

/// The stored form of a scope set: sorted, deduplicated, space-separated.
pub fn scopes_to_text(scopes: &[Scope]) -> String {
    let mut v = scopes.to_vec();
    v.sort();
    v.dedup();
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}

/// Why a tenant or key request was refused ([`create_key`], [`create_tenant`]). Each maps to a 422 naming `field`.
#[derive(Debug, thiserror::Error)]
pub enum KeyRequestError {
    /// `tenant_id` names no tenant.
    #[error("no tenant has this id")]
    UnknownTenant,
    /// A field is out of bounds; the message says how.
    #[error("{message}")]
    Invalid {
        /// The request field (`scopes`, `expires_at`, `name`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A name typed by an operator: 1 to 100 characters without control characters.
fn check_name(field: &'static str, name: &str) -> Result<(), KeyRequestError> {
    let n = name.chars().count();
    if n == 0 || n > 100 || name.chars().any(char::is_control) {
        return Err(KeyRequestError::Invalid {
            field,
            message: format!("`{field}` must be 1 to 100 characters without control characters"),
        });
    }
    Ok(())
}

/// Creates tenant `ten_<random>` named `name` at `now`. Errors: a bad name ([`KeyRequestError::Invalid`]), the
/// database.
pub async fn create_tenant(store: &Store, name: &str, now: i64) -> Result<Tenant, KeyRequestError> {
    check_name("name", name)?;
    Ok(store.create_tenant(&crate::booking::tokens::new_id("ten"), name, now).await?)
}

/// What [`create_key`] issues.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    /// Owning tenant (must exist).
    pub tenant_id: String,
    /// At least one scope; `admin` only for [`DEFAULT_TENANT`].
    pub scopes: Vec<Scope>,
    /// Expiry, Unix seconds, after `now`.
    pub expires_at: Option<i64>,
    /// Label, 1 to 100 characters.
    pub name: Option<String>,
}

/// Issues a new key `key_<random>` for `req` at `now`: returns the stored row and the key, which is shown once and
/// never stored. Errors: [`KeyRequestError::UnknownTenant`], [`KeyRequestError::Invalid`] (no scope, `admin` for
/// another tenant than the default, expiry not in the future, bad name), the database.
pub async fn create_key(store: &Store, req: KeyRequest, now: i64) -> Result<(ApiKey, String), KeyRequestError> {
    if req.scopes.is_empty() {
        return Err(KeyRequestError::Invalid { field: "scopes", message: "a key needs at least one scope".into() });
    }
    if req.scopes.contains(&Scope::Admin) && req.tenant_id != DEFAULT_TENANT {
        return Err(KeyRequestError::Invalid {
            field: "scopes",
            message: format!("only keys of the default tenant `{DEFAULT_TENANT}` (operator keys) may have `admin`"),
        });
    }
    if req.expires_at.is_some_and(|e| e <= now) {
        return Err(KeyRequestError::Invalid {
            field: "expires_at",
            message: "`expires_at` must be in the future".into(),
        });
    }
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    let key = new_api_key();
    let mut scopes = req.scopes;
    scopes.sort();
    scopes.dedup();
    let row = ApiKey {
        id: crate::booking::tokens::new_id("key"),
        tenant_id: req.tenant_id,
        name: req.name,
        scopes,
        key_hash: key_hash(&key),
        created_at: now,
        expires_at: req.expires_at,
        revoked_at: None,
    };
    store.create_api_key(&row).await.map_err(|e| match e {
        StoreError::UnknownTenant => KeyRequestError::UnknownTenant,
        e => e.into(),
    })?;
    Ok((row, key))
}

/// Issues a new key for API key `id` other than the admin key (whose key lives in its file: [`rotate`]): the old
/// key fails from the next request on, a revoked key is live again; tenant, name, scopes and expiry are kept.
/// Returns the new key (shown once), or `None` for an unknown id.
pub async fn rotate_key(store: &Store, id: &str, now: i64) -> anyhow::Result<Option<String>> {
    let key = new_api_key();
    Ok(store.rotate_api_key(id, &key_hash(&key), now).await?.then_some(key))
}

/// SHA-256 of a key: the only form stored.
pub fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// What start-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminKey {
    /// The key in the `api-key` file is the admin key (recorded if it was new or replaced).
    Loaded,
    /// No file and no revocation: a key was generated into the file.
    Generated,
    /// The admin key is revoked: the API answers 401 until `duet api-key rotate`.
    Revoked,
    /// Cluster mode, no file here, and the shared database holds a live admin key (another node's): it is kept, not
    /// replaced (a new node must not lock the others out). Copy that node's `api-key` file here to use it from this
    /// node's data directory.
    Elsewhere,
}

/// Makes the `api-key` file and the database agree at start (see the module doc). Errors: an unreadable or
/// too-short file, a file readable by others, a database error.
pub async fn ensure_admin_key(data: &DataDir, store: &Store, now: i64) -> anyhow::Result<AdminKey> {
    store.ensure_tenant(DEFAULT_TENANT, "default", now).await?;
    let stored = store.api_key(ADMIN_KEY_ID).await?;
    match data.read_api_key()? {
        Some(key) => {
            let hash = key_hash(&key);
            store
                .upsert_api_key(ADMIN_KEY_ID, DEFAULT_TENANT, &hash, now)
                .await
                .with_context(|| format!("recording the admin API key of {}", data.api_key_file().display()))?;
            // The same hash as a revoked row: the file outlived `revoke` (e.g. restored from a backup); it stays revoked.
            let revoked = stored.is_some_and(|row| row.key_hash == hash && row.revoked_at.is_some());
            Ok(if revoked { AdminKey::Revoked } else { AdminKey::Loaded })
        }
        None if stored.as_ref().is_some_and(|row| row.revoked_at.is_some()) => Ok(AdminKey::Revoked),
        None => {
            let key = new_api_key();
            let staged = data.stage_api_key(&key)?;
            store.upsert_api_key(ADMIN_KEY_ID, DEFAULT_TENANT, &key_hash(&key), now).await?;
            staged.commit()?;
            Ok(AdminKey::Generated)
        }
    }
}

/// Whether this data directory has no `api-key` file while the database holds a live admin key (in cluster mode:
/// another node's, see [`AdminKey::Elsewhere`]).
pub async fn live_key_elsewhere(data: &DataDir, store: &Store) -> anyhow::Result<bool> {
    if data.read_api_key()?.is_some() {
        return Ok(false);
    }
    Ok(store.api_key(ADMIN_KEY_ID).await?.is_some_and(|row| row.revoked_at.is_none()))
}

/// Issues a new admin key: written to `api-key.new`, recorded in the database (the old key fails from the next
/// request on, a revoked key is live again), then renamed over `api-key`. Returns the new key. A failure leaves the
/// old key and file in place.
pub async fn rotate(data: &DataDir, store: &Store, now: i64) -> anyhow::Result<String> {
    let key = new_api_key();
    let staged = data.stage_api_key(&key)?;
    store.upsert_api_key(ADMIN_KEY_ID, DEFAULT_TENANT, &key_hash(&key), now).await.context("recording the new key")?;
    staged.commit()?;
    Ok(key)
}

/// Revokes the admin key (401 from the next request on) and removes the `api-key` file. Returns false when it was
/// already revoked or never created.
pub async fn revoke(data: &DataDir, store: &Store, now: i64) -> anyhow::Result<bool> {
    let changed = store.revoke_api_key(ADMIN_KEY_ID, now).await?;
    data.remove_api_key()?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaced_file_rotation_and_revocation() {
        let t = tempfile::tempdir().unwrap();
        let data = DataDir::open(&t.path().join("d")).unwrap();
        let store = Store::open(&data.database().unwrap()).await.unwrap();
        let tenant = |k: String| {
            let store = store.clone();
            async move { store.tenant_for_key(&key_hash(&k)).await.unwrap() }
        };
        assert_eq!(ensure_admin_key(&data, &store, 1).await.unwrap(), AdminKey::Generated);
        let first = data.read_api_key().unwrap().unwrap();
        assert_eq!(tenant(first.clone()).await.as_deref(), Some(DEFAULT_TENANT));
        assert_eq!(ensure_admin_key(&data, &store, 2).await.unwrap(), AdminKey::Loaded);

        // A replaced file replaces the key (this was a UNIQUE constraint failure on api_keys.id).
        let replaced = new_api_key();
        data.stage_api_key(&replaced).unwrap().commit().unwrap();
        assert_eq!(ensure_admin_key(&data, &store, 3).await.unwrap(), AdminKey::Loaded);
        assert_eq!(tenant(first).await, None);
        assert!(tenant(replaced.clone()).await.is_some());

        let rotated = rotate(&data, &store, 4).await.unwrap();
        assert_eq!(data.read_api_key().unwrap().as_deref(), Some(rotated.as_str()));
        assert_eq!(tenant(replaced.clone()).await, None);
        assert!(tenant(rotated.clone()).await.is_some());

        assert!(revoke(&data, &store, 5).await.unwrap());
        assert!(!revoke(&data, &store, 6).await.unwrap(), "a second revoke changes nothing");
        assert_eq!(tenant(rotated.clone()).await, None);
        assert_eq!(data.read_api_key().unwrap(), None, "the file is removed");
        // A restart generates nothing; the revoked key restored into the file stays revoked.
        assert_eq!(ensure_admin_key(&data, &store, 7).await.unwrap(), AdminKey::Revoked);
        assert_eq!(data.read_api_key().unwrap(), None);
        data.stage_api_key(&rotated).unwrap().commit().unwrap();
        assert_eq!(ensure_admin_key(&data, &store, 8).await.unwrap(), AdminKey::Revoked);
        assert_eq!(tenant(rotated).await, None);
        // Rotation issues a live key again.
        let again = rotate(&data, &store, 9).await.unwrap();
        assert!(tenant(again).await.is_some());
        assert_eq!(store.api_key(ADMIN_KEY_ID).await.unwrap().unwrap().revoked_at, None);
    }
}
