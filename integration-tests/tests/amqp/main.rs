#![cfg(feature = "amqp")]
//! The RabbitMQ adapter against a real broker (`TRACEHOP_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), split by behaviour:
//!
//! - [`chain`]: hops across queues and exchanges form one trace; link mode;
//! - [`headers`]: user headers and their types, context written by other clients,
//!   missing or bad context, reading header values;
//! - [`failures`]: dead-lettering, `x-death` attempts, requeued redeliveries, a panicking
//!   handler;
//! - [`rpc`]: request/reply over direct reply-to;
//! - [`confirms`]: publisher confirms end the send span;
//! - [`lifecycle`]: how a consume loop ends (cancel, stop signal, limit, a channel gone).
//!
//! This file holds the AMQP-only setup; span assertions are the shared ones in
//! `tracehop_integration_tests::spans`. Every test declares its own uniquely named queues
//! (with `x-expires`, and deletes them at the end) so tests run in parallel and rerun
//! cleanly.

mod chain;
mod confirms;
mod failures;
mod headers;
mod lifecycle;
mod metrics;
mod rpc;

use std::fmt;
use std::future::{ready, Future, Ready};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracehop::amqp::{TracedChannel, TracedConsumer};
use tracehop::{ConsumeError, Summary, Telemetry};
use tracehop_integration_tests::{amqp_url, finish, unique};

/// Connect, retrying for up to 30 s while the broker starts.
async fn connect() -> Connection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("RabbitMQ at {} not ready ({e}); retrying", amqp_url());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot connect to RabbitMQ at {}: {e}", amqp_url()),
        }
    }
}

async fn channel(connection: &Connection) -> Channel {
    connection.create_channel().await.expect("channel")
}

/// A channel with publisher confirms on.
async fn confirm_channel(connection: &Connection) -> Channel {
    let ch = channel(connection).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    ch
}

/// A channel on which the broker sends a consumer at most `prefetch` unacked deliveries.
async fn prefetch_channel(connection: &Connection, prefetch: u16) -> Channel {
    let ch = channel(connection).await;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("basic_qos");
    ch
}

/// A test's own connection, an admin channel (publisher confirms on) and a uniquely
/// named queue declared on it.
struct TestQueue {
    connection: Connection,
    admin: Channel,
    name: String,
}

impl TestQueue {
    /// Connect and declare a queue named after `prefix`, with no arguments.
    async fn declare(prefix: &str) -> TestQueue {
        let connection = connect().await;
        let admin = confirm_channel(&connection).await;
        let name = unique(prefix);
        declare_queue(&admin, &name, &[]).await;
        TestQueue {
            connection,
            admin,
            name,
        }
    }

    /// A new channel on the test's connection.
    async fn channel(&self) -> Channel {
        channel(&self.connection).await
    }

    /// A traced consumer of the queue on `ch`, as service `telemetry`.
    async fn consumer(&self, ch: &Channel, telemetry: &Telemetry) -> TracedConsumer {
        traced_consumer(ch, &self.name, telemetry).await
    }

    /// A traced publisher (publisher confirms on) as service `telemetry`.
    async fn publisher(&self, telemetry: &Telemetry) -> TracedChannel {
        TracedChannel::new(confirm_channel(&self.connection).await, telemetry.clone())
    }

    /// Publish to the queue without tracehop.
    async fn publish_raw(&self, payload: &[u8], properties: BasicProperties) {
        publish_raw(&self.admin, &self.name, payload, properties).await;
    }

    /// The messages ready in the queue.
    async fn ready(&self) -> u32 {
        ready_messages(&self.admin, &self.name).await
    }

    /// The name of the process spans of its deliveries.
    fn process(&self) -> String {
        process(&self.name)
    }

    async fn delete(&self) {
        delete_queues(&self.admin, &[&self.name]).await;
    }
}

/// A handler that hands every delivery to the test, and where they arrive.
fn collecting() -> (
    impl FnMut(Delivery) -> Ready<Result<(), &'static str>> + Send + 'static,
    mpsc::UnboundedReceiver<Delivery>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |delivery| ready(tx.send(delivery).map_err(|_| "test gone"));
    (handler, rx)
}

/// Declare a queue that expires two minutes after its last use, whatever happens to the
/// test, with `args` added.
async fn declare_queue(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    table.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), table)
        .await
        .expect("queue_declare");
}

/// Declare an auto-delete exchange (gone with its last binding) and bind `queue` to it.
async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, queue: &str, key: &str) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange_declare");
    ch.queue_bind(
        queue.into(),
        name.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue_bind");
}

async fn delete_queues(ch: &Channel, queues: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
}

/// The messages ready in `queue` (not counting deliveries a consumer holds unacked), by
/// a passive declare.
async fn ready_messages(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue_declare")
    .message_count()
}

/// A lapin consumer of `queue` on `ch` (manual acks).
async fn consumer(ch: &Channel, queue: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        ShortString::default(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("basic_consume")
}

/// A traced consumer of `queue` on `ch`, as service `telemetry`.
async fn traced_consumer(ch: &Channel, queue: &str, telemetry: &Telemetry) -> TracedConsumer {
    TracedConsumer::new(consumer(ch, queue).await, telemetry.clone())
}

/// Run `consumer` with `handler` in a task of its own.
fn spawn_run<F, Fut, E>(
    mut consumer: TracedConsumer,
    handler: F,
) -> JoinHandle<Result<Summary, ConsumeError<E>>>
where
    F: FnMut(Delivery) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    tokio::spawn(async move { consumer.run(handler).await })
}

/// Run `consumer` with `handler` in a task of its own that hands the consumer back when
/// the loop returns. Hold it until the test is done with the channel: a lapin consumer
/// dropped sends `basic.cancel`, after which the broker requeues the channel's unacked
/// deliveries only asynchronously when the channel closes (with the consumer still
/// registered, closing the channel requeues them before `close-ok`).
fn spawn_run_keeping<F, Fut, E>(
    mut consumer: TracedConsumer,
    handler: F,
) -> JoinHandle<(TracedConsumer, Result<Summary, ConsumeError<E>>)>
where
    F: FnMut(Delivery) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    tokio::spawn(async move {
        let ended = consumer.run(handler).await;
        (consumer, ended)
    })
}

/// Wait (bounded by [`finish`]) for a spawned consume loop to return, and its summary.
async fn finished<E: fmt::Debug>(task: JoinHandle<Result<Summary, ConsumeError<E>>>) -> Summary {
    finish(task, "consume loop")
        .await
        .expect("consume loop ended without error")
}

/// Publish `payload` with `properties` through the default exchange to `queue`, traced,
/// and wait for the broker's answer (an ack on a confirm channel).
async fn publish(
    publisher: &TracedChannel,
    queue: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Confirmation {
    publisher
        .basic_publish(
            ShortString::default(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm")
}

/// Publish `payload` with `properties` through the default exchange to `queue`, without
/// tracehop (as a foreign client would).
async fn publish_raw(ch: &Channel, queue: &str, payload: &[u8], properties: BasicProperties) {
    ch.basic_publish(
        ShortString::default(),
        queue.into(),
        BasicPublishOptions::default(),
        payload,
        properties,
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

/// The process span name of deliveries from `queue`.
fn process(queue: &str) -> String {
    format!("process {queue}")
}
