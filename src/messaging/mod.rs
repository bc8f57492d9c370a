//! The broker-agnostic heart: send and process spans, parent policy, running a handler
//! inside its span and recording the outcome, delivery attempts, queue time, reply spans,
//! and [the one consume loop](consume) every broker's consumer runs through.
//!
//! A broker adapter describes a message with [`Outgoing`] or [`Incoming`] (destination,
//! attributes it knows) and hands the core a header carrier; the core opens the span,
//! injects or extracts context, and records what happened. For consuming it hands the
//! core a [`Source`](consume::Source) of deliveries and how to
//! [`Settle`](consume::Settle) one; [`Consumer`](consume::Consumer) does the rest.
//!
//! ```
//! use std::collections::HashMap;
//! use tracehop::{Incoming, Outgoing, SpanCollector, Telemetry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tracehop::Result<()> {
//! let spans = SpanCollector::new();
//! let telemetry = Telemetry::builder("svc").collector(&spans).build()?;
//! let mut headers = HashMap::<String, String>::new();
//! telemetry
//!     .send_span(Outgoing::new("nats", "jobs").body_size(5), &mut headers)
//!     .end();
//! let process = telemetry.process_span(Incoming::new("nats", "jobs").attempt(2), &headers);
//! let outcome: Result<(), String> = process.run(async { Err("boom".to_string()) }).await;
//! process.end();
//! assert!(outcome.is_err());
//! let records = spans.records();
//! assert_eq!(records[1].operation_name.as_deref(), Some("process jobs"));
//! assert_eq!(records[1].status, tracehop::journal::Status::Error);
//! # Ok(()) }
//! ```

pub mod attributes;
mod batch;
pub mod consume;
mod describe;
mod hooks;
pub(crate) mod names;
mod process;
mod recorded;
mod sampling;
mod send;
mod sending;
mod spans;

pub use batch::BatchSpan;
pub(crate) use describe::recycle_attributes;
#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(unused_imports))]
pub(crate) use describe::Describe;
pub use describe::{Incoming, Outgoing, ParentPolicy};
pub use hooks::{HeaderCapture, Hooks, MessageRef, Operation};
#[cfg_attr(not(any(feature = "kafka", feature = "nats")), allow(unused_imports))]
pub(crate) use process::snake_case;
pub(crate) use process::{error_type_name, record_error_on};
pub use process::{ProcessOutcome, ProcessSpan};
#[cfg_attr(
    not(any(feature = "kafka", feature = "nats", feature = "amqp")),
    allow(unused_imports)
)]
pub(crate) use send::Target;
pub use send::{SendSpan, Sent};
#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(unused_imports))]
pub(crate) use sending::Sending;

/// Add the attributes every messaging span has to `to`: `messaging.system`,
/// `messaging.destination.name`, `messaging.operation.type` and `messaging.operation.name`.
#[inline]
pub(crate) fn push_common_attributes(
    to: &mut Vec<opentelemetry::KeyValue>,
    system: &'static str,
    destination: impl Into<opentelemetry::Value>,
    operation_type: &'static str,
    operation_name: &'static str,
) {
    use opentelemetry::KeyValue;
    // One at a time, not `extend` from an array: the array would be built on the stack
    // and copied into the vector.
    to.push(KeyValue::new(attributes::MESSAGING_SYSTEM, system));
    to.push(KeyValue::new(
        attributes::MESSAGING_DESTINATION_NAME,
        destination,
    ));
    to.push(KeyValue::new(
        attributes::MESSAGING_OPERATION_TYPE,
        operation_type,
    ));
    to.push(KeyValue::new(
        attributes::MESSAGING_OPERATION_NAME,
        operation_name,
    ));
}

/// A span name, `<operation> <destination>` (`send tasks`, `process tasks`), or the
/// operation alone for a temporary destination.
pub(crate) fn span_name(operation: &str, destination: &str, temporary: bool) -> String {
    if temporary {
        return operation.to_owned();
    }
    let mut name = String::with_capacity(operation.len() + 1 + destination.len());
    name.push_str(operation);
    name.push(' ');
    name.push_str(destination);
    name
}
