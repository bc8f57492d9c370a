//! Reading a message's context: its headers scanned once, W3C's rules for repeated
//! headers applied, and every header that could not be used accounted for.
//!
//! - More than one `traceparent`: the context is rejected ([`Rejection::Repeated`]) and
//!   the consumer starts a new trace, as W3C Trace Context directs.
//! - Several `tracestate` (or `baggage`) headers: combined in order, comma-joined, as
//!   HTTP combines a repeated list header, then limited.
//! - A `tracestate` that repeats a key among the members kept (`foo=1,foo=2`), that the
//!   SDK cannot parse, that is not UTF-8 or not text at all: discarded, the trace goes on
//!   without it, and the reason is in [`Extracted::discarded`] (the process span's
//!   `tracehop.context.discarded`). The same for a `baggage` that is not UTF-8 or not
//!   text.
//! - `tracehop-sent-at`, `tracehop-attempt` and the `x-trace-id` family, if repeated:
//!   the last value counts.

use std::borrow::Cow;
use std::fmt;

use super::carrier::{wrong_type, HeaderValue, ReadCarrier, ValueType};
use super::simple::{X_PARENT_SPAN_ID, X_SPAN_ID, X_TRACE_ID};
use super::{ATTEMPT, BAGGAGE, SENT_AT, TRACEPARENT, TRACESTATE};

/// Why a `tracestate` or `baggage` header was left out while the trace itself went on.
///
/// Recorded on the process span as the `tracehop.context.discarded` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discarded {
    /// `tracestate` has a key twice among its members (W3C: discard the header).
    TracestateDuplicateKeys,
    /// `tracestate` is not a valid list of `key=value` members.
    TracestateInvalid,
    /// `tracestate` is not UTF-8 text.
    TracestateNotUtf8,
    /// `tracestate` has a type that cannot carry text (AMQP).
    TracestateWrongType(ValueType),
    /// `baggage` is not UTF-8 text.
    BaggageNotUtf8,
    /// `baggage` has a type that cannot carry text (AMQP).
    BaggageWrongType(ValueType),
}

impl Discarded {
    /// A short, stable reason string (the attribute value).
    pub fn as_str(self) -> &'static str {
        match self {
            Discarded::TracestateDuplicateKeys => "tracestate has duplicate keys",
            Discarded::TracestateInvalid => "tracestate is invalid",
            Discarded::TracestateNotUtf8 => "tracestate is not UTF-8",
            Discarded::TracestateWrongType(t) => wrong_type!("tracestate", t),
            Discarded::BaggageNotUtf8 => "baggage is not UTF-8",
            Discarded::BaggageWrongType(t) => wrong_type!("baggage", t),
        }
    }
}

impl fmt::Display for Discarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one pass over a message's headers found.
#[derive(Debug, Default)]
pub(crate) struct Scan<'a> {
    /// The last `traceparent`, and how many there were.
    pub(crate) traceparent: Option<HeaderValue<'a>>,
    pub(crate) traceparents: u32,
    pub(crate) tracestate: Joined<'a>,
    pub(crate) baggage: Joined<'a>,
    pub(crate) sent_at: Option<&'a [u8]>,
    pub(crate) attempt: Option<&'a [u8]>,
    pub(crate) x_trace_id: Option<&'a [u8]>,
    pub(crate) x_span_id: Option<&'a [u8]>,
    pub(crate) x_parent_span_id: Option<&'a [u8]>,
}

impl<'a> Scan<'a> {
    /// Visit `carrier`'s headers once.
    pub(crate) fn of(carrier: &'a dyn ReadCarrier) -> Scan<'a> {
        let mut scan = Scan::default();
        carrier.for_each(&mut |name, value| {
            let last = match name {
                TRACEPARENT => {
                    scan.traceparents += 1;
                    scan.traceparent = Some(value);
                    return;
                }
                TRACESTATE => return scan.tracestate.add(value),
                BAGGAGE => return scan.baggage.add(value),
                SENT_AT => &mut scan.sent_at,
                ATTEMPT => &mut scan.attempt,
                X_TRACE_ID => &mut scan.x_trace_id,
                X_SPAN_ID => &mut scan.x_span_id,
                X_PARENT_SPAN_ID => &mut scan.x_parent_span_id,
                _ => return,
            };
            // A value that is not text is as good as absent for these.
            if let HeaderValue::Bytes(bytes) = value {
                *last = Some(bytes);
            }
        });
        scan
    }
}

/// The values of a list header (`tracestate`, `baggage`), combined in order.
#[derive(Debug, Default)]
pub(crate) enum Joined<'a> {
    #[default]
    Absent,
    One(&'a [u8]),
    Many(Vec<u8>),
    /// One of the values was not text: the whole header is unusable.
    WrongType(ValueType),
}

/// Why a list header cannot be read as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreadable {
    NotUtf8,
    WrongType(ValueType),
}

impl<'a> Joined<'a> {
    fn add(&mut self, value: HeaderValue<'a>) {
        let bytes = match value {
            HeaderValue::Bytes(bytes) => bytes,
            HeaderValue::Typed(t) => {
                if !matches!(self, Joined::WrongType(_)) {
                    *self = Joined::WrongType(t);
                }
                return;
            }
        };
        *self = match std::mem::take(self) {
            Joined::Absent => Joined::One(bytes),
            Joined::One(first) => {
                let mut joined = Vec::with_capacity(first.len() + 1 + bytes.len());
                joined.extend_from_slice(first);
                joined.push(b',');
                joined.extend_from_slice(bytes);
                Joined::Many(joined)
            }
            Joined::Many(mut joined) => {
                joined.push(b',');
                joined.extend_from_slice(bytes);
                Joined::Many(joined)
            }
            wrong @ Joined::WrongType(_) => wrong,
        };
    }

    /// The combined value as text; `Ok(None)` when absent.
    pub(crate) fn text(&self) -> Result<Option<Cow<'_, str>>, Unreadable> {
        let bytes = match self {
            Joined::Absent => return Ok(None),
            Joined::One(bytes) => *bytes,
            Joined::Many(joined) => joined.as_slice(),
            Joined::WrongType(t) => return Err(Unreadable::WrongType(*t)),
        };
        std::str::from_utf8(bytes)
            .map(|text| Some(Cow::Borrowed(text)))
            .map_err(|_| Unreadable::NotUtf8)
    }
}

/// Whether a `tracestate` value names a key twice (blank members aside).
pub(crate) fn has_duplicate_keys(tracestate: &str) -> bool {
    let keys = || {
        tracestate
            .split(',')
            .map(|m| m.trim_matches([' ', '\t']))
            .filter(|m| !m.is_empty())
            .map(|m| m.split_once('=').map_or(m, |(key, _)| key))
    };
    keys()
        .enumerate()
        .any(|(i, key)| keys().skip(i + 1).any(|other| other == key))
}

/// A decimal number with optional whitespace around it (and an optional `+`, as
/// `str::parse` takes).
pub(crate) fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.trim_ascii();
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = d.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A delivery attempt number: a positive decimal that fits a `u32`.
pub(crate) fn parse_attempt(bytes: &[u8]) -> Option<u32> {
    parse_decimal(bytes)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_among_members() {
        assert!(has_duplicate_keys("foo=1,foo=2"));
        assert!(has_duplicate_keys("a=1, b=2 ,\ta=3"));
        assert!(has_duplicate_keys("t@v=1,x=2,t@v=3"));
        assert!(!has_duplicate_keys("foo=1,bar=2"));
        assert!(!has_duplicate_keys("foo=1,,foo1=2, "));
        assert!(!has_duplicate_keys(""));
    }

    #[test]
    fn numbers_parse_as_str_parse_does() {
        for text in ["0", "42", " 7 ", "18446744073709551615", "01", "+1"] {
            assert_eq!(
                parse_decimal(text.as_bytes()),
                text.trim().parse().ok(),
                "{text}"
            );
        }
        for bad in [
            "",
            " ",
            "-1",
            "+",
            "1.5",
            "x",
            "18446744073709551616",
            "1 2",
        ] {
            assert_eq!(parse_decimal(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_attempt(b"3"), Some(3));
        assert_eq!(parse_attempt(b"0"), None);
        assert_eq!(parse_attempt(b"4294967296"), None);
    }

    #[test]
    fn list_headers_join_in_order_and_a_typed_value_spoils_them() {
        let mut joined = Joined::default();
        assert_eq!(joined.text(), Ok(None));
        joined.add(HeaderValue::Bytes(b"a=1"));
        assert_eq!(joined.text(), Ok(Some(Cow::Borrowed("a=1"))));
        joined.add(HeaderValue::Bytes(b"b=2"));
        joined.add(HeaderValue::Bytes(b"c=3"));
        assert_eq!(joined.text().expect("text").as_deref(), Some("a=1,b=2,c=3"));
        joined.add(HeaderValue::Typed(ValueType::Integer));
        joined.add(HeaderValue::Typed(ValueType::Table));
        joined.add(HeaderValue::Bytes(b"d=4"));
        assert_eq!(
            joined.text(),
            Err(Unreadable::WrongType(ValueType::Integer))
        );
        let mut bad = Joined::default();
        bad.add(HeaderValue::Bytes(b"\xff"));
        assert_eq!(bad.text(), Err(Unreadable::NotUtf8));
    }
}
