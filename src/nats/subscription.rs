//! Core NATS subscriptions as a source for the one consume loop.

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{Message, Subscriber};
use futures_util::StreamExt as _;
use opentelemetry::{Context, StringValue};

use super::client::TracedClient;
use super::describe::{closed, incoming, outage, Held, Outages, Waited};
use crate::messaging::attributes::system::NATS;
use crate::messaging::consume::{Settle, SettleError, Settlement, Source, SourceError};
use crate::propagation::ReadCarrier;
use crate::{Consumer, Incoming};

/// A traced core NATS subscription (plain or queue group), from
/// [`TracedClient::subscribe`] or [`TracedClient::queue_subscribe`]: the one
/// [`Consumer`] over a [`Subscription`].
///
/// Core NATS delivers at most once: there is nothing to acknowledge, so every settlement
/// is `none`, and [`Decision::Redeliver`](crate::Decision::Redeliver) cannot give a
/// message back (it is recorded as failed, and the loop goes on). A
/// [`limit`](Consumer::limit) also asks the server to stop delivering to this
/// subscription after that many messages (NATS auto-unsubscribe), so in a queue group the
/// rest go to the other members; the subscription then ends (a later `run` on it returns
/// at once). When the [stop signal](Consumer::stop_on) fires, the
/// subscription drains: it unsubscribes and processes what had already reached the client
/// (a message still on the wire while the server reads the unsubscribe can be lost), and
/// gives up waiting after 10 s if the connection is down.
pub type TracedSubscriber = Consumer<Subscription>;

impl TracedSubscriber {
    /// The subscription subject (may hold wildcards).
    pub fn subject(&self) -> &str {
        self.source().subject()
    }

    /// The queue group, for a queue subscription.
    pub fn queue_group(&self) -> Option<&str> {
        self.source().queue_group()
    }
}

/// How long a stopped subscription waits for its connection to finish the drain.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// The source behind a [`TracedSubscriber`]: an async-nats [`Subscriber`] and what its
/// spans record (subscription subject, queue group, server address).
pub struct Subscription {
    client: TracedClient,
    subscriber: Mutex<Subscriber>,
    subject: StringValue,
    queue_group: Option<StringValue>,
    /// Messages taken from the subscriber, for the server-side limit of a later run.
    taken: AtomicU64,
    /// Set once a stop has sent the drain: how long to wait for the rest.
    drain_deadline: Option<tokio::time::Instant>,
    outages: Outages,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("subject", &self.subject)
            .field("queue_group", &self.queue_group)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(super) fn consumer(
        client: TracedClient,
        subscriber: Subscriber,
        subject: String,
        queue_group: Option<String>,
    ) -> TracedSubscriber {
        let telemetry = client.telemetry.clone();
        let policy = client.policy;
        let source = Subscription {
            client,
            subscriber: Mutex::new(subscriber),
            subject: StringValue::from(Arc::<str>::from(subject)),
            queue_group: queue_group.map(|g| StringValue::from(Arc::<str>::from(g))),
            taken: AtomicU64::new(0),
            drain_deadline: None,
            outages: Outages::default(),
        };
        Consumer::from_source(source, telemetry).parent_policy(policy)
    }

    /// The subscription subject (may hold wildcards).
    pub fn subject(&self) -> &str {
        self.subject.as_str()
    }

    /// The queue group, for a queue subscription.
    pub fn queue_group(&self) -> Option<&str> {
        self.queue_group.as_ref().map(StringValue::as_str)
    }

    /// The wrapped subscriber (to unsubscribe or drain it yourself).
    pub fn subscriber_mut(&mut self) -> &mut Subscriber {
        self.subscriber
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn next_message(&self) -> Waited<Message> {
        let next = std::future::poll_fn(|cx| {
            self.subscriber
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .poll_next_unpin(cx)
        });
        match self.drain_deadline {
            // Whatever has arrived is still taken after the deadline (the timeout polls
            // the stream first); only waiting for more is bounded.
            Some(deadline) => {
                Waited::Item(tokio::time::timeout_at(deadline, next).await.ok().flatten())
            }
            None => self.outages.watch(&self.client.client, next).await,
        }
    }
}

impl Source for Subscription {
    type Message = Message;
    type Action = Infallible;
    type Delivery<'a> = NatsDelivery<'a>;

    async fn next(&self) -> Option<Result<NatsDelivery<'_>, SourceError>> {
        let message = match self.next_message().await {
            Waited::Item(Some(message)) => message,
            Waited::Outage(state) => return Some(Err(outage(state))),
            // Ended: unsubscribed or drained, or the client closed the connection for
            // good, which must not look like a clean end.
            Waited::Item(None) if self.drain_deadline.is_none() => {
                return closed(&self.client.client).map(Err)
            }
            Waited::Item(None) => return None,
        };
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(Ok(NatsDelivery {
            source: self,
            held: Held::new(message),
        }))
    }

    fn describe_batch<'a>(&'a self, destination: &'a str) -> Incoming<'a> {
        let msg = Incoming::new(NATS, destination);
        match &self.queue_group {
            Some(group) => msg.attribute(
                crate::messaging::attributes::MESSAGING_CONSUMER_GROUP_NAME,
                group.clone(),
            ),
            None => msg,
        }
    }

    async fn prepare(&mut self, limit: Option<u64>) {
        if let Some(limit) = limit.filter(|n| *n > 0) {
            // The server counts every message of the subscription, earlier runs' too.
            let total = self.taken.load(Ordering::Relaxed).saturating_add(limit);
            // Best effort: without it the limit still holds on this side.
            let _ = self.subscriber_mut().unsubscribe_after(total).await;
        }
    }

    async fn drain(&mut self) -> bool {
        if self.drain_deadline.is_some() || self.subscriber_mut().drain().await.is_err() {
            return false;
        }
        self.drain_deadline = Some(tokio::time::Instant::now() + DRAIN_WAIT);
        true
    }
}

/// A message received on a core NATS subscription.
#[derive(Debug)]
pub struct NatsDelivery<'a> {
    source: &'a Subscription,
    held: Held<Message>,
}

impl Settle for NatsDelivery<'_> {
    type Message = Message;
    type Action = Infallible;

    fn describe(&self) -> Incoming<'_> {
        let source = self.source;
        self.held.describe(|message| {
            incoming(
                &source.client.server,
                &source.client.client,
                message,
                Some(&source.subject),
                source.queue_group.as_ref(),
                true,
            )
        })
    }

    fn destination(&self) -> &str {
        self.held.subject()
    }

    fn system(&self) -> &'static str {
        NATS
    }

    fn metric_key(&self) -> std::borrow::Cow<'_, str> {
        // Deliveries are named by the subscription's subject (the template).
        self.source.subject.as_str().into()
    }

    fn headers(&self) -> &dyn ReadCarrier {
        self.held.headers()
    }

    fn message(&mut self, keep: bool) -> Option<Message> {
        self.held.hand_over(keep)
    }

    fn position(&self) -> String {
        format!("subject {}", self.held.subject())
    }

    async fn settle(
        &mut self,
        settlement: Settlement<'_, Infallible>,
        _span: &Context,
        _attempt: u32,
    ) -> Result<&'static str, SettleError> {
        match settlement {
            Settlement::Action(never) => match *never {},
            // At most once: nothing to acknowledge, nothing to give back.
            Settlement::Done | Settlement::Redeliver | Settlement::Nothing => Ok("none"),
        }
    }
}
