//! Closing a consumer: librdkafka blocks while a consumer leaves its group, so dropping a
//! traced consumer inside a runtime must not do that on the async worker, and `close`
//! must wait until it is done. Both run on a current-thread runtime, where a blocked
//! worker would stop every other task.
//!
//! The consumer's context holds the close up (its revoke callback waits) until a timer
//! task on the same runtime releases it: the close can only finish if that task runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::producer::FutureRecord;
use tracehop::kafka::KafkaSource;
use tracehop::{Consumer, SpanCollector};
use tracehop_integration_tests::spans::service;
use tracehop_integration_tests::{finish, unique, WAIT};

use crate::{deliver, spawn_run, Broker};

/// What happened, in order, from the test, the timer task and the closing consumer.
type Log = Arc<Mutex<Vec<&'static str>>>;

fn note(log: &Log, event: &'static str) {
    log.lock().unwrap().push(event);
}

/// A consumer context that, once armed, holds the consumer's close in its revoke
/// callback until released (or [`WAIT`] passes), and notes when the consumer is gone.
struct CloseProbe {
    log: Log,
    armed: Arc<AtomicBool>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl ClientContext for CloseProbe {}

impl ConsumerContext for CloseProbe {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Revoke(_)) || !self.armed.load(Ordering::SeqCst) {
            return;
        }
        note(&self.log, "revoking");
        match self.release.lock().unwrap().recv_timeout(WAIT) {
            Ok(()) => note(&self.log, "released"),
            Err(_) => note(&self.log, "release timed out"),
        }
    }
}

impl Drop for CloseProbe {
    /// The context goes when librdkafka has destroyed the consumer.
    fn drop(&mut self) {
        note(&self.log, "closed");
    }
}

/// A consumer in a group of its own that has consumed one message (so it holds a
/// partition and must leave the group to close), its probe's log and arming switch, and
/// the sender that releases its close.
async fn joined_consumer(
    broker: &Broker,
) -> (
    Consumer<KafkaSource<CloseProbe>>,
    Log,
    Arc<AtomicBool>,
    mpsc::Sender<()>,
) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("closing", 1).await;
    deliver(
        &broker.producer(&gateway),
        FutureRecord::to(&topic).key("c").payload("x"),
    )
    .await;
    let (release_tx, release_rx) = mpsc::channel();
    let log = Log::default();
    let armed = Arc::new(AtomicBool::new(false));
    let probe = CloseProbe {
        log: log.clone(),
        armed: armed.clone(),
        release: Mutex::new(release_rx),
    };
    let consumer = broker
        .consumer_with(&worker, &topic, &unique("closing"), "closing", probe)
        .limit(1);
    let (consumer, summary) = finish(
        spawn_run(consumer, |_m| async { Ok::<_, String>(()) }),
        "consumer",
    )
    .await;
    assert_eq!(summary.expect("consumer loop").messages, 1);
    assert_eq!(spans.records().len(), 2, "one send and one process span");
    (consumer, log, armed, release_tx)
}

/// A task on this runtime that, after a short sleep, notes `timer fired` and releases the
/// close.
fn timer(log: &Log, release: mpsc::Sender<()>) -> tokio::task::JoinHandle<()> {
    let log = log.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        note(&log, "timer fired");
        // Fails only if the consumer is already gone (its close did not wait for this
        // task): the log says so.
        let _ = release.send(());
    })
}

/// The close was held up in the revoke callback and released by the timer (not by the
/// probe giving up), and `events` happened in this order.
#[track_caller]
fn assert_happened_in_order(log: &Log, events: &[&str]) {
    let log = log.lock().unwrap().clone();
    assert!(
        !log.contains(&"release timed out"),
        "the close waited for a release only this runtime's worker could give: {log:?}"
    );
    let at = |event: &str| {
        log.iter()
            .position(|e| *e == event)
            .unwrap_or_else(|| panic!("{event:?} in {log:?}"))
    };
    at("revoking");
    let positions: Vec<usize> = events.iter().map(|e| at(e)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "expected {events:?} in this order: {log:?}"
    );
}

/// Dropping a consumer returns at once; its close runs elsewhere while the runtime's one
/// worker goes on (the timer fires and releases it), and then finishes.
async fn dropping_a_consumer_does_not_block_the_worker(broker: Broker) {
    let (consumer, log, armed, release) = joined_consumer(&broker).await;
    armed.store(true, Ordering::SeqCst);
    let timer = timer(&log, release);
    drop(consumer);
    note(&log, "dropped");
    finish(timer, "timer").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !log.lock().unwrap().contains(&"closed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped consumer did not close within {WAIT:?}: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Drop returns, the timer runs, then the close finishes.
    assert_happened_in_order(&log, &["dropped", "timer fired", "released", "closed"]);
}

/// `close().await` lets the worker run meanwhile (the timer fires and releases the close)
/// and returns only once the consumer is gone.
async fn close_waits_until_the_consumer_has_left(broker: Broker) {
    let (consumer, log, armed, release) = joined_consumer(&broker).await;
    armed.store(true, Ordering::SeqCst);
    let timer = timer(&log, release);
    tokio::time::timeout(WAIT, consumer.close())
        .await
        .expect("close completes");
    note(&log, "close returned");
    finish(timer, "timer").await;
    // The timer runs during close, which returns once the consumer is gone.
    assert_happened_in_order(
        &log,
        &["timer fired", "released", "closed", "close returned"],
    );
}

on_both_brokers!(
    flavor = "current_thread";
    dropping_a_consumer_does_not_block_the_worker,
    close_waits_until_the_consumer_has_left,
);

/// Shutting a runtime down does not wait for a consumer's close: rdkafka polls until the
/// close completes, without a deadline (with the broker gone it can wait for ever), so a
/// dropped consumer closes on a thread of its own rather than on the runtime's blocking
/// pool, which the runtime's drop waits for. Here the close is held until after the
/// runtime is gone, then released, and still completes.
fn runtime_shutdown_does_not_wait_for_a_consumer_close(broker: Broker) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (log, release) = runtime.block_on(async {
        let (consumer, log, armed, release) = joined_consumer(&broker).await;
        armed.store(true, Ordering::SeqCst);
        drop(consumer);
        note(&log, "dropped");
        (log, release)
    });
    let started = std::time::Instant::now();
    drop(runtime);
    let shutdown = started.elapsed();
    note(&log, "runtime gone");
    assert!(
        shutdown < Duration::from_secs(5),
        "the runtime's shutdown waited {shutdown:?} for the consumer's close: {:?}",
        log.lock().unwrap()
    );
    release
        .send(())
        .expect("the close is still waiting for its release");
    let deadline = std::time::Instant::now() + WAIT;
    while !log.lock().unwrap().contains(&"closed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the released consumer did not close within {WAIT:?}: {:?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_happened_in_order(&log, &["dropped", "runtime gone", "released", "closed"]);
}

mod shutdown {
    /// Against `rdkafka::mocking::MockCluster`, in process.
    #[test]
    fn mock_runtime_shutdown_does_not_wait_for_a_consumer_close() {
        super::runtime_shutdown_does_not_wait_for_a_consumer_close(crate::Broker::mock());
    }

    /// Against the external broker at `TRACEHOP_KAFKA_BROKERS` (tansu in CI).
    #[test]
    fn tansu_runtime_shutdown_does_not_wait_for_a_consumer_close() {
        super::runtime_shutdown_does_not_wait_for_a_consumer_close(crate::Broker::tansu());
    }
}
