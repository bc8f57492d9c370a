//! The Kafka adapter against real brokers: every scenario runs once against
//! `rdkafka::mocking::MockCluster` (module `mock`) and once against the external broker at
//! `TRACEHOP_KAFKA_BROKERS` (module `tansu`; tansu in CI, default `127.0.0.1:9092`).
//!
//! Run one side with a filter: `cargo test ... --test kafka mock::` or `tansu::`.
#![cfg(feature = "kafka")]

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracehop::journal::{Kind, Status};
use tracehop::kafka::{
    delivery_attempt, BatchOptions, ConsumeError, OnFailure, TracedConsumer, TracedProducer,
    TracingProducerContext,
};
use tracehop::propagation::{ATTEMPT, SENT_AT, TRACEPARENT, TRACESTATE};
use tracehop::{ParentPolicy, SpanCollector, SpanRecord, Telemetry};
use tracehop_integration_tests::{kafka_brokers, unique, WAIT};

/// How long a produce may take before the test fails.
const SEND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Brokers
// ---------------------------------------------------------------------------------------

/// The broker a scenario runs against.
struct Broker {
    bootstrap: String,
    /// Kept alive for the test: dropping it stops the in-process cluster.
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl Broker {
    fn mock() -> Broker {
        let mock = MockCluster::new(1).expect("start rdkafka MockCluster");
        Broker {
            bootstrap: mock.bootstrap_servers(),
            mock: Some(mock),
        }
    }

    /// The external broker; fails the test with a clear message if it does not answer.
    fn tansu() -> Broker {
        let bootstrap = kafka_brokers();
        let first = bootstrap
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let reachable = first
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_owned()))
            .and_then(|addr| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())
            });
        if let Err(e) = reachable {
            panic!(
                "the Kafka broker at {bootstrap:?} (TRACEHOP_KAFKA_BROKERS) is not reachable: {e}. \
                 These tests need tansu (or any Kafka broker) running; start it with \
                 `tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url \
                 tcp://127.0.0.1:9092 --storage-engine memory://tansu/` (CI: .ci/run), or run \
                 only the MockCluster tests with the filter `mock::`."
            );
        }
        Broker {
            bootstrap,
            mock: None,
        }
    }

    /// A fresh topic with `partitions` partitions.
    async fn topic(&self, prefix: &str, partitions: i32) -> String {
        let name = unique(prefix);
        match &self.mock {
            Some(mock) => mock
                .create_topic(&name, partitions, 1)
                .expect("create topic on MockCluster"),
            None => {
                let admin: AdminClient<DefaultClientContext> =
                    self.client().create().expect("admin client");
                let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
                let results = admin
                    .create_topics([&topic], &AdminOptions::new().operation_timeout(Some(SEND)))
                    .await
                    .expect("create_topics request");
                for r in results {
                    r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
                }
            }
        }
        name
    }

    /// A topic whose next produce fails at the broker, and a producer config that gives up
    /// quickly: on MockCluster the broker answers the produce request with a permanent
    /// error; tansu does not create topics on demand, so a topic nobody created times out.
    async fn failing_topic(&self) -> (String, ClientConfig) {
        let mut config = self.producer_config();
        config.set("message.timeout.ms", "2000");
        match &self.mock {
            Some(mock) => {
                let topic = self.topic("refused", 1).await;
                mock.request_errors(
                    RDKafkaApiKey::Produce,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
                );
                (topic, config)
            }
            None => (unique("never-created"), config),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("topic.metadata.refresh.interval.ms", "500");
        config
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = self.client();
        config
            .set("message.timeout.ms", "15000")
            .set("queue.buffering.max.ms", "0");
        config
    }

    /// A consumer in `group`: manual commits, from the earliest offset, short timeouts.
    fn consumer_config(&self, group: &str, client_id: &str) -> ClientConfig {
        let mut config = self.client();
        config
            .set("group.id", group)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", "50");
        config
    }

    fn producer(&self, telemetry: &Telemetry) -> TracedProducer {
        let mut config = self.producer_config();
        config.set("client.id", telemetry.service_name());
        TracedProducer::from_config(&config, telemetry.clone()).expect("producer")
    }

    fn plain_producer(&self) -> FutureProducer {
        self.producer_config().create().expect("plain producer")
    }

    /// A traced consumer of `topic` in `group`.
    fn consumer(&self, telemetry: &Telemetry, topic: &str, group: &str) -> TracedConsumer {
        self.member(telemetry, topic, group, telemetry.service_name())
    }

    fn member(&self, telemetry: &Telemetry, topic: &str, group: &str, id: &str) -> TracedConsumer {
        let consumer =
            TracedConsumer::from_config(&self.consumer_config(group, id), telemetry.clone())
                .expect("consumer");
        consumer.inner().subscribe(&[topic]).expect("subscribe");
        consumer
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn service(spans: &SpanCollector, name: &str) -> Telemetry {
    Telemetry::builder(name)
        .collector(spans)
        .build()
        .expect("telemetry")
}

/// A root span of `telemetry` named `name`, as the current context of a request.
fn root(telemetry: &Telemetry, name: &'static str) -> Context {
    let span = telemetry.provider().tracer("test").start(name);
    Context::current_with_span(span)
}

fn find<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| {
            s.service_name.as_deref() == Some(service) && s.operation_name.as_deref() == Some(op)
        })
        .collect()
}

fn one<'a>(spans: &'a [SpanRecord], service: &str, op: &str) -> &'a SpanRecord {
    let found = find(spans, service, op);
    assert_eq!(found.len(), 1, "exactly one {service}/{op} in {spans:#?}");
    found[0]
}

fn parent_is(child: &SpanRecord, parent: &SpanRecord) {
    assert_eq!(
        child.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "{:?} should be a child of {:?}",
        child.operation_name,
        parent.operation_name
    );
    assert_eq!(child.trace_id, parent.trace_id, "same trace");
}

fn links_to(span: &SpanRecord, target: &SpanRecord) -> bool {
    span.links
        .iter()
        .any(|l| l.trace_id == target.trace_id && l.span_id == target.span_id)
}

/// Await a spawned consumer loop, failing the test if it takes longer than [`WAIT`].
async fn finish<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what} panicked: {e}"))
}

/// The committed offset of partition 0 of `topic` for the consumer's group.
fn committed(consumer: &TracedConsumer, topic: &str, partition: i32) -> Offset {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let list = consumer
        .inner()
        .committed_offsets(list, SEND)
        .expect("committed offsets");
    list.elements()[0].offset()
}

fn header_list<H: Headers>(headers: &H) -> Vec<(String, Option<Vec<u8>>)> {
    headers
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect()
}

fn headers_of(message: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    message.headers().map(header_list).unwrap_or_default()
}

type Captured = Arc<Mutex<Vec<OwnedMessage>>>;

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// gateway -> worker -> tool over two topics is one trace:
/// request -> send tasks -> process tasks -> send tools -> process tools.
async fn chain_over_two_topics_is_one_trace(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker, tool) = (
        service(&spans, "gateway"),
        service(&spans, "worker"),
        service(&spans, "tool"),
    );
    let tasks = broker.topic("tasks", 1).await;
    let tools = broker.topic("tools", 1).await;
    let worker_group = unique("workers");

    // The worker consumes a task and produces a tool call; no tracing code in the handler.
    let worker_consumer = broker
        .consumer(&worker, &tasks, &worker_group)
        .stop_after(1);
    let tool_calls = broker.producer(&worker);
    let tools_topic = tools.clone();
    let worker_task = tokio::spawn(async move {
        worker_consumer
            .run(move |task| {
                let tool_calls = tool_calls.clone();
                let tools_topic = tools_topic.clone();
                async move {
                    let body = format!(
                        "call for {}",
                        String::from_utf8_lossy(task.payload().unwrap_or_default())
                    );
                    tool_calls
                        .send(
                            FutureRecord::to(&tools_topic).key("run-1").payload(&body),
                            SEND,
                        )
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                }
            })
            .await
    });
    let tool_consumer = broker
        .consumer(&tool, &tools, &unique("tools"))
        .stop_after(1);
    let seen: Captured = Captured::default();
    let seen_in_tool = seen.clone();
    let tool_task = tokio::spawn(async move {
        tool_consumer
            .run(move |call| {
                seen_in_tool.lock().unwrap().push(call);
                async { Ok::<_, String>(()) }
            })
            .await
    });

    let producer = broker.producer(&gateway);
    let request = root(&gateway, "handle_request");
    let send = {
        let _current = request.clone().attach();
        producer.send(
            FutureRecord::to(&tasks).key("run-1").payload("plan trip"),
            SEND,
        )
    };
    let delivered = send.await.expect("delivered");
    request.span().end();

    let worker_summary = finish(worker_task, "worker").await.expect("worker loop");
    assert_eq!(worker_summary.succeeded, 1);
    finish(tool_task, "tool").await.expect("tool loop");
    assert_eq!(
        seen.lock().unwrap()[0].payload(),
        Some(&b"call for plan trip"[..])
    );

    let all = spans.records();
    let request = one(&all, "gateway", "handle_request");
    let send_task = one(&all, "gateway", &format!("send {tasks}"));
    let process_task = one(&all, "worker", &format!("process {tasks}"));
    let send_tool = one(&all, "worker", &format!("send {tools}"));
    let process_tool = one(&all, "tool", &format!("process {tools}"));
    assert_eq!(request.parent_span_id, None);
    parent_is(send_task, request);
    parent_is(process_task, send_task);
    parent_is(send_tool, process_task);
    parent_is(process_tool, send_tool);

    assert_eq!(send_task.span_kind, Some(Kind::Producer));
    assert_eq!(process_task.span_kind, Some(Kind::Consumer));
    for (s, topic) in [
        (send_task, &tasks),
        (process_task, &tasks),
        (process_tool, &tools),
    ] {
        assert_eq!(s.attribute_str("messaging.system"), Some("kafka"));
        assert_eq!(
            s.attribute_str("messaging.destination.name"),
            Some(topic.as_str())
        );
        assert_eq!(
            s.attribute_str("messaging.destination.partition.id"),
            Some("0")
        );
        assert_eq!(
            s.attribute_str("messaging.kafka.message.key"),
            Some("run-1")
        );
        assert_eq!(s.attribute("messaging.kafka.offset"), Some(&0.into()));
    }
    assert_eq!(
        send_task.attribute("messaging.kafka.offset"),
        Some(&delivered.offset.into())
    );
    assert_eq!(
        send_task.attribute_str("messaging.client.id"),
        Some("gateway")
    );
    assert_eq!(
        send_task.attribute("messaging.message.body.size"),
        Some(&9.into())
    );
    assert_eq!(
        process_task.attribute("messaging.message.body.size"),
        Some(&9.into())
    );
    assert_eq!(
        process_task.attribute_str("messaging.consumer.group.name"),
        Some(worker_group.as_str())
    );
    assert_eq!(
        process_task.attribute_str("messaging.client.id"),
        Some("worker")
    );
    assert_eq!(
        process_task.attribute("tracehop.delivery.attempt"),
        Some(&1.into())
    );
    assert!(process_task
        .attribute("tracehop.queue_time_ms")
        .and_then(|v| v.as_f64())
        .is_some_and(|ms| ms >= 0.0));
    assert_eq!(process_task.status, Status::Ok);
    assert_eq!(send_task.status, Status::Ok);
}

/// User headers arrive unchanged (order, bytes, null values, duplicates); a stale
/// `traceparent` the user set is replaced in place, never duplicated.
async fn user_headers_survive_unchanged(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("headers", 1).await;

    let user = || {
        OwnedHeaders::new()
            .insert(Header {
                key: "binary",
                value: Some(&[0u8, 0xff, 0xfe, b'\n'][..]),
            })
            .insert(Header {
                key: "null-value",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "dup",
                value: Some("first"),
            })
            .insert(Header {
                key: "dup",
                value: Some("second"),
            })
            .insert(Header {
                key: "empty",
                value: Some(""),
            })
    };
    let stale = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let producer = broker.producer(&gateway);
    producer
        .send(
            FutureRecord::to(&topic)
                .key("k")
                .payload("plain")
                .headers(user()),
            SEND,
        )
        .await
        .expect("delivered");
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("stale").headers(
                user()
                    .insert(Header {
                        key: TRACEPARENT,
                        value: Some(stale),
                    })
                    .insert(Header {
                        key: "after",
                        value: Some("x"),
                    }),
            ),
            SEND,
        )
        .await
        .expect("delivered");

    let consumer = broker
        .consumer(&worker, &topic, &unique("headers"))
        .stop_after(2);
    let seen = Captured::default();
    let captured = seen.clone();
    let task = tokio::spawn(async move {
        consumer
            .run(move |m| {
                captured.lock().unwrap().push(m);
                async { Ok::<_, String>(()) }
            })
            .await
    });
    finish(task, "consumer").await.expect("consumer loop");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let expected_user = header_list(&user());
    let sends = find(&spans.records(), "gateway", &format!("send {topic}"))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(sends.len(), 2);

    // First message: the user's headers first, untouched; then only context headers.
    let plain = headers_of(&seen[0]);
    assert_eq!(seen[0].payload(), Some(&b"plain"[..]));
    assert_eq!(seen[0].key(), Some(&b"k"[..]));
    assert_eq!(&plain[..expected_user.len()], &expected_user[..]);
    let added: Vec<&str> = plain[expected_user.len()..]
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    // Only context headers are added (tracestate only when the core writes it).
    assert_eq!(added.first(), Some(&TRACEPARENT), "{added:?}");
    assert!(added.contains(&SENT_AT), "{added:?}");
    assert!(
        added
            .iter()
            .all(|k| [TRACEPARENT, TRACESTATE, SENT_AT].contains(k)),
        "{added:?}"
    );
    let traceparent = plain
        .iter()
        .find(|(k, _)| k == TRACEPARENT)
        .and_then(|(_, v)| v.clone())
        .expect("context header");
    let expected = format!("00-{}-{}-01", sends[0].trace_id, sends[0].span_id);
    assert_eq!(String::from_utf8(traceparent).unwrap(), expected);

    // Second message: the stale traceparent is replaced where it was, exactly once.
    let stale_headers = headers_of(&seen[1]);
    assert_eq!(&stale_headers[..expected_user.len()], &expected_user[..]);
    let n = expected_user.len();
    assert_eq!(stale_headers[n].0, TRACEPARENT);
    assert_eq!(
        stale_headers[n].1.as_deref(),
        Some(format!("00-{}-{}-01", sends[1].trace_id, sends[1].span_id).as_bytes())
    );
    assert_eq!(
        stale_headers[n + 1],
        ("after".to_owned(), Some(b"x".to_vec()))
    );
    assert_eq!(
        stale_headers
            .iter()
            .filter(|(k, _)| k == TRACEPARENT)
            .count(),
        1,
        "{stale_headers:?}"
    );
    assert_ne!(sends[1].trace_id, "0af7651916cd43dd8448eb211c80319c");
}

/// A message from a plain rdkafka producer (no context) and one with a malformed
/// `traceparent` are processed normally, each under a new root that says why.
async fn message_without_context_starts_a_new_root(broker: Broker) {
    let spans = SpanCollector::new();
    let worker = service(&spans, "worker");
    let topic = broker.topic("plain", 1).await;
    let plain = broker.plain_producer();
    plain
        .send(
            FutureRecord::to(&topic).key("a").payload("no context"),
            SEND,
        )
        .await
        .expect("delivered");
    plain
        .send(
            FutureRecord::to(&topic)
                .key("b")
                .payload("bad context")
                .headers(OwnedHeaders::new().insert(Header {
                    key: TRACEPARENT,
                    value: Some("00-not-a-trace-01"),
                })),
            SEND,
        )
        .await
        .expect("delivered");

    let consumer = broker
        .consumer(&worker, &topic, &unique("plain"))
        .stop_after(2);
    let handled = Captured::default();
    let captured = handled.clone();
    let task = tokio::spawn(async move {
        consumer
            .run(move |m| {
                captured.lock().unwrap().push(m);
                async { Ok::<_, String>(()) }
            })
            .await
    });
    let summary = finish(task, "consumer").await.expect("consumer loop");
    assert_eq!(summary.succeeded, 2);
    assert_eq!(handled.lock().unwrap().len(), 2);

    let all = spans.records();
    let processed = find(&all, "worker", &format!("process {topic}"));
    assert_eq!(processed.len(), 2, "{all:#?}");
    let missing = processed
        .iter()
        .find(|s| s.attribute_str("messaging.kafka.message.key") == Some("a"))
        .expect("span for a");
    let rejected = processed
        .iter()
        .find(|s| s.attribute_str("messaging.kafka.message.key") == Some("b"))
        .expect("span for b");
    for s in [missing, rejected] {
        assert_eq!(s.parent_span_id, None, "a new root");
        assert_eq!(s.status, Status::Ok);
        assert!(s.links.is_empty());
    }
    assert_ne!(missing.trace_id, rejected.trace_id);
    assert_eq!(
        missing.attribute("tracehop.context.missing"),
        Some(&true.into())
    );
    assert!(
        rejected
            .attribute_str("tracehop.context.rejected")
            .is_some(),
        "{rejected:#?}"
    );
    assert_eq!(rejected.attribute("tracehop.context.missing"), None);
}

/// A failing handler with the dead-letter policy forwards the message from inside its
/// failed process span; the dead-letter processing is in the same trace, attempt 2.
async fn dead_letter_stays_in_the_trace(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker, janitor) = (
        service(&spans, "gateway"),
        service(&spans, "worker"),
        service(&spans, "janitor"),
    );
    let tasks = broker.topic("tasks", 1).await;
    let dlq = broker.topic("tasks-dlq", 1).await;
    let group = unique("workers");

    let producer = broker.producer(&gateway);
    let user = OwnedHeaders::new()
        .insert(Header {
            key: "tenant",
            value: Some("acme"),
        })
        .insert(Header {
            key: "null",
            value: None::<&[u8]>,
        });
    let request = root(&gateway, "handle_request");
    let send = {
        let _current = request.clone().attach();
        producer.send(
            FutureRecord::to(&tasks)
                .key("run-9")
                .payload("poison")
                .headers(user),
            SEND,
        )
    };
    send.await.expect("delivered");
    request.span().end();

    let consumer = broker
        .consumer(&worker, &tasks, &group)
        .on_failure(OnFailure::dead_letter(dlq.clone()))
        .forward_with(broker.producer(&worker))
        .stop_after(1);
    let consumer = Arc::new(consumer);
    let running = consumer.clone();
    let task = tokio::spawn(async move {
        running
            .run(|_task| async { Err::<(), _>(std::io::Error::other("tool exploded")) })
            .await
    });
    let summary = finish(task, "worker").await.expect("worker loop");
    assert_eq!(summary.forwarded, 1);
    assert_eq!(
        committed(&consumer, &tasks, 0),
        Offset::Offset(1),
        "the forwarded message is settled"
    );

    let dead = broker
        .consumer(&janitor, &dlq, &unique("janitor"))
        .stop_after(1);
    let seen = Captured::default();
    let captured = seen.clone();
    let task = tokio::spawn(async move {
        dead.run(move |m| {
            captured.lock().unwrap().push(m);
            async { Ok::<_, String>(()) }
        })
        .await
    });
    finish(task, "janitor").await.expect("janitor loop");
    let dead_letter = seen.lock().unwrap()[0].clone();
    assert_eq!(dead_letter.payload(), Some(&b"poison"[..]));
    assert_eq!(dead_letter.key(), Some(&b"run-9"[..]));
    assert_eq!(delivery_attempt(&dead_letter), 2);
    let headers = headers_of(&dead_letter);
    assert_eq!(
        &headers[..2],
        &[
            ("tenant".to_owned(), Some(b"acme".to_vec())),
            ("null".to_owned(), None)
        ]
    );
    assert_eq!(headers.iter().filter(|(k, _)| k == TRACEPARENT).count(), 1);
    assert_eq!(headers.iter().filter(|(k, _)| k == ATTEMPT).count(), 1);

    let all = spans.records();
    let request = one(&all, "gateway", "handle_request");
    let send = one(&all, "gateway", &format!("send {tasks}"));
    let failed = one(&all, "worker", &format!("process {tasks}"));
    let forward = one(&all, "worker", &format!("send {dlq}"));
    let dead_process = one(&all, "janitor", &format!("process {dlq}"));
    parent_is(send, request);
    parent_is(failed, send);
    parent_is(forward, failed);
    parent_is(dead_process, forward);
    assert_eq!(failed.status, Status::Error);
    assert_eq!(failed.error.as_deref(), Some("tool exploded"));
    assert_eq!(failed.attribute_str("error.type"), Some("Error"));
    assert_eq!(
        failed.attribute("tracehop.delivery.attempt"),
        Some(&1.into())
    );
    assert_eq!(
        dead_process.attribute("tracehop.delivery.attempt"),
        Some(&2.into())
    );
    assert_eq!(
        dead_process.attribute_str("messaging.kafka.message.key"),
        Some("run-9")
    );
    assert_eq!(forward.status, Status::Ok);
}

/// With the stop policy, a failed message's offset is not committed: the loop returns
/// the handler's error, the committed offset stays at the failed message, and the next
/// member of the group gets that message again.
async fn failed_message_is_not_committed(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("orders", 1).await;
    let group = unique("orders");
    let producer = broker.producer(&gateway);
    for body in ["ok-0", "bad-1", "ok-2"] {
        producer
            .send(FutureRecord::to(&topic).key(body).payload(body), SEND)
            .await
            .expect("delivered");
    }

    let consumer = Arc::new(
        broker
            .consumer(&worker, &topic, &group)
            .commit(Some(CommitMode::Sync)),
    );
    let running = consumer.clone();
    let task = tokio::spawn(async move {
        running
            .run(|m| async move {
                match m.payload() {
                    Some(b"bad-1") => Err("cannot handle bad-1".to_owned()),
                    _ => Ok(()),
                }
            })
            .await
    });
    let stopped = finish(task, "consumer")
        .await
        .expect_err("the stop policy returns the error");
    match &stopped {
        ConsumeError::Handler { error, position } => {
            assert_eq!(error, "cannot handle bad-1");
            assert_eq!(
                (position.topic.as_str(), position.partition, position.offset),
                (topic.as_str(), 0, 1)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        committed(&consumer, &topic, 0),
        Offset::Offset(1),
        "only ok-0 is committed"
    );
    drop(consumer);

    // The next member of the group starts at the failed message.
    let again = broker.consumer(&worker, &topic, &group).stop_after(1);
    let seen = Captured::default();
    let captured = seen.clone();
    let task = tokio::spawn(async move {
        again
            .run(move |m| {
                captured.lock().unwrap().push(m);
                async { Ok::<_, String>(()) }
            })
            .await
    });
    finish(task, "second consumer").await.expect("second loop");
    let redelivered = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (redelivered.offset(), redelivered.payload()),
        (1, Some(&b"bad-1"[..]))
    );

    let all = spans.records();
    let processed = find(&all, "worker", &format!("process {topic}"));
    let failed: Vec<_> = processed
        .iter()
        .filter(|s| s.status == Status::Error)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].attribute("messaging.kafka.offset"),
        Some(&1.into())
    );
    // Both deliveries of bad-1 are children of its one send span.
    let send = find(&all, "gateway", &format!("send {topic}"))
        .into_iter()
        .find(|s| s.attribute("messaging.kafka.offset") == Some(&1.into()))
        .expect("send of bad-1");
    let deliveries: Vec<_> = processed
        .iter()
        .filter(|s| s.attribute("messaging.kafka.offset") == Some(&1.into()))
        .collect();
    assert_eq!(deliveries.len(), 2);
    deliveries.iter().for_each(|d| parent_is(d, send));
}

/// Retry in place: each run is its own process span under the same send span, with
/// attempts 1 and 2; the message is committed once it succeeds.
async fn retry_in_place_keeps_attempts_in_the_trace(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("flaky", 1).await;
    broker
        .producer(&gateway)
        .send(FutureRecord::to(&topic).key("f").payload("flaky"), SEND)
        .await
        .expect("delivered");
    let consumer = Arc::new(
        broker
            .consumer(&worker, &topic, &unique("flaky"))
            .commit(Some(CommitMode::Sync))
            .on_failure(OnFailure::retry_in_place(3, Duration::from_millis(10)))
            .stop_after(1),
    );
    let running = consumer.clone();
    let task = tokio::spawn(async move {
        let mut runs = 0;
        running
            .run(move |_m| {
                runs += 1;
                let fail = runs == 1;
                async move {
                    if fail {
                        Err("transient")
                    } else {
                        Ok(())
                    }
                }
            })
            .await
    });
    let summary = finish(task, "consumer").await.expect("consumer loop");
    assert_eq!((summary.succeeded, summary.retries), (1, 1));
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(1));
    let all = spans.records();
    let send = one(&all, "gateway", &format!("send {topic}"));
    let runs = find(&all, "worker", &format!("process {topic}"));
    assert_eq!(runs.len(), 2);
    assert_eq!(
        runs[0].attribute("tracehop.delivery.attempt"),
        Some(&1.into())
    );
    assert_eq!(runs[0].status, Status::Error);
    assert_eq!(
        runs[1].attribute("tracehop.delivery.attempt"),
        Some(&2.into())
    );
    assert_eq!(runs[1].status, Status::Ok);
    runs.iter().for_each(|r| parent_is(r, send));
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
        let request = root(&gateway, "handle_request");
        let send = {
            let _current = request.clone().attach();
            producer.send(FutureRecord::to(&topic).key(&key).payload("x"), SEND)
        };
        send.await.expect("delivered");
        request.span().end();
    }

    let consumer = Arc::new(
        broker
            .consumer(&worker, &topic, &unique("batch"))
            .commit(Some(CommitMode::Sync))
            .stop_after(3),
    );
    let running = consumer.clone();
    let task = tokio::spawn(async move {
        running
            .run_batches(BatchOptions::new(3, WAIT), |batch| async move {
                for i in 0..batch.len() {
                    batch.process(i, async { Ok::<_, String>(()) }).await?;
                }
                Ok::<_, String>(())
            })
            .await
    });
    let summary = finish(task, "batch consumer").await.expect("batch loop");
    assert_eq!((summary.batches, summary.succeeded), (1, 3));
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(3));

    let all = spans.records();
    let sends = find(&all, "gateway", &format!("send {topic}"));
    assert_eq!(sends.len(), 3);
    let processes = find(&all, "worker", &format!("process {topic}"));
    let batch = processes
        .iter()
        .find(|s| s.attribute("messaging.batch.message_count").is_some())
        .expect("batch span");
    assert_eq!(
        batch.attribute("messaging.batch.message_count"),
        Some(&3.into())
    );
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
        let key = child
            .attribute_str("messaging.kafka.message.key")
            .expect("key");
        let send = sends
            .iter()
            .find(|s| s.attribute_str("messaging.kafka.message.key") == Some(key))
            .expect("send of the same key");
        assert!(links_to(child, send), "{key} links its own send span");
        assert_eq!(child.status, Status::Ok);
    }
}

/// In link mode the process span starts a new trace and links the producer's span.
async fn link_mode_links_instead_of_adopting(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("untrusted", 1).await;
    broker
        .producer(&gateway)
        .send(FutureRecord::to(&topic).key("u").payload("x"), SEND)
        .await
        .expect("delivered");
    let consumer = broker
        .consumer(&worker, &topic, &unique("link"))
        .parent_policy(ParentPolicy::Link)
        .stop_after(1);
    let task = tokio::spawn(async move { consumer.run(|_m| async { Ok::<_, String>(()) }).await });
    finish(task, "consumer").await.expect("consumer loop");
    let all = spans.records();
    let send = one(&all, "gateway", &format!("send {topic}"));
    let process = one(&all, "worker", &format!("process {topic}"));
    assert_eq!(process.parent_span_id, None);
    assert_ne!(process.trace_id, send.trace_id);
    assert!(links_to(process, send));
    assert_eq!(
        process.attribute("tracehop.context.linked"),
        Some(&true.into())
    );
}

/// Two members of one consumer group share a two-partition topic; each run is still one
/// trace of exactly its send and its process span.
async fn consumer_group_of_two_keeps_one_trace_per_run(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("shared", 2).await;
    let group = unique("pair");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut members = Vec::new();
    for id in ["member-a", "member-b"] {
        let member = Arc::new(broker.member(&worker, &topic, &group, id));
        let running = member.clone();
        let mut stop = stop_rx.clone();
        let task = tokio::spawn(async move {
            running
                .run_until(|_m| async { Ok::<_, String>(()) }, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        members.push((member, task));
    }
    // Both members hold a partition before anything is produced.
    let assigned = tokio::time::timeout(WAIT, async {
        loop {
            let counts: Vec<usize> = members
                .iter()
                .map(|(m, _)| m.inner().assignment().map(|a| a.count()).unwrap_or(0))
                .collect();
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
        let request = root(&gateway, "handle_request");
        let send = {
            let _current = request.clone().attach();
            producer.send(
                FutureRecord::to(&topic)
                    .partition(i % 2)
                    .key(&key)
                    .payload("x"),
                SEND,
            )
        };
        send.await.expect("delivered");
        request.span().end();
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
    stop_tx.send(true).expect("stop members");
    for (_, task) in members {
        finish(task, "group member").await.expect("member loop");
    }

    let requests = find(&all, "gateway", "handle_request");
    assert_eq!(requests.len(), runs as usize);
    let mut trace_ids: Vec<&str> = requests.iter().map(|r| r.trace_id.as_str()).collect();
    trace_ids.sort_unstable();
    trace_ids.dedup();
    assert_eq!(trace_ids.len(), runs as usize, "one trace per run");
    let mut members_seen = std::collections::BTreeSet::new();
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
        parent_is(send, request);
        parent_is(process, send);
        assert_eq!(
            process.attribute_str("messaging.consumer.group.name"),
            Some(group.as_str())
        );
        assert_eq!(
            process.attribute_str("messaging.kafka.message.key"),
            send.attribute_str("messaging.kafka.message.key")
        );
        members_seen.insert(
            process
                .attribute_str("messaging.client.id")
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

/// A delivery the broker refuses ends the send span as an error, and the caller gets
/// rdkafka's error and the message back unchanged.
async fn delivery_failure_ends_send_span_as_error(broker: Broker) {
    let spans = SpanCollector::new();
    let gateway = service(&spans, "gateway");
    let (topic, config) = broker.failing_topic().await;
    let producer = TracedProducer::from_config(&config, gateway.clone()).expect("producer");
    let result = producer
        .send(FutureRecord::to(&topic).key("k").payload("lost"), SEND)
        .await;
    let (error, message) = result.expect_err("the broker refuses the record");
    assert_eq!(message.payload(), Some(&b"lost"[..]));
    assert_eq!(message.key(), Some(&b"k"[..]));
    let code = error.rdkafka_error_code().expect("an rdkafka error code");
    let all = spans.records();
    let send = one(&all, "gateway", &format!("send {topic}"));
    assert_eq!(send.status, Status::Error);
    assert_eq!(
        send.attribute_str("error.type"),
        Some(format!("{code:?}").as_str())
    );
    assert_eq!(send.error.as_deref(), Some(error.to_string().as_str()));
    assert_eq!(send.attribute("messaging.kafka.offset"), None);
}

/// A `ThreadedProducer` with the tracing context: the send span ends on delivery with its
/// offset, and the consumer's process span is its child.
async fn threaded_producer_is_traced_too(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("threaded", 1).await;
    let context = TracingProducerContext::new(DefaultProducerContext, gateway.clone())
        .client_id("threaded-gateway");
    let producer: ThreadedProducer<_> = broker
        .producer_config()
        .create_with_context(context)
        .expect("threaded producer");
    let request = root(&gateway, "handle_request");
    let record = {
        let _current = request.clone().attach();
        producer
            .context()
            .trace(BaseRecord::to(&topic).key("t-1").payload("threaded"))
    };
    producer.send(record).map_err(|(e, _)| e).expect("queued");
    producer.flush(SEND).expect("flushed");
    request.span().end();

    let consumer = broker
        .consumer(&worker, &topic, &unique("threaded"))
        .stop_after(1);
    let task = tokio::spawn(async move { consumer.run(|_m| async { Ok::<_, String>(()) }).await });
    finish(task, "consumer").await.expect("consumer loop");

    let all = spans.records();
    let request = one(&all, "gateway", "handle_request");
    let send = one(&all, "gateway", &format!("send {topic}"));
    let process = one(&all, "worker", &format!("process {topic}"));
    parent_is(send, request);
    parent_is(process, send);
    assert_eq!(send.status, Status::Ok);
    assert_eq!(send.attribute("messaging.kafka.offset"), Some(&0.into()));
    assert_eq!(
        send.attribute_str("messaging.destination.partition.id"),
        Some("0")
    );
    assert_eq!(
        send.attribute_str("messaging.client.id"),
        Some("threaded-gateway")
    );
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
        producer
            .send(FutureRecord::to(&topic).key(key).payload(key), SEND)
            .await
            .expect("delivered");
    }
    let consumer = Arc::new(
        broker
            .consumer(&worker, &topic, &unique("batch"))
            .commit(Some(CommitMode::Sync))
            .on_failure(OnFailure::dead_letter(dlq.clone()))
            .forward_with(broker.producer(&worker))
            .stop_after(3),
    );
    let running = consumer.clone();
    let task = tokio::spawn(async move {
        running
            .run_batches(BatchOptions::new(3, WAIT), |batch| async move {
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
            .await
    });
    let summary = finish(task, "batch consumer").await.expect("batch loop");
    assert_eq!((summary.succeeded, summary.forwarded), (2, 1));
    assert_eq!(committed(&consumer, &topic, 0), Offset::Offset(3));

    let dead = broker
        .consumer(&janitor, &dlq, &unique("janitor"))
        .stop_after(1);
    let seen = Captured::default();
    let captured = seen.clone();
    let task = tokio::spawn(async move {
        dead.run(move |m| {
            captured.lock().unwrap().push(m);
            async { Ok::<_, String>(()) }
        })
        .await
    });
    finish(task, "janitor").await.expect("janitor loop");
    let dead_letter = seen.lock().unwrap()[0].clone();
    assert_eq!(dead_letter.key(), Some(&b"bad-1"[..]));
    assert_eq!(delivery_attempt(&dead_letter), 2);

    let all = spans.records();
    let send_bad = find(&all, "gateway", &format!("send {topic}"))
        .into_iter()
        .find(|s| s.attribute_str("messaging.kafka.message.key") == Some("bad-1"))
        .expect("send of bad-1");
    let processes = find(&all, "worker", &format!("process {topic}"));
    let batch = processes
        .iter()
        .find(|s| s.attribute("messaging.batch.message_count").is_some())
        .expect("batch span");
    assert_eq!(batch.status, Status::Error);
    let failed_child = processes
        .iter()
        .find(|s| s.attribute_str("messaging.kafka.message.key") == Some("bad-1"))
        .expect("process of bad-1");
    parent_is(failed_child, batch);
    assert!(links_to(failed_child, send_bad));
    assert_eq!(failed_child.status, Status::Error);
    let forward = one(&all, "worker", &format!("send {dlq}"));
    parent_is(forward, failed_child);
    let dead_process = one(&all, "janitor", &format!("process {dlq}"));
    parent_is(dead_process, forward);
    assert_eq!(
        dead_process.attribute("tracehop.delivery.attempt"),
        Some(&2.into())
    );
}

/// A policy that forwards with no producer configured stops the loop with the handler's
/// error and leaves the message uncommitted.
async fn forward_without_producer_stops_uncommitted(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("orphan", 1).await;
    broker
        .producer(&gateway)
        .send(FutureRecord::to(&topic).key("o").payload("x"), SEND)
        .await
        .expect("delivered");
    let consumer = Arc::new(
        broker
            .consumer(&worker, &topic, &unique("orphan"))
            .commit(Some(CommitMode::Sync))
            .on_failure(OnFailure::dead_letter("nowhere")),
    );
    let running = consumer.clone();
    let task = tokio::spawn(async move {
        running
            .run(|_m| async { Err::<(), _>("broken".to_owned()) })
            .await
    });
    match finish(task, "consumer").await {
        Err(ConsumeError::NoForwarder {
            handler_error,
            destination,
            position,
        }) => {
            assert_eq!(handler_error, "broken");
            assert_eq!(destination, "nowhere");
            assert_eq!(position.offset, 0);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        committed(&consumer, &topic, 0),
        Offset::Invalid,
        "nothing committed"
    );
    let all = spans.records();
    assert_eq!(
        one(&all, "worker", &format!("process {topic}")).status,
        Status::Error
    );
    assert!(find(&all, "worker", "send nowhere").is_empty());
}

// ---------------------------------------------------------------------------------------
// Each scenario on both brokers
// ---------------------------------------------------------------------------------------

macro_rules! on_both_brokers {
    ($($scenario:ident),* $(,)?) => {
        /// Against `rdkafka::mocking::MockCluster`, in process.
        mod mock {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Broker::mock()).await
                }
            )*
        }
        /// Against the external broker at `TRACEHOP_KAFKA_BROKERS` (tansu in CI).
        mod tansu {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Broker::tansu()).await
                }
            )*
        }
    };
}

on_both_brokers!(
    chain_over_two_topics_is_one_trace,
    user_headers_survive_unchanged,
    message_without_context_starts_a_new_root,
    dead_letter_stays_in_the_trace,
    failed_message_is_not_committed,
    retry_in_place_keeps_attempts_in_the_trace,
    batch_links_every_message,
    link_mode_links_instead_of_adopting,
    consumer_group_of_two_keeps_one_trace_per_run,
    delivery_failure_ends_send_span_as_error,
    threaded_producer_is_traced_too,
    batch_forwards_only_failed_messages,
    forward_without_producer_stops_uncommitted,
);
