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

/// A Unix-socket door to the PostgreSQL server of `DUET_TEST_DATABASE_URL`, for daemons in a network namespace of
/// their own (the browser tests: only `lo` there, so the server's TCP port is out of reach, while the file system is
/// shared). Listens on `<temporary dir>/.s.PGSQL.<port>` (libpq's socket name) and forwards each connection to the
/// server's TCP address; [`UnixBridge::url`] names that directory in the `host` query parameter, which sqlx takes
/// for a socket directory. Stops accepting when dropped. Needs a tokio runtime.
pub struct UnixBridge {
    /// `DUET_TEST_DATABASE_URL` with `host=<dir>`: the same server, user and database, through the socket.
    pub url: String,
    accept: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl UnixBridge {
    /// `None` when `DUET_TEST_DATABASE_URL` is unset (SKIPPED; panics under CI, as [`TestDb::create`]). Panics when
    /// the variable is not a TCP `postgres://` URL or the socket cannot be made.
    pub fn start() -> Option<UnixBridge> {
        let test = std::thread::current().name().unwrap_or("a PostgreSQL test").to_string();
        let Some(server) = std::env::var(ENV).ok().filter(|v| !v.is_empty()) else {
            skip_or_fail(&test, &format!("{ENV} not set"));
            return None;
        };
        let mut url = url::Url::parse(&server).unwrap_or_else(|e| panic!("{ENV} is not a URL: {e}"));
        assert!(
            !url.query_pairs().any(|(k, _)| k == "host" || k == "hostaddr"),
            "{ENV} names its host in the query; the bridge needs a TCP URL (postgres://user@host:port/db)"
        );
        let host = url.host_str().unwrap_or_else(|| panic!("{ENV} has no host")).to_string();
        let port = url.port().unwrap_or(5432);
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}")))
            .unwrap_or_else(|e| panic!("bind the PostgreSQL bridge socket: {e}"));
        let target = format!("{host}:{port}");
        let accept = tokio::spawn(async move {
            while let Ok((mut unix, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut tcp) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tcp.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut unix, &mut tcp).await;
                    }
                });
            }
        });
        url.query_pairs_mut().append_pair("host", &dir.path().display().to_string());
        Some(UnixBridge { url: url.to_string(), accept, _dir: dir })
    }
}

impl Drop for UnixBridge {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
