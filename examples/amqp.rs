//! Minimal RabbitMQ example: the wrapper calls you add to existing lapin code.
//!
//! Needs a RabbitMQ on `amqp://guest:guest@127.0.0.1:5672/%2f` (or set
//! `TRACEHOP_AMQP_URL`):
//!
//! ```text
//! cargo run --example amqp --features amqp
//! ```
//!
//! It prints the finished spans as JSON lines (tracehop's journal, on standard output by
//! default): `publish amq.default` from the gateway, then `process <queue>` in the worker,
//! a child of the publish span in the same trace.

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tracehop::amqp::{TracedChannel, TracedConsumer};
use tracehop::{OnFailure, Telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TRACEHOP_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let queue = format!("tracehop-example-{}", std::process::id());
    let setup = connection.create_channel().await?;
    let mut expires = FieldTable::default();
    expires.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            expires,
        )
        .await?;

    // Producer: your channel, wrapped. `basic_publish` takes the same arguments; the
    // message now carries the trace in its headers, and with publisher confirms the span
    // ends at the broker's ack.
    let gateway = Telemetry::builder("gateway").build()?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let channel = TracedChannel::new(channel, gateway.clone()); // + tracehop
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"plan a trip",
            BasicProperties::default(),
        )
        .await?
        .await?;

    // Consumer: your consumer, wrapped. The handler runs inside a `process` span that is a
    // child of the producer's span; the delivery is acked after it succeeds and nacked
    // (dead-lettered, if the queue has a dead-letter exchange) after it fails.
    let worker = Telemetry::builder("worker").build()?;
    let consumer = connection
        .create_channel()
        .await?
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    TracedConsumer::new(consumer, worker.clone()) // + tracehop
        .on_failure(OnFailure::dead_letter())
        .limit(1)
        .run(|delivery| async move {
            eprintln!(
                "worker handled {:?}",
                String::from_utf8_lossy(&delivery.data)
            );
            Ok::<_, std::io::Error>(())
        })
        .await?;

    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    // Write every span before exiting.
    gateway.shutdown()?;
    worker.shutdown()?;
    Ok(())
}
