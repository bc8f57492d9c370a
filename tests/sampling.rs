//! Sampling: unsampled messages still carry context (a span id of their own, the trace
//! state and the baggage, with every propagation) and get correct parents downstream,
//! ratio and parent-based decisions hold across a hop, and a sampler that looks at
//! attributes still sees them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};
use tracehop::propagation::TRACEPARENT;
use tracehop::{Incoming, Outgoing, SpanCollector, Telemetry};

fn service(spans: &SpanCollector, name: &str, sampler: Sampler) -> Telemetry {
    Telemetry::builder(name)
        .collector(spans)
        .sampler(sampler)
        .build()
        .unwrap()
}

/// The trace of [`remote_parent`].
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A remote parent span in [`TRACE`] (span `00f067aa0ba902b7`, trace state
/// `vendor=kept`), with `flags` and the baggage member `run_id` when given.
fn remote_parent(flags: opentelemetry::trace::TraceFlags, run_id: Option<&'static str>) -> Context {
    let cx = Context::new().with_remote_span_context(opentelemetry::trace::SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        flags,
        true,
        TraceState::from_key_value([("vendor", "kept")]).unwrap(),
    ));
    match run_id {
        Some(id) => cx.with_baggage([KeyValue::new("run_id", id)]),
        None => cx,
    }
}

/// Send one message from `producer` (inside `parent`), process it in `consumer`, and
/// return the headers it carried and the process span's context.
fn hop(
    producer: &Telemetry,
    consumer: &Telemetry,
    parent: &Context,
) -> (HashMap<String, String>, Context) {
    let mut headers: HashMap<String, String> = HashMap::new();
    let send = producer.send_span_with_parent(Outgoing::new("nats", "jobs"), parent, &mut headers);
    let sent = send.span_context();
    send.end();
    let process = consumer.process_span(Incoming::new("nats", "jobs"), &headers);
    let cx = process.context().clone();
    assert_eq!(cx.span().span_context().trace_id(), sent.trace_id());
    process.end();
    (headers, cx)
}

#[test]
fn an_unsampled_send_still_carries_its_context_and_the_next_hop_is_its_child() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer", Sampler::AlwaysOff);
    // The consumer records everything: its span shows the unsampled send as its parent.
    let consumer = service(&spans, "consumer", Sampler::AlwaysOn);
    let mut headers: HashMap<String, String> = HashMap::new();
    let send = producer.send_span(Outgoing::new("nats", "jobs"), &mut headers);
    let sent = send.span_context();
    send.end();
    assert!(sent.is_valid() && !sent.is_sampled());
    let traceparent = &headers[TRACEPARENT];
    assert_eq!(
        traceparent,
        &format!("00-{}-{}-00", sent.trace_id(), sent.span_id())
    );
    assert!(headers.contains_key("tracehop-sent-at"));
    let process = consumer.process_span(Incoming::new("nats", "jobs"), &headers);
    process.end();
    let records = spans.records();
    assert_eq!(records.len(), 1, "only the consumer records: {records:#?}");
    assert_eq!(records[0].trace_id, sent.trace_id().to_string());
    assert_eq!(
        records[0].parent_span_id.as_deref(),
        Some(sent.span_id().to_string().as_str())
    );
    assert!(records[0].attribute("tracehop.queue_time_ms").is_some());
}

#[test]
fn parent_based_sampling_follows_the_message_across_the_hop() {
    let spans = SpanCollector::new();
    let parent_based = || Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    let producer = service(&spans, "producer", parent_based());
    let consumer = service(&spans, "consumer", parent_based());
    let downstream = service(&spans, "downstream", parent_based());

    // Below an unsampled parent nothing is recorded, on either side, and every hop keeps
    // the trace and a fresh span id.
    let unsampled = remote_parent(opentelemetry::trace::TraceFlags::default(), None);
    let (headers, process) = hop(&producer, &consumer, &unsampled);
    assert!(headers[TRACEPARENT].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(headers[TRACEPARENT].ends_with("-00"));
    assert_eq!(
        headers["tracestate"], "vendor=kept",
        "trace state rides along"
    );
    let sc = process.span().span_context().clone();
    assert!(!sc.is_sampled());
    assert_ne!(sc.span_id().to_string(), "00f067aa0ba902b7");
    let (_, next) = hop(&consumer, &downstream, &process);
    assert_eq!(next.span().span_context().trace_id(), sc.trace_id());
    assert!(spans.is_empty(), "{:#?}", spans.records());

    // A root is sampled (AlwaysOn below ParentBased): both spans are recorded, parent to child.
    let (_, process) = hop(&producer, &consumer, &Context::new());
    assert!(process.span().span_context().is_sampled());
    let records = spans.records();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[1].parent_span_id.as_ref(),
        Some(&records[0].span_id)
    );
}

#[test]
fn an_unsampled_send_writes_its_own_context_with_every_propagation() {
    use tracehop::propagation::Propagation;
    let trace = TraceId::from_hex(TRACE).unwrap();
    let parent = remote_parent(opentelemetry::trace::TraceFlags::SAMPLED, Some("r-9"));
    // tracehop's own W3C codec, and the SDK's propagators (a custom propagator).
    for (name, propagation) in [
        ("direct", Propagation::default()),
        ("sdk", Propagation::sdk_w3c()),
    ] {
        let spans = SpanCollector::new();
        let producer = Telemetry::builder("producer")
            .collector(&spans)
            .sampler(Sampler::AlwaysOff)
            .propagation(propagation.write_simple_headers(true))
            .build()
            .unwrap();
        let mut headers: HashMap<String, String> = HashMap::new();
        let send =
            producer.send_span_with_parent(Outgoing::new("nats", "jobs"), &parent, &mut headers);
        let sc = send.span_context();
        assert!(sc.is_valid() && !sc.is_sampled(), "{name}");
        assert_eq!(sc.trace_id(), trace, "{name}");
        assert_ne!(sc.span_id().to_string(), "00f067aa0ba902b7", "{name}");
        assert_eq!(
            headers[TRACEPARENT],
            format!("00-{trace}-{}-00", sc.span_id()),
            "{name}"
        );
        assert_eq!(headers["tracestate"], "vendor=kept", "{name}");
        assert!(
            headers["baggage"].contains("run_id=r-9"),
            "{name}: {headers:?}"
        );
        assert_eq!(headers["x-trace-id"], trace.to_string(), "{name}");
        assert_eq!(headers["x-span-id"], sc.span_id().to_string(), "{name}");
        // The span's context, built when asked for: its span context and the baggage.
        assert_eq!(send.context().span().span_context(), &sc, "{name}");
        assert_eq!(
            send.context()
                .baggage()
                .get("run_id")
                .map(|v| v.to_string()),
            Some("r-9".to_owned()),
            "{name}"
        );
        send.end();
        assert!(spans.is_empty(), "{name}: nothing is recorded");
    }
}

#[test]
fn an_unsampled_send_does_not_hold_its_recording_parent_open() {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    let spans = SpanCollector::new();
    let app = service(&spans, "app", Sampler::AlwaysOn);
    let producer = service(&spans, "producer", Sampler::AlwaysOff);
    let parent = app.provider().tracer("app").start("handle_request");
    let parent_id = parent.span_context().span_id();
    let parent = Context::current_with_span(parent);
    let mut headers: HashMap<String, String> = HashMap::new();
    let send = producer.send_span_with_parent(Outgoing::new("nats", "jobs"), &parent, &mut headers);
    assert_eq!(
        send.context().span().span_context().trace_id(),
        parent.span().span_context().trace_id()
    );
    // The caller lets go of its span: it ends now, while the send is still in flight.
    drop(parent);
    let records = spans.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].span_id, parent_id.to_string());
    send.end();
    assert_eq!(
        spans.records().len(),
        1,
        "the unsampled send records nothing"
    );
}

#[test]
fn a_dropped_process_span_keeps_the_trace_state_and_baggage_of_its_message() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer", Sampler::AlwaysOn);
    let consumer = service(&spans, "consumer", Sampler::AlwaysOff);
    let downstream = service(&spans, "downstream", Sampler::AlwaysOn);
    let trace = TraceId::from_hex(TRACE).unwrap();
    let parent = remote_parent(opentelemetry::trace::TraceFlags::SAMPLED, Some("r-7"));
    let (headers, process) = hop(&producer, &consumer, &parent);
    let send_span_id = headers[TRACEPARENT][36..52].to_owned();
    let sc = process.span().span_context().clone();
    assert_eq!(sc.trace_id(), trace);
    assert!(sc.is_valid() && !sc.is_sampled());
    assert_ne!(
        sc.span_id().to_string(),
        send_span_id,
        "a span id of its own"
    );
    assert_eq!(sc.trace_state().header(), "vendor=kept");
    assert_eq!(
        process.baggage().get("run_id").map(|v| v.to_string()),
        Some("r-7".to_owned())
    );
    // Forwarded from inside the dropped span: the same trace, this span as the parent,
    // not sampled, with the trace state and baggage.
    let (forwarded, _) = hop(&consumer, &downstream, &process);
    assert_eq!(
        forwarded[TRACEPARENT][..36],
        format!("00-{trace}-"),
        "{forwarded:?}"
    );
    assert!(forwarded[TRACEPARENT].ends_with("-00"));
    assert_eq!(forwarded["tracestate"], "vendor=kept");
    assert!(forwarded["baggage"].contains("run_id=r-7"), "{forwarded:?}");
    let records = spans.records();
    let process_of = |service: &str| {
        records
            .iter()
            .find(|r| {
                r.service_name.as_deref() == Some(service)
                    && r.operation_name.as_deref() == Some("process jobs")
            })
            .cloned()
    };
    assert!(
        process_of("consumer").is_none(),
        "the consumer records nothing"
    );
    let downstream_span = process_of("downstream").expect("downstream records its span");
    assert_eq!(downstream_span.trace_id, trace.to_string());
    assert_eq!(
        downstream_span.parent_span_id.as_deref(),
        Some(&forwarded[TRACEPARENT][36..52]),
        "its parent is the consumer's unrecorded send span"
    );
    assert_ne!(forwarded[TRACEPARENT][36..52], sc.span_id().to_string());
}

#[test]
fn a_trace_id_ratio_decides_the_same_on_both_sides_of_a_hop() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer", Sampler::TraceIdRatioBased(0.5));
    let consumer = service(&spans, "consumer", Sampler::TraceIdRatioBased(0.5));
    let mut sampled = 0;
    for _ in 0..400 {
        let (headers, process) = hop(&producer, &consumer, &Context::new());
        let flag = headers[TRACEPARENT].ends_with("-01");
        assert_eq!(flag, process.span().span_context().is_sampled());
        sampled += usize::from(flag);
    }
    assert!(
        (120..=280).contains(&sampled),
        "about half of 400: {sampled}"
    );
    // Every recorded process span has its recorded send span as parent.
    let records = spans.records();
    assert_eq!(records.len(), 2 * sampled);
    for pair in records.chunks(2) {
        assert_eq!(pair[1].parent_span_id.as_ref(), Some(&pair[0].span_id));
    }
}

/// A root sampler that records only messages to `keep`, by their attributes.
#[derive(Debug, Clone, Default)]
struct ByDestination {
    seen: Arc<Mutex<Vec<Vec<String>>>>,
}

impl ShouldSample for ByDestination {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        _trace_id: TraceId,
        _name: &str,
        _kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let keys = attributes.iter().map(|kv| kv.key.to_string()).collect();
        self.seen.lock().unwrap().push(keys);
        let keep = attributes.iter().any(|kv| {
            kv.key.as_str() == "messaging.destination.name" && kv.value.as_str() == "keep"
        });
        SamplingResult {
            decision: if keep {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: TraceState::default(),
        }
    }
}

#[test]
fn a_sampler_that_looks_at_attributes_sees_them_on_roots() {
    let spans = SpanCollector::new();
    let sampler = ByDestination::default();
    let producer = service(
        &spans,
        "producer",
        Sampler::ParentBased(Box::new(sampler.clone())),
    );
    for destination in ["keep", "drop"] {
        let mut headers: HashMap<String, String> = HashMap::new();
        producer
            .send_span(
                Outgoing::new("nats", destination).attribute("tenant", "acme"),
                &mut headers,
            )
            .end();
        assert!(headers.contains_key(TRACEPARENT));
    }
    let seen = sampler.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for keys in &seen {
        for key in ["tenant", "messaging.system", "messaging.destination.name"] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
    }
    let records = spans.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].operation_name.as_deref(), Some("send keep"));
}
