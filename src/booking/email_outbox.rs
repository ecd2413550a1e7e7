//! The durable email outbox (`email_outbox`, migration 0009): rows written in the transaction of the booking change
//! they report, claimed by the email worker ([`super::email`]) with a lease, as the webhook outbox
//! ([`super::webhooks`]).
//!
//! What is queued, per participant with an address (README, "Email and calendar"):
//! - `confirmation`: on create of a `confirmed` booking, and on confirm of a `pending` one; with the reminders;
//! - `reschedule`: on a change of the times (`PATCH`); the unsent reminders are replaced by ones at the new times;
//! - `cancellation`: on cancel and reject; the unsent reminders are deleted;
//! - `reminder`: one row per `[email] reminders` offset whose instant `start - offset` is still ahead, `confirmed`
//!   bookings only.
//!
//! A row holds no message text: the worker renders it when it sends (the booking as it is then, the link decrypted
//! then), so a rotated link is mailed as the new one and a revoked participant gets no reminder.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::store::{Booking, Status, Store, StoreError};
use super::tokens;

/// What the store queues when email is on ([`Store::with_email`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailPlan {
    /// Reminder offsets before the start, seconds.
    pub reminders_s: Vec<i64>,
}

/// The kind of an outbox email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    /// The booking is confirmed: the invitation (`METHOD:REQUEST`).
    Confirmation,
    /// The times changed: the updated invitation (`METHOD:REQUEST`, higher `SEQUENCE`).
    Reschedule,
    /// Cancelled or rejected: `METHOD:CANCEL`.
    Cancellation,
    /// A reminder before the start.
    Reminder,
}

impl EmailKind {
    /// Stored form: `confirmation`, `reschedule`, `cancellation`, `reminder`.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Confirmation => "confirmation",
            EmailKind::Reschedule => "reschedule",
            EmailKind::Cancellation => "cancellation",
            EmailKind::Reminder => "reminder",
        }
    }

    fn parse(s: &str) -> EmailKind {
        match s {
            "confirmation" => EmailKind::Confirmation,
            "reschedule" => EmailKind::Reschedule,
            "cancellation" => EmailKind::Cancellation,
            // The CHECK constraint allows only the four kinds.
            _ => EmailKind::Reminder,
        }
    }
}

/// A claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxEmail {
    /// `eml_…`.
    pub id: String,
    /// The `Message-ID` local part (the same on every attempt).
    pub message_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Booking.
    pub booking_id: String,
    /// Recipient participant.
    pub participant_id: String,
    /// Kind.
    pub kind: EmailKind,
    /// For reminders: the offset before the start, seconds.
    pub reminder_offset_s: Option<i64>,
    /// Attempts so far (failed ones; the one under way not counted).
    pub attempts: i64,
    /// Due instant, Unix milliseconds.
    pub send_at_ms: i64,
}

/// How an attempt ended ([`Store::finish_email`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailOutcome {
    /// The SMTP server accepted the message.
    Sent,
    /// Failed; try again at this Unix millisecond.
    RetryAt(i64, String),
    /// Failed and the retry schedule is used up.
    Failed(String),
    /// Not sent: no longer relevant (the reason is logged in `last_error`).
    Dropped(String),
}

const OUTBOX_COLUMNS: &str =
    "id, message_id, tenant_id, booking_id, participant_id, kind, reminder_offset_s, attempts, send_at_ms";

fn outbox_from_row(r: &AnyRow) -> Result<OutboxEmail, StoreError> {
    let kind: String = r.try_get("kind")?;
    Ok(OutboxEmail {
        id: r.try_get("id")?,
        message_id: r.try_get("message_id")?,
        tenant_id: r.try_get("tenant_id")?,
        booking_id: r.try_get("booking_id")?,
        participant_id: r.try_get("participant_id")?,
        kind: EmailKind::parse(&kind),
        reminder_offset_s: r.try_get("reminder_offset_s")?,
        attempts: r.try_get("attempts")?,
        send_at_ms: r.try_get("send_at_ms")?,
    })
}

/// Inserts one pending row.
async fn insert(
    tx: &mut Transaction<'_, Any>,
    b: &Booking,
    participant: &str,
    kind: EmailKind,
    offset_s: Option<i64>,
    send_at_ms: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO email_outbox (id, message_id, tenant_id, booking_id, participant_id, kind, reminder_offset_s, \
         status, attempts, send_at_ms, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9)",
    )
    .bind(tokens::new_id("eml"))
    .bind(tokens::new_id("msg"))
    .bind(&b.tenant_id)
    .bind(&b.id)
    .bind(participant)
    .bind(kind.as_str())
    .bind(offset_s)
    .bind(send_at_ms)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// This store with email on: changes queue emails by `plan` (the daemon calls it when `[email]` is set).
    pub fn with_email(mut self, plan: EmailPlan) -> Store {
        self.email = Some(std::sync::Arc::new(plan));
        self
    }

    /// Wakes the email worker (after a commit that queued emails).
    pub fn wake_email(&self) {
        self.email_wake.notify_one();
    }

    /// The notification [`Store::wake_email`] signals.
    pub fn email_wakeup(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.email_wake.clone()
    }

    /// The emails of a booking just inserted inside `tx`: a confirmation (and reminders) when it is `confirmed`.
    pub(super) async fn enqueue_created_emails(
        &self,
        tx: &mut Transaction<'_, Any>,
        b: &Booking,
    ) -> Result<u64, StoreError> {
        if b.status != Status::Confirmed {
            return Ok(0);
        }
        self.enqueue_emails(tx, b, EmailKind::Confirmation, b.created_at).await
    }

    /// Queues the `kind` emails of booking `b` (as it is after the change, inside `tx`) at `now` (Unix seconds): one
    /// row per participant with an address, due now, and the reminder rows (see the module doc). Returns how many
    /// rows are due now (0 when email is off).
    pub(super) async fn enqueue_emails(
        &self,
        tx: &mut Transaction<'_, Any>,
        b: &Booking,
        kind: EmailKind,
        now: i64,
    ) -> Result<u64, StoreError> {
        let Some(plan) = self.email.clone() else { return Ok(0) };
        // Unsent reminders follow the booking: replaced on a change, gone on a cancellation.
        sqlx::query("DELETE FROM email_outbox WHERE booking_id = $1 AND kind = 'reminder' AND status = 'pending'")
            .bind(&b.id)
            .execute(&mut **tx)
            .await?;
        let recipients: Vec<&str> = b
            .participants
            .iter()
            .filter(|p| p.email.is_some() && p.link_revoked_at.is_none())
            .map(|p| p.id.as_str())
            .collect();
        let now_ms = now.saturating_mul(1000);
        for p in &recipients {
            insert(tx, b, p, kind, None, now_ms, now).await?;
        }
        if b.status == Status::Confirmed && kind != EmailKind::Cancellation {
            for offset in &plan.reminders_s {
                let at = b.start_at - offset;
                if at <= now {
                    continue;
                }
                for p in &recipients {
                    insert(tx, b, p, EmailKind::Reminder, Some(*offset), at.saturating_mul(1000), now).await?;
                }
            }
        }
        Ok(recipients.len() as u64)
    }

    /// Makes every row left `sending` pending again, due now (on start: the sends a crash interrupted are tried
    /// again, with the same `Message-ID`). Returns how many.
    pub async fn release_email_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE email_outbox SET status = 'pending', send_at_ms = $1, lease_until_ms = NULL WHERE status = 'sending'",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Claims up to `max` rows due at `now_ms` (pending and due, or `sending` with an expired lease), oldest due
    /// first: each becomes `sending` until `now_ms + lease_ms`, by one conditional UPDATE per row, so two workers
    /// never hold one row at once.
    pub async fn claim_emails(&self, now_ms: i64, lease_ms: i64, max: usize) -> Result<Vec<OutboxEmail>, StoreError> {
        let ids: Vec<String> = sqlx::query(
            "SELECT id FROM email_outbox WHERE (status = 'pending' AND send_at_ms <= $1) \
             OR (status = 'sending' AND lease_until_ms <= $1) ORDER BY send_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(max as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in ids {
            let n = sqlx::query(
                "UPDATE email_outbox SET status = 'sending', lease_until_ms = $1 WHERE id = $2 \
                 AND ((status = 'pending' AND send_at_ms <= $3) OR (status = 'sending' AND lease_until_ms <= $3))",
            )
            .bind(now_ms + lease_ms)
            .bind(&id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n != 1 {
                continue; // another worker got it first
            }
            let row = sqlx::query(&format!("SELECT {OUTBOX_COLUMNS} FROM email_outbox WHERE id = $1"))
                .bind(&id)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(r) = row {
                out.push(outbox_from_row(&r)?);
            }
        }
        Ok(out)
    }

    /// Records how the attempt at row `id` ended, at `now` (Unix seconds).
    pub async fn finish_email(&self, id: &str, outcome: &EmailOutcome, now: i64) -> Result<(), StoreError> {
        let (status, next_ms, error, attempted): (&str, Option<i64>, Option<&str>, i64) = match outcome {
            EmailOutcome::Sent => ("sent", None, None, 1),
            EmailOutcome::RetryAt(ms, e) => ("pending", Some(*ms), Some(e), 1),
            EmailOutcome::Failed(e) => ("failed", None, Some(e), 1),
            EmailOutcome::Dropped(e) => ("dropped", None, Some(e), 0),
        };
        sqlx::query(
            "UPDATE email_outbox SET status = $1, send_at_ms = COALESCE($2, send_at_ms), last_error = $3, \
             attempts = attempts + $4, lease_until_ms = NULL, \
             finished_at = CASE WHEN $1 = 'pending' THEN NULL ELSE $5 END WHERE id = $6",
        )
        .bind(status)
        .bind(next_ms)
        .bind(error)
        .bind(attempted)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Rows not yet sent, failed or dropped (pending or sending), every tenant.
    pub async fn email_backlog(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM email_outbox WHERE status IN ('pending', 'sending')")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}
