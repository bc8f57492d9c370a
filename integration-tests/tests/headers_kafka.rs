//! Repeated context headers and a `tracestate` with duplicate keys, sent by a plain
//! rdkafka producer and read back with `Telemetry::process_span` from what a plain
//! consumer received: once against `rdkafka::mocking::MockCluster` (module `mock`) and
//! once against the broker at `TRACEHOP_KAFKA_BROKERS` (module `tansu`).
#![cfg(feature = "kafka")]

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tracehop::{SpanCollector, Telemetry};
use tracehop_integration_tests::repeated_headers::{assert_w3c, messages, process_and_forward};
use tracehop_integration_tests::{kafka_brokers, unique, WAIT};

const SEND: Duration = Duration::from_secs(10);

/// Where the messages go: the in-process cluster (kept alive here) or the external one.
struct Broker {
    bootstrap: String,
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
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
        assert!(
            reachable,
            "the Kafka broker at {bootstrap:?} (TRACEHOP_KAFKA_BROKERS) is not reachable; \
             `cargo xtask services` starts tansu, or run only `mock::`"
        );
        Broker {
            bootstrap,
            mock: None,
        }
    }

    async fn topic(&self) -> String {
        let name = unique("headers");
        match &self.mock {
            Some(mock) => mock.create_topic(&name, 1, 1).expect("create topic"),
            None => {
                use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
                let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                    self.config().create().expect("admin");
                let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(1));
                for r in admin
                    .create_topics([&topic], &AdminOptions::new().operation_timeout(Some(SEND)))
                    .await
                    .expect("create_topics")
                {
                    r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
                }
            }
        }
        name
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("topic.metadata.refresh.interval.ms", "500");
        config
    }
}

async fn repeated_headers_follow_w3c(broker: Broker) {
    let topic = broker.topic().await;
    let producer: FutureProducer = broker
        .config()
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer");
    for (i, headers) in messages().iter().enumerate() {
        let owned = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        });
        let payload = format!("message {i}");
        producer
            .send(
                FutureRecord::to(&topic)
                    .payload(&payload)
                    .key("k")
                    .headers(owned),
                SEND,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }

    let consumer: StreamConsumer = broker
        .config()
        .set("group.id", unique("headers-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let spans = SpanCollector::new();
    let telemetry = Telemetry::builder("kafka-headers")
        .collector(&spans)
        .build()
        .expect("telemetry");
    let mut forwarded = Vec::new();
    for (i, sent) in messages().iter().enumerate() {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("a message in time")
            .expect("a message");
        assert_eq!(message.payload(), Some(format!("message {i}").as_bytes()));
        let headers = message.headers().expect("headers");
        // The broker kept every header, in order.
        let received: Vec<(String, String)> = rdkafka::message::Headers::iter(headers)
            .map(|h| {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                (h.key.to_owned(), value)
            })
            .collect();
        let want: Vec<(String, String)> = sent
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(received, want, "message {i}");
        forwarded.push(process_and_forward(&telemetry, i, "kafka", &topic, headers));
    }
    assert_w3c(&spans.records(), &topic, &forwarded);
}

mod mock {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_headers_follow_w3c() {
        super::repeated_headers_follow_w3c(super::Broker::mock()).await
    }
}

mod tansu {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_headers_follow_w3c() {
        super::repeated_headers_follow_w3c(super::Broker::tansu()).await
    }
}
