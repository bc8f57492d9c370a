//! Core NATS publishing, request-reply and subscribing, traced.

use std::future::Future;

use async_nats::client::{PublishError, PublishErrorKind, RequestError, SubscribeError};
use async_nats::{Client, HeaderMap, Message, Request, Subject, ToSubject};
use bytes::Bytes;
use futures_util::future::Either;

use super::attributes as attr;
use super::describe::{incoming, Publish, Server};
use super::subscription::{Subscription, TracedSubscriber};
use crate::messaging::Sending;
use crate::{ParentPolicy, ProcessSpan, Sent, Telemetry};

/// An async-nats [`Client`] whose publishes, requests and subscriptions are traced.
///
/// Every publish opens a send span (`publish <subject>`, kind PRODUCER) and writes its
/// context into the message headers next to yours; every request opens a `request
/// <subject>` send span that lasts until the reply arrives; subscriptions hand each message
/// to your handler inside a `process <subject>` span that is a child of the publisher's send
/// span. Cheap to clone; the wrapped client stays available through [`client`](Self::client)
/// for everything tracehop does not wrap.
#[derive(Debug, Clone)]
pub struct TracedClient {
    pub(super) client: Client,
    pub(super) server: Server,
    pub(super) telemetry: Telemetry,
    pub(super) policy: ParentPolicy,
}

impl TracedClient {
    /// Trace `client`'s messages as service `telemetry`.
    pub fn new(client: Client, telemetry: Telemetry) -> TracedClient {
        TracedClient {
            client,
            server: Server::default(),
            telemetry,
            policy: ParentPolicy::Child,
        }
    }

    /// How consumers relate to the context incoming messages carry (child of the
    /// producer's span by default; [`ParentPolicy::Link`] at trust boundaries).
    pub fn parent_policy(mut self, policy: ParentPolicy) -> TracedClient {
        self.policy = policy;
        self
    }

    /// The wrapped client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The service's telemetry handle.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Publish `payload` to `subject` inside a send span, with the trace context in the
    /// message headers. The span ends when the client has accepted the message.
    ///
    /// The span opens when the future is first polled, as a child of the context current
    /// then (so `.with_context(cx)` on the future sets its parent).
    pub fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> impl Future<Output = Result<Sent<()>, PublishError>> + '_ {
        self.publish_message(subject.to_subject(), None, None, payload, false)
    }

    /// Publish with your headers; they are sent as they are, with the context headers added.
    pub fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> impl Future<Output = Result<Sent<()>, PublishError>> + '_ {
        self.publish_message(subject.to_subject(), None, Some(headers), payload, false)
    }

    /// Publish with a reply subject (recorded as `messaging.nats.message.reply_to`).
    pub fn publish_with_reply<S: ToSubject, R: ToSubject>(
        &self,
        subject: S,
        reply: R,
        payload: Bytes,
    ) -> impl Future<Output = Result<Sent<()>, PublishError>> + '_ {
        let reply = reply.to_subject();
        self.publish_message(subject.to_subject(), Some(reply), None, payload, false)
    }

    /// Publish with a reply subject and your headers.
    pub fn publish_with_reply_and_headers<S: ToSubject, R: ToSubject>(
        &self,
        subject: S,
        reply: R,
        headers: HeaderMap,
        payload: Bytes,
    ) -> impl Future<Output = Result<Sent<()>, PublishError>> + '_ {
        let reply = reply.to_subject();
        self.publish_message(
            subject.to_subject(),
            Some(reply),
            Some(headers),
            payload,
            false,
        )
    }

    /// Wait until the server has processed everything this client sent, subscriptions
    /// included (see [`round_trip`](super::round_trip)): call it after subscribing when
    /// another connection publishes right away.
    pub async fn round_trip(&self) -> Result<(), super::RoundTripError> {
        super::round_trip(&self.client).await
    }

    /// Answer `request` (a message with a reply subject) from inside its handler: a send
    /// span, child of the handler's process span, whose context travels back to the
    /// requester with the reply. Fails with [`PublishErrorKind::InvalidSubject`] if the
    /// message has no reply subject.
    pub async fn respond(
        &self,
        request: &Message,
        payload: Bytes,
    ) -> Result<Sent<()>, PublishError> {
        let reply = reply_subject(request)?;
        self.publish_message(reply, None, None, payload, true).await
    }

    /// [`respond`](Self::respond) with your headers.
    pub async fn respond_with_headers(
        &self,
        request: &Message,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Sent<()>, PublishError> {
        let reply = reply_subject(request)?;
        self.publish_message(reply, None, Some(headers), payload, true)
            .await
    }

    /// When first polled: open the send span and write the context; then poll the
    /// client's own publish in place and end the span with its result.
    fn publish_message(
        &self,
        subject: Subject,
        reply: Option<Subject>,
        headers: Option<HeaderMap>,
        payload: Bytes,
        to_reply_subject: bool,
    ) -> impl Future<Output = Result<Sent<()>, PublishError>> + Send + '_ {
        Sending::new(move || {
            let (send, headers) =
                self.publisher("publish")
                    .open(subject.as_str(), headers, &payload, |mut msg| {
                        if let Some(reply) = &reply {
                            msg = msg.attribute(
                                attr::MESSAGING_NATS_MESSAGE_REPLY_TO,
                                reply.to_string(),
                            );
                        }
                        if to_reply_subject {
                            msg = msg.temporary();
                        }
                        msg
                    });
            let client = &self.client;
            let publish = match (reply, headers) {
                (None, None) => Either::Left(Either::Left(client.publish(subject, payload))),
                (None, Some(h)) => Either::Left(Either::Right(
                    client.publish_with_headers(subject, h, payload),
                )),
                (Some(r), None) => {
                    Either::Right(Either::Left(client.publish_with_reply(subject, r, payload)))
                }
                (Some(r), Some(h)) => Either::Right(Either::Right(
                    client.publish_with_reply_and_headers(subject, r, h, payload),
                )),
            };
            let end = move |result: Result<(), PublishError>| {
                let span = send.span_context();
                match &result {
                    Ok(()) => send.end(),
                    Err(e) => send.end_with_error(&error_type(e.kind()), e),
                }
                result.map(|()| Sent::new((), span))
            };
            (publish, end)
        })
    }

    with_and_without_headers! {
        /// Send a request and wait for the reply, inside a `request <subject>` send span (kind
        /// PRODUCER, `messaging.operation.name=request`) that lasts the whole round trip.
        ///
        /// The responder's process span is a child of the request span. When the reply
        /// arrives, a `process` span (named without the one-off inbox) records it: a child of
        /// the responder's reply span when the reply carries context (so the round trip is one
        /// trace), else a child of the request span that says the context was missing or
        /// rejected. The reply
        /// is returned as it arrived; read its context with
        /// [`Propagation::extract`](crate::Propagation::extract) on `reply.headers` if you need
        /// it.
        request,
        /// [`request`](Self::request) with your headers.
        request_with_headers,
        request_message -> Result<Sent<Message>, RequestError>
    }

    async fn request_message(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<Sent<Message>, RequestError> {
        let (send, headers) =
            self.publisher("request")
                .open(subject.as_str(), headers, &payload, |msg| msg);
        let mut request = Request::new().payload(payload);
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        let result = self.client.send_request(subject, request).await;
        let span = send.span_context();
        match &result {
            Ok(reply) => {
                let msg = incoming(&self.server, &self.client, reply, None, None, true)
                    .parent_policy(self.policy);
                self.telemetry
                    .record_reply(msg, &reply.headers, send.context());
                send.end();
            }
            Err(e) => send.end_with_error(&error_type(e.kind()), e),
        }
        result.map(|reply| Sent::new(reply, span))
    }

    /// Subscribe to `subject`; run a handler for its messages with
    /// [`TracedSubscriber::run`](crate::Consumer::run).
    pub async fn subscribe<S: ToSubject>(
        &self,
        subject: S,
    ) -> Result<TracedSubscriber, SubscribeError> {
        let subject = subject.to_subject();
        let subscriber = self.client.subscribe(subject.clone()).await?;
        Ok(Subscription::consumer(
            self.clone(),
            subscriber,
            subject.to_string(),
            None,
        ))
    }

    /// Subscribe to `subject` as a member of `queue_group` (recorded as
    /// `messaging.consumer.group.name`).
    pub async fn queue_subscribe<S: ToSubject>(
        &self,
        subject: S,
        queue_group: String,
    ) -> Result<TracedSubscriber, SubscribeError> {
        let subject = subject.to_subject();
        let subscriber = self
            .client
            .queue_subscribe(subject.clone(), queue_group.clone())
            .await?;
        Ok(Subscription::consumer(
            self.clone(),
            subscriber,
            subject.to_string(),
            Some(queue_group),
        ))
    }

    /// The process span for a message you received yourself (from a plain
    /// [`Subscriber`](async_nats::Subscriber)): run your handler with [`ProcessSpan::run`], then
    /// [`end`](ProcessSpan::end) it.
    pub fn process_span(&self, message: &Message) -> ProcessSpan {
        let msg = incoming(&self.server, &self.client, message, None, None, true)
            .parent_policy(self.policy);
        self.telemetry.process_span(msg, &message.headers)
    }
}

impl TracedClient {
    fn publisher(&self, operation: &'static str) -> Publish<'_> {
        Publish {
            telemetry: &self.telemetry,
            server: &self.server,
            client: &self.client,
            operation,
            stamped: false,
        }
    }
}

fn reply_subject(request: &Message) -> Result<Subject, PublishError> {
    request.reply.clone().ok_or_else(|| {
        PublishError::with_source(
            PublishErrorKind::InvalidSubject,
            "the message has no reply subject to respond to",
        )
    })
}

/// A low-cardinality `error.type` for an async-nats error kind: its name in snake case
/// (`TimedOut` is `timed_out`).
pub(super) fn error_type(kind: impl std::fmt::Debug) -> String {
    crate::messaging::snake_case(&format!("{kind:?}"))
}
