//! Failures that end somewhere other than a redelivery: a dead-letter topic (in the same
//! trace), the stop policy (nothing committed past the failed message), a forward with no
//! producer, and a delivery the broker refuses.

use rdkafka::consumer::CommitMode;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use tracehop::journal::Status;
use tracehop::kafka::{delivery_attempt, TracedProducer};
use tracehop::propagation::{ATTEMPT, TRACEPARENT};
use tracehop::{ConsumeError, OnFailure, SpanCollector};
use tracehop_integration_tests::spans::{
    assert_child, attempt, find, one, service, settlement, text,
};
use tracehop_integration_tests::{finish, unique};

use crate::{
    closed, committed, deliver, deliver_in_request, headers_of, keep_in, key_of, offset_of,
    spawn_run, Broker, Captured, SEND,
};

/// A failing handler with the dead-letter policy forwards the message from inside its
/// failed process span; the dead-letter processing is in the same trace, attempt 2.
async fn dead_letter_stays_in_the_trace(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker, janitor) = (
        service(&spans, "gateway"),
        service(&spans, "worker"),
        service(&spans, "janitor"),
    );
    let tasks = broker.topic("tasks", 1).await;
    let dlq = broker.topic("tasks-dlq", 1).await;

    let user = OwnedHeaders::new()
        .insert(Header {
            key: "tenant",
            value: Some("acme"),
        })
        .insert(Header {
            key: "null",
            value: None::<&[u8]>,
        });
    deliver_in_request(
        &broker.producer(&gateway),
        FutureRecord::to(&tasks)
            .key("run-9")
            .payload("poison")
            .headers(user),
    )
    .await;

    let consumer = broker
        .consumer(&worker, &tasks, &unique("workers"))
        .on_failure(OnFailure::dead_letter_topic(dlq.clone()))
        .forward_with(broker.producer(&worker))
        .limit(1);
    let task = spawn_run(consumer, |_task| async {
        Err::<(), _>(std::io::Error::other("tool exploded"))
    });
    let (consumer, summary) = finish(task, "worker").await;
    let summary = summary.expect("worker loop");
    assert_eq!(
        (summary.messages, summary.succeeded, summary.failed),
        (1, 0, 1)
    );
    assert_eq!(
        committed(&consumer, &tasks, 0),
        Offset::Offset(1),
        "the forwarded message is settled"
    );

    let seen = Captured::default();
    let task = spawn_run(
        broker.consumer(&janitor, &dlq, &unique("janitor")).limit(1),
        keep_in(&seen),
    );
    closed(finish(task, "janitor").await)
        .await
        .expect("janitor loop");
    let dead_letter = seen.lock().unwrap()[0].clone();
    assert_eq!(dead_letter.payload(), Some(&b"poison"[..]));
    assert_eq!(dead_letter.key(), Some(&b"run-9"[..]));
    assert_eq!(delivery_attempt(&dead_letter), 2);
    let headers = headers_of(&dead_letter);
    assert_eq!(
        &headers[..2],
        &[
            ("tenant".to_owned(), Some(b"acme".to_vec())),
            ("null".to_owned(), None)
        ]
    );
    assert_eq!(headers.iter().filter(|(k, _)| k == TRACEPARENT).count(), 1);
    assert_eq!(headers.iter().filter(|(k, _)| k == ATTEMPT).count(), 1);

    let all = spans.records();
    let request = one(&all, "gateway", "handle_request");
    let send = one(&all, "gateway", &format!("send {tasks}"));
    let failed = one(&all, "worker", &format!("process {tasks}"));
    let forward = one(&all, "worker", &format!("send {dlq}"));
    let dead_process = one(&all, "janitor", &format!("process {dlq}"));
    assert_child(send, request);
    assert_child(failed, send);
    assert_child(forward, failed);
    assert_child(dead_process, forward);
    assert_eq!(failed.status, Status::Error);
    assert_eq!(failed.error.as_deref(), Some("tool exploded"));
    assert_eq!(text(failed, "error.type"), Some("io_error"));
    assert_eq!(settlement(failed), Some("forward"));
    assert_eq!(attempt(failed), Some(1));
    assert_eq!(attempt(dead_process), Some(2));
    assert_eq!(key_of(dead_process), Some("run-9"));
    assert_eq!(forward.status, Status::Ok);
    consumer.close().await;
}

/// With the stop policy, a failed message's offset is not committed: the loop returns
/// the handler's error, the committed offset stays at the failed message, and the next
/// member of the group gets that message again.
async fn failed_message_is_not_committed(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("orders", 1).await;
    let group = unique("orders");
    let producer = broker.producer(&gateway);
    for body in ["ok-0", "bad-1", "ok-2"] {
        deliver(&producer, FutureRecord::to(&topic).key(body).payload(body)).await;
    }

    let consumer = broker
        .consumer(&worker, &topic, &group)
        .commit(Some(CommitMode::Sync))
        .on_failure(OnFailure::stop());
    let task = spawn_run(consumer, |m| async move {
        match m.payload() {
            Some(b"bad-1") => Err("cannot handle bad-1".to_owned()),
            _ => Ok(()),
        }
    });
    let (consumer, stopped) = finish(task, "consumer").await;
    match stopped.expect_err("the stop policy returns the error") {
        ConsumeError::Handler { error, position } => {
            assert_eq!(error, "cannot handle bad-1");
            assert_eq!(position, format!("{topic}[0]@1"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        committed(&consumer, &topic, 0),
        Offset::Offset(1),
        "only ok-0 is committed"
    );
    consumer.close().await;

    // The next member of the group starts at the failed message.
    let seen = Captured::default();
    let task = spawn_run(
        broker.consumer(&worker, &topic, &group).limit(1),
        keep_in(&seen),
    );
    closed(finish(task, "second consumer").await)
        .await
        .expect("second loop");
    let redelivered = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (redelivered.offset(), redelivered.payload()),
        (1, Some(&b"bad-1"[..]))
    );

    let all = spans.records();
    let processed = find(&all, "worker", &format!("process {topic}"));
    let failed: Vec<_> = processed
        .iter()
        .filter(|s| s.status == Status::Error)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(offset_of(failed[0]), Some(1));
    // Stopping gives the message back (seeks to it) rather than committing it.
    assert_eq!(settlement(failed[0]), Some("seek"));
    // Both deliveries of bad-1 are children of its one send span.
    let send = find(&all, "gateway", &format!("send {topic}"))
        .into_iter()
        .find(|s| offset_of(s) == Some(1))
        .expect("send of bad-1");
    let deliveries: Vec<_> = processed
        .iter()
        .filter(|s| offset_of(s) == Some(1))
        .collect();
    assert_eq!(deliveries.len(), 2);
    deliveries.iter().for_each(|d| assert_child(d, send));
    assert!(
        processed.iter().all(|s| offset_of(s) != Some(2)),
        "ok-2 is not processed after the stop"
    );
}

/// A policy that forwards with no producer configured ends the loop with a `forward`
/// settlement error and leaves the message uncommitted.
async fn forward_without_producer_stops_uncommitted(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("orphan", 1).await;
    deliver(
        &broker.producer(&gateway),
        FutureRecord::to(&topic).key("o").payload("x"),
    )
    .await;
    let consumer = broker
        .consumer(&worker, &topic, &unique("orphan"))
        .commit(Some(CommitMode::Sync))
        .on_failure(OnFailure::dead_letter_topic("nowhere"));
    let task = spawn_run(consumer, |_m| async { Err::<(), _>("broken".to_owned()) });
    let (consumer, result) = finish(task, "consumer").await;
    match result {
        Err(ConsumeError::Settle {
            settlement,
            position,
            error,
        }) => {
            assert_eq!(settlement, "forward");
            assert_eq!(position, format!("{topic}[0]@0"));
            assert!(error.to_string().contains("nowhere"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        committed(&consumer, &topic, 0),
        Offset::Invalid,
        "nothing committed"
    );
    let all = spans.records();
    let process = one(&all, "worker", &format!("process {topic}"));
    assert_eq!(process.status, Status::Error);
    assert_eq!(
        process.error.as_deref(),
        Some("broken"),
        "the handler's error"
    );
    assert_eq!(settlement(process), Some("forward"));
    assert!(
        text(process, "tracehop.settlement.error").is_some_and(|e| e.contains("nowhere")),
        "{process:#?}"
    );
    assert!(find(&all, "worker", "send nowhere").is_empty());
    consumer.close().await;
}

/// A delivery the broker refuses ends the send span as an error, and the caller gets
/// rdkafka's error and the message back unchanged.
async fn delivery_failure_ends_send_span_as_error(broker: Broker) {
    let spans = SpanCollector::new();
    let gateway = service(&spans, "gateway");
    let (topic, config) = broker.failing_topic().await;
    let producer = TracedProducer::from_config(&config, gateway.clone()).expect("producer");
    let result = producer
        .send(FutureRecord::to(&topic).key("k").payload("lost"), SEND)
        .await;
    let (error, message) = result.expect_err("the broker refuses the record");
    assert_eq!(message.payload(), Some(&b"lost"[..]));
    assert_eq!(message.key(), Some(&b"k"[..]));
    let code = error.rdkafka_error_code().expect("an rdkafka error code");
    let all = spans.records();
    let send = one(&all, "gateway", &format!("send {topic}"));
    assert_eq!(send.status, Status::Error);
    assert_eq!(
        text(send, "error.type"),
        Some(snake_case(&format!("{code:?}")).as_str()),
        "librdkafka's error code, in snake case"
    );
    assert_eq!(send.error.as_deref(), Some(error.to_string().as_str()));
    assert_eq!(offset_of(send), None);
}

/// `MessageTimedOut` -> `message_timed_out`.
fn snake_case(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

on_both_brokers!(
    dead_letter_stays_in_the_trace,
    failed_message_is_not_committed,
    forward_without_producer_stops_uncommitted,
    delivery_failure_ends_send_span_as_error,
);
