//! The message buses of the demo: one per broker, each a thin wrapper, because every
//! broker's traced consumer is the same `tracehop::Consumer` and is run by one function.

mod amqp;
mod kafka;
mod nats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracehop::messaging::consume::Source;
use tracehop::{Consumer, Telemetry};

pub use self::amqp::AmqpBus;
pub use self::kafka::KafkaBus;
pub use self::nats::NatsBus;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// What a service does with a message body (inside the message's process span).
pub type Handler = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// A message bus: one broker, as this demo uses it.
pub trait Bus: Send + Sync {
    fn label(&self) -> String;
    /// Create the queues/topics if the broker needs that.
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<(), Error>>;
    /// Send `body` to `queue` as `from`, with trace context unless `traced` is false.
    fn send<'a>(
        &'a self,
        from: &'a Telemetry,
        queue: &'a str,
        body: Vec<u8>,
        traced: bool,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Subscribe `service` to `queue`; the returned loop runs `handler` for `count`
    /// messages, each inside its process span.
    fn consume(
        &self,
        service: Telemetry,
        queue: String,
        count: u64,
        handler: Handler,
    ) -> BoxFuture<'_, Result<BoxFuture<'static, Result<(), Error>>, Error>>;
}

/// The consume loop of every bus: `count` messages through the one traced consumer,
/// whatever the broker; `body` reads a message's payload.
pub fn run<S>(
    consumer: Consumer<S>,
    count: u64,
    handler: Handler,
    body: fn(&S::Message) -> Vec<u8>,
) -> BoxFuture<'static, Result<(), Error>>
where
    S: Source + 'static,
{
    Box::pin(async move {
        let mut consumer = consumer.limit(count);
        let summary = consumer.run(|message| handler(body(&message))).await;
        // Leave the broker cleanly before the demo tears it down (the in-process Kafka).
        consumer.close().await;
        summary?;
        Ok(())
    })
}
