//! # tracehop
//!
//! Keep one distributed trace intact across message queues.
//!
//! A message is a hop. The producer side opens a *send* span and writes the current
//! context into the message's headers; the consumer side reads the headers, opens a
//! *process* span whose parent is that send span, and runs your handler inside it.
//! Everything the handler does — its own spans, further sends — nests under the process
//! span, so a run that crosses many services and brokers is one trace tree.
//!
//! ```
//! use std::collections::HashMap;
//! use tracehop::{Incoming, Outgoing, SpanCollector, Telemetry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spans = SpanCollector::new();
//! let gateway = Telemetry::builder("gateway").collector(&spans).build()?;
//! let worker = Telemetry::builder("worker").collector(&spans).build()?;
//!
//! // Producer: open a send span and write its context into the message headers.
//! let mut headers: HashMap<String, String> = HashMap::new();
//! let send = gateway.send_span(Outgoing::new("kafka", "tasks"), &mut headers);
//! send.end();
//!
//! // Consumer: read the headers and run the handler inside a child process span.
//! let process = worker.process_span(Incoming::new("kafka", "tasks"), &headers);
//! let outcome: Result<(), std::io::Error> = process.run(async { Ok(()) }).await;
//! process.end();
//! outcome?;
//!
//! let records = spans.records();
//! assert_eq!(records[0].trace_id, records[1].trace_id);
//! assert_eq!(records[1].parent_span_id.as_deref(), Some(records[0].span_id.as_str()));
//! # Ok(()) }
//! ```
//!
//! # Quick start per broker
//!
//! Wrap producers before publish, wrap consumers around handlers; the rest of the client
//! code stays as it is. Every traced consumer is the one [`Consumer`] over its broker's
//! client, with the same builder methods (`limit`, `stop_on`, `on_failure`,
//! `parent_policy`), the same `run(handler)` returning a [`Summary`] or a
//! [`ConsumeError`], and the same answer to a failing or panicking handler (recorded on the
//! process span, the message settled by the [`OnFailure`] policy, the loop goes on).
//!
//! | feature | producer | consumer | more |
//! |---|---|---|---|
//! | `kafka` (rdkafka) | `kafka::TracedProducer::new(future_producer, telemetry)` then `.send(record, timeout)` | `kafka::TracedConsumer::new(stream_consumer, telemetry).run(handler)` | retry and dead-letter topics (`forward_with`), `run_batches`, `TracingProducerContext` for `BaseProducer`/`ThreadedProducer` |
//! | `nats` (async-nats) | `nats::TracedClient::new(client, telemetry).publish(subject, payload)` | `client.subscribe(subject).await?.run(handler)` | `request`/`respond` round trips, `nats::TracedJetStream` publish with ack and `messages(stream).run(handler)` with nak/term policies |
//! | `amqp` (lapin) | `amqp::TracedChannel::new(channel, telemetry).basic_publish(..)` | `amqp::TracedConsumer::new(consumer, telemetry).run(handler)` | dead-lettering, `amqp::RpcClient` |
//!
//! Each adapter's module documentation has a complete example, its span names and its
//! attributes; `examples/` has a runnable one per broker and the article's multi-agent
//! run (`cargo run --example agent_pipeline --features full`). [`context`] has your own
//! spans ([`Telemetry::in_span`]) and baggage.
//!
//! # Where spans go
//!
//! Spans go to a JSON-lines [`journal`] by default and, with the `otlp` feature, to any
//! OpenTelemetry collector. The [`verify`] module and the `tracehop` command line tool
//! read journals back, draw the trace tree and report where a trace broke; with the
//! `testing` feature, `testing::Capture` asserts in one line that a test's run is one
//! unbroken trace.
//!
//! # Features
//!
//! `kafka`, `nats`, `amqp`: the adapters. `otlp` (and `otlp-tls` for HTTPS): OTLP export.
//! `testing`: in-memory capture and trace assertions. `cli` (default): the `tracehop`
//! binary. `full`: all of them.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![warn(rust_2018_idioms, missing_debug_implementations)]

pub mod context;
mod error;
mod export;
mod hex;
pub mod journal;
pub mod messaging;
pub mod metrics;
pub mod propagation;
mod telemetry;
pub(crate) mod time;
pub mod verify;

#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use error::{Error, Result};
pub use journal::{Journal, JournalStats, SpanCollector, SpanRecord};
pub use messaging::consume::{
    Batch, BatchOptions, ConsumeError, Consumer, Decision, Failure, FailurePolicy, OnFailure, Stop,
    Summary,
};
pub use messaging::{
    BatchSpan, Incoming, Outgoing, ParentPolicy, ProcessOutcome, ProcessSpan, SendSpan, Sent,
};
pub use propagation::{AsciiValue, Extracted, Propagation, ReadCarrier, Rejection, WriteCarrier};
pub use telemetry::{Telemetry, TelemetryBuilder};

/// Re-exports of the OpenTelemetry crates tracehop is built on, at the pinned version.
pub mod otel {
    pub use opentelemetry::*;
    pub use opentelemetry_sdk as sdk;
}
