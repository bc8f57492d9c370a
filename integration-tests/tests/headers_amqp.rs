#![cfg(feature = "amqp")]
//! Header edge cases on a real RabbitMQ (`TRACEHOP_AMQP_URL`): context that would push a
//! message's header frame over `frame_max` is left out (the message goes out as the
//! plain client sends it, and the connection stays open), and context headers of a type
//! other than text are rejected or discarded with the type as the reason.
//!
//! Messages are received with the plain lapin consumer and read with
//! `Telemetry::process_span`, so these tests do not depend on the consumer wrapper.

use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tracehop::amqp::TracedChannel;
use tracehop::propagation::TRACEPARENT;
use tracehop::{Incoming, SpanCollector, SpanRecord, Telemetry};
use tracehop_integration_tests::{amqp_url, unique, WAIT};

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

/// A confirming channel, a fresh queue and a plain consumer on it.
async fn queue(connection: &Connection) -> (Channel, String, Consumer) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let name = unique("headers");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .expect("queue");
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            "headers-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (channel, name, consumer)
}

async fn next(consumer: &mut Consumer) -> Delivery {
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is open")
        .expect("a delivery");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    delivery
}

fn span<'a>(spans: &'a [SpanRecord], kind: &str, index: usize) -> &'a SpanRecord {
    spans
        .iter()
        .filter(|s| {
            s.span_kind
                .map(|k| format!("{k:?}").to_lowercase())
                .as_deref()
                == Some(kind)
        })
        .nth(index)
        .unwrap_or_else(|| panic!("{kind} span #{index} in {spans:#?}"))
}

/// The encoded size of one header table entry holding a long string.
fn long_string_entry(name: &str, value_len: usize) -> usize {
    1 + name.len() + 1 + 4 + value_len
}

/// The content header frame of a message whose only property is a table with one long
/// string `big` of `n` bytes: frame header 7, class, weight and body size 12, property
/// flags 2, the table's length 4 and entry, frame end 1.
fn frame_with_big(n: usize) -> usize {
    7 + 12 + 2 + 4 + long_string_entry("big", n) + 1
}

/// Headers just under `frame_max`: context that fits to the byte is added (and accepted by
/// the broker), one byte more and it is left out, the message published as the plain
/// client would, and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_that_would_pass_frame_max_is_left_out_and_the_connection_stays_open() {
    let connection = connect().await;
    let frame_max = connection.configuration().frame_max() as usize;
    let spans = SpanCollector::new();
    let telemetry = Telemetry::builder("amqp-frame-max")
        .collector(&spans)
        .build()
        .expect("telemetry");
    let (channel, name, mut consumer) = queue(&connection).await;
    let traced = TracedChannel::new(channel.clone(), telemetry.clone()).frame_max(frame_max as u32);

    // What tracehop adds to every message: traceparent and tracehop-sent-at (16 digits).
    let context = long_string_entry(TRACEPARENT, 55) + long_string_entry("tracehop-sent-at", 16);
    let fits = frame_max - context - frame_with_big(0);
    for (i, n) in [fits, fits + 1].into_iter().enumerate() {
        let mut headers = FieldTable::default();
        headers.insert("big".into(), AMQPValue::LongString(vec![b'h'; n].into()));
        let properties = BasicProperties::default().with_headers(headers.clone());
        let body = format!("message {i}");
        let confirm = traced
            .basic_publish(
                ShortString::default(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker took message {i}");
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.data, body.as_bytes());
        let received = delivery.properties.headers().clone().expect("headers");
        assert_eq!(received.inner().get("big"), headers.inner().get("big"));
        telemetry
            .process_span(Incoming::new("rabbitmq", &name), &delivery.properties)
            .end();
        if i == 0 {
            assert!(
                received.contains_key(TRACEPARENT),
                "context fits to the byte"
            );
        } else {
            assert_eq!(received, headers, "exactly the user's headers, no context");
        }
    }

    let records = spans.records();
    let (fitted, dropped) = (span(&records, "producer", 0), span(&records, "producer", 1));
    assert_eq!(fitted.attribute("tracehop.context.dropped"), None);
    assert_eq!(
        dropped.attribute_str("tracehop.context.dropped"),
        Some("frame_max")
    );
    let (child, root) = (span(&records, "consumer", 0), span(&records, "consumer", 1));
    assert_eq!(child.parent_span_id.as_ref(), Some(&fitted.span_id));
    assert_eq!(child.trace_id, fitted.trace_id);
    assert_eq!(root.parent_span_id, None);
    assert_eq!(
        root.attribute("tracehop.context.missing"),
        Some(&true.into())
    );

    // The connection is still open: a normal traced message goes through.
    assert!(connection.status().connected());
    traced
        .basic_publish(
            ShortString::default(),
            name.as_str().into(),
            BasicPublishOptions::default(),
            b"after",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let after = next(&mut consumer).await;
    assert_eq!(after.data, b"after");
    assert!(after
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.contains_key(TRACEPARENT)));
    let _ = channel
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await;
}

/// A `traceparent` of a type other than text, as another client may send it, survives the
/// broker with its type and is rejected with the type as the reason; a `tracestate` or
/// `baggage` of another type is left out while the trace goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_headers_of_other_types_are_rejected_with_the_type() {
    let connection = connect().await;
    let spans = SpanCollector::new();
    let telemetry = Telemetry::builder("amqp-types")
        .collector(&spans)
        .build()
        .expect("telemetry");
    let (channel, name, mut consumer) = queue(&connection).await;
    let mut table = FieldTable::default();
    table.insert("k".into(), AMQPValue::LongString("v".into()));
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases: Vec<(&str, AMQPValue, &str)> = vec![
        (
            TRACEPARENT,
            AMQPValue::LongLongInt(42),
            "traceparent wrong-type:integer",
        ),
        (
            TRACEPARENT,
            AMQPValue::Boolean(true),
            "traceparent wrong-type:boolean",
        ),
        (TRACEPARENT, AMQPValue::Void, "traceparent wrong-type:void"),
        (
            TRACEPARENT,
            AMQPValue::FieldTable(table),
            "traceparent wrong-type:table",
        ),
        (
            TRACEPARENT,
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(valid.into())])),
            "traceparent wrong-type:array",
        ),
        (
            "tracestate",
            AMQPValue::LongLongInt(7),
            "tracestate wrong-type:integer",
        ),
        (
            "baggage",
            AMQPValue::Boolean(false),
            "baggage wrong-type:boolean",
        ),
    ];
    for (header, value, _) in &cases {
        let mut headers = FieldTable::default();
        if *header != TRACEPARENT {
            headers.insert(TRACEPARENT.into(), AMQPValue::LongString(valid.into()));
        }
        headers.insert((*header).into(), value.clone());
        channel
            .basic_publish(
                ShortString::default(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                b"typed",
                BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    for (header, value, _) in &cases {
        let delivery = next(&mut consumer).await;
        let received = delivery.properties.headers().clone().expect("headers");
        assert_eq!(
            received.inner().get(*header),
            Some(value),
            "the broker kept the type"
        );
        telemetry
            .process_span(Incoming::new("rabbitmq", &name), &delivery.properties)
            .end();
    }
    let records = spans.records();
    assert_eq!(records.len(), cases.len());
    for (record, (header, _, reason)) in records.iter().zip(&cases) {
        if *header == TRACEPARENT {
            assert_eq!(
                record.attribute_str("tracehop.context.rejected"),
                Some(*reason)
            );
            assert_eq!(record.parent_span_id, None, "a new trace");
            assert_eq!(record.attribute("tracehop.context.missing"), None);
        } else {
            assert_eq!(
                record.attribute_str("tracehop.context.discarded"),
                Some(*reason)
            );
            assert_eq!(record.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
            assert_eq!(record.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }
    let _ = channel
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await;
}
