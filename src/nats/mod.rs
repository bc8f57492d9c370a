//! The NATS adapter: traced core NATS publish, subscribe, queue groups and request-reply,
//! and JetStream publish and consumers, over [`async_nats`].
//!
//! This module owns how context rides in a NATS [`HeaderMap`](async_nats::HeaderMap) (the
//! [`ReadCarrier`](crate::ReadCarrier)/[`WriteCarrier`](crate::WriteCarrier)
//! implementations), which attributes NATS messages carry, and when JetStream messages are
//! acked; spans and context handling come from the core.
//!
//! ```no_run
//! use tracehop::nats::TracedClient;
//! use tracehop::Telemetry;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let worker = TracedClient::new(client.clone(), Telemetry::builder("worker").build()?);
//! let gateway = TracedClient::new(client, Telemetry::builder("gateway").build()?);
//!
//! // Consumer: each message's handler runs inside a `process jobs` span, a child of the
//! // publisher's `publish jobs` span.
//! let mut jobs = worker.subscribe("jobs").await?.limit(1);
//! worker.round_trip().await?; // the server has the subscription before anyone publishes
//! let consumer = tokio::spawn(async move {
//!     jobs.run(|message| async move {
//!         println!("got {:?}", message.payload);
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await
//! });
//!
//! // Producer: publish as usual, through the wrapper.
//! gateway.publish("jobs", "resize image 7".into()).await?;
//! consumer.await??;
//! # Ok(()) }
//! ```
//!
//! # Spans
//!
//! | what | span | kind | parent |
//! |------|------|------|--------|
//! | [`TracedClient::publish`] and friends | `publish <subject>` | PRODUCER | the current context |
//! | [`TracedClient::request`] | `request <subject>` (`messaging.operation.name=request`) | PRODUCER | the current context |
//! | a subscription's handler ([`TracedSubscriber`]) | `process <subscription subject>`, wildcards and all (`process orders.*`), so names stay bounded | CONSUMER | the message's send span (or a link, in [`ParentPolicy::Link`](crate::ParentPolicy::Link) mode) |
//! | [`TracedClient::respond`] (inside the handler) | `publish` | PRODUCER | the handler's process span |
//! | the reply, on the requester's side | `process` | CONSUMER | the responder's reply span |
//! | [`TracedJetStream::publish`] | `publish <subject>`, ended by the stream's ack | PRODUCER | the current context |
//! | a JetStream delivery ([`TracedMessages`], [`TracedJetStream::process_span`]) | `process <subject>`, one per delivery | CONSUMER | the message's send span |
//!
//! A request is traced as a send (kind PRODUCER, as nats.net does) rather than a CLIENT
//! span: the core opens every outgoing message as a send span, and the request span simply
//! stays open until the reply arrives. The round trip is one trace: request span →
//! responder's process span → responder's reply span → requester's reply span. A reply
//! without usable context is recorded under the request span and says so
//! (`tracehop.context.missing` / `tracehop.context.rejected`). Reply subjects are
//! one-off inboxes, so the two reply spans are named after the operation alone, as the
//! messaging conventions ask for temporary destinations; the inbox is in
//! `messaging.destination.name`, next to `messaging.destination.temporary=true`.
//!
//! # Attributes
//!
//! There is no OpenTelemetry semantic convention for NATS. tracehop uses the names the
//! official .NET client (nats.net, `NATS.Client.Core` `Telemetry.Constants`) emits:
//!
//! | attribute | on | value |
//! |-----------|----|-------|
//! | `messaging.system` | all | `nats` |
//! | `messaging.destination.name` | all | the message's subject |
//! | `messaging.nats.message.subject` | process | the message's subject |
//! | `messaging.destination.template` | process (subscriptions) | the subscription subject, wildcards and all |
//! | `messaging.nats.message.reply_to` | publish with reply, process | the reply subject |
//! | `messaging.destination.temporary` | reply publish and receipt | `true` |
//! | `messaging.consumer.group.name` | process (queue subscriptions) | the queue group |
//! | `messaging.message.body.size` | all | payload bytes |
//! | `messaging.message.envelope.size` | process | subject, reply, headers and payload bytes (async-nats' `Message::length`) |
//! | `server.address`, `server.port` | all | host and port from the connected server's `INFO`, as nats.net records them (the server's listen address: `0.0.0.0` when it listens on every interface) |
//! | `messaging.client.id` | all | the id the server gave the connection (its `INFO`'s `client_id`) |
//!
//! Differences from nats.net: sizes and the port are integers here (nats.net writes
//! strings); tracehop's operation names are `publish`, `request` and `process` (nats.net
//! names the consumer side `receive`) because the core follows the OpenTelemetry messaging
//! conventions for `messaging.operation.type`; the client id, network and protocol-version
//! attributes nats.net adds are not recorded. JetStream deliveries do not record
//! `messaging.nats.message.reply_to`: their reply subject is the server's ack subject.
//!
//! Released nats.net versions emit no JetStream-specific attributes. The stream and
//! consumer names use the names of nats.net's JetStream telemetry work
//! (`messaging.nats.js.stream`, `messaging.nats.js.consumer.name`); the sequence and
//! duplicate attributes have no nats.net counterpart and are tracehop's, in the same
//! namespace:
//!
//! | attribute | on | value |
//! |-----------|----|-------|
//! | `messaging.nats.js.stream` | JetStream publish (from the ack), process | stream name |
//! | `messaging.nats.js.consumer.name` | JetStream process | consumer name |
//! | `messaging.nats.js.sequence.stream` | JetStream publish (from the ack), process | stream sequence |
//! | `messaging.nats.js.sequence.consumer` | JetStream process | consumer sequence |
//! | `messaging.nats.js.duplicate` | JetStream publish | `true` when the stream reported a duplicate |
//! | `messaging.message.id` | publish, process | the `Nats-Msg-Id` header, when present |
//! | `tracehop.delivery.attempt` | JetStream process | the server's delivery count (1, 2, 3 …); for core NATS, the `tracehop-attempt` header of a forwarded message |
//! | `tracehop.settlement` | process | `ack`, `nak`, `term` or `none` (JetStream); `none` (core NATS, at most once) |
//! | `tracehop.settlement.error` | JetStream process | why the settlement could not be sent |
//! | `tracehop.context.dropped` | publish | `max_payload` when the context headers were left out because they would have pushed the message over the server's `max_payload` |
//!
//! # Headers
//!
//! Your headers are sent as you built them; tracehop adds `traceparent`, `tracestate`,
//! `baggage` (when there is baggage) and `tracehop-sent-at`, replacing a header of the
//! same name. Multi-valued headers keep every value in order. (async-nats keeps headers in
//! a hash map, so the order *between* different names is the client's, traced or not; it
//! also trims whitespace around received values.) A context header the client would
//! reject is skipped instead of panicking, and context that would make a message too large
//! is left out instead of failing the publish. Header lookup on the way in is by exact,
//! case-sensitive name, and sees every value: two `traceparent` values start a new trace,
//! several `tracestate` values are joined (see [`propagation`](crate::propagation)).
//!
//! # Subscribing before others publish
//!
//! Core NATS delivers a message only to the subscriptions the server knows when the
//! message arrives, and async-nats' `subscribe` and `flush` return before the server has
//! read the subscription. When another connection (another service) will publish right
//! away, call [`TracedClient::round_trip`] after subscribing: once it returns, the server
//! has the subscription and no message published to it afterwards is missed (in a
//! cluster, other servers learn of it a moment later).
//!
//! # Processing loops
//!
//! [`TracedSubscriber`] and [`TracedMessages`] are the one [`Consumer`](crate::Consumer)
//! loop: `run(handler)` returns when the subscription or stream ends, after
//! [`limit`](crate::Consumer::limit) messages, or when a [`Stop`](crate::Stop) fires, with a
//! [`Summary`](crate::Summary). Its future is `Send`: spawn it. A core NATS subscription
//! with a limit asks the server to stop delivering after that many messages, and one told
//! to stop drains first, processing what had reached the client (core NATS is at most
//! once: a message still on the wire while the server reads the unsubscribe can be lost). A JetStream loop that stops, or
//! reaches its limit, leaves unsettled whatever it has not processed: a pull stream
//! (`messages()`) may hold a whole batch already fetched, which the server redelivers
//! after the ack wait with a higher delivery count, counting towards `max_deliver`. For a
//! bounded run, fetch exactly what you will process (`consumer.fetch().max_messages(n)`).

/// A traced client's method and its `_with_headers` twin, both one call into the private
/// `$body(subject, Option<HeaderMap>, payload)` that does the work: the pair async-nats
/// offers, written once.
macro_rules! with_and_without_headers {
    (
        $(#[$doc:meta])* $name:ident,
        $(#[$doc_headers:meta])* $with_headers:ident,
        $body:ident -> $out:ty
    ) => {
        $(#[$doc])*
        pub fn $name<S: ToSubject>(
            &self,
            subject: S,
            payload: Bytes,
        ) -> impl std::future::Future<Output = $out> + '_ {
            self.$body(subject.to_subject(), None, payload)
        }

        $(#[$doc_headers])*
        pub fn $with_headers<S: ToSubject>(
            &self,
            subject: S,
            headers: HeaderMap,
            payload: Bytes,
        ) -> impl std::future::Future<Output = $out> + '_ {
            self.$body(subject.to_subject(), Some(headers), payload)
        }
    };
}

mod carrier;
mod client;
mod describe;
mod jetstream;
mod jetstream_consume;
mod round_trip;
mod subscription;

pub use async_nats;

pub use self::client::TracedClient;
pub use self::jetstream::TracedJetStream;
pub use self::jetstream_consume::{
    JetStreamAction, JetStreamDelivery, JetStreamMessages, TracedMessages,
};
pub use self::round_trip::{round_trip, RoundTripError};
pub use self::subscription::{NatsDelivery, Subscription, TracedSubscriber};

/// The attribute names NATS spans carry (see the [module docs](self) for which span gets
/// which).
pub mod attributes {
    pub use crate::messaging::attributes::MESSAGING_CONSUMER_GROUP_NAME;
    pub use opentelemetry_semantic_conventions::attribute::{
        MESSAGING_DESTINATION_TEMPLATE, MESSAGING_DESTINATION_TEMPORARY,
        MESSAGING_MESSAGE_ENVELOPE_SIZE, SERVER_ADDRESS, SERVER_PORT,
    };

    /// The subject of the received message (nats.net).
    pub const MESSAGING_NATS_MESSAGE_SUBJECT: &str = "messaging.nats.message.subject";
    /// The reply subject of the message (nats.net).
    pub const MESSAGING_NATS_MESSAGE_REPLY_TO: &str = "messaging.nats.message.reply_to";
    /// The JetStream stream (nats.net's JetStream telemetry).
    pub const MESSAGING_NATS_JS_STREAM: &str = "messaging.nats.js.stream";
    /// The JetStream consumer (nats.net's JetStream telemetry).
    pub const MESSAGING_NATS_JS_CONSUMER_NAME: &str = "messaging.nats.js.consumer.name";
    /// The message's sequence in its stream (tracehop).
    pub const MESSAGING_NATS_JS_STREAM_SEQUENCE: &str = "messaging.nats.js.sequence.stream";
    /// The delivery's sequence in its consumer (tracehop).
    pub const MESSAGING_NATS_JS_CONSUMER_SEQUENCE: &str = "messaging.nats.js.sequence.consumer";
    /// `true` when the stream reported the published message as a duplicate (tracehop).
    pub const MESSAGING_NATS_JS_DUPLICATE: &str = "messaging.nats.js.duplicate";
    /// On a send span whose context headers were left out of the message because they
    /// would have pushed it over the server's `max_payload`: `max_payload` (tracehop's,
    /// shared with the AMQP adapter's `frame_max` guard).
    pub use crate::messaging::attributes::CONTEXT_DROPPED;
    pub use crate::messaging::attributes::{SETTLEMENT, SETTLEMENT_ERROR};
}

#[cfg(test)]
mod tests;
