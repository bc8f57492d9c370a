//! The RabbitMQ adapter: traced publishing, consuming and RPC over [`lapin`].
//!
//! This module owns what is particular to AMQP 0.9.1: reading and writing context in a
//! message's `headers` table ([below](self#headers)), describing publishes and
//! deliveries with the RabbitMQ attributes, and settling deliveries by policy. Spans and
//! context handling are the core's.
//!
//! - [`TracedChannel`] wraps a [`lapin::Channel`]: its `basic_publish` takes lapin's arguments,
//!   opens a send span and injects the context. With publisher confirms, the span ends at
//!   the broker's ack (a nack or a returned message is an error).
//! - [`TracedConsumer`] wraps a [`lapin::Consumer`] in the one consume loop
//!   ([`Consumer`](crate::Consumer)): it runs an async handler per delivery inside a
//!   process span (child of the send span, or linked with
//!   [`ParentPolicy::Link`](crate::ParentPolicy::Link)), then acks, or settles a failure
//!   as the [`OnFailure`](crate::OnFailure) policy says (nack with requeue by default, or
//!   into a dead-letter exchange). A message dead-lettered by a nack or reject is
//!   processed by the dead-letter queue's consumer in the same trace, since its headers
//!   travel with it.
//! - [`RpcClient`] and [`TracedChannel::reply`] make a request/reply round trip one trace.
//!
//! ```no_run
//! use tracehop::amqp::lapin::options::{BasicConsumeOptions, BasicPublishOptions};
//! use tracehop::amqp::lapin::types::FieldTable;
//! use tracehop::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
//! use tracehop::amqp::{TracedChannel, TracedConsumer};
//! use tracehop::{OnFailure, Telemetry};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let telemetry = Telemetry::builder("orders").build()?;
//! let connection =
//!     Connection::connect("amqp://127.0.0.1:5672/%2f", ConnectionProperties::default()).await?;
//! let channel = connection.create_channel().await?;
//!
//! // Publish: the same call, on the wrapped channel.
//! let traced = TracedChannel::new(channel.clone(), telemetry.clone());
//! traced
//!     .basic_publish(
//!         "".into(),
//!         "orders".into(),
//!         BasicPublishOptions::default(),
//!         b"order 42",
//!         BasicProperties::default(),
//!     )
//!     .await?
//!     .await?;
//!
//! // Consume: wrap the consumer and hand it the handler.
//! let consumer = channel
//!     .basic_consume(
//!         "orders".into(),
//!         "".into(),
//!         BasicConsumeOptions::default(),
//!         FieldTable::default(),
//!     )
//!     .await?;
//! TracedConsumer::new(consumer, telemetry)
//!     .on_failure(OnFailure::dead_letter())
//!     .run(|delivery| async move {
//!         println!("{} bytes", delivery.data.len());
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Names and attributes
//!
//! They follow the RabbitMQ page of the OpenTelemetry messaging conventions:
//! `messaging.system` is `rabbitmq`; on a send span `messaging.destination.name` is
//! `{exchange}:{routing_key}` (only the one that is not empty when the other is: a publish
//! through the default exchange is named by its routing key; `amq.default` when both are
//! empty), and the span is named `publish <exchange>` (`amq.default` for the default
//! exchange): the routing key is kept out of the span name (it is often per-message, as
//! with RPC replies) and also goes in `messaging.rabbitmq.destination.routing_key`. A
//! process span is named `process <queue>`, with `{exchange}:{routing_key}:{queue}` as
//! `messaging.destination.name` (empty parts left out, and the routing key when it is the
//! queue's name: a delivery through the default exchange is named by its queue), the
//! routing key, and
//! `messaging.rabbitmq.message.delivery_tag`. Both carry `messaging.message.body.size`,
//! and `messaging.message.id` and `messaging.message.conversation_id` (the correlation
//! id) when the message has them.
//!
//! AMQP things the conventions do not name:
//! - [`REDELIVERED`] (`messaging.rabbitmq.message.redelivered`): the broker's redelivered
//!   flag;
//! - `tracehop.delivery.attempt`: which delivery this is, from `x-death`, a quorum queue's
//!   `x-delivery-count` or `tracehop-attempt` (see [`attempt`]);
//! - `tracehop.settlement`: what the consumer did with the delivery (`ack`,
//!   `nack_requeue`, `nack`, `reject`, `handler` when the handler had settled it, `none`),
//!   and `tracehop.settlement.error` when the broker did not take it;
//! - `tracehop.context.dropped` (`frame_max`) on a send span whose message went out
//!   without context, because the context would have made its header frame larger than
//!   the connection's `frame_max` (see [`TracedChannel`]).
//!
//! # Headers
//!
//! Context goes in the message's `headers` table as `LongString` values (`traceparent`,
//! `tracestate`, `baggage`, `tracehop-sent-at`); your own headers are sent exactly as you
//! set them, type for type. On the way in, context headers are read whether a client wrote
//! them as long strings, short strings or byte arrays; a `traceparent` of another type
//! (an integer, a table …) is rejected with the type as the reason
//! (`tracehop.context.rejected=traceparent wrong-type:integer`), a `tracestate` or
//! `baggage` of another type is left out (`tracehop.context.discarded`). (RabbitMQ itself cannot carry a
//! short string in a table: its `s` type is a 16-bit integer, so lapin's `ShortString`
//! header values only occur in tables built locally.)

mod carrier;
mod consume;
mod frame;
mod publish;
mod rpc;

pub use carrier::{header_bytes, header_text};
pub use consume::{
    attempt, describe, redeliveries, AmqpAction, AmqpDelivery, Deliveries, TracedConsumer,
};
pub use frame::DEFAULT_FRAME_MAX;
pub use lapin;
pub use publish::{PublishConfirm, TracedChannel};
pub use rpc::{RpcClient, RpcError, DIRECT_REPLY_TO};

/// The name a send span gives the default exchange (whose real name is empty).
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// Attribute: the broker's redelivered flag on a delivery (`true` when it was delivered
/// before and not acknowledged). Not (yet) in the OpenTelemetry conventions.
pub const REDELIVERED: &str = "messaging.rabbitmq.message.redelivered";

/// The routing key, message id and correlation id of a message, on a description of
/// either direction.
fn with_routing<M: crate::messaging::Describe>(
    msg: &mut M,
    routing_key: &lapin::types::ShortString,
    destination: &str,
    properties: &lapin::BasicProperties,
) {
    use crate::messaging::attributes as attr;
    let key = routing_key.as_str();
    if key.is_empty() {
        // No routing key: nothing to record.
    } else if key == destination {
        // The destination's own name (the default exchange): shared, as destination
        // names are. Other keys may be new with every message (topic keys with ids) and
        // would push the few names out.
        msg.push(
            attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
            crate::messaging::names::value(key),
        );
    } else {
        msg.push(
            attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
            key.to_owned(),
        );
    }
    if let Some(id) = properties.message_id() {
        msg.push(attr::MESSAGING_MESSAGE_ID, id.as_str().to_owned());
    }
    if let Some(id) = properties.correlation_id() {
        msg.push(
            attr::MESSAGING_MESSAGE_CONVERSATION_ID,
            id.as_str().to_owned(),
        );
    }
}

/// `messaging.destination.name` of a publish, as the RabbitMQ conventions give it:
/// `{exchange}:{routing_key}`, the one of the two that is not empty, or `amq.default`
/// (the default exchange, no routing key).
fn publish_name<'a>(exchange: &'a str, routing_key: &'a str) -> std::borrow::Cow<'a, str> {
    match (exchange, routing_key) {
        ("", "") => DEFAULT_EXCHANGE.into(),
        ("", key) => key.into(),
        (exchange, "") => exchange.into(),
        (exchange, key) => format!("{exchange}:{key}").into(),
    }
}

/// `messaging.destination.name` of a delivery, as the RabbitMQ conventions give it:
/// `{exchange}:{routing_key}:{queue}`, leaving out the empty parts (the default exchange)
/// and the routing key when it is the queue's name.
fn consume_name<'a>(
    exchange: &str,
    routing_key: &str,
    queue: &'a str,
) -> std::borrow::Cow<'a, str> {
    let key = if routing_key == queue {
        ""
    } else {
        routing_key
    };
    match (exchange, key) {
        ("", "") => queue.into(),
        ("", key) => format!("{key}:{queue}").into(),
        (exchange, "") => format!("{exchange}:{queue}").into(),
        (exchange, key) => format!("{exchange}:{key}:{queue}").into(),
    }
}

#[cfg(test)]
mod naming_tests {
    #[test]
    fn destination_names_follow_the_rabbitmq_conventions() {
        use super::{consume_name, publish_name};
        assert_eq!(publish_name("", ""), "amq.default");
        assert_eq!(publish_name("", "tasks"), "tasks");
        assert_eq!(publish_name("orders", ""), "orders");
        assert_eq!(publish_name("orders", "eu.new"), "orders:eu.new");
        assert_eq!(consume_name("", "tasks", "tasks"), "tasks");
        assert_eq!(consume_name("orders", "eu.new", "eu"), "orders:eu.new:eu");
        assert_eq!(consume_name("orders", "", "eu"), "orders:eu");
        assert_eq!(consume_name("orders", "eu", "eu"), "orders:eu");
        assert_eq!(consume_name("", "other", "q"), "other:q");
    }
}

/// A low-cardinality `error.type` for a lapin error.
fn error_type(e: &lapin::Error) -> &'static str {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::ChannelsLimitReached => "channels_limit_reached",
        K::InvalidProtocolVersion(_) => "invalid_protocol_version",
        K::InvalidChannel(_) => "invalid_channel",
        K::InvalidChannelState(..) => "invalid_channel_state",
        K::InvalidConnectionState(_) => "invalid_connection_state",
        K::IOError(_) => "io_error",
        K::RuntimeShutdownError(_) => "runtime_shutdown",
        K::ParsingError(_) => "parsing_error",
        K::ProtocolError(_) => "protocol_error",
        K::SerialisationError(_) => "serialisation_error",
        K::AuthProviderError(_) => "auth_provider_error",
        K::FutureCompleted => "future_completed",
        K::NoDefaultRuntime => "no_default_runtime",
        K::MissingHeartbeatError => "missing_heartbeat",
        _ => "amqp_error",
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;
    use crate::{Incoming, Outgoing, SpanCollector, Telemetry};

    /// The futures users spawn must be `Send` (checked at compile time).
    #[allow(dead_code)]
    fn futures_are_send(consumer: TracedConsumer, channel: TracedChannel, rpc: RpcClient) {
        fn send<T: Send>(_: T) {}
        let mut consumer = consumer;
        send(async move {
            consumer
                .run(|_delivery| async { Ok::<(), String>(()) })
                .await
        });
        send(channel.basic_publish(
            "".into(),
            "q".into(),
            Default::default(),
            b"",
            Default::default(),
        ));
        send(rpc.call(
            "".into(),
            "q".into(),
            Default::default(),
            b"",
            Default::default(),
        ));
    }

    /// Context written by the core into a header table, re-typed as each string type a
    /// client may use, is adopted as the parent.
    #[tokio::test]
    async fn context_is_read_from_long_short_and_byte_array_headers() {
        let spans = SpanCollector::new();
        let telemetry = Telemetry::builder("svc").collector(&spans).build().unwrap();
        let mut written = FieldTable::default();
        telemetry
            .send_span(Outgoing::new("rabbitmq", "ex"), &mut written)
            .end();
        let traceparent = crate::propagation::TRACEPARENT;
        let Some(AMQPValue::LongString(value)) = written.inner().get(traceparent) else {
            panic!("traceparent is a long string: {written:?}");
        };
        let text = String::from_utf8(value.as_bytes().to_vec()).unwrap();
        let retyped = [
            AMQPValue::LongString(text.clone().into()),
            AMQPValue::ShortString(text.clone().into()),
            AMQPValue::ByteArray(text.clone().into_bytes().into()),
        ];
        for value in retyped {
            let mut headers = FieldTable::default();
            headers.insert(traceparent.into(), value);
            telemetry
                .process_span(Incoming::new("rabbitmq", "q"), &headers)
                .end();
        }
        let records = spans.records();
        let send = &records[0];
        for process in &records[1..] {
            assert_eq!(process.trace_id, send.trace_id);
            assert_eq!(process.parent_span_id.as_ref(), Some(&send.span_id));
        }
        assert_eq!(records.len(), 4);
    }
}
