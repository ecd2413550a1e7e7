//! PostgreSQL databases for the tests of the PostgreSQL backend: each test gets a database of its own
//! (`duet_t_<random>`, created on the server of `DUET_TEST_DATABASE_URL`, dropped afterwards, best effort), so tests
//! run in parallel. Without the variable the tests print `SKIPPED: <test>: DUET_TEST_DATABASE_URL not set` and pass,
//! or fail when `CI` is set.

use std::time::Duration;

use sqlx::{Connection, Executor};

use super::process::skip_or_fail;

/// The variable naming the PostgreSQL server (any database on it; `postgres://postgres@127.0.0.1:5432/test` here).
pub const ENV: &str = "DUET_TEST_DATABASE_URL";

/// A fresh, empty database; dropped (with its connections) when this is dropped.
pub struct TestDb {
    /// Its URL, e.g. `postgres://postgres@127.0.0.1:5432/duet_t_3f2a…`.
    pub url: String,
    name: String,
    server: String,
}

/// Runs `f` on a runtime of its own in another thread (so it works from sync code and from inside a test's runtime).
fn on_own_runtime<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
    })
    .join()
    .expect("database helper thread")
}

impl TestDb {
    /// Creates the database for the running test (named after the test thread in the SKIPPED line). `None` when
    /// `DUET_TEST_DATABASE_URL` is unset (SKIPPED; panics under CI). Panics when the server cannot be reached.
    pub fn create() -> Option<TestDb> {
        let test = std::thread::current().name().unwrap_or("a PostgreSQL test").to_string();
        let Some(server) = std::env::var(ENV).ok().filter(|v| !v.is_empty()) else {
            skip_or_fail(&test, &format!("{ENV} not set"));
            return None;
        };
        let name = format!("duet_t_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(&server).unwrap_or_else(|e| panic!("{ENV} is not a URL: {e}"));
        url.set_path(&name);
        let (s, n) = (server.clone(), name.clone());
        on_own_runtime(async move {
            let mut c = tokio::time::timeout(Duration::from_secs(20), sqlx::PgConnection::connect(&s))
                .await
                .unwrap_or_else(|_| panic!("{ENV}: no connection within 20 s"))
                .unwrap_or_else(|e| panic!("{ENV}: cannot connect to the PostgreSQL server: {e}"));
            c.execute(format!("CREATE DATABASE \"{n}\"").as_str())
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {n}: {e}"));
            let _ = c.close().await;
        });
        Some(TestDb { url: url.to_string(), name, server })
    }

    /// `[database]` TOML pointing the daemon at this database.
    pub fn config(&self) -> String {
        format!("[database]\nurl = {:?}\n", self.url)
    }
}

impl TestDb {
    /// Drops the database now (closing its connections), best effort; e.g. to see a daemon lose its database.
    pub fn drop_database(&self) {
        let (s, n) = (self.server.clone(), self.name.clone());
        on_own_runtime(async move {
            if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&s)).await
            {
                let _ = c.execute(format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)").as_str()).await;
                let _ = c.close().await;
            }
        });
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.drop_database();
    }
}
