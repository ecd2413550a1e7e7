//! The webhook delivery worker and its SSRF guard.
//!
//! The worker ([`run`], one tokio task of the daemon) claims due rows of the outbox with a lease
//! ([`Store::claim_webhook_deliveries`]), POSTs each (at most [`CONCURRENCY`] at once) with reqwest, [`DELIVERY_TIMEOUT`]
//! per attempt and no redirects followed (a 3xx is a failure, as cal.com's `redirect: "manual"`), logs the attempt
//! and schedules the next one from the retry schedule with ±10 % jitter. It wakes when a commit queued a delivery
//! ([`Store::wake_webhooks`]) and polls every [`POLL_INTERVAL`] as a fallback. On start, deliveries left `sending` by a
//! crash are retried with the same `webhook-id`.
//!
//! The SSRF guard ([`SsrfGuard`]) is applied when an endpoint is created or changed (on the addresses its host
//! resolves to then) and on every attempt on the address actually connected to: the clients resolve names through
//! [`GuardedResolver`], which hands reqwest only addresses the guard accepts, so a DNS answer that changes between
//! the check and the connect (DNS rebinding) cannot reach a refused address. IP-literal hosts are checked directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_relay::policy::{IpNet, PeerPolicy, canonical_ip};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::store::Store;
use super::webhooks::{Attempt, AttemptOutcome, DELIVERY_TIMEOUT, Delivery, Endpoint};
use crate::app::unix_now;
use crate::config::WebhookConfig;
use crate::metrics::Metrics;

/// Most attempts in flight at once (a slow receiver holds one slot for at most [`DELIVERY_TIMEOUT`]).
pub const CONCURRENCY: usize = 32;

/// How often the worker looks for due deliveries when nothing woke it: 1 s (the delay a retry can be late by).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a claimed delivery stays `sending` before another worker may take it: the attempt's timeout plus 20 s.
pub const LEASE: Duration = Duration::from_secs(DELIVERY_TIMEOUT.as_secs() + 20);

/// Why an endpoint address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The scheme is neither `https` nor (for an allow-listed address) `http`.
    #[error("the URL must be https:// (http:// only for addresses in [webhooks] allow_private)")]
    Scheme,
    /// The address is special-purpose (private, loopback, link-local, unspecified, multicast, CGNAT, unique-local,
    /// reserved …) and not in `[webhooks] allow_private`.
    #[error("{0} resolves to a {1} address, refused (allow it with [webhooks] allow_private)")]
    Address(IpAddr, &'static str),
    /// `http://` to an address outside `[webhooks] allow_private`.
    #[error("http:// is accepted only for addresses in [webhooks] allow_private; {0} is not")]
    PlainHttp(IpAddr),
}

/// The SSRF guard: which addresses webhook requests may go to.
///
/// `https`: any address the relay's peer policy accepts (it refuses loopback, RFC 1918, unique-local, link-local,
/// CGNAT, multicast, unspecified, broadcast, documentation, benchmarking, transition and reserved ranges, after
/// mapping IPv4-mapped/compatible, NAT64 and 6to4 forms to their IPv4 address), plus the `allow_private` CIDRs.
/// `http`: only addresses inside `allow_private`.
#[derive(Debug, Clone)]
pub struct SsrfGuard {
    policy: PeerPolicy,
    allow_private: Vec<IpNet>,
}

impl SsrfGuard {
    /// The guard of `[webhooks] allow_private`.
    pub fn new(allow_private: &[IpNet]) -> SsrfGuard {
        SsrfGuard {
            policy: PeerPolicy { allow: allow_private.to_vec(), deny: Vec::new(), own_addresses: Vec::new() },
            allow_private: allow_private.to_vec(),
        }
    }

    /// Whether `ip` is inside an `allow_private` CIDR (as itself or as the IPv4 address it embeds).
    pub fn allow_listed(&self, ip: IpAddr) -> bool {
        let c = canonical_ip(ip);
        self.allow_private.iter().any(|n| n.contains(ip) || n.contains(c))
    }

    /// Whether a request over `https` (else `http`) may go to `ip`.
    pub fn check_ip(&self, ip: IpAddr, https: bool) -> Result<(), Refusal> {
        if !https {
            return if self.allow_listed(ip) && !canonical_ip(ip).is_unspecified() {
                Ok(())
            } else {
                Err(Refusal::PlainHttp(ip))
            };
        }
        // The peer policy refuses port 0; the port plays no part in the address ranges.
        self.policy.check(SocketAddr::new(ip, 443)).map_err(|d| Refusal::Address(ip, d.as_str()))
    }

    /// Checks an endpoint URL when it is created or changed: the scheme, and every address its host resolves to now
    /// (an IP literal as itself). A host that does not resolve (within 5 s) is accepted: every attempt checks again.
    pub async fn check_url(&self, url: &url::Url) -> Result<(), Refusal> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(Refusal::Scheme),
        };
        let addrs: Vec<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(a)) => vec![IpAddr::V4(a)],
            Some(url::Host::Ipv6(a)) => vec![IpAddr::V6(a)],
            Some(url::Host::Domain(d)) => {
                let lookup = tokio::net::lookup_host((d, url.port_or_known_default().unwrap_or(443)));
                match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                    Ok(Ok(a)) => a.map(|a| a.ip()).collect(),
                    _ => Vec::new(),
                }
            }
            None => return Err(Refusal::Scheme),
        };
        addrs.into_iter().try_for_each(|ip| self.check_ip(ip, https))
    }
}

/// A reqwest resolver that answers only the addresses [`SsrfGuard::check_ip`] accepts for its scheme (an error when
/// none is left), so the connection goes to a checked address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Arc<SsrfGuard>,
    https: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (guard, https) = (self.guard.clone(), self.https);
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let ok: Vec<SocketAddr> = found.filter(|a| guard.check_ip(a.ip(), https).is_ok()).collect();
            if ok.is_empty() {
                let e = std::io::Error::other("every address refused by the SSRF guard");
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of one scheme: guarded resolver, [`DELIVERY_TIMEOUT`], no redirects, no proxy from the
/// environment, `User-Agent: duet/<version>`.
fn client(guard: Arc<SsrfGuard>, https: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { guard, https }))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DELIVERY_TIMEOUT)
        .connect_timeout(DELIVERY_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("duet/", env!("CARGO_PKG_VERSION")))
        .build()
        // Only a TLS back-end that fails to initialise errors here; the daemon cannot deliver webhooks without it.
        .unwrap_or_else(|e| {
            tracing::error!(target: "booking", error = %e, "webhook HTTP client");
            reqwest::Client::new()
        })
}

/// Everything one attempt needs.
struct Sender {
    store: Store,
    metrics: Metrics,
    guard: Arc<SsrfGuard>,
    https: reqwest::Client,
    http: reqwest::Client,
    retry_schedule: Vec<Duration>,
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The delay `d` with ±10 % jitter, in milliseconds.
fn jittered_ms(d: Duration) -> i64 {
    let ms = d.as_millis() as f64;
    (ms * rand::rng().random_range(0.9..=1.1)) as i64
}

/// A short description of a failed request without its URL (which may carry credentials): `timeout`,
/// `connect: …`, or the error chain.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("timeout after {} s", DELIVERY_TIMEOUT.as_secs());
    }
    let mut text = if e.is_connect() { "connect".to_string() } else { "request".to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.chars().take(500).collect()
}

impl Sender {
    /// One attempt: POST, log, schedule.
    async fn attempt(&self, d: Delivery, e: Endpoint) {
        let started_ms = now_ms();
        let started = Instant::now();
        let (status_code, error) = match self.post(&d, &e).await {
            Ok(code) if (200..300).contains(&code) => (Some(i64::from(code)), None),
            Ok(code) => (Some(i64::from(code)), Some(format!("HTTP {code}"))),
            Err(text) => (None, Some(text)),
        };
        let duration_ms = started.elapsed().as_millis() as i64;
        let failures = d.failures + 1;
        let (outcome, result) = if error.is_none() {
            (AttemptOutcome::Delivered, "success")
        } else {
            match self.retry_schedule.get(usize::try_from(d.failures).unwrap_or(usize::MAX)) {
                Some(delay) => (AttemptOutcome::RetryAt(now_ms() + jittered_ms(*delay)), "retry"),
                None => (AttemptOutcome::Failed, "failed"),
            }
        };
        let a = Attempt { attempt: 0, attempted_at_ms: started_ms, status_code, error, duration_ms };
        match self.store.record_webhook_attempt(&d.id, &a, outcome, unix_now()).await {
            Ok(n) => {
                self.metrics.webhook_deliveries.with_label_values(&[result]).inc();
                tracing::info!(target: "booking", delivery = %d.id, endpoint = %e.id, event = %d.event_type,
                    attempt = n, status = ?a.status_code, error = ?a.error, failures, result, "webhook attempt");
            }
            Err(err) => {
                tracing::warn!(target: "booking", delivery = %d.id, error = %err, "recording a webhook attempt");
            }
        }
    }

    /// POSTs the delivery's payload to the endpoint with the Standard Webhooks headers; the status code, or why no
    /// answer came.
    async fn post(&self, d: &Delivery, e: &Endpoint) -> Result<u16, String> {
        let url = url::Url::parse(&e.url).map_err(|err| format!("bad URL: {err}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(Refusal::Scheme.to_string()),
        };
        match url.host() {
            Some(url::Host::Ipv4(a)) => self.guard.check_ip(IpAddr::V4(a), https).map_err(|r| r.to_string())?,
            Some(url::Host::Ipv6(a)) => self.guard.check_ip(IpAddr::V6(a), https).map_err(|r| r.to_string())?,
            _ => {}
        }
        // The payload as stored now: an erasure or purge since the claim has redacted it.
        let payload = match self.store.webhook_payload(&d.id).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err("the delivery was deleted".to_string()),
            Err(err) => return Err(format!("reading the payload: {err}")),
        };
        let now = unix_now();
        let signature = e.signature_header(&d.message_id, now, payload.as_bytes(), now);
        let client = if https { &self.https } else { &self.http };
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.message_id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(payload)
            .send()
            .await
            .map_err(|err| describe(&err.without_url()))?;
        Ok(resp.status().as_u16())
    }
}

/// The delivery worker: runs until `shutdown` (see the module doc).
pub async fn run(store: Store, metrics: Metrics, config: WebhookConfig, shutdown: CancellationToken) {
    let guard = Arc::new(SsrfGuard::new(&config.allow_private));
    let sender = Arc::new(Sender {
        store: store.clone(),
        metrics: metrics.clone(),
        https: client(guard.clone(), true),
        http: client(guard.clone(), false),
        guard,
        retry_schedule: config.retry_schedule,
    });
    match store.release_webhook_leases(now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "booking", deliveries = n, "retrying webhook attempts a stop interrupted"),
        Err(e) => tracing::warn!(target: "booking", error = %e, "releasing webhook leases"),
    }
    let wake = store.webhook_wakeup();
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let tasks = tokio_util::task::TaskTracker::new();
    let mut last_backlog = Instant::now() - POLL_INTERVAL;
    loop {
        let free = slots.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match store.claim_webhook_deliveries(now_ms(), LEASE.as_millis() as i64, free).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(target: "booking", error = %e, "claiming webhook deliveries");
                    Vec::new()
                }
            }
        };
        let busy = claimed.len() == free && free > 0;
        for (d, e) in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let (sender, wake) = (sender.clone(), wake.clone());
            tasks.spawn(async move {
                sender.attempt(d, e).await;
                drop(permit);
                wake.notify_one();
            });
        }
        if last_backlog.elapsed() >= POLL_INTERVAL {
            if let Ok(n) = store.webhook_backlog().await {
                metrics.webhook_backlog.set(n);
            }
            last_backlog = Instant::now();
        }
        if busy {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tasks.close();
    // Attempts under way finish (bounded by the timeout); a kill leaves them `sending`, retried at the next start.
    let _ = tokio::time::timeout(DELIVERY_TIMEOUT, tasks.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_special_purpose_addresses_over_https() {
        let g = SsrfGuard::new(&[]);
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(g.check_ip(ip(a), true).is_err(), "{a} must be refused");
        }
        for a in ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::ffff:93.184.215.14"] {
            assert_eq!(g.check_ip(ip(a), true), Ok(()), "{a} is public");
            assert!(g.check_ip(ip(a), false).is_err(), "http to {a} is refused");
        }
    }

    #[test]
    fn allow_private_admits_its_ranges_and_http_there_only() {
        let g = SsrfGuard::new(&["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(g.check_ip(ip("127.0.0.1"), true), Ok(()));
        assert_eq!(g.check_ip(ip("127.0.0.1"), false), Ok(()));
        assert_eq!(g.check_ip(ip("::ffff:127.0.0.1"), false), Ok(()));
        assert!(g.check_ip(ip("10.0.0.1"), true).is_err());
        assert!(g.check_ip(ip("::1"), false).is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_by_scheme_and_resolved_address() {
        let g = SsrfGuard::new(&[]);
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(g.check_url(&u("ftp://93.184.215.14/")).await, Err(Refusal::Scheme));
        assert!(g.check_url(&u("https://127.0.0.1/")).await.is_err());
        assert!(g.check_url(&u("https://[::ffff:7f00:1]/")).await.is_err());
        assert!(g.check_url(&u("https://localhost/")).await.is_err(), "localhost resolves to loopback");
        assert_eq!(g.check_url(&u("https://93.184.215.14/hook")).await, Ok(()));
    }
}
