//! The Kafka adapter against real brokers, split by behaviour: every scenario runs once
//! against `rdkafka::mocking::MockCluster` (module `mock` of its file) and once against
//! the external broker at `TRACEHOP_KAFKA_BROKERS` (module `tansu`; tansu in CI, default
//! `127.0.0.1:9092`).
//!
//! - [`chain`]: hops between services are one trace (parents, attributes, link mode, the
//!   threaded producer, the trace a send returns).
//! - [`headers`]: user headers survive byte for byte; missing or bad context starts a root.
//! - [`failures`]: dead letters, stop, forwarding without a producer, refused deliveries.
//! - [`redelivery`]: seek-back redelivery (the default policy), retries in place, a
//!   panicking handler.
//! - [`batch`]: batch spans and links, forwarding only a batch's failed messages.
//! - [`groups`]: a consumer group of two members.
//! - [`closing`]: dropping or closing a consumer does not block the async worker.
//!
//! Run one side with a filter: `cargo test ... --test kafka mock::` or `tansu::`.
#![cfg(feature = "kafka")]

use std::fmt;
use std::future::{ready, Future, Ready};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TraceContextExt as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, ConsumerContext};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracehop::kafka::{KafkaSource, TracedConsumer, TracedProducer};
use tracehop::{ConsumeError, Consumer, Sent, SpanRecord, Summary, Telemetry};
use tracehop_integration_tests::{kafka_brokers, spans, unique};

/// Each named scenario (an `async fn(Broker)` of the calling module) as a test against
/// MockCluster (module `mock`) and one against the external broker (module `tansu`), on
/// a multi-thread runtime, or on the runtime flavor given first (`flavor = "..."; ...`).
/// Attributes before a name (`#[ignore = "why"]`) go on both of its tests.
macro_rules! on_both_brokers {
    (flavor = $flavor:literal; $($(#[$attr:meta])* $scenario:ident),* $(,)?) => {
        /// Against `rdkafka::mocking::MockCluster`, in process.
        mod mock {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = $flavor)]
                async fn $scenario() {
                    super::$scenario(crate::Broker::mock()).await
                }
            )*
        }
        /// Against the external broker at `TRACEHOP_KAFKA_BROKERS` (tansu in CI).
        mod tansu {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = $flavor)]
                async fn $scenario() {
                    super::$scenario(crate::Broker::tansu()).await
                }
            )*
        }
    };
    ($($(#[$attr:meta])* $scenario:ident),* $(,)?) => {
        on_both_brokers!(flavor = "multi_thread"; $($(#[$attr])* $scenario),*);
    };
}

mod batch;
mod chain;
mod closing;
mod failures;
mod groups;
mod headers;
mod metrics;
mod redelivery;

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
                 `cargo xtask services` or `tansu broker --listener-url tcp://127.0.0.1:9092 \
                 --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/`, \
                 or run only the MockCluster tests with the filter `mock::`."
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

    /// A traced consumer of `topic` in `group`, its client id the service name.
    fn consumer(&self, telemetry: &Telemetry, topic: &str, group: &str) -> TracedConsumer {
        let consumer = TracedConsumer::from_config(
            &self.consumer_config(group, telemetry.service_name()),
            telemetry.clone(),
        )
        .expect("consumer");
        consumer.inner().subscribe(&[topic]).expect("subscribe");
        consumer
    }

    /// A traced consumer of `topic` in `group` whose rdkafka consumer has `context`
    /// (to watch rebalances and closing), committing each settled message.
    fn consumer_with<C: ConsumerContext + 'static>(
        &self,
        telemetry: &Telemetry,
        topic: &str,
        group: &str,
        client_id: &str,
        context: C,
    ) -> Consumer<KafkaSource<C>> {
        let consumer = self
            .consumer_config(group, client_id)
            .create_with_context(context)
            .expect("consumer with context");
        let consumer = Consumer::<KafkaSource<C>>::new(consumer, telemetry.clone())
            .group_id(group)
            .client_id(client_id);
        consumer.inner().subscribe(&[topic]).expect("subscribe");
        consumer
    }
}

// ---------------------------------------------------------------------------------------
// Kafka helpers
// ---------------------------------------------------------------------------------------

/// Messages a handler has seen.
type Captured = Arc<Mutex<Vec<OwnedMessage>>>;

/// What a spawned consumer loop hands back: the consumer (to read its committed offsets)
/// and what the loop returned.
type Ran<C, E> = (Consumer<KafkaSource<C>>, Result<Summary, ConsumeError<E>>);

/// Run `consumer` with `handler` on a task of its own; await it with
/// [`finish`](tracehop_integration_tests::finish).
fn spawn_run<C, F, Fut, E>(
    mut consumer: Consumer<KafkaSource<C>>,
    handler: F,
) -> tokio::task::JoinHandle<Ran<C, E>>
where
    C: ConsumerContext + 'static,
    F: FnMut(OwnedMessage) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    tokio::spawn(async move {
        let result = consumer.run(handler).await;
        (consumer, result)
    })
}

/// What a spawned consumer loop returned, its consumer closed first (so it has left the
/// broker before the test drops it, an in-process MockCluster included).
async fn closed<C: ConsumerContext + 'static, T>(ran: (Consumer<KafkaSource<C>>, T)) -> T {
    let (consumer, result) = ran;
    consumer.close().await;
    result
}

/// A handler that keeps every message it gets in `seen` and succeeds.
fn keep_in(
    seen: &Captured,
) -> impl FnMut(OwnedMessage) -> Ready<Result<(), String>> + Send + 'static {
    let seen = seen.clone();
    move |message| {
        seen.lock().unwrap().push(message);
        ready(Ok(()))
    }
}

/// Send `record` and wait for the broker to have it.
async fn deliver(producer: &TracedProducer, record: FutureRecord<'_, str, str>) -> Sent<Delivery> {
    producer.send(record, SEND).await.expect("delivered")
}

/// Send `record` inside a root span `handle_request` of the producer's service, as a
/// request handler would, and wait for the broker to have it.
async fn deliver_in_request(
    producer: &TracedProducer,
    record: FutureRecord<'_, str, str>,
) -> Sent<Delivery> {
    let request = spans::root(producer.telemetry(), "handle_request");
    let send = {
        let _current = request.clone().attach();
        producer.send(record, SEND)
    };
    let sent = send.await.expect("delivered");
    request.span().end();
    sent
}

/// The committed offset of `partition` of `topic` for the consumer's group.
fn committed<C: ConsumerContext + 'static>(
    consumer: &Consumer<KafkaSource<C>>,
    topic: &str,
    partition: i32,
) -> Offset {
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

/// `messaging.kafka.message.key`.
fn key_of(span: &SpanRecord) -> Option<&str> {
    spans::text(span, "messaging.kafka.message.key")
}

/// `messaging.kafka.offset`.
fn offset_of(span: &SpanRecord) -> Option<i64> {
    spans::int(span, "messaging.kafka.offset")
}

/// The spans of `service` named `op` for the message with `key`.
fn for_key<'a>(all: &'a [SpanRecord], service: &str, op: &str, key: &str) -> Vec<&'a SpanRecord> {
    spans::find(all, service, op)
        .into_iter()
        .filter(|s| key_of(s) == Some(key))
        .collect()
}
