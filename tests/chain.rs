//! A run across three services over an in-memory carrier forms one trace with the right
//! parents, and baggage crosses every hop.

use std::collections::HashMap;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use tracehop::journal::{Kind, Status};
use tracehop::{Incoming, Outgoing, SpanCollector, SpanRecord, Telemetry};

type Headers = HashMap<String, String>;

fn services(spans: &SpanCollector) -> (Telemetry, Telemetry, Telemetry) {
    let build = |name: &str| {
        Telemetry::builder(name)
            .collector(spans)
            .build()
            .expect("telemetry")
    };
    (
        build("gateway"),
        build("agent_runtime"),
        build("tool_service"),
    )
}

fn by_name<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| {
            s.service_name.as_deref() == Some(service) && s.operation_name.as_deref() == Some(op)
        })
        .unwrap_or_else(|| panic!("no span {service}/{op} in {spans:#?}"))
}

#[tokio::test]
async fn three_services_form_one_trace_with_parent_chain() {
    let spans = SpanCollector::new();
    let (gateway, runtime, tool) = services(&spans);

    // gateway: a root span for the request, then a send to the agent runtime.
    let root_tracer = gateway.provider().tracer("app");
    let root = root_tracer.start("handle_request");
    let root_cx =
        Context::current_with_span(root).with_baggage(vec![KeyValue::new("run_id", "r-42")]);
    let mut to_runtime = Headers::new();
    {
        let _g = root_cx.clone().attach();
        gateway
            .send_span(
                Outgoing::new("kafka", "agent.tasks").body_size(31),
                &mut to_runtime,
            )
            .end();
    }
    root_cx.span().end();

    // agent_runtime: process, and inside the handler send to the tool service.
    let mut to_tool = Headers::new();
    let process = runtime.process_span(Incoming::new("kafka", "agent.tasks"), &to_runtime);
    let result: Result<(), String> = process
        .run(async {
            assert_eq!(
                Context::current()
                    .baggage()
                    .get("run_id")
                    .map(|v| v.to_string()),
                Some("r-42".to_owned()),
                "baggage is visible inside the handler"
            );
            tokio::task::yield_now().await;
            runtime
                .send_span(Outgoing::new("kafka", "tool.calls"), &mut to_tool)
                .end();
            Ok(())
        })
        .await;
    process.end();
    assert!(result.is_ok());
    assert!(
        to_tool
            .get("baggage")
            .is_some_and(|b| b.contains("run_id=r-42")),
        "{to_tool:?}"
    );

    // tool_service: process the tool call.
    let process = tool.process_span(Incoming::new("kafka", "tool.calls"), &to_tool);
    let _: Result<(), String> = process.run(async { Ok(()) }).await;
    process.end();

    let spans = spans.records();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let root = by_name(&spans, "gateway", "handle_request");
    let send1 = by_name(&spans, "gateway", "send agent.tasks");
    let proc1 = by_name(&spans, "agent_runtime", "process agent.tasks");
    let send2 = by_name(&spans, "agent_runtime", "send tool.calls");
    let proc2 = by_name(&spans, "tool_service", "process tool.calls");

    for s in [send1, proc1, send2, proc2] {
        assert_eq!(
            s.trace_id, root.trace_id,
            "one trace id across all services"
        );
    }
    assert_eq!(root.parent_span_id, None);
    assert_eq!(send1.parent_span_id.as_ref(), Some(&root.span_id));
    assert_eq!(proc1.parent_span_id.as_ref(), Some(&send1.span_id));
    assert_eq!(send2.parent_span_id.as_ref(), Some(&proc1.span_id));
    assert_eq!(proc2.parent_span_id.as_ref(), Some(&send2.span_id));

    assert_eq!(send1.span_kind, Some(Kind::Producer));
    assert_eq!(proc1.span_kind, Some(Kind::Consumer));
    assert_eq!(send1.attribute_str("messaging.system"), Some("kafka"));
    assert_eq!(
        send1.attribute_str("messaging.destination.name"),
        Some("agent.tasks")
    );
    assert_eq!(
        send1.attribute_str("messaging.operation.type"),
        Some("send")
    );
    assert_eq!(
        proc1.attribute_str("messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        send1.attribute("messaging.message.body.size"),
        Some(&31.into())
    );
    assert!(proc1
        .attribute("tracehop.queue_time_ms")
        .and_then(|v| v.as_f64())
        .is_some());
    assert_eq!(proc2.status, Status::Ok);
}

#[tokio::test]
async fn handler_error_is_recorded_with_type_and_exception() {
    #[derive(Debug)]
    struct ToolTimeout;
    impl std::fmt::Display for ToolTimeout {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tool call timed out")
        }
    }
    let spans = SpanCollector::new();
    let (gateway, runtime, _) = services(&spans);
    let mut h = Headers::new();
    gateway
        .send_span(Outgoing::new("nats", "jobs"), &mut h)
        .end();
    let process = runtime.process_span(Incoming::new("nats", "jobs").attempt(3), &h);
    let outcome = process.run(async { Err::<(), _>(ToolTimeout) }).await;
    process.end();
    assert!(outcome.is_err());
    let spans = spans.records();
    let p = by_name(&spans, "agent_runtime", "process jobs");
    assert_eq!(p.status, Status::Error);
    assert_eq!(p.error.as_deref(), Some("tool call timed out"));
    assert_eq!(p.attribute_str("error.type"), Some("tool_timeout"));
    assert_eq!(p.attribute("tracehop.delivery.attempt"), Some(&3.into()));
}

#[tokio::test]
async fn temporary_destinations_name_spans_after_the_operation_alone() {
    let spans = SpanCollector::new();
    let (requester, responder, _) = services(&spans);
    let inbox = "_INBOX.Jx2kq7.8";
    let mut reply = Headers::new();
    responder
        .send_span(
            Outgoing::new("nats", inbox)
                .operation_name("publish")
                .temporary(),
            &mut reply,
        )
        .end();
    requester
        .process_span(Incoming::new("nats", inbox).temporary(), &reply)
        .end();

    let spans = spans.records();
    let send = by_name(&spans, "agent_runtime", "publish");
    let process = by_name(&spans, "gateway", "process");
    for s in [send, process] {
        assert_eq!(s.attribute_str("messaging.destination.name"), Some(inbox));
        assert_eq!(
            s.attribute("messaging.destination.temporary"),
            Some(&true.into())
        );
    }
    assert_eq!(process.parent_span_id.as_ref(), Some(&send.span_id));
}
