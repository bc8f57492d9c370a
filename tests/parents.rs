//! Parent policy: child by default, link mode at trust boundaries, and batches.

use std::collections::HashMap;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use tracehop::{
    Incoming, Outgoing, ParentPolicy, ReadCarrier, SpanCollector, SpanRecord, Telemetry,
};

type Headers = HashMap<String, String>;

fn handle(name: &str, spans: &SpanCollector) -> Telemetry {
    Telemetry::builder(name)
        .collector(spans)
        .build()
        .expect("telemetry")
}

fn op<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| {
            s.service_name.as_deref() == Some(service) && s.operation_name.as_deref() == Some(op)
        })
        .collect()
}

#[tokio::test]
async fn link_mode_starts_a_new_trace_linked_to_the_producer() {
    let spans = SpanCollector::new();
    let outside = handle("partner", &spans);
    let inside = handle("ingest", &spans);
    let mut h = Headers::new();
    {
        let _g = Context::new()
            .with_baggage(vec![KeyValue::new("tenant", "evil")])
            .attach();
        outside
            .send_span(Outgoing::new("nats", "inbox"), &mut h)
            .end();
    }
    let process = inside.process_span(
        Incoming::new("nats", "inbox").parent_policy(ParentPolicy::Link),
        &h,
    );
    let seen_baggage = process
        .run(async { Ok::<_, String>(Context::current().baggage().len()) })
        .await;
    process.end();

    let spans = spans.records();
    let send = op(&spans, "partner", "send inbox")[0];
    let proc = op(&spans, "ingest", "process inbox")[0];
    assert_ne!(
        proc.trace_id, send.trace_id,
        "link mode never adopts the producer's trace"
    );
    assert_eq!(proc.parent_span_id, None);
    assert_eq!(proc.links.len(), 1);
    assert_eq!(proc.links[0].trace_id, send.trace_id);
    assert_eq!(proc.links[0].span_id, send.span_id);
    assert_eq!(
        proc.attribute("tracehop.context.linked"),
        Some(&true.into())
    );
    assert_eq!(
        seen_baggage,
        Ok(0),
        "baggage does not cross a trust boundary"
    );
}

#[tokio::test]
async fn batch_links_every_message_and_children_nest_under_it() {
    let spans = SpanCollector::new();
    let producer = handle("producer", &spans);
    let consumer = handle("consumer", &spans);
    let mut messages: Vec<Headers> = Vec::new();
    for i in 0..3 {
        let mut h = Headers::new();
        let _g = Context::new()
            .with_baggage(vec![KeyValue::new("n", i64::from(i))])
            .attach();
        producer
            .send_span(Outgoing::new("kafka", "events"), &mut h)
            .end();
        messages.push(h);
    }
    // A fourth message with no context at all.
    messages.push(Headers::new());

    let batch = consumer.batch_span(
        Incoming::new("kafka", "events"),
        messages.iter().map(|h| h as &dyn ReadCarrier),
    );
    assert_eq!(batch.len(), 4);
    let batch_trace = batch.context().span().span_context().trace_id().to_string();
    let mut baggage_seen = Vec::new();
    for i in 0..batch.len() {
        let span = batch
            .message_span(i, Incoming::new("kafka", "events"))
            .expect("index in range");
        let n = span
            .run(async {
                Ok::<_, String>(Context::current().baggage().get("n").map(|v| v.to_string()))
            })
            .await;
        baggage_seen.push(n.unwrap_or_default());
        span.end();
    }
    assert!(batch
        .message_span(9, Incoming::new("kafka", "events"))
        .is_none());
    batch.end(0);

    let spans = spans.records();
    let sends = op(&spans, "producer", "send events");
    let processes = op(&spans, "consumer", "process events");
    let batch_span = processes
        .iter()
        .find(|s| s.attribute("messaging.batch.message_count").is_some())
        .expect("batch span");
    assert_eq!(batch_span.trace_id, batch_trace);
    assert_eq!(
        batch_span.attribute("messaging.batch.message_count"),
        Some(&4.into())
    );
    assert_eq!(batch_span.parent_span_id, None);
    let linked: Vec<(&str, &str)> = batch_span
        .links
        .iter()
        .map(|l| (l.trace_id.as_str(), l.span_id.as_str()))
        .collect();
    let sent: Vec<(&str, &str)> = sends
        .iter()
        .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
        .collect();
    assert_eq!(linked, sent, "one link per message with context, in order");

    let children: Vec<_> = processes
        .iter()
        .filter(|s| s.parent_span_id.as_ref() == Some(&batch_span.span_id))
        .collect();
    assert_eq!(children.len(), 4);
    for (child, send) in children.iter().zip(&sends) {
        assert_eq!(child.trace_id, batch_span.trace_id);
        assert_eq!(child.links.len(), 1);
        assert_eq!(child.links[0].span_id, send.span_id);
    }
    assert!(children[3].links.is_empty());
    assert_eq!(
        children[3].attribute("tracehop.context.missing"),
        Some(&true.into())
    );
    assert_eq!(
        baggage_seen,
        vec![Some("0".into()), Some("1".into()), Some("2".into()), None],
        "each message's baggage reaches its own handler"
    );
}

#[tokio::test]
async fn each_delivery_attempt_is_its_own_child_of_the_same_send() {
    let spans = SpanCollector::new();
    let producer = handle("producer", &spans);
    let consumer = handle("consumer", &spans);
    let mut h = Headers::new();
    producer
        .send_span(Outgoing::new("nats", "jobs"), &mut h)
        .end();
    for attempt in 1..=3u32 {
        let p = consumer.process_span(Incoming::new("nats", "jobs").attempt(attempt), &h);
        let _ = p
            .run(async move {
                if attempt < 3 {
                    Err("nak")
                } else {
                    Ok(())
                }
            })
            .await;
        p.end();
    }
    let spans = spans.records();
    let send = op(&spans, "producer", "send jobs")[0];
    let attempts: Vec<_> = op(&spans, "consumer", "process jobs")
        .into_iter()
        .map(|s| {
            assert_eq!(s.parent_span_id.as_ref(), Some(&send.span_id));
            (s.attribute("tracehop.delivery.attempt").cloned(), s.status)
        })
        .collect();
    use tracehop::journal::Status;
    assert_eq!(
        attempts,
        vec![
            (Some(1.into()), Status::Error),
            (Some(2.into()), Status::Error),
            (Some(3.into()), Status::Ok)
        ]
    );
}

#[tokio::test]
async fn forwarding_from_a_failed_process_span_keeps_the_trace() {
    let spans = SpanCollector::new();
    let producer = handle("producer", &spans);
    let worker = handle("worker", &spans);
    let mut h = Headers::new();
    producer
        .send_span(Outgoing::new("kafka", "tasks"), &mut h)
        .end();
    let p = worker.process_span(Incoming::new("kafka", "tasks"), &h);
    let outcome = p.run(async { Err::<(), _>("tool failed") }).await;
    assert!(outcome.is_err());
    let mut dlq = Headers::new();
    worker
        .send_span_with_parent(Outgoing::new("kafka", "tasks.dlq"), p.context(), &mut dlq)
        .end();
    p.end();
    let d = worker.process_span(Incoming::new("kafka", "tasks.dlq"), &dlq);
    d.end();

    let spans = spans.records();
    let failed = op(&spans, "worker", "process tasks")[0];
    let forward = op(&spans, "worker", "send tasks.dlq")[0];
    let dead = op(&spans, "worker", "process tasks.dlq")[0];
    assert_eq!(forward.parent_span_id.as_ref(), Some(&failed.span_id));
    assert_eq!(dead.parent_span_id.as_ref(), Some(&forward.span_id));
    assert_eq!(dead.trace_id, failed.trace_id);
}
