//! Consumer groups: members sharing a topic's partitions still give one trace per run.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::producer::FutureRecord;
use tracehop::journal::Kind;
use tracehop::{SpanCollector, SpanRecord, Stop};
use tracehop_integration_tests::spans::{assert_child, find, service, text};
use tracehop_integration_tests::{finish, unique, WAIT};

use crate::{closed, deliver_in_request, key_of, spawn_run, Broker};

/// A consumer context that keeps how many partitions its consumer holds, as of the last
/// rebalance (the loop owns the consumer while it runs, so the test cannot ask it).
#[derive(Clone, Default)]
struct Assigned(Arc<AtomicUsize>);

impl Assigned {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl ClientContext for Assigned {}

impl ConsumerContext for Assigned {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.0.store(held, Ordering::SeqCst);
    }
}

/// Two members of one consumer group share a two-partition topic; each run is still one
/// trace of exactly its send and its process span, and both members process runs.
async fn consumer_group_of_two_keeps_one_trace_per_run(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("shared", 2).await;
    let group = unique("pair");
    let stop = Stop::new();
    let mut members = Vec::new();
    for id in ["member-a", "member-b"] {
        let assigned = Assigned::default();
        let member = broker
            .consumer_with(&worker, &topic, &group, id, assigned.clone())
            .stop_on(&stop);
        let task = spawn_run(member, |_m| async { Ok::<_, String>(()) });
        members.push((assigned, task));
    }
    // Both members hold a partition before anything is produced.
    let assigned = tokio::time::timeout(WAIT, async {
        loop {
            let counts: Vec<usize> = members.iter().map(|(a, _)| a.count()).collect();
            if counts == [1, 1] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        assigned.is_ok(),
        "both group members should get one partition within {WAIT:?}"
    );

    let producer = broker.producer(&gateway);
    let runs = 6;
    for i in 0..runs {
        let key = format!("run-{i}");
        deliver_in_request(
            &producer,
            FutureRecord::to(&topic)
                .partition(i % 2)
                .key(key.as_str())
                .payload("x"),
        )
        .await;
    }
    let process_name = format!("process {topic}");
    let all = spans
        .wait_until(WAIT, |s| {
            s.iter()
                .filter(|s| s.operation_name.as_deref() == Some(process_name.as_str()))
                .count()
                >= runs as usize
        })
        .await;
    stop.stop();
    for (_, task) in members {
        let summary = closed(finish(task, "group member").await)
            .await
            .expect("member loop");
        assert_eq!(summary.failed, 0);
    }

    let requests = find(&all, "gateway", "handle_request");
    assert_eq!(requests.len(), runs as usize);
    let trace_ids: BTreeSet<&str> = requests.iter().map(|r| r.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), runs as usize, "one trace per run");
    let mut members_seen = BTreeSet::new();
    for request in requests {
        let trace: Vec<&SpanRecord> = all
            .iter()
            .filter(|s| s.trace_id == request.trace_id)
            .collect();
        assert_eq!(trace.len(), 3, "request, send, process: {trace:#?}");
        let send = trace
            .iter()
            .find(|s| s.span_kind == Some(Kind::Producer))
            .expect("send");
        let process = trace
            .iter()
            .find(|s| s.span_kind == Some(Kind::Consumer))
            .expect("process");
        assert_child(send, request);
        assert_child(process, send);
        assert_eq!(
            text(process, "messaging.consumer.group.name"),
            Some(group.as_str())
        );
        assert_eq!(key_of(process), key_of(send));
        members_seen.insert(
            text(process, "messaging.client.id")
                .expect("client id")
                .to_owned(),
        );
    }
    assert_eq!(
        members_seen.len(),
        2,
        "both members processed runs: {members_seen:?}"
    );
}

on_both_brokers!(consumer_group_of_two_keeps_one_trace_per_run);
