#![cfg(feature = "amqp")]
//! The RabbitMQ adapter against a real broker (`TRACEHOP_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`): chains across queues, dead-lettering,
//! redeliveries, RPC, header preservation, bad context and publisher confirms.
//!
//! Every test declares its own uniquely named queues (with `x-expires`, and deletes them
//! at the end) so tests run in parallel and rerun cleanly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry::Context;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracehop::amqp::{
    AckPolicy, ConsumeSummary, RpcClient, RpcError, TracedChannel, TracedConsumer, REDELIVERED,
    SETTLEMENT,
};
use tracehop::journal::{Kind, Status};
use tracehop::testing::Capture;
use tracehop::{ParentPolicy, SpanRecord, Telemetry};
use tracehop_integration_tests::{amqp_url, unique, WAIT};

// ---------------------------------------------------------------------------------------
// Helpers

/// Connect, retrying for up to 30 s while the broker starts.
async fn connect() -> Connection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("RabbitMQ at {} not ready ({e}); retrying", amqp_url());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot connect to RabbitMQ at {}: {e}", amqp_url()),
        }
    }
}

async fn channel(connection: &Connection) -> Channel {
    connection.create_channel().await.expect("channel")
}

async fn confirm_channel(connection: &Connection) -> Channel {
    let ch = channel(connection).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    ch
}

/// Declare a queue that expires two minutes after its last use, whatever happens to the
/// test, with `args` added.
async fn declare_queue(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    table.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), table)
        .await
        .expect("queue_declare");
}

/// Declare an auto-delete exchange (gone with its last binding) and bind `queue` to it.
async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, queue: &str, key: &str) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange_declare");
    ch.queue_bind(
        queue.into(),
        name.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue_bind");
}

async fn delete_queues(ch: &Channel, queues: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
}

async fn consumer(ch: &Channel, queue: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        ShortString::default(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("basic_consume")
}

/// Wait for a spawned consume loop to stop and return its summary.
async fn finished(handle: JoinHandle<lapin::Result<ConsumeSummary>>) -> ConsumeSummary {
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("consumer finished in time")
        .expect("consumer task")
        .expect("consumer loop")
}

/// Publish `payload` with `properties` through the default exchange to `queue`, without
/// tracehop (as a foreign client would).
async fn publish_raw(ch: &Channel, queue: &str, payload: &[u8], properties: BasicProperties) {
    ch.basic_publish(
        ShortString::default(),
        queue.into(),
        BasicPublishOptions::default(),
        payload,
        properties,
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

/// A root span of `service`, made current for the future it wraps.
fn root(telemetry: &Telemetry, name: &'static str) -> Context {
    let span = telemetry.provider().tracer("test").start(name);
    Context::current_with_span(span)
}

fn find<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| {
            s.service_name.as_deref() == Some(service) && s.operation_name.as_deref() == Some(op)
        })
        .collect()
}

#[track_caller]
fn one<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> &'a SpanRecord {
    match find(spans, service, op).as_slice() {
        [span] => span,
        other => panic!(
            "expected one span {service}/{op}, found {}: {spans:#?}",
            other.len()
        ),
    }
}

#[track_caller]
fn assert_child(child: &SpanRecord, parent: &SpanRecord) {
    assert_eq!(child.trace_id, parent.trace_id, "same trace: {child:#?}");
    assert_eq!(
        child.parent_span_id.as_ref(),
        Some(&parent.span_id),
        "{:?} is a child of {:?}",
        child.operation_name,
        parent.operation_name
    );
}

fn int(span: &SpanRecord, key: &str) -> Option<i64> {
    span.attribute(key).and_then(Value::as_i64)
}

fn flag(span: &SpanRecord, key: &str) -> Option<bool> {
    span.attribute(key).and_then(Value::as_bool)
}

// ---------------------------------------------------------------------------------------
// Tests

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
    let worker_loop = TracedConsumer::new(consumer(&worker_channel, &tasks).await, worker.clone())
        .ack_policy(AckPolicy::Nack)
        .stop_after(1)
        .run(move |delivery| {
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
    let worker_loop = tokio::spawn(worker_loop);

    // tool: consumes the calls and hands the bodies back to the test.
    let (bodies, mut received) = mpsc::unbounded_channel();
    let tool_channel = channel(&connection).await;
    let tool_loop = TracedConsumer::new(consumer(&tool_channel, &calls).await, tool.clone())
        .stop_after(1)
        .run(move |delivery| {
            let bodies = bodies.clone();
            async move {
                bodies.send(delivery.data).map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            }
        });
    let tool_loop = tokio::spawn(tool_loop);

    // gateway: inside its request span, publish the task (publisher confirms on).
    let gateway_publisher = TracedChannel::new(confirm_channel(&connection).await, gateway.clone());
    let cx = root(&gateway, "handle_request");
    let confirmation = gateway_publisher
        .basic_publish(
            "".into(),
            tasks.as_str().into(),
            BasicPublishOptions::default(),
            b"task 7",
            BasicProperties::default(),
        )
        .with_context(cx.clone())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirmation.is_ack());
    cx.span().end();

    assert_eq!(finished(worker_loop).await.deliveries, 1);
    assert_eq!(finished(tool_loop).await.failed, 0);
    assert_eq!(
        received.recv().await.as_deref(),
        Some(&b"call for task 7"[..])
    );

    let spans = capture.records();
    let root = one(&spans, "gateway", "handle_request");
    let send1 = one(&spans, "gateway", "publish amq.default");
    let process1 = one(&spans, "worker", &format!("process {tasks}"));
    let send2 = one(&spans, "worker", &format!("publish {exchange}"));
    let process2 = one(&spans, "tool", &format!("process {calls}"));
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
        Some("amq.default")
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
        Some(exchange.as_str())
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
    assert_eq!(int(process1, "tracehop.delivery.attempt"), Some(1));
    assert_eq!(process1.attribute_str(SETTLEMENT), Some("ack"));
    assert_eq!(int(process1, "messaging.message.body.size"), Some(6));
    assert!(process1.attribute("tracehop.queue_time_ms").is_some());
    assert_eq!(
        process2.attribute_str("messaging.rabbitmq.destination.routing_key"),
        Some("tool.call")
    );
    assert_eq!(
        process2.attribute_str("messaging.message.id"),
        Some("call-1")
    );

    delete_queues(&admin, &[&tasks, &calls]).await;
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_and_processed_in_the_same_trace() {
    let capture = Capture::new();
    let (producer, worker, janitor) = (
        capture.service("producer"),
        capture.service("worker"),
        capture.service("janitor"),
    );
    let connection = connect().await;
    let admin = channel(&connection).await;
    let (work, dead, dlx) = (unique("work"), unique("dead"), unique("dlx"));
    declare_queue(&admin, &dead, &[]).await;
    declare_exchange(&admin, &dlx, ExchangeKind::Fanout, &dead, "").await;
    declare_queue(
        &admin,
        &work,
        &[(
            "x-dead-letter-exchange",
            AMQPValue::LongString(dlx.as_str().into()),
        )],
    )
    .await;

    let worker_channel = channel(&connection).await;
    let worker_loop = TracedConsumer::new(consumer(&worker_channel, &work).await, worker.clone())
        .ack_policy(AckPolicy::Reject)
        .stop_after(1)
        .run(|_delivery| async { Err::<(), _>("unparseable order") });
    let worker_loop = tokio::spawn(worker_loop);

    let (seen, mut dead_letters) = mpsc::unbounded_channel();
    let janitor_channel = channel(&connection).await;
    let janitor_loop =
        TracedConsumer::new(consumer(&janitor_channel, &dead).await, janitor.clone())
            .stop_after(1)
            .run(move |delivery| {
                let seen = seen.clone();
                async move {
                    seen.send(delivery).map_err(|_| "test gone")?;
                    Ok::<(), &str>(())
                }
            });
    let janitor_loop = tokio::spawn(janitor_loop);

    let publisher = TracedChannel::new(confirm_channel(&connection).await, producer.clone());
    publisher
        .basic_publish(
            "".into(),
            work.as_str().into(),
            BasicPublishOptions::default(),
            b"order 9",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    let worker_summary = finished(worker_loop).await;
    assert_eq!((worker_summary.deliveries, worker_summary.failed), (1, 1));
    finished(janitor_loop).await;
    let dead_letter = dead_letters.recv().await.expect("dead letter");
    assert_eq!(dead_letter.data, b"order 9");
    assert!(
        dead_letter
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.contains_key("x-death")),
        "the broker dead-lettered it: {:?}",
        dead_letter.properties
    );

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let failed = one(&spans, "worker", &format!("process {work}"));
    let cleaned = one(&spans, "janitor", &format!("process {dead}"));
    assert_child(failed, send);
    // The dead letter carries the producer's headers: its processing joins the same trace
    // under the same send span.
    assert_child(cleaned, send);
    capture.assert_one_trace();

    assert_eq!(failed.status, Status::Error);
    assert_eq!(failed.error.as_deref(), Some("unparseable order"));
    assert_eq!(failed.attribute_str(SETTLEMENT), Some("reject"));
    assert_eq!(cleaned.status, Status::Ok);
    assert_eq!(cleaned.attribute_str(SETTLEMENT), Some("ack"));
    assert_eq!(
        cleaned.attribute_str("messaging.destination.name"),
        Some(dead.as_str())
    );
    // Dead-lettered from `work`, but this is its first delivery from the dead-letter queue.
    assert_eq!(int(cleaned, "tracehop.delivery.attempt"), Some(1));

    delete_queues(&admin, &[&work, &dead]).await;
}

#[tokio::test]
async fn dead_letter_retry_counts_attempts_from_x_death() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let connection = connect().await;
    let admin = channel(&connection).await;
    let (work, retry) = (unique("work"), unique("retry"));
    // work --nack--> retry --(ttl 20 ms)--> work, both through the default exchange.
    declare_queue(
        &admin,
        &work,
        &[
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(retry.as_str().into()),
            ),
        ],
    )
    .await;
    declare_queue(
        &admin,
        &retry,
        &[
            ("x-message-ttl", AMQPValue::LongInt(20)),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(work.as_str().into()),
            ),
        ],
    )
    .await;

    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = Arc::clone(&calls);
    let worker_channel = channel(&connection).await;
    let worker_loop = TracedConsumer::new(consumer(&worker_channel, &work).await, worker.clone())
        .ack_policy(AckPolicy::Nack)
        .stop_after(2)
        .run(move |_delivery| {
            let first = handler_calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err("downstream unavailable")
                } else {
                    Ok(())
                }
            }
        });
    let worker_loop = tokio::spawn(worker_loop);

    TracedChannel::new(confirm_channel(&connection).await, producer.clone())
        .basic_publish(
            "".into(),
            work.as_str().into(),
            BasicPublishOptions::default(),
            b"retry me",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let summary = finished(worker_loop).await;
    assert_eq!((summary.deliveries, summary.failed), (2, 1));

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let attempts = find(&spans, "worker", &format!("process {work}"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for attempt in &attempts {
        assert_child(attempt, send);
    }
    assert_ne!(attempts[0].span_id, attempts[1].span_id);
    assert_eq!(int(attempts[0], "tracehop.delivery.attempt"), Some(1));
    assert_eq!(attempts[0].attribute_str(SETTLEMENT), Some("nack"));
    assert_eq!(attempts[0].status, Status::Error);
    assert_eq!(int(attempts[1], "tracehop.delivery.attempt"), Some(2));
    assert_eq!(attempts[1].attribute_str(SETTLEMENT), Some("ack"));
    assert_eq!(attempts[1].status, Status::Ok);
    capture.assert_one_trace();

    delete_queues(&admin, &[&work, &retry]).await;
}

#[tokio::test]
async fn requeued_redeliveries_are_separate_process_spans_in_the_same_trace() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let connection = connect().await;
    let admin = channel(&connection).await;
    let queue = unique("flaky");
    declare_queue(&admin, &queue, &[]).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = Arc::clone(&calls);
    let worker_channel = channel(&connection).await;
    let worker_loop = TracedConsumer::new(consumer(&worker_channel, &queue).await, worker.clone())
        .ack_policy(AckPolicy::NackRequeue)
        .stop_after(3)
        .run(move |delivery| {
            let call = handler_calls.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(delivery.data, b"flaky job", "the message is unchanged");
                if call < 2 {
                    Err(format!("attempt {} failed", call + 1))
                } else {
                    Ok(())
                }
            }
        });
    let worker_loop = tokio::spawn(worker_loop);

    TracedChannel::new(confirm_channel(&connection).await, producer.clone())
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"flaky job",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let summary = finished(worker_loop).await;
    assert_eq!((summary.deliveries, summary.failed), (3, 2));

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let deliveries = find(&spans, "worker", &format!("process {queue}"));
    assert_eq!(deliveries.len(), 3, "{spans:#?}");
    for d in &deliveries {
        assert_child(d, send);
    }
    let ids: std::collections::HashSet<_> = deliveries.iter().map(|d| &d.span_id).collect();
    assert_eq!(ids.len(), 3, "each delivery has its own span");

    let redelivered: Vec<_> = deliveries.iter().map(|d| flag(d, REDELIVERED)).collect();
    assert_eq!(redelivered, [Some(false), Some(true), Some(true)]);
    let settlements: Vec<_> = deliveries
        .iter()
        .map(|d| d.attribute_str(SETTLEMENT))
        .collect();
    assert_eq!(
        settlements,
        [Some("nack_requeue"), Some("nack_requeue"), Some("ack")]
    );
    let statuses: Vec<_> = deliveries.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [Status::Error, Status::Error, Status::Ok]);
    assert_eq!(deliveries[0].error.as_deref(), Some("attempt 1 failed"));
    assert_eq!(int(deliveries[0], "tracehop.delivery.attempt"), Some(1));
    // A classic queue does not count requeues: a redelivery is known to be at least the
    // second attempt.
    assert_eq!(int(deliveries[1], "tracehop.delivery.attempt"), Some(2));
    capture.assert_one_trace();

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn rpc_round_trip_is_one_trace() {
    let capture = Capture::new();
    let (client, server) = (capture.service("client"), capture.service("server"));
    let connection = connect().await;
    let admin = channel(&connection).await;
    let queue = unique("rpc");
    declare_queue(&admin, &queue, &[]).await;

    let server_channel = channel(&connection).await;
    let replies = TracedChannel::new(server_channel.clone(), server.clone());
    let server_loop = TracedConsumer::new(consumer(&server_channel, &queue).await, server.clone())
        .stop_after(1)
        .run(move |request| {
            let replies = replies.clone();
            async move {
                let mut body = b"pong: ".to_vec();
                body.extend_from_slice(&request.data);
                replies
                    .reply(&request, &body, BasicProperties::default())
                    .await?
                    .await?;
                Ok::<(), RpcError>(())
            }
        });
    let server_loop = tokio::spawn(server_loop);

    let rpc = RpcClient::new(confirm_channel(&connection).await, client.clone())
        .await
        .expect("rpc client");
    let cx = root(&client, "checkout");
    let reply = tokio::time::timeout(
        WAIT,
        rpc.call(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default(),
        )
        .with_context(cx.clone()),
    )
    .await
    .expect("reply in time")
    .expect("call");
    cx.span().end();
    assert_eq!(reply.data, b"pong: ping");
    finished(server_loop).await;

    let spans = capture.records();
    let root = one(&spans, "client", "checkout");
    let request = one(&spans, "client", "publish amq.default");
    let handled = one(&spans, "server", &format!("process {queue}"));
    let answer = one(&spans, "server", "publish amq.default");
    let answered = one(&spans, "client", "process amq.rabbitmq.reply-to");
    assert_child(request, root);
    assert_child(handled, request);
    assert_child(answer, handled);
    assert_child(answered, answer);
    capture.assert_one_trace();
    capture.assert_chain(&["client", "server", "client"]);

    let correlation = reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_owned())
        .expect("the reply carries the correlation id");
    for span in [request, handled, answer, answered] {
        assert_eq!(
            span.attribute_str("messaging.message.conversation_id"),
            Some(correlation.as_str()),
            "{span:#?}"
        );
    }
    assert!(answer
        .attribute_str("messaging.rabbitmq.destination.routing_key")
        .is_some_and(|rk| rk.starts_with("amq.rabbitmq.reply-to")));
    assert_eq!(answered.status, Status::Ok);

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn user_headers_and_their_types_survive() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let connection = connect().await;
    let admin = channel(&connection).await;
    let queue = unique("headers");
    declare_queue(&admin, &queue, &[]).await;

    let mut nested = FieldTable::default();
    nested.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    nested.insert("shard".into(), AMQPValue::LongInt(-3));
    let mut user = FieldTable::default();
    user.insert("x-long-string".into(), AMQPValue::LongString("text".into()));
    user.insert("x-long-long".into(), AMQPValue::LongLongInt(-(1 << 40)));
    user.insert("x-long-int".into(), AMQPValue::LongInt(-42));
    user.insert("x-long-uint".into(), AMQPValue::LongUInt(4_000_000_000));
    user.insert("x-short-int".into(), AMQPValue::ShortInt(-7));
    user.insert("x-short-uint".into(), AMQPValue::ShortUInt(65_000));
    user.insert("x-byte".into(), AMQPValue::ShortShortInt(-1));
    user.insert("x-ubyte".into(), AMQPValue::ShortShortUInt(200));
    user.insert("x-bool".into(), AMQPValue::Boolean(true));
    user.insert("x-double".into(), AMQPValue::Double(2.5));
    user.insert("x-float".into(), AMQPValue::Float(0.25));
    user.insert(
        "x-decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12_345,
        }),
    );
    user.insert("x-timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    user.insert("x-table".into(), AMQPValue::FieldTable(nested));
    user.insert(
        "x-array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString("a".into()),
            AMQPValue::LongInt(1),
        ])),
    );
    user.insert(
        "x-bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 0xff, 0xfe, 7])),
    );
    user.insert("x-void".into(), AMQPValue::Void);
    let properties = BasicProperties::default()
        .with_headers(user.clone())
        .with_content_type("application/json".into())
        .with_message_id("m-77".into())
        .with_priority(4)
        .with_delivery_mode(2);

    let (seen, mut deliveries) = mpsc::unbounded_channel();
    let worker_channel = channel(&connection).await;
    let worker_loop = TracedConsumer::new(consumer(&worker_channel, &queue).await, worker.clone())
        .stop_after(1)
        .run(move |delivery| {
            let seen = seen.clone();
            async move {
                seen.send(delivery).map_err(|_| "test gone")?;
                Ok::<(), &str>(())
            }
        });
    let worker_loop = tokio::spawn(worker_loop);

    let body = br#"{"order":77}"#;
    TracedChannel::new(confirm_channel(&connection).await, producer.clone())
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    finished(worker_loop).await;
    let delivery = deliveries.recv().await.expect("delivery");

    // Body and properties as sent; every user header byte for byte, type for type.
    assert_eq!(delivery.data, body);
    assert_eq!(
        delivery.properties.content_type(),
        properties.content_type()
    );
    assert_eq!(delivery.properties.message_id(), properties.message_id());
    assert_eq!(delivery.properties.priority(), properties.priority());
    assert_eq!(
        delivery.properties.delivery_mode(),
        properties.delivery_mode()
    );
    let received = delivery.properties.headers().as_ref().expect("headers");
    for (key, value) in user.inner() {
        assert_eq!(
            received.inner().get(key),
            Some(value),
            "header {key} arrived as sent"
        );
    }
    // Context headers were added as long strings, and nothing else was.
    let added: Vec<&str> = received
        .inner()
        .keys()
        .map(ShortString::as_str)
        .filter(|k| !user.contains_key(k))
        .collect();
    assert!(added.contains(&"traceparent"), "{added:?}");
    for key in &added {
        assert!(
            ["traceparent", "tracestate", "baggage", "tracehop-sent-at"].contains(key),
            "unexpected header {key}"
        );
        assert!(matches!(
            received.inner().get(*key),
            Some(AMQPValue::LongString(_))
        ));
    }

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let process = one(&spans, "worker", &format!("process {queue}"));
    assert_child(process, send);
    assert_eq!(send.attribute_str("messaging.message.id"), Some("m-77"));

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn context_written_by_other_clients_as_long_strings_or_byte_arrays_is_adopted() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let connection = connect().await;
    let admin = confirm_channel(&connection).await;
    let queue = unique("foreign");
    declare_queue(&admin, &queue, &[]).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parents = ["00f067aa0ba902b7", "00f067aa0ba902b8"];
    let traceparent = |span: &str| format!("00-{trace_id}-{span}-01");
    let as_long = AMQPValue::LongString(traceparent(parents[0]).into());
    let as_bytes = AMQPValue::ByteArray(traceparent(parents[1]).into_bytes().into());
    for value in [as_long, as_bytes] {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), value);
        publish_raw(
            &admin,
            &queue,
            b"from elsewhere",
            BasicProperties::default().with_headers(headers),
        )
        .await;
    }

    let worker_channel = channel(&connection).await;
    let summary = tokio::spawn(
        TracedConsumer::new(consumer(&worker_channel, &queue).await, worker.clone())
            .stop_after(2)
            .run(|_delivery| async { Ok::<(), String>(()) }),
    );
    finished(summary).await;

    let spans = capture.records();
    let processed = find(&spans, "worker", &format!("process {queue}"));
    assert_eq!(processed.len(), 2);
    for (span, parent) in processed.iter().zip(parents) {
        assert_eq!(span.trace_id, trace_id);
        assert_eq!(span.parent_span_id.as_deref(), Some(parent));
        assert_eq!(span.attribute("tracehop.context.rejected"), None);
    }

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn no_context_or_bad_context_starts_a_new_root_and_the_message_is_processed() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let connection = connect().await;
    let admin = confirm_channel(&connection).await;
    let queue = unique("untraced");
    declare_queue(&admin, &queue, &[]).await;

    let header = |value: AMQPValue| {
        let mut t = FieldTable::default();
        t.insert("traceparent".into(), value);
        t.insert("x-keep".into(), AMQPValue::LongInt(1));
        BasicProperties::default().with_headers(t)
    };
    let messages: [(&[u8], BasicProperties); 4] = [
        (b"no headers", BasicProperties::default()),
        (b"garbage", header(AMQPValue::LongString("garbage".into()))),
        (
            b"not utf-8",
            header(AMQPValue::ByteArray(vec![0xff, 0xfe, 0x00].into())),
        ),
        (
            b"zero trace id",
            header(AMQPValue::LongString(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            )),
        ),
    ];
    for (body, properties) in &messages {
        publish_raw(&admin, &queue, body, properties.clone()).await;
    }

    let (seen, mut bodies) = mpsc::unbounded_channel();
    let worker_channel = channel(&connection).await;
    let summary = tokio::spawn(
        TracedConsumer::new(consumer(&worker_channel, &queue).await, worker.clone())
            .ack_policy(AckPolicy::Nack)
            .stop_after(4)
            .run(move |delivery| {
                let seen = seen.clone();
                async move {
                    seen.send(delivery.data).map_err(|_| "test gone")?;
                    Ok::<(), &str>(())
                }
            }),
    );
    let summary = finished(summary).await;
    assert_eq!((summary.deliveries, summary.failed), (4, 0));
    for (body, _) in &messages {
        assert_eq!(
            bodies.recv().await.as_deref(),
            Some(*body),
            "delivered intact"
        );
    }

    let spans = capture.records();
    let processed = find(&spans, "worker", &format!("process {queue}"));
    assert_eq!(processed.len(), 4);
    for span in &processed {
        assert_eq!(span.parent_span_id, None, "a new root: {span:#?}");
        assert_eq!(span.status, Status::Ok);
        assert_eq!(span.attribute_str(SETTLEMENT), Some("ack"));
    }
    let traces: std::collections::HashSet<_> = processed.iter().map(|s| &s.trace_id).collect();
    assert_eq!(traces.len(), 4, "each message starts its own trace");
    assert_eq!(flag(processed[0], "tracehop.context.missing"), Some(true));
    for span in &processed[1..] {
        assert!(
            span.attribute_str("tracehop.context.rejected").is_some(),
            "rejection recorded: {span:#?}"
        );
    }

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn link_mode_starts_a_new_trace_linked_to_the_send_span() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let connection = connect().await;
    let admin = channel(&connection).await;
    let queue = unique("linked");
    declare_queue(&admin, &queue, &[]).await;

    let worker_channel = channel(&connection).await;
    let worker_loop = tokio::spawn(
        TracedConsumer::new(consumer(&worker_channel, &queue).await, worker.clone())
            .parent_policy(ParentPolicy::Link)
            .stop_after(1)
            .run(|_delivery| async { Ok::<(), String>(()) }),
    );
    TracedChannel::new(confirm_channel(&connection).await, producer.clone())
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"untrusted",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    finished(worker_loop).await;

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let process = one(&spans, "worker", &format!("process {queue}"));
    assert_eq!(process.parent_span_id, None);
    assert_ne!(process.trace_id, send.trace_id);
    assert_eq!(process.links.len(), 1);
    assert_eq!(process.links[0].trace_id, send.trace_id);
    assert_eq!(process.links[0].span_id, send.span_id);
    assert_eq!(flag(process, "tracehop.context.linked"), Some(true));

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn publisher_confirms_end_send_spans_with_the_brokers_answer() {
    let capture = Capture::new();
    let producer = capture.service("producer");
    let connection = connect().await;
    let admin = channel(&connection).await;
    let queue = unique("bounded");
    // Room for one message; the broker nacks publishes beyond that.
    declare_queue(
        &admin,
        &queue,
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
        ],
    )
    .await;

    let publisher = TracedChannel::new(confirm_channel(&connection).await, producer.clone());
    let publish = |body: &'static [u8], routing_key: String, mandatory: bool| {
        let publisher = publisher.clone();
        async move {
            publisher
                .basic_publish(
                    "".into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    BasicProperties::default()
                        .with_message_id(String::from_utf8_lossy(body).into_owned().into()),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm")
        }
    };
    assert!(publish(b"fits", queue.clone(), false).await.is_ack());
    assert!(publish(b"overflows", queue.clone(), false).await.is_nack());
    let returned = publish(b"unroutable", unique("nowhere"), true).await;
    assert!(
        matches!(returned, Confirmation::Ack(Some(_))),
        "{returned:?}"
    );

    // Without confirms the span ends when the message is handed over.
    let unconfirmed = TracedChannel::new(channel(&connection).await, producer.clone());
    let answer = unconfirmed
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"no confirms",
            BasicProperties::default().with_message_id("no confirms".into()),
        )
        .await
        .expect("publish");
    let spans = capture.records();
    let by_id = |id: &str| {
        spans
            .iter()
            .find(|s| s.attribute_str("messaging.message.id") == Some(id))
            .unwrap_or_else(|| panic!("no send span for {id}: {spans:#?}"))
    };
    assert_eq!(
        by_id("no confirms").status,
        Status::Ok,
        "ended before the answer"
    );
    assert!(matches!(answer.await, Ok(Confirmation::NotRequested)));

    assert_eq!(by_id("fits").status, Status::Ok);
    let nacked = by_id("overflows");
    assert_eq!(nacked.status, Status::Error);
    assert_eq!(nacked.attribute_str("error.type"), Some("nack"));
    let unroutable = by_id("unroutable");
    assert_eq!(unroutable.status, Status::Error);
    assert_eq!(unroutable.attribute_str("error.type"), Some("returned"));
    assert!(
        unroutable
            .error
            .as_deref()
            .is_some_and(|e| e.contains("312")),
        "{unroutable:#?}"
    );

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn consume_loop_stops_when_cancelled_and_leaves_handler_settled_deliveries_alone() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let connection = connect().await;
    let admin = confirm_channel(&connection).await;
    let queue = unique("cancel");
    declare_queue(&admin, &queue, &[]).await;
    publish_raw(
        &admin,
        &queue,
        b"ack me yourself",
        BasicProperties::default(),
    )
    .await;

    let worker_channel = channel(&connection).await;
    let traced = TracedConsumer::new(consumer(&worker_channel, &queue).await, worker.clone())
        .ack_policy(AckPolicy::NackRequeue);
    let tag = traced.tag();
    let worker_loop = tokio::spawn(traced.run(|delivery| async move {
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        // Fails after settling: the policy must not nack (and requeue) it again.
        Err::<(), String>("failed after acking".to_owned())
    }));

    let spans = capture.wait_until(WAIT, |spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    worker_channel
        .basic_cancel(tag, lapin::options::BasicCancelOptions::default())
        .await
        .expect("basic_cancel");
    let summary = finished(worker_loop).await;
    assert_eq!((summary.deliveries, summary.failed), (1, 1));
    assert_eq!(spans[0].attribute_str(SETTLEMENT), Some("handler"));

    // The message was acked once and not requeued: the queue is empty.
    let left = admin
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(left.message_count(), 0);

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn run_until_stops_when_shutdown_completes() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let connection = connect().await;
    let admin = confirm_channel(&connection).await;
    let queue = unique("shutdown");
    declare_queue(&admin, &queue, &[]).await;
    publish_raw(
        &admin,
        &queue,
        b"before shutdown",
        BasicProperties::default(),
    )
    .await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_channel = channel(&connection).await;
    let worker_loop = tokio::spawn(
        TracedConsumer::new(consumer(&worker_channel, &queue).await, worker.clone()).run_until(
            |_delivery| async { Ok::<(), String>(()) },
            async move {
                let _ = stopped.await;
            },
        ),
    );
    let spans = capture.wait_until(WAIT, |spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    stop.send(()).expect("loop alive");
    let summary = finished(worker_loop).await;
    assert_eq!((summary.deliveries, summary.failed), (1, 0));
    assert_eq!(spans[0].attribute_str(SETTLEMENT), Some("ack"));

    delete_queues(&admin, &[&queue]).await;
}
