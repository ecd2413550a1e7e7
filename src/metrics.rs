//! Prometheus metrics (DESIGN §7): `duet_*` names, base units, `_total` only on counters, no per-booking or per-user
//! labels. The sans-IO cores keep plain `Stats` structs; the drivers copy them into these families (counters by
//! delta, gauges by value) so the registry is the only place with atomics. The registry is passed down, not global.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric family of the daemon.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// `duet_join_attempts_total{result}`: ok|too_early|closed|cancelled|rejected|pending|invalid.
    pub join_attempts: IntCounterVec,
    /// `duet_bookings_total{event}`: created|confirmed|rejected|cancelled.
    pub bookings: IntCounterVec,
    /// `duet_http_requests_total{route,code}`.
    pub http_requests: IntCounterVec,
    /// `duet_http_connections{listener}`: http|vy, connections open now (TLS handshakes and upgraded WebSockets
    /// included).
    pub http_connections: IntGaugeVec,
    /// `duet_http_connections_refused_total{listener,reason}`: reason max_connections|max_connections_per_ip.
    pub http_connections_refused: IntCounterVec,
    /// `duet_turn_allocations_active{transport}`.
    pub turn_allocations_active: IntGaugeVec,
    /// `duet_turn_allocations_total{result}`.
    pub turn_allocations: IntCounterVec,
    /// `duet_turn_relayed_bytes_total{direction}`: to_peer|to_client (payload bytes, counted live).
    pub turn_relayed_bytes: IntCounterVec,
    /// `duet_turn_relayed_packets_total{direction}`.
    pub turn_relayed_packets: IntCounterVec,
    /// `duet_stun_binding_requests_total`.
    pub stun_binding_requests: IntCounter,
    /// `duet_turn_auth_failures_total`.
    pub turn_auth_failures: IntCounter,
    /// `duet_turn_quota_refusals_total`: 486 Allocation Quota Reached.
    pub turn_quota_refusals: IntCounter,
    /// `duet_turn_capacity_refusals_total`: 508 Insufficient Capacity.
    pub turn_capacity_refusals: IntCounter,
    /// `duet_turn_peer_denied_total`: CreatePermission/ChannelBind answered 403 by the peer policy.
    pub turn_peer_denied: IntCounter,
    /// `duet_turn_drops_total{reason}`: malformed|no_allocation|no_permission|rate_limited|unknown_channel|bandwidth|
    /// send_failed; one reason per dropped packet.
    pub turn_drops: IntCounterVec,
    /// `duet_turn_stream_connections`: TCP/TLS client connections open now (including TLS handshakes).
    pub turn_stream_connections: IntGauge,
    /// `duet_turn_stream_refusals_total{reason}`: max_connections|per_ip|handshake_rate.
    pub turn_stream_refusals: IntCounterVec,
    /// `duet_turn_stream_auth_timeouts_total`: TCP/TLS connections closed for not authenticating in time.
    pub turn_stream_auth_timeouts: IntCounter,
    /// `duet_signal_connections{mode}`: native|vy|peerjs.
    pub signal_connections: IntGaugeVec,
    /// `duet_rooms_active`.
    pub rooms_active: IntGauge,
    /// `duet_signal_ready_total`.
    pub signal_ready: IntCounter,
    /// `duet_signal_messages_total{direction,type}`.
    pub signal_messages: IntCounterVec,
    /// `duet_signal_closes_total{code}`.
    pub signal_closes: IntCounterVec,
    /// `duet_signal_drops_total{reason}`: the hub's drop reasons, plus `queue_full` (a slow reader's queue overflowed)
    /// and `send_timeout` (a write did not complete within `signaling.send_timeout`; the socket was dropped).
    pub signal_drops: IntCounterVec,
    /// `duet_signal_upgrades_refused_total{mode,reason}`: signaling upgrades refused before a socket got a slot.
    /// reason: origin|too_many_connections|pending_upgrades|rate_limited|outside_window|slot_taken|bad_token.
    pub signal_refused: IntCounterVec,
    /// `duet_draining`: 1 while draining after SIGTERM.
    pub draining: IntGauge,
    /// `duet_webhook_deliveries_total{result}`: one per delivery attempt: `success` (2xx), `retry` (failed, another
    /// attempt is scheduled), `failed` (failed, the retry schedule is used up).
    pub webhook_deliveries: IntCounterVec,
    /// `duet_webhook_backlog`: webhook deliveries not yet delivered or failed (pending or being sent), every tenant.
    pub webhook_backlog: IntGauge,
    /// `duet_call_facts_total{source,result}`: call facts (joins, leaves, ready, room closed, TURN allocations) handed
    /// from the signaling (`source="signaling"`) and relay (`source="relay"`) drivers to the call-facts recorder:
    /// `queued`, or `dropped` because its bounded queue was full (the drivers never wait for it).
    pub call_facts: IntCounterVec,
    /// `duet_call_fact_errors_total`: call facts the recorder could not write (database error; logged).
    pub call_fact_errors: IntCounter,
    /// `duet_call_events_total{type}`: meeting.started, participant.joined, participant.left, meeting.ended and
    /// participant.no_show events decided by the recorder (written to the webhook outbox when an endpoint wants them).
    pub call_events: IntCounterVec,
    /// `duet_email_sent_total{result}`: one per outbox email handled: `sent` (the SMTP server accepted it), `retry`
    /// (failed, another attempt scheduled), `failed` (gave up), `dropped` (no longer relevant: a reminder of a
    /// cancelled booking or a revoked link, a start already passed).
    pub email_sent: IntCounterVec,
    /// `duet_retention_runs_total`: runs of the retention purge (each looks for bookings past their retention time).
    pub retention_runs: IntCounter,
    /// `duet_retention_purged_bookings_total`: bookings whose personal data this node purged.
    pub retention_purged: IntCounter,
    /// `duet_erasures_total`: erasures of a data subject through the API.
    pub erasures: IntCounter,
    /// `duet_turn_allocations_limit`: the configured `[turn] max_allocations` (allocations in total; over it 508), so
    /// that alerts can compare `duet_turn_allocations_active` with it.
    pub turn_allocations_limit: IntGauge,
    /// `duet_tls_certificate_expiry_timestamp_seconds{listener}`: notAfter (Unix seconds) of the leaf certificate
    /// each TLS listener serves: `http`, `vy`, `turn` (TURNS). Set at start and after each SIGHUP reload; absent for a
    /// listener without TLS.
    pub tls_certificate_expiry: IntGaugeVec,
    /// `duet_database_up`: 1 when the database answered `SELECT 1` within 2 s at the last scrape of `/metrics`, else
    /// 0 (the `database_unreachable` reason of `/readyz`).
    pub database_up: IntGauge,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Metrics {
    /// Creates and registers every family in a fresh registry.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build = IntGaugeVec::new(Opts::new("duet_build_info", "Build information; always 1."), &["version"])
            .expect("static metric definition");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build)).expect("metric registered once");
        let turn_allocations_active = IntGaugeVec::new(
            Opts::new("duet_turn_allocations_active", "TURN allocations alive now, by client transport."),
            &["transport"],
        )
        .expect("static metric definition");
        r.register(Box::new(turn_allocations_active.clone())).expect("metric registered once");
        Metrics {
            join_attempts: counter_vec(&r, "duet_join_attempts_total", "Join requests by result.", &["result"]),
            bookings: counter_vec(&r, "duet_bookings_total", "Booking changes by event.", &["event"]),
            http_requests: counter_vec(
                &r,
                "duet_http_requests_total",
                "HTTP API requests by route template and status code.",
                &["route", "code"],
            ),
            http_connections: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "duet_http_connections",
                        "HTTP connections open now (upgraded WebSockets too), by listener.",
                    ),
                    &["listener"],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            http_connections_refused: counter_vec(
                &r,
                "duet_http_connections_refused_total",
                "HTTP connections closed at accept by a connection cap, by listener and cap.",
                &["listener", "reason"],
            ),
            turn_allocations_active,
            turn_allocations: counter_vec(
                &r,
                "duet_turn_allocations_total",
                "TURN Allocate outcomes by result.",
                &["result"],
            ),
            turn_relayed_bytes: counter_vec(
                &r,
                "duet_turn_relayed_bytes_total",
                "Application bytes relayed, by direction.",
                &["direction"],
            ),
            turn_relayed_packets: counter_vec(
                &r,
                "duet_turn_relayed_packets_total",
                "Datagrams relayed, by direction.",
                &["direction"],
            ),
            stun_binding_requests: counter(&r, "duet_stun_binding_requests_total", "STUN Binding requests answered."),
            turn_auth_failures: counter(
                &r,
                "duet_turn_auth_failures_total",
                "TURN requests refused for authentication.",
            ),
            turn_quota_refusals: counter(
                &r,
                "duet_turn_quota_refusals_total",
                "TURN Allocates refused by a per-credential or per-IP quota (486).",
            ),
            turn_capacity_refusals: counter(
                &r,
                "duet_turn_capacity_refusals_total",
                "TURN requests refused for capacity (508): total allocations, relay ports, permission or channel caps.",
            ),
            turn_peer_denied: counter(
                &r,
                "duet_turn_peer_denied_total",
                "CreatePermission/ChannelBind requests refused by the peer policy (403).",
            ),
            turn_drops: counter_vec(
                &r,
                "duet_turn_drops_total",
                "Packets dropped by the relay, by reason (one reason per packet).",
                &["reason"],
            ),
            turn_stream_connections: gauge(
                &r,
                "duet_turn_stream_connections",
                "TURN TCP/TLS client connections open now, TLS handshakes included.",
            ),
            turn_stream_refusals: counter_vec(
                &r,
                "duet_turn_stream_refusals_total",
                "TURN TCP/TLS client connections closed at accept, by reason.",
                &["reason"],
            ),
            turn_stream_auth_timeouts: counter(
                &r,
                "duet_turn_stream_auth_timeouts_total",
                "TURN TCP/TLS client connections closed for not authenticating a request in time.",
            ),
            signal_connections: {
                let g = IntGaugeVec::new(
                    Opts::new("duet_signal_connections", "Signaling WebSocket connections open now, by protocol mode."),
                    &["mode"],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            rooms_active: gauge(
                &r,
                "duet_rooms_active",
                "Rooms open in the hub (a booking's room stays open between reconnects until its hard end).",
            ),
            signal_ready: counter(&r, "duet_signal_ready_total", "Times a pair formed (ready sent)."),
            signal_messages: counter_vec(
                &r,
                "duet_signal_messages_total",
                "Signaling messages by direction and type.",
                &["direction", "type"],
            ),
            signal_closes: counter_vec(
                &r,
                "duet_signal_closes_total",
                "Signaling sockets closed by the hub, by close code.",
                &["code"],
            ),
            signal_drops: counter_vec(
                &r,
                "duet_signal_drops_total",
                "Signaling messages dropped, by reason.",
                &["reason"],
            ),
            signal_refused: counter_vec(
                &r,
                "duet_signal_upgrades_refused_total",
                "Signaling upgrades refused before the socket got a slot, by mode and reason.",
                &["mode", "reason"],
            ),
            draining: gauge(&r, "duet_draining", "1 while the daemon drains after SIGTERM, else 0."),
            webhook_deliveries: counter_vec(
                &r,
                "duet_webhook_deliveries_total",
                "Webhook delivery attempts by result: success, retry (another attempt scheduled), failed (gave up).",
                &["result"],
            ),
            webhook_backlog: gauge(&r, "duet_webhook_backlog", "Webhook deliveries pending or being sent."),
            call_facts: counter_vec(
                &r,
                "duet_call_facts_total",
                "Call facts handed to the recorder by source (signaling, relay) and result (queued, dropped).",
                &["source", "result"],
            ),
            call_fact_errors: counter(
                &r,
                "duet_call_fact_errors_total",
                "Call facts the recorder could not write to the database.",
            ),
            call_events: counter_vec(
                &r,
                "duet_call_events_total",
                "Meeting and participant events decided from call facts, by event type.",
                &["type"],
            ),
            email_sent: counter_vec(
                &r,
                "duet_email_sent_total",
                "Outbox emails by result: sent, retry (another attempt scheduled), failed (gave up), dropped.",
                &["result"],
            ),
            retention_runs: counter(&r, "duet_retention_runs_total", "Runs of the retention purge."),
            retention_purged: counter(
                &r,
                "duet_retention_purged_bookings_total",
                "Bookings whose personal data the retention purge removed on this node.",
            ),
            erasures: counter(&r, "duet_erasures_total", "Erasures of a data subject through the API."),
            turn_allocations_limit: gauge(
                &r,
                "duet_turn_allocations_limit",
                "Configured maximum of TURN allocations in total ([turn] max_allocations).",
            ),
            tls_certificate_expiry: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "duet_tls_certificate_expiry_timestamp_seconds",
                        "notAfter of the certificate a TLS listener serves, Unix seconds, by listener (http, vy, turn).",
                    ),
                    &["listener"],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            database_up: gauge(
                &r,
                "duet_database_up",
                "1 when the database answered a ping at this scrape (within 2 s), else 0.",
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        // The text encoder writes into a Vec and only fails on invalid metric families, which static ones are not.
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds to a counter the growth of a monotonic core counter since the last sync (`last` tracks the value exported).
pub fn sync_counter(c: &IntCounter, last: &mut u64, now: u64) {
    if now > *last {
        c.inc_by(now - *last);
    }
    *last = now;
}
