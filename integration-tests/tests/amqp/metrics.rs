//! Messaging metrics and the enrich hook on RabbitMQ: sends and deliveries counted under
//! the conventions' destination names, a dead-lettered message, rejected and missing
//! context, settlement durations.

use lapin::types::AMQPValue;
use lapin::{BasicProperties, ExchangeKind};
use opentelemetry::KeyValue;
use tracehop::messaging::Hooks;
use tracehop::testing::PointValue;
use tracehop::{OnFailure, SpanCollector};
use tracehop_integration_tests::spans::{named, text};
use tracehop_integration_tests::{metered, metric, unique};

use super::{
    channel, collecting, confirm_channel, connect, declare_exchange, declare_queue, delete_queues,
    finished, process, publish, publish_raw, spawn_run, traced_consumer, TestQueue,
};

#[tokio::test]
async fn rabbitmq_metrics_count_dead_letters_and_broken_context() {
    let spans = SpanCollector::new();
    let (producer, producer_m) = metered(&spans, "producer");
    let (worker, worker_m) = metered(&spans, "worker");
    let connection = connect().await;
    let admin = confirm_channel(&connection).await;
    let (work, dead, dlx) = (unique("m-work"), unique("m-dead"), unique("m-dlx"));
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
    let consumer = traced_consumer(&worker_channel, &work, &worker)
        .await
        .on_failure(OnFailure::reject())
        .limit(4);
    let worker_loop = spawn_run(consumer, |delivery: lapin::message::Delivery| async move {
        if delivery.data == b"poison" {
            Err("unparseable order")
        } else {
            Ok(())
        }
    });

    let publisher =
        tracehop::amqp::TracedChannel::new(confirm_channel(&connection).await, producer);
    publish(&publisher, &work, b"order 1", BasicProperties::default()).await;
    publish(&publisher, &work, b"poison", BasicProperties::default()).await;
    publish_raw(&admin, &work, b"no context", BasicProperties::default()).await;
    let mut bad = lapin::types::FieldTable::default();
    bad.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-garbage-01".into()),
    );
    publish_raw(
        &admin,
        &work,
        b"bad context",
        BasicProperties::default().with_headers(bad),
    )
    .await;
    let summary = finished(worker_loop).await;
    assert_eq!((summary.messages, summary.failed), (4, 1));
    let (collect, mut dead_letters) = collecting();
    let janitor = traced_consumer(&channel(&connection).await, &dead, &worker)
        .await
        .limit(1);
    finished(spawn_run(janitor, collect)).await;
    assert_eq!(
        dead_letters.recv().await.expect("dead letter").data,
        b"poison"
    );

    // Published through the default exchange: named by the routing key (the queue).
    let sent = [
        ("messaging.system", "rabbitmq"),
        ("messaging.destination.name", work.as_str()),
        ("messaging.operation.name", "publish"),
    ];
    assert_eq!(
        producer_m.sum(metric::MESSAGING_CLIENT_SENT_MESSAGES, &sent),
        2.0
    );
    assert_eq!(
        producer_m.histogram_count(metric::MESSAGING_CLIENT_OPERATION_DURATION, &sent),
        2
    );
    let dest = [("messaging.destination.name", work.as_str())];
    assert_eq!(
        worker_m.sum(metric::MESSAGING_CLIENT_CONSUMED_MESSAGES, &dest),
        4.0
    );
    assert_eq!(
        worker_m.histogram_count(metric::MESSAGING_PROCESS_DURATION, &dest),
        4
    );
    assert_eq!(
        worker_m.histogram_count(
            metric::MESSAGING_PROCESS_DURATION,
            &[
                ("messaging.destination.name", work.as_str()),
                ("error.type", "str")
            ]
        ),
        1
    );
    let forwarded = worker_m.matching(metric::FORWARDED, &dest);
    assert_eq!(forwarded.len(), 1, "{forwarded:#?}");
    assert_eq!(forwarded[0].value, PointValue::Sum(1.0));
    assert_eq!(
        forwarded[0]
            .attributes
            .get("tracehop.settlement")
            .map(String::as_str),
        Some("reject")
    );
    assert_eq!(worker_m.sum(metric::CONTEXT_MISSING, &dest), 1.0);
    assert_eq!(worker_m.sum(metric::CONTEXT_REJECTED, &dest), 1.0);
    let acks = worker_m.histogram_count(
        metric::MESSAGING_CLIENT_OPERATION_DURATION,
        &[
            ("messaging.destination.name", work.as_str()),
            ("messaging.operation.type", "settle"),
            ("messaging.operation.name", "ack"),
        ],
    );
    assert_eq!(acks, 3);
    // The dead letter arrived through the dead-letter exchange, with its routing key.
    let dead_name = format!("{dlx}:{work}:{dead}");
    assert_eq!(
        worker_m.sum(
            metric::MESSAGING_CLIENT_CONSUMED_MESSAGES,
            &[("messaging.destination.name", dead_name.as_str())]
        ),
        1.0
    );
    delete_queues(&admin, &[&work, &dead]).await;
}

#[tokio::test]
async fn enrich_hook_adds_attributes_from_headers_on_publish_and_process() {
    let spans = SpanCollector::new();
    let hooks = || {
        Hooks::new().enrich(|msg, attributes| {
            let side = match msg.operation {
                tracehop::messaging::Operation::Send => "send",
                _ => "process",
            };
            attributes.push(KeyValue::new("app.side", side));
            if let Some(tenant) = msg.header("x-tenant") {
                attributes.push(KeyValue::new("app.tenant", tenant.to_owned()));
            }
        })
    };
    let build = |name: &str| {
        tracehop::Telemetry::builder(name)
            .collector(&spans)
            .hooks(hooks())
            .build()
            .expect("telemetry")
    };
    let (producer, worker) = (build("producer"), build("worker"));
    let queue = TestQueue::declare("enrich").await;
    let worker_channel = queue.channel().await;
    let consumer = queue.consumer(&worker_channel, &worker).await.limit(1);
    let (collect, mut got) = collecting();
    let worker_loop = spawn_run(consumer, collect);
    let publisher = queue.publisher(&producer).await;
    let mut headers = lapin::types::FieldTable::default();
    headers.insert("x-tenant".into(), AMQPValue::LongString("acme".into()));
    publish(
        &publisher,
        &queue.name,
        b"order",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    finished(worker_loop).await;
    assert_eq!(got.recv().await.expect("delivery").data, b"order");

    let records = spans.records();
    let send = named(&records, "publish amq.default");
    let processed = named(&records, &process(&queue.name));
    assert_eq!((send.len(), processed.len()), (1, 1), "{records:#?}");
    assert_eq!(text(send[0], "app.side"), Some("send"));
    assert_eq!(text(processed[0], "app.side"), Some("process"));
    // The hook reads the user's headers on both sides: the publish's properties and the
    // delivery's.
    assert_eq!(text(send[0], "app.tenant"), Some("acme"));
    assert_eq!(text(processed[0], "app.tenant"), Some("acme"));
    queue.delete().await;
}
