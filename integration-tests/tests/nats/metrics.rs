//! Messaging metrics, header capture and hooks on core NATS and JetStream: counts and
//! histograms after a known run, errors and redeliveries, broken context, templates.

use tracehop::messaging::{HeaderCapture, Hooks};
use tracehop::metrics::DURATION_BUCKETS;
use tracehop::nats::TracedJetStream;
use tracehop::testing::PointValue;
use tracehop_integration_tests::{metered, metric};

use super::*;

/// Run `sub` to its limit with a handler that succeeds, returning the payloads seen.
async fn consume_all(sub: &mut TracedSubscriber) -> Vec<String> {
    let mut got = Vec::new();
    let summary = tokio::time::timeout(
        WAIT,
        sub.run(|message| {
            got.push(String::from_utf8_lossy(&message.payload).into_owned());
            async { Ok::<(), String>(()) }
        }),
    )
    .await
    .expect("the subscription reached its limit")
    .expect("consume");
    assert_eq!(summary.messages, got.len() as u64);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_metrics_count_sends_consumes_queue_time_and_broken_context() {
    let spans = SpanCollector::new();
    let (producer_t, producer_m) = metered(&spans, "producer");
    let (consumer_t, consumer_m) = metered(&spans, "consumer");
    let producer = TracedClient::new(connect().await, producer_t);
    let consumer = TracedClient::new(connect().await, consumer_t);
    let subject = unique("nats.metrics");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(5);
    ready(&consumer).await;

    for i in 0..3 {
        producer
            .publish(subject.clone(), format!("traced {i}").into())
            .await
            .expect("publish");
    }
    let plain = connect().await;
    plain
        .publish(subject.clone(), "no context".into())
        .await
        .expect("plain publish");
    let mut bad = HeaderMap::new();
    bad.insert(TRACEPARENT, "00-not-a-trace-01");
    plain
        .publish_with_headers(subject.clone(), bad, "bad context".into())
        .await
        .expect("plain publish");
    plain.flush().await.expect("flush");
    let got = consume_all(&mut sub).await;
    assert_eq!(got.len(), 5, "{got:?}");
    producer.telemetry().flush().expect("flush");

    let sent = [
        ("messaging.system", "nats"),
        ("messaging.destination.name", subject.as_str()),
        ("messaging.operation.name", "publish"),
    ];
    assert_eq!(
        producer_m.sum(metric::MESSAGING_CLIENT_SENT_MESSAGES, &sent),
        3.0
    );
    let send_duration = producer_m.matching(
        metric::MESSAGING_CLIENT_OPERATION_DURATION,
        &[("messaging.operation.type", "send")],
    );
    assert_eq!(send_duration.len(), 1, "{send_duration:#?}");
    let point = &send_duration[0];
    assert_eq!(point.unit, "s");
    assert_eq!(
        point.schema_url.as_deref(),
        Some(tracehop::metrics::SCHEMA_URL)
    );
    assert!(point.attributes.contains_key("server.address"), "{point:?}");
    match &point.value {
        PointValue::Histogram { count, bounds, .. } => {
            assert_eq!(*count, 3);
            assert_eq!(bounds, &DURATION_BUCKETS.to_vec());
        }
        other => panic!("not a histogram: {other:?}"),
    }

    // Deliveries are recorded per subscription subject (the template).
    let template = [("messaging.destination.template", subject.as_str())];
    assert_eq!(
        consumer_m.sum(metric::MESSAGING_CLIENT_CONSUMED_MESSAGES, &template),
        5.0
    );
    assert_eq!(
        consumer_m.histogram_count(metric::MESSAGING_PROCESS_DURATION, &template),
        5
    );
    // Only the traced publishes carry `tracehop-sent-at`; core NATS stamps nothing.
    assert_eq!(consumer_m.histogram_count(metric::QUEUE_TIME, &template), 3);
    assert_eq!(consumer_m.sum(metric::CONTEXT_MISSING, &template), 1.0);
    let rejected = consumer_m.matching(metric::CONTEXT_REJECTED, &template);
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert_eq!(rejected[0].value, PointValue::Sum(1.0));
    assert!(rejected[0]
        .attributes
        .get("tracehop.context.rejected")
        .is_some_and(|why| why.contains("traceparent")));
    assert_eq!(consumer_m.sum(metric::REDELIVERIES, &[]), 0.0);

    // Spans name the connection as the server knows it.
    let records = spans.records();
    let processes = named(&records, &format!("process {subject}"));
    assert_eq!(processes.len(), 5);
    let id = serde_json::json!(consumer.client().server_info().client_id.to_string());
    for p in processes {
        assert_eq!(p.attributes.get("messaging.client.id"), Some(&id), "{p:#?}");
    }
    let sends = named(&records, &format!("publish {subject}"));
    let id = serde_json::json!(producer.client().server_info().client_id.to_string());
    assert_eq!(sends.len(), 3);
    assert!(sends
        .iter()
        .all(|s| s.attributes.get("messaging.client.id") == Some(&id)));
}

async fn jetstream_metered(
    spans: &SpanCollector,
    name: &str,
) -> (TracedJetStream, tracehop::testing::MetricsCapture) {
    let (telemetry, metrics) = metered(spans, name);
    let client = connect().await;
    (
        TracedJetStream::new(async_nats::jetstream::new(client), telemetry),
        metrics,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_metrics_count_errors_redeliveries_and_settlements() {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use async_nats::jetstream::stream;

    let spans = SpanCollector::new();
    let (producer, producer_m) = jetstream_metered(&spans, "producer").await;
    let (worker, worker_m) = jetstream_metered(&spans, "worker").await;
    let name = unique("js-metrics");
    let subject = format!("js.metrics.{name}");
    let js_stream = producer
        .context()
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("create stream");
    let consumer = js_stream
        .create_consumer(pull::Config {
            durable_name: Some(unique("pull")),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            ..Default::default()
        })
        .await
        .expect("pull consumer");
    producer
        .publish(subject.clone(), "order 42".into())
        .await
        .expect("publish");

    // Fails on the first two deliveries (nak), succeeds on the third (ack).
    let messages = consumer.messages().await.expect("messages");
    let mut traced = worker.messages(messages).limit(3);
    let summary = tokio::time::timeout(
        WAIT,
        traced.run(|message| async move {
            let delivered = message.info().map_err(|e| e.to_string())?.delivered;
            if delivered < 3 {
                Err(format!("inventory unavailable (delivery {delivered})"))
            } else {
                Ok(())
            }
        }),
    )
    .await
    .expect("three deliveries")
    .expect("consume");
    assert_eq!((summary.messages, summary.failed), (3, 2));
    let _ = producer.context().delete_stream(&name).await;

    assert_eq!(
        producer_m.sum(
            metric::MESSAGING_CLIENT_SENT_MESSAGES,
            &[("messaging.destination.name", subject.as_str())]
        ),
        1.0
    );
    let dest = [("messaging.destination.name", subject.as_str())];
    assert_eq!(
        worker_m.sum(metric::MESSAGING_CLIENT_CONSUMED_MESSAGES, &dest),
        3.0
    );
    assert_eq!(
        worker_m.histogram_count(metric::MESSAGING_PROCESS_DURATION, &dest),
        3
    );
    assert_eq!(
        worker_m.histogram_count(
            metric::MESSAGING_PROCESS_DURATION,
            &[
                ("messaging.destination.name", subject.as_str()),
                ("error.type", "string")
            ]
        ),
        2
    );
    // Deliveries 2 and 3 are attempts beyond the first.
    assert_eq!(worker_m.sum(metric::REDELIVERIES, &dest), 2.0);
    let settle = |name: &str| {
        worker_m.histogram_count(
            metric::MESSAGING_CLIENT_OPERATION_DURATION,
            &[
                ("messaging.destination.name", subject.as_str()),
                ("messaging.operation.type", "settle"),
                ("messaging.operation.name", name),
            ],
        )
    };
    assert_eq!((settle("nak"), settle("ack")), (2, 1));
    // Queue time from the stream's timestamps (JetStream publishes write no sent-at).
    assert_eq!(worker_m.histogram_count(metric::QUEUE_TIME, &dest), 3);
    assert_eq!(worker_m.sum(metric::CONTEXT_MISSING, &dest), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_metrics_and_spans_follow_the_destination_template_hook() {
    let spans = SpanCollector::new();
    let hooks = || {
        Hooks::new().destination_template(|system, subject| {
            (system == "nats" && subject.starts_with("tmpl."))
                .then(|| format!("{}.*", subject.rsplit_once('.').map_or(subject, |(p, _)| p)))
        })
    };
    let producer_m = tracehop::testing::MetricsCapture::new();
    let producer_t = Telemetry::builder("producer")
        .collector(&spans)
        .metrics(producer_m.provider())
        .hooks(hooks())
        .build()
        .expect("telemetry");
    let producer = TracedClient::new(connect().await, producer_t);
    let prefix = format!("tmpl.{}", unique("users").replace('-', "_"));
    let plain = connect().await;
    let mut wire = plain
        .subscribe(format!("{prefix}.*"))
        .await
        .expect("subscribe");
    round_trip(&plain).await.expect("round trip");
    for user in ["u1", "u2", "u3"] {
        producer
            .publish(format!("{prefix}.{user}"), "hello".into())
            .await
            .expect("publish");
    }
    for _ in 0..3 {
        tokio::time::timeout(WAIT, wire.next())
            .await
            .expect("delivered")
            .expect("message");
    }
    let template = format!("{prefix}.*");
    let points = producer_m.matching(metric::MESSAGING_CLIENT_SENT_MESSAGES, &[]);
    assert_eq!(
        points.len(),
        1,
        "one series for three subjects: {points:#?}"
    );
    assert_eq!(
        points[0].attributes.get("messaging.destination.template"),
        Some(&template)
    );
    assert!(!points[0]
        .attributes
        .contains_key("messaging.destination.name"));
    assert_eq!(points[0].value, PointValue::Sum(3.0));
    let records = spans.records();
    let sends = named(&records, &format!("publish {template}"));
    assert_eq!(sends.len(), 3, "{records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_headers_on_nats_publish_and_process_spans() {
    let spans = SpanCollector::new();
    let capture = || HeaderCapture::new(["X-Tenant", "traceparent"]).max_value_bytes(8);
    let build = |name: &str| {
        Telemetry::builder(name)
            .collector(&spans)
            .capture_headers(capture())
            .build()
            .expect("telemetry")
    };
    let producer = TracedClient::new(connect().await, build("producer"));
    let consumer = TracedClient::new(connect().await, build("consumer"));
    let subject = unique("nats.capture");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(1);
    ready(&consumer).await;
    let mut headers = HeaderMap::new();
    headers.append("X-Tenant", "acme");
    headers.append("X-Tenant", "globex-corporation");
    headers.insert("X-Secret", "not captured");
    let sent = producer
        .publish_with_headers(subject.clone(), headers, "payload".into())
        .await
        .expect("publish");
    let got = consume_all(&mut sub).await;
    assert_eq!(got, ["payload"]);

    let records = spans.records();
    let send = named(&records, &format!("publish {subject}"))[0];
    let process = named(&records, &format!("process {subject}"))[0];
    let tenants = serde_json::json!(["acme", "globex-c"]);
    for span in [send, process] {
        assert_eq!(
            span.attributes.get("messaging.header.x-tenant"),
            Some(&tenants),
            "{span:#?}"
        );
        assert!(!span.attributes.contains_key("messaging.header.x-secret"));
    }
    // traceparent was named: both spans record it (cut to 8 bytes).
    assert_eq!(
        process.attributes.get("messaging.header.traceparent"),
        Some(&serde_json::json!([
            "00-".to_owned() + &sent.trace_id().to_string()[..5]
        ]))
    );
    assert_eq!(
        send.attributes.get("messaging.header.traceparent"),
        process.attributes.get("messaging.header.traceparent")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_hook_leaves_health_checks_untraced_but_delivered() {
    let spans = SpanCollector::new();
    let metrics = tracehop::testing::MetricsCapture::new();
    let build = |name: &str| {
        Telemetry::builder(name)
            .collector(&spans)
            .metrics(metrics.provider())
            .hooks(Hooks::new().filter(|msg| !msg.destination.contains(".health.")))
            .build()
            .expect("telemetry")
    };
    let producer = TracedClient::new(connect().await, build("producer"));
    let consumer = TracedClient::new(connect().await, build("consumer"));
    let base = unique("nats.filter").replace('-', "_");
    let work = format!("{base}.work.jobs");
    let health = format!("{base}.health.ping");
    let mut sub = consumer
        .subscribe(format!("{base}.>"))
        .await
        .expect("subscribe")
        .limit(2);
    ready(&consumer).await;
    producer
        .publish(health.clone(), "ping".into())
        .await
        .expect("publish");
    producer
        .publish(work.clone(), "job".into())
        .await
        .expect("publish");

    let mut got = Vec::new();
    let summary = tokio::time::timeout(
        WAIT,
        sub.run(|message| {
            got.push((
                message.subject.to_string(),
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(TRACEPARENT))
                    .is_some(),
            ));
            async { Ok::<(), String>(()) }
        }),
    )
    .await
    .expect("limit")
    .expect("consume");
    assert_eq!((summary.messages, summary.succeeded), (2, 2));
    got.sort();
    // The health check went out without context and was still handed to the handler.
    assert_eq!(got, [(health.clone(), false), (work.clone(), true)]);
    let records = spans.records();
    assert!(
        records.iter().all(|s| !s
            .attributes
            .values()
            .any(|v| v.as_str() == Some(health.as_str()))),
        "a span for the health check: {records:#?}"
    );
    assert_eq!(named(&records, &format!("publish {work}")).len(), 1);
    assert_eq!(
        named(&records, &format!("process {base}.>")).len(),
        1,
        "{records:#?}"
    );
    assert_eq!(
        metrics.sum(metric::MESSAGING_CLIENT_CONSUMED_MESSAGES, &[]),
        1.0,
        "only the traced delivery is counted"
    );
}
