//! Core NATS: traced publish, request-reply and subscription processing.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_nats::client::{PublishError, PublishErrorKind, RequestError, SubscribeError};
use async_nats::{Client, HeaderMap, Message, Request, Subject, Subscriber, ToSubject};
use bytes::Bytes;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, StringValue};

use super::attributes as attr;
use super::carrier::merge;
use super::run::{Processed, Stop, Until};
use crate::messaging::attributes::system::NATS;
use crate::{Incoming, Outgoing, ParentPolicy, ProcessSpan, SendSpan, Telemetry};

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
    client: Client,
    server: Server,
    telemetry: Telemetry,
    policy: ParentPolicy,
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
    pub async fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        self.publish_message(subject.to_subject(), None, None, payload, false)
            .await
    }

    /// Publish with your headers; they are sent as they are, with the context headers added.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        self.publish_message(subject.to_subject(), None, Some(headers), payload, false)
            .await
    }

    /// Publish with a reply subject (recorded as `messaging.nats.message.reply_to`).
    pub async fn publish_with_reply<S: ToSubject, R: ToSubject>(
        &self,
        subject: S,
        reply: R,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let reply = reply.to_subject();
        self.publish_message(subject.to_subject(), Some(reply), None, payload, false)
            .await
    }

    /// Publish with a reply subject and your headers.
    pub async fn publish_with_reply_and_headers<S: ToSubject, R: ToSubject>(
        &self,
        subject: S,
        reply: R,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let reply = reply.to_subject();
        self.publish_message(
            subject.to_subject(),
            Some(reply),
            Some(headers),
            payload,
            false,
        )
        .await
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
    pub async fn respond(&self, request: &Message, payload: Bytes) -> Result<(), PublishError> {
        let reply = reply_subject(request)?;
        self.publish_message(reply, None, None, payload, true).await
    }

    /// [`respond`](Self::respond) with your headers.
    pub async fn respond_with_headers(
        &self,
        request: &Message,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let reply = reply_subject(request)?;
        self.publish_message(reply, None, Some(headers), payload, true)
            .await
    }

    async fn publish_message(
        &self,
        subject: Subject,
        reply: Option<Subject>,
        headers: Option<HeaderMap>,
        payload: Bytes,
        to_reply_subject: bool,
    ) -> Result<(), PublishError> {
        let mut context = HeaderMap::new();
        let mut msg = outgoing(
            &self.server,
            &self.client,
            subject.as_str(),
            headers.as_ref(),
            &payload,
        )
        .operation_name("publish");
        if let Some(reply) = &reply {
            msg = msg.attribute(attr::MESSAGING_NATS_MESSAGE_REPLY_TO, reply.to_string());
        }
        if to_reply_subject {
            msg = msg.temporary();
        }
        let send = self.telemetry.send_span(msg, &mut context);
        let headers = with_context(&send, headers, context, &payload, &self.client);
        let client = &self.client;
        let result = match (reply, headers) {
            (None, None) => client.publish(subject, payload).await,
            (None, Some(h)) => client.publish_with_headers(subject, h, payload).await,
            (Some(r), None) => client.publish_with_reply(subject, r, payload).await,
            (Some(r), Some(h)) => {
                client
                    .publish_with_reply_and_headers(subject, r, h, payload)
                    .await
            }
        };
        match &result {
            Ok(()) => send.end(),
            Err(e) => send.end_with_error(&format!("{:?}", e.kind()), e),
        }
        result
    }

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
    pub async fn request<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<Message, RequestError> {
        self.request_message(subject.to_subject(), None, payload)
            .await
    }

    /// [`request`](Self::request) with your headers.
    pub async fn request_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Message, RequestError> {
        self.request_message(subject.to_subject(), Some(headers), payload)
            .await
    }

    async fn request_message(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<Message, RequestError> {
        let mut context = HeaderMap::new();
        let msg = outgoing(
            &self.server,
            &self.client,
            subject.as_str(),
            headers.as_ref(),
            &payload,
        )
        .operation_name("request");
        let send = self.telemetry.send_span(msg, &mut context);
        let headers = with_context(&send, headers, context, &payload, &self.client);
        let mut request = Request::new().payload(payload);
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        let result = self.client.send_request(subject, request).await;
        match &result {
            Ok(reply) => {
                self.record_reply(reply, send.context());
                send.end();
            }
            Err(e) => send.end_with_error(&format!("{:?}", e.kind()), e),
        }
        result
    }

    /// The requester's span for a reply: a child of the responder's reply span, or of the
    /// request span when the reply brings no usable context. In link mode it stays under
    /// the request span (the requester's own) and links to the responder's span, without
    /// adopting the responder's baggage.
    fn record_reply(&self, reply: &Message, request: &Context) {
        let mut extracted = self.telemetry.propagation().extract(&reply.headers);
        let msg = incoming(
            &self.server,
            &self.client,
            reply,
            None,
            None,
            self.policy,
            true,
        )
        .temporary();
        let span = if self.policy == ParentPolicy::Link {
            let remote = extracted.context.span().span_context().clone();
            extracted.context = Context::new().with_remote_span_context(remote);
            extracted.join_trace = None;
            self.telemetry.process_span_under(msg, &extracted, request)
        } else {
            if !extracted.has_parent() {
                // Keep `source`/`rejected` as found, so the span still says why.
                extracted.context = request.clone();
                extracted.join_trace = None;
            }
            self.telemetry.process_span_extracted(msg, &extracted)
        };
        span.record(&Ok::<(), Infallible>(()));
        span.end();
    }

    /// Subscribe to `subject`; process the messages with [`TracedSubscriber::process`] or
    /// take them one at a time with [`TracedSubscriber::next`].
    pub async fn subscribe<S: ToSubject>(
        &self,
        subject: S,
    ) -> Result<TracedSubscriber, SubscribeError> {
        let subject = subject.to_subject();
        let subscriber = self.client.subscribe(subject.clone()).await?;
        Ok(TracedSubscriber::new(
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
        Ok(TracedSubscriber::new(
            self.clone(),
            subscriber,
            subject.to_string(),
            Some(queue_group),
        ))
    }

    /// The process span for a message you received yourself (from a plain
    /// [`Subscriber`]): run your handler with [`ProcessSpan::run`], then
    /// [`end`](ProcessSpan::end) it.
    pub fn process_span(&self, message: &Message) -> ProcessSpan {
        let msg = incoming(
            &self.server,
            &self.client,
            message,
            None,
            None,
            self.policy,
            true,
        );
        self.telemetry.process_span(msg, &message.headers)
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

/// Merge the context headers into the user's, saying so on the span if they had to be left
/// out.
pub(crate) fn with_context(
    send: &SendSpan,
    headers: Option<HeaderMap>,
    context: HeaderMap,
    payload: &Bytes,
    client: &Client,
) -> Option<HeaderMap> {
    let (headers, dropped) = merge(headers, context, payload.len(), client.max_payload());
    if dropped {
        send.set_attribute(attr::CONTEXT_DROPPED, "max_payload");
    }
    headers
}

/// `server.address` and `server.port` of the server a client is connected to, cached.
///
/// async-nats only hands out a copy of the whole server `INFO` (a dozen strings), so the
/// address is read from it when the client has (re)connected since the last read, and
/// otherwise at most every [`Server::RECHECK`] messages; in between every message shares
/// the cached value. Clones share the cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct Server(Arc<ServerCache>);

#[derive(Debug, Default)]
struct ServerCache {
    address: RwLock<Option<ServerAddress>>,
    uses: AtomicU64,
}

#[derive(Debug)]
struct ServerAddress {
    /// The client's connect count when the address was read.
    connects: u64,
    host: StringValue,
    port: i64,
}

impl Server {
    /// Messages between two reads of the server `INFO` while the client stays connected
    /// (async-nats counts a reconnect before it publishes the new server's `INFO`).
    const RECHECK: u64 = 1024;

    /// The address of the server `client` is connected to, if it has told us.
    pub(crate) fn address(&self, client: &Client) -> Option<(StringValue, i64)> {
        let cache = &self.0;
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        let recheck = cache
            .uses
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(Self::RECHECK);
        if !recheck {
            let cached = cache.address.read().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = cached.as_ref().filter(|a| a.connects == connects) {
                return Some((a.host.clone(), a.port));
            }
        }
        let info = client
            .try_server_info()
            .filter(|info| !info.host.is_empty());
        let fresh = info.map(|info| ServerAddress {
            connects,
            host: StringValue::from(Arc::<str>::from(info.host)),
            port: i64::from(info.port),
        });
        let out = fresh.as_ref().map(|a| (a.host.clone(), a.port));
        *cache.address.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        out
    }
}

/// Describe an outgoing core NATS message (operation name left to the caller).
pub(crate) fn outgoing<'a>(
    server: &Server,
    client: &Client,
    subject: &'a str,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Outgoing<'a> {
    let mut msg = Outgoing::new(NATS, subject).body_size(payload.len());
    if let Some(id) = headers.and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)) {
        msg = msg.message_id(id.as_str().to_owned());
    }
    if let Some((host, port)) = server.address(client) {
        msg = msg
            .attribute(attr::SERVER_ADDRESS, host)
            .attribute(attr::SERVER_PORT, port);
    }
    msg
}

/// Describe an incoming NATS message, with the names nats.net uses. `core` is false for a
/// JetStream delivery, whose reply subject is the server's ack subject (not recorded) and
/// whose attempt comes from the server's delivery count (recorded by the caller).
pub(crate) fn incoming<'a>(
    server: &Server,
    client: &Client,
    message: &'a Message,
    subscription: Option<&StringValue>,
    queue_group: Option<&StringValue>,
    policy: ParentPolicy,
    core: bool,
) -> Incoming<'a> {
    // One copy of the subject, shared by `messaging.destination.name` and
    // `messaging.nats.message.subject`.
    let subject = StringValue::from(Arc::<str>::from(message.subject.as_str()));
    let mut msg = Incoming::with_destination_value(NATS, message.subject.as_str(), subject.clone())
        .parent_policy(policy)
        .body_size(message.payload.len())
        .attribute(attr::MESSAGING_MESSAGE_ENVELOPE_SIZE, message.length as i64)
        .attribute(attr::MESSAGING_NATS_MESSAGE_SUBJECT, subject);
    if let Some(reply) = message.reply.as_ref().filter(|_| core) {
        msg = msg.attribute(attr::MESSAGING_NATS_MESSAGE_REPLY_TO, reply.to_string());
    }
    if let Some(subscription) = subscription {
        msg = msg.destination_template(subscription.clone());
    }
    if let Some(group) = queue_group {
        msg = msg.attribute(attr::MESSAGING_CONSUMER_GROUP_NAME, group.clone());
    }
    if let Some(id) = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
    {
        msg = msg.message_id(id.as_str().to_owned());
    }
    if let Some(attempt) = crate::propagation::attempt(&message.headers).filter(|_| core) {
        msg = msg.attempt(attempt);
    }
    if let Some((host, port)) = server.address(client) {
        msg = msg
            .attribute(attr::SERVER_ADDRESS, host)
            .attribute(attr::SERVER_PORT, port);
    }
    msg
}

/// One message from a [`TracedSubscriber`] and its open process span.
///
/// Run the handler with `delivery.span.run(handler(&delivery.message)).await`, then
/// `delivery.span.end()`.
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The message, exactly as received.
    pub message: Message,
    /// Its process span (not yet ended).
    pub span: ProcessSpan,
}

/// How long a stopped subscription waits for its connection to finish the drain (the
/// connection may be down) before the loop returns.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A traced subscription (plain or queue group).
///
/// [`process`](Self::process) runs a handler for every message, each inside its own
/// process span, until the subscription ends, a [`limit`](Self::limit) is reached or a
/// [`Stop`] fires. The returned future is `Send`, so it can be spawned.
pub struct TracedSubscriber {
    client: TracedClient,
    subscriber: Subscriber,
    subscription: StringValue,
    queue_group: Option<StringValue>,
    until: Until,
    limit_requested: bool,
    /// Set once a stop has sent the drain: how long to wait for the rest.
    drain_deadline: Option<tokio::time::Instant>,
}

impl fmt::Debug for TracedSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedSubscriber")
            .field("subscription", &self.subscription)
            .field("queue_group", &self.queue_group)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl TracedSubscriber {
    fn new(
        client: TracedClient,
        subscriber: Subscriber,
        subscription: String,
        queue_group: Option<String>,
    ) -> TracedSubscriber {
        TracedSubscriber {
            client,
            subscriber,
            subscription: StringValue::from(Arc::<str>::from(subscription)),
            queue_group: queue_group.map(|g| StringValue::from(Arc::<str>::from(g))),
            until: Until::default(),
            limit_requested: false,
            drain_deadline: None,
        }
    }

    /// Stop after `messages` messages.
    ///
    /// The server is asked to stop delivering to this subscription after that many
    /// messages (NATS auto-unsubscribe, sent when the loop starts), so in a queue group the
    /// remaining messages go to the other members instead of being left unprocessed here.
    pub fn limit(mut self, messages: usize) -> TracedSubscriber {
        self.until.limit(messages);
        self
    }

    /// Stop when `stop` fires: finish the message in hand, then drain the subscription
    /// (unsubscribe and process what had already reached the client) and return.
    ///
    /// Core NATS delivers at most once: a message the server sent just before it read the
    /// unsubscribe, and that the client had not yet read, is lost by async-nats' drain. If
    /// the connection is down, the loop waits at most 10 s for the drain before it
    /// returns.
    pub fn stop_on(mut self, stop: &Stop) -> TracedSubscriber {
        self.until.stop_on(stop);
        self
    }

    /// The subscription subject (may hold wildcards).
    pub fn subject(&self) -> &str {
        self.subscription.as_str()
    }

    /// The queue group, for a queue subscription.
    pub fn queue_group(&self) -> Option<&str> {
        self.queue_group.as_ref().map(StringValue::as_str)
    }

    /// The wrapped subscriber (to unsubscribe or drain it).
    pub fn subscriber_mut(&mut self) -> &mut Subscriber {
        &mut self.subscriber
    }

    /// The next message with its process span open; `None` when the subscription has
    /// ended, the limit is reached, or the stop signal fired and the subscription is
    /// drained.
    pub async fn next(&mut self) -> Option<Delivery> {
        // Each flag is set only once its command is sent, so a `next` cancelled halfway
        // (a timeout, a `select!`) sends it again on the next call.
        if !self.limit_requested {
            if let Some(limit) = self.until.limit_value().filter(|n| *n > 0) {
                // Best effort: without it the limit still holds on this side.
                let _ = self
                    .subscriber
                    .unsubscribe_after(u64::try_from(limit).unwrap_or(u64::MAX))
                    .await;
            }
            self.limit_requested = true;
        }
        let message = loop {
            let next = match self.drain_deadline {
                // Whatever has arrived is still taken after the deadline (the timeout
                // polls the stream first); only waiting for more is bounded.
                Some(deadline) => {
                    tokio::time::timeout_at(deadline, self.until.next(&mut self.subscriber))
                        .await
                        .unwrap_or(None)
                }
                None => self.until.next(&mut self.subscriber).await,
            };
            match next {
                Some(message) => break message,
                // Once draining, the stop is forgotten: this runs once.
                None if self.until.stopped() => {
                    if self.subscriber.drain().await.is_err() {
                        return None;
                    }
                    self.drain_deadline = Some(tokio::time::Instant::now() + DRAIN_WAIT);
                    self.until.forget_stop();
                }
                None => return None,
            }
        };
        self.until.count();
        let msg = incoming(
            &self.client.server,
            &self.client.client,
            &message,
            Some(&self.subscription),
            self.queue_group.as_ref(),
            self.client.policy,
            true,
        );
        let span = self.client.telemetry.process_span(msg, &message.headers);
        Some(Delivery { message, span })
    }

    /// Run `handler` for every message, each inside its process span; the span records the
    /// handler's error, if any. Returns when the subscription ends, the limit is reached
    /// or the stop signal fires.
    pub async fn process<F, Fut, T, E>(mut self, mut handler: F) -> Processed
    where
        F: FnMut(Message) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let mut done = Processed::default();
        while let Some(Delivery { message, span }) = self.next().await {
            let failed = span.run(handler(message)).await.is_err();
            span.end();
            done.messages += 1;
            done.failed += usize::from(failed);
        }
        done
    }
}
