//! Messaging metrics on Kafka: sends and deliveries counted after a known run, a failed
//! handler's error type, consumer lag per partition from rdkafka's statistics; and header
//! capture on send and process spans.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tracehop::kafka::ConsumerLag;
use tracehop::messaging::HeaderCapture;
use tracehop::testing::PointValue;
use tracehop::SpanCollector;
use tracehop_integration_tests::spans::find;
use tracehop_integration_tests::{finish, metered, metric, unique};

use crate::{closed, deliver, spawn_run, Broker};

/// Five records, a consumer that reads three of them (the second fails once and runs
/// again in place): counts, errors, redeliveries, and a lag of two.
async fn kafka_metrics_count_messages_errors_and_lag(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, gateway_m) = metered(&spans, "gateway");
    let (worker, worker_m) = metered(&spans, "worker");
    let topic = broker.topic("metrics", 1).await;
    let group = unique("metrics-group");
    let producer = broker.producer(&gateway);
    for i in 0..5 {
        deliver(
            &producer,
            FutureRecord::to(&topic)
                .key("k")
                .payload(&format!("order {i}")),
        )
        .await;
    }

    let mut config = broker.consumer_config(&group, "worker");
    config.set("statistics.interval.ms", "100");
    let consumer: rdkafka::consumer::StreamConsumer<ConsumerLag> = config
        .create_with_context(ConsumerLag::new(&worker).group(group.clone()))
        .expect("consumer with the lag context");
    let consumer = tracehop::Consumer::<tracehop::kafka::KafkaSource<ConsumerLag>>::new(
        consumer,
        worker.clone(),
    )
    .group_id(group.as_str())
    .client_id("worker");
    rdkafka::consumer::Consumer::subscribe(consumer.inner(), &[topic.as_str()]).expect("subscribe");
    // Three deliveries, four runs: orders 0, 1 (fails), 1 again (attempt 2), 2.
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let consumer = consumer
        .on_failure(tracehop::OnFailure::retry_in_place(
            2,
            std::time::Duration::ZERO,
        ))
        .limit(3);
    let ran = spawn_run(consumer, move |message| {
        use rdkafka::message::Message as _;
        let first_failure = message.payload() == Some(b"order 1")
            && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(if first_failure {
            Err("inventory unavailable")
        } else {
            Ok(())
        })
    });
    let (consumer, result) = finish(ran, "consumer loop").await;
    let summary = result.expect("consume");
    assert_eq!((summary.messages, summary.retries), (3, 1));

    // The lag (high watermark minus the committed offset) reaches 2 (orders 3 and 4 not
    // committed) in a statistics report. rdkafka serves its statistics callback only while
    // the consumer is polled: poll it (reading on without committing anything).
    let deadline = tokio::time::Instant::now() + tracehop_integration_tests::WAIT;
    let lag = loop {
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            consumer.inner().recv(),
        )
        .await;
        let lag = rdkafka::consumer::Consumer::context(consumer.inner()).lag(&topic, 0);
        if lag == Some(2) || tokio::time::Instant::now() > deadline {
            break lag;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let committed = crate::committed(&consumer, &topic, 0);
    assert_eq!(lag, Some(2), "committed offset {committed:?}");
    let lag_points = worker_m.matching(
        metric::KAFKA_CONSUMER_LAG,
        &[
            ("messaging.destination.name", topic.as_str()),
            ("messaging.destination.partition.id", "0"),
            ("messaging.consumer.group.name", group.as_str()),
        ],
    );
    assert_eq!(lag_points.len(), 1, "{lag_points:#?}");
    assert_eq!(lag_points[0].value, PointValue::Gauge(2.0));
    closed((consumer, ())).await;

    let sent = [
        ("messaging.system", "kafka"),
        ("messaging.destination.name", topic.as_str()),
        ("messaging.operation.name", "send"),
    ];
    assert_eq!(
        gateway_m.sum(metric::MESSAGING_CLIENT_SENT_MESSAGES, &sent),
        5.0
    );
    assert_eq!(
        gateway_m.histogram_count(metric::MESSAGING_CLIENT_OPERATION_DURATION, &sent),
        5
    );
    let dest = [
        ("messaging.destination.name", topic.as_str()),
        ("messaging.consumer.group.name", group.as_str()),
    ];
    assert_eq!(
        worker_m.sum(metric::MESSAGING_CLIENT_CONSUMED_MESSAGES, &dest),
        3.0
    );
    assert_eq!(
        worker_m.histogram_count(metric::MESSAGING_PROCESS_DURATION, &dest),
        4
    );
    assert_eq!(
        worker_m.histogram_count(
            metric::MESSAGING_PROCESS_DURATION,
            &[
                ("messaging.destination.name", topic.as_str()),
                ("error.type", "str")
            ]
        ),
        1
    );
    assert_eq!(worker_m.sum(metric::REDELIVERIES, &dest), 1.0);
    assert_eq!(worker_m.histogram_count(metric::QUEUE_TIME, &dest), 3);
    let settle = |name: &str| {
        worker_m.histogram_count(
            metric::MESSAGING_CLIENT_OPERATION_DURATION,
            &[
                ("messaging.destination.name", topic.as_str()),
                ("messaging.operation.type", "settle"),
                ("messaging.operation.name", name),
            ],
        )
    };
    assert_eq!((settle("commit"), settle("seek")), (3, 0));
}

/// Named headers, repeated values included, on both spans; other headers left out.
async fn capture_headers_on_kafka_send_and_process_spans(broker: Broker) {
    let spans = SpanCollector::new();
    let build = |name: &str| {
        tracehop::Telemetry::builder(name)
            .collector(&spans)
            .capture_headers(HeaderCapture::new(["x-tenant", "x-missing"]).max_values(2))
            .build()
            .expect("telemetry")
    };
    let (gateway, worker) = (build("gateway"), build("worker"));
    let topic = broker.topic("capture", 1).await;
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "x-tenant",
            value: Some("acme"),
        })
        .insert(Header {
            key: "x-tenant",
            value: Some("globex"),
        })
        .insert(Header {
            key: "x-tenant",
            value: Some("initech"),
        })
        .insert(Header {
            key: "x-other",
            value: Some("left out"),
        });
    deliver(
        &broker.producer(&gateway),
        FutureRecord::to(&topic)
            .key("k")
            .payload("order")
            .headers(headers),
    )
    .await;
    let consumer = broker
        .consumer(&worker, &topic, &unique("capture-group"))
        .limit(1);
    let seen: crate::Captured = Default::default();
    let (_, result) = finish(spawn_run(consumer, crate::keep_in(&seen)), "consumer").await;
    result.expect("consume");
    assert_eq!(seen.lock().unwrap().len(), 1);

    let records = spans.records();
    let send = find(&records, "gateway", &format!("send {topic}"));
    let process = find(&records, "worker", &format!("process {topic}"));
    assert_eq!((send.len(), process.len()), (1, 1), "{records:#?}");
    // At most two values kept, in order.
    let tenants = serde_json::json!(["acme", "globex"]);
    for span in [send[0], process[0]] {
        assert_eq!(
            span.attributes.get("messaging.header.x-tenant"),
            Some(&tenants)
        );
        assert!(!span.attributes.contains_key("messaging.header.x-other"));
        assert!(!span.attributes.contains_key("messaging.header.x-missing"));
        // Context headers are not captured unless named.
        assert!(!span.attributes.contains_key("messaging.header.traceparent"));
    }
}

on_both_brokers!(
    kafka_metrics_count_messages_errors_and_lag,
    capture_headers_on_kafka_send_and_process_spans
);
