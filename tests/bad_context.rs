//! Bad incoming context never fails a delivery: the message is processed under a new root
//! that says why, and nothing panics, whatever bytes arrive.

use std::collections::HashMap;

use tracehop::{Incoming, Outgoing, Propagation, SpanCollector, Telemetry};

fn consumer(spans: &SpanCollector) -> Telemetry {
    Telemetry::builder("worker")
        .collector(spans)
        .build()
        .expect("telemetry")
}

#[tokio::test]
async fn each_bad_traceparent_starts_a_new_root_that_records_why() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01".to_vec(),
            "traceparent has uppercase hex",
        ),
        (
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_vec(),
            "traceparent trace-id is all zeros",
        ),
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f0".to_vec(),
            "traceparent is truncated",
        ),
        (
            b"not a traceparent at all, but long enough to reach 55 bytes".to_vec(),
            "traceparent is malformed",
        ),
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\xc3\x28".to_vec(),
            "traceparent is not UTF-8",
        ),
        (vec![b'0'; 10_000], "traceparent is oversized"),
    ];
    for (value, why) in cases {
        let spans = SpanCollector::new();
        let worker = consumer(&spans);
        let mut headers: HashMap<String, Vec<u8>> = HashMap::new();
        headers.insert("traceparent".into(), value.clone());
        headers.insert("user-header".into(), b"kept".to_vec());
        let p = worker.process_span(Incoming::new("kafka", "tasks"), &headers);
        let handled = p.run(async { Ok::<_, String>("handled") }).await;
        p.end();
        assert_eq!(handled, Ok("handled"), "the message is still processed");
        let s = &spans.records()[0];
        assert_eq!(s.parent_span_id, None, "{why}");
        assert_eq!(s.attribute_str("tracehop.context.rejected"), Some(why));
        assert_eq!(s.trace_id.len(), 32);
        assert_ne!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

#[tokio::test]
async fn no_context_starts_a_new_root_marked_missing() {
    let spans = SpanCollector::new();
    let worker = consumer(&spans);
    let p = worker.process_span(
        Incoming::new("kafka", "tasks"),
        &HashMap::<String, String>::new(),
    );
    p.end();
    let s = &spans.records()[0];
    assert_eq!(s.parent_span_id, None);
    assert_eq!(s.attribute("tracehop.context.missing"), Some(&true.into()));
    assert_eq!(s.attribute("tracehop.context.rejected"), None);
}

#[tokio::test]
async fn article_style_headers_join_the_senders_trace() {
    let spans = SpanCollector::new();
    let worker = consumer(&spans);
    // Written by a system built the article's way: trace id + the sender's span as parent.
    let mut h: HashMap<String, String> = HashMap::new();
    h.insert(
        "x-trace-id".into(),
        "7a31c0de-0000-4000-8000-00000000beef".into(),
    );
    h.insert("x-parent-span-id".into(), "00000000000000a1".into());
    let p = worker.process_span(Incoming::new("nats", "tasks"), &h);
    p.end();
    // Only a trace id: a new root inside that trace.
    let mut only_trace: HashMap<String, String> = HashMap::new();
    only_trace.insert(
        "x-trace-id".into(),
        "7a31c0de00004000800000000000beef".into(),
    );
    let p = worker.process_span(Incoming::new("nats", "tasks"), &only_trace);
    p.end();

    let spans = spans.records();
    assert_eq!(spans[0].trace_id, "7a31c0de00004000800000000000beef");
    assert_eq!(spans[0].parent_span_id.as_deref(), Some("00000000000000a1"));
    assert_eq!(spans[1].trace_id, "7a31c0de00004000800000000000beef");
    assert_eq!(spans[1].parent_span_id, None);
}

#[tokio::test]
async fn simple_headers_written_on_request_are_read_by_an_article_style_consumer() {
    let spans = SpanCollector::new();
    let producer = Telemetry::builder("gateway")
        .collector(&spans)
        .propagation(Propagation::default().write_simple_headers(true))
        .build()
        .expect("telemetry");
    let mut h: HashMap<String, String> = HashMap::new();
    producer
        .send_span(Outgoing::new("nats", "tasks"), &mut h)
        .end();
    let send = &spans.records()[0];
    // What the article's extract_context() would read:
    assert_eq!(h["x-trace-id"], send.trace_id);
    assert_eq!(h["x-parent-span-id"], send.span_id);
    assert_eq!(h["x-span-id"], send.span_id);
}

/// A small deterministic generator, so the fuzz cases are the same on every run.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn arbitrary_header_bytes_never_panic() {
    let propagation = Propagation::default();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"0123456789abcdefABCDEF-,;=% \t\xff\xc3zZ";
    let valid = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut adopted = 0;
    for _ in 0..20_000 {
        let mut headers: HashMap<String, Vec<u8>> = HashMap::new();
        for key in [
            "traceparent",
            "tracestate",
            "baggage",
            "x-trace-id",
            "x-span-id",
            "tracehop-sent-at",
        ] {
            if rng.next().is_multiple_of(3) {
                continue;
            }
            let value: Vec<u8> = if key == "traceparent" && rng.next().is_multiple_of(2) {
                // Mutate a valid value in one place, the most interesting neighbourhood.
                let mut v = valid.to_vec();
                let i = (rng.next() as usize) % v.len();
                v[i] = alphabet[(rng.next() as usize) % alphabet.len()];
                v
            } else {
                let len = (rng.next() % 120) as usize;
                (0..len)
                    .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
                    .collect()
            };
            headers.insert(key.into(), value);
        }
        let got = propagation.extract(&headers);
        if got.has_parent() {
            adopted += 1;
            assert!(got.rejected.is_none());
        }
    }
    assert!(
        adopted > 0,
        "some mutations stay valid (e.g. a changed hex digit)"
    );
}
