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
/// end times in the journal subtract to the exact duration. Times before 1970 or after
/// 9999 are written as the nearest of those bounds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(30);
    DateCache::default().push_rfc3339(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// The last second formatted, so that the many timestamps written within one second
/// format their date and time of day once.
#[derive(Debug, Default)]
pub(crate) struct DateCache {
    /// `secs + 1` of the second in `text` (0: nothing cached).
    key: u64,
    /// `YYYY-MM-DDTHH:MM:SS`.
    text: [u8; 19],
}

/// The last second RFC 3339 can write with a four-digit year (9999-12-31T23:59:59).
const MAX_SECS: u64 = 253_402_300_799;

impl DateCache {
    /// Append `t` as [`rfc3339`] writes it.
    pub(crate) fn push_rfc3339(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        self.push_since_epoch(out, t.duration_since(UNIX_EPOCH).ok());
    }

    /// [`push_rfc3339`](Self::push_rfc3339) of the time `since` the Unix epoch (`None`:
    /// a time before it, written as the epoch).
    pub(crate) fn push_since_epoch(&mut self, out: &mut Vec<u8>, since: Option<Duration>) {
        let (secs, nanos) = match since {
            Some(d) if d.as_secs() <= MAX_SECS => (d.as_secs(), d.subsec_nanos()),
            Some(_) => (MAX_SECS, 999_999_999),
            None => (0, 0),
        };
        if self.key != secs + 1 {
            self.text = civil(secs);
            self.key = secs + 1;
        }
        let mut text = [0u8; 30];
        text[..19].copy_from_slice(&self.text);
        text[19] = b'.';
        // Nanoseconds are below one second: nine digits.
        nine_digits(&mut text[20..29], nanos.min(999_999_999));
        text[29] = b'Z';
        out.extend_from_slice(&text);
    }
}

/// Every number below 100 as two decimal digits.
static DECIMAL_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0u8; 2]; 100];
    let mut n = 0;
    while n < 100 {
        pairs[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    pairs
};

/// `n` (below 10⁹) as nine decimal digits, zero-padded, into `out`.
fn nine_digits(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 100_000_000) as u8;
    let rest = n % 100_000_000;
    for (at, four) in [(1, rest / 10_000), (5, rest % 10_000)] {
        out[at..at + 2].copy_from_slice(&DECIMAL_PAIRS[(four / 100) as usize]);
        out[at + 2..at + 4].copy_from_slice(&DECIMAL_PAIRS[(four % 100) as usize]);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since the epoch (at most [`MAX_SECS`]), by the
/// days-to-civil algorithm of H. Hinnant's `chrono`-compatible date library.
fn civil(secs: u64) -> [u8; 19] {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Shift the epoch to 0000-03-01 so that leap days end a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3_600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    text
}

/// Parse RFC 3339 (with or without fractional seconds, `T` or space separated).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z').trim_end_matches('z'))
        .or_else(|_| humantime::parse_rfc3339(s))
        .ok()
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` from 1970 on (what tracehop writes), without the
/// general parser; `None` for anything else (which the general parser then reads).
pub(crate) fn fast_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    // At most nine digits of fraction.
    if !(20..=30).contains(&b.len()) || b[b.len() - 1] != b'Z' {
        return None;
    }
    let head: &[u8; 19] = b[..19].try_into().ok()?;
    if head[4] != b'-'
        || head[7] != b'-'
        || head[10] != b'T'
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    let mut bad = 0u8;
    let mut digit = |c: u8| {
        let d = c.wrapping_sub(b'0');
        bad |= u8::from(d > 9);
        u64::from(d)
    };
    let year = digit(head[0]) * 1000 + digit(head[1]) * 100 + digit(head[2]) * 10 + digit(head[3]);
    let month = digit(head[5]) * 10 + digit(head[6]);
    let day = digit(head[8]) * 10 + digit(head[9]);
    let hour = digit(head[11]) * 10 + digit(head[12]);
    let minute = digit(head[14]) * 10 + digit(head[15]);
    let second = digit(head[17]) * 10 + digit(head[18]);
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if !digits.is_empty() => {
            let mut n = 0;
            for &c in digits {
                n = n * 10 + digit(c);
            }
            n * 10u64.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    if bad != 0 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if year < 1970
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days since the epoch (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{rfc3339, DateCache, MAX_SECS};

    #[test]
    fn formats_as_humantime_does_across_leap_years_and_centuries() {
        let mut cache = DateCache::default();
        // Every ~11 days over 1970..2400, plus the edges of days and leap days.
        let mut secs = 0_u64;
        while secs < 13_569_465_600 {
            for nanos in [
                0,
                1,
                90,
                4_321,
                60_000,
                123_456_789,
                100_000_000,
                999_999_999,
            ] {
                let t = UNIX_EPOCH + Duration::new(secs, nanos);
                let mut ours = Vec::new();
                cache.push_rfc3339(&mut ours, t);
                let theirs = humantime::format_rfc3339_nanos(t).to_string();
                assert_eq!(String::from_utf8(ours).expect("ascii"), theirs);
            }
            secs += 977_777;
        }
        for edge in [
            951_782_399,
            951_782_400,
            951_868_800,
            4_107_542_399,
            4_107_542_400,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(edge);
            assert_eq!(rfc3339(t), humantime::format_rfc3339_nanos(t).to_string());
        }
    }

    #[test]
    fn times_out_of_range_are_clamped_not_a_panic() {
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(MAX_SECS + 10)),
            "9999-12-31T23:59:59.999999999Z"
        );
    }
}
