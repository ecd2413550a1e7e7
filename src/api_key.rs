//! The admin API key: a random key in `<data_dir>/api-key` (0600) whose SHA-256 is the `key_admin` row of the
//! `api_keys` table. The daemon looks the hash up on every request (no cache), so `duet api-key rotate` and `duet
//! api-key revoke`, run while the daemon serves (SQLite WAL), take effect from the next request.
//!
//! Start-up ([`ensure_admin_key`]): the key in the file becomes the admin key (a replaced file replaces the key); with
//! no file a key is generated, unless the admin key was revoked: then none is generated and the API answers 401 until
//! `duet api-key rotate` issues a new key (a restart never undoes a revocation).

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::booking::store::Store;
use crate::data_dir::{DataDir, new_api_key};

/// Key id of the admin API key.
pub const ADMIN_KEY_ID: &str = "key_admin";
/// Tenant the admin key acts for.
pub const DEFAULT_TENANT: &str = "ten_default";

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
}

/// Makes the `api-key` file and the database agree at start (see the module doc). Errors: an unreadable or
/// too-short file, a file readable by others, a database error.
pub async fn ensure_admin_key(data: &DataDir, store: &Store, now: i64) -> anyhow::Result<AdminKey> {
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
