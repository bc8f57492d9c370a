//! The default format, W3C Trace Context and W3C Baggage, encoded and decoded directly.
//!
//! The output is what OpenTelemetry's `TraceContextPropagator` and `BaggagePropagator`
//! write and read (the tests check both directions against them), without their
//! intermediate allocations: `traceparent` is formatted into one string, an empty
//! `tracestate` is not sent, and values are percent-decoded only when they contain `%`.
//! Any other propagator configured on [`Propagation`](super::Propagation) goes through
//! the SDK as usual.

use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::trace::{TraceContextExt, TraceFlags, TraceState};
use opentelemetry::Context;

use super::extract::has_duplicate_keys;
use super::{limits, Discarded, WriteCarrier, BAGGAGE, TRACEPARENT, TRACESTATE};

use crate::hex::{put as put_hex, DIGITS as HEX};

/// Write `traceparent`, `tracestate` (when not empty) and `baggage` (when not empty).
pub(crate) fn inject(cx: &Context, baggage: bool, carrier: &mut dyn WriteCarrier) {
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        // `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, laid out in place.
        let mut tp = *b"00-________________________________-________________-__";
        crate::hex::put_u128(
            &mut tp[3..35],
            u128::from_be_bytes(sc.trace_id().to_bytes()),
        );
        crate::hex::put_u64(&mut tp[36..52], u64::from_be_bytes(sc.span_id().to_bytes()));
        put_hex(
            &mut tp[53..55],
            &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
        );
        if let Ok(tp) = std::str::from_utf8(&tp) {
            carrier.set_ascii(TRACEPARENT, super::AsciiValue::new(tp.to_owned()));
        }
        if *sc.trace_state() != TraceState::NONE {
            let header = sc.trace_state().header();
            if !header.is_empty() {
                carrier.set(TRACESTATE, header);
            }
        }
    }
    if baggage {
        let bag = cx.baggage();
        if !bag.is_empty() {
            let mut out = String::with_capacity(64);
            for (name, (value, metadata)) in bag {
                if !out.is_empty() {
                    out.push(',');
                }
                encode_into(&mut out, trim(name.as_str()));
                out.push('=');
                encode_into(&mut out, trim(value.as_str()));
                let metadata = trim(metadata.as_str());
                if !metadata.is_empty() {
                    out.push(';');
                    out.push_str(metadata);
                }
            }
            carrier.set(BAGGAGE, out);
        }
    }
}

/// The bytes a baggage value may contain as they are.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        plain[b] =
            byte.is_ascii_graphic() && !matches!(byte, b'"' | b',' | b';' | b'=' | b'\\' | b'%');
        b += 1;
    }
    plain
};

/// Percent-encode what a baggage value may not contain: controls, space, `"`, `,`, `;`,
/// `=`, `\`, `%` and everything outside ASCII.
fn encode_into(out: &mut String, s: &str) {
    let plain = |b: u8| PLAIN[usize::from(b)];
    if s.bytes().all(plain) {
        // The usual case: nothing to escape.
        out.push_str(s);
        return;
    }
    for &b in s.as_bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)].to_ascii_uppercase() as char);
            out.push(HEX[usize::from(b & 0x0f)].to_ascii_uppercase() as char);
        }
    }
}

/// The trace state of a `tracestate` header (combined, not yet limited): limited to the
/// W3C sizes; empty, with the reason in `discarded`, if it repeats a key or does not
/// parse.
pub(crate) fn trace_state(tracestate: Option<&str>, discarded: &mut Vec<Discarded>) -> TraceState {
    let Some(header) = tracestate else {
        return TraceState::default();
    };
    let limited = limits::limit_tracestate(header);
    if has_duplicate_keys(&limited) {
        discarded.push(Discarded::TracestateDuplicateKeys);
        return TraceState::default();
    }
    match limited.parse::<TraceState>() {
        Ok(state) => state,
        Err(_) => {
            discarded.push(Discarded::TracestateInvalid);
            TraceState::default()
        }
    }
}

/// Decode a `baggage` header (already limited to the W3C sizes) into `cx`.
pub(crate) fn extract_baggage(cx: Context, header: &str) -> Context {
    let mut baggage = Baggage::new();
    for member in header.split(',') {
        // One pass over the member: where its `=` and `;` are, and whether it has a `%`.
        let (mut eq, mut semicolon, mut percent) = (None, None, false);
        for (i, b) in member.bytes().enumerate() {
            match b {
                b'=' if eq.is_none() && semicolon.is_none() => eq = Some(i),
                b';' if semicolon.is_none() => semicolon = Some(i),
                b'%' => percent = true,
                _ => {}
            }
        }
        let Some(eq) = eq else { continue };
        let (value, metadata) = match semicolon {
            Some(i) => (&member[eq + 1..i], trim(&member[i + 1..])),
            None => (&member[eq + 1..], ""),
        };
        let decoded = (
            decode(trim(&member[..eq]), percent),
            decode(trim(value), percent),
        );
        if let (Some(name), Some(value)) = decoded {
            if !name.is_empty() {
                let _ = baggage.insert_with_metadata(name, value, metadata);
            }
        }
    }
    if baggage.is_empty() {
        cx
    } else {
        cx.with_baggage(baggage)
    }
}

/// `s` without surrounding whitespace, checking the two ends first (nearly always
/// enough).
fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// The index of the first `byte` (an ASCII character) in `s`.
fn find(s: &str, byte: u8) -> Option<usize> {
    s.bytes().position(|b| b == byte)
}

/// Percent-decode to UTF-8 text; `None` if the result is not UTF-8. `maybe_percent`:
/// whether the member `s` comes from has a `%` at all.
fn decode(s: &str, maybe_percent: bool) -> Option<String> {
    if !maybe_percent || find(s, b'%').is_none() {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let (h, l) = (hex(h).unwrap_or(0), hex(l).unwrap_or(0));
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanContext, SpanId, TraceId};
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

    use super::*;

    fn cx(flags: TraceFlags, state: &str, bag: &[(&str, &str)]) -> Context {
        let sc = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            flags,
            false,
            state.parse().unwrap_or_default(),
        );
        let kvs: Vec<KeyValue> = bag
            .iter()
            .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()))
            .collect();
        Context::new()
            .with_remote_span_context(sc)
            .with_baggage(kvs)
    }

    const BAGGAGE_CASES: &[&[(&str, &str)]] = &[
        &[],
        &[("run_id", "r-42")],
        &[
            ("q", "Find vendor invoices, March; \"urgent\"=yes"),
            ("who", "naïve ☃"),
            ("pct", "100%"),
        ],
    ];

    #[test]
    fn what_we_write_the_sdk_reads_identically() {
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            for state in ["", "vendor=abc,other=1"] {
                for bag in BAGGAGE_CASES {
                    let original = cx(flags, state, bag);
                    let mut ours: HashMap<String, String> = HashMap::new();
                    inject(&original, true, &mut ours);
                    let tc = TraceContextPropagator::new().extract(&ours);
                    let bc = BaggagePropagator::new().extract(&ours);
                    assert_eq!(
                        tc.span().span_context().trace_id(),
                        original.span().span_context().trace_id()
                    );
                    assert_eq!(
                        tc.span().span_context().span_id(),
                        original.span().span_context().span_id()
                    );
                    assert_eq!(tc.span().span_context().trace_flags(), flags);
                    assert_eq!(tc.span().span_context().trace_state().header(), state);
                    for (k, v) in *bag {
                        if !v.contains('%') {
                            // The SDK does not decode what it does not encode (`%`).
                            assert_eq!(
                                bc.baggage().get(*k).map(|v| v.to_string()).as_deref(),
                                Some(*v),
                                "{k}"
                            );
                        }
                    }
                    assert_eq!(ours.contains_key(TRACESTATE), !state.is_empty());
                }
            }
        }
    }

    #[test]
    fn what_the_sdk_writes_we_read_identically() {
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            for state in ["", "vendor=abc,other=1"] {
                for bag in BAGGAGE_CASES {
                    let original = cx(flags, state, bag);
                    let mut sdk: HashMap<String, String> = HashMap::new();
                    TraceContextPropagator::new().inject_context(&original, &mut sdk);
                    BaggagePropagator::new().inject_context(&original, &mut sdk);
                    let tp = super::super::traceparent::parse(sdk[TRACEPARENT].as_bytes())
                        .expect("valid");
                    let mut discarded = Vec::new();
                    let parsed =
                        trace_state(sdk.get(TRACESTATE).map(String::as_str), &mut discarded);
                    assert!(discarded.is_empty());
                    let sc = SpanContext::new(tp.trace_id, tp.span_id, tp.flags, true, parsed);
                    assert_eq!(sc.trace_id(), original.span().span_context().trace_id());
                    assert_eq!(sc.span_id(), original.span().span_context().span_id());
                    assert_eq!(sc.trace_flags(), flags);
                    assert!(sc.is_remote());
                    assert_eq!(sc.trace_state().header(), state);
                    let got = extract_baggage(
                        Context::new(),
                        sdk.get(BAGGAGE).map(String::as_str).unwrap_or(""),
                    );
                    assert_eq!(got.baggage().len(), bag.len());
                    for (k, v) in *bag {
                        if !v.contains('%') {
                            assert_eq!(
                                got.baggage().get(*k).map(|v| v.to_string()).as_deref(),
                                Some(*v),
                                "{k}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn percent_round_trips_through_our_own_codec() {
        let original = cx(
            TraceFlags::SAMPLED,
            "",
            &[("pct", "100% sure"), ("k", "a=b")],
        );
        let mut h: HashMap<String, String> = HashMap::new();
        inject(&original, true, &mut h);
        let got = extract_baggage(Context::new(), &h[BAGGAGE]);
        assert_eq!(
            got.baggage().get("pct").map(|v| v.to_string()).as_deref(),
            Some("100% sure")
        );
        assert_eq!(
            got.baggage().get("k").map(|v| v.to_string()).as_deref(),
            Some("a=b")
        );
    }

    #[test]
    fn baggage_metadata_and_junk_members() {
        let got = extract_baggage(Context::new(), "a=1;ttl=5, =x ,b, c=%FF%FE ,d = 4 ");
        let bag = got.baggage();
        assert_eq!(
            bag.get_with_metadata("a")
                .map(|(v, m)| (v.to_string(), m.as_str().to_owned())),
            Some(("1".into(), "ttl=5".into()))
        );
        assert_eq!(bag.get("d").map(|v| v.to_string()).as_deref(), Some("4"));
        assert_eq!(
            bag.len(),
            2,
            "empty names, missing '=' and non-UTF-8 values are dropped"
        );
    }
}
