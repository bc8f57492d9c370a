//! The NATS wrapper calls you add to existing async-nats code: publish and subscribe,
//! request-reply, and a JetStream consumer that retries once. Each call below that goes
//! through `TracedClient` or `TracedJetStream` is the only change to plain async-nats code.
//!
//! Needs nats-server with JetStream on 127.0.0.1:4222 (`nats-server -js`, or
//! `docker compose up nats`), or set `TRACEHOP_NATS_URL`.
//!
//! ```text
//! cargo run --features nats --example nats
//! ```
//!
//! The spans are printed as JSON lines, one per finished span (set `TRACEHOP_JOURNAL` to a
//! path to write them to a file instead, then `tracehop tree <file>`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use tracehop::nats::{TracedClient, TracedJetStream};
use tracehop::{OnFailure, Telemetry};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("TRACEHOP_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into());
    let client = async_nats::connect(url).await?;
    let subject = |name: &str| format!("tracehop.example.{}.{name}", std::process::id());

    // One wrapper per service: the client you already have, plus a telemetry handle.
    let gateway = TracedClient::new(client.clone(), Telemetry::builder("gateway").build()?);
    let worker = TracedClient::new(client.clone(), Telemetry::builder("worker").build()?);

    // Subscribe: `client.subscribe(s)` becomes `worker.subscribe(s)`, and the loop body
    // becomes a handler that runs inside a `process` span.
    let mut jobs = worker.subscribe(subject("jobs")).await?.limit(1);
    let mut echo = worker.subscribe(subject("echo")).await?.limit(1);
    // Wait until the server has the subscriptions (async-nats' `flush` does not), so a
    // message published from any connection from now on reaches them.
    worker.round_trip().await?;
    let consume = tokio::spawn(async move {
        jobs.run(|message| async move {
            println!("# worker got {:?}", message.payload);
            Ok::<(), Error>(())
        })
        .await
    });
    let responder = worker.clone();
    let respond = tokio::spawn(async move {
        echo.run(move |request| {
            let responder = responder.clone();
            // `client.publish(request.reply, ..)` becomes `respond(&request, ..)`.
            async move { responder.respond(&request, request.payload.clone()).await }
        })
        .await
    });

    // Publish and request: `client.publish` / `client.request` become `gateway.…`.
    gateway
        .publish(subject("jobs"), "resize image 7".into())
        .await?;
    let reply = gateway.request(subject("echo"), "ping".into()).await?;
    println!(
        "# gateway got reply {:?} in trace {}",
        reply.payload,
        reply.trace_id()
    );
    consume.await??;
    respond.await??;

    // JetStream: publish waits for the stream's ack; the consumer's handler fails on the
    // first delivery, the message is nak'ed, and the redelivery succeeds. Both deliveries
    // are process spans under the one publish span.
    let name = format!("TRACEHOP_EXAMPLE_{}", std::process::id());
    let js = jetstream::new(client.clone());
    let orders = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject("orders")],
            ..Default::default()
        })
        .await?;
    let consumer = orders
        .create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            ..Default::default()
        })
        .await?;
    let ack = TracedJetStream::new(js.clone(), gateway.telemetry().clone())
        .publish(subject("orders"), "order 42".into())
        .await?;
    println!("# stored as {} #{}", ack.stream, ack.sequence);
    let summary = TracedJetStream::new(js.clone(), worker.telemetry().clone())
        .messages(consumer.messages().await?)
        .on_failure(OnFailure::nak_after(Duration::from_millis(50)))
        .limit(2)
        .run(|message| async move {
            match message.info()?.delivered {
                1 => Err::<(), Error>("inventory service unavailable".into()),
                _ => Ok(()),
            }
        })
        .await?;
    println!("# {summary:?}");
    js.delete_stream(&name).await?;

    gateway.telemetry().shutdown()?;
    worker.telemetry().shutdown()?;
    Ok(())
}
