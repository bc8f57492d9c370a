//! Span assertions shared by every broker's tests: find spans by service and name, check
//! parents and links, read attributes.

use opentelemetry::trace::{TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use serde_json::Value;
use tracehop::{SpanCollector, SpanRecord, Telemetry};

/// A telemetry handle for service `name` writing into `spans`.
pub fn service(spans: &SpanCollector, name: &str) -> Telemetry {
    Telemetry::builder(name)
        .collector(spans)
        .build()
        .expect("telemetry")
}

/// A root span of `telemetry` named `name`, as the context of a request: make it current
/// (`.with_context(cx)` on a future, or `cx.attach()`), then end it with
/// `cx.span().end()`.
pub fn root(telemetry: &Telemetry, name: &'static str) -> Context {
    let span = telemetry.provider().tracer("test").start(name);
    Context::current_with_span(span)
}

/// The spans of `service` named `op`, in the order they ended.
pub fn find<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| {
            s.service_name.as_deref() == Some(service) && s.operation_name.as_deref() == Some(op)
        })
        .collect()
}

/// The spans named `op`, of any service.
pub fn named<'a>(spans: &'a [SpanRecord], op: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(op))
        .collect()
}

/// The one span of `service` named `op`; fails the test (printing every span) otherwise.
#[track_caller]
pub fn one<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> &'a SpanRecord {
    match find(spans, service, op).as_slice() {
        [span] => span,
        other => panic!(
            "expected one span {service}/{op}, found {}: {spans:#?}",
            other.len()
        ),
    }
}

/// `child` is a child of `parent`, in the same trace.
#[track_caller]
pub fn assert_child(child: &SpanRecord, parent: &SpanRecord) {
    assert_eq!(child.trace_id, parent.trace_id, "same trace: {child:#?}");
    assert_eq!(
        child.parent_span_id.as_ref(),
        Some(&parent.span_id),
        "{:?} is a child of {:?}",
        child.operation_name,
        parent.operation_name
    );
}

/// Whether `span` links to `target`.
pub fn links_to(span: &SpanRecord, target: &SpanRecord) -> bool {
    span.links
        .iter()
        .any(|l| l.trace_id == target.trace_id && l.span_id == target.span_id)
}

/// An integer attribute.
pub fn int(span: &SpanRecord, key: &str) -> Option<i64> {
    span.attribute(key).and_then(Value::as_i64)
}

/// A boolean attribute.
pub fn flag(span: &SpanRecord, key: &str) -> Option<bool> {
    span.attribute(key).and_then(Value::as_bool)
}

/// A string attribute.
pub fn text<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    span.attribute_str(key)
}

/// `tracehop.delivery.attempt`.
pub fn attempt(span: &SpanRecord) -> Option<i64> {
    int(span, "tracehop.delivery.attempt")
}

/// `tracehop.settlement`: what the consumer did with the delivery.
pub fn settlement(span: &SpanRecord) -> Option<&str> {
    text(span, "tracehop.settlement")
}

/// Wait (up to [`WAIT`](crate::WAIT)) until `spans` holds at least `n` spans named `op`.
pub async fn wait_for(spans: &SpanCollector, op: &str, n: usize) -> Vec<SpanRecord> {
    let deadline = tokio::time::Instant::now() + crate::WAIT;
    loop {
        let records = spans.records();
        if named(&records, op).len() >= n {
            return records;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "waited {:?} for {n} spans named {op:?}; have {records:#?}",
                crate::WAIT
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
