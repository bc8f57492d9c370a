//! Rendering traces and findings: text trees for people, JSON for machines, one HTML page
//! to look at.
//!
//! The text form draws each trace the way the article shows a run, one line per span,
//! indented by depth:
//!
//! ```text
//! trace_id: tr_7a31
//! gateway handle_request span g1 parent=- 18ms status=ok
//!   agent_runtime plan span a1 parent=g1 240ms queue=3ms status=ok
//! ```
//!
//! followed by where the time went (slowest span, self time per service, queue time, the
//! blocking critical path), the spans that failed, and where context broke. Every form
//! can be written straight to a writer ([`write_text`], [`write_json`], [`write_html`]),
//! so a million spans never sit in memory twice.

use std::time::Duration;

mod html;
mod html_row;
mod json;
mod lines;
mod stats;
mod text;

pub use html::{html, write_html};
pub use json::{json, write_json, write_json_with};
pub use stats::{stats_json, stats_text};
pub use text::{findings_text, text, total_line, write_findings, write_text};

/// How to render text.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Use ANSI colours (for a terminal).
    pub color: bool,
}

impl RenderOptions {
    /// No colours.
    pub fn plain() -> RenderOptions {
        RenderOptions { color: false }
    }

    /// ANSI colours.
    pub fn colored() -> RenderOptions {
        RenderOptions { color: true }
    }
}

/// A shortened span id: the first 8 digits of a long hex id, any other id as it is.
pub fn short_id(id: &str) -> &str {
    shorten(id, 8)
}

/// The first `len` digits of a hex id longer than that; any other id as it is.
pub(crate) fn shorten(id: &str, len: usize) -> &str {
    if id.len() > len && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..len]
    } else {
        id
    }
}

/// A duration in milliseconds (`18ms`, `12.5ms`, `0.42ms`, `0.004ms`), or seconds from one second up
/// (`1.3s`).
pub fn format_duration(d: Duration) -> String {
    let mut out = String::with_capacity(10);
    push_duration(&mut out, d);
    out
}

/// [`format_duration`] into `out`, in integer arithmetic (rounding half to even), without
/// allocating: the text tree writes one per span (and one per critical-path step). In
/// `u64` with constant divisors for anything under 584 years.
pub(crate) fn push_duration(out: &mut String, d: Duration) {
    let Ok(ns) = u64::try_from(d.as_nanos()) else {
        return push_duration_wide(out, d);
    };
    #[inline(always)]
    fn round(ns: u64, step: u64) -> u64 {
        let (q, r) = (ns / step, ns % step);
        if r * 2 > step || (r * 2 == step && q % 2 == 1) {
            q + 1
        } else {
            q
        }
    }
    // Hundredths of seconds, or tenths, hundredths, thousandths of milliseconds.
    let (q, decimals, unit) = if ns >= 1_000_000_000 {
        (round(ns, 10_000_000), 2, "s")
    } else if ns >= 1_000_000 {
        (round(ns, 100_000), 1, "ms")
    } else if ns >= 10_000 {
        (round(ns, 10_000), 2, "ms")
    } else {
        (round(ns, 1_000), 3, "ms")
    };
    let scale = [1, 10, 100, 1000][decimals];
    let (whole, mut frac, mut digits) = (q / scale, q % scale, decimals);
    while digits > 0 && frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    out.push_str(itoa::Buffer::new().format(whole));
    if digits > 0 {
        out.push('.');
        let mut place = [1, 10, 100][digits - 1];
        while place > 0 {
            out.push(char::from(b'0' + (frac / place % 10) as u8));
            place /= 10;
        }
    }
    out.push_str(unit);
}

/// [`push_duration`] in `u128`, for any duration.
pub(crate) fn push_duration_wide(out: &mut String, d: Duration) {
    use std::fmt::Write as _;
    let ns = d.as_nanos();
    // (nanoseconds per unit, decimals kept, unit)
    let (per, decimals, unit) = if ns >= 1_000_000_000 {
        (1_000_000_000u128, 2u32, "s")
    } else if ns >= 1_000_000 {
        (1_000_000, 1, "ms")
    } else if ns >= 10_000 {
        (1_000_000, 2, "ms")
    } else {
        (1_000_000, 3, "ms")
    };
    let step = per / 10u128.pow(decimals);
    let (mut q, r) = (ns / step, ns % step);
    if r * 2 > step || (r * 2 == step && q % 2 == 1) {
        q += 1;
    }
    let scale = 10u128.pow(decimals);
    let (whole, mut frac, mut digits) = (q / scale, q % scale, decimals);
    while digits > 0 && frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    if digits == 0 {
        let _ = write!(out, "{whole}{unit}");
    } else {
        let _ = write!(out, "{whole}.{frac:0width$}{unit}", width = digits as usize);
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    crate::time::millis_f64(d)
}
