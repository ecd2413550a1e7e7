//! Configuration: "parse, don't validate". [`RawConfig`] mirrors `config.toml` with `deny_unknown_fields`, so an
//! unknown key is an error naming the key; [`Config`] is the typed, validated form the daemon runs on.
//!
//! Every key is documented in `config.toml.example` at the repository root, which a test parses.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use duet_relay::policy::IpNet;
use serde::Deserialize;

/// A secret from the config file: usable with [`Secret::expose`], printed as `<redacted>` by `Debug` (so
/// `duet check-config` and logs never show it).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Errors turning a config file into a [`Config`]; each names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given with `--config`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the message names the key and line).
    #[error("config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value that parses but is not allowed.
    #[error("config: invalid value for `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `turn.relay_ports`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// `config.toml` as written by the operator. Every field is optional; defaults give the embedded all-loopback mode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Directory of the SQLite database, generated secrets and the admin API key (default `./duet-data`).
    pub data_dir: Option<PathBuf>,
    /// Read the secrets (TURN secrets, session keys, nonce key) from this file instead of `<data_dir>/secrets.toml`;
    /// it is never generated and must be private (0600 or 0400), e.g. a systemd credential
    /// (`/run/credentials/duet.service/secrets.toml`). `DUET_SECRETS_FILE` wins.
    pub secrets_file: Option<PathBuf>,
    /// Base URL that join links and `signal_url` are built from (default `http://<http.listen>`).
    pub public_url: Option<String>,
    /// `[http]`.
    #[serde(default)]
    pub http: RawHttp,
    /// `[admin]`.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[turn]`.
    #[serde(default)]
    pub turn: RawTurn,
    /// `[booking]`.
    #[serde(default)]
    pub booking: RawBooking,
    /// `[tokens]`.
    #[serde(default)]
    pub tokens: RawTokens,
    /// `[signaling]`.
    #[serde(default)]
    pub signaling: RawSignaling,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
    /// `[shutdown]`.
    #[serde(default)]
    pub shutdown: RawShutdown,
    /// `[database]`.
    #[serde(default)]
    pub database: RawDatabase,
    /// `[webhooks]`.
    #[serde(default)]
    pub webhooks: RawWebhooks,
    /// `[email]`: absent, no email is sent.
    pub email: Option<RawEmail>,
    /// `[calls]`.
    #[serde(default)]
    pub calls: RawCalls,
    /// `[booking_page]`.
    #[serde(default)]
    pub booking_page: RawBookingPage,
    /// `[retention]`.
    #[serde(default)]
    pub retention: RawRetention,
    /// `[cluster]`: absent, the node runs alone (no Redis).
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`: several nodes sharing PostgreSQL and Redis (README, "Cluster mode").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Redis URL (`redis://[user:password@]host:port[/db]`; no TLS: keep Redis on a private network). The environment variable
    /// `DUET_CLUSTER_REDIS_URL` overrides it.
    pub redis_url: Option<String>,
    /// File holding the Redis URL (trailing newline trimmed). Not together with `redis_url`.
    pub redis_url_file: Option<PathBuf>,
    /// This node's name in logs and `/readyz` (default: the host name). 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub node_id: Option<String>,
}

/// `[retention]`: how long personal data is kept after a booking's hard end (README, "Retention and erasure").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Time after a booking's `hard_end_at` when its personal data is purged (default `90d`; `0s` to `100y`). A
    /// tenant's `retention_s` (`PUT /v1/admin/tenants/{id}/retention`) overrides it.
    pub personal_data: Option<String>,
    /// How often the purge looks for bookings past their retention time (default `1h`; 100ms to 24h).
    pub interval: Option<String>,
}

/// `[booking_page]`: the booking page, the guest's manage page and the host agenda (README, "Booking page and
/// agenda").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBookingPage {
    /// How long before the start a guest may still cancel or move a booking on the manage page (default `24h`;
    /// `0s`: until the start).
    pub manage_notice: Option<String>,
    /// Bookings one client address (IPv4, or IPv6 /64) may make on booking pages per hour (default 10, at least 1);
    /// more get a 429 page.
    pub bookings_per_hour: Option<u32>,
    /// Days of free times one booking page shows (default 7, 1 to 31).
    pub days: Option<u32>,
}

/// `[calls]`: call facts from real connections and the events made from them (README, "Call reports").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCalls {
    /// How long both participants may be gone before the meeting counts as ended (`meeting.ended` with
    /// `end_reason = "all_left"`, `ended_at` = the last leave). Default `2m`; 1s to 24h.
    pub end_grace: Option<String>,
    /// How often the durable timers run: `participant.no_show` at `join_cutoff_at`, `meeting.ended` after
    /// `end_grace`. Default `2s`; 100ms to 1m.
    pub sweep_interval: Option<String>,
}

/// `[email]`: invitations, reschedules, cancellations and reminders by SMTP (README, "Email and calendar").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    /// The `From` mailbox, e.g. `"Clinic <noreply@clinic.example>"` (RFC 5322 §3.4). Required.
    pub from: Option<String>,
    /// The `Reply-To` mailbox, if any.
    pub reply_to: Option<String>,
    /// SMTP server host name (or IP address). Required.
    pub smtp_host: Option<String>,
    /// SMTP port (default 587 for `starttls`, 465 for `tls`, 25 for `plain`).
    pub smtp_port: Option<u16>,
    /// `starttls` (default: RFC 3207, refused if the server does not offer it), `tls` (implicit TLS, RFC 8314 §3.3)
    /// or `plain` (no TLS at all: only for a server on a loopback address, e.g. a test's).
    pub tls: Option<String>,
    /// SMTP AUTH user name; absent: no authentication.
    pub username: Option<String>,
    /// File holding the SMTP password (trailing newline ignored); else the environment variable
    /// `DUET_SMTP_PASSWORD`.
    pub password_file: Option<PathBuf>,
    /// Offsets before the start at which a reminder goes to each participant with an address (default
    /// `["24h", "10m"]`; at most 10, each between 1m and 30d; `[]` for none).
    pub reminders: Option<Vec<String>>,
    /// Directory whose files replace the built-in templates of the same name (`confirmation.subject`,
    /// `confirmation.txt`, `confirmation.html`, and the same for `reschedule`, `cancellation`, `reminder`).
    pub templates_dir: Option<PathBuf>,
    /// Delays between attempts after a failed send (default 30s, 2m, 10m, 30m, 2h, 6h; at most 20, 24h in all).
    pub retry_schedule: Option<Vec<String>>,
}

/// `[webhooks]`: delivery of webhook events (README, "Webhooks").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    /// CIDRs that endpoint URLs may resolve to although private, loopback, link-local, CGNAT or unique-local (e.g.
    /// `["127.0.0.0/8"]` for a receiver on this machine); `http://` URLs are accepted only for addresses inside them.
    /// Default: none.
    pub allow_private: Option<Vec<String>>,
    /// How long the previous secret keeps signing beside the new one after `rotate-secret` (default `24h`).
    pub rotation_overlap: Option<String>,
    /// Delays between attempts after a failure, e.g. `["5s", "5m"]`: one more attempt per entry, then `failed`
    /// (default [`crate::booking::webhooks::RETRY_SCHEDULE`]: 5s, 5m, 30m, 2h, 5h, 10h; at most 24h in all).
    pub retry_schedule: Option<Vec<String>>,
}

/// `[database]`: where the booking store lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `postgres://user:password@host:port/database` for PostgreSQL; absent for the embedded SQLite database in
    /// `data_dir`. A secret (it may carry a password): never printed. `DUET_DATABASE_URL` wins; `url_file` instead
    /// reads it from a file.
    pub url: Option<Secret>,
    /// File holding the URL (trailing newline trimmed), e.g. a systemd credential. Not together with `url`.
    pub url_file: Option<PathBuf>,
    /// Most open connections of the pool (default 8 for SQLite, 16 for PostgreSQL; 1 to 1000).
    pub max_connections: Option<u32>,
}

/// `[http]`: the public API, join page and WebSocket listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Listen address (default `127.0.0.1:8080`).
    pub listen: Option<String>,
    /// PEM certificate chain: serve HTTPS (and WSS) directly, reloaded on SIGHUP (default: plain HTTP, e.g. behind a
    /// TLS-terminating proxy).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies (CIDRs, e.g. `["10.0.0.0/8"]`) whose `Forwarded` / `X-Forwarded-For` headers name the client
    /// (default none: the TCP peer is the client). See `client_ip`.
    pub trusted_proxies: Option<Vec<String>>,
    /// The header those proxies set: `"x-forwarded-for"` (default) or `"forwarded"` (RFC 7239); the other is ignored.
    pub forwarded_header: Option<String>,
    /// Open connections on the HTTP and Virtual Y listeners together (default 10000); over it a new connection is
    /// closed at once.
    pub max_connections: Option<usize>,
    /// Open connections from one client address (IPv4, or IPv6 /64) on those listeners (default 256); a trusted proxy
    /// counts only against `max_connections`.
    pub max_connections_per_ip: Option<u32>,
    /// Time a client has for its TLS handshake and for each request's headers, and longest idle time of a kept-alive
    /// connection between requests (default `10s`).
    pub header_read_timeout: Option<String>,
    /// Longest handling of one request once its head is read, body included (default `30s`; over: 408), and longest
    /// a write to a client may make no progress (a client that stops reading is closed).
    pub request_timeout: Option<String>,
}

/// `[admin]`: metrics and health listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Listen address (default `127.0.0.1:9464`).
    pub listen: Option<String>,
    /// When set, `/metrics` asks for HTTP Basic auth with this user name (`/healthz` and `/readyz` stay open).
    pub metrics_basic_auth_user: Option<String>,
    /// File holding the Basic auth password of `/metrics` (trailing newline trimmed; e.g. a systemd credential,
    /// `/run/credentials/duet.service/metrics-password`). The environment variable `DUET_METRICS_PASSWORD` wins.
    pub metrics_basic_auth_password_file: Option<PathBuf>,
}

/// `[turn]`: the STUN/TURN relay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTurn {
    /// UDP listen addresses (default `["127.0.0.1:3478"]`).
    pub listen_udp: Option<Vec<String>>,
    /// TCP listen addresses (default none; e.g. `["0.0.0.0:3478"]`).
    pub listen_tcp: Option<Vec<String>>,
    /// TLS (TURNS) listen addresses (default none; e.g. `["0.0.0.0:5349"]`); needs `tls_cert` and `tls_key`.
    pub listen_tls: Option<Vec<String>>,
    /// PEM certificate chain for TURNS (reloaded on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TURNS (reloaded on SIGHUP).
    pub tls_key: Option<PathBuf>,
    /// IP the IPv6 relay sockets bind to (default: none, unless a listener is IPv6, then that listener's IP).
    pub relay_ip6: Option<IpAddr>,
    /// Per-allocation relayed bytes per second (default unlimited).
    pub max_bps_per_allocation: Option<u64>,
    /// Total relayed bytes per second (default unlimited).
    pub max_bps_total: Option<u64>,
    /// REALM (default `duet`).
    pub realm: Option<String>,
    /// Host name or IP put in `stun:`/`turn:` URLs handed to clients (default: the first UDP listen IP).
    pub public_host: Option<String>,
    /// Address advertised in XOR-RELAYED-ADDRESS behind a 1:1 NAT (coturn `external-ip`).
    pub public_ip: Option<IpAddr>,
    /// IP the relay sockets bind to (default: the first UDP listen IP, or 0.0.0.0 when that is unspecified).
    pub relay_ip: Option<IpAddr>,
    /// Relay port range `"LOW-HIGH"` (default `49152-65535`, RFC 8656 §7.2 recommends the dynamic range).
    pub relay_ports: Option<String>,
    /// CIDRs a peer may be in despite the deny list (e.g. `["10.1.0.0/16"]`).
    pub allow_peers: Option<Vec<String>>,
    /// Extra CIDRs to deny.
    pub deny_peers: Option<Vec<String>>,
    /// Allocations one credential (one participant) may hold at once (default 4).
    pub allocations_per_credential: Option<u32>,
    /// Allocations one source IP may hold at once (default 128: an office behind one NAT address with ~60 calls).
    pub allocations_per_ip: Option<u32>,
    /// Allocations in total (default 10000).
    pub max_allocations: Option<u32>,
    /// Emit the SOFTWARE attribute (default false: less fingerprinting).
    pub software: Option<bool>,
    /// Legacy static long-term credentials for Virtual Y clients, whose TURN settings are fixed in the site's
    /// config (DESIGN §4): `[[turn.static_credentials]]` tables of `username`, `password`, `max_allocations`.
    pub static_credentials: Option<Vec<RawStaticCredential>>,
    /// TCP and TLS client connections open at once, all listeners together (default 10000).
    pub max_stream_connections: Option<usize>,
    /// TCP and TLS client connections open at once from one client IP, IPv6 by /64 (default 128).
    pub stream_connections_per_ip: Option<usize>,
    /// A TCP/TLS connection on which no request has authenticated by then is closed (default `"20s"`, 1 s to 5 min).
    pub auth_deadline: Option<String>,
}

/// One `[[turn.static_credentials]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticCredential {
    /// USERNAME the clients send.
    pub username: String,
    /// Password (long-term key = MD5(username:realm:password), RFC 8489 §9.2.2).
    pub password: String,
    /// Allocations this credential may hold at once (default 16).
    pub max_allocations: Option<u32>,
}

/// `[booking]`: join-window policy defaults (DESIGN §3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBooking {
    /// How long before `start` guests may join (default `10m`).
    pub early_join: Option<String>,
    /// How long before `start` hosts may join (default `15m`).
    pub host_early_join: Option<String>,
    /// How long after `end` admitted participants may stay or reconnect (default `15m`).
    pub overrun_grace: Option<String>,
    /// Longest allowed booking (default `8h`).
    pub max_duration: Option<String>,
    /// How far in the past `start_at` may be when creating a booking (default `60s`).
    pub start_leeway: Option<String>,
    /// How far in the future `start_at` may be when creating a booking (default `365d`).
    pub horizon: Option<String>,
    /// How much time in all the host may add to a booking from inside its call (`POST /v1/join/{link}/extend`;
    /// default `30m`, `0s` turns host extension off). The API (`PATCH`) is not limited by it.
    pub host_extend_max: Option<String>,
}

/// `[tokens]`: session tokens (JWT HS256).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// Session token lifetime, capped at the booking's `hard_end_at` (default `10m`).
    pub session_ttl: Option<String>,
}

/// `[signaling]`: the WebSocket hub.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignaling {
    /// Largest text frame accepted, bytes (default 65536; larger closes with 1009).
    pub max_message_bytes: Option<usize>,
    /// Sustained messages per second per socket (default 50; over closes with 4029).
    pub messages_per_second: Option<u32>,
    /// Interval of WebSocket pings (default `20s`); two missed pongs close the socket.
    pub ping_interval: Option<String>,
    /// Browser origins allowed to open a signaling socket, e.g. `["https://clinic.example"]` (default: any).
    /// A socket whose `Origin` is not listed gets HTTP 403 before the upgrade.
    pub allowed_origins: Option<Vec<String>>,
    /// Open signaling sockets per client (default 64), counted once the socket's token (or Virtual Y meeting) has
    /// verified; over gets HTTP 429 before the upgrade. Clients are keyed by IP (IPv6 by /64), behind
    /// `http.trusted_proxies` by the forwarded client address.
    pub max_connections_per_ip: Option<u32>,
    /// Upgrades per client whose credential is being checked, plus refused sockets while they get their close code
    /// (default 8); over gets HTTP 429.
    pub max_pending_upgrades_per_ip: Option<u32>,
    /// A WebSocket ping unanswered this long makes its socket not live (default `5s`, or half of `ping_interval` when
    /// that is shorter): a Virtual Y newcomer may then replace it.
    pub pong_timeout: Option<String>,
    /// A write to a socket that does not complete in this time closes it (default `10s`): a client that stops
    /// reading cannot pin its task.
    pub send_timeout: Option<String>,
    /// Most rooms open at once (default 50000); past it a new room's socket is closed with 1013.
    pub max_rooms: Option<usize>,
    /// `[signaling.vy]`: drop-in for the Virtual Y signaling server.
    #[serde(default)]
    pub vy: RawVy,
    /// `[signaling.peerjs]`: drop-in for peerjs-server 1.0.
    #[serde(default)]
    pub peerjs: RawPeerjs,
}

/// `[signaling.vy]` (research/signaling.md §10.2).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVy {
    /// Accept `?meetingId=…&isInstructorRole=…` upgrades on any path (default false: the protocol has self-declared
    /// roles and no credential, see the README's security section).
    pub enabled: Option<bool>,
    /// Tenant whose bookings' `external_id` are the meeting ids (default `ten_default`).
    pub tenant: Option<String>,
    /// Refused upgrades (unknown or closed meeting, slot taken) per client per minute after a burst of 20 (default
    /// 60; 0 = no limit); past it upgrades get HTTP 429 before any lookup.
    pub refused_upgrades_per_minute: Option<u32>,
    /// The meetingId must be the `external_id` of a booking, and the upgrade happens only inside its window
    /// (default true). `false` makes a literal open relay, as the original server was.
    pub require_booking: Option<bool>,
    /// Drop frames that are not JSON objects with sdp/candidate/renegotiate/transceiverRequest (default false).
    pub strict: Option<bool>,
    /// A listener of its own for Virtual Y clients (they use port 8091), e.g. "0.0.0.0:8091" (default: none).
    pub listen: Option<String>,
    /// PEM certificate chain for that listener (Virtual Y clients connect with wss://), reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// `[signaling.peerjs]` (research/signaling.md §10.4).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeerjs {
    /// Serve the peerjs-server 1.0 protocol (default false).
    pub enabled: Option<bool>,
    /// Mount path, as peerjs-server's `path` (default "/").
    pub path: Option<String>,
    /// Static API key of unscoped clients (default "peerjs"); a session token from a join is also accepted as key
    /// and scopes the client to its booking.
    pub key: Option<String>,
    /// Accept the static key at all (default true); false allows only booking-scoped clients.
    pub allow_static_key: Option<bool>,
    /// `GET {path}{key}/peers` lists ids (default false, as upstream).
    pub allow_discovery: Option<bool>,
    /// Close a client silent for this long (default "60s", upstream alive_timeout).
    pub alive_timeout: Option<String>,
    /// Queued messages for an absent peer expire after this (default "5s", upstream expire_timeout).
    pub expire_timeout: Option<String>,
    /// Most connected clients (default 5000, upstream concurrent_limit).
    pub concurrent_limit: Option<usize>,
    /// Ids one participant of a booking may hold at once with its session token (default 2); a newer one replaces
    /// that participant's oldest.
    pub ids_per_participant: Option<usize>,
}

/// `[shutdown]`: the drain on SIGTERM (DESIGN §7).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// Longest wait for running calls after SIGTERM before their sockets are closed (default `30m`).
    pub drain_deadline: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `tracing` filter, e.g. `info` or `duet=debug` (default `info`; `RUST_LOG` wins when set).
    pub level: Option<String>,
    /// `text` or `json` (default `text`).
    pub format: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory (database, secrets, api-key).
    pub data_dir: PathBuf,
    /// Where the secrets are read from instead of `<data_dir>/secrets.toml` (`None`: there).
    pub secrets_file: Option<PathBuf>,
    /// Explicit public base URL, if configured.
    pub public_url: Option<String>,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// HTTPS certificate and key of the HTTP listener.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// Reverse proxies whose forwarding headers are believed (`[http] trusted_proxies`).
    pub trusted_proxies: Vec<IpNet>,
    /// Connection caps and timeouts of the HTTP and Virtual Y listeners.
    pub http_limits: HttpLimits,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// HTTP Basic credentials `/metrics` asks for (`None`: open, as the listener should be private).
    pub metrics_auth: Option<(String, Secret)>,
    /// TURN settings.
    pub turn: TurnConfig,
    /// Join-window policy.
    pub booking: BookingPolicy,
    /// Session token lifetime.
    pub session_ttl: Duration,
    /// Hub limits.
    pub signaling: SignalingConfig,
    /// Longest drain after SIGTERM.
    pub drain_deadline: Duration,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The booking store's backend.
    pub database: DatabaseConfig,
    /// Webhook delivery.
    pub webhooks: WebhookConfig,
    /// Email delivery (`None`: off).
    pub email: Option<EmailConfig>,
    /// Call facts and their events.
    pub calls: CallsConfig,
    /// Booking page, manage page and agenda.
    pub booking_page: BookingPageConfig,
    /// Retention of personal data.
    pub retention: RetentionConfig,
    /// Cluster mode (`None`: a single node).
    pub cluster: Option<ClusterConfig>,
}

/// Validated `[cluster]`.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Redis connection URL (may hold a password: never printed).
    pub redis_url: Secret,
    /// This node's name.
    pub node_id: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig").field("redis_url", &"<redacted>").field("node_id", &self.node_id).finish()
    }
}

/// Validated `[retention]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Personal data of a booking is purged this long after its `hard_end_at` (unless its tenant overrides it).
    pub personal_data: Duration,
    /// Period of the purge task.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig { personal_data: Duration::from_secs(90 * 86_400), interval: Duration::from_secs(3600) }
    }
}

/// Validated `[booking_page]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookingPageConfig {
    /// A guest may cancel or move a booking until this long before its start.
    pub manage_notice: Duration,
    /// Booking-page bookings per client address per hour (a token bucket of this size, refilled over an hour).
    pub bookings_per_hour: u32,
    /// Days of free times one booking page shows.
    pub days: u32,
}

impl Default for BookingPageConfig {
    fn default() -> BookingPageConfig {
        BookingPageConfig { manage_notice: Duration::from_secs(86_400), bookings_per_hour: 10, days: 7 }
    }
}

/// Validated `[calls]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallsConfig {
    /// Both participants gone this long: the meeting ended.
    pub end_grace: Duration,
    /// Period of the no-show and end-grace sweep.
    pub sweep_interval: Duration,
}

impl Default for CallsConfig {
    fn default() -> CallsConfig {
        CallsConfig { end_grace: Duration::from_secs(120), sweep_interval: Duration::from_secs(2) }
    }
}

/// How the SMTP connection is secured (`[email] tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS on a plain connection (RFC 3207), required.
    StartTls,
    /// TLS from the first byte (RFC 8314 §3.3).
    Tls,
    /// No TLS: accepted only for a loopback `smtp_host`.
    Plain,
}

/// Validated `[email]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailConfig {
    /// `From` mailbox (checked to parse as a mailbox).
    pub from: String,
    /// `Reply-To` mailbox.
    pub reply_to: Option<String>,
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// SMTP AUTH user name.
    pub username: Option<String>,
    /// SMTP AUTH password (from `password_file` or `DUET_SMTP_PASSWORD`).
    pub password: Option<Secret>,
    /// Reminder offsets before the start, largest first, without repeats.
    pub reminders: Vec<Duration>,
    /// Directory of template overrides.
    pub templates_dir: Option<PathBuf>,
    /// Delays between attempts after a failed send.
    pub retry_schedule: Vec<Duration>,
}

/// Default `[email] retry_schedule`: 30 s, 2 min, 10 min, 30 min, 2 h, 6 h (seven attempts over about 9 h).
pub const EMAIL_RETRY_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(7200),
    Duration::from_secs(21_600),
];

impl RawEmail {
    fn validate(self) -> Result<EmailConfig, ConfigError> {
        let from = self.from.ok_or_else(|| invalid("email.from", "required"))?;
        if from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid("email.from", format!("{from:?} is not a mailbox")));
        }
        if let Some(r) = &self.reply_to
            && r.parse::<lettre::message::Mailbox>().is_err()
        {
            return Err(invalid("email.reply_to", format!("{r:?} is not a mailbox")));
        }
        let smtp_host =
            self.smtp_host.filter(|h| !h.is_empty()).ok_or_else(|| invalid("email.smtp_host", "required"))?;
        let tls = match self.tls.as_deref().unwrap_or("starttls") {
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            "plain" => SmtpTls::Plain,
            other => return Err(invalid("email.tls", format!("{other:?}: one of starttls, tls, plain"))),
        };
        if tls == SmtpTls::Plain {
            let loopback = smtp_host == "localhost"
                || smtp_host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
            if !loopback {
                return Err(invalid("email.tls", "plain is accepted only for a loopback smtp_host"));
            }
        }
        let smtp_port = self.smtp_port.unwrap_or(match tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::Plain => 25,
        });
        let password = match &self.password_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| invalid("email.password_file", format!("{}: {e}", p.display())))?;
                Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()))
            }
            None => std::env::var("DUET_SMTP_PASSWORD").ok().map(Secret),
        };
        let mut reminders = match &self.reminders {
            None => vec![Duration::from_secs(86_400), Duration::from_secs(600)],
            Some(list) => list
                .iter()
                .map(|d| duration("email.reminders", &Some(d.clone()), Duration::ZERO))
                .collect::<Result<Vec<_>, _>>()?,
        };
        if reminders.len() > 10
            || reminders.iter().any(|d| *d < Duration::from_secs(60) || *d > Duration::from_secs(30 * 86_400))
        {
            return Err(invalid("email.reminders", "at most 10 offsets, each between 1m and 30d"));
        }
        reminders.sort_unstable_by(|a, b| b.cmp(a));
        reminders.dedup();
        let retry_schedule = match &self.retry_schedule {
            None => EMAIL_RETRY_SCHEDULE.to_vec(),
            Some(list) => list
                .iter()
                .map(|d| duration("email.retry_schedule", &Some(d.clone()), Duration::ZERO))
                .collect::<Result<Vec<_>, _>>()?,
        };
        if retry_schedule.len() > 20 || retry_schedule.iter().sum::<Duration>() > Duration::from_secs(86_400) {
            return Err(invalid("email.retry_schedule", "at most 20 delays, 24h in all"));
        }
        if let Some(d) = &self.templates_dir
            && !d.is_dir()
        {
            return Err(invalid("email.templates_dir", format!("{}: not a directory", d.display())));
        }
        Ok(EmailConfig {
            from,
            reply_to: self.reply_to,
            smtp_host,
            smtp_port,
            tls,
            username: self.username,
            password,
            reminders,
            templates_dir: self.templates_dir,
            retry_schedule,
        })
    }
}

/// Validated `[webhooks]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Ranges endpoint addresses may be in although special-purpose (and where `http://` is accepted).
    pub allow_private: Vec<IpNet>,
    /// How long the previous secret keeps signing after a rotation.
    pub rotation_overlap: Duration,
    /// Delays between attempts after a failure; `retry_schedule.len() + 1` attempts in all.
    pub retry_schedule: Vec<Duration>,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            allow_private: Vec::new(),
            rotation_overlap: Duration::from_secs(86_400),
            retry_schedule: crate::booking::webhooks::RETRY_SCHEDULE.to_vec(),
        }
    }
}

/// Validated `[database]`: the backend of the booking store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseConfig {
    /// The embedded default: SQLite in `<data_dir>/duet.sqlite3`.
    Sqlite {
        /// Pool size (default 8).
        max_connections: u32,
    },
    /// PostgreSQL at `url`.
    Postgres {
        /// The connection URL (`postgres://` or `postgresql://`); `Debug` hides its password.
        url: DatabaseUrl,
        /// Pool size (default 16).
        max_connections: u32,
    },
}

/// A PostgreSQL connection URL whose password is never printed: `Debug` and [`DatabaseUrl::redacted`] show
/// `postgres://user:<redacted>@host/db` (a `password` query parameter is hidden too).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(url::Url);

impl DatabaseUrl {
    /// Parses `text`; the scheme must be `postgres` or `postgresql`. Errors name the key `database.url` and never
    /// repeat the text (it may hold a password).
    pub fn parse(text: &str) -> Result<DatabaseUrl, ConfigError> {
        let u = url::Url::parse(text).map_err(|e| {
            invalid("database.url", format!("not a URL ({e}); expected postgres://user:password@host:port/database"))
        })?;
        match u.scheme() {
            "postgres" | "postgresql" => {}
            other => {
                return Err(invalid(
                    "database.url",
                    format!(
                        "scheme {other:?} is not supported: use postgres:// (PostgreSQL), or leave `url` out for the \
                         embedded SQLite database in data_dir"
                    ),
                ));
            }
        }
        if !u.has_host() {
            return Err(invalid("database.url", "no host; expected postgres://user:password@host:port/database"));
        }
        Ok(DatabaseUrl(u))
    }

    /// The full URL, password included: only for connecting.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL with its password (and any `password` query parameter) replaced by `<redacted>`.
    pub fn redacted(&self) -> String {
        let mut u = self.0.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("REDACTED"));
        }
        if u.query_pairs().any(|(k, _)| k == "password") {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" { "REDACTED".to_string() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.as_str().replace("REDACTED", "<redacted>")
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// Validated connection limits of `[http]`, applied by `http_serve` to the HTTP and Virtual Y listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections on both listeners together (`max_connections`, at least 1).
    pub max_connections: usize,
    /// Open connections per client key (IPv4 address or IPv6 /64) not in `trusted_proxies` (at least 1).
    pub max_connections_per_ip: u32,
    /// TLS handshake deadline, request-header deadline and keep-alive idle limit (`header_read_timeout`, 0.5 s to
    /// 10 min).
    pub header_read_timeout: Duration,
    /// Handling deadline of one request (408 after it) and write-progress deadline of a connection
    /// (`request_timeout`, 1 s to 10 min).
    pub request_timeout: Duration,
}

/// Validated `[turn]`.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// UDP listeners.
    pub listen_udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listeners.
    pub listen_tls: Vec<SocketAddr>,
    /// TURNS certificate and key paths.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// IPv6 relay bind IP.
    pub relay_ip6: Option<IpAddr>,
    /// Per-allocation bytes/s cap.
    pub max_bps_per_allocation: Option<u64>,
    /// Total bytes/s cap.
    pub max_bps_total: Option<u64>,
    /// Legacy static credentials `(username, password, max_allocations)`.
    pub static_credentials: Vec<(String, Secret, u32)>,
    /// REALM.
    pub realm: String,
    /// Host for client URLs; `None` = first listen IP.
    pub public_host: Option<String>,
    /// Advertised relay IP (1:1 NAT).
    pub public_ip: Option<IpAddr>,
    /// Relay bind IP.
    pub relay_ip: Option<IpAddr>,
    /// Relay port range.
    pub relay_ports: RangeInclusive<u16>,
    /// Allow-list overriding the deny list.
    pub allow_peers: Vec<IpNet>,
    /// Extra denies.
    pub deny_peers: Vec<IpNet>,
    /// Per-credential allocation quota.
    pub allocations_per_credential: u32,
    /// Per-IP allocation quota.
    pub allocations_per_ip: u32,
    /// Total allocation cap.
    pub max_allocations: u32,
    /// Send SOFTWARE.
    pub software: bool,
    /// TCP/TLS connection cap, all listeners.
    pub max_stream_connections: usize,
    /// TCP/TLS connection cap per client IP (IPv6 /64).
    pub stream_connections_per_ip: usize,
    /// Time a TCP/TLS connection has to authenticate a request.
    pub auth_deadline: Duration,
}

/// Validated `[booking]` (DESIGN §3).
#[derive(Debug, Clone, Copy)]
pub struct BookingPolicy {
    /// Guests may join this long before start.
    pub early_join: Duration,
    /// Hosts may join this long before start.
    pub host_early_join: Duration,
    /// Admitted participants may stay this long after end.
    pub overrun_grace: Duration,
    /// Longest booking.
    pub max_duration: Duration,
    /// Accepted age of `start_at` at creation.
    pub start_leeway: Duration,
    /// Latest accepted `start_at` at creation, counted from now (`422 outside_booking_horizon` beyond).
    pub horizon: Duration,
    /// Most time the host may add from inside the call, over all its extensions of one booking (zero: none).
    pub host_extend_max: Duration,
}

/// Validated `[signaling]`.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// Largest text frame, bytes.
    pub max_message_bytes: usize,
    /// Messages per second per socket.
    pub messages_per_second: u32,
    /// WebSocket ping interval.
    pub ping_interval: Duration,
    /// Allowed `Origin` values; empty = any.
    pub allowed_origins: Vec<String>,
    /// Open sockets per client (after verification).
    pub max_connections_per_ip: u32,
    /// Upgrades being verified (and refused sockets closing) per client.
    pub max_pending_upgrades_per_ip: u32,
    /// Unanswered-ping time after which a socket is not live.
    pub pong_timeout: Duration,
    /// Longest write to a socket.
    pub send_timeout: Duration,
    /// Room cap.
    pub max_rooms: usize,
    /// Reverse proxies whose forwarding headers name the client (copied from `[http] trusted_proxies`).
    pub trusted_proxies: Vec<IpNet>,
    /// The header they set (copied from `[http] forwarded_header`).
    pub forwarded_header: crate::client_ip::ForwardedHeader,
    /// Virtual Y mode.
    pub vy: VyConfig,
    /// PeerJS mode.
    pub peerjs: PeerjsConfig,
}

/// Validated `[signaling.vy]`.
#[derive(Debug, Clone)]
pub struct VyConfig {
    /// Mode on.
    pub enabled: bool,
    /// Gate by booking `external_id` and window.
    pub require_booking: bool,
    /// Tenant of the bookings looked up.
    pub tenant: String,
    /// Refused upgrades per client per minute (0: unlimited).
    pub refused_upgrades_per_minute: u32,
    /// Strict frame filter.
    pub strict: bool,
    /// Dedicated listener.
    pub listen: Option<SocketAddr>,
    /// Its certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Validated `[signaling.peerjs]`.
#[derive(Debug, Clone)]
pub struct PeerjsConfig {
    /// Mode on.
    pub enabled: bool,
    /// Mount path, always starting and ending with `/`.
    pub path: String,
    /// Static key.
    pub key: String,
    /// Static key accepted.
    pub allow_static_key: bool,
    /// Peer listing allowed.
    pub allow_discovery: bool,
    /// Liveness timeout.
    pub alive_timeout: Duration,
    /// Queue expiry.
    pub expire_timeout: Duration,
    /// Connection cap.
    pub concurrent_limit: usize,
    /// Ids per booking participant.
    pub ids_per_participant: usize,
}

/// Command-line overrides applied on top of the file (`--data-dir`, `--http-listen`, ...).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--http-listen`.
    pub http_listen: Option<String>,
    /// `--turn-listen` (replaces `turn.listen_udp`).
    pub turn_listen: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
}

fn duration(key: &'static str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            humantime::parse_duration(s).map_err(|e| invalid(key, format!("{s:?}: {e} (e.g. \"10m\", \"90s\")")))
        }
    }
}

/// Both of `tls_cert` and `tls_key`, or neither.
fn cert_pair(
    section: &'static str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(section, "tls_cert is set but tls_key is not")),
        (None, Some(_)) => Err(invalid(section, "tls_key is set but tls_cert is not")),
    }
}

fn addr(key: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(v).map_err(|e| invalid(key, format!("{v:?}: {e} (e.g. \"127.0.0.1:8080\")")))
}

fn nets(key: &'static str, v: &Option<Vec<String>>) -> Result<Vec<IpNet>, ConfigError> {
    v.iter()
        .flatten()
        .map(|s| IpNet::from_str(s).map_err(|_| invalid(key, format!("{s:?} is not a CIDR (e.g. \"10.0.0.0/8\")"))))
        .collect()
}

impl RawConfig {
    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Applies overrides and validates.
    pub fn into_config(mut self, o: &Overrides) -> Result<Config, ConfigError> {
        let http_listen =
            addr("http.listen", o.http_listen.as_deref().or(self.http.listen.as_deref()).unwrap_or("127.0.0.1:8080"))?;
        let admin_listen = addr(
            "admin.listen",
            o.admin_listen.as_deref().or(self.admin.listen.as_deref()).unwrap_or("127.0.0.1:9464"),
        )?;
        let metrics_auth = {
            let password =
                match (std::env::var("DUET_METRICS_PASSWORD").ok(), &self.admin.metrics_basic_auth_password_file) {
                    (Some(p), _) => Some(p),
                    (None, Some(path)) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|e| {
                                invalid("admin.metrics_basic_auth_password_file", format!("{}: {e}", path.display()))
                            })?
                            .trim_end_matches(['\r', '\n'])
                            .to_string(),
                    ),
                    (None, None) => None,
                };
            match (self.admin.metrics_basic_auth_user.take(), password) {
                (None, None) => None,
                (Some(user), Some(password)) => {
                    if user.is_empty() || user.contains(':') {
                        return Err(invalid("admin.metrics_basic_auth_user", "must be non-empty and without ':'"));
                    }
                    if password.len() < 16 {
                        return Err(invalid(
                            "admin.metrics_basic_auth_password_file",
                            "the password must be at least 16 characters",
                        ));
                    }
                    Some((user, Secret(password)))
                }
                (Some(_), None) => {
                    return Err(invalid(
                        "admin.metrics_basic_auth_password_file",
                        "metrics_basic_auth_user needs a password (this file or DUET_METRICS_PASSWORD)",
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "admin.metrics_basic_auth_user",
                        "a metrics password is set (file or DUET_METRICS_PASSWORD) without a user",
                    ));
                }
            }
        };
        let listen_udp = match (&o.turn_listen, &self.turn.listen_udp) {
            (Some(a), _) => vec![addr("turn.listen_udp", a)?],
            (None, Some(list)) => list.iter().map(|a| addr("turn.listen_udp", a)).collect::<Result<_, _>>()?,
            (None, None) => vec![addr("turn.listen_udp", "127.0.0.1:3478")?],
        };
        if listen_udp.is_empty() {
            return Err(invalid("turn.listen_udp", "at least one address is needed"));
        }
        let list = |key: &'static str, v: &Option<Vec<String>>| -> Result<Vec<SocketAddr>, ConfigError> {
            v.iter().flatten().map(|a| addr(key, a)).collect()
        };
        let listen_tcp = list("turn.listen_tcp", &self.turn.listen_tcp)?;
        let listen_tls = list("turn.listen_tls", &self.turn.listen_tls)?;
        let tls = cert_pair("turn", self.turn.tls_cert, self.turn.tls_key)?;
        if !listen_tls.is_empty() && tls.is_none() {
            return Err(invalid("turn.listen_tls", "TLS listeners need turn.tls_cert and turn.tls_key"));
        }
        for (key, v) in [
            ("turn.max_bps_per_allocation", self.turn.max_bps_per_allocation),
            ("turn.max_bps_total", self.turn.max_bps_total),
        ] {
            if v == Some(0) {
                return Err(invalid(key, "must be positive (omit the key for no limit)"));
            }
        }
        let relay_ports = match &self.turn.relay_ports {
            None => 49152..=65535,
            Some(s) => {
                let (lo, hi) = s
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
                    .ok_or_else(|| invalid("turn.relay_ports", format!("{s:?}: expected \"LOW-HIGH\"")))?;
                if lo == 0 || lo > hi {
                    return Err(invalid("turn.relay_ports", format!("{s:?}: need 0 < LOW <= HIGH")));
                }
                lo..=hi
            }
        };
        let realm = self.turn.realm.unwrap_or_else(|| "duet".into());
        if realm.is_empty() || realm.len() > 127 {
            return Err(invalid("turn.realm", "1 to 127 characters (RFC 8489 §14.9)"));
        }
        let log_format = match self.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid("log.format", format!("{other:?}: expected \"text\" or \"json\"")));
            }
        };
        let turn = TurnConfig {
            listen_udp,
            listen_tcp,
            listen_tls,
            tls,
            relay_ip6: self.turn.relay_ip6,
            max_bps_per_allocation: self.turn.max_bps_per_allocation,
            max_bps_total: self.turn.max_bps_total,
            static_credentials: {
                let mut v = Vec::new();
                for c in self.turn.static_credentials.into_iter().flatten() {
                    if c.username.is_empty() || c.username.contains(':') || c.password.len() < 12 {
                        return Err(invalid(
                            "turn.static_credentials",
                            "each needs a username without ':' (that form is reserved for booking credentials) and a password of at least 12 characters",
                        ));
                    }
                    v.push((c.username, Secret(c.password), c.max_allocations.unwrap_or(16)));
                }
                v
            },
            realm,
            public_host: self.turn.public_host,
            public_ip: self.turn.public_ip,
            relay_ip: self.turn.relay_ip,
            relay_ports,
            allow_peers: nets("turn.allow_peers", &self.turn.allow_peers)?,
            deny_peers: nets("turn.deny_peers", &self.turn.deny_peers)?,
            allocations_per_credential: self.turn.allocations_per_credential.unwrap_or(4),
            allocations_per_ip: self.turn.allocations_per_ip.unwrap_or(128),
            max_allocations: self.turn.max_allocations.unwrap_or(10_000),
            software: self.turn.software.unwrap_or(false),
            max_stream_connections: self.turn.max_stream_connections.unwrap_or(10_000),
            stream_connections_per_ip: self.turn.stream_connections_per_ip.unwrap_or(128),
            auth_deadline: duration("turn.auth_deadline", &self.turn.auth_deadline, Duration::from_secs(20))?,
        };
        if turn.max_stream_connections == 0 {
            return Err(invalid("turn.max_stream_connections", "must be positive"));
        }
        if turn.stream_connections_per_ip == 0 {
            return Err(invalid("turn.stream_connections_per_ip", "must be positive"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&turn.auth_deadline) {
            return Err(invalid("turn.auth_deadline", "from 1s to 5m"));
        }
        let b = &self.booking;
        let booking = BookingPolicy {
            early_join: duration("booking.early_join", &b.early_join, Duration::from_secs(600))?,
            host_early_join: duration("booking.host_early_join", &b.host_early_join, Duration::from_secs(900))?,
            overrun_grace: duration("booking.overrun_grace", &b.overrun_grace, Duration::from_secs(900))?,
            max_duration: duration("booking.max_duration", &b.max_duration, Duration::from_secs(8 * 3600))?,
            start_leeway: duration("booking.start_leeway", &b.start_leeway, Duration::from_secs(60))?,
            horizon: duration("booking.horizon", &b.horizon, Duration::from_secs(365 * 86_400))?,
            host_extend_max: duration("booking.host_extend_max", &b.host_extend_max, Duration::from_secs(1800))?,
        };
        if booking.horizon.is_zero() {
            return Err(invalid("booking.horizon", "must be longer than 0s, e.g. \"365d\""));
        }
        let s = &self.signaling;
        let ping_interval = duration("signaling.ping_interval", &s.ping_interval, Duration::from_secs(20))?;
        let signaling = SignalingConfig {
            max_message_bytes: s.max_message_bytes.unwrap_or(65_536),
            messages_per_second: s.messages_per_second.unwrap_or(50),
            ping_interval,
            allowed_origins: s.allowed_origins.clone().unwrap_or_default(),
            max_connections_per_ip: s.max_connections_per_ip.unwrap_or(64),
            max_pending_upgrades_per_ip: s.max_pending_upgrades_per_ip.unwrap_or(8),
            pong_timeout: duration(
                "signaling.pong_timeout",
                &s.pong_timeout,
                (ping_interval / 2).min(Duration::from_secs(5)),
            )?,
            send_timeout: duration("signaling.send_timeout", &s.send_timeout, Duration::from_secs(10))?,
            max_rooms: s.max_rooms.unwrap_or(50_000),
            trusted_proxies: nets("http.trusted_proxies", &self.http.trusted_proxies)?,
            forwarded_header: match &self.http.forwarded_header {
                None => Default::default(),
                Some(h) => h.parse().map_err(|e: String| invalid("http.forwarded_header", e))?,
            },
            vy: VyConfig {
                enabled: s.vy.enabled.unwrap_or(false),
                require_booking: s.vy.require_booking.unwrap_or(true),
                tenant: s.vy.tenant.clone().unwrap_or_else(|| "ten_default".into()),
                refused_upgrades_per_minute: s.vy.refused_upgrades_per_minute.unwrap_or(60),
                strict: s.vy.strict.unwrap_or(false),
                listen: s.vy.listen.as_deref().map(|a| addr("signaling.vy.listen", a)).transpose()?,
                tls: cert_pair("signaling.vy", s.vy.tls_cert.clone(), s.vy.tls_key.clone())?,
            },
            peerjs: PeerjsConfig {
                enabled: s.peerjs.enabled.unwrap_or(false),
                path: {
                    let p = s.peerjs.path.clone().unwrap_or_else(|| "/".into());
                    let p = if p.starts_with('/') { p } else { format!("/{p}") };
                    if p.ends_with('/') { p } else { format!("{p}/") }
                },
                key: s.peerjs.key.clone().unwrap_or_else(|| "peerjs".into()),
                allow_static_key: s.peerjs.allow_static_key.unwrap_or(true),
                allow_discovery: s.peerjs.allow_discovery.unwrap_or(false),
                alive_timeout: duration(
                    "signaling.peerjs.alive_timeout",
                    &s.peerjs.alive_timeout,
                    Duration::from_secs(60),
                )?,
                expire_timeout: duration(
                    "signaling.peerjs.expire_timeout",
                    &s.peerjs.expire_timeout,
                    Duration::from_secs(5),
                )?,
                concurrent_limit: s.peerjs.concurrent_limit.unwrap_or(5000),
                ids_per_participant: s.peerjs.ids_per_participant.unwrap_or(2),
            },
        };
        for (key, v) in [
            ("signaling.max_connections_per_ip", signaling.max_connections_per_ip as usize),
            ("signaling.max_pending_upgrades_per_ip", signaling.max_pending_upgrades_per_ip as usize),
            ("signaling.max_rooms", signaling.max_rooms),
            ("signaling.peerjs.ids_per_participant", signaling.peerjs.ids_per_participant),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if signaling.pong_timeout.is_zero() || signaling.pong_timeout >= signaling.ping_interval {
            return Err(invalid("signaling.pong_timeout", "must be positive and shorter than signaling.ping_interval"));
        }
        if signaling.send_timeout < Duration::from_secs(1) {
            return Err(invalid("signaling.send_timeout", "at least 1s"));
        }
        if signaling.peerjs.key.is_empty() {
            return Err(invalid("signaling.peerjs.key", "must not be empty"));
        }
        if signaling.max_message_bytes < 1024 {
            return Err(invalid("signaling.max_message_bytes", "at least 1024"));
        }
        let http_limits = HttpLimits {
            max_connections: self.http.max_connections.unwrap_or(10_000),
            max_connections_per_ip: self.http.max_connections_per_ip.unwrap_or(256),
            header_read_timeout: duration(
                "http.header_read_timeout",
                &self.http.header_read_timeout,
                Duration::from_secs(10),
            )?,
            request_timeout: duration("http.request_timeout", &self.http.request_timeout, Duration::from_secs(30))?,
        };
        if http_limits.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be positive"));
        }
        if http_limits.max_connections_per_ip == 0 {
            return Err(invalid("http.max_connections_per_ip", "must be positive"));
        }
        if !(Duration::from_millis(500)..=Duration::from_secs(600)).contains(&http_limits.header_read_timeout) {
            return Err(invalid("http.header_read_timeout", "between 500ms and 10m"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&http_limits.request_timeout) {
            return Err(invalid("http.request_timeout", "between 1s and 10m"));
        }
        let session_ttl = duration("tokens.session_ttl", &self.tokens.session_ttl, Duration::from_secs(600))?;
        if session_ttl < Duration::from_secs(10) {
            return Err(invalid("tokens.session_ttl", "at least 10s"));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid("public_url", format!("{url:?}: must start with http:// or https://")));
        }
        let database = self.database.validate()?;
        let webhooks = {
            let w = &self.webhooks;
            let defaults = WebhookConfig::default();
            let retry_schedule = match &w.retry_schedule {
                None => defaults.retry_schedule,
                Some(list) => list
                    .iter()
                    .map(|d| duration("webhooks.retry_schedule", &Some(d.clone()), Duration::ZERO))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            if retry_schedule.len() > 20 || retry_schedule.iter().sum::<Duration>() > Duration::from_secs(86_400) {
                return Err(invalid("webhooks.retry_schedule", "at most 20 delays, 24h in all"));
            }
            WebhookConfig {
                allow_private: nets("webhooks.allow_private", &w.allow_private)?,
                rotation_overlap: duration(
                    "webhooks.rotation_overlap",
                    &w.rotation_overlap,
                    defaults.rotation_overlap,
                )?,
                retry_schedule,
            }
        };
        if webhooks.rotation_overlap > Duration::from_secs(7 * 86_400) {
            return Err(invalid("webhooks.rotation_overlap", "at most 7d"));
        }
        let email = self.email.map(RawEmail::validate).transpose()?;
        let calls = {
            let d = CallsConfig::default();
            let end_grace = duration("calls.end_grace", &self.calls.end_grace, d.end_grace)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&end_grace) {
                return Err(invalid("calls.end_grace", "1s to 24h"));
            }
            let sweep_interval = duration("calls.sweep_interval", &self.calls.sweep_interval, d.sweep_interval)?;
            if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&sweep_interval) {
                return Err(invalid("calls.sweep_interval", "100ms to 1m"));
            }
            CallsConfig { end_grace, sweep_interval }
        };
        let booking_page = {
            let p = &self.booking_page;
            let defaults = BookingPageConfig::default();
            BookingPageConfig {
                manage_notice: duration("booking_page.manage_notice", &p.manage_notice, defaults.manage_notice)?,
                bookings_per_hour: p.bookings_per_hour.unwrap_or(defaults.bookings_per_hour),
                days: p.days.unwrap_or(defaults.days),
            }
        };
        if booking_page.bookings_per_hour == 0 {
            return Err(invalid("booking_page.bookings_per_hour", "must be positive"));
        }
        if !(1..=31).contains(&booking_page.days) {
            return Err(invalid("booking_page.days", "1 to 31"));
        }
        if booking_page.manage_notice > Duration::from_secs(365 * 86_400) {
            return Err(invalid("booking_page.manage_notice", "at most 365d"));
        }
        let retention = {
            let d = RetentionConfig::default();
            let personal_data = duration("retention.personal_data", &self.retention.personal_data, d.personal_data)?;
            if personal_data > Duration::from_secs(100 * 365 * 86_400) {
                return Err(invalid("retention.personal_data", "at most 100y"));
            }
            let interval = duration("retention.interval", &self.retention.interval, d.interval)?;
            if !(Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&interval) {
                return Err(invalid("retention.interval", "100ms to 24h"));
            }
            RetentionConfig { personal_data, interval }
        };
        let cluster = match self.cluster.take() {
            None => None,
            Some(c) => {
                let url = secret_setting(
                    "cluster.redis_url",
                    "cluster.redis_url_file",
                    "DUET_CLUSTER_REDIS_URL",
                    c.redis_url,
                    c.redis_url_file.as_deref(),
                )?
                .ok_or_else(|| invalid("cluster.redis_url", "required in cluster mode"))?;
                let parsed =
                    url::Url::parse(&url).map_err(|e| invalid("cluster.redis_url", format!("not a URL ({e})")))?;
                if parsed.scheme() != "redis" {
                    return Err(invalid(
                        "cluster.redis_url",
                        "use redis://host:port (TLS to Redis is not supported: keep Redis on a private network)",
                    ));
                }
                if !matches!(database, DatabaseConfig::Postgres { .. }) {
                    return Err(invalid(
                        "cluster",
                        "cluster mode needs the bookings in PostgreSQL: set [database] url = \"postgres://…\"",
                    ));
                }
                let node_id = match c.node_id {
                    Some(n) => n,
                    None => std::fs::read_to_string("/etc/hostname")
                        .map(|h| h.trim().to_string())
                        .ok()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| "node".to_string()),
                };
                let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
                if node_id.is_empty() || node_id.len() > 64 || !node_id.chars().all(ok) {
                    return Err(invalid("cluster.node_id", "1 to 64 characters of A-Z a-z 0-9 . _ -"));
                }
                Some(ClusterConfig { redis_url: Secret(url), node_id })
            }
        };
        let secrets_file = std::env::var_os("DUET_SECRETS_FILE").map(PathBuf::from).or(self.secrets_file.take());
        Ok(Config {
            secrets_file,
            cluster,
            database,
            webhooks,
            calls,
            retention,
            booking_page,
            email,
            data_dir: o.data_dir.clone().or(self.data_dir).unwrap_or_else(|| PathBuf::from("./duet-data")),
            public_url: self.public_url.map(|u| u.trim_end_matches('/').to_string()),
            http_tls: cert_pair("http", self.http.tls_cert.take(), self.http.tls_key.take())?,
            trusted_proxies: nets("http.trusted_proxies", &self.http.trusted_proxies)?,
            http_limits,
            http_listen,
            admin_listen,
            metrics_auth,
            turn,
            booking,
            session_ttl,
            signaling,
            drain_deadline: duration(
                "shutdown.drain_deadline",
                &self.shutdown.drain_deadline,
                Duration::from_secs(30 * 60),
            )?,
            log_level: self.log.level.unwrap_or_else(|| "info".into()),
            log_format,
        })
    }
}

impl RawDatabase {
    fn validate(&self) -> Result<DatabaseConfig, ConfigError> {
        if let Some(n) = self.max_connections
            && !(1..=1000).contains(&n)
        {
            return Err(invalid("database.max_connections", format!("{n}: between 1 and 1000")));
        }
        let url = secret_setting(
            "database.url",
            "database.url_file",
            "DUET_DATABASE_URL",
            self.url.as_ref().map(|s| s.expose().to_string()),
            self.url_file.as_deref(),
        )?;
        Ok(match url {
            None => DatabaseConfig::Sqlite { max_connections: self.max_connections.unwrap_or(8) },
            Some(url) => DatabaseConfig::Postgres {
                url: DatabaseUrl::parse(&url)?,
                max_connections: self.max_connections.unwrap_or(16),
            },
        })
    }
}

/// A secret setting `key` (e.g. `database.url`) from, in this order: the environment variable `env` (containers), the
/// file `<key>_file` (its content, trailing newline trimmed: systemd `LoadCredential=`, Docker or Kubernetes secrets),
/// the inline value. Errors name the key, never the value: both inline and a file given, or a file that cannot be
/// read.
fn secret_setting(
    key: &'static str,
    file_key: &'static str,
    env: &str,
    inline: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, ConfigError> {
    if inline.is_some() && file.is_some() {
        return Err(invalid(key, format!("give either `{key}` or `{file_key}`, not both")));
    }
    if let Ok(v) = std::env::var(env)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| invalid(file_key, format!("{}: {e}", path.display())))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(inline)
}

impl Config {
    /// True when every listener is on a loopback address: the embedded local default, where loopback peers are
    /// allowed in the relay so that two browsers on this machine can call each other through it.
    pub fn all_loopback(&self) -> bool {
        self.http_listen.ip().is_loopback()
            && self.admin_listen.ip().is_loopback()
            && self
                .turn
                .listen_udp
                .iter()
                .chain(&self.turn.listen_tcp)
                .chain(&self.turn.listen_tls)
                .all(|a| a.ip().is_loopback())
    }

    /// Base URL for join links when none is configured: `http://<http listen address>`.
    pub fn public_base(&self, bound_http: SocketAddr) -> String {
        let scheme = if self.http_tls.is_some() { "https" } else { "http" };
        self.public_url.clone().unwrap_or_else(|| format!("{scheme}://{bound_http}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_embedded_default() {
        let c = RawConfig::from_toml("").unwrap().into_config(&Overrides::default()).unwrap();
        assert_eq!(c.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.turn.listen_udp, vec!["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(c.admin_listen, "127.0.0.1:9464".parse().unwrap());
        assert!(c.all_loopback());
        assert_eq!(c.booking.overrun_grace, Duration::from_secs(900));
        assert_eq!(c.booking.horizon, Duration::from_secs(365 * 86_400));
        assert_eq!(
            c.http_limits,
            HttpLimits {
                max_connections: 10_000,
                max_connections_per_ip: 256,
                header_read_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
            }
        );
    }

    #[test]
    fn http_limits_parse_and_bad_ones_name_their_key() {
        let parse = |t: &str| RawConfig::from_toml(t).unwrap().into_config(&Overrides::default());
        let c =
            parse("[http]\nmax_connections = 50\nmax_connections_per_ip = 5\nheader_read_timeout = \"2s\"\n").unwrap();
        assert_eq!(
            c.http_limits,
            HttpLimits {
                max_connections: 50,
                max_connections_per_ip: 5,
                header_read_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(30),
            }
        );
        for (text, key) in [
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[http]\nmax_connections_per_ip = 0\n", "http.max_connections_per_ip"),
            ("[http]\nheader_read_timeout = \"1ms\"\n", "http.header_read_timeout"),
            ("[http]\nheader_read_timeout = \"soon\"\n", "http.header_read_timeout"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn secrets_come_from_files_and_both_forms_at_once_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("db-url");
        std::fs::write(&f, "postgres://duet:s3cret@127.0.0.1:5432/duet\n").unwrap();
        let parse = |x: &str| RawConfig::from_toml(x).unwrap().into_config(&Overrides::default());
        if std::env::var_os("DUET_DATABASE_URL").is_none() {
            let c = parse(&format!("[database]\nurl_file = {:?}\n", f.display().to_string())).unwrap();
            let DatabaseConfig::Postgres { url, .. } = &c.database else { panic!("postgres from the file") };
            assert!(!format!("{url:?}").contains("s3cret"), "{url:?}");
        }
        let both = format!("[database]\nurl = \"postgres://h/d\"\nurl_file = {:?}\n", f.display().to_string());
        let e = parse(&both).unwrap_err().to_string();
        assert!(e.contains("database.url") && e.contains("not both"), "{e}");
        let e = parse("[database]\nurl_file = \"/nonexistent/db-url\"\n").unwrap_err().to_string();
        assert!(e.contains("database.url_file") && e.contains("/nonexistent/db-url"), "{e}");
        let pg = "[database]\nurl = \"postgres://h/d\"\n";
        let e = parse(&format!("{pg}[cluster]\nredis_url_file = \"/nonexistent/r\"\n")).unwrap_err().to_string();
        if std::env::var_os("DUET_CLUSTER_REDIS_URL").is_none() {
            assert!(e.contains("cluster.redis_url_file"), "{e}");
        }
        if std::env::var_os("DUET_SECRETS_FILE").is_none() {
            let c = parse("secrets_file = \"/run/credentials/duet.service/secrets.toml\"\n").unwrap();
            assert_eq!(
                c.secrets_file.as_deref(),
                Some(std::path::Path::new("/run/credentials/duet.service/secrets.toml"))
            );
        }
    }

    #[test]
    fn cluster_needs_postgres_a_redis_url_and_a_clean_node_id() {
        let parse = |t: &str| RawConfig::from_toml(t).unwrap().into_config(&Overrides::default());
        let pg = "[database]\nurl = \"postgres://u:p@127.0.0.1/duet\"\n";
        let c = parse(&format!("{pg}[cluster]\nredis_url = \"redis://:pw@10.0.0.5:6379/0\"\nnode_id = \"duet-1\"\n"))
            .unwrap();
        let cl = c.cluster.expect("cluster mode");
        assert_eq!(cl.node_id, "duet-1");
        assert!(!format!("{cl:?}").contains("pw"), "the Redis URL is never printed: {cl:?}");
        assert!(parse(pg).unwrap().cluster.is_none(), "no [cluster]: a single node");
        for (text, key) in [
            ("[cluster]\nredis_url = \"redis://127.0.0.1\"\n".to_string(), "cluster"),
            (format!("{pg}[cluster]\n"), "cluster.redis_url"),
            (format!("{pg}[cluster]\nredis_url = \"rediss://h\"\n"), "cluster.redis_url"),
            (format!("{pg}[cluster]\nredis_url = \"nope\"\n"), "cluster.redis_url"),
            (format!("{pg}[cluster]\nredis_url = \"redis://h\"\nnode_id = \"a b\"\n"), "cluster.node_id"),
            (format!("{pg}[cluster]\nredis_url = \"redis://h\"\nnode_id = \"\"\n"), "cluster.node_id"),
        ] {
            if std::env::var_os("DUET_CLUSTER_REDIS_URL").is_some() && key == "cluster.redis_url" {
                continue;
            }
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
            assert!(!e.contains(":pw@"), "{e}");
        }
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = RawConfig::from_toml("[turn]\nrelm = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("relm"), "{e}");
        let e = RawConfig::from_toml("colour = 1\n").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = RawConfig::from_toml("[turn]\nrelay_ports = \"9-1\"\n")
            .unwrap()
            .into_config(&Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("turn.relay_ports"), "{e}");
        let e = RawConfig::from_toml("[booking]\nearly_join = \"soon\"\n")
            .unwrap()
            .into_config(&Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("booking.early_join"), "{e}");
        let e = RawConfig::from_toml("[booking]\nhorizon = \"0s\"\n")
            .unwrap()
            .into_config(&Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("booking.horizon"), "{e}");
    }

    #[test]
    fn email_is_off_by_default_and_validated() {
        let cfg = |t: &str| RawConfig::from_toml(t).unwrap().into_config(&Overrides::default());
        assert_eq!(cfg("").unwrap().email, None);
        let e = cfg("[email]\nfrom = \"Duet <noreply@duet.test>\"\nsmtp_host = \"smtp.duet.test\"\n")
            .unwrap()
            .email
            .unwrap();
        assert_eq!((e.tls, e.smtp_port), (SmtpTls::StartTls, 587));
        assert_eq!(e.reminders, vec![Duration::from_secs(86_400), Duration::from_secs(600)]);
        assert_eq!(e.retry_schedule, EMAIL_RETRY_SCHEDULE.to_vec());
        let e = cfg("[email]\nfrom = \"a@b.test\"\nsmtp_host = \"127.0.0.1\"\ntls = \"plain\"\nreminders = [\"10m\", \"1h\", \"10m\"]\n")
            .unwrap()
            .email
            .unwrap();
        assert_eq!((e.tls, e.smtp_port), (SmtpTls::Plain, 25));
        assert_eq!(e.reminders, vec![Duration::from_secs(3600), Duration::from_secs(600)], "largest first, once");
        for (toml, key) in [
            ("[email]\nsmtp_host = \"smtp.duet.test\"\n", "email.from"),
            ("[email]\nfrom = \"not a mailbox\"\nsmtp_host = \"h\"\n", "email.from"),
            ("[email]\nfrom = \"a@b.test\"\n", "email.smtp_host"),
            ("[email]\nfrom = \"a@b.test\"\nsmtp_host = \"smtp.duet.test\"\ntls = \"plain\"\n", "email.tls"),
            ("[email]\nfrom = \"a@b.test\"\nsmtp_host = \"h\"\ntls = \"ssl\"\n", "email.tls"),
            ("[email]\nfrom = \"a@b.test\"\nsmtp_host = \"h\"\nreminders = [\"30s\"]\n", "email.reminders"),
            (
                "[email]\nfrom = \"a@b.test\"\nsmtp_host = \"h\"\npassword_file = \"/nonexistent/pw\"\n",
                "email.password_file",
            ),
            ("[email]\nfrom = \"a@b.test\"\nsmtp_host = \"h\"\nsmtp = 1\n", "smtp"),
        ] {
            let err = match RawConfig::from_toml(toml) {
                Ok(raw) => raw.into_config(&Overrides::default()).unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn public_listener_is_not_all_loopback() {
        let o = Overrides { turn_listen: Some("0.0.0.0:3478".into()), ..Default::default() };
        let c = RawConfig::default().into_config(&o).unwrap();
        assert!(!c.all_loopback());
    }

    #[test]
    fn static_credentials_and_modes_parse() {
        let c = RawConfig::from_toml(
            "[turn]\nlisten_tcp = [\"127.0.0.1:0\"]\n[[turn.static_credentials]]\nusername = \"virtualy\"\npassword = \"long-enough-password\"\n\n[signaling.peerjs]\nenabled = true\npath = \"myapp\"\n[signaling.vy]\nlisten = \"127.0.0.1:8091\"\n",
        )
        .unwrap()
        .into_config(&Overrides::default())
        .unwrap();
        assert_eq!(c.turn.static_credentials, vec![("virtualy".into(), Secret("long-enough-password".into()), 16)]);
        assert!(!format!("{c:?}").contains("long-enough-password"), "Debug hides the password");
        assert_eq!(c.signaling.peerjs.path, "/myapp/");
        assert_eq!(c.signaling.vy.listen, Some("127.0.0.1:8091".parse().unwrap()));
        let e = RawConfig::from_toml(
            "[[turn.static_credentials]]\nusername = \"a:b\"\npassword = \"long-enough-password\"\n",
        )
        .unwrap()
        .into_config(&Overrides::default())
        .unwrap_err()
        .to_string();
        assert!(e.contains("turn.static_credentials"), "{e}");
        let e = RawConfig::from_toml("[turn]\nlisten_tls = [\"127.0.0.1:0\"]\n")
            .unwrap()
            .into_config(&Overrides::default());
        assert!(e.unwrap_err().to_string().contains("turn.listen_tls"));
    }

    #[test]
    fn stream_limits_have_defaults_and_are_validated() {
        let c = RawConfig::from_toml("").unwrap().into_config(&Overrides::default()).unwrap();
        assert_eq!(
            (c.turn.max_stream_connections, c.turn.stream_connections_per_ip, c.turn.auth_deadline),
            (10_000, 128, Duration::from_secs(20))
        );
        let c = RawConfig::from_toml("[turn]\nstream_connections_per_ip = 4\nauth_deadline = \"10s\"\n")
            .unwrap()
            .into_config(&Overrides::default())
            .unwrap();
        assert_eq!((c.turn.stream_connections_per_ip, c.turn.auth_deadline), (4, Duration::from_secs(10)));
        for (text, key) in [
            ("[turn]\nauth_deadline = \"0s\"\n", "turn.auth_deadline"),
            ("[turn]\nauth_deadline = \"1h\"\n", "turn.auth_deadline"),
            ("[turn]\nauth_deadline = \"soon\"\n", "turn.auth_deadline"),
            ("[turn]\nstream_connections_per_ip = 0\n", "turn.stream_connections_per_ip"),
            ("[turn]\nmax_stream_connections = 0\n", "turn.max_stream_connections"),
        ] {
            let e = RawConfig::from_toml(text).unwrap().into_config(&Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn database_url_is_validated_and_never_printed() {
        let parse = |t: &str| RawConfig::from_toml(t).unwrap().into_config(&Overrides::default());
        assert_eq!(parse("").unwrap().database, DatabaseConfig::Sqlite { max_connections: 8 });
        let c = parse("[database]\nurl = \"postgres://duet:hunter2-secret@db.internal:5432/duet?sslmode=require&password=other-secret\"\n")
            .unwrap();
        let DatabaseConfig::Postgres { url, max_connections } = &c.database else { panic!("{c:?}") };
        assert_eq!(*max_connections, 16);
        assert!(url.expose().contains("hunter2-secret"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("other-secret"), "{shown}");
        assert!(shown.contains("postgres://duet:<redacted>@db.internal:5432/duet"), "{shown}");
        let c = parse("[database]\nurl = \"postgresql://db/duet\"\nmax_connections = 4\n").unwrap();
        assert!(matches!(c.database, DatabaseConfig::Postgres { max_connections: 4, .. }));
        for text in [
            "[database]\nurl = \"mysql://u:pw-secret@h/db\"\n",
            "[database]\nurl = \"sqlite://pw-secret.db\"\n",
            "[database]\nurl = \"not a url pw-secret\"\n",
            "[database]\nmax_connections = 0\n",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("database."), "{text}: {e}");
            assert!(!e.contains("pw-secret"), "{text}: {e}");
        }
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../config.toml.example");
        RawConfig::from_toml(text)
            .expect("config.toml.example parses")
            .into_config(&Overrides::default())
            .expect("config.toml.example validates");
    }
}
