//! Free slots of an event type: the start instants a guest may book, computed from a host's availability schedule,
//! the event type's rules, the host's busy intervals and `now` (no IO, no clock).
//!
//! # The rules
//! A start instant `t` is a slot when all of these hold:
//! 1. **Availability.** `t` is generated from an interval `[start, end)` of the local date `d` in the schedule's time
//!    zone: the date override of `d` if there is one (no intervals: unavailable all day), else the weekly rules of
//!    `d`'s day of week. Candidates are the local wall times `start`, `start + slot_interval`, … before `end`
//!    (cal.com steps from the interval's start the same way), each converted to an instant with the zone's rules, and
//!    `[t, t + duration)` lies within the interval converted to instants.
//! 2. **Busy.** `[t - buffer_before, t + duration + buffer_after)` intersects no busy interval (an existing booking's
//!    `[start_at - buffer_before_s, end_at + buffer_after_s)`, [`crate::booking::store::Booking::blocked`]); touching
//!    intervals do not intersect, the same half-open rule as the database's `bookings_host_no_overlap`.
//! 3. **Minimum notice and horizon.** `now + minimum_notice <= t <= now + horizon`.
//! 4. **Maximum per day.** Fewer than `max_per_day` counted bookings start on the local date `d` (schedule zone).
//! 5. **Asked range.** `from <= t < to`.
//!
//! # Daylight saving time
//! Local times are converted with the IANA rules of `chrono-tz`:
//! - a wall time that does not exist (in the spring-forward gap, e.g. 02:30 in Europe/Berlin on 2027-03-28) is
//!   skipped; an interval boundary inside a gap stands for the instant the gap ends, so an interval 01:00-04:00 on
//!   that day is two real hours long;
//! - a wall time that occurs twice (in the fall-back overlap, e.g. 02:30 in Europe/Berlin on 2027-10-31) is offered
//!   once, at its **first** occurrence (the earlier instant, still on summer time). An interval's start boundary in
//!   the overlap is its first occurrence and its end boundary its last, so an interval never loses real time.
//!
//! Each wall time of a day is therefore offered at most once, and the slots of a day follow the wall clock, as a
//! person reading the schedule expects.

use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

/// Minutes in a day: the largest interval end (`"24:00"`).
pub const MINUTES_PER_DAY: u16 = 1440;

/// An interval of local wall time within one day, `[start, end)` in minutes since local midnight,
/// `0 <= start < end <= 1440` (an end of 1440 is written `"24:00"`: the next day's midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalInterval {
    /// Minutes since local midnight, 0-1439.
    pub start: u16,
    /// Minutes since local midnight, `start + 1` to 1440.
    pub end: u16,
}

/// Why an interval was refused by [`LocalInterval::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntervalError {
    /// `start` is not `HH:MM` from `00:00` to `23:59`.
    #[error("`start` must be a local time HH:MM from 00:00 to 23:59")]
    BadStart,
    /// `end` is not `HH:MM` from `00:01` to `24:00`.
    #[error("`end` must be a local time HH:MM from 00:01 to 24:00")]
    BadEnd,
    /// `end` is not after `start`.
    #[error("`end` must be after `start`")]
    Empty,
}

impl LocalInterval {
    /// Parses `"HH:MM"` boundaries (`end` may be `"24:00"`). Errors: [`IntervalError`].
    pub fn parse(start: &str, end: &str) -> Result<LocalInterval, IntervalError> {
        let s = parse_hhmm(start).filter(|m| *m < MINUTES_PER_DAY).ok_or(IntervalError::BadStart)?;
        let e = parse_hhmm(end).filter(|m| *m > 0).ok_or(IntervalError::BadEnd)?;
        if e <= s {
            return Err(IntervalError::Empty);
        }
        Ok(LocalInterval { start: s, end: e })
    }

    /// Whether two intervals of one day share a minute (touching ones, `a.end == b.start`, do not).
    pub fn overlaps(&self, other: &LocalInterval) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Minutes since midnight of `"HH:MM"` (two digits each, `00:00` to `24:00`); `None` for anything else.
pub fn parse_hhmm(v: &str) -> Option<u16> {
    let b = v.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
        return None;
    }
    let h = u16::from(b[0] - b'0') * 10 + u16::from(b[1] - b'0');
    let m = u16::from(b[3] - b'0') * 10 + u16::from(b[4] - b'0');
    match (h, m) {
        (24, 0) => Some(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// `"HH:MM"` of minutes since midnight (1440 is `"24:00"`).
pub fn format_hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// A host's availability: weekly rules and date overrides in one IANA time zone (cal.com's `Schedule` with its
/// `Availability` rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Availability {
    /// The zone the local times and dates are in.
    pub time_zone: Tz,
    /// The intervals of each day of the week, Monday first (`Weekday::num_days_from_monday`), sorted, not
    /// overlapping.
    pub weekly: [Vec<LocalInterval>; 7],
    /// Dates whose intervals replace the weekly ones (empty: unavailable all day), sorted, not overlapping.
    pub overrides: BTreeMap<NaiveDate, Vec<LocalInterval>>,
}

impl Availability {
    /// The intervals of local date `d`: its override if it has one, else its day of week's rules.
    pub fn intervals_on(&self, d: NaiveDate) -> &[LocalInterval] {
        match self.overrides.get(&d) {
            Some(v) => v,
            None => &self.weekly[d.weekday().num_days_from_monday() as usize],
        }
    }
}

/// The rules of an event type that shape its slots (all durations in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRules {
    /// Length of a booking, > 0.
    pub duration_s: i64,
    /// Step between candidate wall times within an interval, > 0 (the event type's `slot_interval`, default the
    /// duration).
    pub interval_s: i64,
    /// The host is kept free this long before a booking, >= 0.
    pub buffer_before_s: i64,
    /// The host is kept free this long after a booking, >= 0.
    pub buffer_after_s: i64,
    /// Earliest start counted from `now`, >= 0.
    pub minimum_notice_s: i64,
    /// Latest start counted from `now` (the booking horizon), >= 0.
    pub horizon_s: i64,
    /// At most this many counted bookings start on one local date of the schedule; `None`: no limit.
    pub max_per_day: Option<u32>,
}

/// What a slot computation looks at besides the schedule and the rules (Unix seconds throughout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotQuery {
    /// First start asked for (inclusive).
    pub from: i64,
    /// End of the asked range (exclusive).
    pub to: i64,
    /// The clock, read once by the caller.
    pub now: i64,
}

/// A free start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    /// The start, Unix seconds.
    pub start_at: i64,
    /// `start_at + duration`, Unix seconds.
    pub end_at: i64,
    /// The local date of the schedule the slot belongs to (the date of its interval).
    pub schedule_date: NaiveDate,
}

/// The free slots of `rules` under `availability` in `q`, sorted by start, each start once.
///
/// `busy` are the host's blocked intervals `[start, end)` (Unix seconds, buffers of the existing bookings included,
/// in any order, possibly overlapping); `counted_starts` are the starts of the bookings that count toward
/// `max_per_day` (Unix seconds). Rules: see the module documentation. Never panics; an empty or reversed range gives
/// no slots, and at most 400 local dates are looked at (callers bound the range well below that).
pub fn free_slots(
    availability: &Availability,
    rules: &SlotRules,
    busy: &[(i64, i64)],
    counted_starts: &[i64],
    q: SlotQuery,
) -> Vec<Slot> {
    let tz = availability.time_zone;
    let earliest = q.from.max(q.now.saturating_add(rules.minimum_notice_s));
    let latest = q.to.saturating_sub(1).min(q.now.saturating_add(rules.horizon_s));
    if rules.duration_s <= 0 || rules.interval_s <= 0 || latest < earliest {
        return Vec::new();
    }
    let busy = merge(busy);
    let mut per_day: HashMap<NaiveDate, u32> = HashMap::new();
    for &s in counted_starts {
        if let Some(d) = local_date(tz, s) {
            *per_day.entry(d).or_default() += 1;
        }
    }
    let (Some(first), Some(last)) = (local_date(tz, earliest), local_date(tz, latest)) else { return Vec::new() };
    let mut out = Vec::new();
    // One date before and after: an interval of a neighbouring local date may hold instants of the range.
    let mut day = first.pred_opt().unwrap_or(first);
    let end_day = last.succ_opt().unwrap_or(last);
    let mut days = 0;
    while day <= end_day && days < 400 {
        let full = rules.max_per_day.is_some_and(|max| per_day.get(&day).copied().unwrap_or(0) >= max);
        if !full {
            for iv in availability.intervals_on(day) {
                day_slots(tz, day, iv, rules, &busy, earliest, latest, &mut out);
            }
        }
        let Some(next) = day.succ_opt() else { break };
        day = next;
        days += 1;
    }
    out.sort();
    out.dedup_by_key(|s| s.start_at);
    out
}

/// The slots of interval `iv` on local date `day` that start in `[earliest, latest]` and are free of `busy`.
#[allow(clippy::too_many_arguments)]
fn day_slots(
    tz: Tz,
    day: NaiveDate,
    iv: &LocalInterval,
    rules: &SlotRules,
    busy: &[(i64, i64)],
    earliest: i64,
    latest: i64,
    out: &mut Vec<Slot>,
) {
    let local = |m: u16| day.and_time(chrono::NaiveTime::MIN) + chrono::Duration::minutes(i64::from(m));
    let (Some(window_start), Some(window_end)) =
        (boundary(tz, local(iv.start), Occurrence::First), boundary(tz, local(iv.end), Occurrence::Last))
    else {
        return;
    };
    let end_local = local(iv.end);
    let mut wall = local(iv.start);
    while wall < end_local {
        if let Some(t) = first_instant(tz, wall) {
            let fits = t >= window_start && t.saturating_add(rules.duration_s) <= window_end;
            if fits && (earliest..=latest).contains(&t) && is_free(busy, t, rules) {
                out.push(Slot { start_at: t, end_at: t + rules.duration_s, schedule_date: day });
            }
        }
        wall += chrono::Duration::seconds(rules.interval_s);
    }
}

/// Whether a booking starting at `t` under `rules` (buffers included) intersects none of `busy` (merged, sorted).
fn is_free(busy: &[(i64, i64)], t: i64, rules: &SlotRules) -> bool {
    let from = t.saturating_sub(rules.buffer_before_s);
    let to = t.saturating_add(rules.duration_s).saturating_add(rules.buffer_after_s);
    // The first merged interval that ends after `from`: the only one that can intersect on the left.
    let i = busy.partition_point(|&(_, end)| end <= from);
    busy.get(i).is_none_or(|&(start, _)| start >= to)
}

/// `intervals` sorted and merged where they overlap (touching ones are kept apart: they do not block each other's
/// neighbours); empty or reversed intervals are dropped.
fn merge(intervals: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = intervals.iter().copied().filter(|(s, e)| s < e).collect();
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The local date of Unix second `t` in `tz`.
pub fn local_date(tz: Tz, t: i64) -> Option<NaiveDate> {
    tz.timestamp_opt(t, 0).single().map(|d| d.date_naive())
}

/// Which occurrence of a repeated wall time a boundary stands for.
#[derive(Clone, Copy)]
enum Occurrence {
    First,
    Last,
}

/// The instant of wall time `wall` in `tz`, its first occurrence when it occurs twice; `None` in a gap.
pub fn first_instant(tz: Tz, wall: NaiveDateTime) -> Option<i64> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.timestamp()),
        LocalResult::Ambiguous(a, b) => Some(a.timestamp().min(b.timestamp())),
        LocalResult::None => None,
    }
}

/// The instant an interval boundary at wall time `wall` stands for: a repeated wall time's first or last
/// occurrence, and for a wall time in a gap the instant the gap ends (the first wall time after it that exists,
/// searched minute by minute for up to two days: the longest gap in the tz database is one day, Pacific/Apia
/// 2011-12-30).
fn boundary(tz: Tz, wall: NaiveDateTime, which: Occurrence) -> Option<i64> {
    for k in 0..=2 * i64::from(MINUTES_PER_DAY) {
        let w = wall + chrono::Duration::minutes(k);
        match tz.from_local_datetime(&w) {
            LocalResult::Single(t) => return Some(t.timestamp()),
            LocalResult::Ambiguous(a, b) => {
                let (lo, hi) = (a.timestamp().min(b.timestamp()), a.timestamp().max(b.timestamp()));
                return Some(match which {
                    Occurrence::First => lo,
                    Occurrence::Last => hi,
                });
            }
            LocalResult::None => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveTime, Weekday};
    use proptest::prelude::*;

    fn iv(s: &str, e: &str) -> LocalInterval {
        LocalInterval::parse(s, e).unwrap()
    }

    fn every_day(tz: Tz, ivs: &[LocalInterval]) -> Availability {
        Availability { time_zone: tz, weekly: std::array::from_fn(|_| ivs.to_vec()), overrides: BTreeMap::new() }
    }

    fn rules(duration_min: i64) -> SlotRules {
        SlotRules {
            duration_s: duration_min * 60,
            interval_s: duration_min * 60,
            buffer_before_s: 0,
            buffer_after_s: 0,
            minimum_notice_s: 0,
            horizon_s: i64::MAX / 4,
            max_per_day: None,
        }
    }

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    /// Wall times ("HH:MM") of the slots in `tz`.
    fn walls(tz: Tz, slots: &[Slot]) -> Vec<String> {
        slots.iter().map(|s| tz.timestamp_opt(s.start_at, 0).unwrap().format("%H:%M").to_string()).collect()
    }

    /// Slots of the whole local date `d` (the range is the date plus a day each side; the generator still keeps to
    /// the date's own intervals because neighbouring dates have none).
    fn slots_on(a: &Availability, r: &SlotRules, d: &str, busy: &[(i64, i64)]) -> Vec<Slot> {
        let d: NaiveDate = d.parse().unwrap();
        let mut only = a.clone();
        only.weekly = std::array::from_fn(|_| Vec::new());
        only.overrides = BTreeMap::from([(d, a.intervals_on(d).to_vec())]);
        let noon = first_instant(a.time_zone, d.and_time(NaiveTime::from_hms_opt(12, 0, 0).unwrap())).unwrap();
        free_slots(&only, r, busy, &[], SlotQuery { from: noon - 2 * 86_400, to: noon + 2 * 86_400, now: 0 })
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("00:00"), Some(0));
        assert_eq!(parse_hhmm("09:30"), Some(570));
        assert_eq!(parse_hhmm("24:00"), Some(1440));
        for bad in ["24:01", "9:30", "09:60", "0930", "09:3a", "", "-1:00", "09:30:00"] {
            assert_eq!(parse_hhmm(bad), None, "{bad}");
        }
        assert_eq!(format_hhmm(1440), "24:00");
        assert_eq!(LocalInterval::parse("17:00", "09:00"), Err(IntervalError::Empty));
        assert_eq!(LocalInterval::parse("24:00", "24:00"), Err(IntervalError::BadStart));
        assert_eq!(LocalInterval::parse("00:00", "00:00"), Err(IntervalError::BadEnd));
    }

    #[test]
    fn an_ordinary_day_steps_by_the_interval_and_fits_the_duration() {
        let a = every_day(chrono_tz::Europe::Berlin, &[iv("09:00", "11:00")]);
        let mut r = rules(45);
        r.interval_s = 30 * 60;
        let s = slots_on(&a, &r, "2027-06-01", &[]);
        // 10:30 + 45 min would end after 11:00.
        assert_eq!(walls(a.time_zone, &s), ["09:00", "09:30", "10:00"]);
        assert_eq!(s[0].start_at, utc("2027-06-01T07:00:00Z"));
        assert_eq!(s[0].end_at - s[0].start_at, 45 * 60);
    }

    #[test]
    fn spring_forward_skips_the_gap_in_berlin_and_new_york() {
        for (tz, day) in [(chrono_tz::Europe::Berlin, "2027-03-28"), (chrono_tz::America::New_York, "2027-03-14")] {
            let a = every_day(tz, &[iv("01:00", "04:00")]);
            let s = slots_on(&a, &rules(30), day, &[]);
            assert_eq!(walls(tz, &s), ["01:00", "01:30", "03:00", "03:30"], "{tz}");
            // Two real hours: 01:00-02:00 and 03:00-04:00 wall time.
            assert_eq!(s.last().unwrap().end_at - s[0].start_at, 2 * 3600, "{tz}");
        }
    }

    #[test]
    fn fall_back_offers_the_repeated_hour_once_at_its_first_occurrence() {
        for (tz, day, repeated) in
            [(chrono_tz::Europe::Berlin, "2027-10-31", "02:00"), (chrono_tz::America::New_York, "2027-11-07", "01:00")]
        {
            let a = every_day(tz, &[iv("00:00", "04:00")]);
            let s = slots_on(&a, &rules(60), day, &[]);
            assert_eq!(walls(tz, &s), ["00:00", "01:00", "02:00", "03:00"], "{tz}");
            let rep = s.iter().find(|x| walls(tz, &[**x])[0] == repeated).unwrap();
            // The first occurrence: summer time, one hour before the same wall time on winter time.
            let d: NaiveDate = day.parse().unwrap();
            let wall = d.and_time(NaiveTime::parse_from_str(repeated, "%H:%M").unwrap());
            let LocalResult::Ambiguous(first, second) = tz.from_local_datetime(&wall) else { panic!("{tz}") };
            assert_eq!(rep.start_at, first.timestamp().min(second.timestamp()));
            assert_eq!((second.timestamp() - first.timestamp()).abs(), 3600);
        }
    }

    #[test]
    fn an_interval_ending_in_the_overlap_keeps_its_real_length() {
        // Berlin 2027-10-31: 02:00-03:00 happens twice; 01:00-03:00 wall time is three real hours.
        let tz = chrono_tz::Europe::Berlin;
        let a = every_day(tz, &[iv("01:00", "03:00")]);
        let mut r = rules(150);
        r.interval_s = 30 * 60;
        let s = slots_on(&a, &r, "2027-10-31", &[]);
        // 01:00 (+150 min real = 02:30 winter time, inside), 01:30 (+150 = 03:00 winter time, the end).
        assert_eq!(walls(tz, &s), ["01:00", "01:30"]);
    }

    #[test]
    fn a_day_ending_at_24_00_and_midnight_in_another_zone() {
        let a = every_day(chrono_tz::Asia::Tokyo, &[iv("23:00", "24:00")]);
        let s = slots_on(&a, &rules(60), "2027-01-05", &[]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].start_at, utc("2027-01-05T14:00:00Z"));
        assert_eq!(s[0].schedule_date, "2027-01-05".parse().unwrap());
    }

    #[test]
    fn overrides_replace_the_weekly_rules() {
        let mut a = every_day(chrono_tz::UTC, &[iv("09:00", "10:00")]);
        a.weekly[Weekday::Sun.num_days_from_monday() as usize].clear();
        a.overrides.insert("2027-06-02".parse().unwrap(), Vec::new());
        a.overrides.insert("2027-06-03".parse().unwrap(), vec![iv("14:00", "15:00")]);
        let r = rules(60);
        let q = SlotQuery { from: utc("2027-06-01T00:00:00Z"), to: utc("2027-06-07T00:00:00Z"), now: 0 };
        let s = free_slots(&a, &r, &[], &[], q);
        let got: Vec<i64> = s.iter().map(|x| x.start_at).collect();
        assert_eq!(
            got,
            [
                utc("2027-06-01T09:00:00Z"),
                utc("2027-06-03T14:00:00Z"),
                utc("2027-06-04T09:00:00Z"),
                utc("2027-06-05T09:00:00Z"),
            ]
        );
    }

    #[test]
    fn busy_intervals_and_both_sides_buffers_remove_slots() {
        let a = every_day(chrono_tz::UTC, &[iv("09:00", "13:00")]);
        let mut r = rules(60);
        // Existing booking 11:00-12:00 with no buffers of its own.
        let busy = [(utc("2027-06-01T11:00:00Z"), utc("2027-06-01T12:00:00Z"))];
        let walls_of = |r: &SlotRules| walls(chrono_tz::UTC, &slots_on(&a, r, "2027-06-01", &busy));
        assert_eq!(walls_of(&r), ["09:00", "10:00", "12:00"]);
        r.buffer_after_s = 60;
        assert_eq!(walls_of(&r), ["09:00", "12:00"], "10:00-11:01 touches the booking");
        r.buffer_after_s = 0;
        r.buffer_before_s = 60;
        assert_eq!(walls_of(&r), ["09:00", "10:00"], "12:00 needs 11:59 free");
        // The existing booking's buffers are part of its busy interval.
        let busy = [(utc("2027-06-01T10:30:00Z"), utc("2027-06-01T12:00:00Z"))];
        let s = slots_on(&a, &rules(60), "2027-06-01", &busy);
        assert_eq!(walls(chrono_tz::UTC, &s), ["09:00", "12:00"]);
    }

    #[test]
    fn minimum_notice_horizon_and_range() {
        let a = every_day(chrono_tz::UTC, &[iv("09:00", "12:00")]);
        let mut r = rules(60);
        r.minimum_notice_s = 3600;
        r.horizon_s = 86_400 + 3600;
        let now = utc("2027-06-01T09:30:00Z");
        let q = SlotQuery { from: utc("2027-06-01T00:00:00Z"), to: utc("2027-06-04T00:00:00Z"), now };
        let got: Vec<i64> = free_slots(&a, &r, &[], &[], q).iter().map(|x| x.start_at).collect();
        // Not before 10:30 today; not after 10:30 tomorrow.
        assert_eq!(got, [utc("2027-06-01T11:00:00Z"), utc("2027-06-02T09:00:00Z"), utc("2027-06-02T10:00:00Z")]);
        let q = SlotQuery { from: utc("2027-06-02T10:00:00Z"), to: utc("2027-06-02T10:00:00Z"), now };
        assert!(free_slots(&a, &r, &[], &[], q).is_empty(), "empty range");
    }

    #[test]
    fn max_per_day_counts_bookings_by_the_schedule_date() {
        let tz = chrono_tz::America::New_York;
        let a = every_day(tz, &[iv("09:00", "12:00")]);
        let mut r = rules(60);
        r.max_per_day = Some(1);
        // 2027-06-01T23:30 New York is 2027-06-02 in UTC: it counts for June 1st (local).
        let counted = [utc("2027-06-02T03:30:00Z")];
        let q = SlotQuery { from: utc("2027-06-01T00:00:00Z"), to: utc("2027-06-03T04:00:00Z"), now: 0 };
        let s = free_slots(&a, &r, &[], &counted, q);
        let dates: Vec<String> = s.iter().map(|x| x.schedule_date.to_string()).collect();
        assert_eq!(dates, ["2027-06-02", "2027-06-02", "2027-06-02"]);
        r.max_per_day = Some(2);
        assert_eq!(free_slots(&a, &r, &[], &counted, q).len(), 6);
    }

    fn arb_availability() -> impl Strategy<Value = Availability> {
        let zones = prop::sample::select(vec![
            chrono_tz::Europe::Berlin,
            chrono_tz::America::New_York,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::Asia::Kolkata,
            chrono_tz::UTC,
        ]);
        let day = prop::collection::vec((0u16..1440, 1u16..600), 0..3).prop_map(|v| {
            let mut ivs: Vec<LocalInterval> = Vec::new();
            for (s, len) in v {
                let i = LocalInterval { start: s, end: (s + len).min(1440) };
                if !ivs.iter().any(|o| o.overlaps(&i)) {
                    ivs.push(i);
                }
            }
            ivs.sort();
            ivs
        });
        (zones, prop::collection::vec(day, 7)).prop_map(|(tz, days)| Availability {
            time_zone: tz,
            weekly: std::array::from_fn(|i| days[i].clone()),
            overrides: BTreeMap::new(),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Slots are sorted and unique, inside the asked range, notice and horizon, free of busy intervals with
        /// both sides' buffers, and inside an availability interval of their date (converted to instants).
        #[test]
        fn slots_keep_every_rule(
            a in arb_availability(),
            dur in 5i64..180, step in 5i64..120, bb in 0i64..60, ba in 0i64..60, notice in 0i64..3000,
            // Around the 2027 transitions of every zone above (March-April, October-November).
            start_day in prop::sample::select(vec![70i64, 80, 85, 95, 295, 300, 305, 310]),
            busy in prop::collection::vec((0i64..10 * 86_400, 60i64..10_800), 0..12),
        ) {
            let base = utc("2027-01-01T00:00:00Z") + start_day * 86_400;
            let busy: Vec<(i64, i64)> = busy.iter().map(|(s, l)| (base + s, base + s + l)).collect();
            let r = SlotRules {
                duration_s: dur * 60, interval_s: step * 60, buffer_before_s: bb * 60, buffer_after_s: ba * 60,
                minimum_notice_s: notice * 60, horizon_s: 8 * 86_400, max_per_day: None,
            };
            let q = SlotQuery { from: base, to: base + 10 * 86_400, now: base - 86_400 };
            let slots = free_slots(&a, &r, &busy, &[], q);
            for w in slots.windows(2) {
                prop_assert!(w[0].start_at < w[1].start_at);
            }
            for s in &slots {
                prop_assert!(s.start_at >= q.from && s.start_at < q.to);
                prop_assert!(s.start_at >= q.now + r.minimum_notice_s && s.start_at <= q.now + r.horizon_s);
                let (from, to) = (s.start_at - r.buffer_before_s, s.end_at + r.buffer_after_s);
                prop_assert!(busy.iter().all(|&(bs, be)| be <= from || bs >= to), "{s:?} overlaps busy");
                let inside = a.intervals_on(s.schedule_date).iter().any(|iv| {
                    let wall = |m: u16| s.schedule_date.and_time(NaiveTime::MIN) + chrono::Duration::minutes(i64::from(m));
                    let lo = boundary(a.time_zone, wall(iv.start), Occurrence::First);
                    let hi = boundary(a.time_zone, wall(iv.end), Occurrence::Last);
                    matches!((lo, hi), (Some(lo), Some(hi)) if lo <= s.start_at && s.end_at <= hi)
                });
                prop_assert!(inside, "{s:?} outside availability");
                prop_assert_eq!(local_date(a.time_zone, s.start_at).is_some(), true);
            }
        }

        /// Each wall time of a date is offered at most once.
        #[test]
        fn each_wall_time_once(a in arb_availability(), start_day in prop::sample::select(vec![85i64, 300, 305, 310])) {
            let base = utc("2027-01-01T00:00:00Z") + start_day * 86_400;
            let q = SlotQuery { from: base, to: base + 5 * 86_400, now: 0 };
            let slots = free_slots(&a, &rules(15), &[], &[], q);
            let mut seen = std::collections::HashSet::new();
            for s in &slots {
                let wall = a.time_zone.timestamp_opt(s.start_at, 0).unwrap().naive_local();
                prop_assert!(seen.insert(wall), "{wall} twice");
            }
        }
    }
}
