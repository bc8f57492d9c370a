//! Strict validation of the W3C `traceparent` header, with a reason for every rejection.
//!
//! OpenTelemetry's propagator is lenient (it accepts short ids and stray dashes) and says
//! nothing about why it ignored a header. tracehop validates first, so that a consumer can
//! record *why* it started a new trace, and hands only conforming values to the propagator.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

use super::ValueType;
use crate::hex;

/// The longest `traceparent` tracehop will look at. Version 00 is exactly 55 bytes; future
/// versions may append fields, but nothing legitimate comes near this.
pub const MAX_TRACEPARENT_LEN: usize = 512;

const V00_LEN: usize = 55;

/// Why incoming trace context was not adopted.
///
/// Recorded on the new root span as the `tracehop.context.rejected` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The header value is not UTF-8 text.
    NotUtf8,
    /// The header is longer than [`MAX_TRACEPARENT_LEN`].
    Oversized,
    /// Fewer characters than the version-00 layout needs.
    Truncated,
    /// Version 00 with extra characters after the flags.
    TrailingData,
    /// A field separator is missing or in the wrong place.
    Malformed,
    /// Hex digits in upper case (the spec requires lower case).
    Uppercase,
    /// A character that is not a hex digit.
    NotHex,
    /// The forbidden version `ff`.
    ForbiddenVersion,
    /// An all-zero trace id.
    ZeroTraceId,
    /// An all-zero parent span id.
    ZeroSpanId,
    /// The article-style `x-trace-id` / `x-span-id` headers are present but unusable.
    BadSimpleHeaders,
    /// The message carries more than one `traceparent` header: W3C says to restart the
    /// trace rather than guess which one is right.
    Repeated,
    /// The `traceparent` header has a type that cannot carry text (an AMQP integer,
    /// boolean, table …); the attribute says `traceparent wrong-type:<type>`.
    WrongType(ValueType),
}

impl Rejection {
    /// A short, stable reason string (the attribute value).
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NotUtf8 => "traceparent is not UTF-8",
            Rejection::Oversized => "traceparent is oversized",
            Rejection::Truncated => "traceparent is truncated",
            Rejection::TrailingData => "traceparent version 00 has trailing data",
            Rejection::Malformed => "traceparent is malformed",
            Rejection::Uppercase => "traceparent has uppercase hex",
            Rejection::NotHex => "traceparent has a non-hex character",
            Rejection::ForbiddenVersion => "traceparent version ff is forbidden",
            Rejection::ZeroTraceId => "traceparent trace-id is all zeros",
            Rejection::ZeroSpanId => "traceparent parent-id is all zeros",
            Rejection::BadSimpleHeaders => "x-trace-id/x-span-id headers are not valid ids",
            Rejection::Repeated => "traceparent is repeated",
            Rejection::WrongType(t) => super::carrier::wrong_type!("traceparent", t),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Rejection {}

/// A `traceparent` that passed validation, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traceparent<'a> {
    /// The part a propagator should parse (see [`validate`]): ASCII.
    bytes: &'a [u8],
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) flags: TraceFlags,
}

impl<'a> Traceparent<'a> {
    /// The part a propagator should parse, as text.
    pub(crate) fn text(&self) -> &'a str {
        // Validated as hex digits and dashes: always ASCII.
        std::str::from_utf8(self.bytes).unwrap_or_default()
    }
}

/// Validate a raw `traceparent` value per W3C Trace Context level 1/2.
///
/// Returns the part the propagator should parse: the whole value for version 00, and the
/// first 55 characters for a future version (whose later fields we cannot interpret, as
/// the spec directs). Optional whitespace around the value is tolerated.
pub fn validate(raw: &[u8]) -> Result<&str, Rejection> {
    parse(raw).map(|tp| tp.text())
}

/// [`validate`] and read the ids in the same pass.
pub(crate) fn parse(raw: &[u8]) -> Result<Traceparent<'_>, Rejection> {
    if raw.len() > MAX_TRACEPARENT_LEN {
        return Err(Rejection::Oversized);
    }
    // ASCII is UTF-8; anything else must be valid UTF-8 to be rejected for its content.
    if !raw.is_ascii() && std::str::from_utf8(raw).is_err() {
        return Err(Rejection::NotUtf8);
    }
    let b = trim(raw);
    if b.len() < V00_LEN {
        return Err(Rejection::Truncated);
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return Err(Rejection::Malformed);
    }
    let (version, trace_high, trace_low, span_id, flags) = match all_hex(b) {
        Some(fields) => fields,
        // Fields in order, so that the first bad character decides the reason.
        None => (
            hex_digits(&b[0..2])?,
            hex_digits(&b[3..19])?,
            hex_digits(&b[19..35])?,
            hex_digits(&b[36..52])?,
            hex_digits(&b[53..55])?,
        ),
    };
    match version {
        0xff => return Err(Rejection::ForbiddenVersion),
        0x00 if b.len() != V00_LEN => return Err(Rejection::TrailingData),
        0x00 => {}
        // A future version: more fields may follow, but only after a dash.
        _ if b.len() > V00_LEN && b[V00_LEN] != b'-' => return Err(Rejection::Malformed),
        _ => {}
    }
    if trace_high == 0 && trace_low == 0 {
        return Err(Rejection::ZeroTraceId);
    }
    if span_id == 0 {
        return Err(Rejection::ZeroSpanId);
    }
    Ok(Traceparent {
        bytes: &b[..V00_LEN],
        trace_id: TraceId::from(u128::from(trace_high) << 64 | u128::from(trace_low)),
        span_id: SpanId::from(span_id),
        // Only the sampled flag is defined; others are not propagated.
        flags: TraceFlags::new(flags as u8) & TraceFlags::SAMPLED,
    })
}

/// `raw` without the spaces and tabs W3C allows around a header value.
fn trim(raw: &[u8]) -> &[u8] {
    let blank = |c: &u8| *c == b' ' || *c == b'\t';
    let start = raw.iter().position(|c| !blank(c)).unwrap_or(raw.len());
    let end = raw.iter().rposition(|c| !blank(c)).map_or(start, |i| i + 1);
    &raw[start..end]
}

/// The five fields of a version-00-sized `traceparent` when every digit is lowercase hex
/// (nearly always): version, trace id high and low, span id, flags. `None` sends the
/// caller to the field-by-field reading that names the first bad character.
#[inline]
fn all_hex(b: &[u8]) -> Option<(u64, u64, u64, u64, u64)> {
    let two = |at: usize| {
        let (high, low) = (
            hex::VALUES[usize::from(b[at])],
            hex::VALUES[usize::from(b[at + 1])],
        );
        ((high | low) & 0xf0 == 0).then_some(u64::from(high << 4 | low))
    };
    let sixteen = |at: usize| hex_sixteen(&b[at..at + 16]);
    Some((two(0)?, sixteen(3)?, sixteen(19)?, sixteen(36)?, two(53)?))
}

/// Sixteen lowercase hex digits as their value, eight at a time; `None` if one is not.
#[inline]
fn hex_sixteen(field: &[u8]) -> Option<u64> {
    let high = hex::eight(&field[..8])?;
    let low = hex::eight(&field[8..16])?;
    Some(u64::from(high) << 32 | u64::from(low))
}

/// The value of at most 16 hex digits, one at a time, with the reason for the first one
/// that is not a lowercase hex digit.
fn hex_digits(field: &[u8]) -> Result<u64, Rejection> {
    field
        .iter()
        .try_fold(0u64, |value, &c| match hex::VALUES[usize::from(c)] {
            hex::UPPER => Err(Rejection::Uppercase),
            hex::NOT_HEX => Err(Rejection::NotHex),
            digit => Ok(value << 4 | u64::from(digit)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn accepts_version_00() {
        assert_eq!(validate(GOOD.as_bytes()), Ok(GOOD));
        assert_eq!(validate(format!(" {GOOD}\t").as_bytes()), Ok(GOOD));
    }

    #[test]
    fn future_version_parses_known_prefix() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra-fields";
        assert_eq!(validate(future.as_bytes()), Ok(&future[..55]));
        let exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(validate(exact.as_bytes()), Ok(exact));
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09.extra";
        assert_eq!(validate(glued.as_bytes()), Err(Rejection::Malformed));
    }

    #[test]
    fn rejects_each_bad_form_with_its_reason() {
        let cases: &[(&[u8], Rejection)] = &[
            (
                b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                Rejection::Uppercase,
            ),
            (
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                Rejection::Truncated,
            ),
            (
                b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                Rejection::Truncated,
            ),
            (
                b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                Rejection::ZeroTraceId,
            ),
            (
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                Rejection::ZeroSpanId,
            ),
            (
                b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Rejection::ForbiddenVersion,
            ),
            (
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                Rejection::TrailingData,
            ),
            (
                b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Rejection::Malformed,
            ),
            (
                b"00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
                Rejection::NotHex,
            ),
            (
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\xff\xfe",
                Rejection::NotUtf8,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                validate(raw),
                Err(*want),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let huge = vec![b'a'; MAX_TRACEPARENT_LEN + 1];
        assert_eq!(validate(&huge), Err(Rejection::Oversized));
    }

    /// The eight-at-a-time reading agrees with the digit-by-digit one on every byte in
    /// every position.
    #[test]
    fn hex_words_read_as_digits_do() {
        let base = *b"0123456789abcdef";
        for at in 0..16 {
            for b in 0..=255u8 {
                let mut field = base;
                field[at] = b;
                assert_eq!(
                    hex_sixteen(&field),
                    hex_digits(&field).ok(),
                    "{b:#x} at {at}"
                );
            }
        }
        assert_eq!(hex_sixteen(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(hex_sixteen(b"0000000000000000"), Some(0));
        assert_eq!(
            hex_sixteen(b"00f067aa0ba902b7"),
            Some(0x00f0_67aa_0ba9_02b7)
        );
    }

    #[test]
    fn parse_reads_the_ids_and_only_the_sampled_flag() {
        let tp = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").expect("valid");
        assert_eq!(
            tp.trace_id,
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
        assert_eq!(tp.span_id, SpanId::from(0x00f0_67aa_0ba9_02b7));
        assert_eq!(tp.flags, TraceFlags::SAMPLED);
        let tp = parse(GOOD.replace("-01", "-00").as_bytes())
            .expect("valid")
            .flags;
        assert_eq!(tp, TraceFlags::default());
        let tp = parse(b"00-00000000000000010000000000000000-0000000000000001-01").expect("valid");
        assert_eq!(tp.trace_id, TraceId::from(1_u128 << 64));
    }
}
