//! Hops across queues and exchanges form one trace; under link mode a consumer starts a
//! new trace linked to the producer's.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, ExchangeKind};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;
use tracehop::amqp::{TracedChannel, REDELIVERED};
use tracehop::journal::{Kind, Status};
use tracehop::testing::Capture;
use tracehop::{OnFailure, ParentPolicy};
use tracehop_integration_tests::spans::{
    assert_child, attempt, flag, int, links_to, one, root, settlement,
};
use tracehop_integration_tests::unique;

use super::{
    channel, collecting, confirm_channel, connect, declare_exchange, declare_queue, delete_queues,
    finished, process, publish, spawn_run, traced_consumer, TestQueue,
};

#[tokio::test]
async fn three_hops_across_two_queues_form_one_trace() {
    let capture = Capture::new();
    let (gateway, worker, tool) = (
        capture.service("gateway"),
        capture.service("worker"),
        capture.service("tool"),
    );
    let connection = connect().await;
    let admin = channel(&connection).await;
    let (tasks, calls, exchange) = (unique("tasks"), unique("calls"), unique("tools"));
    declare_queue(&admin, &tasks, &[]).await;
    declare_queue(&admin, &calls, &[]).await;
    declare_exchange(&admin, &exchange, ExchangeKind::Direct, &calls, "tool.call").await;

    // worker: consumes tasks, publishes a tool call to the exchange from its handler.
    let worker_channel = confirm_channel(&connection).await;
    let worker_publisher = TracedChannel::new(worker_channel.clone(), worker.clone());
    let worker_exchange = exchange.clone();
    let worker_consumer = traced_consumer(&worker_channel, &tasks, &worker)
        .await
        .on_failure(OnFailure::dead_letter())
        .limit(1);
    let worker_loop = spawn_run(worker_consumer, move |delivery| {
        let publisher = worker_publisher.clone();
        let exchange = worker_exchange.clone();
        async move {
            let mut body = b"call for ".to_vec();
            body.extend_from_slice(&delivery.data);
            let confirmation = publisher
                .basic_publish(
                    exchange.as_str().into(),
                    "tool.call".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_message_id("call-1".into()),
                )
                .await?
                .await?;
            assert!(confirmation.is_ack());
            Ok::<(), lapin::Error>(())
        }
    });

    // tool: consumes the calls and hands them to the test.
    let (collect, mut received) = collecting();
    let tool_channel = channel(&connection).await;
    let tool_consumer = traced_consumer(&tool_channel, &calls, &tool).await.limit(1);
    let tool_loop = spawn_run(tool_consumer, collect);

    // gateway: inside its request span, publish the task (publisher confirms on).
    let gateway_publisher = TracedChannel::new(confirm_channel(&connection).await, gateway.clone());
    let cx = root(&gateway, "handle_request");
    let confirmation = publish(
        &gateway_publisher,
        &tasks,
        b"task 7",
        BasicProperties::default(),
    )
    .with_context(cx.clone())
    .await;
    assert!(confirmation.is_ack());
    cx.span().end();

    assert_eq!(finished(worker_loop).await.messages, 1);
    assert_eq!(finished(tool_loop).await.failed, 0);
    assert_eq!(
        received.recv().await.map(|call| call.data).as_deref(),
        Some(&b"call for task 7"[..])
    );

    let spans = capture.records();
    let root = one(&spans, "gateway", "handle_request");
    let send1 = one(&spans, "gateway", "publish amq.default");
    let process1 = one(&spans, "worker", &process(&tasks));
    let send2 = one(&spans, "worker", &format!("publish {exchange}"));
    let process2 = one(&spans, "tool", &process(&calls));
    assert_eq!(root.parent_span_id, None);
    assert_child(send1, root);
    assert_child(process1, send1);
    assert_child(send2, process1);
    assert_child(process2, send2);
    capture.assert_one_trace();
    capture.assert_chain(&["gateway", "worker", "tool"]);

    // Send spans: kind, destination (exchange), routing key, body size; ended at the ack.
    assert_eq!(send1.span_kind, Some(Kind::Producer));
    assert_eq!(send1.status, Status::Ok);
    assert_eq!(send1.attribute_str("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        send1.attribute_str("messaging.destination.name"),
        Some(tasks.as_str()),
        "the default exchange: named by the routing key"
    );
    assert_eq!(
        send1.attribute_str("messaging.rabbitmq.destination.routing_key"),
        Some(tasks.as_str())
    );
    assert_eq!(int(send1, "messaging.message.body.size"), Some(6));
    assert_eq!(
        send1.attribute_str("messaging.operation.name"),
        Some("publish")
    );
    assert_eq!(
        send2.attribute_str("messaging.destination.name"),
        Some(format!("{exchange}:tool.call").as_str())
    );
    assert_eq!(
        send2.attribute_str("messaging.rabbitmq.destination.routing_key"),
        Some("tool.call")
    );
    assert_eq!(send2.attribute_str("messaging.message.id"), Some("call-1"));

    // Process spans: queue as destination, delivery facts, attempt, settlement.
    assert_eq!(process1.span_kind, Some(Kind::Consumer));
    assert_eq!(process1.status, Status::Ok);
    assert_eq!(
        process1.attribute_str("messaging.destination.name"),
        Some(tasks.as_str())
    );
    assert_eq!(
        process1.attribute_str("messaging.rabbitmq.destination.routing_key"),
        Some(tasks.as_str())
    );
    assert!(process1
        .attribute("messaging.rabbitmq.message.delivery_tag")
        .and_then(Value::as_i64)
        .is_some_and(|tag| tag >= 1));
    assert_eq!(flag(process1, REDELIVERED), Some(false));
    assert_eq!(attempt(process1), Some(1));
    assert_eq!(settlement(process1), Some("ack"));
    assert_eq!(int(process1, "messaging.message.body.size"), Some(6));
    assert!(process1.attribute("tracehop.queue_time_ms").is_some());
    assert_eq!(
        process2.attribute_str("messaging.rabbitmq.destination.routing_key"),
        Some("tool.call")
    );
    assert_eq!(
        process2.attribute_str("messaging.destination.name"),
        Some(format!("{exchange}:tool.call:{calls}").as_str()),
        "exchange, routing key and queue, as the conventions name a delivery"
    );
    assert_eq!(
        process2.attribute_str("messaging.message.id"),
        Some("call-1")
    );

    delete_queues(&admin, &[&tasks, &calls]).await;
}

#[tokio::test]
async fn link_mode_starts_a_new_trace_linked_to_the_send_span() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let queue = TestQueue::declare("linked").await;

    let worker_channel = queue.channel().await;
    let worker_consumer = queue
        .consumer(&worker_channel, &worker)
        .await
        .parent_policy(ParentPolicy::Link)
        .limit(1);
    let worker_loop = spawn_run(worker_consumer, |_delivery| async { Ok::<(), String>(()) });
    let publisher = queue.publisher(&producer).await;
    publish(
        &publisher,
        &queue.name,
        b"untrusted",
        BasicProperties::default(),
    )
    .await;
    finished(worker_loop).await;

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let handled = one(&spans, "worker", &queue.process());
    assert_eq!(handled.parent_span_id, None);
    assert_ne!(handled.trace_id, send.trace_id);
    assert_eq!(handled.links.len(), 1);
    assert!(links_to(handled, send), "{handled:#?}");
    assert_eq!(flag(handled, "tracehop.context.linked"), Some(true));

    queue.delete().await;
}
