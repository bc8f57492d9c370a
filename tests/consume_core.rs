//! The one consume loop over an in-memory broker of the test's own, written against the
//! public `Source` and `Settle` traits as a user adding another client would: limits,
//! stop, policies, panics, retries, batches and settlement, asserted on the spans and on
//! what the broker was told.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use tracehop::journal::Status;
use tracehop::messaging::attributes as attr;
use tracehop::messaging::consume::{Settle, SettleError, Settlement, Source, SourceError};
use tracehop::propagation::ReadCarrier;
use tracehop::{
    BatchOptions, ConsumeError, Consumer, Incoming, OnFailure, Outgoing, SpanCollector, SpanRecord,
    Stop, Telemetry,
};

/// A message in the in-memory broker.
#[derive(Debug, Clone)]
struct Stored {
    id: u32,
    headers: HashMap<String, String>,
    redeliveries: u32,
}

/// What the broker was told, in order: (message id, settlement).
type Log = Arc<Mutex<Vec<(u32, &'static str)>>>;

/// A broker that redelivers what is given back, at the end of its queue.
#[derive(Debug, Default)]
struct Memory {
    queue: Arc<Mutex<VecDeque<Stored>>>,
    log: Log,
    fail_settle: Option<(&'static str, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Park;

struct MemoryDelivery<'a> {
    broker: &'a Memory,
    stored: Stored,
    taken: bool,
}

impl Source for Memory {
    type Message = u32;
    type Action = Park;
    type Delivery<'a> = MemoryDelivery<'a>;

    async fn next(&self) -> Option<Result<MemoryDelivery<'_>, SourceError>> {
        let stored = self.queue.lock().unwrap().pop_front()?;
        Some(Ok(MemoryDelivery {
            broker: self,
            stored,
            taken: false,
        }))
    }

    fn describe_batch<'a>(&'a self, destination: &'a str) -> Incoming<'a> {
        Incoming::new("memory", destination)
    }
}

impl Settle for MemoryDelivery<'_> {
    type Message = u32;
    type Action = Park;

    fn describe(&self) -> Incoming<'_> {
        Incoming::new("memory", "jobs").attribute("memory.id", i64::from(self.stored.id))
    }

    fn destination(&self) -> &str {
        "jobs"
    }

    fn headers(&self) -> &dyn ReadCarrier {
        &self.stored.headers
    }

    fn redeliveries(&self) -> u32 {
        self.stored.redeliveries
    }

    fn message(&mut self, keep: bool) -> Option<u32> {
        if self.taken {
            return None;
        }
        self.taken = !keep;
        Some(self.stored.id)
    }

    fn position(&self) -> String {
        format!("jobs#{}", self.stored.id)
    }

    async fn settle(
        &mut self,
        settlement: Settlement<'_, Park>,
        _span: &Context,
        _attempt: u32,
    ) -> Result<&'static str, SettleError> {
        let label = match settlement {
            Settlement::Done => "done",
            Settlement::Redeliver => "redeliver",
            Settlement::Action(Park) => "park",
            Settlement::Nothing => "nothing",
        };
        if let Some((failing, fatal)) = self.broker.fail_settle.filter(|(l, _)| *l == label) {
            let error = format!("broker refused {failing}");
            return Err(if fatal {
                SettleError::fatal(label, error)
            } else {
                SettleError::new(label, error)
            });
        }
        self.broker
            .log
            .lock()
            .unwrap()
            .push((self.stored.id, label));
        if label == "redeliver" {
            let mut again = self.stored.clone();
            again.redeliveries += 1;
            self.broker.queue.lock().unwrap().push_back(again);
        }
        Ok(label)
    }
}

/// A producer, a consumer, and messages 1..=n sent by the producer.
fn setup(n: u32) -> (SpanCollector, Telemetry, Memory) {
    let spans = SpanCollector::new();
    let producer = Telemetry::builder("producer")
        .collector(&spans)
        .build()
        .unwrap();
    let consumer = Telemetry::builder("consumer")
        .collector(&spans)
        .build()
        .unwrap();
    let broker = Memory::default();
    for id in 1..=n {
        let mut headers = HashMap::new();
        producer
            .send_span(Outgoing::new("memory", "jobs"), &mut headers)
            .end();
        broker.queue.lock().unwrap().push_back(Stored {
            id,
            headers,
            redeliveries: 0,
        });
    }
    (spans, consumer, broker)
}

fn sends(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some("send jobs"))
        .collect()
}

/// The process spans of message `id`, in the order they ended.
fn processes(spans: &[SpanRecord], id: i64) -> Vec<&SpanRecord> {
    spans
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some("process jobs"))
        .filter(|s| s.attribute("memory.id").and_then(|v| v.as_i64()) == Some(id))
        .collect()
}

fn attempt(span: &SpanRecord) -> Option<i64> {
    span.attribute(attr::DELIVERY_ATTEMPT)
        .and_then(|v| v.as_i64())
}

#[tokio::test]
async fn every_message_is_handled_under_its_send_span_and_settled() {
    let (spans, telemetry, broker) = setup(3);
    let log_handle = broker.log.clone();
    let mut consumer = Consumer::from_source(broker, telemetry);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let summary = consumer
        .run(|id| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(id);
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
    assert_eq!(
        (summary.messages, summary.succeeded, summary.failed),
        (3, 3, 0)
    );
    assert_eq!(
        *log_handle.lock().unwrap(),
        [(1, "done"), (2, "done"), (3, "done")]
    );
    let records = spans.records();
    for (i, send) in sends(&records).into_iter().enumerate() {
        let process = processes(&records, i as i64 + 1);
        assert_eq!(process.len(), 1);
        assert_eq!(process[0].trace_id, send.trace_id);
        assert_eq!(process[0].parent_span_id.as_ref(), Some(&send.span_id));
        assert_eq!(process[0].status, Status::Ok);
        assert_eq!(process[0].attribute_str(attr::SETTLEMENT), Some("done"));
        assert_eq!(attempt(process[0]), Some(1));
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_failure_and_the_loop_goes_on() {
    let (spans, telemetry, broker) = setup(4);
    let log_handle = broker.log.clone();
    let mut consumer = Consumer::from_source(broker, telemetry).limit(5);
    let first_try = Arc::new(Mutex::new(true));
    let summary = consumer
        .run(|id| {
            let first_try = first_try.clone();
            async move {
                if id == 2 && std::mem::replace(&mut *first_try.lock().unwrap(), false) {
                    panic!("tool returned garbage for message {id}");
                }
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(summary.messages, 5, "4 messages and one redelivery");
    assert_eq!(
        (summary.succeeded, summary.failed, summary.panicked),
        (4, 1, 1)
    );
    assert_eq!(
        *log_handle.lock().unwrap(),
        [
            (1, "done"),
            (2, "redeliver"),
            (3, "done"),
            (4, "done"),
            (2, "done")
        ]
    );
    let records = spans.records();
    let runs = processes(&records, 2);
    assert_eq!(runs.len(), 2);
    let (panicked, redelivered) = (runs[0], runs[1]);
    assert_eq!(panicked.status, Status::Error);
    assert_eq!(panicked.attribute_str(attr::ERROR_TYPE), Some("panic"));
    assert_eq!(
        panicked.error.as_deref(),
        Some("tool returned garbage for message 2")
    );
    assert_eq!(panicked.attribute_str(attr::SETTLEMENT), Some("redeliver"));
    assert_eq!(redelivered.status, Status::Ok);
    assert_eq!(
        (attempt(panicked), attempt(redelivered)),
        (Some(1), Some(2))
    );
    assert_eq!(redelivered.parent_span_id, panicked.parent_span_id);
}

#[tokio::test]
async fn a_panic_while_creating_the_future_is_caught_too() {
    let (spans, telemetry, broker) = setup(2);
    let mut consumer = Consumer::from_source(broker, telemetry)
        .on_failure(OnFailure::skip())
        .limit(2);
    let summary = consumer
        .run(|id| {
            assert_ne!(id, 1, "no future for message one");
            async { Ok::<(), String>(()) }
        })
        .await
        .unwrap();
    assert_eq!((summary.succeeded, summary.panicked), (1, 1));
    let records = spans.records();
    let failed = processes(&records, 1)[0];
    assert!(failed
        .error
        .as_deref()
        .unwrap()
        .contains("no future for message one"));
    assert_eq!(failed.attribute_str(attr::SETTLEMENT), Some("done"));
}

#[test]
fn propagate_panics_resumes_the_panic_after_recording_it() {
    let (spans, telemetry, broker) = setup(1);
    let log_handle = broker.log.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let mut consumer = Consumer::from_source(broker, telemetry).propagate_panics();
            let _ = consumer
                .run(|_id| async { panic!("boom") as Result<(), String> })
                .await;
        })
    }));
    let payload = unwound.expect_err("the panic is resumed");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    assert_eq!(*log_handle.lock().unwrap(), [(1, "redeliver")]);
    let records = spans.records();
    assert_eq!(
        processes(&records, 1)[0].attribute_str(attr::ERROR_TYPE),
        Some("panic")
    );
}

#[tokio::test]
async fn stop_decision_gives_the_message_back_and_returns_the_error() {
    let (spans, telemetry, broker) = setup(3);
    let log_handle = broker.log.clone();
    let mut consumer = Consumer::from_source(broker, telemetry).on_failure(OnFailure::stop());
    let error = consumer
        .run(|id| async move {
            if id == 2 {
                return Err(format!("cannot handle {id}"));
            }
            Ok(())
        })
        .await
        .unwrap_err();
    match error {
        ConsumeError::Handler { error, position } => {
            assert_eq!(error, "cannot handle 2");
            assert_eq!(position, "jobs#2");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(*log_handle.lock().unwrap(), [(1, "done"), (2, "redeliver")]);
    let records = spans.records();
    assert_eq!(
        processes(&records, 2)[0].attribute_str(attr::ERROR_TYPE),
        Some("string")
    );
    assert!(
        processes(&records, 3).is_empty(),
        "the loop stopped before 3"
    );
}

#[tokio::test]
async fn retries_in_place_are_spans_with_rising_attempts_under_the_same_send() {
    let (spans, telemetry, broker) = setup(1);
    let log_handle = broker.log.clone();
    let policy =
        OnFailure::retry_in_place(3, Duration::from_millis(1)).then(OnFailure::settle(Park));
    let mut consumer = Consumer::from_source(broker, telemetry).on_failure(policy);
    let summary = consumer
        .run(|_id| async { Err::<(), _>("still failing") })
        .await
        .unwrap();
    assert_eq!(
        (summary.retries, summary.failed, summary.messages),
        (2, 1, 1)
    );
    assert_eq!(*log_handle.lock().unwrap(), [(1, "park")]);
    let records = spans.records();
    let runs = processes(&records, 1);
    assert_eq!(
        runs.iter().map(|s| attempt(s)).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
    let send = sends(&records)[0];
    assert!(runs
        .iter()
        .all(|r| r.parent_span_id.as_ref() == Some(&send.span_id)));
    assert_eq!(runs[2].attribute_str(attr::SETTLEMENT), Some("park"));
    for run in &runs[..2] {
        assert_eq!(
            run.attribute_str(attr::SETTLEMENT),
            Some("retry"),
            "a retried run settles nothing: it says it runs again"
        );
    }
}

#[tokio::test]
async fn redeliveries_count_towards_the_attempt_and_below_attempt_ends_them() {
    let (spans, telemetry, broker) = setup(1);
    let log_handle = broker.log.clone();
    let policy = OnFailure::redeliver()
        .below_attempt(3)
        .then(OnFailure::skip());
    let mut consumer = Consumer::from_source(broker, telemetry).on_failure(policy);
    let summary = consumer
        .run(|_id| async { Err::<(), _>("poison") })
        .await
        .unwrap();
    assert_eq!((summary.messages, summary.failed), (3, 3));
    assert_eq!(
        *log_handle.lock().unwrap(),
        [(1, "redeliver"), (1, "redeliver"), (1, "done")]
    );
    let records = spans.records();
    let attempts: Vec<_> = processes(&records, 1).into_iter().map(attempt).collect();
    assert_eq!(attempts, [Some(1), Some(2), Some(3)]);
}

#[tokio::test]
async fn the_attempt_a_producer_wrote_is_where_counting_starts() {
    let (spans, telemetry, broker) = setup(1);
    broker.queue.lock().unwrap()[0]
        .headers
        .insert(tracehop::propagation::ATTEMPT.to_owned(), "4".to_owned());
    let mut consumer = Consumer::from_source(broker, telemetry).limit(1);
    consumer
        .run(|_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    assert_eq!(attempt(processes(&spans.records(), 1)[0]), Some(4));
}

#[tokio::test]
async fn the_stop_signal_ends_the_loop_after_the_message_in_hand() {
    let (spans, telemetry, broker) = setup(5);
    let log_handle = broker.log.clone();
    let stop = Stop::new();
    let mut consumer = Consumer::from_source(broker, telemetry).stop_on(&stop);
    let summary = consumer
        .run(|id| {
            let stop = stop.clone();
            async move {
                if id == 2 {
                    stop.stop();
                }
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(summary.messages, 2);
    assert_eq!(*log_handle.lock().unwrap(), [(1, "done"), (2, "done")]);
    assert_eq!(processes(&spans.records(), 3).len(), 0);

    // A loop waiting on an idle source wakes up when the signal fires.
    let idle = Stop::new();
    let telemetry = Telemetry::builder("idle")
        .collector(&spans)
        .build()
        .unwrap();
    let mut pending = Consumer::from_source(Pending, telemetry).stop_on(&idle);
    let task = tokio::spawn(async move { pending.run(|_| async { Ok::<(), String>(()) }).await });
    tokio::task::yield_now().await;
    idle.stop();
    let summary = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the stop wakes the loop")
        .unwrap()
        .unwrap();
    assert_eq!(summary.messages, 0);
}

/// A source that never delivers.
#[derive(Debug)]
struct Pending;

impl Source for Pending {
    type Message = u32;
    type Action = Park;
    type Delivery<'a> = MemoryDelivery<'a>;

    async fn next(&self) -> Option<Result<MemoryDelivery<'_>, SourceError>> {
        std::future::pending().await
    }

    fn describe_batch<'a>(&'a self, destination: &'a str) -> Incoming<'a> {
        Incoming::new("memory", destination)
    }
}

#[tokio::test]
async fn settlement_failures_are_recorded_and_counted_and_fatal_ones_end_the_loop() {
    let (spans, telemetry, mut broker) = setup(2);
    broker.fail_settle = Some(("done", false));
    let mut consumer = Consumer::from_source(broker, telemetry);
    let summary = consumer
        .run(|_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    assert_eq!((summary.settle_errors, summary.messages), (2, 2));
    let records = spans.records();
    let first = processes(&records, 1)[0];
    assert_eq!(first.attribute_str(attr::SETTLEMENT), Some("done"));
    assert_eq!(
        first.attribute_str(attr::SETTLEMENT_ERROR),
        Some("broker refused done")
    );

    let (_spans, telemetry, mut broker) = setup(2);
    broker.fail_settle = Some(("done", true));
    let mut consumer = Consumer::from_source(broker, telemetry);
    let error = consumer
        .run(|_| async { Ok::<(), String>(()) })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConsumeError::Settle {
                settlement: "done",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("jobs#1"), "{error}");
}

#[tokio::test]
async fn manual_settlement_settles_nothing() {
    let (spans, telemetry, broker) = setup(2);
    let log_handle = broker.log.clone();
    let mut consumer = Consumer::from_source(broker, telemetry).manual_settlement();
    let summary = consumer
        .run(|id| async move {
            if id == 1 {
                Err("no")
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    assert_eq!((summary.messages, summary.failed), (2, 1));
    assert_eq!(
        *log_handle.lock().unwrap(),
        [(1, "nothing"), (2, "nothing")]
    );
    assert_eq!(
        processes(&spans.records(), 1)[0].attribute_str(attr::SETTLEMENT),
        Some("nothing")
    );
}

/// Messages 1..=3 in one batch whose handler fails message 2 (settled with `Park`) and
/// then the batch; the loop's summary.
async fn batch_failing_message_2(broker: Memory, telemetry: Telemetry) -> tracehop::Summary {
    let mut consumer = Consumer::from_source(broker, telemetry)
        .on_failure(OnFailure::settle(Park))
        .limit(3);
    consumer
        .run_batches(
            BatchOptions::new(10, Duration::from_millis(20)),
            |batch| async move {
                for (i, id) in batch.messages().iter().enumerate() {
                    let id = *id;
                    let _ = batch
                        .process(i, async move {
                            if id == 2 {
                                Err("bad")
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                }
                Err::<(), _>("one message failed")
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_links_its_messages_and_a_failure_settles_only_the_failed_ones() {
    let (spans, telemetry, broker) = setup(3);
    let log_handle = broker.log.clone();
    let summary = batch_failing_message_2(broker, telemetry).await;
    assert_eq!(
        (
            summary.batches,
            summary.messages,
            summary.failed,
            summary.succeeded
        ),
        (1, 3, 1, 2)
    );
    assert_eq!(
        *log_handle.lock().unwrap(),
        [(1, "done"), (2, "park"), (3, "done")]
    );
    let records = spans.records();
    let batch = records
        .iter()
        .find(|s| s.attribute(attr::MESSAGING_BATCH_MESSAGE_COUNT).is_some())
        .expect("a batch span");
    let sends = sends(&records);
    assert_eq!(batch.links.len(), 3);
    for send in &sends {
        assert!(batch.links.iter().any(|l| l.span_id == send.span_id));
    }
    for id in 1..=3 {
        let process = processes(&records, id)[0];
        assert_eq!(process.parent_span_id.as_ref(), Some(&batch.span_id));
        assert_eq!(process.links[0].span_id, sends[id as usize - 1].span_id);
    }
    assert_eq!(
        processes(&records, 2)[0].attribute_str(attr::SETTLEMENT),
        Some("park")
    );
    assert_eq!(batch.status, Status::Error);
}

#[tokio::test]
async fn a_batch_never_takes_more_than_the_limit_has_left() {
    let (_spans, telemetry, broker) = setup(5);
    let queue = broker.queue.clone();
    let mut consumer = Consumer::from_source(broker, telemetry).limit(3);
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let summary = consumer
        .run_batches(BatchOptions::new(2, Duration::from_millis(20)), |batch| {
            let sizes = sizes.clone();
            async move {
                sizes.lock().unwrap().push(batch.len());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(*sizes.lock().unwrap(), [2, 1]);
    assert_eq!(summary.messages, 3);
    assert_eq!(
        queue.lock().unwrap().len(),
        2,
        "two messages stay with the broker"
    );
}

/// Batches are measured as single deliveries are: each message of a batch is a consumed
/// message with its own process duration and settlement, a failed one carries the
/// failure's `error.type`, and one settled with a broker action counts as forwarded.
#[cfg(feature = "testing")]
#[tokio::test]
async fn batch_metrics_count_every_message_its_failures_and_settlements() {
    use tracehop::metrics::names;
    let (_spans, _plain, broker) = setup(3);
    let metrics = tracehop::testing::MetricsCapture::new();
    let telemetry = Telemetry::builder("consumer")
        .collector(&SpanCollector::new())
        .metrics(metrics.provider())
        .build()
        .unwrap();
    let summary = batch_failing_message_2(broker, telemetry).await;
    assert_eq!(
        (summary.batches, summary.messages, summary.failed),
        (1, 3, 1)
    );
    let jobs = [("messaging.destination.name", "jobs")];
    assert_eq!(
        metrics.sum(names::MESSAGING_CLIENT_CONSUMED_MESSAGES, &jobs),
        3.0
    );
    assert_eq!(
        metrics.histogram_count(names::MESSAGING_PROCESS_DURATION, &jobs),
        3
    );
    // The handler's error is a `&str`: its type names it, as on a single delivery.
    assert_eq!(
        metrics.histogram_count(
            names::MESSAGING_PROCESS_DURATION,
            &[
                ("messaging.destination.name", "jobs"),
                ("error.type", "str")
            ]
        ),
        1,
        "{:#?}",
        metrics.matching(names::MESSAGING_PROCESS_DURATION, &[])
    );
    assert_eq!(
        metrics.histogram_count(
            names::MESSAGING_CLIENT_OPERATION_DURATION,
            &[("messaging.operation.type", "settle")]
        ),
        3
    );
    assert_eq!(
        metrics.sum(names::FORWARDED, &[("tracehop.settlement", "park")]),
        1.0
    );
}

/// A handle made from the user's own providers records metrics too: the consumer's
/// deliveries and the sends made inside its handler.
#[cfg(feature = "testing")]
#[tokio::test]
async fn metrics_through_a_handle_from_the_users_own_providers() {
    use tracehop::metrics::names;
    let (_spans, _plain, broker) = setup(2);
    let metrics = tracehop::testing::MetricsCapture::new();
    let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let telemetry = Telemetry::from_providers(
        "consumer",
        &tracer_provider,
        metrics.provider(),
        tracehop::Propagation::default(),
    );
    let sender = telemetry.clone();
    let mut consumer = Consumer::from_source(broker, telemetry.clone()).limit(2);
    let summary = consumer
        .run(move |id| {
            let mut headers: HashMap<String, String> = HashMap::new();
            sender
                .send_span(Outgoing::new("memory", "results"), &mut headers)
                .end();
            async move {
                if id > 0 {
                    Ok(())
                } else {
                    Err("no id")
                }
            }
        })
        .await
        .unwrap();
    assert_eq!((summary.messages, summary.succeeded), (2, 2));
    assert_eq!(
        metrics.sum(
            names::MESSAGING_CLIENT_CONSUMED_MESSAGES,
            &[("messaging.destination.name", "jobs")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum(
            names::MESSAGING_CLIENT_SENT_MESSAGES,
            &[("messaging.destination.name", "results")]
        ),
        2.0
    );
    telemetry.shutdown().unwrap();
}
