//! Upload windows: the times of day a metered or shared link may carry
//! uploads (`[upload] windows`, in `[upload] time_zone`).
//!
//! A window is `HH:MM-HH:MM` of wall-clock time in the zone; one whose end is
//! not after its start runs across midnight (`22:00-06:00`). No windows: uploads
//! go at any time. Wall-clock time decides, so across daylight-saving changes
//! a window keeps its hours: on the day clocks go forward, wall times that do
//! not exist are not in any window (a window of `02:00-03:00` in Europe/Berlin
//! does not open that day); on the day they go back, a wall time that occurs
//! twice is in its window both times.
//!
//! Precision is one minute: a window opens at the first minute boundary whose
//! wall time is inside it.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The most windows a configuration may list.
pub const MAX_WINDOWS: usize = 24;

/// How far ahead [`UploadWindows::opens_at`] looks: any window of a valid
/// configuration opens within a day and a bit (a day plus a DST hour).
const LOOK_AHEAD_MINUTES: u64 = 26 * 60;

#[derive(Debug, Clone)]
pub struct UploadWindows {
    zone_name: String,
    zone: TimeZone,
    /// `(start, end)` in minutes of the day; `end <= start` runs across midnight.
    spans: Vec<(u16, u16)>,
}

impl PartialEq for UploadWindows {
    fn eq(&self, other: &Self) -> bool {
        self.zone_name == other.zone_name && self.spans == other.spans
    }
}

impl Eq for UploadWindows {}

fn minute_of(text: &str) -> Option<u16> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    // 24:00 ends a window at midnight.
    ((h < 24 && m < 60) || (h == 24 && m == 0)).then_some(h * 60 + m)
}

impl UploadWindows {
    /// Uploads at any time.
    pub fn always() -> UploadWindows {
        UploadWindows {
            zone_name: "UTC".into(),
            zone: TimeZone::UTC,
            spans: Vec::new(),
        }
    }

    /// Parse `windows` (each `HH:MM-HH:MM`) in the IANA zone `zone`; the
    /// error says which entry is wrong and why.
    pub fn parse(windows: &[String], zone: &str) -> Result<UploadWindows, String> {
        let tz = TimeZone::get(zone)
            .map_err(|_| format!("{zone:?} is not an IANA time zone (e.g. \"Europe/Berlin\")"))?;
        if windows.len() > MAX_WINDOWS {
            return Err(format!("at most {MAX_WINDOWS} windows"));
        }
        let mut spans = Vec::new();
        for w in windows {
            let parsed = w
                .split_once('-')
                .and_then(|(a, b)| Some((minute_of(a)?, minute_of(b)?)));
            let Some((start, end)) = parsed else {
                return Err(format!("{w:?} is not HH:MM-HH:MM (e.g. \"22:00-06:00\")"));
            };
            if start == end % (24 * 60) {
                return Err(format!(
                    "{w:?} starts where it ends: leave `windows` out to upload at any time"
                ));
            }
            if start == 24 * 60 {
                return Err(format!("{w:?} starts at 24:00: write 00:00"));
            }
            spans.push((start, end));
        }
        Ok(UploadWindows {
            zone_name: zone.to_owned(),
            zone: tz,
            spans,
        })
    }

    /// No windows: uploads go at any time.
    pub fn is_always(&self) -> bool {
        self.spans.is_empty()
    }

    /// Whether uploads may go at `unix_ms`.
    pub fn is_open(&self, unix_ms: u64) -> bool {
        if self.spans.is_empty() {
            return true;
        }
        let Ok(at) = Timestamp::from_millisecond(unix_ms as i64) else {
            return true;
        };
        let wall = self.zone.to_datetime(at);
        let minute = wall.hour() as u16 * 60 + wall.minute() as u16;
        self.spans.iter().any(|&(start, end)| {
            if start < end {
                (start..end).contains(&minute)
            } else {
                minute >= start || minute < end
            }
        })
    }

    /// When uploads may next go: `unix_ms` itself while a window is open,
    /// else the start of the next one.
    pub fn opens_at(&self, unix_ms: u64) -> u64 {
        if self.is_open(unix_ms) {
            return unix_ms;
        }
        let first = unix_ms.div_ceil(60_000) * 60_000;
        (0..LOOK_AHEAD_MINUTES)
            .map(|i| first + i * 60_000)
            .find(|&t| self.is_open(t))
            .unwrap_or(first + LOOK_AHEAD_MINUTES * 60_000)
    }

    /// The windows as configured, for logs and the status page.
    pub fn describe(&self) -> String {
        if self.spans.is_empty() {
            return "any time".into();
        }
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let spans: Vec<String> = self
            .spans
            .iter()
            .map(|&(a, b)| format!("{}-{}", hm(a), hm(b)))
            .collect();
        format!("{} ({})", spans.join(", "), self.zone_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    fn windows(list: &[&str], zone: &str) -> UploadWindows {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        UploadWindows::parse(&list, zone).unwrap()
    }

    #[test]
    fn no_windows_means_any_time() {
        let w = windows(&[], "UTC");
        assert!(w.is_always() && w.is_open(ms("2026-11-30T12:00:00Z")));
        assert_eq!(w.opens_at(5), 5);
        assert_eq!(w.describe(), "any time");
    }

    #[test]
    fn a_window_across_midnight_in_local_time() {
        let w = windows(&["22:00-06:00"], "Europe/Berlin");
        // 21:59 and 22:00 Berlin time (UTC+1 in winter).
        assert!(!w.is_open(ms("2026-11-30T20:59:00Z")));
        assert!(w.is_open(ms("2026-11-30T21:00:00Z")));
        assert!(w.is_open(ms("2026-12-01T04:59:59Z")));
        assert!(!w.is_open(ms("2026-12-01T05:00:00Z")));
        assert_eq!(
            w.opens_at(ms("2026-11-30T12:34:56Z")),
            ms("2026-11-30T21:00:00Z")
        );
        assert_eq!(w.describe(), "22:00-06:00 (Europe/Berlin)");
    }

    #[test]
    fn several_windows_and_one_ending_at_midnight() {
        let w = windows(&["12:00-13:00", "23:00-24:00"], "UTC");
        assert!(w.is_open(ms("2026-11-30T12:30:00Z")));
        assert!(w.is_open(ms("2026-11-30T23:59:00Z")));
        assert!(!w.is_open(ms("2026-12-01T00:00:00Z")));
        assert_eq!(
            w.opens_at(ms("2026-11-30T13:00:00Z")),
            ms("2026-11-30T23:00:00Z")
        );
        // Mid-minute: the next window's first minute, exactly.
        assert_eq!(
            w.opens_at(ms("2026-11-30T22:59:30.5Z")),
            ms("2026-11-30T23:00:00Z")
        );
    }

    #[test]
    fn daylight_saving_changes_keep_wall_clock_hours() {
        // 2026-03-29: Berlin goes from 02:00 to 03:00. 02:00-03:00 does not
        // exist that day: the window next opens the day after.
        let spring = windows(&["02:00-03:00"], "Europe/Berlin");
        assert_eq!(
            spring.opens_at(ms("2026-03-28T23:00:00Z")),
            ms("2026-03-30T00:00:00Z"),
            "02:00 CEST on the 30th"
        );
        // 2026-10-25: 02:00-03:00 happens twice (CEST, then CET); both count.
        let autumn = windows(&["02:00-03:00"], "Europe/Berlin");
        assert!(autumn.is_open(ms("2026-10-25T00:30:00Z")), "02:30 CEST");
        assert!(autumn.is_open(ms("2026-10-25T01:30:00Z")), "02:30 CET");
        assert!(!autumn.is_open(ms("2026-10-25T02:00:00Z")), "03:00 CET");
        // New York, 2026-03-08: 02:00-03:00 is skipped there too.
        let ny = windows(&["01:00-03:00"], "America/New_York");
        assert!(ny.is_open(ms("2026-03-08T06:59:00Z")), "01:59 EST");
        assert!(!ny.is_open(ms("2026-03-08T07:00:00Z")), "03:00 EDT");
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        let bad = |list: &[&str], zone: &str| {
            let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            UploadWindows::parse(&list, zone).unwrap_err()
        };
        assert!(bad(&["22-06"], "UTC").contains("HH:MM-HH:MM"));
        assert!(bad(&["25:00-06:00"], "UTC").contains("HH:MM-HH:MM"));
        assert!(bad(&["06:00-06:00"], "UTC").contains("starts where it ends"));
        assert!(bad(&["00:00-24:00"], "UTC").contains("starts where it ends"));
        assert!(bad(&["24:00-01:00"], "UTC").contains("write 00:00"));
        assert!(bad(&["01:00-02:00"], "Mars/Olympus").contains("IANA"));
        assert!(bad(&["01:00-02:00"; 25], "UTC").contains("at most"));
    }
}
