//! JetStream across server restarts: publish 20,000 messages through the traced publisher
//! (acks awaited, 64 in flight) while a traced pull consumer acks them; stop the server
//! with SIGTERM mid-stream and restart it on the same store, then the same with SIGKILL.
//!
//! The recipe under test (the README's): the publisher counts a publish that errors or
//! times out during the outage as not acknowledged and goes on (async-nats reconnects by
//! itself); the consumer keeps running its loop on the same `messages()` stream, which
//! re-issues its pull request after the reconnect, and opens a new `messages()` stream
//! whenever the loop ends without having been stopped.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer};
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tracehop::nats::TracedJetStream;
use tracehop::testing::Capture;
use tracehop::{SpanRecord, Stop, Summary};
use tracehop_integration_tests::ledger::{self, Acked, Handled, Handlings};
use tracehop_integration_tests::nats_server::{NatsServer, Signal};
use tracehop_integration_tests::spans::int;

use super::{connect, wait_state};

const MESSAGES: usize = 20_000;
/// Publishes awaiting their ack at once.
const IN_FLIGHT: usize = 64;
const STREAM: &str = "FAULTS";
const SUBJECT: &str = "faults.orders";
/// How long the test waits for the consumer to catch up once publishing is done.
const CATCH_UP: Duration = Duration::from_secs(60);

/// What the consumer task did across its loops.
#[derive(Debug, Default)]
struct ConsumerReport {
    /// `messages()` streams opened (1 if the first one lasted the whole test).
    streams: u32,
    /// Loops that ended with an error, and the errors.
    errors: Vec<String>,
    /// Deliveries settled, handler runs, settle and source errors, over every loop.
    messages: u64,
    succeeded: u64,
    settle_errors: u64,
    source_errors: u64,
}

impl ConsumerReport {
    fn add(&mut self, summary: &Summary) {
        self.messages += summary.messages;
        self.succeeded += summary.succeeded;
        self.settle_errors += summary.settle_errors;
        self.source_errors += summary.source_errors;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_is_consumed_in_its_trace_across_sigterm_and_sigkill_restarts() {
    let started = std::time::Instant::now();
    let mut server = NatsServer::start().await;
    let url = server.url();
    let capture = Capture::new();

    let producer_client = connect(&url, "producer").await;
    let consumer_client = connect(&url, "consumer").await;
    let producer = TracedJetStream::new(
        jetstream::new(producer_client.clone()),
        capture.service("producer"),
    );
    let consumer_js = TracedJetStream::new(
        jetstream::new(consumer_client.clone()),
        capture.service("consumer"),
    );
    let pull_consumer = create_stream_and_consumer(&consumer_js).await;

    // Progress, for the fault driver and the final wait.
    let (acked_tx, acked_rx) = watch::channel(0usize);
    let handled = Handlings::default();
    let mut handled_rx = handled.watch();

    let stop = Stop::new();
    let consumer_task = tokio::spawn(consume(
        consumer_js,
        pull_consumer,
        stop.clone(),
        handled.clone(),
    ));
    let publisher_task = tokio::spawn(publish_all(producer, acked_tx));

    // Mid-stream, twice: both clients see the outage before the server comes back.
    let clients = [
        ("producer", &producer_client),
        ("consumer", &consumer_client),
    ];
    for (signal, after) in [
        (Signal::Term, MESSAGES / 4),
        (Signal::Kill, MESSAGES * 3 / 5),
    ] {
        let mut acked = acked_rx.clone();
        acked
            .wait_for(|n| *n >= after)
            .await
            .expect("publisher running");
        handled_rx
            .wait_for(|n| *n > 0)
            .await
            .expect("consumer running");
        eprintln!(
            "{:?}: SIG{signal:?} after {} acks, {} handled",
            started.elapsed(),
            *acked.borrow(),
            *handled_rx.borrow()
        );
        server.stop(signal).await;
        wait_state(&clients, State::Disconnected).await;
        server.restart().await;
        wait_state(&clients, State::Connected).await;
        eprintln!("{:?}: restarted", started.elapsed());
    }

    let acked: HashMap<usize, Acked> = publisher_task.await.expect("publisher task");
    eprintln!(
        "{:?}: published, {} of {MESSAGES} acknowledged",
        started.elapsed(),
        acked.len()
    );
    if let Err(missing) = handled.wait_for_all(&acked, CATCH_UP).await {
        panic!(
            "{} acknowledged messages not consumed within {CATCH_UP:?}, first: {:?}; \
             server log:\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            server.log_tail()
        );
    }
    stop.stop();
    let report = tokio::time::timeout(Duration::from_secs(20), consumer_task)
        .await
        .expect("the consumer loop returns once stopped")
        .expect("consumer task");
    eprintln!(
        "{:?}: consumer done: {report:?}, clients connected {} and {} times",
        started.elapsed(),
        connects(&producer_client),
        connects(&consumer_client)
    );

    let handled = handled.runs();
    let spans = capture.records();
    check_deliveries(&acked, &handled, &report);
    ledger::check_runs(
        &acked,
        &handled,
        &spans,
        MESSAGES,
        (&format!("process {SUBJECT}"), &format!("publish {SUBJECT}")),
    );
    check_send_spans(&acked, &spans);
    // Both faults were real to both clients: each connected three times.
    assert!(connects(&producer_client) >= 3 && connects(&consumer_client) >= 3);
    eprintln!("{:?}: checked", started.elapsed());
}

/// A file-backed stream (it must survive the restarts) and a durable pull consumer.
async fn create_stream_and_consumer(js: &TracedJetStream) -> Consumer<pull::Config> {
    let stream = js
        .context()
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create stream");
    stream
        .create_consumer(pull::Config {
            durable_name: Some("worker".to_owned()),
            ack_policy: AckPolicy::Explicit,
            // What was delivered but not acked when the server went down comes back soon.
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .expect("pull consumer")
}

/// Publish every message, `IN_FLIGHT` at a time; keep those the stream acknowledged. A
/// publish that fails (the server is down, its ack timed out) is not acknowledged: the
/// publisher goes on with the next one.
async fn publish_all(
    producer: TracedJetStream,
    acked_tx: watch::Sender<usize>,
) -> HashMap<usize, Acked> {
    let producer = &producer;
    let mut results = futures_util::stream::iter(0..MESSAGES)
        .map(|index| async move {
            let sent = producer.publish(SUBJECT, index.to_string().into()).await;
            (index, sent)
        })
        .buffer_unordered(IN_FLIGHT);
    let mut acked = HashMap::new();
    let mut failed = 0usize;
    while let Some((index, sent)) = results.next().await {
        match sent {
            Ok(sent) => {
                acked.insert(index, Acked::new(sent.span_context(), Some(sent.sequence)));
                acked_tx.send_modify(|n| *n += 1);
            }
            Err(e) => {
                if failed < 5 {
                    eprintln!("publish {index} not acknowledged: {e}");
                }
                failed += 1;
            }
        }
    }
    eprintln!("{failed} publishes not acknowledged");
    acked
}

/// The consumer: the traced pull consumer's loop, run again on a new `messages()` stream
/// whenever it ends before `stop` fires.
async fn consume(
    js: TracedJetStream,
    consumer: Consumer<pull::Config>,
    stop: Stop,
    handled: Handlings,
) -> ConsumerReport {
    let mut report = ConsumerReport::default();
    while !stop.is_stopped() {
        let messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(e) => {
                report.errors.push(format!("messages(): {e}"));
                assert!(report.errors.len() < 100, "{report:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        report.streams += 1;
        let mut traced = js.messages(messages).stop_on(&stop);
        let ended = traced
            .run(|message: jetstream::Message| {
                let sequence = message.info().ok().map(|info| info.stream_sequence);
                handled.record(&message.payload, sequence);
                async { Ok::<(), String>(()) }
            })
            .await;
        match ended {
            Ok(summary) => report.add(&summary),
            Err(e) => report.errors.push(format!("loop: {e}")),
        }
    }
    report
}

/// Most publishes were acknowledged, every acknowledged one was consumed, and every
/// delivery the loops settled was a handler run.
fn check_deliveries(acked: &HashMap<usize, Acked>, handled: &[Handled], report: &ConsumerReport) {
    assert!(
        acked.len() > MESSAGES / 2,
        "most publishes are acknowledged: {}",
        acked.len()
    );
    assert_eq!(
        ledger::missing(acked, handled),
        Vec::<usize>::new(),
        "lost acknowledged messages"
    );
    // A loop that ended with an error returns no summary.
    if report.errors.is_empty() {
        assert_eq!(report.succeeded as usize, handled.len(), "{report:?}");
    }
}

/// The send span of each acknowledged publish records the sequence the ack named.
fn check_send_spans(acked: &HashMap<usize, Acked>, spans: &[SpanRecord]) {
    let by_id: HashMap<&str, &SpanRecord> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for ack in acked.values() {
        let send = by_id
            .get(ack.span_id.as_str())
            .unwrap_or_else(|| panic!("the send span of {ack:?} was recorded"));
        assert_eq!(
            int(send, "messaging.nats.js.sequence.stream"),
            ack.sequence.and_then(|seq| i64::try_from(seq).ok()),
            "{send:#?}"
        );
    }
}

fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}
