//! A failed message comes again: redelivered by seeking its partition back (the default
//! policy, also for a panicking handler), or run again in place. Every run is its own
//! process span under the message's one send span, and nothing past a message still to
//! come again is committed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::CommitMode;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use tracehop::journal::Status;
use tracehop::{OnFailure, SpanCollector, SpanRecord};
use tracehop_integration_tests::spans::{
    assert_child, attempt, find, one, service, settlement, text,
};
use tracehop_integration_tests::{finish, unique};

use crate::{committed, deliver, for_key, spawn_run, Broker, Captured};

/// The process spans of the message with `key` and its one send span.
fn runs_of<'a>(
    all: &'a [SpanRecord],
    topic: &str,
    key: &str,
) -> (&'a SpanRecord, Vec<&'a SpanRecord>) {
    let sends = for_key(all, "gateway", &format!("send {topic}"), key);
    assert_eq!(sends.len(), 1, "one send of {key}: {all:#?}");
    (
        sends[0],
        for_key(all, "worker", &format!("process {topic}"), key),
    )
}

/// A handler that fails the first run on the message with key `bad` and succeeds on
/// every other run, counting the runs on `bad` in `bad_runs`.
fn fails_first_run_of(
    bad: &'static str,
    bad_runs: &Arc<AtomicU32>,
) -> impl FnMut(rdkafka::message::OwnedMessage) -> std::future::Ready<Result<(), String>> + Send + 'static
{
    let bad_runs = bad_runs.clone();
    move |m| {
        let first_bad_run =
            m.key() == Some(bad.as_bytes()) && bad_runs.fetch_add(1, Ordering::SeqCst) == 0;
        std::future::ready(if first_bad_run {
            Err(format!("{bad} failed"))
        } else {
            Ok(())
        })
    }
}

/// The default policy seeks the partition back to a failed message: the loop goes on,
/// nothing from that message on is committed until it has come again, and it comes again
/// (attempt 2, under the same send span) before the messages after it.
async fn redeliver_seeks_back_without_committing_past_the_message(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("reseek", 1).await;
    let producer = broker.producer(&gateway);
    for key in ["ok-0", "bad-1", "ok-2"] {
        deliver(&producer, FutureRecord::to(&topic).key(key).payload(key)).await;
    }
    // No `on_failure`: redeliver is the default. Two messages settled per run.
    let consumer = broker
        .consumer(&worker, &topic, &unique("reseek"))
        .commit(Some(CommitMode::Sync))
        .limit(2);
    let bad_runs = Arc::new(AtomicU32::new(0));

    let (consumer, first) = finish(
        spawn_run(consumer, fails_first_run_of("bad-1", &bad_runs)),
        "first run",
    )
    .await;
    let first = first.expect("a redelivered failure does not end the loop");
    assert_eq!(
        (first.messages, first.succeeded, first.failed),
        (2, 1, 1),
        "ok-0 handled, bad-1 failed"
    );
    assert_eq!(
        committed(&consumer, &topic, 0),
        Offset::Offset(1),
        "nothing from bad-1 on is committed"
    );

    // The next run starts at bad-1 again: the seek, not a commit, decides where.
    let (consumer, second) = finish(
        spawn_run(consumer, fails_first_run_of("bad-1", &bad_runs)),
        "second run",
    )
    .await;
    let second = second.expect("second run");
    assert_eq!(
        (second.messages, second.succeeded, second.failed),
        (2, 2, 0)
    );
    assert_eq!(bad_runs.load(Ordering::SeqCst), 2);
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(3));

    let all = spans.records();
    let processed = find(&all, "worker", &format!("process {topic}"));
    let order: Vec<Option<&str>> = processed.iter().map(|s| crate::key_of(s)).collect();
    assert_eq!(
        order,
        [Some("ok-0"), Some("bad-1"), Some("bad-1"), Some("ok-2")],
        "bad-1 comes again before ok-2"
    );
    let (send, runs) = runs_of(&all, &topic, "bad-1");
    let [failed, again] = runs.as_slice() else {
        panic!("two deliveries of bad-1: {runs:#?}");
    };
    assert_eq!(failed.status, Status::Error);
    assert_eq!(failed.error.as_deref(), Some("bad-1 failed"));
    assert_eq!(settlement(failed), Some("seek"));
    assert_eq!(again.status, Status::Ok);
    assert_eq!(settlement(again), Some("commit"));
    assert_child(failed, send);
    assert_child(again, send);
    assert_eq!(
        (attempt(failed), attempt(again)),
        (Some(1), Some(2)),
        "the redelivery is the message's second attempt"
    );
    consumer.close().await;
}

/// A handler that panics on one message of several: the panicking run's span is an error
/// with the panic's message, the message is not committed but sought back to and handled
/// again (attempt 2, same send span), every other message is handled once, and the loop
/// ends normally at its limit with everything committed.
async fn panicking_handler_is_redelivered_and_the_loop_goes_on(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("panics", 1).await;
    let producer = broker.producer(&gateway);
    let keys = ["m-0", "m-1", "m-2", "m-3", "m-4"];
    for key in keys {
        deliver(&producer, FutureRecord::to(&topic).key(key).payload(key)).await;
    }
    let consumer = broker
        .consumer(&worker, &topic, &unique("panics"))
        .commit(Some(CommitMode::Sync))
        .on_failure(OnFailure::redeliver())
        .limit(keys.len() as u64 + 1);
    let handled = Captured::default();
    let panics = Arc::new(AtomicU32::new(0));
    let (seen, panicked) = (handled.clone(), panics.clone());
    let task = spawn_run(consumer, move |m| {
        let seen = seen.clone();
        let first_run_of_m2 =
            m.key() == Some(&b"m-2"[..]) && panicked.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first_run_of_m2 {
                panic!("cannot plan m-2");
            }
            seen.lock().unwrap().push(m);
            Ok::<_, String>(())
        }
    });
    let (consumer, summary) = finish(task, "consumer").await;
    let summary = summary.expect("a panic does not end the loop");
    assert_eq!(
        (
            summary.messages,
            summary.succeeded,
            summary.failed,
            summary.panicked
        ),
        (6, 5, 1, 1)
    );
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(5));
    let handled: Vec<String> = handled
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(
        handled.len(),
        keys.len(),
        "each message handled once: {handled:?}"
    );
    assert_eq!(
        handled.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        keys.into_iter().collect::<BTreeSet<_>>()
    );

    let all = spans.records();
    let (send, runs) = runs_of(&all, &topic, "m-2");
    let [panicked, again] = runs.as_slice() else {
        panic!("two deliveries of m-2: {runs:#?}");
    };
    assert_eq!(panicked.status, Status::Error);
    assert_eq!(text(panicked, "error.type"), Some("panic"));
    assert_eq!(panicked.error.as_deref(), Some("cannot plan m-2"));
    assert_eq!(settlement(panicked), Some("seek"), "not committed");
    assert_eq!(again.status, Status::Ok);
    assert_eq!(settlement(again), Some("commit"));
    assert_child(panicked, send);
    assert_child(again, send);
    for key in keys.into_iter().filter(|k| *k != "m-2") {
        let (send, runs) = runs_of(&all, &topic, key);
        let [run] = runs.as_slice() else {
            panic!("one delivery of {key}: {runs:#?}");
        };
        assert_child(run, send);
        assert_eq!((run.status, settlement(run)), (Status::Ok, Some("commit")));
        assert_eq!(attempt(run), Some(1));
    }
    assert_eq!(
        (attempt(panicked), attempt(again)),
        (Some(1), Some(2)),
        "the redelivery is the message's second attempt"
    );
    consumer.close().await;
}

/// `OnFailure::redeliver().below_attempt(3).then(OnFailure::skip())` on a message that
/// always fails: sought back after attempts 1 and 2, settled as done (committed) after
/// attempt 3.
async fn redeliver_below_attempt_gives_up_at_that_attempt(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("poison", 1).await;
    deliver(
        &broker.producer(&gateway),
        FutureRecord::to(&topic).key("poison").payload("x"),
    )
    .await;
    let consumer = broker
        .consumer(&worker, &topic, &unique("poison"))
        .commit(Some(CommitMode::Sync))
        .on_failure(
            OnFailure::redeliver()
                .below_attempt(3)
                .then(OnFailure::skip()),
        )
        // Three deliveries if attempts count up; without the limit a policy that never
        // gives up would loop for ever.
        .limit(3);
    let task = spawn_run(consumer, |_m| async { Err::<(), _>("always fails") });
    let (consumer, summary) = finish(task, "consumer").await;
    let summary = summary.expect("consumer loop");
    assert_eq!((summary.messages, summary.failed), (3, 3));
    let all = spans.records();
    let (send, runs) = runs_of(&all, &topic, "poison");
    runs.iter().for_each(|r| assert_child(r, send));
    let outcome: Vec<(Option<i64>, Option<&str>)> =
        runs.iter().map(|r| (attempt(r), settlement(r))).collect();
    assert_eq!(
        outcome,
        [
            (Some(1), Some("seek")),
            (Some(2), Some("seek")),
            (Some(3), Some("commit"))
        ]
    );
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(1));
    consumer.close().await;
}

/// Retry in place: each run is its own process span under the same send span, with
/// attempts 1 and 2; the message is committed once it succeeds.
async fn retry_in_place_keeps_attempts_in_the_trace(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("flaky", 1).await;
    deliver(
        &broker.producer(&gateway),
        FutureRecord::to(&topic).key("f").payload("flaky"),
    )
    .await;
    let consumer = broker
        .consumer(&worker, &topic, &unique("flaky"))
        .commit(Some(CommitMode::Sync))
        .on_failure(OnFailure::retry_in_place(3, Duration::from_millis(10)))
        .limit(1);
    let mut runs = 0;
    let task = spawn_run(consumer, move |_m| {
        runs += 1;
        let fail = runs == 1;
        async move {
            if fail {
                Err("transient")
            } else {
                Ok(())
            }
        }
    });
    let (consumer, summary) = finish(task, "consumer").await;
    let summary = summary.expect("consumer loop");
    assert_eq!(
        (
            summary.messages,
            summary.succeeded,
            summary.failed,
            summary.retries
        ),
        (1, 1, 0, 1)
    );
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(1));
    let all = spans.records();
    let send = one(&all, "gateway", &format!("send {topic}"));
    let runs = find(&all, "worker", &format!("process {topic}"));
    assert_eq!(runs.len(), 2);
    assert_eq!(attempt(runs[0]), Some(1));
    assert_eq!(runs[0].status, Status::Error);
    assert_eq!(
        settlement(runs[0]),
        Some("retry"),
        "a run retried in place settles nothing: it is run again"
    );
    assert_eq!(attempt(runs[1]), Some(2));
    assert_eq!(runs[1].status, Status::Ok);
    assert_eq!(settlement(runs[1]), Some("commit"));
    runs.iter().for_each(|r| assert_child(r, send));
    consumer.close().await;
}

on_both_brokers!(
    redeliver_seeks_back_without_committing_past_the_message,
    panicking_handler_is_redelivered_and_the_loop_goes_on,
    redeliver_below_attempt_gives_up_at_that_attempt,
    retry_in_place_keeps_attempts_in_the_trace,
);
