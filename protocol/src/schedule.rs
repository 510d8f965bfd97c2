//! Recording schedules: what a schedule says, and when its recordings happen.
//!
//! The server and the appliances compute occurrences with this module, so an
//! appliance that lost the server starts the same recordings the server would
//! have asked for, and both name them by the same [`Occurrence::key`].
//!
//! # The rules (decision 0014; the tests pin each one)
//! - Times of day are wall-clock times in the schedule's IANA time zone. The
//!   time-zone database is the one built into this crate (jiff's bundled
//!   tzdb), never the system's, so every machine agrees.
//! - An occurrence belongs to the local date on which its window starts, and a
//!   schedule has at most one occurrence per date: the date is its key.
//! - A window runs from `start` to `end`; an `end` at or before `start` is on
//!   the next day (22:00–06:00), an `end` equal to `start` makes a 24-hour window.
//! - A window covers every instant whose local time lies in `[start, end)` on
//!   that day, and nothing else:
//!   - a `start` or `end` that does not exist that day (the clock jumps over
//!     it, spring forward) is the instant of the jump, so 02:30–03:30 in
//!     Berlin on the March change records 03:00–03:30 CEST, and a window lying
//!     wholly inside the jump (02:15–02:45) has no occurrence that day;
//!   - a time that occurs twice (fall back) starts at its first and ends at its
//!     second passing, so 02:30–03:30 in Berlin on the October change records
//!     from 02:30 CEST to 03:30 CET, two hours: nothing inside the window is
//!     missed.
//! - `start_early_s` and `stop_late_s` widen the window in elapsed time.
//! - Monthly on a day the month does not have (29–31) falls on its last day.
//! - Exceptions by occurrence date: `skip` lists dates, `pauses` inclusive
//!   date ranges. A skipped occurrence is still listed, marked.
//! - Unknown fields are refused, not ignored: a misspelt buffer or an
//!   appliance too old for a new rule must not silently record at other times.
//! - `manual` schedules have no occurrences (only run-now); `always_on` has one
//!   that never ends, keyed [`ALWAYS_ON_KEY`].

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::NodeId;
use crate::job::JobSpec;
use crate::payload::MAX_SHORT_TEXT;

/// Most dates in a schedule's skip list.
pub const MAX_SKIPS: usize = 366;
/// Most pauses in a schedule.
pub const MAX_PAUSES: usize = 64;
/// Longest early or late buffer: one hour.
pub const MAX_BUFFER_S: u32 = 3600;
/// Most tags on a schedule (or a recording).
pub const MAX_TAGS: usize = 16;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 40;
/// Longest span [`Calendar::occurrences`] looks through.
pub const MAX_LISTING_DAYS: i64 = 400;
/// The key of an always-on schedule's one occurrence.
pub const ALWAYS_ON_KEY: &str = "always-on";
/// First and last years a date in a schedule may name.
pub const YEARS: std::ops::RangeInclusive<i16> = 2000..=2200;

const DAY_S: u32 = 24 * 3600;

/// Serialize through `Display` and deserialize through `FromStr`, described in
/// JSON Schema as a string of `format`.
macro_rules! string_form {
    ($name:ident, $format:literal, $description:literal) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": $description,
                    "type": "string",
                    "format": $format
                })
            }
        }
    };
}

/// A calendar date, `YYYY-MM-DD`, in [`YEARS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilDate(Date);

impl CivilDate {
    pub fn new(year: i16, month: i8, day: i8) -> Result<Self, String> {
        if !YEARS.contains(&year) {
            return Err(format!(
                "year {year} is outside {}..={}",
                YEARS.start(),
                YEARS.end()
            ));
        }
        Date::new(year, month, day)
            .map(CivilDate)
            .map_err(|_| format!("{year:04}-{month:02}-{day:02} is not a date"))
    }

    pub fn as_jiff(self) -> Date {
        self.0
    }

    pub fn weekday(self) -> Weekday {
        Weekday::from_jiff(self.0.weekday())
    }
}

impl FromStr for CivilDate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a date in the form YYYY-MM-DD");
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| {
            let part = &s[r];
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse::<i16>().map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        CivilDate::new(y, m as i8, d as i8)
    }
}

impl fmt::Display for CivilDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            self.0.month(),
            self.0.day()
        )
    }
}

string_form!(CivilDate, "date", "A calendar date, YYYY-MM-DD.");

/// A wall-clock time of day, `HH:MM` or `HH:MM:SS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(Time);

impl TimeOfDay {
    pub fn new(hour: i8, minute: i8, second: i8) -> Result<Self, String> {
        Time::new(hour, minute, second, 0)
            .map(TimeOfDay)
            .map_err(|_| format!("{hour:02}:{minute:02}:{second:02} is not a time of day"))
    }

    pub fn as_jiff(self) -> Time {
        self.0
    }

    fn seconds(self) -> u32 {
        self.0.hour() as u32 * 3600 + self.0.minute() as u32 * 60 + self.0.second() as u32
    }
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time of day in the form HH:MM or HH:MM:SS");
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=3).contains(&parts.len())
            || parts
                .iter()
                .any(|p| p.len() != 2 || !p.bytes().all(|c| c.is_ascii_digit()))
        {
            return Err(bad());
        }
        let n = |i: usize| parts.get(i).map_or(Ok(0), |p| p.parse::<i8>());
        let (h, m, sec) = (
            n(0).map_err(|_| bad())?,
            n(1).map_err(|_| bad())?,
            n(2).map_err(|_| bad())?,
        );
        TimeOfDay::new(h, m, sec).map_err(|_| bad())
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())?;
        if self.0.second() != 0 {
            write!(f, ":{:02}", self.0.second())?;
        }
        Ok(())
    }
}

string_form!(
    TimeOfDay,
    "time",
    "A wall-clock time of day, HH:MM or HH:MM:SS (24-hour)."
);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Weekday {
    fn from_jiff(w: jiff::civil::Weekday) -> Weekday {
        use jiff::civil::Weekday as J;
        match w {
            J::Monday => Weekday::Monday,
            J::Tuesday => Weekday::Tuesday,
            J::Wednesday => Weekday::Wednesday,
            J::Thursday => Weekday::Thursday,
            J::Friday => Weekday::Friday,
            J::Saturday => Weekday::Saturday,
            J::Sunday => Weekday::Sunday,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Weekday::Monday => "monday",
            Weekday::Tuesday => "tuesday",
            Weekday::Wednesday => "wednesday",
            Weekday::Thursday => "thursday",
            Weekday::Friday => "friday",
            Weekday::Saturday => "saturday",
            Weekday::Sunday => "sunday",
        }
    }
}

/// When a schedule's occurrences fall. No cron syntax: each mode says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Recurrence {
    /// No occurrences: recordings start only by run-now.
    Manual,
    /// One occurrence, on `date`.
    Once {
        date: CivilDate,
    },
    Daily,
    /// On the listed days of the week.
    Weekly {
        days: Vec<Weekday>,
    },
    /// On day `day` (1–31) of every month; a month without that day has its
    /// occurrence on its last day.
    Monthly {
        day: u8,
    },
    /// Records all the time, one take that never ends (split into files by
    /// the profile's segment length).
    AlwaysOn,
}

impl Recurrence {
    pub fn mode(&self) -> &'static str {
        match self {
            Recurrence::Manual => "manual",
            Recurrence::Once { .. } => "once",
            Recurrence::Daily => "daily",
            Recurrence::Weekly { .. } => "weekly",
            Recurrence::Monthly { .. } => "monthly",
            Recurrence::AlwaysOn => "always_on",
        }
    }

    fn falls_on(&self, date: Date) -> bool {
        match self {
            Recurrence::Manual | Recurrence::AlwaysOn => false,
            Recurrence::Once { date: d } => d.0 == date,
            Recurrence::Daily => true,
            Recurrence::Weekly { days } => days.contains(&Weekday::from_jiff(date.weekday())),
            Recurrence::Monthly { day } => date.day() == (*day as i8).min(date.days_in_month()),
        }
    }
}

/// The wall-clock window of each occurrence (see the module's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start: TimeOfDay,
    /// At or before `start`: on the next day.
    pub end: TimeOfDay,
}

impl Window {
    /// The window's length on a day without a clock change.
    pub fn nominal_s(&self) -> u32 {
        let (s, e) = (self.start.seconds(), self.end.seconds());
        if e > s { e - s } else { DAY_S - s + e }
    }
}

/// No occurrences from `from` to `to`, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    pub from: CivilDate,
    pub to: CivilDate,
}

/// Everything about when a schedule records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub recurrence: Recurrence,
    /// IANA time zone name, e.g. `Europe/Berlin`; `UTC` for none.
    pub time_zone: String,
    /// Required for once, daily, weekly and monthly; optional for manual
    /// (run-now then records for its length; without it, until stopped);
    /// absent for always-on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Start this many seconds before the window (0–3600).
    #[serde(default)]
    pub start_early_s: u32,
    /// Stop this many seconds after it (0–3600).
    #[serde(default)]
    pub stop_late_s: u32,
    /// Occurrences (by date) not to record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<CivilDate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pauses: Vec<Pause>,
}

/// Why a listed occurrence will not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Exception {
    Skipped,
    Paused,
}

/// One occurrence of a schedule. Times are ms since the Unix epoch (UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Occurrence {
    /// Names the occurrence for good: its local date, or [`ALWAYS_ON_KEY`].
    pub key: String,
    /// The window as the clock had it, before the buffers.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// When recording starts and stops: the window widened by the buffers
    /// (`u64::MAX`: never stops).
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<Exception>,
}

/// An occurrence with less time than this left is not started (by the
/// server or by a node).
pub const MIN_REMAINING_MS: u64 = 2_000;

impl Occurrence {
    /// The length of a take that starts at `now_ms` and ends with the
    /// occurrence, in whole seconds rounded up; `None` for one that never ends.
    pub fn take_length_s(&self, now_ms: u64) -> Option<u32> {
        (self.end_ms != u64::MAX).then(|| {
            let left = self.end_ms.saturating_sub(now_ms);
            left.div_ceil(1000).min(crate::job::MAX_DURATION_S as u64) as u32
        })
    }

    /// Whether a take starting at `now_ms` would still be worth starting.
    pub fn worth_starting(&self, now_ms: u64) -> bool {
        self.end_ms.saturating_sub(now_ms) >= MIN_REMAINING_MS
    }
}

/// A [`Timing`] checked and bound to its time zone: computes occurrences.
#[derive(Clone, Debug)]
pub struct Calendar {
    timing: Timing,
    tz: TimeZone,
}

fn ms_of(ts: Timestamp) -> u64 {
    ts.as_millisecond().max(0) as u64
}

fn timestamp_of(ms: u64) -> Timestamp {
    Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64).unwrap_or(Timestamp::MAX)
}

impl Timing {
    /// Check the timing and bind it to its time zone.
    pub fn calendar(&self) -> Result<Calendar, String> {
        let tz = TimeZone::get(&self.time_zone).map_err(|_| {
            format!(
                "unknown time zone {:?}; use an IANA name such as Europe/Berlin, or UTC",
                self.time_zone
            )
        })?;
        match (&self.recurrence, &self.window) {
            (Recurrence::AlwaysOn, Some(_)) => {
                return Err("an always-on schedule has no window".into());
            }
            (Recurrence::Once { .. } | Recurrence::Daily, None)
            | (Recurrence::Weekly { .. } | Recurrence::Monthly { .. }, None) => {
                return Err(format!(
                    "a {} schedule needs a window (start and end times)",
                    self.recurrence.mode()
                ));
            }
            _ => {}
        }
        match &self.recurrence {
            Recurrence::Weekly { days } if days.is_empty() => {
                return Err("a weekly schedule needs at least one day".into());
            }
            Recurrence::Weekly { days } if days.len() > 7 => {
                return Err("a weekly schedule lists at most seven days".into());
            }
            Recurrence::Monthly { day } if !(1..=31).contains(day) => {
                return Err(format!("day of month {day} is not in 1..=31"));
            }
            _ => {}
        }
        for (name, s) in [
            ("start_early_s", self.start_early_s),
            ("stop_late_s", self.stop_late_s),
        ] {
            if s > MAX_BUFFER_S {
                return Err(format!("{name} is {s}; the limit is {MAX_BUFFER_S}"));
            }
        }
        if let Some(w) = &self.window {
            let total = w.nominal_s() + self.start_early_s + self.stop_late_s;
            if total > DAY_S {
                return Err(format!(
                    "the window with its buffers lasts {total} s; \
                     occurrences of one schedule may not overlap, so the limit is {DAY_S} s"
                ));
            }
        }
        if self.skip.len() > MAX_SKIPS {
            return Err(format!(
                "{} skipped dates; the limit is {MAX_SKIPS}",
                self.skip.len()
            ));
        }
        if self.pauses.len() > MAX_PAUSES {
            return Err(format!(
                "{} pauses; the limit is {MAX_PAUSES}",
                self.pauses.len()
            ));
        }
        if let Some(p) = self.pauses.iter().find(|p| p.to < p.from) {
            return Err(format!(
                "a pause ends ({}) before it begins ({})",
                p.to, p.from
            ));
        }
        Ok(Calendar {
            timing: self.clone(),
            tz,
        })
    }
}

impl Calendar {
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The local date at `ms`.
    pub fn local_date(&self, ms: u64) -> Date {
        self.tz.to_datetime(timestamp_of(ms)).date()
    }

    /// The first (or with `last`, the last) instant whose local time is
    /// `time` on `date`; the instant of the jump when the clock skips it.
    fn instant(&self, date: Date, time: Time, last: bool) -> Option<Timestamp> {
        let dt = DateTime::from_parts(date, time);
        let offset = match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset,
            AmbiguousOffset::Fold { before, after } => {
                if last {
                    after
                } else {
                    before
                }
            }
            AmbiguousOffset::Gap { after, .. } => {
                return self.jump_after(after.to_timestamp(dt).ok()?);
            }
        };
        offset.to_timestamp(dt).ok()
    }

    /// The clock change that makes a skipped local time: reading the time with
    /// the offset after the change gives an instant just before it.
    fn jump_after(&self, before_jump: Timestamp) -> Option<Timestamp> {
        self.tz.following(before_jump).next().map(|t| t.timestamp())
    }

    fn exception_on(&self, date: Date) -> Option<Exception> {
        if self.timing.skip.iter().any(|d| d.0 == date) {
            Some(Exception::Skipped)
        } else if self
            .timing
            .pauses
            .iter()
            .any(|p| p.from.0 <= date && date <= p.to.0)
        {
            Some(Exception::Paused)
        } else {
            None
        }
    }

    /// The occurrence that starts its window on `date`, if the schedule has
    /// one then (listed even when an exception skips it).
    pub fn occurrence_on(&self, date: Date) -> Option<Occurrence> {
        if !self.timing.recurrence.falls_on(date) {
            return None;
        }
        let w = self.timing.window?;
        let end_date = if w.end > w.start {
            date
        } else {
            date.tomorrow().ok()?
        };
        let start = self.instant(date, w.start.0, false)?;
        let end = self.instant(end_date, w.end.0, true)?;
        if end <= start {
            // The whole window lies in a skipped hour.
            return None;
        }
        let (window_start_ms, window_end_ms) = (ms_of(start), ms_of(end));
        Some(Occurrence {
            key: CivilDate(date).to_string(),
            window_start_ms,
            window_end_ms,
            start_ms: window_start_ms.saturating_sub(self.timing.start_early_s as u64 * 1000),
            end_ms: window_end_ms + self.timing.stop_late_s as u64 * 1000,
            exception: self.exception_on(date),
        })
    }

    fn always_on(&self) -> Occurrence {
        Occurrence {
            key: ALWAYS_ON_KEY.into(),
            window_start_ms: 0,
            window_end_ms: u64::MAX,
            start_ms: 0,
            end_ms: u64::MAX,
            exception: None,
        }
    }

    /// Occurrences recording at some time in `[from_ms, to_ms)`, by start,
    /// at most `limit`; the span looked through is at most
    /// [`MAX_LISTING_DAYS`] days from `from_ms`.
    pub fn occurrences(&self, from_ms: u64, to_ms: u64, limit: usize) -> Vec<Occurrence> {
        if matches!(self.timing.recurrence, Recurrence::AlwaysOn) {
            return vec![self.always_on()].into_iter().take(limit).collect();
        }
        let first = self.local_date(from_ms);
        let last = self
            .local_date(to_ms.saturating_sub(1).max(from_ms))
            .min(first.saturating_add(MAX_LISTING_DAYS.days()));
        let candidates: Vec<Date> = match &self.timing.recurrence {
            // One date: no need to walk the calendar to it.
            Recurrence::Once { date } => vec![date.0],
            _ => {
                // An occurrence may start up to a day (window and buffers)
                // before the date it records on, and end the day after.
                let mut d = first.saturating_sub(2.days());
                let stop = last.saturating_add(1.days());
                let mut v = Vec::new();
                while d <= stop {
                    v.push(d);
                    match d.tomorrow() {
                        Ok(next) => d = next,
                        Err(_) => break,
                    }
                }
                v
            }
        };
        candidates
            .into_iter()
            .filter_map(|d| self.occurrence_on(d))
            .filter(|o| o.start_ms < to_ms && o.end_ms > from_ms)
            .take(limit)
            .collect()
    }

    /// The occurrence to be recording at `now_ms`, if any (exceptions
    /// honoured); of two that overlap, the later.
    pub fn due_at(&self, now_ms: u64) -> Option<Occurrence> {
        self.occurrences(now_ms, now_ms + 1, 8)
            .into_iter()
            .rfind(|o| o.exception.is_none())
    }

    /// The next occurrence (exceptions honoured) that starts after `now_ms`,
    /// within [`MAX_LISTING_DAYS`].
    pub fn next_after(&self, now_ms: u64) -> Option<Occurrence> {
        let horizon = now_ms + MAX_LISTING_DAYS as u64 * 86_400_000;
        self.occurrences(now_ms, horizon, usize::MAX)
            .into_iter()
            .find(|o| o.start_ms > now_ms && o.exception.is_none())
    }
}

/// Trim tags, drop empty ones, sort and de-duplicate; refused when there are
/// more than [`MAX_TAGS`] or one is longer than [`MAX_TAG_BYTES`] or has
/// control characters.
pub fn normalise_tags(tags: &[String]) -> Result<Vec<String>, String> {
    let mut clean: Vec<String> = tags
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    clean.sort();
    clean.dedup();
    if clean.len() > MAX_TAGS {
        return Err(format!("{} tags; the limit is {MAX_TAGS}", clean.len()));
    }
    if let Some(t) = clean
        .iter()
        .find(|t| t.len() > MAX_TAG_BYTES || t.chars().any(char::is_control))
    {
        return Err(format!(
            "tag {t:?} is longer than {MAX_TAG_BYTES} bytes or has control characters"
        ));
    }
    Ok(clean)
}

fn yes() -> bool {
    true
}

/// A recording schedule: what to record, where, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// For people; 1–128 bytes.
    pub name: String,
    /// A disabled schedule has no occurrences until enabled again.
    #[serde(default = "yes")]
    pub enabled: bool,
    pub node: NodeId,
    /// Device, channels and profile of every take; the schedule sets the
    /// length, so `duration_s` stays absent.
    pub job: JobSpec,
    pub timing: Timing,
    /// Put on every recording the schedule makes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The server's recording profile for the schedule's takes, by name: the
    /// server fills `job.profile` from it whenever the schedule is saved and
    /// when the profile changes. Absent: `job.profile` as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The server's watchdog policy for the schedule's takes, by name; absent:
    /// the server's default policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<String>,
    /// The server's upload policy for the schedule's recordings (which
    /// destinations they are copied to), by name; absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// What each recording is called, e.g. `{schedule} {date} {time}`
    /// ([`render_template`]); absent: the recording has no title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_template: Option<String>,
    /// Where each recording goes when it is delivered, a relative path such
    /// as `{node}/{year}/{month}/{day}`; absent: the destination's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_template: Option<String>,
}

impl ScheduleSpec {
    /// Check everything that needs no knowledge of the node; normalises the
    /// tags. Returns the schedule's calendar.
    pub fn check(&mut self) -> Result<Calendar, String> {
        self.name = self.name.trim().to_owned();
        if self.name.is_empty() || self.name.len() > MAX_SHORT_TEXT {
            return Err(format!("a schedule's name is 1 to {MAX_SHORT_TEXT} bytes"));
        }
        if self.name.chars().any(char::is_control) {
            return Err("a schedule's name has control characters".into());
        }
        if self.job.duration_s.is_some() {
            return Err(
                "a schedule's job has no duration_s: the schedule's window sets the length".into(),
            );
        }
        self.job.validate()?;
        self.tags = normalise_tags(&self.tags)?;
        for name in [&self.watchdog, &self.profile, &self.delivery]
            .into_iter()
            .flatten()
        {
            check_policy_name(name)?;
        }
        if let Some(t) = &self.name_template {
            check_template(t, false).map_err(|e| format!("name_template: {e}"))?;
        }
        if let Some(t) = &self.folder_template {
            check_template(t, true).map_err(|e| format!("folder_template: {e}"))?;
        }
        self.timing.calendar()
    }
}

/// Longest name of a policy or profile, in bytes.
pub const MAX_POLICY_NAME: usize = 64;

/// A policy's or profile's name: 1–64 bytes of lowercase ASCII letters,
/// digits, `-` and `_`, so it reads the same in TOML, URLs and MQTT payloads.
pub fn check_policy_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_POLICY_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if fine {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a policy name: 1 to {MAX_POLICY_NAME} lowercase letters, digits, '-' or '_'"
        ))
    }
}

/// Longest template, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 200;

/// What a recording's name and folder templates are filled in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateVars {
    /// The schedule's name.
    pub schedule: String,
    pub node: String,
    /// The occurrence's key: its local date (`2026-11-30`) or `always-on`.
    pub occurrence: String,
    /// The local date and time the take started, in the schedule's zone.
    pub start: (CivilDate, TimeOfDay),
}

/// The placeholders a template may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 7] =
    ["schedule", "node", "date", "year", "month", "day", "time"];

impl TemplateVars {
    fn value(&self, name: &str) -> Option<String> {
        let (date, time) = &self.start;
        Some(match name {
            "schedule" => self.schedule.clone(),
            "node" => self.node.clone(),
            "date" => self.occurrence.clone(),
            "year" => format!("{:04}", date.year()),
            "month" => format!("{:02}", date.month()),
            "day" => format!("{:02}", date.day()),
            "time" => format!("{:02}{:02}", time.as_jiff().hour(), time.as_jiff().minute()),
            _ => return None,
        })
    }

    /// Values for checking a template without a take.
    fn example() -> TemplateVars {
        TemplateVars {
            schedule: "Morning show".into(),
            node: "stage-left".into(),
            occurrence: "2026-11-30".into(),
            start: (
                "2026-11-30".parse().expect("a date"),
                "06:00".parse().expect("a time"),
            ),
        }
    }
}

/// Fill `template`'s `{placeholder}`s ([`TEMPLATE_PLACEHOLDERS`]) from
/// `vars`. In a folder (`folder`), a value cannot add or climb a level: `/`,
/// `\`, control characters and a leading `.` become `-`, so the result stays
/// a relative path of the template's own segments.
pub fn render_template(
    template: &str,
    vars: &TemplateVars,
    folder: bool,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        if rest[open..].starts_with('}') {
            return Err("a '}' without its '{'".into());
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "a '{' without its '}'".to_owned())?;
        let name = &after[..close];
        let value = vars.value(name).ok_or_else(|| {
            format!(
                "{{{name}}} is not a placeholder; use {}",
                TEMPLATE_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            )
        })?;
        if folder {
            // Characters SMB and Windows refuse in names go too.
            let mut clean: String = value
                .chars()
                .map(|c| {
                    if "/\\:*?\"<>|".contains(c) || c.is_control() {
                        '-'
                    } else {
                        c
                    }
                })
                .collect();
            // Nor may a value be empty or hide (or climb) with a leading dot.
            if clean.is_empty() || clean.starts_with('.') {
                clean = format!("-{}", clean.trim_start_matches('.'));
            }
            out.push_str(&clean);
        } else {
            out.extend(value.chars().map(|c| if c.is_control() { ' ' } else { c }));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if folder {
        check_folder(&out)?;
    }
    Ok(out)
}

/// Longest part of a folder, in bytes (file systems' name limit).
pub const MAX_FOLDER_PART_BYTES: usize = 255;

/// A folder as rendered: relative, no empty, `.` or `..` parts, none over
/// [`MAX_FOLDER_PART_BYTES`].
pub fn check_folder(folder: &str) -> Result<(), String> {
    if folder.starts_with('/') || folder.contains('\\') {
        return Err("a folder is a relative path with '/' between its parts".into());
    }
    for part in folder.split('/') {
        if part.trim().is_empty() || part == "." || part == ".." {
            return Err("a folder has no empty, '.' or '..' parts".into());
        }
        if part.len() > MAX_FOLDER_PART_BYTES {
            return Err(format!(
                "a folder's part is at most {MAX_FOLDER_PART_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

/// Check a template: known placeholders, balanced braces, at most
/// [`MAX_TEMPLATE_BYTES`]; a folder is a relative path without empty,
/// `.` or `..` segments, backslashes or control characters.
pub fn check_template(template: &str, folder: bool) -> Result<(), String> {
    if template.trim().is_empty() || template.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("a template is 1 to {MAX_TEMPLATE_BYTES} bytes"));
    }
    if template.chars().any(char::is_control) {
        return Err("a template has no control characters".into());
    }
    if folder {
        // The template's own text: values can neither add '/' nor make '..'.
        check_folder(&template.replace(['{', '}'], "x"))?;
    }
    render_template(template, &TemplateVars::example(), folder).map(|_| ())
}

impl ScheduleSpec {
    /// The title and folder of the recording of occurrence `occurrence`
    /// (its key) that started at `start_ms`, from the schedule's templates
    /// (each None without its template).
    pub fn recording_names(
        &self,
        occurrence: &str,
        start_ms: u64,
    ) -> (Option<String>, Option<String>) {
        let Ok(zone) = Zone::get(&self.timing.time_zone) else {
            return (None, None);
        };
        // A calendar occurrence is named by its date; another (a Run now) by
        // the local date it started on.
        let calendar = occurrence == ALWAYS_ON_KEY || occurrence.parse::<CivilDate>().is_ok();
        let vars = TemplateVars {
            schedule: self.name.clone(),
            node: self.node.to_string(),
            occurrence: if calendar {
                occurrence.to_owned()
            } else {
                zone.date_of(start_ms).to_string()
            },
            start: (zone.date_of(start_ms), zone.time_of(start_ms)),
        };
        let render = |t: &Option<String>, folder| {
            t.as_deref()
                .and_then(|t| render_template(t, &vars, folder).ok())
        };
        (
            render(&self.name_template, false),
            render(&self.folder_template, true),
        )
    }
}

/// Most schedules one node keeps.
pub const MAX_NODE_SCHEDULES: usize = 64;

/// The id of an occurrence's first job ([`crate::JobId::for_occurrence`]),
/// timed at the occurrence's start (or the schedule's creation, for an
/// always-on schedule whose occurrence starts at the epoch).
pub fn first_job_id(
    schedule: crate::ScheduleId,
    created_ms: u64,
    occurrence: &Occurrence,
) -> crate::JobId {
    occurrence_job_id(schedule, created_ms, occurrence, 0)
}

/// Most jobs one occurrence starts (its first, and restarts after a take
/// failed or was cut).
pub const MAX_OCCURRENCE_JOBS: usize = 16;

/// The id of job number `n` of an occurrence (0: its first, 1: the first
/// restart after that job was cut or failed, …). The server and a node that
/// restarts an occurrence on its own name each restart alike, so neither
/// records it twice. Restart ids are timed `n` ms after the first, so they
/// sort in order.
pub fn occurrence_job_id(
    schedule: crate::ScheduleId,
    created_ms: u64,
    occurrence: &Occurrence,
    n: usize,
) -> crate::JobId {
    let at_ms = occurrence.start_ms.max(created_ms);
    if n == 0 {
        crate::JobId::for_occurrence(schedule, &occurrence.key, at_ms)
    } else {
        crate::JobId::for_occurrence(
            schedule,
            &format!("{}#{n}", occurrence.key),
            at_ms.saturating_add(n as u64),
        )
    }
}

/// One schedule as its node keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeSchedule {
    pub id: crate::ScheduleId,
    pub revision: u64,
    pub created_ms: u64,
    pub spec: ScheduleSpec,
}

/// Retained on `nodes/{node}/cmd/schedules`: every schedule of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeSchedules {
    pub schedules: Vec<NodeSchedule>,
}

impl crate::envelope::Payload for NodeSchedules {
    const KIND: &'static str = "node schedules";
    fn validate(&self) -> Result<(), String> {
        if self.schedules.len() > MAX_NODE_SCHEDULES {
            return Err(format!(
                "{} schedules; a node keeps at most {MAX_NODE_SCHEDULES}",
                self.schedules.len()
            ));
        }
        for s in &self.schedules {
            s.spec
                .clone()
                .check()
                .map_err(|e| format!("schedule {}: {e}", s.id))?;
        }
        Ok(())
    }
}

/// An IANA time zone from the bundled database, for showing instants as
/// wall-clock dates and times.
#[derive(Clone, Debug)]
pub struct Zone(TimeZone);

impl Zone {
    pub fn get(name: &str) -> Result<Zone, String> {
        TimeZone::get(name)
            .map(Zone)
            .map_err(|_| format!("unknown time zone {name:?}"))
    }

    /// The local date at `ms`.
    pub fn date_of(&self, ms: u64) -> CivilDate {
        CivilDate(self.0.to_datetime(timestamp_of(ms)).date())
    }

    /// The local time of day at `ms`, to the second.
    pub fn time_of(&self, ms: u64) -> TimeOfDay {
        let t = self.0.to_datetime(timestamp_of(ms)).time();
        TimeOfDay(Time::new(t.hour(), t.minute(), t.second(), 0).unwrap_or(Time::midnight()))
    }

    /// The first instant of `date` here.
    pub fn start_of(&self, date: CivilDate) -> u64 {
        let dt = DateTime::from_parts(date.0, Time::midnight());
        self.0
            .to_ambiguous_timestamp(dt)
            .compatible()
            .map_or(0, ms_of)
    }
}

impl CivilDate {
    /// The date `days` later (earlier when negative), saturating at [`YEARS`].
    pub fn add_days(self, days: i64) -> CivilDate {
        let d = self.0.saturating_add(days.days());
        CivilDate(d.clamp(
            Date::new(*YEARS.start(), 1, 1).unwrap_or(d),
            Date::new(*YEARS.end(), 12, 31).unwrap_or(d),
        ))
    }

    /// The Monday on or before this date.
    pub fn monday(self) -> CivilDate {
        let back = self.0.weekday().to_monday_zero_offset();
        self.add_days(-i64::from(back))
    }

    /// The first day of this date's month.
    pub fn first_of_month(self) -> CivilDate {
        CivilDate(self.0.first_of_month())
    }

    pub fn day(self) -> i8 {
        self.0.day()
    }

    pub fn month(self) -> i8 {
        self.0.month()
    }

    pub fn year(self) -> i16 {
        self.0.year()
    }
}
