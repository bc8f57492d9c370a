//! The `testing` module: one-line assertions over captured spans, with the tree in the
//! failure message.
#![cfg(feature = "testing")]

use std::collections::HashMap;

use tracehop::testing::{self, Capture};
use tracehop::{Incoming, Outgoing, ParentPolicy, Telemetry};

type Headers = HashMap<String, String>;

async fn hop(to: &Telemetry, destination: &str, inbox: &Headers) -> Headers {
    let mut out = Headers::new();
    let process = to.process_span(Incoming::new("kafka", destination), inbox);
    let _: Result<(), String> = process
        .run(async {
            to.send_span(Outgoing::new("kafka", "next"), &mut out).end();
            Ok(())
        })
        .await;
    process.end();
    out
}

async fn three_service_run(capture: &Capture) {
    let gateway = capture.service("gateway");
    let runtime = capture.service("agent_runtime");
    let tool = capture.service("tool_service");
    let mut h = Headers::new();
    gateway
        .send_span(Outgoing::new("kafka", "tasks"), &mut h)
        .end();
    let h = hop(&runtime, "tasks", &h).await;
    let _ = hop(&tool, "next", &h).await;
}

#[tokio::test]
async fn a_whole_run_passes_both_assertions() {
    let capture = Capture::new();
    three_service_run(&capture).await;
    assert_eq!(capture.records().len(), 5);
    capture.assert_one_trace();
    capture.assert_chain(&["gateway", "agent_runtime", "tool_service"]);
    // Not necessarily adjacent, and a service may be skipped.
    capture.assert_chain(&["gateway", "tool_service"]);
    assert!(capture.check_chain(&[]).is_ok());
}

#[tokio::test]
async fn the_wrong_order_fails_with_the_longest_prefix_and_the_tree() {
    let capture = Capture::new();
    three_service_run(&capture).await;
    let err = capture
        .check_chain(&["gateway", "tool_service", "agent_runtime"])
        .unwrap_err();
    assert!(
        err.contains("expected a parent chain through gateway > tool_service > agent_runtime"),
        "{err}"
    );
    assert!(
        err.contains("the longest found is gateway > tool_service"),
        "{err}"
    );
    assert!(err.contains("    tool_service process next span "), "{err}");
}

#[tokio::test]
async fn a_consumer_without_context_splits_the_run_and_says_where() {
    let capture = Capture::new();
    let gateway = capture.service("gateway");
    let worker = capture.service("worker");
    let mut h = Headers::new();
    gateway
        .send_span(Outgoing::new("nats", "tasks"), &mut h)
        .end();
    // The headers are lost on the way.
    let process = worker.process_span(Incoming::new("nats", "tasks"), &Headers::new());
    process.end();

    let err = capture.check_one_trace().unwrap_err();
    assert!(
        err.starts_with("expected one trace, found 2 (2 spans)"),
        "{err}"
    );
    assert!(err.contains("[split-trace] worker process tasks"), "{err}");
    assert!(err.contains("context=missing"), "{err}");
    assert!(capture.check_chain(&["gateway", "worker"]).is_err());
}

#[tokio::test]
async fn a_trust_boundary_is_not_one_trace() {
    let capture = Capture::new();
    let gateway = capture.service("gateway");
    let partner = capture.service("partner");
    let mut h = Headers::new();
    gateway
        .send_span(Outgoing::new("nats", "orders"), &mut h)
        .end();
    partner
        .process_span(
            Incoming::new("nats", "orders").parent_policy(ParentPolicy::Link),
            &h,
        )
        .end();
    let err = capture.check_one_trace().unwrap_err();
    assert!(err.contains("found 2"), "{err}");
    // ...but each trace is whole: the link is intended.
    assert!(capture.traces().check(&Default::default()).is_whole());
}

#[tokio::test]
async fn rejected_context_in_one_trace_is_reported() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let mut h = Headers::new();
    h.insert(
        "traceparent".into(),
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01".into(),
    );
    worker
        .process_span(Incoming::new("kafka", "tasks"), &h)
        .end();
    let err = capture.check_one_trace().unwrap_err();
    assert!(
        err.starts_with("expected one unbroken trace, but context broke"),
        "{err}"
    );
    assert!(err.contains("[rejected-context]"), "{err}");
    assert!(err.contains("uppercase"), "{err}");
}

#[tokio::test]
async fn a_consumer_joining_by_trace_id_alone_makes_a_flat_trace() {
    let capture = Capture::new();
    let gateway = capture.service("gateway");
    let worker = capture.service("worker");
    let mut h = Headers::new();
    gateway
        .send_span(Outgoing::new("nats", "tasks"), &mut h)
        .end();
    let send = capture.records().pop().unwrap();
    // Only the article's x-trace-id crosses the hop: same trace id, no parent.
    let mut simple = Headers::new();
    simple.insert("x-trace-id".into(), send.trace_id.clone());
    worker
        .process_span(Incoming::new("nats", "tasks"), &simple)
        .end();
    let records = capture.records();
    assert_eq!(records[1].trace_id, send.trace_id);
    assert_eq!(records[1].parent_span_id, None);

    let err = capture.check_one_trace().unwrap_err();
    assert!(
        err.contains("[flat-trace] 2 spans share the trace id"),
        "{err}"
    );
    assert!(
        err.contains(&format!("(span {})", records[1].span_id)),
        "{err}"
    );
}

#[test]
fn nothing_captured_is_not_one_trace() {
    let err = Capture::new().check_one_trace().unwrap_err();
    assert!(err.contains("no spans"), "{err}");
}

#[tokio::test]
#[should_panic(expected = "expected one trace, found 2")]
async fn assert_one_trace_panics_with_the_message() {
    let capture = Capture::new();
    capture
        .service("a")
        .send_span(Outgoing::new("nats", "x"), &mut Headers::new())
        .end();
    capture
        .service("b")
        .send_span(Outgoing::new("nats", "y"), &mut Headers::new())
        .end();
    capture.assert_one_trace();
}

#[tokio::test]
#[should_panic(expected = "gateway send tasks span")]
async fn assert_chain_panics_with_the_tree() {
    let capture = Capture::new();
    capture
        .service("gateway")
        .send_span(Outgoing::new("kafka", "tasks"), &mut Headers::new())
        .end();
    capture.assert_chain(&["gateway", "worker"]);
}

#[tokio::test]
async fn free_functions_work_on_records_from_any_collector() {
    let spans = tracehop::SpanCollector::new();
    let a = Telemetry::builder("a").collector(&spans).build().unwrap();
    let b = Telemetry::builder("b").collector(&spans).build().unwrap();
    let mut h = Headers::new();
    a.send_span(Outgoing::new("nats", "x"), &mut h).end();
    b.process_span(Incoming::new("nats", "x"), &h).end();
    let records = spans.records();
    testing::check_one_trace(&records).unwrap();
    testing::check_chain(&records, &["a", "b"]).unwrap();
    assert!(testing::check_chain(&records, &["b", "a"]).is_err());
    // A capture around the same collector sees the same spans.
    Capture::from_collector(spans).assert_chain(&["a", "b"]);
}
