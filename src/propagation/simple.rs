//! The article's simple headers: `x-trace-id`, `x-span-id`, `x-parent-span-id`.
//!
//! Systems built the article's way write `x-trace-id` plus the id of the span that the
//! receiver should name as its parent. tracehop reads them when no `traceparent` is present
//! and, if asked, writes them beside `traceparent`:
//!
//! | header | written as | read as |
//! |---|---|---|
//! | `x-trace-id` | the 32-hex trace id | 32 hex digits, or a UUID (dashes removed) |
//! | `x-span-id` | the send span's id | the sender's span, preferred as parent |
//! | `x-parent-span-id` | the send span's id too | the parent, as the article's snippet writes it |
//!
//! Span ids are 16 hex digits; a UUID is accepted and mapped to its first 64 bits. A
//! message with `x-trace-id` but no usable span id joins that trace as a new root span.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

#[cfg(test)]
use super::ReadCarrier;
use super::Rejection;

/// Header carrying the trace id.
pub const X_TRACE_ID: &str = "x-trace-id";
/// Header carrying the sender's span id.
pub const X_SPAN_ID: &str = "x-span-id";
/// Header carrying the span id the receiver should use as its parent.
pub const X_PARENT_SPAN_ID: &str = "x-parent-span-id";

/// What the simple headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SimpleContext {
    /// Trace id and parent span: a remote parent.
    Parent(SpanContext),
    /// Only a trace id: join the trace as a new root.
    TraceOnly(TraceId),
}

/// Read the simple headers of a carrier. `Ok(None)` when `x-trace-id` is absent.
#[cfg(test)]
pub(crate) fn extract(carrier: &dyn ReadCarrier) -> Result<Option<SimpleContext>, Rejection> {
    extract_values(
        carrier.get(X_TRACE_ID),
        carrier.get(X_SPAN_ID),
        carrier.get(X_PARENT_SPAN_ID),
    )
}

/// Read the simple headers' values. `Ok(None)` when `x-trace-id` is absent.
pub(crate) fn extract_values(
    trace_id: Option<&[u8]>,
    span_id: Option<&[u8]>,
    parent_span_id: Option<&[u8]>,
) -> Result<Option<SimpleContext>, Rejection> {
    let Some(raw_trace) = trace_id else {
        return Ok(None);
    };
    let trace_id = parse_id::<32>(raw_trace)
        .and_then(|h| TraceId::from_hex(&h).ok())
        .filter(|t| *t != TraceId::INVALID)
        .ok_or(Rejection::BadSimpleHeaders)?;
    let span_raw = span_id
        .filter(|v| !v.is_empty())
        .or_else(|| parent_span_id.filter(|v| !v.is_empty()));
    let Some(span_raw) = span_raw else {
        return Ok(Some(SimpleContext::TraceOnly(trace_id)));
    };
    let span_id = parse_id::<16>(span_raw)
        .and_then(|h| SpanId::from_hex(&h).ok())
        .filter(|s| *s != SpanId::INVALID)
        .ok_or(Rejection::BadSimpleHeaders)?;
    Ok(Some(SimpleContext::Parent(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))))
}

/// Normalise an id to `N` lowercase hex digits: exactly `N` hex digits, or a UUID whose
/// first `N` hex digits are taken (all 32 for a trace id).
fn parse_id<const N: usize>(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() > 64 {
        return None;
    }
    let hex: String = if text.len() == 36 && text.matches('-').count() == 4 {
        text.chars().filter(|c| *c != '-').collect()
    } else {
        text.to_owned()
    };
    if hex.len() < N || (hex.len() != N && hex.len() != 32) {
        return None;
    }
    let hex = &hex[..N];
    hex.bytes()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_hex_and_uuid_forms() {
        let m = map(&[
            (X_TRACE_ID, "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"),
            (X_PARENT_SPAN_ID, "00F067AA0BA902B7"),
        ]);
        let Ok(Some(SimpleContext::Parent(sc))) = extract(&m) else {
            panic!("expected a parent")
        };
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote());
    }

    #[test]
    fn span_id_preferred_over_parent_span_id() {
        let m = map(&[
            (X_TRACE_ID, "4bf92f3577b34da6a3ce929d0e0e4736"),
            (X_SPAN_ID, "1111111111111111"),
            (X_PARENT_SPAN_ID, "2222222222222222"),
        ]);
        let Ok(Some(SimpleContext::Parent(sc))) = extract(&m) else {
            panic!("expected a parent")
        };
        assert_eq!(sc.span_id().to_string(), "1111111111111111");
    }

    #[test]
    fn trace_only_and_bad_values() {
        let m = map(&[(X_TRACE_ID, "4bf92f3577b34da6a3ce929d0e0e4736")]);
        assert!(matches!(extract(&m), Ok(Some(SimpleContext::TraceOnly(_)))));
        assert_eq!(extract(&map(&[])), Ok(None));
        for bad in ["tr_7a31", "", "00000000000000000000000000000000", "zz"] {
            let m = map(&[(X_TRACE_ID, bad)]);
            assert_eq!(extract(&m), Err(Rejection::BadSimpleHeaders), "{bad}");
        }
    }
}
