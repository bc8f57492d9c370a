use std::collections::HashMap;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

use super::*;

fn remote(trace: u128, span: u64) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ))
}

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The direct W3C codec and the same format through OpenTelemetry's propagators.
fn both() -> [Propagation; 2] {
    [Propagation::default(), Propagation::sdk_w3c()]
}

#[test]
fn inject_then_extract_round_trips_ids_and_baggage() {
    for p in both() {
        let cx = remote(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7).with_baggage(vec![
            KeyValue::new("run_id", "r-1"),
            KeyValue::new("tenant", "acme"),
        ]);
        let mut h: HashMap<String, String> = HashMap::new();
        p.inject(&cx, &mut h);
        assert_eq!(
            h.get("traceparent").map(String::as_str),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(h.contains_key(SENT_AT));
        assert!(
            !h.contains_key(simple::X_TRACE_ID),
            "simple headers are opt-in"
        );

        let got = p.extract(&h);
        assert_eq!(got.source, ContextSource::Propagator);
        assert_eq!(got.rejected, None);
        let sc = got.context().span().span_context().clone();
        assert_eq!(
            sc.trace_id(),
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736)
        );
        assert_eq!(sc.span_id(), SpanId::from(0x00f067aa0ba902b7));
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            got.context().baggage().get("run_id").map(|v| v.to_string()),
            Some("r-1".into())
        );
        assert_eq!(
            got.context().baggage().get("tenant").map(|v| v.to_string()),
            Some("acme".into())
        );
        assert!(got.sent_at.is_some());
    }
}

#[test]
fn bytes_carrier_and_non_utf8_traceparent() {
    let p = Propagation::default();
    let mut h: HashMap<String, Vec<u8>> = HashMap::new();
    h.insert(
        "traceparent".into(),
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-\xff\xfe".to_vec(),
    );
    let got = p.extract(&h);
    assert_eq!(got.rejected, Some(Rejection::NotUtf8));
    assert!(!got.has_parent());
}

#[test]
fn every_bad_traceparent_is_rejected_without_panic() {
    for p in both() {
        let cases = [
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
                Rejection::Uppercase,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                Rejection::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                Rejection::ZeroSpanId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba9",
                Rejection::Truncated,
            ),
            ("garbage", Rejection::Truncated),
            ("", Rejection::Truncated),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Rejection::ForbiddenVersion,
            ),
        ];
        for (value, why) in cases {
            let h = headers(&[("traceparent", value), ("tracestate", "vendor=1")]);
            let got = p.extract(&h);
            assert_eq!(got.rejected, Some(why), "{value}");
            assert!(!got.has_parent(), "{value}");
            assert_eq!(got.source, ContextSource::None);
        }
        let oversized = format!("00-{}", "a".repeat(4096));
        let got = p.extract(&headers(&[("traceparent", &oversized)]));
        assert_eq!(got.rejected, Some(Rejection::Oversized));
    }
}

#[test]
fn future_version_is_accepted_per_spec() {
    for p in both() {
        let h = headers(&[(
            "traceparent",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        )]);
        let got = p.extract(&h);
        assert_eq!(got.rejected, None);
        assert_eq!(
            got.context().span().span_context().trace_id(),
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736)
        );
    }
}

#[test]
fn oversized_tracestate_and_baggage_lose_members_not_the_message() {
    for p in both() {
        let state: Vec<String> = (0..50).map(|i| format!("v{i}=x")).collect();
        let bag: Vec<String> = (0..100)
            .map(|i| format!("k{i}={}", "y".repeat(100)))
            .collect();
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", &state.join(",")),
            ("baggage", &bag.join(",")),
        ]);
        let got = p.extract(&h);
        assert!(got.has_parent());
        let ts = got.context().span().span_context().trace_state().header();
        assert_eq!(ts.split(',').count(), 32, "{ts}");
        assert!(ts.starts_with("v0=x"));
        let baggage = got.context().baggage();
        // 100 members of 104 bytes: 64 would be 6.7 KB, so the member limit binds first.
        assert_eq!(baggage.len(), 64);
        assert!(baggage.get("k0").is_some() && baggage.get("k63").is_some());
        assert!(baggage.get("k64").is_none());
    }
}

#[test]
fn simple_headers_are_written_on_request_and_read_without_traceparent() {
    let p = Propagation::default().write_simple_headers(true);
    let cx = remote(0xabc, 0xdef);
    let mut h: HashMap<String, String> = HashMap::new();
    p.inject(&cx, &mut h);
    assert_eq!(h[simple::X_TRACE_ID], "00000000000000000000000000000abc");
    assert_eq!(h[simple::X_SPAN_ID], "0000000000000def");
    assert_eq!(h[simple::X_PARENT_SPAN_ID], "0000000000000def");

    h.remove("traceparent");
    let got = p.extract(&h);
    assert_eq!(got.source, ContextSource::SimpleHeaders);
    assert_eq!(
        got.context().span().span_context().span_id(),
        SpanId::from(0xdef)
    );

    let off = Propagation::default().read_simple_headers(false);
    assert_eq!(off.extract(&h).source, ContextSource::None);
}

#[test]
fn traceparent_wins_over_simple_headers_and_bad_simple_headers_are_rejected() {
    let p = Propagation::default();
    let h = headers(&[
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (simple::X_TRACE_ID, "11111111111111111111111111111111"),
        (simple::X_SPAN_ID, "2222222222222222"),
    ]);
    let got = p.extract(&h);
    assert_eq!(got.source, ContextSource::Propagator);
    assert_eq!(
        got.context().span().span_context().span_id(),
        SpanId::from(0x00f067aa0ba902b7)
    );

    let got = p.extract(&headers(&[(simple::X_TRACE_ID, "tr_7a31")]));
    assert_eq!(got.rejected, Some(Rejection::BadSimpleHeaders));
    let got = p.extract(&headers(&[(
        simple::X_TRACE_ID,
        "4bf92f3577b34da6a3ce929d0e0e4736",
    )]));
    assert_eq!(
        got.join_trace,
        Some(TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736))
    );
    assert!(!got.has_parent());
}

#[test]
fn no_headers_means_no_context_and_no_rejection() {
    let got = Propagation::default().extract(&HashMap::<String, String>::new());
    assert_eq!(got.source, ContextSource::None);
    assert_eq!(got.rejected, None);
    assert_eq!(got.sent_at, None);
}

#[test]
fn attempt_header_reads_positive_numbers_only() {
    assert_eq!(attempt(&headers(&[(ATTEMPT, "3")])), Some(3));
    assert_eq!(attempt(&headers(&[(ATTEMPT, "0")])), None);
    assert_eq!(attempt(&headers(&[(ATTEMPT, "x")])), None);
    assert_eq!(attempt(&headers(&[])), None);
}

#[test]
fn sent_at_is_written_in_decimal() {
    let mut h: HashMap<String, String> = HashMap::new();
    Propagation::default().inject(&remote(1, 1), &mut h);
    let micros: u64 = h[SENT_AT].parse().expect("decimal micros");
    assert!(micros > 1_600_000_000_000_000);
}

#[test]
fn known_headers_are_ours_only() {
    for name in [
        TRACEPARENT,
        TRACESTATE,
        BAGGAGE,
        SENT_AT,
        ATTEMPT,
        "x-trace-id",
    ] {
        assert_eq!(super::known_header(name), Some(name));
    }
    assert_eq!(super::known_header("Traceparent"), None);
    assert_eq!(super::known_header("x-user"), None);
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Headers as a broker hands them over: repeats allowed, values of any type.
struct Pairs(Vec<(&'static str, HeaderValue<'static>)>);

impl Pairs {
    fn text(pairs: &[(&'static str, &'static str)]) -> Pairs {
        Pairs(
            pairs
                .iter()
                .map(|(k, v)| (*k, HeaderValue::Bytes(v.as_bytes())))
                .collect(),
        )
    }
}

impl ReadCarrier for Pairs {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.0.iter().rev().find_map(|(k, v)| match v {
            HeaderValue::Bytes(b) if *k == key => Some(*b),
            _ => None,
        })
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
    fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
        for (k, v) in &self.0 {
            visit(k, *v);
        }
    }
}

#[test]
fn two_traceparents_restart_the_trace_with_a_reason() {
    for p in both() {
        for second in [
            TP,
            "00-11111111111111111111111111111111-2222222222222222-01",
        ] {
            let h = Pairs::text(&[(TRACEPARENT, TP), ("x", "y"), (TRACEPARENT, second)]);
            let got = p.extract(&h);
            assert_eq!(got.rejected, Some(Rejection::Repeated));
            assert_eq!(
                got.rejected.map(Rejection::as_str),
                Some("traceparent is repeated")
            );
            assert!(!got.has_parent());
            assert_eq!(got.source, ContextSource::None);
        }
        // One traceparent among repeats of other names is fine.
        let h = Pairs::text(&[(TRACEPARENT, TP), ("x", "1"), ("x", "2")]);
        assert!(p.extract(&h).has_parent());
    }
}

#[test]
fn repeated_tracestate_and_baggage_headers_are_combined_in_order() {
    for p in both() {
        let h = Pairs::text(&[
            (TRACEPARENT, TP),
            (TRACESTATE, "a=1,b=2"),
            (BAGGAGE, "k1=v1"),
            (TRACESTATE, "c=3"),
            (BAGGAGE, "k2=v2,k3=v3"),
            (TRACESTATE, "d=4,e=5"),
        ]);
        let got = p.extract(&h);
        assert!(got.has_parent());
        assert!(got.discarded.is_empty(), "{:?}", got.discarded);
        assert_eq!(
            got.context().span().span_context().trace_state().header(),
            "a=1,b=2,c=3,d=4,e=5"
        );
        let bag = got.context().baggage();
        assert_eq!(bag.len(), 3);
        for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
            assert_eq!(bag.get(k).map(|v| v.to_string()).as_deref(), Some(v));
        }
    }
}

#[test]
fn combined_tracestate_is_limited_after_joining() {
    let many: Vec<String> = (0..20).map(|i| format!("m{i}=x")).collect();
    let first: &'static str = Box::leak(many.join(",").into_boxed_str());
    let more: Vec<String> = (20..40).map(|i| format!("m{i}=x")).collect();
    let second: &'static str = Box::leak(more.join(",").into_boxed_str());
    let h = Pairs::text(&[(TRACEPARENT, TP), (TRACESTATE, first), (TRACESTATE, second)]);
    let got = Propagation::default().extract(&h);
    let ts = got.context().span().span_context().trace_state().header();
    let members: Vec<&str> = ts.split(',').collect();
    assert_eq!(members.len(), 32);
    assert_eq!((members[0], members[31]), ("m0=x", "m31=x"));
}

#[test]
fn a_tracestate_with_duplicate_keys_is_discarded_and_the_trace_continues() {
    for p in both() {
        for h in [
            Pairs::text(&[(TRACEPARENT, TP), (TRACESTATE, "foo=1,foo=2")]),
            // Duplicates across repeated headers count too.
            Pairs::text(&[
                (TRACEPARENT, TP),
                (TRACESTATE, "foo=1"),
                (TRACESTATE, "foo=2"),
            ]),
        ] {
            let got = p.extract(&h);
            assert!(got.has_parent(), "the trace goes on");
            assert_eq!(got.rejected, None);
            assert_eq!(got.discarded, [Discarded::TracestateDuplicateKeys]);
            assert_eq!(
                got.context().span().span_context().trace_state().header(),
                ""
            );
            // And it is not forwarded (the SDK's propagator writes an empty header).
            let mut out: HashMap<String, String> = HashMap::new();
            p.inject(got.context(), &mut out);
            assert!(out.get(TRACESTATE).is_none_or(String::is_empty), "{out:?}");
        }
    }
}

#[test]
fn unusable_tracestate_or_baggage_is_discarded_with_its_reason() {
    let cases: [(Pairs, &[Discarded]); 4] = [
        (
            Pairs::text(&[(TRACEPARENT, TP), (TRACESTATE, "no-equals-sign")]),
            &[Discarded::TracestateInvalid],
        ),
        (
            Pairs(vec![
                (TRACEPARENT, HeaderValue::Bytes(TP.as_bytes())),
                (TRACESTATE, HeaderValue::Bytes(b"a=\xff")),
                (BAGGAGE, HeaderValue::Bytes(b"k=\xfe")),
            ]),
            &[Discarded::TracestateNotUtf8, Discarded::BaggageNotUtf8],
        ),
        (
            Pairs(vec![
                (TRACEPARENT, HeaderValue::Bytes(TP.as_bytes())),
                (TRACESTATE, HeaderValue::Typed(ValueType::Integer)),
                (BAGGAGE, HeaderValue::Typed(ValueType::Table)),
            ]),
            &[
                Discarded::TracestateWrongType(ValueType::Integer),
                Discarded::BaggageWrongType(ValueType::Table),
            ],
        ),
        (
            Pairs(vec![
                (TRACEPARENT, HeaderValue::Bytes(TP.as_bytes())),
                (TRACESTATE, HeaderValue::Bytes(b"a=1")),
                (TRACESTATE, HeaderValue::Typed(ValueType::Void)),
            ]),
            &[Discarded::TracestateWrongType(ValueType::Void)],
        ),
    ];
    for (h, want) in cases {
        let got = Propagation::default().extract(&h);
        assert!(got.has_parent());
        assert_eq!(got.discarded, want);
        assert!(got.context().baggage().is_empty());
    }
    for t in [
        ValueType::Boolean,
        ValueType::Integer,
        ValueType::Float,
        ValueType::Decimal,
        ValueType::Timestamp,
        ValueType::Table,
        ValueType::Array,
        ValueType::Void,
    ] {
        let name = t.as_str();
        assert_eq!(
            Rejection::WrongType(t).as_str(),
            format!("traceparent wrong-type:{name}")
        );
        let tracestate = Discarded::TracestateWrongType(t).as_str();
        assert_eq!(tracestate, format!("tracestate wrong-type:{name}"));
        let baggage = Discarded::BaggageWrongType(t).as_str();
        assert_eq!(baggage, format!("baggage wrong-type:{name}"));
    }
}

#[test]
fn a_traceparent_that_is_not_text_is_rejected_with_its_type() {
    for t in [
        ValueType::Integer,
        ValueType::Boolean,
        ValueType::Void,
        ValueType::Table,
        ValueType::Array,
    ] {
        let h = Pairs(vec![
            (TRACEPARENT, HeaderValue::Typed(t)),
            (TRACESTATE, HeaderValue::Bytes(b"a=1")),
        ]);
        let got = Propagation::default().extract(&h);
        assert_eq!(got.rejected, Some(Rejection::WrongType(t)));
        assert_eq!(
            Rejection::WrongType(t).as_str(),
            format!("traceparent wrong-type:{}", t.as_str())
        );
        assert!(!got.has_parent());
        assert!(
            got.discarded.is_empty(),
            "no tracestate without traceparent"
        );
    }
}

#[test]
fn attempt_and_sent_at_are_read_in_the_same_pass_the_last_value_winning() {
    let h = Pairs::text(&[
        (ATTEMPT, "2"),
        (SENT_AT, "1000"),
        (ATTEMPT, "3"),
        (SENT_AT, "2000000"),
    ]);
    let got = Propagation::default().extract(&h);
    assert_eq!(got.attempt, Some(3));
    assert_eq!(
        got.sent_at,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(2))
    );
    assert_eq!(attempt(&h), Some(3));
    let got = Propagation::default().extract(&headers(&[(ATTEMPT, "0")]));
    assert_eq!(got.attempt, None);
}

/// A carrier that implements only `get` and `keys` is read through the default
/// `for_each`, which asks for each header tracehop reads.
#[test]
fn a_carrier_with_only_get_is_read_in_full() {
    struct Lookup(HashMap<String, String>);
    impl ReadCarrier for Lookup {
        fn get(&self, key: &str) -> Option<&[u8]> {
            self.0.get(key).map(|v| v.as_bytes())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }
    let h = Lookup(headers(&[
        (TRACEPARENT, TP),
        (TRACESTATE, "v=1"),
        (BAGGAGE, "k=v"),
        (ATTEMPT, "4"),
        (SENT_AT, "5"),
    ]));
    let got = Propagation::default().extract(&h);
    assert!(got.has_parent());
    assert_eq!(
        got.context().span().span_context().trace_state().header(),
        "v=1"
    );
    assert_eq!(
        got.context()
            .baggage()
            .get("k")
            .map(|v| v.to_string())
            .as_deref(),
        Some("v")
    );
    assert_eq!(got.attempt, Some(4));
    assert!(got.sent_at.is_some());
}
