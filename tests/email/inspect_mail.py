"""Parses the messages smtp_sink.py wrote, with Python's own `email` package and the `icalendar` package (an
independent iCalendar parser), and prints them as one JSON array for tests/email.rs.

Usage: python3 inspect_mail.py <directory>
       python3 inspect_mail.py --ics <file>    (one iCalendar file: the calendar fields only)

Per message: file, envelope recipients, Message-ID, To, Subject, the X-Duet-Email-Kind header, the text and HTML
parts, and the attached invitation: its Content-Type and `method` parameter, whether every line ends with CRLF and
has at most 75 octets, and the parsed calendar (METHOD, UID, SEQUENCE, DTSTART/DTEND as RFC 3339 UTC, STATUS, URL,
LOCATION, DESCRIPTION, ORGANIZER, ATTENDEE).
"""

import email
import email.policy
import json
import os
import sys

import icalendar


def calendar(raw):
    lines = raw.split(b"\r\n")
    out = {
        "crlf": raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b""),
        "max_octets": max(len(line) for line in lines),
    }
    cal = icalendar.Calendar.from_ical(raw)
    out["method"] = str(cal.get("method"))
    events = list(cal.walk("VEVENT"))
    out["events"] = len(events)
    ev = events[0]
    out["uid"] = str(ev.get("uid"))
    out["sequence"] = int(ev.get("sequence"))
    out["dtstart"] = ev.decoded("dtstart").strftime("%Y-%m-%dT%H:%M:%SZ")
    out["dtend"] = ev.decoded("dtend").strftime("%Y-%m-%dT%H:%M:%SZ")
    out["dtstamp_utc"] = ev.decoded("dtstamp").utcoffset().total_seconds() == 0
    out["status"] = str(ev.get("status"))
    out["url"] = str(ev.get("url")) if ev.get("url") is not None else None
    out["location"] = str(ev.get("location")) if ev.get("location") is not None else None
    out["description"] = str(ev.get("description")) if ev.get("description") is not None else ""
    out["summary"] = str(ev.get("summary"))
    org = ev.get("organizer")
    out["organizer"] = str(org) if org is not None else None
    out["organizer_cn"] = str(org.params.get("CN")) if org is not None else None
    att = ev.get("attendee")
    att = att if isinstance(att, list) else ([att] if att is not None else [])
    out["attendees"] = [str(a) for a in att]
    return out


def message(path):
    base = path[: -len(".eml")]
    with open(path, "rb") as f:
        raw = f.read()
    with open(base + ".json") as f:
        envelope = json.load(f)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out = {
        "file": os.path.basename(path),
        "rcpt_tos": envelope["rcpt_tos"],
        "message_id": str(msg["Message-ID"]),
        "to": str(msg["To"]),
        "subject": str(msg["Subject"]),
        "kind": str(msg["X-Duet-Email-Kind"]),
        "text": None,
        "html": None,
        "ics": None,
    }
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "text/plain":
            out["text"] = part.get_content()
        elif ctype == "text/html":
            out["html"] = part.get_content()
        elif ctype == "text/calendar":
            ics = calendar(part.get_payload(decode=True))
            ics["content_type"] = str(part["Content-Type"])
            ics["method_param"] = part.get_param("method")
            ics["filename"] = part.get_filename()
            out["ics"] = ics
    return out


def main():
    if sys.argv[1] == "--ics":
        with open(sys.argv[2], "rb") as f:
            print(json.dumps(calendar(f.read())))
        return
    directory = sys.argv[1]
    names = sorted(n for n in os.listdir(directory) if n.endswith(".eml"))
    print(json.dumps([message(os.path.join(directory, n)) for n in names]))


if __name__ == "__main__":
    main()
