//! Email: the worker that sends the outbox ([`super::email_outbox`]) by SMTP, and the messages it composes
//! (README, "Email and calendar").
//!
//! Each message goes to one participant: a text and an HTML part rendered from templates (built in, each replaceable
//! by a file of the same name in `[email] templates_dir`; minijinja, HTML auto-escaped), and that participant's own
//! invitation attached as `invite.ics` with `Content-Type: text/calendar; charset=utf-8; method=REQUEST|CANCEL`
//! (the `method` parameter is what makes Gmail apply a cancellation). The `Message-ID` is
//! the outbox row's, the same on every attempt, so a resend after a crash (sent, then killed before the row was marked)
//! is recognisable as the same message.
//!
//! The worker ([`run`]) claims due rows with a lease ([`LEASE`]), at most [`CONCURRENCY`] at once, renders each
//! from the booking as it is at send time (the link decrypted then: a rotated link is mailed as the new one), and
//! retries failures by `[email] retry_schedule` with ±10 % jitter; a permanent SMTP refusal (5xx) is not retried.
//! On start, rows a crash left `sending` are sent again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::{AutoEscape, Environment};
use rand::Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::email_outbox::{EmailKind, EmailOutcome, OutboxEmail};
use super::ics::{self, Recipient};
use super::link_seal::LinkSealer;
use super::store::{Booking, Participant, Status, Store};
use crate::app::unix_now;
use crate::config::{EmailConfig, SmtpTls};
use crate::metrics::Metrics;

/// Most sends in flight at once.
pub const CONCURRENCY: usize = 4;

/// How often the worker looks for due rows when nothing woke it: 1 s (how late a reminder can be).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Time allowed for one SMTP command (lettre's timeout).
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a claimed row stays `sending` before another worker may take it: a whole SMTP transaction (connect,
/// TLS, AUTH, MAIL, RCPT, DATA) at [`SMTP_TIMEOUT`] per step, with room to spare.
pub const LEASE: Duration = Duration::from_secs(5 * 60);

/// The header naming the kind of a Duet email (`confirmation`, `reschedule`, `cancellation`, `reminder`), for mail
/// filters.
pub const KIND_HEADER: &str = "X-Duet-Email-Kind";

/// The names of the templates, each replaceable by a file of that name in `[email] templates_dir`.
pub const TEMPLATE_NAMES: [&str; 3] = ["subject.txt", "body.txt", "body.html"];

/// Built-in `subject.txt` (one line; line breaks are removed).
const SUBJECT: &str = r#"{% if kind == "confirmation" %}Confirmed: {{ title }}, {{ start }}{% elif kind == "reschedule" %}New time: {{ title }}, {{ start }}{% elif kind == "cancellation" %}{% if status == "rejected" %}Declined{% else %}Cancelled{% endif %}: {{ title }}, {{ start }}{% else %}Reminder: {{ title }} in {{ starts_in }}{% endif %}"#;

/// Built-in `body.txt`.
const BODY_TXT: &str = r#"Hello {{ recipient }},

{% if kind == "confirmation" -%}
your meeting "{{ title }}"{% if others %} with {{ others }}{% endif %} is confirmed.
{%- elif kind == "reschedule" -%}
your meeting "{{ title }}"{% if others %} with {{ others }}{% endif %} has a new time.
{%- elif kind == "cancellation" -%}
your meeting "{{ title }}"{% if others %} with {{ others }}{% endif %} was {% if status == "rejected" %}declined{% else %}cancelled{% endif %}.
{%- else -%}
a reminder: your meeting "{{ title }}"{% if others %} with {{ others }}{% endif %} starts in {{ starts_in }}.
{%- endif %}

When: {{ start }} to {{ end }} ({{ time_zone }})
{% if kind != "cancellation" %}{% if join_url %}Join: {{ join_url }}{% else %}Your join link is not included in this email; ask the organiser for a new link.{% endif %}
{% if external_url %}The meeting takes place at {{ external_url }}
{% endif %}{% endif %}
The attached invitation (invite.ics) {% if kind == "cancellation" %}removes the meeting from{% else %}puts the meeting in{% endif %} your calendar.
"#;

/// Built-in `body.html` (auto-escaped).
const BODY_HTML: &str = r#"<!doctype html>
<html><body>
<p>Hello {{ recipient }},</p>
<p>{% if kind == "confirmation" %}your meeting “{{ title }}”{% if others %} with {{ others }}{% endif %} is confirmed.{% elif kind == "reschedule" %}your meeting “{{ title }}”{% if others %} with {{ others }}{% endif %} has a new time.{% elif kind == "cancellation" %}your meeting “{{ title }}”{% if others %} with {{ others }}{% endif %} was {% if status == "rejected" %}declined{% else %}cancelled{% endif %}.{% else %}a reminder: your meeting “{{ title }}”{% if others %} with {{ others }}{% endif %} starts in {{ starts_in }}.{% endif %}</p>
<p>When: {{ start }} to {{ end }} ({{ time_zone }})</p>
{% if kind != "cancellation" %}{% if join_url %}<p><a href="{{ join_url }}">Join the meeting</a></p>{% else %}<p>Your join link is not included in this email; ask the organiser for a new link.</p>{% endif %}
{% if external_url %}<p>The meeting takes place at <a href="{{ external_url }}">{{ external_url }}</a>.</p>{% endif %}{% endif %}
<p>The attached invitation (invite.ics) {% if kind == "cancellation" %}removes the meeting from{% else %}puts the meeting in{% endif %} your calendar.</p>
</body></html>
"#;

/// What the templates see.
#[derive(Debug, Serialize)]
pub struct TemplateContext {
    /// `confirmation`, `reschedule`, `cancellation` or `reminder`.
    pub kind: &'static str,
    /// The booking's status now (`pending`, `confirmed`, `rejected`, `cancelled`).
    pub status: &'static str,
    /// The booking's title.
    pub title: String,
    /// The recipient's display name.
    pub recipient: String,
    /// The other participants' display names, joined with ", ".
    pub others: String,
    /// Start in the recipient's zone, e.g. `Tuesday 1 September 2026, 14:00`.
    pub start: String,
    /// End time in the recipient's zone, `HH:MM` (with the date when another day).
    pub end: String,
    /// The zone of `start` and `end`: the recipient's `time_zone`, else `UTC`.
    pub time_zone: String,
    /// Start as RFC 3339 UTC.
    pub start_utc: String,
    /// The recipient's own join link; absent when not available.
    pub join_url: Option<String>,
    /// The remote meeting URL of an `external_link` booking.
    pub external_url: Option<String>,
    /// For reminders: the offset in words, e.g. `24 hours`, `10 minutes`.
    pub starts_in: Option<String>,
    /// The booking id.
    pub booking_id: String,
}

/// `secs` in words: `1 day`, `24 hours` stays `24 hours`, `1 hour 30 minutes`, `10 minutes`.
pub fn in_words(secs: i64) -> String {
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    match (h, m) {
        (0, m) => plural(m, "minute"),
        (h, 0) => plural(h, "hour"),
        (h, m) => format!("{} {}", plural(h, "hour"), plural(m, "minute")),
    }
}

/// The templates: built-ins replaced by the files of `dir` of the same names. Errors name the file and the syntax
/// error.
pub fn templates(dir: Option<&std::path::Path>) -> anyhow::Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| if name.ends_with(".html") { AutoEscape::Html } else { AutoEscape::None });
    // Operator templates run on every send: bound their work.
    env.set_fuel(Some(200_000));
    for (name, builtin) in TEMPLATE_NAMES.iter().zip([SUBJECT, BODY_TXT, BODY_HTML]) {
        let source = match dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
            Some(p) => std::fs::read_to_string(&p)
                .map_err(|e| anyhow::anyhow!("[email] templates_dir: {}: {e}", p.display()))?,
            None => builtin.to_string(),
        };
        env.add_template_owned(*name, source).map_err(|e| anyhow::anyhow!("[email] template {name}: {e}"))?;
    }
    Ok(env)
}

/// A time in `tz` (an IANA name; unknown or absent: UTC) in words, and the zone's name.
fn local(unix: i64, tz: Option<&str>) -> (chrono::DateTime<chrono_tz::Tz>, String) {
    let zone: chrono_tz::Tz = tz.and_then(|t| t.parse().ok()).unwrap_or(chrono_tz::UTC);
    let utc = chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default();
    (utc.with_timezone(&zone), zone.name().to_string())
}

/// The template context of `kind` for `to` (a participant of `b`).
pub fn context(
    b: &Booking,
    to: &Participant,
    kind: EmailKind,
    offset_s: Option<i64>,
    join_url: Option<String>,
) -> TemplateContext {
    let (start, zone) = local(b.start_at, to.time_zone.as_deref());
    let (end, _) = local(b.end_at, to.time_zone.as_deref());
    let end_text = if end.date_naive() == start.date_naive() {
        end.format("%H:%M").to_string()
    } else {
        end.format("%A %-d %B %Y, %H:%M").to_string()
    };
    TemplateContext {
        kind: kind.as_str(),
        status: b.status.as_str(),
        title: b.title.clone(),
        recipient: to.display_name.clone(),
        others: b
            .participants
            .iter()
            .filter(|p| p.id != to.id)
            .map(|p| p.display_name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        start: start.format("%A %-d %B %Y, %H:%M").to_string(),
        end: end_text,
        time_zone: zone,
        start_utc: super::api::rfc3339(b.start_at),
        join_url,
        external_url: b.external_url.clone(),
        starts_in: offset_s.map(in_words),
        booking_id: b.id.clone(),
    }
}

/// Composes and sends the messages.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    templates: Environment<'static>,
    public_base: Arc<str>,
    /// The right-hand side of `Message-ID`s: the host of the public URL.
    id_host: String,
}

impl Mailer {
    /// The mailer of `[email]`, with join links under `public_base`. Errors: a template that does not parse, a TLS
    /// set-up that fails.
    pub fn new(cfg: &EmailConfig, public_base: Arc<str>) -> anyhow::Result<Mailer> {
        let builder = match cfg.tls {
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.smtp_host)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.smtp_host)?,
            SmtpTls::Plain => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host),
        };
        let mut builder = builder.port(cfg.smtp_port).timeout(Some(SMTP_TIMEOUT));
        if let Some(user) = &cfg.username {
            let password = cfg.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let id_host = url::Url::parse(&public_base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "duet.invalid".into());
        Ok(Mailer {
            transport: builder.build(),
            from: cfg.from.parse()?,
            reply_to: cfg.reply_to.as_deref().map(str::parse).transpose()?,
            templates: templates(cfg.templates_dir.as_deref())?,
            public_base,
            id_host,
        })
    }

    fn render(&self, name: &str, ctx: &TemplateContext) -> Result<String, String> {
        let t = self.templates.get_template(name).map_err(|e| format!("template {name}: {e}"))?;
        t.render(ctx).map_err(|e| format!("template {name}: {e}"))
    }

    /// The message of outbox row `row` to `to` (a participant of `b`, with an address), at `now` (Unix seconds).
    pub fn compose(
        &self,
        b: &Booking,
        to: &Participant,
        row: &OutboxEmail,
        join_url: Option<String>,
        now: i64,
    ) -> Result<Message, String> {
        let address = to.email.as_deref().ok_or("no address")?;
        let address = address.parse().map_err(|e| format!("address: {e}"))?;
        let ctx = context(b, to, row.kind, row.reminder_offset_s, join_url.clone());
        let subject: String = self.render("subject.txt", &ctx)?.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        let text = self.render("body.txt", &ctx)?;
        let html = self.render("body.html", &ctx)?;
        let recipient = Recipient { participant: to, join_url: join_url.as_deref() };
        let (method, ics) = ics::invitation(b, recipient, &self.public_base, now);
        let ics_type = ContentType::parse(&method.content_type()).map_err(|e| e.to_string())?;
        let mut m = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(Some(to.display_name.clone()), address))
            .subject(subject)
            .message_id(Some(format!("<{}@{}>", row.message_id, self.id_host)))
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str(KIND_HEADER), row.kind.as_str().into()));
        if let Some(r) = &self.reply_to {
            m = m.reply_to(r.clone());
        }
        m.multipart(
            MultiPart::mixed()
                .multipart(MultiPart::alternative_plain_html(text, html))
                .singlepart(Attachment::new("invite.ics".into()).body(ics, ics_type)),
        )
        .map_err(|e| e.to_string())
    }
}

/// Why row `row` is no longer worth sending given the booking as it is now (`None`: send it).
fn stale(row: &OutboxEmail, b: &Booking, p: &Participant, now: i64) -> Option<&'static str> {
    match row.kind {
        EmailKind::Reminder if b.status != Status::Confirmed => Some("booking no longer confirmed"),
        EmailKind::Reminder if p.link_revoked_at.is_some() => Some("link revoked"),
        EmailKind::Reminder if now >= b.start_at => Some("the meeting has started"),
        EmailKind::Confirmation | EmailKind::Reschedule if b.status.is_revoked() => Some("booking cancelled since"),
        _ => None,
    }
}

/// Everything one send needs.
struct Worker {
    store: Store,
    metrics: Metrics,
    mailer: Mailer,
    retry_schedule: Vec<Duration>,
    sealer: Arc<std::sync::RwLock<Arc<LinkSealer>>>,
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Worker {
    async fn handle(&self, row: OutboxEmail) {
        let now = unix_now();
        let outcome = match self.attempt(&row, now).await {
            Ok(()) => EmailOutcome::Sent,
            Err(Failure::Drop(why)) => EmailOutcome::Dropped(why.into()),
            Err(Failure::Permanent(e)) => EmailOutcome::Failed(e),
            Err(Failure::Transient(e)) => {
                match self.retry_schedule.get(usize::try_from(row.attempts).unwrap_or(usize::MAX)) {
                    Some(d) => {
                        let ms = d.as_millis() as f64 * rand::rng().random_range(0.9..=1.1);
                        EmailOutcome::RetryAt(now_ms() + ms as i64, e)
                    }
                    None => EmailOutcome::Failed(e),
                }
            }
        };
        let result = match &outcome {
            EmailOutcome::Sent => "sent",
            EmailOutcome::RetryAt(..) => "retry",
            EmailOutcome::Failed(_) => "failed",
            EmailOutcome::Dropped(_) => "dropped",
        };
        match self.store.finish_email(&row.id, &outcome, unix_now()).await {
            Ok(()) => {
                self.metrics.email_sent.with_label_values(&[result]).inc();
                tracing::info!(target: "booking", email = %row.id, booking = %row.booking_id,
                    participant = %row.participant_id, kind = row.kind.as_str(), result, "email");
            }
            Err(e) => tracing::warn!(target: "booking", email = %row.id, error = %e, "recording an email"),
        }
    }

    async fn attempt(&self, row: &OutboxEmail, now: i64) -> Result<(), Failure> {
        let b = match self.store.booking(Some(&row.tenant_id), &row.booking_id).await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(Failure::Drop("booking gone")),
            Err(e) => return Err(Failure::Transient(e.to_string())),
        };
        let Some(p) = b.participants.iter().find(|p| p.id == row.participant_id) else {
            return Err(Failure::Drop("participant gone"));
        };
        if p.email.is_none() {
            return Err(Failure::Drop("no address"));
        }
        if let Some(why) = stale(row, &b, p, now) {
            return Err(Failure::Drop(why));
        }
        let join_url = match row.kind {
            EmailKind::Cancellation => None,
            _ => {
                let sealer = self.sealer.read().unwrap_or_else(|e| e.into_inner()).clone();
                p.link_token_enc
                    .as_deref()
                    .and_then(|s| sealer.open(&p.id, s))
                    .map(|t| format!("{}/j/{t}", self.mailer.public_base))
            }
        };
        let msg = self.mailer.compose(&b, p, row, join_url, now).map_err(Failure::Permanent)?;
        match self.mailer.transport.send(msg).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(Failure::Permanent(format!("SMTP: {e}"))),
            Err(e) => Err(Failure::Transient(format!("SMTP: {e}"))),
        }
    }
}

/// Why a row was not sent.
enum Failure {
    /// No longer relevant.
    Drop(&'static str),
    /// Retrying cannot help (a 5xx refusal, an address that does not parse, a template error).
    Permanent(String),
    /// Retry later.
    Transient(String),
}

/// The email worker: runs until `shutdown` (see the module doc).
pub async fn run(
    store: Store,
    metrics: Metrics,
    mailer: Mailer,
    retry_schedule: Vec<Duration>,
    sealer: Arc<std::sync::RwLock<Arc<LinkSealer>>>,
    shutdown: CancellationToken,
) {
    match store.release_email_leases(now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "booking", emails = n, "sending again the emails a stop interrupted"),
        Err(e) => tracing::warn!(target: "booking", error = %e, "releasing email leases"),
    }
    let worker = Arc::new(Worker { store: store.clone(), metrics, mailer, retry_schedule, sealer });
    let wake = store.email_wakeup();
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let free = slots.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match store.claim_emails(now_ms(), LEASE.as_millis() as i64, free).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(target: "booking", error = %e, "claiming emails");
                    Vec::new()
                }
            }
        };
        let busy = claimed.len() == free && free > 0;
        for row in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let (worker, wake) = (worker.clone(), wake.clone());
            tasks.spawn(async move {
                worker.handle(row).await;
                drop(permit);
                wake.notify_one();
            });
        }
        if busy {
            continue;
        }
        let started = Instant::now();
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL.saturating_sub(started.elapsed())) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tasks.close();
    // Sends under way finish (bounded); a kill leaves them `sending`, sent again at the next start.
    let _ = tokio::time::timeout(SMTP_TIMEOUT, tasks.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_templates_parse_and_escape_html() {
        let env = templates(None).unwrap();
        let ctx = TemplateContext {
            kind: "reminder",
            status: "confirmed",
            title: "<b>Physio</b> & co".into(),
            recipient: "J. Doe".into(),
            others: "Dr. Ana".into(),
            start: "Tuesday 1 September 2026, 14:00".into(),
            end: "14:30".into(),
            time_zone: "Europe/Berlin".into(),
            start_utc: "2026-09-01T12:00:00Z".into(),
            join_url: Some("https://calls.example/j/abc\"x".into()),
            external_url: None,
            starts_in: Some(in_words(600)),
            booking_id: "bkg_1".into(),
        };
        let html = env.get_template("body.html").unwrap().render(&ctx).unwrap();
        assert!(html.contains("&lt;b&gt;Physio&lt;&#x2f;b&gt; &amp; co"), "{html}");
        assert!(html.contains("href=\"https:&#x2f;&#x2f;calls.example&#x2f;j&#x2f;abc&quot;x\""), "{html}");
        let text = env.get_template("body.txt").unwrap().render(&ctx).unwrap();
        assert!(text.contains("<b>Physio</b> & co") && text.contains("starts in 10 minutes"), "{text}");
        let subject = env.get_template("subject.txt").unwrap().render(&ctx).unwrap();
        assert_eq!(subject, "Reminder: <b>Physio</b> & co in 10 minutes");
        assert_eq!(in_words(86_400), "24 hours");
        assert_eq!(in_words(5400), "1 hour 30 minutes");
        assert_eq!(in_words(60), "1 minute");
    }
}
