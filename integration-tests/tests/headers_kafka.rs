//! Repeated context headers and a `tracestate` with duplicate keys, sent by a plain
//! rdkafka producer and read back with `Telemetry::process_span` from what a plain
//! consumer received: once against `rdkafka::mocking::MockCluster` (module `mock`) and
//! once against the broker at `TRACEHOP_KAFKA_BROKERS` (module `tansu`).
#![cfg(feature = "kafka")]

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use opentelemetry::baggage::BaggageExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tracehop::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE};
use tracehop::{Incoming, Outgoing, SpanCollector, Telemetry};
use tracehop_integration_tests::{kafka_brokers, unique, WAIT};

const SEND: Duration = Duration::from_secs(10);
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_TP: &str = "00-11111111111111111111111111111111-2222222222222222-01";

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

/// The headers of each message, in order, repeats included.
fn messages() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        // 0: two traceparents (the same one twice would be no better).
        vec![(TRACEPARENT, TP), ("user", "u"), (TRACEPARENT, OTHER_TP)],
        // 1: tracestate and baggage split over several headers.
        vec![
            (TRACEPARENT, TP),
            (TRACESTATE, "a=1,b=2"),
            (BAGGAGE, "k1=v1"),
            (TRACESTATE, "c=3"),
            (BAGGAGE, "k2=v2,k3=v3"),
            (TRACESTATE, "d=4,e=5"),
        ],
        // 2: a tracestate with a key twice.
        vec![(TRACEPARENT, TP), (TRACESTATE, "foo=1,foo=2")],
        // 3: the same key in two tracestate headers.
        vec![
            (TRACEPARENT, TP),
            (TRACESTATE, "foo=1"),
            (TRACESTATE, "foo=2"),
        ],
    ]
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
        let process = telemetry.process_span(Incoming::new("kafka", &topic), headers);
        if i == 1 {
            let baggage = process.context().baggage();
            let mut members: Vec<String> = baggage
                .iter()
                .map(|(k, (v, _))| format!("{k}={v}"))
                .collect();
            members.sort();
            assert_eq!(members, ["k1=v1", "k2=v2", "k3=v3"]);
        }
        // What a send from inside the handler carries on.
        let mut out: HashMap<String, String> = HashMap::new();
        process.in_scope(|| {
            telemetry
                .send_span(Outgoing::new("kafka", "next"), &mut out)
                .end()
        });
        forwarded.push(out);
        process.end();
    }

    let records = spans.records();
    let process: Vec<_> = records
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(&*format!("process {topic}")))
        .collect();
    assert_eq!(process.len(), 4);
    // 0: a new trace, and why.
    assert_eq!(process[0].parent_span_id, None);
    assert_ne!(process[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        process[0].attribute_str("tracehop.context.rejected"),
        Some("traceparent is repeated")
    );
    // 1: continued, with every tracestate member in order.
    assert_eq!(
        process[1].parent_span_id.as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(
        forwarded[1].get(TRACESTATE).map(String::as_str),
        Some("a=1,b=2,c=3,d=4,e=5")
    );
    assert!(
        forwarded[1][BAGGAGE].contains("k2=v2"),
        "{:?}",
        forwarded[1]
    );
    // 2 and 3: continued without the tracestate, which is not forwarded.
    for (p, out) in process[2..].iter().zip(&forwarded[2..]) {
        assert_eq!(p.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(
            p.attribute_str("tracehop.context.discarded"),
            Some("tracestate has duplicate keys")
        );
        assert_eq!(out.get(TRACESTATE), None, "{out:?}");
        assert!(out[TRACEPARENT].contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    }
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

#[test]
fn the_scenarios_cover_what_they_claim() {
    // Guard against an edit that makes a case vacuous: the traceparents are valid (so a
    // rejection is for the repeat), and the repeats are there.
    use tracehop::propagation::traceparent::validate;
    assert!(validate(TP.as_bytes()).is_ok() && validate(OTHER_TP.as_bytes()).is_ok());
    let m = messages();
    assert_eq!(m[0].iter().filter(|(k, _)| *k == TRACEPARENT).count(), 2);
    assert_eq!(m[1].iter().filter(|(k, _)| *k == TRACESTATE).count(), 3);
    assert_eq!(m[3].iter().filter(|(k, _)| *k == TRACESTATE).count(), 2);
}
