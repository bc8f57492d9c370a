//! JetStream: acks on the send span, redeliveries as separate process spans under one
//! send span, pull, fetch and push consumers, and settlement by policy.

use async_nats::jetstream::consumer::{pull, push, AckPolicy, Consumer};
use async_nats::jetstream::{self, stream};
use tracehop::nats::{JetStreamAction, TracedJetStream};
use tracehop::{Decision, Failure, OnFailure};

use super::*;

/// `CamelCase` to `snake_case`, as tracehop writes `error.type`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

async fn jetstream_as(spans: &SpanCollector, name: &str) -> TracedJetStream {
    let client = async_nats::connect(nats_url())
        .await
        .expect("nats-server with JetStream on TRACEHOP_NATS_URL (start it with .ci/run)");
    let telemetry = Telemetry::builder(name)
        .collector(spans)
        .build()
        .expect("telemetry");
    TracedJetStream::new(jetstream::new(client), telemetry)
}

/// A stream of its own for one test, deleted when the test ends (even by panic).
struct TestStream {
    name: String,
    subject: String,
    stream: stream::Stream,
}

impl TestStream {
    async fn create(js: &TracedJetStream, prefix: &str) -> TestStream {
        let name = unique(prefix);
        let subject = format!("{}.{}", prefix.replace('-', "."), name);
        let stream = js
            .context()
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                // Nothing here needs to survive a restart; memory storage keeps the tests
                // off the server's file store (which has failed to create a store under
                // load: JetStream 500/10049).
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .expect("create stream");
        TestStream {
            name,
            subject,
            stream,
        }
    }

    async fn pull_consumer(&self) -> Consumer<pull::Config> {
        self.stream
            .create_consumer(pull::Config {
                durable_name: Some(unique("pull")),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: 10,
                ..Default::default()
            })
            .await
            .expect("pull consumer")
    }

    /// Wait until the consumer has nothing pending and nothing unacknowledged.
    async fn wait_settled<C: jetstream::consumer::IntoConsumerConfig>(
        &self,
        consumer: &mut Consumer<C>,
    ) -> jetstream::consumer::Info {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let info = consumer.info().await.expect("consumer info").clone();
            if (info.num_ack_pending == 0 && info.num_pending == 0)
                || tokio::time::Instant::now() >= deadline
            {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let _ = jetstream::new(client).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

/// The server's "message terminated" advisories for `consumer`, subscribed and confirmed
/// before anything is settled: the proof that a term reached the server (a term and an
/// ack both leave nothing pending).
async fn terminations<C: jetstream::consumer::IntoConsumerConfig>(
    js: &TracedJetStream,
    stream: &str,
    consumer: &mut Consumer<C>,
) -> async_nats::Subscriber {
    let name = consumer.info().await.expect("consumer info").name.clone();
    let client = js.context().client();
    let advisories = client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.{name}"
        ))
        .await
        .expect("subscribe to advisories");
    tracehop::nats::round_trip(&client)
        .await
        .expect("round trip");
    advisories
}

/// Wait for one termination advisory and return its stream sequence.
async fn terminated(advisories: &mut async_nats::Subscriber) -> u64 {
    let advisory = tokio::time::timeout(WAIT, futures_util::StreamExt::next(advisories))
        .await
        .expect("a termination advisory within WAIT")
        .expect("advisory subscription open");
    let body: serde_json::Value =
        serde_json::from_slice(&advisory.payload).expect("advisory is JSON");
    body["stream_seq"].as_u64().expect("stream_seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_records_stream_and_sequence_from_the_ack() {
    let spans = SpanCollector::new();
    let js = jetstream_as(&spans, "producer").await;
    let s = TestStream::create(&js, "js-ack").await;

    let first = js
        .publish(s.subject.clone(), "one".into())
        .await
        .expect("publish");
    let second = js
        .publish(s.subject.clone(), "two".into())
        .await
        .expect("publish");
    assert_eq!((first.sequence, second.sequence), (1, 2));
    assert_eq!(first.stream, s.name);

    let mut dedup = HeaderMap::new();
    dedup.insert("Nats-Msg-Id", "order-7");
    let original = js
        .publish_with_headers(s.subject.clone(), dedup.clone(), "three".into())
        .await
        .expect("publish");
    let again = js
        .publish_with_headers(s.subject.clone(), dedup, "three".into())
        .await
        .expect("publish");
    assert!(!original.duplicate && again.duplicate);
    assert_eq!(again.sequence, original.sequence);

    let nowhere = unique("js.nostream");
    let err = js
        .publish(nowhere.clone(), "lost".into())
        .await
        .expect_err("no stream");

    let spans = spans.records();
    let sends = named(&spans, &format!("publish {}", s.subject));
    assert_eq!(sends.len(), 4, "{spans:#?}");
    for (send, sequence) in sends.iter().zip([1, 2, 3, 3]) {
        assert_eq!(send.span_kind, Some(Kind::Producer));
        assert_eq!(send.status, Status::Ok);
        assert_eq!(send.attribute_str("messaging.system"), Some("nats"));
        assert_eq!(
            send.attribute_str("messaging.nats.js.stream"),
            Some(s.name.as_str())
        );
        assert_eq!(
            int(send, "messaging.nats.js.sequence.stream"),
            Some(sequence)
        );
    }
    assert_eq!(
        sends[2].attribute_str("messaging.message.id"),
        Some("order-7")
    );
    assert_eq!(sends[2].attribute("messaging.nats.js.duplicate"), None);
    assert_eq!(
        sends[3].attribute("messaging.nats.js.duplicate"),
        Some(&true.into())
    );

    let failed = named(&spans, &format!("publish {nowhere}"));
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, Status::Error);
    assert_eq!(
        failed[0].attribute_str("error.type"),
        Some(snake_case(&format!("{:?}", err.kind())).as_str())
    );
    assert_eq!(failed[0].attribute("messaging.nats.js.stream"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nak_twice_then_ack_shows_three_deliveries_under_one_send_span() {
    let spans = SpanCollector::new();
    let producer = jetstream_as(&spans, "producer").await;
    let worker = jetstream_as(&spans, "worker").await;
    let s = TestStream::create(&producer, "js-redeliver").await;
    let mut consumer = s.pull_consumer().await;

    let root = producer
        .telemetry()
        .provider()
        .tracer("app")
        .start("place_order");
    let root_cx = Context::current_with_span(root);
    producer
        .publish(s.subject.clone(), "order 42".into())
        .with_context(root_cx.clone())
        .await
        .expect("publish");
    root_cx.span().end();

    // Fails on the first two deliveries, succeeds on the third.
    let seen: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let sink = seen.clone();
    let messages = consumer.messages().await.expect("messages");
    let mut traced = worker.messages(messages).limit(3);
    let done = tokio::spawn(async move {
        traced
            .run(move |message| {
                let sink = sink.clone();
                async move {
                    let delivered = message.info().map_err(|e| e.to_string())?.delivered;
                    let body = String::from_utf8_lossy(&message.payload).into_owned();
                    sink.lock().unwrap().push((delivered, body));
                    if delivered < 3 {
                        Err(format!(
                            "inventory service unavailable (delivery {delivered})"
                        ))
                    } else {
                        Ok(())
                    }
                }
            })
            .await
    })
    .await
    .expect("worker loop")
    .expect("consume");
    assert_eq!((done.messages, done.failed), (3, 2));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (1, "order 42".to_owned()),
            (2, "order 42".to_owned()),
            (3, "order 42".to_owned())
        ]
    );
    let info = s.wait_settled(&mut consumer).await;
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "acked after success: {info:?}"
    );

    let spans = spans.records();
    let send = named(&spans, &format!("publish {}", s.subject));
    assert_eq!(send.len(), 1, "{spans:#?}");
    let send = send[0];
    let mut processes = named(&spans, &format!("process {}", s.subject));
    processes.sort_by_key(|p| int(p, "tracehop.delivery.attempt"));
    assert_eq!(processes.len(), 3, "{spans:#?}");
    let attempts: Vec<_> = processes
        .iter()
        .map(|p| int(p, "tracehop.delivery.attempt"))
        .collect();
    assert_eq!(attempts, [Some(1), Some(2), Some(3)]);
    let statuses: Vec<_> = processes.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [Status::Error, Status::Error, Status::Ok]);
    let settlements: Vec<_> = processes.iter().map(|p| settlement(p)).collect();
    assert_eq!(settlements, [Some("nak"), Some("nak"), Some("ack")]);
    for (p, consumer_sequence) in processes.iter().zip(1..) {
        assert_eq!(
            p.trace_id, send.trace_id,
            "every delivery is in the producer's trace"
        );
        assert_eq!(
            p.parent_span_id.as_ref(),
            Some(&send.span_id),
            "every delivery is a child of the one send span"
        );
        assert_eq!(p.service_name.as_deref(), Some("worker"));
        assert_eq!(p.span_kind, Some(Kind::Consumer));
        assert_eq!(
            p.attribute_str("messaging.nats.js.stream"),
            Some(s.name.as_str())
        );
        assert_eq!(
            p.attribute_str("messaging.nats.js.consumer.name"),
            consumer.cached_info().config.durable_name.as_deref()
        );
        assert_eq!(int(p, "messaging.nats.js.sequence.stream"), Some(1));
        assert_eq!(
            int(p, "messaging.nats.js.sequence.consumer"),
            Some(consumer_sequence)
        );
        assert_eq!(int(p, "messaging.message.body.size"), Some(8));
        assert!(p.attribute("tracehop.queue_time_ms").is_some());
        assert_eq!(
            p.attribute("messaging.nats.message.reply_to"),
            None,
            "the ack subject is not a reply subject"
        );
    }
    assert_eq!(
        processes[0].error.as_deref(),
        Some("inventory service unavailable (delivery 1)")
    );
    assert_eq!(processes[0].attribute_str("error.type"), Some("string"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_naks_with_delay_then_acks() {
    let spans = SpanCollector::new();
    let producer = jetstream_as(&spans, "producer").await;
    let worker = jetstream_as(&spans, "worker").await;
    let s = TestStream::create(&producer, "js-push").await;
    let mut consumer = s
        .stream
        .create_consumer(push::Config {
            deliver_subject: worker.context().client().new_inbox(),
            durable_name: Some(unique("push")),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            ..Default::default()
        })
        .await
        .expect("push consumer");
    let messages = consumer.messages().await.expect("messages");
    producer
        .publish(s.subject.clone(), "resize 9".into())
        .await
        .expect("publish");

    let mut traced = worker
        .messages(messages)
        .on_failure(OnFailure::nak_after(Duration::from_millis(300)))
        .limit(2);
    let done = tokio::spawn(async move {
        traced
            .run(|message| async move {
                match message.info().map_err(|e| e.to_string())?.delivered {
                    1 => Err("first try fails".to_owned()),
                    _ => Ok(()),
                }
            })
            .await
    })
    .await
    .expect("worker loop")
    .expect("consume");
    assert_eq!((done.messages, done.failed), (2, 1));
    let info = s.wait_settled(&mut consumer).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");

    let spans = spans.records();
    let send = named(&spans, &format!("publish {}", s.subject))[0];
    let mut processes = named(&spans, &format!("process {}", s.subject));
    processes.sort_by_key(|p| int(p, "tracehop.delivery.attempt"));
    assert_eq!(processes.len(), 2, "{spans:#?}");
    for (p, attempt) in processes.iter().zip(1..) {
        assert_eq!(int(p, "tracehop.delivery.attempt"), Some(attempt));
        assert_eq!(p.parent_span_id.as_ref(), Some(&send.span_id));
        assert_eq!(p.trace_id, send.trace_id);
    }
    assert_eq!(settlement(processes[0]), Some("nak"));
    assert_eq!(settlement(processes[1]), Some("ack"));
    // The nak asked for a 300 ms delay: the redelivery starts no sooner (a plain nak is
    // redelivered within a few milliseconds).
    let first_end = processes[0].start_time.expect("start")
        + Duration::from_nanos(processes[0].duration_ns.expect("duration"));
    let second_start = processes[1].start_time.expect("start");
    let gap = second_start.duration_since(first_end).unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(250),
        "redelivered after {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_batch_gives_each_message_its_own_parent() {
    let spans = SpanCollector::new();
    let producer = jetstream_as(&spans, "producer").await;
    let worker = jetstream_as(&spans, "worker").await;
    let s = TestStream::create(&producer, "js-fetch").await;
    let mut consumer = s.pull_consumer().await;

    let tracer = producer.telemetry().provider().tracer("app");
    for i in 0..3 {
        let cx = Context::current_with_span(tracer.start(format!("job-{i}")));
        producer
            .publish(s.subject.clone(), format!("job-{i}").into())
            .with_context(cx.clone())
            .await
            .expect("publish");
        cx.span().end();
    }
    let batch = consumer
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .expect("fetch");
    let done = worker
        .messages(batch)
        .run(|_message| async { Ok::<(), String>(()) })
        .await
        .expect("consume");
    assert_eq!((done.messages, done.failed), (3, 0));
    let info = s.wait_settled(&mut consumer).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");

    let spans = spans.records();
    let sends: HashMap<&str, &SpanRecord> = named(&spans, &format!("publish {}", s.subject))
        .into_iter()
        .map(|s| (s.trace_id.as_str(), s))
        .collect();
    let processes = named(&spans, &format!("process {}", s.subject));
    assert_eq!(
        (sends.len(), processes.len()),
        (3, 3),
        "three traces: {spans:#?}"
    );
    for p in processes {
        let send = sends[p.trace_id.as_str()];
        assert_eq!(p.parent_span_id.as_ref(), Some(&send.span_id));
        assert_eq!(
            int(p, "messaging.nats.js.sequence.stream"),
            int(send, "messaging.nats.js.sequence.stream"),
            "the delivery of the message that send published"
        );
        assert_eq!(int(p, "tracehop.delivery.attempt"), Some(1));
        assert_eq!(settlement(p), Some("ack"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_terms_after_the_last_delivery() {
    let spans = SpanCollector::new();
    let producer = jetstream_as(&spans, "producer").await;
    let worker = jetstream_as(&spans, "worker").await;
    let s = TestStream::create(&producer, "js-term").await;
    let mut consumer = s.pull_consumer().await;
    let mut advisories = terminations(&worker, &s.name, &mut consumer).await;
    producer
        .publish(s.subject.clone(), "poison".into())
        .await
        .expect("publish");

    let messages = consumer.messages().await.expect("messages");
    let done = worker
        .messages(messages)
        .on_failure(OnFailure::nak_until(2, None))
        .limit(2)
        .run(|_message| async { Err::<(), _>("cannot parse") })
        .await
        .expect("consume");
    assert_eq!((done.messages, done.failed), (2, 2));
    let info = s.wait_settled(&mut consumer).await;
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "terminated, not pending: {info:?}"
    );
    assert_eq!(
        terminated(&mut advisories).await,
        1,
        "the server saw the term"
    );

    let spans = spans.records();
    let mut processes = named(&spans, &format!("process {}", s.subject));
    processes.sort_by_key(|p| int(p, "tracehop.delivery.attempt"));
    let settlements: Vec<_> = processes.iter().map(|p| settlement(p)).collect();
    assert_eq!(settlements, [Some("nak"), Some("term")]);
    assert!(processes.iter().all(|p| p.status == Status::Error));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_policy_settles_one_message_by_its_error() {
    let spans = SpanCollector::new();
    let producer = jetstream_as(&spans, "producer").await;
    let worker = jetstream_as(&spans, "worker").await;
    let s = TestStream::create(&producer, "js-handle").await;
    let mut consumer = s.pull_consumer().await;
    let mut advisories = terminations(&worker, &s.name, &mut consumer).await;

    let mut headers = HeaderMap::new();
    headers.append("X-Tag", "one");
    headers.append("X-Tag", "two");
    headers.insert("Content-Type", "text/plain");
    producer
        .publish_with_headers(s.subject.clone(), headers.clone(), "bad input".into())
        .await
        .expect("publish");

    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let message = futures_util::StreamExt::next(&mut batch)
        .await
        .expect("one message")
        .expect("no error");
    // A policy of one's own: permanent errors are terminated, the rest nak'ed.
    let permanent_errors_term = |failure: &Failure<'_>| {
        if failure.error.to_string().starts_with("permanent") {
            Decision::Settle(JetStreamAction::Term)
        } else {
            Decision::Settle(JetStreamAction::Nak { delay: None })
        }
    };
    let received: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let sink = received.clone();
    let one = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(message)]);
    let error = worker
        .messages(one)
        .on_failure(permanent_errors_term)
        .run(|message| {
            let sink = sink.clone();
            async move {
                *sink.lock().unwrap() = message.headers.clone();
                Err::<(), _>("permanent: not a number".to_owned())
            }
        })
        .await
        .expect("the loop goes on after a failure");
    assert_eq!((error.messages, error.failed), (1, 1));
    let info = s.wait_settled(&mut consumer).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");
    assert_eq!(
        terminated(&mut advisories).await,
        1,
        "the server saw the term"
    );

    let received = received.lock().unwrap().clone().expect("headers");
    let tags: Vec<&str> = received.get_all("X-Tag").map(HeaderValue::as_str).collect();
    assert_eq!(tags, ["one", "two"], "user headers survive JetStream");
    assert_eq!(
        received.get("Content-Type").map(HeaderValue::as_str),
        Some("text/plain")
    );
    assert!(received.get(TRACEPARENT).is_some());

    let spans = spans.records();
    let send = named(&spans, &format!("publish {}", s.subject))[0];
    let process = named(&spans, &format!("process {}", s.subject))[0];
    assert_eq!(process.parent_span_id.as_ref(), Some(&send.span_id));
    assert_eq!(settlement(process), Some("term"));
    assert_eq!(process.error.as_deref(), Some("permanent: not a number"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_naks_and_the_redelivery_is_processed() {
    let spans = SpanCollector::new();
    let producer = jetstream_as(&spans, "producer").await;
    let worker = jetstream_as(&spans, "worker").await;
    let s = TestStream::create(&producer, "js-panic").await;
    let mut consumer = s.pull_consumer().await;
    for i in 0..3 {
        producer
            .publish(s.subject.clone(), format!("job-{i}").into())
            .await
            .expect("publish");
    }
    let handled: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let sink = handled.clone();
    let messages = consumer.messages().await.expect("messages");
    let summary = worker
        .messages(messages)
        .limit(4)
        .run(move |message| {
            let sink = sink.clone();
            async move {
                let delivered = message.info().map_err(|e| e.to_string())?.delivered;
                let body = String::from_utf8_lossy(&message.payload).into_owned();
                if body == "job-1" && delivered == 1 {
                    panic!("corrupt input in {body}");
                }
                sink.lock().unwrap().push((body, delivered));
                Ok::<(), String>(())
            }
        })
        .await
        .expect("the loop ends normally at its limit");
    assert_eq!(
        (
            summary.messages,
            summary.succeeded,
            summary.failed,
            summary.panicked
        ),
        (4, 3, 1, 1)
    );
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    assert_eq!(
        handled,
        [
            ("job-0".to_owned(), 1),
            ("job-1".to_owned(), 2),
            ("job-2".to_owned(), 1)
        ]
    );
    let info = s.wait_settled(&mut consumer).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");

    let spans = spans.records();
    let sends = named(&spans, &format!("publish {}", s.subject));
    let send = sends
        .iter()
        .find(|p| int(p, "messaging.nats.js.sequence.stream") == Some(2))
        .expect("the send of job-1");
    let mut runs: Vec<&SpanRecord> = named(&spans, &format!("process {}", s.subject))
        .into_iter()
        .filter(|p| int(p, "messaging.nats.js.sequence.stream") == Some(2))
        .collect();
    runs.sort_by_key(|p| int(p, "tracehop.delivery.attempt"));
    assert_eq!(runs.len(), 2, "{spans:#?}");
    assert_eq!(runs[0].status, Status::Error);
    assert_eq!(runs[0].attribute_str("error.type"), Some("panic"));
    assert_eq!(runs[0].error.as_deref(), Some("corrupt input in job-1"));
    assert_eq!(settlement(runs[0]), Some("nak"));
    assert_eq!(runs[1].status, Status::Ok);
    assert_eq!(settlement(runs[1]), Some("ack"));
    for run in &runs {
        assert_eq!(run.parent_span_id.as_ref(), Some(&send.span_id));
    }
    assert_eq!(
        runs.iter()
            .map(|r| int(r, "tracehop.delivery.attempt"))
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
}
