//! Headers: the user's survive type for type beside the context headers; context written
//! by other clients is adopted; missing or bad context starts a new root and loses
//! nothing; `amqp::header_text`/`header_bytes` read a delivery's string headers.

use std::collections::HashSet;

use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, ShortString};
use lapin::BasicProperties;
use tracehop::amqp::{header_bytes, header_text};
use tracehop::journal::Status;
use tracehop::testing::Capture;
use tracehop::OnFailure;
use tracehop_integration_tests::spans::{assert_child, find, flag, one, settlement, text};

use super::{collecting, finished, publish, spawn_run, TestQueue};

/// Every AMQP field type a user may put in `headers`, one of each.
fn headers_of_every_type() -> FieldTable {
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
    user
}

#[tokio::test]
async fn user_headers_and_their_types_survive() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let queue = TestQueue::declare("headers").await;

    let user = headers_of_every_type();
    let properties = BasicProperties::default()
        .with_headers(user.clone())
        .with_content_type("application/json".into())
        .with_message_id("m-77".into())
        .with_priority(4)
        .with_delivery_mode(2);

    let (collect, mut deliveries) = collecting();
    let worker_channel = queue.channel().await;
    let worker_consumer = queue.consumer(&worker_channel, &worker).await.limit(1);
    let worker_loop = spawn_run(worker_consumer, collect);

    let body = br#"{"order":77}"#;
    let publisher = queue.publisher(&producer).await;
    publish(&publisher, &queue.name, body, properties.clone()).await;
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
    let handled = one(&spans, "worker", &queue.process());
    assert_child(handled, send);
    assert_eq!(text(send, "messaging.message.id"), Some("m-77"));

    queue.delete().await;
}

#[tokio::test]
async fn context_written_by_other_clients_as_long_strings_or_byte_arrays_is_adopted() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let queue = TestQueue::declare("foreign").await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parents = ["00f067aa0ba902b7", "00f067aa0ba902b8"];
    let traceparent = |span: &str| format!("00-{trace_id}-{span}-01");
    let as_long = AMQPValue::LongString(traceparent(parents[0]).into());
    let as_bytes = AMQPValue::ByteArray(traceparent(parents[1]).into_bytes().into());
    for value in [as_long, as_bytes] {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), value);
        queue
            .publish_raw(
                b"from elsewhere",
                BasicProperties::default().with_headers(headers),
            )
            .await;
    }

    let worker_channel = queue.channel().await;
    let worker_consumer = queue.consumer(&worker_channel, &worker).await.limit(2);
    finished(spawn_run(worker_consumer, |_delivery| async {
        Ok::<(), String>(())
    }))
    .await;

    let spans = capture.records();
    let processed = find(&spans, "worker", &queue.process());
    assert_eq!(processed.len(), 2);
    for (span, parent) in processed.iter().zip(parents) {
        assert_eq!(span.trace_id, trace_id);
        assert_eq!(span.parent_span_id.as_deref(), Some(parent));
        assert_eq!(span.attribute("tracehop.context.rejected"), None);
    }

    queue.delete().await;
}

#[tokio::test]
async fn no_context_or_bad_context_starts_a_new_root_and_the_message_is_processed() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let queue = TestQueue::declare("untraced").await;

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
        queue.publish_raw(body, properties.clone()).await;
    }

    let (collect, mut deliveries) = collecting();
    let worker_channel = queue.channel().await;
    let worker_consumer = queue
        .consumer(&worker_channel, &worker)
        .await
        .on_failure(OnFailure::dead_letter())
        .limit(4);
    let summary = finished(spawn_run(worker_consumer, collect)).await;
    assert_eq!((summary.messages, summary.failed), (4, 0));
    for (body, _) in &messages {
        assert_eq!(
            deliveries.recv().await.map(|d| d.data).as_deref(),
            Some(*body),
            "delivered intact"
        );
    }

    let spans = capture.records();
    let processed = find(&spans, "worker", &queue.process());
    assert_eq!(processed.len(), 4);
    for span in &processed {
        assert_eq!(span.parent_span_id, None, "a new root: {span:#?}");
        assert_eq!(span.status, Status::Ok);
        assert_eq!(settlement(span), Some("ack"));
    }
    let traces: HashSet<_> = processed.iter().map(|s| &s.trace_id).collect();
    assert_eq!(traces.len(), 4, "each message starts its own trace");
    assert_eq!(flag(processed[0], "tracehop.context.missing"), Some(true));
    for span in &processed[1..] {
        assert!(
            text(span, "tracehop.context.rejected").is_some(),
            "rejection recorded: {span:#?}"
        );
    }

    queue.delete().await;
}

#[tokio::test]
async fn header_text_and_header_bytes_read_string_headers_of_a_real_delivery() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let queue = TestQueue::declare("header-values").await;

    let mut headers = FieldTable::default();
    headers.insert("x-long".into(), AMQPValue::LongString("long text".into()));
    headers.insert(
        "x-bytes".into(),
        AMQPValue::ByteArray(b"byte text".to_vec().into()),
    );
    headers.insert(
        "x-binary".into(),
        AMQPValue::ByteArray(vec![0xff, 0xfe, 0].into()),
    );
    headers.insert("x-empty".into(), AMQPValue::LongString("".into()));
    headers.insert("x-number".into(), AMQPValue::LongInt(7));
    headers.insert("x-flag".into(), AMQPValue::Boolean(true));
    queue
        .publish_raw(
            b"with headers",
            BasicProperties::default().with_headers(headers),
        )
        .await;

    let (collect, mut deliveries) = collecting();
    let worker_channel = queue.channel().await;
    let worker_consumer = queue.consumer(&worker_channel, &worker).await.limit(1);
    finished(spawn_run(worker_consumer, collect)).await;
    let delivery = deliveries.recv().await.expect("delivery");
    let props = &delivery.properties;

    // Long strings and byte arrays, as the broker delivered them.
    assert_eq!(header_text(props, "x-long"), Some("long text"));
    assert_eq!(header_bytes(props, "x-long"), Some(&b"long text"[..]));
    assert_eq!(header_text(props, "x-bytes"), Some("byte text"));
    assert_eq!(header_bytes(props, "x-bytes"), Some(&b"byte text"[..]));
    assert_eq!(header_text(props, "x-empty"), Some(""));
    // Bytes that are not UTF-8 are bytes, not text.
    assert_eq!(header_bytes(props, "x-binary"), Some(&[0xff, 0xfe, 0][..]));
    assert_eq!(header_text(props, "x-binary"), None);
    // Types that carry no text, and absent headers, read as absent.
    for name in ["x-number", "x-flag", "x-missing"] {
        assert_eq!(header_bytes(props, name), None, "{name}");
        assert_eq!(header_text(props, name), None, "{name}");
    }
    assert_eq!(header_text(&BasicProperties::default(), "x-long"), None);

    // RabbitMQ cannot carry a short string in a table (its `s` is a 16-bit integer; a
    // table holding lapin's `ShortString` makes the broker close the connection with
    // INTERNAL_ERROR), so such values only occur in tables built locally: re-type the
    // delivered long string as one in the delivered properties.
    let mut retyped = props.headers().clone().expect("headers");
    retyped.insert("x-long".into(), AMQPValue::ShortString("long text".into()));
    let retyped = props.clone().with_headers(retyped);
    assert_eq!(header_text(&retyped, "x-long"), Some("long text"));
    assert_eq!(header_bytes(&retyped, "x-long"), Some(&b"long text"[..]));

    queue.delete().await;
}
