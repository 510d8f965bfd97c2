//! Wall-clock time, behind a trait so tests can pin it.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch (UTC).
    fn unix_ms(&self) -> u64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// `unix_ns` as an RFC 3339 UTC timestamp with microseconds, e.g.
/// `2026-11-30T13:37:17.123456Z` (the resolution a sample-accurate start time
/// needs: one sample at 192 kHz is 5.2 µs).
pub fn utc_rfc3339_micros(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_match_known_dates() {
        // Expected values from Python's datetime.
        for (ns, expect) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400_500_000_000, "2000-02-29T00:00:00.500000Z"),
            (1_796_045_837_123_456_000, "2026-11-30T13:37:17.123456Z"),
            (4_102_444_799_999_999_000, "2099-12-31T23:59:59.999999Z"),
        ] {
            assert_eq!(utc_rfc3339_micros(ns), expect);
        }
    }
}
