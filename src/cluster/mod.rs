//! Cluster mode (README, "Cluster mode"): several Duet nodes behind one load balancer, sharing the bookings in
//! PostgreSQL and what must be shared live in Redis. This module is the node's Redis link; it knows nothing of
//! signaling or bookings, which use it:
//!
//! - **Node registry.** Each node picks a random 23-bit node number at start and writes a heartbeat into the sorted
//!   set `duet:nodes` (member: the number, score: Redis's own clock in ms) every 500 ms. A node whose heartbeat is
//!   older than 3 s is dead. Signaling connection ids carry their node's number in their top bits, so any node can
//!   tell where a socket lives.
//! - **Bus.** Each node subscribes to `duet:bus:<number>`; signaling frames for a socket on another node are
//!   published there ([`Cluster::publish_bus`]). Redis pub/sub delivers in order per publishing connection and at most
//!   once, which is what signaling wants: one publisher task per node keeps the order, and a frame lost in a Redis
//!   outage is like one lost on a broken socket (the clients' sessions recover on their own).
//! - **Room homes.** A room's state machine lives on one node, its home: the key `duet:home:<room>` names it, a lease
//!   of 10 s that the home renews every 2 s while the room has sockets ([`Cluster::acquire_home`],
//!   [`Cluster::refresh_leases`]). A lease held by a dead node is taken over at once. Because every socket of a room
//!   reaches the same state machine, the room's capacity of two and "newest socket per role wins" hold across nodes
//!   exactly, not eventually.
//! - **Booking feed.** Cancellations, reschedules, extensions and revocations are published on `duet:feed`
//!   ([`Cluster::publish_feed`]), so every node's relay and hub follow within milliseconds. After every (re)connect the
//!   consumers rebuild from PostgreSQL ([`Cluster::link_epochs`]), so a node that missed messages is still right.
//!
//! **Signed messages.** Every bus and feed message starts with a 16-byte tag, HMAC-SHA256 over the channel name and
//! the body, keyed with a key derived from the `nonce_key` of `secrets.toml` (which every node shares); a message
//! whose tag does not verify is dropped and counted (`duet_cluster_bus_dropped_total{reason="bad_signature"}`). So a
//! client of Redis without the nodes' secrets cannot put a socket into a room or cancel a call; Redis should stay
//! private all the same (a recorded message can be replayed).
//!
//! **Redis outage.** Nothing waits on Redis: a frame for another node is dropped while the link is down
//! (`duet_cluster_bus_dropped_total`), rooms that start meanwhile are homed locally, and calls in progress keep their
//! media (TURN needs nothing from Redis) and their same-node signaling. The link reconnects with backoff (250 ms to
//! 2 s); leases are then asserted again, and a room that two nodes homed during the outage stays with the one Redis
//! names, the other closing its sockets with 1012 so that their clients reconnect to it. `/readyz` reports
//! `redis_down` meanwhile ([`Cluster::health`]).

pub mod feed;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;

/// How often a node writes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// A node whose last heartbeat is older than this (ms, by Redis's clock) is dead.
pub const NODE_TTL_MS: u64 = 3000;
/// Lifetime of a room-home lease (ms).
pub const LEASE_TTL_MS: u64 = 10_000;
/// How often a home renews the leases of its rooms.
pub const LEASE_REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How often the set of live nodes is read.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// After the link came (back) up, how long before a missing heartbeat means a dead node: after a Redis restart the
/// other nodes need one heartbeat to appear again.
const WATCH_GRACE: Duration = Duration::from_millis(NODE_TTL_MS + 1000);
/// Every Redis command's deadline.
const REDIS_TIMEOUT: Duration = Duration::from_millis(1000);
/// Frames waiting for the publisher task; more are dropped (and counted) rather than queued without bound.
const PUBLISH_QUEUE: usize = 65_536;
/// Most messages in one pipelined batch.
const PUBLISH_BATCH: usize = 512;
/// The channel of the booking feed.
const FEED_CHANNEL: &str = "duet:feed";
/// Prefix of the nodes' bus channels.
const BUS_PREFIX: &str = "duet:bus:";

/// `KEYS` = room-home lease keys, `ARGV` = [me, lease ms, node ttl ms]. For each key: the current holder if that is
/// another live node, else the key is (re)set to `me` with a fresh lease. Returns the holders, in key order.
const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  local holder = ARGV[1]
  if v and v ~= ARGV[1] then
    local seen = redis.call('ZSCORE', 'duet:nodes', v)
    if seen and tonumber(seen) > now - tonumber(ARGV[3]) then holder = v end
  end
  if holder == ARGV[1] then redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
  out[i] = holder
end
return out
";

/// `ARGV` = [node number]. Writes the heartbeat with Redis's clock and forgets nodes silent for 10 minutes.
const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', 'duet:nodes', now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', 'duet:nodes', '-inf', now - 600000)
return now
";

/// `ARGV` = [node ttl ms]. The numbers of the nodes whose heartbeat is recent.
const ALIVE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', 'duet:nodes', now - tonumber(ARGV[1]), '+inf')
";

/// The metric families of cluster mode (registered only when it is on).
#[derive(Clone)]
struct ClusterMetrics {
    up: IntGauge,
    bus: IntCounterVec,
    dropped: IntCounterVec,
}

impl ClusterMetrics {
    fn new(metrics: &Metrics) -> ClusterMetrics {
        let up = IntGauge::new("duet_cluster_redis_up", "1 while this node's Redis link works, 0 during an outage.")
            .expect("static metric definition");
        let bus = IntCounterVec::new(
            Opts::new("duet_cluster_bus_messages_total", "Cluster messages (bus and booking feed) by direction."),
            &["direction"],
        )
        .expect("static metric definition");
        let dropped = IntCounterVec::new(
            Opts::new(
                "duet_cluster_bus_dropped_total",
                "Cluster messages not published, by reason: redis_down (the link was down) or queue_full.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        // Registered once per daemon; a second registration (impossible here) would only lose the family.
        let _ = metrics.registry.register(Box::new(up.clone()));
        let _ = metrics.registry.register(Box::new(bus.clone()));
        let _ = metrics.registry.register(Box::new(dropped.clone()));
        ClusterMetrics { up, bus, dropped }
    }
}

/// What the other nodes sent this one, handed to the consumers by [`Cluster::start`].
pub struct Inbound {
    /// Bus frames addressed to this node (`duet:bus:<number>`), for the signaling driver.
    pub bus: mpsc::Receiver<Vec<u8>>,
    /// Booking-feed messages of every node (this one's own included), for [`feed::run`].
    pub feed: mpsc::Receiver<Vec<u8>>,
}

struct Inner {
    node: u32,
    node_id: String,
    client: redis::Client,
    /// The command connection while the link is up.
    conn: watch::Sender<Option<MultiplexedConnection>>,
    /// When the link last came up; `None` while it is down.
    up_since: Mutex<Option<Instant>>,
    up: AtomicBool,
    /// Number of times the link came up (1 after the first connect); consumers resynchronise when it changes.
    epochs: watch::Sender<u64>,
    /// The live nodes, once the link has been up for [`WATCH_GRACE`]; `None` while that is not known.
    alive: watch::Sender<Option<Arc<HashSet<u32>>>>,
    publish: mpsc::Sender<(String, Vec<u8>)>,
    /// The key of the messages' tags.
    key: [u8; 32],
    lease: redis::Script,
    metrics: ClusterMetrics,
}

/// This node's link to the cluster; cheap to clone. See the module documentation.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Starts the link tasks (connect with retries, subscribe, heartbeat, watch the live nodes, publish) and returns
    /// at once: a Redis that is down at start is a degraded start, not a failed one. The tasks end with `shutdown`.
    ///
    /// `secret` is the `nonce_key` of `secrets.toml`, the same on every node: the messages' tag key is derived from it.
    pub fn start(
        config: &ClusterConfig,
        secret: &[u8],
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Cluster, Inbound)> {
        let client = redis::Client::open(config.redis_url.expose())
            .map_err(|e| anyhow::anyhow!("[cluster] redis_url: {}", e))?;
        // 23 bits: connection ids keep 40 bits of per-node counter below them in 63 bits.
        let node = rand::random_range(1..(1u32 << 23));
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (bus_tx, bus) = mpsc::channel(8192);
        let (feed_tx, feed) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            node,
            node_id: config.node_id.clone(),
            client,
            conn: watch::Sender::new(None),
            up_since: Mutex::new(None),
            up: AtomicBool::new(false),
            epochs: watch::Sender::new(0),
            alive: watch::Sender::new(None),
            publish,
            key: derive_key(secret),
            lease: redis::Script::new(LEASE_SCRIPT),
            metrics: ClusterMetrics::new(metrics),
        });
        inner.metrics.up.set(0);
        tracing::info!(target: "duet::cluster", node_id = %inner.node_id, node = node, "cluster mode: joining via Redis");
        let cluster = Cluster { inner };
        tokio::spawn(cluster.clone().link(bus_tx, feed_tx, shutdown.clone()));
        tokio::spawn(cluster.clone().publisher(publish_rx, shutdown.clone()));
        tokio::spawn(cluster.clone().watch_nodes(shutdown));
        Ok((cluster, Inbound { bus, feed }))
    }

    /// This node's number (1 to 2²³−1), the top bits of its signaling connection ids.
    pub fn node(&self) -> u32 {
        self.inner.node
    }

    /// This node's configured name.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Whether the Redis link is up now.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// `None` when the link works, else the `/readyz` reason `"redis_down"`.
    pub fn health(&self) -> Option<&'static str> {
        if self.is_up() { None } else { Some("redis_down") }
    }

    /// Watches the link's epoch: it goes up by one each time the link (re)connects.
    pub fn link_epochs(&self) -> watch::Receiver<u64> {
        self.inner.epochs.subscribe()
    }

    /// Watches the set of live node numbers; `None` while it is not known (link down, or up for less than the grace
    /// time after a connect).
    pub fn alive_nodes(&self) -> watch::Receiver<Option<Arc<HashSet<u32>>>> {
        self.inner.alive.subscribe()
    }

    /// Queues `payload` for node `node`'s bus channel. Never waits: while the link is down, or the queue is full, the
    /// frame is dropped and counted.
    ///
    /// `write` appends the frame to the message buffer (after the room left for the tag), so a frame is copied once on
    /// its way to Redis; it is not called at all while the link is down.
    pub fn publish_bus(&self, node: u32, write: impl FnOnce(&mut Vec<u8>)) {
        self.enqueue(format!("{BUS_PREFIX}{node}"), write);
    }

    /// Queues `payload` for the booking feed (every node, this one included). Never waits (see
    /// [`publish_bus`](Self::publish_bus)).
    pub fn publish_feed(&self, payload: &[u8]) {
        self.enqueue(FEED_CHANNEL.to_string(), |buf| buf.extend_from_slice(payload));
    }

    fn enqueue(&self, channel: String, write: impl FnOnce(&mut Vec<u8>)) {
        if !self.is_up() {
            self.inner.metrics.dropped.with_label_values(&["redis_down"]).inc();
            return;
        }
        let mut payload = Vec::with_capacity(256);
        payload.resize(TAG_BYTES, 0);
        write(&mut payload);
        seal(&self.inner.key, &channel, &mut payload);
        if self.inner.publish.try_send((channel, payload)).is_err() {
            self.inner.metrics.dropped.with_label_values(&["queue_full"]).inc();
        }
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.inner.conn.borrow().clone()
    }

    /// The home of room `room` (e.g. `n:bkg_…`): this node's number when this node holds (or now takes) the lease,
    /// else the live node that holds it. `None` when Redis cannot be asked (link down, timeout): the caller homes the
    /// room locally and [`refresh_leases`](Self::refresh_leases) settles it when the link is back.
    pub async fn acquire_home(&self, room: &str) -> Option<u32> {
        let owners = self.run_lease(std::slice::from_ref(&lease_key(room))).await?;
        owners.first().copied()
    }

    /// Renews this node's leases on `rooms` (or takes them, when free or held by a dead node). Returns the rooms whose
    /// lease another live node holds: their sockets here must go (the clients reconnect to that node). Empty when
    /// Redis cannot be asked.
    pub async fn refresh_leases(&self, rooms: &[String]) -> Vec<String> {
        let mut lost = Vec::new();
        for chunk in rooms.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|r| lease_key(r)).collect();
            let Some(owners) = self.run_lease(&keys).await else { return lost };
            for (room, owner) in chunk.iter().zip(owners) {
                if owner != self.inner.node {
                    lost.push(room.clone());
                }
            }
        }
        lost
    }

    async fn run_lease(&self, keys: &[String]) -> Option<Vec<u32>> {
        let mut conn = self.connection()?;
        let mut inv = self.inner.lease.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(self.inner.node).arg(LEASE_TTL_MS).arg(NODE_TTL_MS);
        let owners: Vec<String> = match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(target: "duet::cluster", error = %e, "room lease script failed");
                return None;
            }
            Err(_) => return None,
        };
        Some(owners.iter().map(|o| o.parse().unwrap_or(0)).collect())
    }

    fn set_up(&self, conn: Option<MultiplexedConnection>) {
        let up = conn.is_some();
        let was = self.inner.up.swap(up, Ordering::Relaxed);
        *self.inner.up_since.lock().unwrap_or_else(|p| p.into_inner()) = up.then(Instant::now);
        self.inner.conn.send_replace(conn);
        self.inner.metrics.up.set(i64::from(up));
        if !up {
            self.inner.alive.send_replace(None);
        }
        if up != was {
            if up {
                tracing::info!(target: "duet::cluster", node_id = %self.inner.node_id, "Redis link up");
                self.inner.epochs.send_modify(|e| *e += 1);
            } else {
                tracing::warn!(target: "duet::cluster", node_id = %self.inner.node_id, "Redis link down: cross-node signaling paused, calls in progress go on");
            }
        }
    }

    /// Connects, subscribes and beats until the link breaks; then again, with backoff, until shutdown.
    async fn link(self, bus: mpsc::Sender<Vec<u8>>, feed: mpsc::Sender<Vec<u8>>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let run = async {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                let mut conn = self.inner.client.get_multiplexed_async_connection_with_config(&cfg).await?;
                let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.inner.client.get_async_pubsub())
                    .await
                    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "pubsub connect timed out")))??;
                let channel = format!("{BUS_PREFIX}{}", self.inner.node);
                pubsub.subscribe(&[channel.as_str(), FEED_CHANNEL]).await?;
                let heartbeat = redis::Script::new(HEARTBEAT_SCRIPT);
                let _: i64 = heartbeat.arg(self.inner.node).invoke_async(&mut conn).await?;
                self.set_up(Some(conn.clone()));
                let mut stream = pubsub.into_on_message();
                let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
                loop {
                    tokio::select! {
                        msg = futures_util::StreamExt::next(&mut stream) => {
                            let Some(msg) = msg else { break };
                            self.inner.metrics.bus.with_label_values(&["in"]).inc();
                            let Some(payload) = verify(&self.inner.key, msg.get_channel_name(), msg.get_payload_bytes()) else {
                                self.inner.metrics.dropped.with_label_values(&["bad_signature"]).inc();
                                continue;
                            };
                            if msg.get_channel_name() == FEED_CHANNEL {
                                let _ = feed.send(payload).await;
                            } else {
                                let _ = bus.send(payload).await;
                            }
                        }
                        _ = beat.tick() => {
                            let r = tokio::time::timeout(REDIS_TIMEOUT, heartbeat.arg(self.inner.node).invoke_async::<i64>(&mut conn)).await;
                            if !matches!(r, Ok(Ok(_))) { break; }
                        }
                        _ = shutdown.cancelled() => break,
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            match run.await {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(e) => {
                    tracing::debug!(target: "duet::cluster", error = %e, "Redis link attempt failed");
                }
            }
            self.set_up(None);
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Publishes queued messages in order, pipelined in batches.
    async fn publisher(self, mut rx: mpsc::Receiver<(String, Vec<u8>)>, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
                _ = shutdown.cancelled() => return,
            };
            if n == 0 {
                return;
            }
            let Some(mut conn) = self.connection() else {
                self.inner.metrics.dropped.with_label_values(&["redis_down"]).inc_by(n as u64);
                batch.clear();
                continue;
            };
            let mut pipe = redis::pipe();
            for (channel, payload) in batch.drain(..) {
                pipe.publish(channel, payload).ignore();
            }
            match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => self.inner.metrics.bus.with_label_values(&["out"]).inc_by(n as u64),
                _ => self.inner.metrics.dropped.with_label_values(&["redis_down"]).inc_by(n as u64),
            }
        }
    }

    /// Reads the live nodes every 500 ms once the link has been up for the grace time.
    async fn watch_nodes(self, shutdown: CancellationToken) {
        let script = redis::Script::new(ALIVE_SCRIPT);
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let since = *self.inner.up_since.lock().unwrap_or_else(|p| p.into_inner());
            let (Some(since), Some(mut conn)) = (since, self.connection()) else { continue };
            if since.elapsed() < WATCH_GRACE {
                continue;
            }
            let r = tokio::time::timeout(REDIS_TIMEOUT, script.arg(NODE_TTL_MS).invoke_async::<Vec<String>>(&mut conn))
                .await;
            if let Ok(Ok(nodes)) = r {
                let set: HashSet<u32> = nodes.iter().filter_map(|n| n.parse().ok()).collect();
                let changed = self.inner.alive.borrow().as_deref() != Some(&set);
                if changed {
                    self.inner.alive.send_replace(Some(Arc::new(set)));
                }
            }
        }
    }
}

/// This node's name for logs: `[cluster] node_id`, or `"local"` for a single node. Set once at start.
static NODE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets [`node_name`] (the first call wins).
pub fn set_node_name(name: &str) {
    let _ = NODE_NAME.set(name.to_string());
}

/// This node's name in log lines (`node=…`): `[cluster] node_id`, or `"local"`.
pub fn node_name() -> &'static str {
    NODE_NAME.get().map_or("local", String::as_str)
}

/// Bytes of a message's tag.
const TAG_BYTES: usize = 16;

/// The tag key: HMAC-SHA256(secret, "duet cluster messages v1").
fn derive_key(secret: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"duet cluster messages v1");
    mac.finalize().into_bytes().into()
}

fn tag(key: &[u8; 32], channel: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&(channel.len() as u64).to_be_bytes());
    mac.update(channel.as_bytes());
    mac.update(body);
    mac
}

/// Writes the tag into the first 16 bytes of `message` (`tag ‖ body`): the first 16 bytes of
/// HMAC-SHA256(key, len(channel) ‖ channel ‖ body).
fn seal(key: &[u8; 32], channel: &str, message: &mut [u8]) {
    let full = tag(key, channel, &message[TAG_BYTES..]).finalize().into_bytes();
    message[..TAG_BYTES].copy_from_slice(&full[..TAG_BYTES]);
}

/// The body of a signed message when its tag verifies (constant time), else `None`.
fn verify(key: &[u8; 32], channel: &str, message: &[u8]) -> Option<Vec<u8>> {
    if message.len() < TAG_BYTES {
        return None;
    }
    let (t, body) = message.split_at(TAG_BYTES);
    tag(key, channel, body).verify_truncated_left(t).ok()?;
    Some(body.to_vec())
}

/// The Redis key of a room's home lease.
fn lease_key(room: &str) -> String {
    format!("duet:home:{room}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_signed_per_channel_and_forgeries_are_dropped() {
        let key = derive_key(&[7u8; 32]);
        let other = derive_key(&[8u8; 32]);
        let mut m = [&[0u8; TAG_BYTES][..], b"T42 0\nhello"].concat();
        seal(&key, "duet:bus:5", &mut m);
        assert_eq!(verify(&key, "duet:bus:5", &m).as_deref(), Some(&b"T42 0\nhello"[..]));
        assert!(verify(&other, "duet:bus:5", &m).is_none(), "another cluster's key");
        assert!(verify(&key, "duet:bus:6", &m).is_none(), "replayed on another node's channel");
        let mut flipped = m.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(verify(&key, "duet:bus:5", &flipped).is_none(), "a changed body");
        assert!(verify(&key, "duet:bus:5", b"short").is_none());
        assert!(verify(&key, "duet:bus:5", b"T42 0\nhello, no tag at all").is_none());
    }
}
