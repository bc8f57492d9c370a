//! JetStream publishing: each publish is a send span ended by the stream's
//! acknowledgement. Consuming is in `jetstream_consume`.

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self};
use async_nats::{Client, HeaderMap, Subject, ToSubject};
use bytes::Bytes;

use super::attributes as attr;
use super::client::error_type;
use super::describe::{Publish, Server};
use super::jetstream_consume::{JetStreamMessages, TracedMessages};
use crate::messaging::consume::delivery_attempt;
use crate::{ParentPolicy, ProcessSpan, Sent, Telemetry};

/// A JetStream [`Context`](jetstream::Context) whose publishes and consumed messages are
/// traced.
///
/// [`publish`](Self::publish) waits for the stream's acknowledgement and records the
/// stream and sequence on the send span (or the error). [`messages`](Self::messages) wraps
/// the message stream of any pull or push consumer: each delivery, redeliveries included,
/// is its own process span under the producer's send span, carrying the delivery count.
#[derive(Debug, Clone)]
pub struct TracedJetStream {
    context: jetstream::Context,
    pub(super) client: Client,
    pub(super) server: Server,
    pub(super) telemetry: Telemetry,
    pub(super) policy: ParentPolicy,
}

impl TracedJetStream {
    /// Trace `context`'s messages as service `telemetry`.
    pub fn new(context: jetstream::Context, telemetry: Telemetry) -> TracedJetStream {
        TracedJetStream {
            client: context.client(),
            server: Server::default(),
            context,
            telemetry,
            policy: ParentPolicy::Child,
        }
    }

    /// How consumers relate to the context incoming messages carry.
    pub fn parent_policy(mut self, policy: ParentPolicy) -> TracedJetStream {
        self.policy = policy;
        self
    }

    /// The wrapped JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// The service's telemetry handle.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    with_and_without_headers! {
        /// Publish `payload` to `subject` and wait for the stream's acknowledgement, inside a
        /// `publish <subject>` send span that records `messaging.nats.js.stream` and
        /// `messaging.nats.js.sequence.stream` from the ack, or the error.
        publish,
        /// [`publish`](Self::publish) with your headers (`Nats-Msg-Id` and the `Nats-Expected-*`
        /// headers among them, which JetStream honours as usual).
        publish_with_headers,
        publish_message -> Result<Sent<PublishAck>, PublishError>
    }

    async fn publish_message(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<Sent<PublishAck>, PublishError> {
        let publisher = Publish {
            telemetry: &self.telemetry,
            server: &self.server,
            client: &self.client,
            operation: "publish",
            // The stream records when it stored the message: queue time comes from that.
            stamped: true,
        };
        let (send, headers) = publisher.open(subject.as_str(), headers, &payload, |msg| msg);
        let sent = match headers {
            Some(headers) => {
                self.context
                    .publish_with_headers(subject, headers, payload)
                    .await
            }
            None => self.context.publish(subject, payload).await,
        };
        let acked = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let span = send.span_context();
        match &acked {
            Ok(ack) => {
                // Skipped, not just dropped by the SDK, when the span is not recorded.
                if send.is_recording() {
                    send.set_attribute(attr::MESSAGING_NATS_JS_STREAM, ack.stream.clone());
                    send.set_attribute(
                        attr::MESSAGING_NATS_JS_STREAM_SEQUENCE,
                        i64::try_from(ack.sequence).unwrap_or(i64::MAX),
                    );
                    if ack.duplicate {
                        send.set_attribute(attr::MESSAGING_NATS_JS_DUPLICATE, true);
                    }
                }
                send.end();
            }
            Err(e) => send.end_with_error(&error_type(e.kind()), e),
        }
        acked.map(|ack| Sent::new(ack, span))
    }

    /// The process span for a JetStream message you received yourself: a child of the
    /// producer's send span, with the delivery count as `tracehop.delivery.attempt`,
    /// stream, consumer and sequences. Run your handler with [`ProcessSpan::run`], settle
    /// the message, then [`end`](ProcessSpan::end) it.
    pub fn process_span(&self, message: &jetstream::Message) -> ProcessSpan {
        let mut msg = super::jetstream_consume::describe_message(self, message);
        if let Some(delivered) = message
            .info()
            .ok()
            .and_then(|info| u32::try_from(info.delivered).ok())
        {
            let redeliveries = delivered.saturating_sub(1);
            msg = msg.attempt(delivery_attempt(&message.headers, redeliveries));
        }
        self.telemetry.process_span(msg, &message.headers)
    }

    /// Consume the message stream of a pull consumer (`consumer.messages()`,
    /// `consumer.fetch()…messages()`, `consumer.batch()…messages()`) or a push consumer
    /// (`consumer.messages()`) through the one consume loop: see [`TracedMessages`].
    pub fn messages<St>(&self, messages: St) -> TracedMessages<St>
    where
        JetStreamMessages<St>: crate::messaging::consume::Source,
    {
        JetStreamMessages::consumer(self.clone(), messages)
    }
}
