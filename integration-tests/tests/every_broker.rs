#![cfg(all(feature = "kafka", feature = "nats", feature = "amqp"))]
//! One consumer shape on every broker: a scenario written once over the core consume API
//! (`tracehop::Consumer`), driven on Kafka (tansu), NATS JetStream and RabbitMQ, asserting
//! the same trace shape, limit, stop and summary on all three.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tracehop::journal::{Kind, Status};
use tracehop::messaging::consume::Source;
use tracehop::{Consumer, SpanCollector, SpanRecord, Stop, Telemetry};
use tracehop_integration_tests::spans::{assert_child, attempt, service, settlement};
use tracehop_integration_tests::{amqp_url, kafka_brokers, nats_url, unique, WAIT};

/// What the scenario needs from a broker: somewhere to publish to, a traced producer, and
/// a traced consumer of that destination. Everything else is the one consumer API.
trait Broker {
    type Source: Source;
    /// What a settled-as-done and a redelivered message are recorded as.
    const DONE: &'static str;
    const REDELIVER: &'static str;

    /// The destination named on process spans.
    fn destination(&self) -> String;
    /// Publish `body` through the broker's traced producer as `from`.
    async fn publish(&self, from: &Telemetry, body: &str);
    /// A traced consumer of the destination, as `telemetry`.
    async fn consumer(&self, telemetry: Telemetry) -> Consumer<Self::Source>;
    /// The body of a consumed message.
    fn body(message: &<Self::Source as Source>::Message) -> String;
}

/// The scenario, once for every broker.
async fn every_broker_scenario<B: Broker>(broker: B) {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer");
    let worker = service(&spans, "worker");
    for i in 0..4 {
        broker.publish(&producer, &format!("m{i}")).await;
    }
    let stop = Stop::new();
    let mut consumer = broker.consumer(worker).await.limit(5).stop_on(&stop);

    // m2 fails on its first delivery; the default policy gives it back to the broker,
    // which delivers it again: five deliveries settle four messages.
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed_once = Arc::new(Mutex::new(false));
    let handler = {
        let (handled, failed_once, stop) = (handled.clone(), failed_once.clone(), stop.clone());
        move |message: <B::Source as Source>::Message| {
            let body = B::body(&message);
            let (handled, failed_once, stop) = (handled.clone(), failed_once.clone(), stop.clone());
            async move {
                if body == "m2" && !std::mem::replace(&mut *failed_once.lock().unwrap(), true) {
                    return Err(format!("{body} failed once"));
                }
                if body == "m4" {
                    stop.stop();
                }
                handled.lock().unwrap().push(body);
                Ok(())
            }
        }
    };
    let summary = tokio::time::timeout(WAIT, consumer.run(handler.clone()))
        .await
        .expect("the limit ends the loop")
        .expect("consume");
    assert_eq!(
        (
            summary.messages,
            summary.succeeded,
            summary.failed,
            summary.panicked
        ),
        (5, 4, 1, 0),
        "{summary:?}"
    );
    let mut bodies = handled.lock().unwrap().clone();
    bodies.sort();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3"]);

    // The limit took five deliveries and left the rest: m4, published now, is the next.
    // Its handler fires the stop signal: the loop returns after it, well before its limit.
    broker.publish(&producer, "m4").await;
    let summary = tokio::time::timeout(WAIT, consumer.run(handler.clone()))
        .await
        .expect("the stop ends the loop")
        .expect("consume");
    assert_eq!((summary.messages, summary.succeeded), (1, 1), "{summary:?}");
    // Stopped: a further run returns at once, taking nothing.
    let summary = tokio::time::timeout(WAIT, consumer.run(handler))
        .await
        .expect("a stopped loop returns at once")
        .expect("consume");
    assert_eq!(summary.messages, 0);

    // The same trace shape everywhere: one trace per message, each delivery a child of
    // its message's send span, attempts counted, settlements recorded.
    let records = spans.records();
    let process_name = format!("process {}", broker.destination());
    let sends: Vec<&SpanRecord> = records
        .iter()
        .filter(|s| s.span_kind == Some(Kind::Producer))
        .collect();
    assert_eq!(sends.len(), 5, "{records:#?}");
    let processes: Vec<&SpanRecord> = records
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(process_name.as_str()))
        .collect();
    assert_eq!(processes.len(), 6, "{records:#?}");
    for process in &processes {
        assert_eq!(process.span_kind, Some(Kind::Consumer));
        assert_eq!(process.service_name.as_deref(), Some("worker"));
        let send = sends
            .iter()
            .find(|s| Some(&s.span_id) == process.parent_span_id.as_ref())
            .unwrap_or_else(|| panic!("{process:#?} is the child of a send span"));
        assert_child(process, send);
    }
    let mut traces: Vec<&str> = processes.iter().map(|p| p.trace_id.as_str()).collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), 5, "one trace per message");
    let (failed, ok): (Vec<&SpanRecord>, Vec<&SpanRecord>) =
        processes.iter().partition(|p| p.status == Status::Error);
    assert_eq!(failed.len(), 1);
    let failed = failed[0];
    assert_eq!(failed.error.as_deref(), Some("m2 failed once"));
    assert_eq!(failed.attribute_str("error.type"), Some("string"));
    assert_eq!(settlement(failed), Some(B::REDELIVER));
    assert_eq!(attempt(failed), Some(1));
    let retried: Vec<&&SpanRecord> = ok
        .iter()
        .filter(|p| p.trace_id == failed.trace_id)
        .collect();
    assert_eq!(retried.len(), 1, "m2's redelivery is in m2's trace");
    assert_eq!(attempt(retried[0]), Some(2));
    assert_eq!(retried[0].parent_span_id, failed.parent_span_id);
    for p in &ok {
        assert_eq!(settlement(p), Some(B::DONE), "{p:#?}");
        if p.trace_id != failed.trace_id {
            assert_eq!(attempt(p), Some(1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Kafka (tansu)

struct Kafka {
    topic: String,
    config: ClientConfig,
    producer: FutureProducer,
}

impl Kafka {
    async fn new() -> Kafka {
        let topic = unique("every.kafka");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", kafka_brokers())
            .set("linger.ms", "0")
            .set("fetch.wait.max.ms", "20");
        let admin: AdminClient<DefaultClientContext> = config.create().expect("admin");
        let created = admin
            .create_topics(
                &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .expect("create topic (is tansu on TRACEHOP_KAFKA_BROKERS?)");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        let producer = config.create().expect("producer");
        Kafka {
            topic,
            config,
            producer,
        }
    }
}

impl Broker for Kafka {
    type Source = tracehop::kafka::KafkaSource;
    const DONE: &'static str = "commit";
    const REDELIVER: &'static str = "seek";

    fn destination(&self) -> String {
        self.topic.clone()
    }

    async fn publish(&self, from: &Telemetry, body: &str) {
        tracehop::kafka::TracedProducer::new(self.producer.clone(), from.clone())
            .send(
                FutureRecord::<(), _>::to(&self.topic).payload(body),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("send");
    }

    async fn consumer(&self, telemetry: Telemetry) -> Consumer<Self::Source> {
        let consumer: StreamConsumer = self
            .config
            .clone()
            .set("group.id", unique("every"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(&self.topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&partitions).expect("assign");
        tracehop::kafka::TracedConsumer::new(consumer, telemetry)
    }

    fn body(message: &rdkafka::message::OwnedMessage) -> String {
        String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------
// NATS JetStream

struct JetStream {
    js: jetstream::Context,
    stream: String,
    subject: String,
}

impl JetStream {
    async fn new() -> JetStream {
        let client = async_nats::connect(nats_url()).await.expect("nats-server");
        let js = jetstream::new(client);
        let stream = unique("EVERY");
        let subject = format!("every.{stream}");
        js.create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("create stream");
        JetStream {
            js,
            stream,
            subject,
        }
    }
}

impl Drop for JetStream {
    fn drop(&mut self) {
        let (js, stream) = (self.js.clone(), self.stream.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { js.delete_stream(&stream).await });
        }
    }
}

type JetStreamMessages =
    tracehop::nats::JetStreamMessages<async_nats::jetstream::consumer::pull::Stream>;

impl Broker for JetStream {
    type Source = JetStreamMessages;
    const DONE: &'static str = "ack";
    const REDELIVER: &'static str = "nak";

    fn destination(&self) -> String {
        self.subject.clone()
    }

    async fn publish(&self, from: &Telemetry, body: &str) {
        tracehop::nats::TracedJetStream::new(self.js.clone(), from.clone())
            .publish(self.subject.clone(), body.to_owned().into())
            .await
            .expect("publish");
    }

    async fn consumer(&self, telemetry: Telemetry) -> Consumer<Self::Source> {
        let stream = self.js.get_stream(&self.stream).await.expect("stream");
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(unique("every")),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let messages = consumer.messages().await.expect("messages");
        tracehop::nats::TracedJetStream::new(self.js.clone(), telemetry).messages(messages)
    }

    fn body(message: &jetstream::Message) -> String {
        String::from_utf8_lossy(&message.payload).into_owned()
    }
}

// ---------------------------------------------------------------------------------------
// RabbitMQ

struct Rabbit {
    connection: Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Rabbit {
    async fn new() -> Rabbit {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ on TRACEHOP_AMQP_URL");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let queue = unique("every.amqp");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
        Rabbit {
            connection,
            channel,
            queue,
        }
    }

    async fn delete(&self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

impl Broker for Rabbit {
    type Source = tracehop::amqp::Deliveries;
    const DONE: &'static str = "ack";
    const REDELIVER: &'static str = "nack_requeue";

    fn destination(&self) -> String {
        self.queue.clone()
    }

    async fn publish(&self, from: &Telemetry, body: &str) {
        tracehop::amqp::TracedChannel::new(self.channel.clone(), from.clone())
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    async fn consumer(&self, telemetry: Telemetry) -> Consumer<Self::Source> {
        let channel = self.connection.create_channel().await.expect("channel");
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        tracehop::amqp::TracedConsumer::new(consumer, telemetry)
    }

    fn body(message: &lapin::message::Delivery) -> String {
        String::from_utf8_lossy(&message.data).into_owned()
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_kafka_tansu() {
    every_broker_scenario(Kafka::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_nats_jetstream() {
    every_broker_scenario(JetStream::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_rabbitmq() {
    let rabbit = Rabbit::new().await;
    every_broker_scenario(&rabbit).await;
    rabbit.delete().await;
}

impl<B: Broker> Broker for &B {
    type Source = B::Source;
    const DONE: &'static str = B::DONE;
    const REDELIVER: &'static str = B::REDELIVER;

    fn destination(&self) -> String {
        (**self).destination()
    }

    async fn publish(&self, from: &Telemetry, body: &str) {
        (**self).publish(from, body).await
    }

    async fn consumer(&self, telemetry: Telemetry) -> Consumer<Self::Source> {
        (**self).consumer(telemetry).await
    }

    fn body(message: &<Self::Source as Source>::Message) -> String {
        B::body(message)
    }
}
