//! Minimal Kafka example: the two wrapper calls you add to existing rdkafka code.
//!
//! Runs against rdkafka's in-process `MockCluster`, so it needs no broker:
//!
//! ```text
//! cargo run --example kafka --features kafka
//! ```
//!
//! It prints the finished spans as JSON lines (tracehop's journal, on standard output by
//! default): `send tasks` from the gateway, then `process tasks` in the worker, a child
//! of the send span in the same trace.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use tracehop::kafka::{TracedConsumer, TracedProducer};
use tracehop::Telemetry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("tasks", 1, 1)?;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", cluster.bootstrap_servers());

    // Producer: your FutureProducer, wrapped. `send` takes the same record and returns the
    // same result; the record now carries the trace in its headers.
    let gateway = Telemetry::builder("gateway").build()?;
    let producer: FutureProducer = config.create()?;
    let producer = TracedProducer::new(producer, gateway.clone()); // + tracehop
    let sent = producer
        .send(
            FutureRecord::to("tasks")
                .key("run-1")
                .payload("plan a trip"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    eprintln!(
        "gateway sent offset {} in trace {}",
        sent.offset,
        sent.trace_id()
    );

    // Consumer: your StreamConsumer, wrapped. The handler runs inside a `process` span that
    // is a child of the producer's span; the offset is committed after it succeeds.
    let worker = Telemetry::builder("worker").build()?;
    config
        .set("group.id", "workers")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&["tasks"])?;
    let mut consumer = TracedConsumer::new(consumer, worker.clone()) // + tracehop
        .group_id("workers")
        .limit(1);
    consumer
        .run(|task| async move {
            let body = task.payload_view::<str>().and_then(Result::ok);
            eprintln!("worker handled {body:?}");
            Ok::<_, std::io::Error>(())
        })
        .await?;

    // Write every span before exiting; leave the group off the async worker.
    consumer.close().await;
    gateway.shutdown()?;
    worker.shutdown()?;
    Ok(())
}
