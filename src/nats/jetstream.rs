//! JetStream: publish with the stream's acknowledgement, and pull or push consumers whose
//! handler runs inside a process span and whose messages are settled by your policy.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::{Acker, Info};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, HeaderMap, Subject, ToSubject};
use bytes::Bytes;
use futures_util::Stream;

use super::attributes as attr;
use super::core::{incoming, outgoing, with_context, Server};
use super::run::{Processed, Stop, Until};
use crate::{Incoming, ParentPolicy, ProcessSpan, Telemetry};

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
    client: Client,
    server: Server,
    telemetry: Telemetry,
    policy: ParentPolicy,
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

    /// Publish `payload` to `subject` and wait for the stream's acknowledgement, inside a
    /// `publish <subject>` send span that records `messaging.nats.js.stream` and
    /// `messaging.nats.js.sequence.stream` from the ack, or the error.
    pub async fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        self.publish_message(subject.to_subject(), None, payload)
            .await
    }

    /// [`publish`](Self::publish) with your headers (`Nats-Msg-Id` and the `Nats-Expected-*`
    /// headers among them, which JetStream honours as usual).
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        self.publish_message(subject.to_subject(), Some(headers), payload)
            .await
    }

    async fn publish_message(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        let mut context = HeaderMap::new();
        let msg = outgoing(
            &self.server,
            &self.client,
            subject.as_str(),
            headers.as_ref(),
            &payload,
        )
        .operation_name("publish");
        let send = self.telemetry.send_span(msg, &mut context);
        let headers = with_context(&send, headers, context, &payload, &self.client);
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
            Err(e) => send.end_with_error(&format!("{:?}", e.kind()), e),
        }
        acked
    }

    /// The process span for a JetStream message you received yourself: a child of the
    /// producer's send span, with the delivery count as `tracehop.delivery.attempt`, stream,
    /// consumer and sequences. Run your handler with [`ProcessSpan::run`], settle the
    /// message, then [`end`](ProcessSpan::end) it.
    pub fn process_span(&self, message: &jetstream::Message) -> ProcessSpan {
        self.process_span_counted(message).0
    }

    /// [`process_span`](Self::process_span), and the delivery count it recorded: the ack
    /// subject is parsed once.
    fn process_span_counted(&self, message: &jetstream::Message) -> (ProcessSpan, Option<u32>) {
        let info = message.info().ok();
        let delivered = delivery_count(info.as_ref(), message);
        let msg = describe(
            &self.server,
            &self.client,
            message,
            info.as_ref(),
            delivered,
            self.policy,
        );
        (
            self.telemetry.process_span(msg, &message.headers),
            delivered,
        )
    }

    /// Process one JetStream message: run `handler` inside its process span, then ack it
    /// if the handler succeeded, or settle it as `on_failure` says if it failed. The
    /// settlement is recorded as `tracehop.nats.settlement` on the span. Returns the
    /// handler's result.
    ///
    /// The handler gets the message itself; leave settling it to this call.
    pub async fn handle<F, Fut, T, E, P>(
        &self,
        message: jetstream::Message,
        on_failure: &mut P,
        handler: F,
    ) -> Result<T, E>
    where
        F: FnOnce(jetstream::Message) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
        P: FailurePolicy<E>,
    {
        let (span, delivered) = self.process_span_counted(&message);
        let acker = Acker::new(message.context.clone(), message.reply.clone());
        let result = span.run(handler(message)).await;
        let settle = match &result {
            Ok(_) => Settle::Ack,
            Err(e) => on_failure.on_failure(e, delivered.unwrap_or(1)),
        };
        span.set_attribute(attr::SETTLEMENT, settle.as_str());
        let settled = match settle {
            Settle::Ack => acker.ack().await,
            Settle::Nak(delay) => acker.ack_with(AckKind::Nak(delay)).await,
            Settle::Term => acker.ack_with(AckKind::Term).await,
            Settle::Leave => Ok(()),
        };
        if let Err(e) = settled {
            span.set_attribute(attr::SETTLE_ERROR, e.to_string());
        }
        span.end();
        result
    }

    /// Wrap the message stream of a pull consumer (`consumer.messages()`,
    /// `consumer.fetch()…messages()`, `consumer.batch()…messages()`) or a push consumer
    /// (`consumer.messages()`), to process it with [`TracedMessages::process`].
    pub fn messages<St>(&self, messages: St) -> TracedMessages<St> {
        TracedMessages {
            js: self.clone(),
            messages,
            on_failure: OnFailure::default(),
            until: Until::default(),
        }
    }
}

/// The delivery count the server reports for a message (from 1, in its ack subject's
/// `info`), else the `tracehop-attempt` header of a forwarded message.
fn delivery_count(info: Option<&Info<'_>>, message: &jetstream::Message) -> Option<u32> {
    info.and_then(|info| u32::try_from(info.delivered).ok())
        .filter(|n| *n > 0)
        .or_else(|| crate::propagation::attempt(&message.headers))
}

/// Describe a JetStream message: the core NATS attributes plus stream, consumer and
/// sequences from its ack subject's `info`, and its delivery count.
fn describe<'a>(
    server: &Server,
    client: &Client,
    message: &'a jetstream::Message,
    info: Option<&Info<'_>>,
    delivered: Option<u32>,
    policy: ParentPolicy,
) -> Incoming<'a> {
    let mut msg = incoming(server, client, &message.message, None, None, policy, false);
    if let Some(info) = info {
        msg = msg
            .attribute(attr::MESSAGING_NATS_JS_STREAM, info.stream.to_owned())
            .attribute(
                attr::MESSAGING_NATS_JS_CONSUMER_NAME,
                info.consumer.to_owned(),
            )
            .attribute(
                attr::MESSAGING_NATS_JS_STREAM_SEQUENCE,
                i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
            )
            .attribute(
                attr::MESSAGING_NATS_JS_CONSUMER_SEQUENCE,
                i64::try_from(info.consumer_sequence).unwrap_or(i64::MAX),
            );
        if let Some(published) = published_at(info.published) {
            msg = msg.enqueued_at(published);
        }
    }
    if let Some(attempt) = delivered {
        msg = msg.attempt(attempt);
    }
    msg
}

/// When the server stored the message, if it is a time `SystemTime` can hold everywhere
/// (the conversion panics on Windows for times before 1601).
fn published_at(published: async_nats::datetime::DateTime) -> Option<SystemTime> {
    let epoch = async_nats::datetime::DateTime::from(SystemTime::UNIX_EPOCH);
    (published >= epoch).then(|| SystemTime::from(published))
}

/// How to settle a JetStream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settle {
    /// Acknowledge: the message is done.
    Ack,
    /// Negative acknowledgement: redeliver, after the delay if one is given.
    Nak(Option<Duration>),
    /// Terminate: never redeliver.
    Term,
    /// Send nothing: the server redelivers once the consumer's ack wait has passed.
    Leave,
}

impl Settle {
    /// The value recorded as `tracehop.nats.settlement`: `ack`, `nak`, `term` or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Nak(_) => "nak",
            Settle::Term => "term",
            Settle::Leave => "none",
        }
    }
}

/// Decides how to settle a message whose handler failed.
///
/// Implemented by [`OnFailure`] and by any `FnMut(&E, u32) -> Settle` closure, which gets
/// the handler's error and the delivery count (from 1).
pub trait FailurePolicy<E> {
    /// How to settle a message whose handler failed with `error` on delivery `delivered`.
    fn on_failure(&mut self, error: &E, delivered: u32) -> Settle;
}

impl<E, F: FnMut(&E, u32) -> Settle> FailurePolicy<E> for F {
    fn on_failure(&mut self, error: &E, delivered: u32) -> Settle {
        self(error, delivered)
    }
}

/// The usual answers to a failed handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnFailure {
    /// Nak: redeliver as soon as the server will (the default).
    #[default]
    Nak,
    /// Nak with a delay before redelivery.
    NakAfter(Duration),
    /// Term: never redeliver.
    Term,
    /// Settle nothing: the server redelivers after the consumer's ack wait.
    Leave,
    /// Nak (after `delay`, if given) until delivery `max_deliveries` has failed, then term.
    Retry {
        /// The last delivery to try, counting from 1.
        max_deliveries: u32,
        /// The delay before each redelivery.
        delay: Option<Duration>,
    },
}

impl<E> FailurePolicy<E> for OnFailure {
    fn on_failure(&mut self, _error: &E, delivered: u32) -> Settle {
        match *self {
            OnFailure::Nak => Settle::Nak(None),
            OnFailure::NakAfter(delay) => Settle::Nak(Some(delay)),
            OnFailure::Term => Settle::Term,
            OnFailure::Leave => Settle::Leave,
            OnFailure::Retry {
                max_deliveries,
                delay,
            } => {
                if delivered >= max_deliveries {
                    Settle::Term
                } else {
                    Settle::Nak(delay)
                }
            }
        }
    }
}

/// A JetStream consumer's message stream, processed with tracing and settlement; from
/// [`TracedJetStream::messages`].
pub struct TracedMessages<St, P = OnFailure> {
    js: TracedJetStream,
    messages: St,
    on_failure: P,
    until: Until,
}

impl<St, P: fmt::Debug> fmt::Debug for TracedMessages<St, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedMessages")
            .field("on_failure", &self.on_failure)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl<St, P> TracedMessages<St, P> {
    /// How to settle messages whose handler failed: an [`OnFailure`] or a
    /// `FnMut(&E, u32) -> Settle` closure ([`OnFailure::Nak`] by default).
    pub fn on_failure<Q>(self, on_failure: Q) -> TracedMessages<St, Q> {
        TracedMessages {
            js: self.js,
            messages: self.messages,
            on_failure,
            until: self.until,
        }
    }

    /// Stop after `messages` messages (deliveries: a redelivery counts again).
    pub fn limit(mut self, messages: usize) -> Self {
        self.until.limit(messages);
        self
    }

    /// Stop when `stop` fires (after the message in hand).
    pub fn stop_on(mut self, stop: &Stop) -> Self {
        self.until.stop_on(stop);
        self
    }

    /// Run `handler` for every message, each inside its process span; ack after success,
    /// settle by the failure policy after an error. Returns when the stream ends, the limit
    /// is reached or the stop signal fires. Errors the stream reports between messages are
    /// counted, logged as `tracing` warnings and skipped (a final one ends the stream).
    pub async fn process<F, Fut, T, E, SE>(self, mut handler: F) -> Processed
    where
        St: Stream<Item = Result<jetstream::Message, SE>>,
        SE: fmt::Display,
        F: FnMut(jetstream::Message) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
        P: FailurePolicy<E>,
    {
        let TracedMessages {
            js,
            messages,
            mut on_failure,
            mut until,
        } = self;
        let mut messages = pin!(messages);
        let mut done = Processed::default();
        while let Some(next) = until.next(&mut messages).await {
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    // Counted in `Processed` and logged like the Kafka loop's errors.
                    tracing::warn!(error = %e, "jetstream message stream error");
                    done.stream_errors += 1;
                    continue;
                }
            };
            until.count();
            let failed = js
                .handle(message, &mut on_failure, &mut handler)
                .await
                .is_err();
            done.messages += 1;
            done.failed += usize::from(failed);
        }
        done
    }
}
