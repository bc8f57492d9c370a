//! How a consume loop ends: cancelled (`basic_cancel`), stopped (`Stop`), at its limit,
//! or with its channel or queue gone from under it; never by hanging.

use std::sync::Arc;

use lapin::options::{
    BasicAckOptions, BasicCancelOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracehop::journal::Status;
use tracehop::testing::Capture;
use tracehop::{ConsumeError, Stop, Summary};
use tracehop_integration_tests::spans::{find, settlement, text};
use tracehop_integration_tests::{finish, unique, WAIT};

use super::{finished, prefetch_channel, spawn_run, spawn_run_keeping, TestQueue};

type Loop = JoinHandle<Result<Summary, ConsumeError<String>>>;

/// A consumer of a queue of its own (its channel returned) that has handled and acked
/// one message and now waits for the next.
async fn waiting_consumer(capture: &Capture, prefix: &str) -> (TestQueue, Channel, Loop) {
    let worker = capture.service("worker");
    let queue = TestQueue::declare(prefix).await;
    queue
        .publish_raw(b"first", BasicProperties::default())
        .await;
    let worker_channel = queue.channel().await;
    let worker_consumer = queue.consumer(&worker_channel, &worker).await;
    let worker_loop = spawn_run(worker_consumer, |_delivery| async { Ok::<(), String>(()) });
    // The span ends once the delivery is acked.
    let spans = capture.wait_until(WAIT, |spans| !spans.is_empty()).await;
    assert_eq!(settlement(&spans[0]), Some("ack"), "{spans:#?}");
    (queue, worker_channel, worker_loop)
}

#[tokio::test]
async fn consume_loop_stops_when_cancelled_and_leaves_handler_settled_deliveries_alone() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let queue = TestQueue::declare("cancel").await;
    queue
        .publish_raw(b"ack me yourself", BasicProperties::default())
        .await;

    let worker_channel = queue.channel().await;
    // The default policy would nack with requeue.
    let traced = queue.consumer(&worker_channel, &worker).await;
    let tag = traced.tag();
    let worker_loop = spawn_run(traced, |delivery| async move {
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        // Fails after settling: the policy must not nack (and requeue) it again.
        Err::<(), String>("failed after acking".to_owned())
    });

    let spans = capture.wait_until(WAIT, |spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    worker_channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await
        .expect("basic_cancel");
    let summary = finished(worker_loop).await;
    assert_eq!((summary.messages, summary.failed), (1, 1));
    assert_eq!(settlement(&spans[0]), Some("handler"));

    // The message was acked once and not requeued: the queue is empty.
    assert_eq!(queue.ready().await, 0);
    queue.delete().await;
}

#[tokio::test]
async fn stop_signal_ends_the_loop_after_the_message_in_hand() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let queue = TestQueue::declare("shutdown").await;
    queue
        .publish_raw(b"before shutdown", BasicProperties::default())
        .await;

    let stop = Stop::new();
    let worker_channel = queue.channel().await;
    let worker_consumer = queue
        .consumer(&worker_channel, &worker)
        .await
        .stop_on(&stop);
    let worker_loop = spawn_run(worker_consumer, |_delivery| async { Ok::<(), String>(()) });
    let spans = capture.wait_until(WAIT, |spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    stop.stop();
    let summary = finished(worker_loop).await;
    assert_eq!((summary.messages, summary.failed), (1, 0));
    assert_eq!(settlement(&spans[0]), Some("ack"));

    queue.delete().await;
}

#[tokio::test]
async fn limit_ends_the_loop_and_what_it_did_not_take_goes_back_to_the_queue() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let queue = TestQueue::declare("limit").await;
    for n in 1..=5 {
        let body = format!("job {n}");
        let properties = BasicProperties::default().with_message_id(body.clone().into());
        queue.publish_raw(body.as_bytes(), properties).await;
    }

    // Prefetch 2: the client holds up to two deliveries beyond what the loop takes.
    let worker_channel = prefetch_channel(&queue.connection, 2).await;
    let worker_consumer = queue.consumer(&worker_channel, &worker).await.limit(3);
    let task = spawn_run_keeping(worker_consumer, |_delivery| async { Ok::<(), String>(()) });
    let (worker_consumer, ended) = finish(task, "consume loop with a limit").await;
    let summary = ended.expect("consume loop");
    assert_eq!(
        (summary.messages, summary.succeeded, summary.failed),
        (3, 3, 0)
    );

    let spans = capture.records();
    let handled = find(&spans, "worker", &queue.process());
    let ids: Vec<_> = handled
        .iter()
        .map(|s| text(s, "messaging.message.id"))
        .collect();
    assert_eq!(ids, [Some("job 1"), Some("job 2"), Some("job 3")]);
    assert!(handled.iter().all(|s| settlement(s) == Some("ack")));

    // The loop returned: the deliveries the client prefetched beyond the limit are not
    // handled, and go back to the queue with the channel.
    worker_channel
        .close(200, "test done".into())
        .await
        .expect("close");
    drop(worker_consumer);
    assert_eq!(queue.ready().await, 2);
    assert_eq!(
        find(&capture.records(), "worker", &queue.process()).len(),
        3
    );

    queue.delete().await;
}

#[tokio::test]
async fn consumer_whose_channel_is_closed_under_it_ends_without_hanging() {
    let capture = Capture::new();
    let (queue, worker_channel, worker_loop) = waiting_consumer(&capture, "closed-under").await;

    // The test closes the consumer's channel while the loop waits for the next delivery.
    worker_channel
        .close(200, "closed by the test".into())
        .await
        .expect("close");
    let ended = finish(worker_loop, "consume loop on a closed channel").await;
    let summary = match ended {
        // A channel closed cleanly (by the application) cancels its consumers: the loop
        // ends as it does on basic_cancel.
        Ok(summary) => summary,
        Err(ConsumeError::Source(e)) => panic!("a clean close is not a failure: {e}"),
        Err(e) => panic!("unexpected end: {e:?}"),
    };
    assert_eq!((summary.messages, summary.failed), (1, 0));
    assert_eq!(summary.source_errors, 0);
    assert_eq!(queue.ready().await, 0);

    queue.delete().await;
}

#[tokio::test]
async fn consumer_whose_queue_is_deleted_under_it_ends_without_hanging() {
    let capture = Capture::new();
    let (queue, worker_channel, worker_loop) = waiting_consumer(&capture, "deleted-under").await;

    // The broker cancels the consumers of a deleted queue (basic.cancel from the server).
    queue
        .admin
        .queue_delete(queue.name.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue_delete");
    let ended = finish(worker_loop, "consume loop on a deleted queue").await;
    let summary = match ended {
        Ok(summary) => summary,
        Err(e) => panic!("a server-side cancel ends the loop cleanly, not with: {e:?}"),
    };
    assert_eq!((summary.messages, summary.failed), (1, 0));
    // The channel outlives its consumer.
    assert!(
        worker_channel.status().connected(),
        "{:?}",
        worker_channel.status()
    );
}

#[tokio::test]
async fn consumer_whose_channel_fails_under_it_ends_with_a_source_error() {
    let capture = Capture::new();
    let (queue, worker_channel, worker_loop) = waiting_consumer(&capture, "failed-under").await;

    // A passive declare of a queue that does not exist: the broker closes the channel
    // with 404 NOT_FOUND, an error the consumer's loop must report.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let missing = worker_channel
        .queue_declare(
            unique("nowhere").as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await;
    assert!(missing.is_err(), "{missing:?}");
    let ended = finish(worker_loop, "consume loop on a failed channel").await;
    match ended {
        Err(e @ ConsumeError::Source(_)) => {
            let lapin_error = e
                .client_error()
                .and_then(|c| c.downcast_ref::<lapin::Error>())
                .unwrap_or_else(|| panic!("the client's error is a lapin::Error: {e:?}"));
            assert!(
                lapin_error.to_string().contains("NOT_FOUND"),
                "{lapin_error}"
            );
        }
        other => panic!("expected ConsumeError::Source, got {other:?}"),
    }
    let spans = capture.records();
    let handled = find(&spans, "worker", &queue.process());
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].status, Status::Ok);

    queue.delete().await;
}

#[tokio::test]
async fn delivery_in_hand_when_its_channel_closes_is_not_reported_as_settled() {
    let capture = Capture::new();
    let worker = capture.service("worker");
    let queue = TestQueue::declare("closed-in-hand").await;
    queue
        .publish_raw(b"in hand", BasicProperties::default())
        .await;

    // The handler says it has the delivery, then holds it until the test has closed the
    // channel.
    let (in_hand, mut handler_has_it) = mpsc::unbounded_channel();
    let closed = Arc::new(Notify::new());
    let channel_closed = Arc::clone(&closed);
    let worker_channel = queue.channel().await;
    let worker_consumer = queue.consumer(&worker_channel, &worker).await;
    let worker_loop = spawn_run(worker_consumer, move |_delivery| {
        let _ = in_hand.send(());
        let channel_closed = Arc::clone(&channel_closed);
        async move {
            channel_closed.notified().await;
            Ok::<(), String>(())
        }
    });
    handler_has_it.recv().await.expect("the handler ran");
    worker_channel
        .close(200, "closed by the test".into())
        .await
        .expect("close");
    closed.notify_one();
    let ended = finish(worker_loop, "consume loop whose channel closed mid-message").await;

    // The ack could not be sent: the message went back to the queue with the channel.
    assert_eq!(queue.ready().await, 1);
    let spans = capture.records();
    let handled = find(&spans, "worker", &queue.process());
    assert_eq!(handled.len(), 1, "{spans:#?}");
    // What the span and the loop say must match: not acked, not settled by the handler.
    assert_ne!(settlement(handled[0]), Some("handler"), "{:#?}", handled[0]);
    assert!(
        handled[0].attribute("tracehop.settlement.error").is_some(),
        "{:#?}",
        handled[0]
    );
    assert!(
        matches!(
            ended,
            Err(ConsumeError::Settle {
                settlement: "ack",
                ..
            })
        ),
        "{ended:?}"
    );

    queue.delete().await;
}
