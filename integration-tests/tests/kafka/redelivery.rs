//! A failed message comes again: redelivered by seeking its partition back (the default
//! policy, also for a panicking handler), or run again in place. Every run is its own
//! process span under the message's one send span, and nothing past a message still to
//! come again is committed.

use std::time::Duration;

use rdkafka::consumer::CommitMode;
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use tracehop::journal::Status;
use tracehop::{OnFailure, SpanCollector};
use tracehop_integration_tests::spans::{assert_child, attempt, find, one, service, settlement};
use tracehop_integration_tests::{finish, unique};

use crate::{committed, deliver, spawn_run, Broker};

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
        None,
        "a run retried in place settles nothing"
    );
    assert_eq!(attempt(runs[1]), Some(2));
    assert_eq!(runs[1].status, Status::Ok);
    assert_eq!(settlement(runs[1]), Some("commit"));
    runs.iter().for_each(|r| assert_child(r, send));
}

on_both_brokers!(retry_in_place_keeps_attempts_in_the_trace,);
