//! The Kafka adapter (feature `kafka`): `rdkafka` producers and consumers whose every hop
//! is one parent-child step in the trace.
//!
//! This module owns what is particular to Kafka, and nothing else: reading and writing
//! record headers ([`carrier`](#headers)), the attributes a Kafka message exposes
//! (topic, partition, offset, key, consumer group, client id, body size, tombstones,
//! the record timestamp for queue time), and when offsets are committed. Spans and
//! context come from the core ([`Telemetry`](crate::Telemetry)).
//!
//! - [`TracedProducer`] wraps a `FutureProducer`: each send is a `send <topic>` span
//!   whose context travels in the record's headers. [`TracingProducerContext`] does the
//!   same for `BaseProducer` and `ThreadedProducer`.
//! - [`TracedConsumer`] wraps a `StreamConsumer` in the one consume loop
//!   ([`Consumer`](crate::Consumer)): your async handler runs for each message inside a
//!   `process <topic>` span, child of the producer's span; the offset is committed once the
//!   message is settled, and failures go to the [`OnFailure`](crate::OnFailure) policy
//!   (redeliver by seeking back, skip, retry in place, or [`KafkaAction::Forward`] to a
//!   retry or dead-letter topic from inside the failed span).
//! - [`run_batches`](crate::Consumer::run_batches) handles a [`Batch`] at once in one span
//!   linking every message, with a child process span per message.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rdkafka::consumer::Consumer;
//! use rdkafka::producer::FutureRecord;
//! use rdkafka::ClientConfig;
//! use tracehop::kafka::{TracedConsumer, TracedProducer};
//! use tracehop::Telemetry;
//!
//! let mut config = ClientConfig::new();
//! config.set("bootstrap.servers", "localhost:9092");
//!
//! // Producer side: the send carries the current trace.
//! let producer = TracedProducer::from_config(&config, Telemetry::builder("gateway").build()?)?;
//! producer
//!     .send(FutureRecord::to("tasks").key("run-1").payload("plan the trip"), Duration::from_secs(5))
//!     .await
//!     .map_err(|(e, _)| e)?;
//!
//! // Consumer side: each message is handled inside a child of that send span, and a send
//! // made by the handler continues the same trace.
//! let worker = Telemetry::builder("worker").build()?;
//! let tools = TracedProducer::from_config(&config, worker.clone())?;
//! config.set("group.id", "workers").set("enable.auto.commit", "false");
//! let mut consumer = TracedConsumer::from_config(&config, worker)?;
//! consumer.inner().subscribe(&["tasks"])?;
//! consumer
//!     .run(|task| {
//!         let tools = tools.clone();
//!         async move {
//!             let record = FutureRecord::<str, [u8]>::to("tool.calls")
//!                 .payload(rdkafka::Message::payload(&task).unwrap_or_default());
//!             tools.send(record, Duration::from_secs(5)).await.map_err(|(e, _)| e)
//!         }
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Headers
//!
//! Kafka headers are bytes; [`ReadCarrier`](crate::ReadCarrier) is implemented for
//! rdkafka's `BorrowedHeaders` and `OwnedHeaders`, and
//! [`WriteCarrier`](crate::WriteCarrier) for `OwnedHeaders`. A traced send keeps every
//! header the record already has, in order and byte for byte, null values included, and
//! appends the context headers (`traceparent`, `tracestate`, `baggage` when present,
//! `tracehop-sent-at`, optionally `x-trace-id` and friends). **If the record already has a
//! header with one of those names, its first occurrence is replaced in place and later
//! ones are dropped** — a record never carries two contexts. Reading takes the last header
//! of a name, as the Java client's `lastHeader` does.
//!
//! # Attributes
//!
//! Send spans: `messaging.system=kafka`, `messaging.destination.name`,
//! `messaging.destination.partition.id` (text) and `messaging.kafka.offset` once
//! delivered, `messaging.kafka.message.key` (when UTF-8), `messaging.client.id`,
//! `messaging.message.body.size`, `messaging.kafka.message.tombstone` (null payload).
//! Process spans add `messaging.consumer.group.name`, `tracehop.delivery.attempt` and
//! `tracehop.queue_time_ms`.

mod carrier;
mod consumer;
mod lag;
mod producer;
mod producer_context;
mod rewinds;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::{StringValue, Value};

use rdkafka::error::KafkaError;
use rdkafka::message::Message;

pub use consumer::{KafkaAction, KafkaDelivery, KafkaSource, TracedConsumer};
pub use lag::ConsumerLag;
pub use producer::{SendResult, TracedProducer};
pub use producer_context::{Traced, TracingProducerContext};
pub use rdkafka;

/// A batch of Kafka messages, as [`TracedConsumer::run_batches`](crate::Consumer::run_batches)
/// hands it to the handler.
pub type Batch = crate::Batch<rdkafka::message::OwnedMessage>;

use crate::messaging::attributes::{self as attr, system};
use crate::Incoming;

/// Which delivery of `message` this is, counting from 1: the `tracehop-attempt` header a
/// forwarding consumer wrote (see [`KafkaAction::Forward`]), or 1.
pub fn delivery_attempt<M: Message>(message: &M) -> u32 {
    crate::messaging::consume::delivery_attempt(&carrier::HeaderSnapshot::of(message.headers()), 0)
}

/// A name recorded on every span (client id, consumer group), shared by them rather
/// than copied per message.
fn shared(name: impl Into<String>) -> StringValue {
    StringValue::from(Arc::<str>::from(name.into()))
}

/// `messaging.destination.partition.id`: the partition number as text, without
/// formatting (or allocating) it for the first 64 partitions.
fn partition_id(partition: i32) -> Value {
    const IDS: [&str; 64] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61",
        "62", "63",
    ];
    match usize::try_from(partition).ok().and_then(|p| IDS.get(p)) {
        Some(id) => Value::from(*id),
        None => Value::from(partition.to_string()),
    }
}

/// The key's text form, when it has one.
fn key_text(key: Option<&[u8]>) -> Option<&str> {
    key.and_then(|k| std::str::from_utf8(k).ok())
}

/// A low-cardinality `error.type` for an rdkafka error: librdkafka's error code name in
/// snake case (`message_timed_out`).
fn error_type(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => crate::messaging::snake_case(&format!("{code:?}")),
        None => "kafka_error".to_owned(),
    }
}

/// How a consumed message is described to the core.
fn describe<'m, M: Message>(
    message: &'m M,
    group: Option<&StringValue>,
    client_id: Option<&StringValue>,
) -> Incoming<'m> {
    let payload = message.payload();
    // Built in place: each builder call would move the whole description.
    let mut incoming = Incoming::new(system::KAFKA, message.topic());
    incoming.push(
        attr::MESSAGING_MESSAGE_BODY_SIZE,
        payload.map_or(0, <[u8]>::len) as i64,
    );
    incoming.push(
        attr::MESSAGING_DESTINATION_PARTITION_ID,
        partition_id(message.partition()),
    );
    incoming.push(attr::MESSAGING_KAFKA_OFFSET, message.offset());
    if payload.is_none() {
        incoming.push(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true);
    }
    if let Some(key) = key_text(message.key()) {
        incoming.push(attr::MESSAGING_KAFKA_MESSAGE_KEY, key.to_owned());
    }
    if let Some(group) = group {
        incoming.push(attr::MESSAGING_CONSUMER_GROUP_NAME, group.clone());
    }
    if let Some(id) = client_id {
        incoming.push(attr::MESSAGING_CLIENT_ID, id.clone());
    }
    incoming.enqueued_at = stored_at(message);
    incoming
}

/// When the broker (or producer) timestamped `message`.
pub(crate) fn stored_at<M: Message>(message: &M) -> Option<std::time::SystemTime> {
    message
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
}
