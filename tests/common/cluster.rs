//! Cluster-mode harness: a `redis-server` of the test's own and three Duet nodes sharing it and one PostgreSQL
//! database (README, "Cluster mode").
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, metric, pg};

/// A `redis-server` of the test's own on a free loopback port, keeping nothing on disk. Killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).ok()?;
        let mut r = Redis { port, child: None };
        r.resume();
        Some(r)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: everything it held is gone, as after a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three nodes, their database and their Redis. `nodes[i]` is `None` once killed.
pub struct Cluster {
    pub nodes: Vec<Option<Daemon>>,
    pub redis: Redis,
    _db: pg::TestDb,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Boots three nodes; the second and third get the first one's `secrets.toml` and `api-key` (every node of a
    /// cluster shares them: README, "Cluster mode"). `None` (SKIPPED) without PostgreSQL or `redis-server`.
    pub async fn start(test: &str) -> Option<Cluster> {
        Cluster::start_with(test, "").await
    }

    /// [`Cluster::start`] with `extra` TOML in every node's config.
    pub async fn start_with(test: &str, extra: &str) -> Option<Cluster> {
        let Some(db) = pg::TestDb::create() else {
            eprintln!("SKIPPED {test}: set {} to run the cluster tests", pg::ENV);
            return None;
        };
        let Some(redis) = Redis::start() else {
            eprintln!("SKIPPED {test}: redis-server is not installed");
            return None;
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = |i: usize| {
            format!("{}\n{extra}\n[cluster]\nredis_url = \"{}\"\nnode_id = \"node-{i}\"\n", db.config(), redis.url())
        };
        let first_dir = tmp.path().join("n1").join("data");
        let first = Daemon::start_in(&first_dir, &config(1));
        let mut nodes = vec![Some(first)];
        for i in 2..=3 {
            let dir = tmp.path().join(format!("n{i}")).join("data");
            std::fs::create_dir_all(&dir).expect("data dir");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            for file in ["secrets.toml", "api-key"] {
                copy_private(&first_dir.join(file), &dir.join(file));
            }
            nodes.push(Some(Daemon::start_in(&dir, &config(i))));
        }
        let c = Cluster { nodes, redis, _db: db, _tmp: tmp };
        for i in 0..3 {
            c.wait_metric(i, "duet_cluster_redis_up", 1.0).await;
        }
        Some(c)
    }

    pub fn node(&self, i: usize) -> &Daemon {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Polls node `i`'s metrics until `name` (with labels) reads `value`; panics after 10 s.
    pub async fn wait_metric(&self, i: usize, name: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.node(i).metrics().await;
            if metric(&text, name) == Some(value) {
                return;
            }
            assert!(Instant::now() < deadline, "node {} never showed {name} = {value}:\n{text}", i + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn copy_private(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}
