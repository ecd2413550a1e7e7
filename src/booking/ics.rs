//! iCalendar invitations per recipient (RFC 5545 objects, RFC 5546 iTIP methods): what
//! `GET /v1/bookings/{id}/participants/{pid}/invite.ics`, `GET /v1/join/{link_token}/invite.ics` and the emails'
//! attachments carry.
//!
//! A small serializer of its own rather than a crate: the object is one `VEVENT` with a dozen properties, and the
//! rules that matter (CRLF, folding at 75 octets without splitting a UTF-8 sequence, TEXT escaping, `METHOD:CANCEL`
//! for cancellations, cal.com's bug #29706) are checked by the unit tests below and by an independent parser (Python
//! `icalendar`) in `tests/email.rs`.
//!
//! One participant's file carries only that participant's own join link: the other participant appears as
//! `ORGANIZER` or `ATTENDEE` (name, and address when known), never with a link.

use sha2::Digest;
use time::OffsetDateTime;

use super::store::{Booking, Kind, Participant, Status};
use super::window::Role;

/// `PRODID` (RFC 5545 §3.7.3).
pub const PRODID: &str = "-//Duet//booking//EN";

/// Longest content line in octets, CRLF excluded (RFC 5545 §3.1).
pub const MAX_LINE_OCTETS: usize = 75;

/// The iTIP method of an invitation (RFC 5546 §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A new or changed event (`pending` or `confirmed` booking).
    Request,
    /// A cancelled event (`cancelled` or `rejected` booking): the calendar removes it.
    Cancel,
}

impl Method {
    /// `REQUEST` or `CANCEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Request => "REQUEST",
            Method::Cancel => "CANCEL",
        }
    }

    /// The method for a booking in status `s`: `CANCEL` for `cancelled` and `rejected`, else `REQUEST`.
    pub fn of(s: Status) -> Method {
        if s.is_revoked() { Method::Cancel } else { Method::Request }
    }

    /// The media type of a file with this method: `text/calendar; charset=utf-8; method=…` (RFC 5546 §6; the
    /// parameter is what makes mail clients apply a cancellation).
    pub fn content_type(self) -> String {
        format!("text/calendar; charset=utf-8; method={}", self.as_str())
    }
}

/// `UID` of a booking's event: `<booking id>@<host>`, stable for the booking's life (RFC 5545 §3.8.4.7), where
/// `host` is the host of the daemon's public URL.
pub fn uid(booking: &str, public_base: &str) -> String {
    let host = url::Url::parse(public_base).ok().and_then(|u| u.host_str().map(str::to_string));
    format!("{booking}@{}", host.unwrap_or_else(|| "duet.invalid".into()))
}

/// A UTC DATE-TIME in form 2 (RFC 5545 §3.3.5): `19980119T070000Z`, from Unix seconds.
pub fn utc_date_time(unix: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A TEXT value escaped (RFC 5545 §3.3.11): `\` `;` `,` get a backslash, a line break (CRLF, LF or CR) becomes
/// `\n`, other control characters (not allowed in TEXT) are dropped.
pub fn escape_text(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\\n");
            }
            '\n' => out.push_str("\\n"),
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A parameter value (RFC 5545 §3.2): DQUOTE and control characters removed (a param-value cannot carry them), then
/// quoted when it holds `:`, `;` or `,`.
pub fn param_value(v: &str) -> String {
    let clean: String = v.chars().filter(|c| *c != '"' && !c.is_control()).collect();
    if clean.contains([':', ';', ',']) { format!("\"{clean}\"") } else { clean }
}

/// One content line folded (RFC 5545 §3.1): at most [`MAX_LINE_OCTETS`] octets per physical line, continuation lines
/// starting with one space, never splitting a UTF-8 sequence; each physical line ends with CRLF.
pub fn fold(line: &str, out: &mut String) {
    let mut budget = MAX_LINE_OCTETS;
    let mut used = 0;
    for c in line.chars() {
        let n = c.len_utf8();
        if used + n > budget {
            out.push_str("\r\n ");
            // The leading space counts towards the 75 octets of the continuation line.
            budget = MAX_LINE_OCTETS - 1;
            used = 0;
        }
        out.push(c);
        used += n;
    }
    out.push_str("\r\n");
}

/// The calendar address of a participant: `mailto:<email>` when known, else a `urn:uuid:` derived from the
/// participant id (RFC 5545 §3.3.3 wants a URI; RFC 4122 §3 URN form).
fn cal_address(p: &Participant) -> String {
    match &p.email {
        Some(e) => format!("mailto:{e}"),
        None => {
            let hex: String = p.id.chars().filter(char::is_ascii_hexdigit).collect();
            match uuid::Uuid::try_parse(hex.get(hex.len().saturating_sub(32)..).unwrap_or_default()) {
                Ok(u) => format!("urn:uuid:{}", u.hyphenated()),
                Err(_) => {
                    // Not an id Duet made: a stable UUID (version 8, RFC 9562 §5.8) from its SHA-256.
                    let d = sha2::Sha256::digest(p.id.as_bytes());
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&d[..16]);
                    format!("urn:uuid:{}", uuid::Builder::from_custom_bytes(b).into_uuid().hyphenated())
                }
            }
        }
    }
}

/// What one recipient's invitation says beyond the booking.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    /// The recipient (one of the booking's participants).
    pub participant: &'a Participant,
    /// The recipient's own join link, `<public_base>/j/<link token>`; `None` when it is not available (revoked, or
    /// created before links were kept encrypted): the description says so.
    pub join_url: Option<&'a str>,
}

/// The invitation of booking `b` for `to`, generated at `now` (Unix seconds, the `DTSTAMP`), with `UID` from
/// [`uid`]: the method ([`Method::of`] the booking's status) and the iCalendar text (CRLF, folded).
pub fn invitation(b: &Booking, to: Recipient<'_>, public_base: &str, now: i64) -> (Method, String) {
    let method = Method::of(b.status);
    let status = match b.status {
        Status::Pending => "TENTATIVE",
        Status::Confirmed => "CONFIRMED",
        Status::Rejected | Status::Cancelled => "CANCELLED",
    };
    let mut lines: Vec<String> = vec![
        "BEGIN:VCALENDAR".into(),
        "VERSION:2.0".into(),
        format!("PRODID:{PRODID}"),
        "CALSCALE:GREGORIAN".into(),
        format!("METHOD:{}", method.as_str()),
        "BEGIN:VEVENT".into(),
        format!("UID:{}", uid(&b.id, public_base)),
        format!("SEQUENCE:{}", b.sequence.max(0)),
        format!("DTSTAMP:{}", utc_date_time(now)),
        format!("DTSTART:{}", utc_date_time(b.start_at)),
        format!("DTEND:{}", utc_date_time(b.end_at)),
        format!("SUMMARY:{}", escape_text(&b.title)),
    ];
    let mut description = String::new();
    match b.status {
        Status::Cancelled => description.push_str("This meeting was cancelled.\n"),
        Status::Rejected => description.push_str("This meeting request was declined.\n"),
        Status::Pending => description.push_str("This meeting awaits confirmation.\n"),
        Status::Confirmed => {}
    }
    match (to.join_url, b.status.is_revoked()) {
        (_, true) => {}
        (Some(url), false) => description.push_str(&format!("Join: {url}\n")),
        (None, false) => description
            .push_str("Your join link is not included in this invitation; ask the organiser for a new link.\n"),
    }
    if b.kind == Kind::ExternalLink
        && let Some(u) = &b.external_url
    {
        description.push_str(&format!("The meeting takes place at {u}\n"));
    }
    if !description.is_empty() {
        lines.push(format!("DESCRIPTION:{}", escape_text(description.trim_end())));
    }
    let location = match (b.kind, &b.external_url) {
        (Kind::ExternalLink, Some(u)) => Some(u.as_str()),
        _ => to.join_url,
    };
    if let Some(l) = location {
        lines.push(format!("LOCATION:{}", escape_text(l)));
    }
    if let Some(u) = to.join_url
        && !b.status.is_revoked()
    {
        lines.push(format!("URL:{u}"));
    }
    if let Some(h) = b.participants.iter().find(|p| p.role == Role::Host) {
        lines.push(format!("ORGANIZER;CN={}:{}", param_value(&h.display_name), cal_address(h)));
    }
    for g in b.participants.iter().filter(|p| p.role != Role::Host) {
        lines.push(format!(
            "ATTENDEE;CN={};ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=FALSE:{}",
            param_value(&g.display_name),
            cal_address(g)
        ));
    }
    lines.push(format!("STATUS:{status}"));
    lines.push("TRANSP:OPAQUE".into());
    lines.push("END:VEVENT".into());
    lines.push("END:VCALENDAR".into());
    let mut out = String::new();
    for l in &lines {
        fold(l, &mut out);
    }
    (method, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unfold(s: &str) -> String {
        s.replace("\r\n ", "")
    }

    #[test]
    fn folds_at_75_octets_without_splitting_utf8() {
        // 'é' is two octets, '€' three, '🎉' four: every split point is exercised.
        for filler in ["é", "€", "🎉", "a"] {
            let line = format!("SUMMARY:{}", filler.repeat(120));
            let mut out = String::new();
            fold(&line, &mut out);
            assert!(out.ends_with("\r\n"));
            let physical: Vec<&str> = out.trim_end_matches("\r\n").split("\r\n").collect();
            assert!(physical.len() > 1);
            for (i, p) in physical.iter().enumerate() {
                assert!(p.len() <= MAX_LINE_OCTETS, "{filler}: line {i} has {} octets", p.len());
                if i > 0 {
                    assert!(p.starts_with(' '));
                }
                // Each physical line is valid UTF-8 on its own (a &str cannot be otherwise; the byte count proves
                // nothing was cut), and the lines are as full as the character width allows.
                if i + 1 < physical.len() {
                    assert!(p.len() > MAX_LINE_OCTETS - filler.len(), "{filler}: line {i} is short: {}", p.len());
                }
            }
            assert_eq!(unfold(&out).trim_end_matches("\r\n"), line);
        }
        let mut short = String::new();
        fold("VERSION:2.0", &mut short);
        assert_eq!(short, "VERSION:2.0\r\n");
        let mut exact = String::new();
        fold(&"x".repeat(75), &mut exact);
        assert_eq!(exact, format!("{}\r\n", "x".repeat(75)));
        let mut over = String::new();
        fold(&"x".repeat(76), &mut over);
        assert_eq!(over, format!("{}\r\n x\r\n", "x".repeat(75)));
    }

    #[test]
    fn escapes_text() {
        assert_eq!(escape_text(r"a\b;c,d"), r"a\\b\;c\,d");
        assert_eq!(escape_text("one\ntwo\r\nthree\rfour"), r"one\ntwo\nthree\nfour");
        assert_eq!(escape_text("bell\u{7}tab\t:colon"), "belltab\t:colon");
        assert_eq!(param_value("Dr. Ana"), "Dr. Ana");
        assert_eq!(param_value("Doe, \"J\"; MD: x"), "\"Doe, J; MD: x\"");
    }

    #[test]
    fn utc_times_in_form_2() {
        assert_eq!(utc_date_time(0), "19700101T000000Z");
        assert_eq!(utc_date_time(1_788_264_000), "20260901T120000Z");
        assert_eq!(uid("bkg_1", "https://calls.example:8443"), "bkg_1@calls.example");
    }

    fn booking(status: Status) -> Booking {
        let p = |id: &str, role, name: &str, email: Option<&str>| Participant {
            id: id.into(),
            role,
            reference: None,
            display_name: name.into(),
            first_joined_at: None,
            email: email.map(str::to_string),
            time_zone: None,
            locale: None,
            link_epoch: 0,
            link_revoked_at: None,
            link_token_enc: None,
        };
        Booking {
            id: "bkg_0123456789abcdef0123456789abcdef".into(),
            tenant_id: "t".into(),
            title: "Physio, follow-up; room 2 — Ünïcödé ".repeat(3),
            external_id: None,
            start_at: 1_788_264_000,
            end_at: 1_788_265_800,
            window: super::super::window::JoinWindow {
                host_opens_at: 0,
                opens_at: 0,
                join_cutoff_at: 0,
                hard_end_at: 0,
            },
            status,
            sequence: 3,
            created_at: 0,
            updated_at: 0,
            buffer_before_s: 0,
            buffer_after_s: 0,
            participants: vec![
                p("par_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Role::Host, "Dr. Ana, MD", Some("ana@clinic.example")),
                p("par_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Role::Guest, "J. Doe", None),
            ],
            kind: Kind::Hosted,
            external_url: None,
            metadata: None,
            join_policy: Default::default(),
            max_hard_end_at: 0,
            rescheduled_at: None,
            extended_s: 0,
            event_type_id: None,
            note: None,
        }
    }

    #[test]
    fn an_invitation_has_crlf_lines_its_method_and_only_its_link() {
        let b = booking(Status::Pending);
        let to = Recipient { participant: &b.participants[1], join_url: Some("https://calls.example/j/GUEST") };
        let (m, text) = invitation(&b, to, "https://calls.example", 1_788_000_000);
        assert_eq!(m, Method::Request);
        assert!(text.ends_with("END:VCALENDAR\r\n"));
        assert!(!text.replace("\r\n", "").contains('\n'), "bare LF");
        assert!(text.split("\r\n").all(|l| l.len() <= MAX_LINE_OCTETS));
        let u = unfold(&text);
        for want in [
            "METHOD:REQUEST",
            "UID:bkg_0123456789abcdef0123456789abcdef@calls.example",
            "SEQUENCE:3",
            "DTSTAMP:20260829T104000Z",
            "DTSTART:20260901T120000Z",
            "DTEND:20260901T123000Z",
            "STATUS:TENTATIVE",
            "URL:https://calls.example/j/GUEST",
            "LOCATION:https://calls.example/j/GUEST",
            "ORGANIZER;CN=\"Dr. Ana, MD\":mailto:ana@clinic.example",
            "ATTENDEE;CN=J. Doe;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=FALSE:urn:uuid:bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb",
            "SUMMARY:Physio\\, follow-up\\; room 2",
        ] {
            assert!(u.contains(want), "{want} missing from\n{u}");
        }
        let (m, text) = invitation(&booking(Status::Cancelled), to, "https://calls.example", 1_788_000_000);
        assert_eq!(m, Method::Cancel);
        assert_eq!(m.content_type(), "text/calendar; charset=utf-8; method=CANCEL");
        let u = unfold(&text);
        assert!(u.contains("METHOD:CANCEL") && u.contains("STATUS:CANCELLED"));
        let mut ext = booking(Status::Confirmed);
        ext.kind = Kind::ExternalLink;
        ext.external_url = Some("https://meet.example/abc-def".into());
        let u = unfold(&invitation(&ext, to, "https://calls.example", 0).1);
        assert!(u.contains("LOCATION:https://meet.example/abc-def"), "{u}");
        assert!(u.contains("URL:https://calls.example/j/GUEST"), "{u}");
        let none = Recipient { participant: &b.participants[1], join_url: None };
        let u = unfold(&invitation(&booking(Status::Confirmed), none, "https://calls.example", 0).1);
        assert!(u.contains("STATUS:CONFIRMED") && !u.contains("URL:") && u.contains("not included"));
    }
}
