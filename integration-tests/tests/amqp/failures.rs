//! Failed handlers: dead-lettering keeps the trace, `x-death` counts attempts, requeued
//! redeliveries are their own process spans, and a panicking handler is a failure like an
//! `Err` (its message requeued and handled again), not the end of the consumer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, ExchangeKind};
use tokio::sync::mpsc;
use tracehop::amqp::{TracedChannel, REDELIVERED};
use tracehop::journal::Status;
use tracehop::testing::Capture;
use tracehop::OnFailure;
use tracehop_integration_tests::spans::{assert_child, attempt, find, flag, one, settlement, text};
use tracehop_integration_tests::{finish, unique};

use super::{
    channel, collecting, confirm_channel, connect, declare_exchange, declare_queue, delete_queues,
    finished, prefetch_channel, process, publish, spawn_run, spawn_run_keeping, traced_consumer,
    TestQueue,
};

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
    let worker_consumer = traced_consumer(&worker_channel, &work, &worker)
        .await
        .on_failure(OnFailure::reject())
        .limit(1);
    let worker_loop = spawn_run(worker_consumer, |_delivery| async {
        Err::<(), _>("unparseable order")
    });

    let (collect, mut dead_letters) = collecting();
    let janitor_channel = channel(&connection).await;
    let janitor_consumer = traced_consumer(&janitor_channel, &dead, &janitor)
        .await
        .limit(1);
    let janitor_loop = spawn_run(janitor_consumer, collect);

    let publisher = TracedChannel::new(confirm_channel(&connection).await, producer.clone());
    publish(&publisher, &work, b"order 9", BasicProperties::default()).await;

    let worker_summary = finished(worker_loop).await;
    assert_eq!((worker_summary.messages, worker_summary.failed), (1, 1));
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
    let failed = one(&spans, "worker", &process(&work));
    let cleaned = one(&spans, "janitor", &process(&dead));
    assert_child(failed, send);
    // The dead letter carries the producer's headers: its processing joins the same trace
    // under the same send span.
    assert_child(cleaned, send);
    capture.assert_one_trace();

    assert_eq!(failed.status, Status::Error);
    assert_eq!(failed.error.as_deref(), Some("unparseable order"));
    assert_eq!(settlement(failed), Some("reject"));
    assert_eq!(cleaned.status, Status::Ok);
    assert_eq!(settlement(cleaned), Some("ack"));
    // Dead-lettered through `dlx` with its original routing key (the work queue).
    assert_eq!(
        text(cleaned, "messaging.destination.name"),
        Some(format!("{dlx}:{work}:{dead}").as_str())
    );
    // Dead-lettered from `work`, but this is its first delivery from the dead-letter queue.
    assert_eq!(attempt(cleaned), Some(1));

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
    let worker_consumer = traced_consumer(&worker_channel, &work, &worker)
        .await
        .on_failure(OnFailure::dead_letter())
        .limit(2);
    let worker_loop = spawn_run(worker_consumer, move |_delivery| {
        let first = handler_calls.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                Err("downstream unavailable")
            } else {
                Ok(())
            }
        }
    });

    let publisher = TracedChannel::new(confirm_channel(&connection).await, producer.clone());
    publish(&publisher, &work, b"retry me", BasicProperties::default()).await;
    let summary = finished(worker_loop).await;
    assert_eq!((summary.messages, summary.failed), (2, 1));

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let attempts = find(&spans, "worker", &process(&work));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for run in &attempts {
        assert_child(run, send);
    }
    assert_ne!(attempts[0].span_id, attempts[1].span_id);
    assert_eq!(attempt(attempts[0]), Some(1));
    assert_eq!(settlement(attempts[0]), Some("nack"));
    assert_eq!(attempts[0].status, Status::Error);
    assert_eq!(attempt(attempts[1]), Some(2));
    assert_eq!(settlement(attempts[1]), Some("ack"));
    assert_eq!(attempts[1].status, Status::Ok);
    capture.assert_one_trace();

    delete_queues(&admin, &[&work, &retry]).await;
}

#[tokio::test]
async fn requeued_redeliveries_are_separate_process_spans_in_the_same_trace() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let queue = TestQueue::declare("flaky").await;

    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = Arc::clone(&calls);
    let worker_channel = queue.channel().await;
    // The default policy: nack with requeue.
    let worker_consumer = queue.consumer(&worker_channel, &worker).await.limit(3);
    let worker_loop = spawn_run(worker_consumer, move |delivery| {
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

    let publisher = queue.publisher(&producer).await;
    publish(
        &publisher,
        &queue.name,
        b"flaky job",
        BasicProperties::default(),
    )
    .await;
    let summary = finished(worker_loop).await;
    assert_eq!((summary.messages, summary.failed), (3, 2));

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let deliveries = find(&spans, "worker", &queue.process());
    assert_eq!(deliveries.len(), 3, "{spans:#?}");
    for d in &deliveries {
        assert_child(d, send);
    }
    let ids: HashSet<_> = deliveries.iter().map(|d| &d.span_id).collect();
    assert_eq!(ids.len(), 3, "each delivery has its own span");

    let redelivered: Vec<_> = deliveries.iter().map(|d| flag(d, REDELIVERED)).collect();
    assert_eq!(redelivered, [Some(false), Some(true), Some(true)]);
    let settlements: Vec<_> = deliveries.iter().map(|d| settlement(d)).collect();
    assert_eq!(
        settlements,
        [Some("nack_requeue"), Some("nack_requeue"), Some("ack")]
    );
    let statuses: Vec<_> = deliveries.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [Status::Error, Status::Error, Status::Ok]);
    assert_eq!(deliveries[0].error.as_deref(), Some("attempt 1 failed"));
    assert_eq!(attempt(deliveries[0]), Some(1));
    // A classic queue does not count requeues: a redelivery is known to be at least the
    // second attempt.
    assert_eq!(attempt(deliveries[1]), Some(2));
    capture.assert_one_trace();

    queue.delete().await;
}

#[tokio::test]
async fn panicking_handler_requeues_its_message_and_the_consumer_goes_on() {
    const MESSAGES: usize = 6;
    const PANICS_ON: &[u8] = b"job 3";
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let queue = TestQueue::declare("panics").await;

    let publisher = queue.publisher(&producer).await;
    let bodies: Vec<Vec<u8>> = (1..=MESSAGES)
        .map(|n| format!("job {n}").into_bytes())
        .collect();
    for body in &bodies {
        let id = String::from_utf8_lossy(body).into_owned();
        publish(
            &publisher,
            &queue.name,
            body,
            BasicProperties::default().with_message_id(id.into()),
        )
        .await;
    }

    // Prefetch 4: when the handler panics, three more deliveries sit unacked in the
    // client; they must all be handled, and the panicking one requeued.
    let worker_channel = prefetch_channel(&queue.connection, 4).await;
    let (handled, mut handled_rx) = mpsc::unbounded_channel();
    let worker_consumer = queue
        .consumer(&worker_channel, &worker)
        .await
        .limit(MESSAGES as u64 + 1);
    let worker_loop = spawn_run_keeping(worker_consumer, move |delivery| {
        let handled = handled.clone();
        async move {
            if delivery.data == PANICS_ON && !delivery.redelivered {
                panic!("cannot handle {}", String::from_utf8_lossy(&delivery.data));
            }
            handled
                .send((delivery.data, delivery.redelivered))
                .map_err(|_| "test gone")?;
            Ok::<(), &str>(())
        }
    });
    let (worker_consumer, ended) =
        finish(worker_loop, "consume loop with a panicking handler").await;
    let summary = ended.expect("the loop ends normally at its limit");
    assert_eq!(summary.messages, MESSAGES as u64 + 1, "{summary:?}");
    assert_eq!(summary.succeeded, MESSAGES as u64, "{summary:?}");
    assert_eq!((summary.failed, summary.panicked), (1, 1), "{summary:?}");
    assert_eq!(summary.settle_errors, 0, "{summary:?}");

    // Every message handled once, the panicking one on its redelivery.
    let mut seen = Vec::new();
    while let Ok(item) = handled_rx.try_recv() {
        seen.push(item);
    }
    let mut seen_bodies: Vec<_> = seen.iter().map(|(body, _)| body.clone()).collect();
    seen_bodies.sort();
    assert_eq!(seen_bodies, bodies);
    for (body, redelivered) in &seen {
        assert_eq!(
            *redelivered,
            body == PANICS_ON,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }

    let spans = capture.records();
    let runs = find(&spans, "worker", &queue.process());
    assert_eq!(runs.len(), MESSAGES + 1, "{spans:#?}");
    let of = |id: &str| -> Vec<_> {
        runs.iter()
            .filter(|s| text(s, "messaging.message.id") == Some(id))
            .copied()
            .collect()
    };
    let sends = find(&spans, "producer", "publish amq.default");
    let send_of = |id: &str| {
        *sends
            .iter()
            .find(|s| text(s, "messaging.message.id") == Some(id))
            .unwrap_or_else(|| panic!("no send span for {id}"))
    };

    // The panicking run: an error with the panic's message, requeued.
    let panicked = of("job 3");
    assert_eq!(panicked.len(), 2, "{panicked:#?}");
    let (first, again) = (panicked[0], panicked[1]);
    assert_eq!(first.status, Status::Error);
    assert_eq!(text(first, "error.type"), Some("panic"));
    assert_eq!(first.error.as_deref(), Some("cannot handle job 3"));
    assert_eq!(settlement(first), Some("nack_requeue"));
    assert_eq!(flag(first, REDELIVERED), Some(false));
    assert_eq!(attempt(first), Some(1));
    // Its redelivery: attempt 2, flagged, under the same send span.
    assert_eq!(again.status, Status::Ok);
    assert_eq!(settlement(again), Some("ack"));
    assert_eq!(flag(again, REDELIVERED), Some(true));
    assert_eq!(attempt(again), Some(2));
    assert_child(first, send_of("job 3"));
    assert_child(again, send_of("job 3"));

    // Every other message: one successful run, under its own send span.
    for n in (1..=MESSAGES).filter(|n| *n != 3) {
        let id = format!("job {n}");
        let [run] = of(&id)[..] else {
            panic!("one run of {id}: {runs:#?}");
        };
        assert_eq!(run.status, Status::Ok, "{run:#?}");
        assert_eq!(settlement(run), Some("ack"));
        assert_eq!(attempt(run), Some(1));
        assert_child(run, send_of(&id));
    }

    // Nothing is left in the queue, and nothing unacked: closing the consumer's channel
    // (which, with the consumer still registered, requeues whatever it held unacked
    // before the broker's close-ok; the limit test in lifecycle.rs sees it do so) brings
    // nothing back.
    assert_eq!(queue.ready().await, 0);
    worker_channel
        .close(200, "test done".into())
        .await
        .expect("close the consumer's channel");
    drop(worker_consumer);
    assert_eq!(queue.ready().await, 0);
    let left = queue
        .admin
        .basic_get(queue.name.as_str().into(), BasicGetOptions::default())
        .await
        .expect("basic_get");
    assert!(left.is_none(), "left in the queue: {left:?}");
    queue.delete().await;
}
