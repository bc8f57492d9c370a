//! Small time helpers shared by the journal, the propagation layer and verification.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `SystemTime` for microseconds since the Unix epoch.
pub(crate) fn from_unix_micros(micros: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_micros(micros))
}

/// RFC 3339 with nanoseconds, UTC (`2026-03-21T15:17:00.123456789Z`), so that start and
/// end times in the journal subtract to the exact duration.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Parse RFC 3339 (with or without fractional seconds, `T` or space separated).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z').trim_end_matches('z'))
        .or_else(|_| humantime::parse_rfc3339(s))
        .ok()
}

/// Milliseconds in a duration, with microsecond precision.
pub(crate) fn millis_f64(d: Duration) -> f64 {
    // Through u64 when it fits (always, short of 584,000 years): the same value, without
    // the slow u128-to-float conversion.
    match u64::try_from(d.as_micros()) {
        Ok(micros) => micros as f64 / 1000.0,
        Err(_) => (d.as_micros() as f64) / 1000.0,
    }
}
