//! Hops between services are one trace: parents, span kinds and messaging attributes
//! along a chain over two topics, link mode at a trust boundary, the `ThreadedProducer`
//! context, and the trace a send returns to its caller.

use opentelemetry::trace::TraceContextExt as _;
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureRecord, Producer, ThreadedProducer,
};
use tracehop::journal::{Kind, Status};
use tracehop::kafka::TracingProducerContext;
use tracehop::{ParentPolicy, SpanCollector};
use tracehop_integration_tests::spans::{
    assert_child, attempt, links_to, one, root, service, settlement, text,
};
use tracehop_integration_tests::{finish, unique};

use crate::{
    closed, deliver, deliver_in_request, keep_in, offset_of, spawn_run, Broker, Captured, SEND,
};

/// gateway -> worker -> tool over two topics is one trace:
/// request -> send tasks -> process tasks -> send tools -> process tools.
async fn chain_over_two_topics_is_one_trace(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker, tool) = (
        service(&spans, "gateway"),
        service(&spans, "worker"),
        service(&spans, "tool"),
    );
    let tasks = broker.topic("tasks", 1).await;
    let tools = broker.topic("tools", 1).await;
    let worker_group = unique("workers");

    // The worker consumes a task and produces a tool call; no tracing code in the handler.
    let tool_calls = broker.producer(&worker);
    let tools_topic = tools.clone();
    let worker_task = spawn_run(
        broker.consumer(&worker, &tasks, &worker_group).limit(1),
        move |task| {
            let tool_calls = tool_calls.clone();
            let tools_topic = tools_topic.clone();
            async move {
                let body = format!(
                    "call for {}",
                    String::from_utf8_lossy(task.payload().unwrap_or_default())
                );
                tool_calls
                    .send(
                        FutureRecord::to(&tools_topic).key("run-1").payload(&body),
                        SEND,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
        },
    );
    let seen = Captured::default();
    let tool_task = spawn_run(
        broker.consumer(&tool, &tools, &unique("tools")).limit(1),
        keep_in(&seen),
    );

    let producer = broker.producer(&gateway);
    let delivered = deliver_in_request(
        &producer,
        FutureRecord::to(&tasks).key("run-1").payload("plan trip"),
    )
    .await;

    let worker_summary = closed(finish(worker_task, "worker").await).await;
    let worker_summary = worker_summary.expect("worker loop");
    assert_eq!((worker_summary.messages, worker_summary.succeeded), (1, 1));
    closed(finish(tool_task, "tool").await)
        .await
        .expect("tool loop");
    assert_eq!(
        seen.lock().unwrap()[0].payload(),
        Some(&b"call for plan trip"[..])
    );

    let all = spans.records();
    let request = one(&all, "gateway", "handle_request");
    let send_task = one(&all, "gateway", &format!("send {tasks}"));
    let process_task = one(&all, "worker", &format!("process {tasks}"));
    let send_tool = one(&all, "worker", &format!("send {tools}"));
    let process_tool = one(&all, "tool", &format!("process {tools}"));
    assert_eq!(request.parent_span_id, None);
    assert_child(send_task, request);
    assert_child(process_task, send_task);
    assert_child(send_tool, process_task);
    assert_child(process_tool, send_tool);

    assert_eq!(send_task.span_kind, Some(Kind::Producer));
    assert_eq!(process_task.span_kind, Some(Kind::Consumer));
    for (s, topic) in [
        (send_task, &tasks),
        (process_task, &tasks),
        (process_tool, &tools),
    ] {
        assert_eq!(text(s, "messaging.system"), Some("kafka"));
        assert_eq!(text(s, "messaging.destination.name"), Some(topic.as_str()));
        assert_eq!(text(s, "messaging.destination.partition.id"), Some("0"));
        assert_eq!(text(s, "messaging.kafka.message.key"), Some("run-1"));
        assert_eq!(offset_of(s), Some(0));
    }
    assert_eq!(offset_of(send_task), Some(delivered.offset));
    assert_eq!(text(send_task, "messaging.client.id"), Some("gateway"));
    for s in [send_task, process_task] {
        assert_eq!(
            s.attribute("messaging.message.body.size"),
            Some(&9.into()),
            "{s:#?}"
        );
    }
    assert_eq!(
        text(process_task, "messaging.consumer.group.name"),
        Some(worker_group.as_str())
    );
    assert_eq!(text(process_task, "messaging.client.id"), Some("worker"));
    assert_eq!(attempt(process_task), Some(1));
    assert!(process_task
        .attribute("tracehop.queue_time_ms")
        .and_then(|v| v.as_f64())
        .is_some_and(|ms| ms >= 0.0));
    assert_eq!(process_task.status, Status::Ok);
    assert_eq!(send_task.status, Status::Ok);
    // Each handled message is committed once settled.
    assert_eq!(settlement(process_task), Some("commit"));
    assert_eq!(settlement(process_tool), Some("commit"));
}

/// In link mode the process span starts a new trace and links the producer's span.
async fn link_mode_links_instead_of_adopting(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("untrusted", 1).await;
    deliver(
        &broker.producer(&gateway),
        FutureRecord::to(&topic).key("u").payload("x"),
    )
    .await;
    let consumer = broker
        .consumer(&worker, &topic, &unique("link"))
        .parent_policy(ParentPolicy::Link)
        .limit(1);
    let task = spawn_run(consumer, |_m| async { Ok::<_, String>(()) });
    closed(finish(task, "consumer").await)
        .await
        .expect("consumer loop");
    let all = spans.records();
    let send = one(&all, "gateway", &format!("send {topic}"));
    let process = one(&all, "worker", &format!("process {topic}"));
    assert_eq!(process.parent_span_id, None);
    assert_ne!(process.trace_id, send.trace_id);
    assert!(links_to(process, send));
    assert_eq!(
        process.attribute("tracehop.context.linked"),
        Some(&true.into())
    );
}

/// A `ThreadedProducer` with the tracing context: the send span ends on delivery with its
/// offset, and the consumer's process span is its child.
async fn threaded_producer_is_traced_too(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("threaded", 1).await;
    let context = TracingProducerContext::new(DefaultProducerContext, gateway.clone())
        .client_id("threaded-gateway");
    let producer: ThreadedProducer<_> = broker
        .producer_config()
        .create_with_context(context)
        .expect("threaded producer");
    let request = root(&gateway, "handle_request");
    let record = {
        let _current = request.clone().attach();
        producer
            .context()
            .trace(BaseRecord::to(&topic).key("t-1").payload("threaded"))
    };
    producer.send(record).map_err(|(e, _)| e).expect("queued");
    producer.flush(SEND).expect("flushed");
    request.span().end();

    let consumer = broker
        .consumer(&worker, &topic, &unique("threaded"))
        .limit(1);
    let task = spawn_run(consumer, |_m| async { Ok::<_, String>(()) });
    closed(finish(task, "consumer").await)
        .await
        .expect("consumer loop");

    let all = spans.records();
    let request = one(&all, "gateway", "handle_request");
    let send = one(&all, "gateway", &format!("send {topic}"));
    let process = one(&all, "worker", &format!("process {topic}"));
    assert_child(send, request);
    assert_child(process, send);
    assert_eq!(send.status, Status::Ok);
    assert_eq!(offset_of(send), Some(0));
    assert_eq!(text(send, "messaging.destination.partition.id"), Some("0"));
    assert_eq!(text(send, "messaging.client.id"), Some("threaded-gateway"));
}

/// `TracedProducer::send` returns the context the message carries: its trace id and span
/// id are the send span's, and the consumer's process span is in that trace, the send
/// span its parent. Both for a send inside a request and for one that starts a trace.
async fn send_returns_the_trace_it_started(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("sent", 1).await;
    let producer = broker.producer(&gateway);
    let in_request =
        deliver_in_request(&producer, FutureRecord::to(&topic).key("req").payload("a")).await;
    let alone = deliver(&producer, FutureRecord::to(&topic).key("root").payload("b")).await;
    assert_ne!(in_request.trace_id(), alone.trace_id());
    assert!(alone.span_context().is_valid());

    let task = spawn_run(
        broker.consumer(&worker, &topic, &unique("sent")).limit(2),
        |_m| async { Ok::<_, String>(()) },
    );
    closed(finish(task, "consumer").await)
        .await
        .expect("consumer loop");

    let all = spans.records();
    let request = one(&all, "gateway", "handle_request");
    let send_op = format!("send {topic}");
    let process_op = format!("process {topic}");
    for (sent, key) in [(&in_request, "req"), (&alone, "root")] {
        let send = crate::for_key(&all, "gateway", &send_op, key);
        let process = crate::for_key(&all, "worker", &process_op, key);
        let ([send], [process]) = (send.as_slice(), process.as_slice()) else {
            panic!("one send and one process span for {key}: {all:#?}");
        };
        assert_eq!(sent.trace_id().to_string(), send.trace_id, "{key}");
        assert_eq!(
            sent.span_context().span_id().to_string(),
            send.span_id,
            "{key}"
        );
        assert_eq!(sent.trace_id().to_string(), process.trace_id, "{key}");
        assert_child(process, send);
        assert_eq!(offset_of(send), Some(sent.offset));
    }
    assert_eq!(in_request.trace_id().to_string(), request.trace_id);
    assert_eq!(
        crate::for_key(&all, "gateway", &send_op, "root")[0].parent_span_id,
        None,
        "a send outside any span starts the trace"
    );
}

on_both_brokers!(
    chain_over_two_topics_is_one_trace,
    link_mode_links_instead_of_adopting,
    threaded_producer_is_traced_too,
    send_returns_the_trace_it_started,
);
