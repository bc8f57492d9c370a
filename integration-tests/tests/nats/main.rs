#![cfg(feature = "nats")]
//! NATS against a real nats-server, core and JetStream, split by behaviour: hops and
//! chains, request-reply, queue groups, headers and bad context, subscriptions (panics,
//! stop), and JetStream (acks, redeliveries, policies).

mod chain;
mod groups;
mod headers;
mod jetstream;
mod metrics;
mod request_reply;
mod subscriptions;

pub(crate) use std::collections::{BTreeMap, HashMap, HashSet};
pub(crate) use std::sync::{Arc, Mutex};
pub(crate) use std::time::Duration;

pub(crate) use async_nats::{Client, HeaderMap, HeaderValue, Message};
pub(crate) use futures_util::StreamExt;
pub(crate) use opentelemetry::context::FutureExt as _;
pub(crate) use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
pub(crate) use opentelemetry::Context;
pub(crate) use tracehop::journal::{Kind, Status};
pub(crate) use tracehop::nats::{round_trip, TracedClient, TracedSubscriber};
pub(crate) use tracehop::propagation::TRACEPARENT;
pub(crate) use tracehop::{ParentPolicy, Propagation, SpanCollector, SpanRecord, Stop, Telemetry};
pub(crate) use tracehop_integration_tests::spans::{int, named, settlement};
pub(crate) use tracehop_integration_tests::{finish, nats_url, unique, WAIT};

/// A new connection whose events (disconnects, slow consumers, server errors) are printed,
/// so a test that loses a message shows what the connection went through.
async fn connect() -> Client {
    async_nats::ConnectOptions::new()
        .event_callback(|event| async move {
            eprintln!("{:?} nats event: {event}", std::time::SystemTime::now());
        })
        .connect(nats_url())
        .await
        .expect("nats-server on TRACEHOP_NATS_URL (start it with .ci/run or docker compose)")
}

/// What each connection has sent and received, for a test that waited in vain.
fn statistics(clients: &[(&str, &Client)]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    for (name, client) in clients {
        let s = client.statistics();
        out.push_str(&format!(
            "\n  {name}: state {:?}, out {} msgs, in {} msgs, connects {}",
            client.connection_state(),
            s.out_messages.load(Relaxed),
            s.in_messages.load(Relaxed),
            s.connects.load(Relaxed),
        ));
    }
    out
}

/// `future`'s output, or a panic after [`WAIT`] that shows the connections' statistics.
async fn within<F: std::future::Future>(future: F, clients: &[(&str, &Client)]) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(out) => out,
        Err(_) => panic!(
            "nothing arrived within {WAIT:?}; connections:{}",
            statistics(clients)
        ),
    }
}

/// A service with its own connection, so hops really cross the server.
async fn service(spans: &SpanCollector, name: &str) -> TracedClient {
    let telemetry = Telemetry::builder(name)
        .collector(spans)
        .build()
        .expect("telemetry");
    TracedClient::new(connect().await, telemetry)
}

fn span<'a>(spans: &'a [SpanRecord], service: &str, name: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| {
            s.service_name.as_deref() == Some(service) && s.operation_name.as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("no span {service}/{name} in {spans:#?}"))
}

/// The messages on `sub` up to its limit (a core NATS limit also ends the subscription),
/// published by `producer`, handled by the consume loop with a handler that succeeds;
/// their process spans have ended.
async fn deliveries(
    sub: &mut TracedSubscriber,
    producer: &TracedClient,
    consumer: &TracedClient,
) -> Vec<Message> {
    let mut got = Vec::new();
    let summary = within(
        sub.run(|message| {
            got.push(message);
            async { Ok::<(), String>(()) }
        }),
        &[
            ("producer", producer.client()),
            ("consumer", consumer.client()),
        ],
    )
    .await
    .expect("consume");
    assert_eq!(summary.messages, got.len() as u64, "{summary:?}");
    got
}

/// The one message of a subscription with `.limit(1)`; see [`deliveries`].
async fn delivery(
    sub: &mut TracedSubscriber,
    producer: &TracedClient,
    consumer: &TracedClient,
) -> Message {
    let mut messages = deliveries(sub, producer, consumer).await;
    assert_eq!(messages.len(), 1, "one message");
    messages.remove(0)
}

/// Make sure the server has seen `client`'s subscriptions before anyone publishes.
async fn ready(client: &TracedClient) {
    client.round_trip().await.expect("round trip");
}
