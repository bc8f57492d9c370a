//! Batches: one span linking every message's send span, a child process span per
//! message, and on failure only the failed messages forwarded.

use rdkafka::consumer::CommitMode;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use tracehop::journal::Status;
use tracehop::kafka::{delivery_attempt, Batch};
use tracehop::{BatchOptions, OnFailure, SpanCollector, SpanRecord};
use tracehop_integration_tests::spans::{
    assert_child, attempt, find, int, links_to, one, service, settlement,
};
use tracehop_integration_tests::{finish, unique, WAIT};

use crate::{closed, committed, deliver, deliver_in_request, keep_in, key_of, Broker, Captured};

/// The batch span among `processes`: the one with a message count.
fn batch_span<'a>(processes: &[&'a SpanRecord]) -> &'a SpanRecord {
    processes
        .iter()
        .find(|s| s.attribute("messaging.batch.message_count").is_some())
        .expect("batch span")
}

/// The batch API: one span linking every message's send span, a child process span per
/// message linked to its own send span, the whole batch committed.
async fn batch_links_every_message(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("batch", 1).await;
    let producer = broker.producer(&gateway);
    for i in 0..3 {
        let key = format!("m{i}");
        deliver_in_request(
            &producer,
            FutureRecord::to(&topic).key(key.as_str()).payload("x"),
        )
        .await;
    }

    let mut consumer = broker
        .consumer(&worker, &topic, &unique("batch"))
        .commit(Some(CommitMode::Sync))
        .limit(3);
    let task = tokio::spawn(async move {
        let result = consumer
            .run_batches(BatchOptions::new(3, WAIT), |batch: Batch| async move {
                for i in 0..batch.len() {
                    batch.process(i, async { Ok::<_, String>(()) }).await?;
                }
                Ok::<_, String>(())
            })
            .await;
        (consumer, result)
    });
    let (consumer, summary) = finish(task, "batch consumer").await;
    let summary = summary.expect("batch loop");
    assert_eq!(
        (summary.batches, summary.messages, summary.succeeded),
        (1, 3, 3)
    );
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(3));

    let all = spans.records();
    let sends = find(&all, "gateway", &format!("send {topic}"));
    assert_eq!(sends.len(), 3);
    let processes = find(&all, "worker", &format!("process {topic}"));
    let batch = batch_span(&processes);
    assert_eq!(int(batch, "messaging.batch.message_count"), Some(3));
    assert_eq!(batch.parent_span_id, None);
    assert_eq!(batch.links.len(), 3);
    for send in &sends {
        assert!(links_to(batch, send), "batch links {send:?}");
        assert_ne!(batch.trace_id, send.trace_id);
    }
    let children: Vec<_> = processes
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(batch.span_id.as_str()))
        .collect();
    assert_eq!(children.len(), 3);
    for child in children {
        assert_eq!(child.trace_id, batch.trace_id);
        assert_eq!(child.links.len(), 1);
        let key = key_of(child).expect("key");
        let send = sends
            .iter()
            .find(|s| key_of(s) == Some(key))
            .expect("send of the same key");
        assert!(links_to(child, send), "{key} links its own send span");
        assert_eq!(child.status, Status::Ok);
        assert_eq!(settlement(child), Some("commit"));
    }
    consumer.close().await;
}

/// A failed batch with the dead-letter policy forwards only the message whose work failed,
/// from inside that message's own process span, and commits the whole batch.
async fn batch_forwards_only_failed_messages(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker, janitor) = (
        service(&spans, "gateway"),
        service(&spans, "worker"),
        service(&spans, "janitor"),
    );
    let topic = broker.topic("batch", 1).await;
    let dlq = broker.topic("batch-dlq", 1).await;
    let producer = broker.producer(&gateway);
    for key in ["good-0", "bad-1", "good-2"] {
        deliver(&producer, FutureRecord::to(&topic).key(key).payload(key)).await;
    }
    let mut consumer = broker
        .consumer(&worker, &topic, &unique("batch"))
        .commit(Some(CommitMode::Sync))
        .on_failure(OnFailure::dead_letter_topic(dlq.clone()))
        .forward_with(broker.producer(&worker))
        .limit(3);
    let task = tokio::spawn(async move {
        let result = consumer
            .run_batches(BatchOptions::new(3, WAIT), |batch: Batch| async move {
                let mut failed = 0;
                for (i, m) in batch.messages().iter().enumerate() {
                    let bad = m.key() == Some(&b"bad-1"[..]);
                    let outcome = batch
                        .process(i, async move {
                            if bad {
                                Err("bad record".to_owned())
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                    failed += usize::from(outcome.is_err());
                }
                match failed {
                    0 => Ok(()),
                    n => Err(format!("{n} failed")),
                }
            })
            .await;
        (consumer, result)
    });
    let (consumer, summary) = finish(task, "batch consumer").await;
    let summary = summary.expect("batch loop");
    assert_eq!(
        (
            summary.batches,
            summary.messages,
            summary.succeeded,
            summary.failed
        ),
        (1, 3, 2, 1)
    );
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(3));

    let seen = Captured::default();
    let task = crate::spawn_run(
        broker.consumer(&janitor, &dlq, &unique("janitor")).limit(1),
        keep_in(&seen),
    );
    closed(finish(task, "janitor").await)
        .await
        .expect("janitor loop");
    let dead_letter = seen.lock().unwrap()[0].clone();
    assert_eq!(dead_letter.key(), Some(&b"bad-1"[..]));
    assert_eq!(delivery_attempt(&dead_letter), 2);

    let all = spans.records();
    let send_bad = find(&all, "gateway", &format!("send {topic}"))
        .into_iter()
        .find(|s| key_of(s) == Some("bad-1"))
        .expect("send of bad-1");
    let processes = find(&all, "worker", &format!("process {topic}"));
    let batch = batch_span(&processes);
    assert_eq!(batch.status, Status::Error);
    let failed_child = processes
        .iter()
        .find(|s| key_of(s) == Some("bad-1"))
        .expect("process of bad-1");
    assert_child(failed_child, batch);
    assert!(links_to(failed_child, send_bad));
    assert_eq!(failed_child.status, Status::Error);
    assert_eq!(settlement(failed_child), Some("forward"));
    let good: Vec<_> = processes
        .iter()
        .filter(|s| key_of(s).is_some_and(|k| k.starts_with("good")))
        .collect();
    assert_eq!(good.len(), 2, "{processes:#?}");
    for good in good {
        assert_child(good, batch);
        assert_eq!(
            (good.status, settlement(good)),
            (Status::Ok, Some("commit"))
        );
    }
    let forward = one(&all, "worker", &format!("send {dlq}"));
    assert_child(forward, failed_child);
    let dead_process = one(&all, "janitor", &format!("process {dlq}"));
    assert_child(dead_process, forward);
    assert_eq!(attempt(dead_process), Some(2));
    consumer.close().await;
}

on_both_brokers!(
    batch_links_every_message,
    batch_forwards_only_failed_messages
);
