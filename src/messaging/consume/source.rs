//! What a broker adapter hands the consume loop: a [`Source`] of deliveries, and for each
//! delivery how to describe it, read its headers and [`Settle`] it.
//!
//! The adapters in this crate implement these for rdkafka, async-nats (core and
//! JetStream) and lapin; implement them for another client and [`Consumer`] gives it the
//! same loop, spans, policies and summary.
//!
//! [`Consumer`]: super::Consumer

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use opentelemetry::Context;

use crate::propagation::ReadCarrier;
use crate::Incoming;

/// A boxed error from a client library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A stream of deliveries from one broker consumer.
///
/// `next` takes `&self` so that a batch can hold several deliveries at once; a delivery
/// may borrow the source (Kafka's messages borrow their consumer).
pub trait Source: Send + Sync {
    /// What the user's handler gets for each delivery.
    type Message: Send;
    /// What a failure policy can ask of this broker beyond the common decisions
    /// ([`Decision::Settle`](super::Decision::Settle)).
    type Action: Clone + Send + Sync + 'static;
    /// One received message, and what settling it needs.
    type Delivery<'a>: Settle<Message = Self::Message, Action = Self::Action>
    where
        Self: 'a;

    /// The next delivery; `None` once the consumer has ended (cancelled, unsubscribed,
    /// drained). Must be cancellation-safe: the loop races it against the stop signal.
    fn next(&self) -> impl Future<Output = Option<Result<Self::Delivery<'_>, SourceError>>> + Send;

    /// Describe a batch of messages from `destination` (the batch span's attributes:
    /// system, consumer group, client id).
    fn describe_batch<'a>(&'a self, destination: &'a str) -> Incoming<'a>;

    /// Called once when a loop starts, with its limit: a source can tell the broker
    /// (core NATS asks the server to stop delivering after that many messages).
    fn prepare(&mut self, limit: Option<u64>) -> impl Future<Output = ()> + Send {
        let _ = limit;
        async {}
    }

    /// Close the consumer, waiting until it has (Kafka leaves its group on the blocking
    /// pool). The default just drops it.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async move { drop(self) }
    }

    /// The stop signal fired. Return `true` to have the loop go on reading until
    /// [`next`](Self::next) returns `None` (core NATS drains: it unsubscribes and hands
    /// over what already reached the client), `false` to stop at once (the default).
    fn drain(&mut self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

/// One delivery: how the loop describes it, reads it, hands it to the handler and
/// settles it. Implemented by each adapter.
pub trait Settle: Send {
    /// What the user's handler gets.
    type Message: Send;
    /// The broker-specific settlements (see [`Source::Action`]).
    type Action: Clone + Send + Sync + 'static;

    /// The message's description for its process span: destination and the attributes
    /// this broker knows. The loop adds the delivery attempt and the parent policy.
    fn describe(&self) -> Incoming<'_>;

    /// Where the message came from (topic, subject, queue), as in
    /// [`describe`](Self::describe).
    fn destination(&self) -> &str;

    /// The message's headers.
    fn headers(&self) -> &dyn ReadCarrier;

    /// The message's `messaging.system` (what [`describe`](Self::describe) says; override
    /// it with a constant, it is asked for each delivery when hooks are set).
    fn system(&self) -> &'static str {
        self.describe().system
    }

    /// What the consumer's metrics are kept per: the destination, or the subscription's
    /// pattern when deliveries are named by a template (NATS wildcards). Deliveries with
    /// the same key must describe the same metric attributes.
    fn metric_key(&self) -> std::borrow::Cow<'_, str> {
        self.destination().into()
    }

    /// When the broker stored the message, if it says (for queue time when the producer
    /// wrote no `tracehop-sent-at`); asked for each delivery when metrics are on.
    fn enqueued_at(&self) -> Option<std::time::SystemTime> {
        None
    }

    /// How many times the broker delivered this message before, as far as it says
    /// (JetStream's delivery count, RabbitMQ's `x-death`, `x-delivery-count` and
    /// redelivered flag); 0 when it does not count.
    fn redeliveries(&self) -> u32 {
        0
    }

    /// The message for a run of the handler. With `keep`, the delivery must be able to
    /// hand it out again (a retry in place may follow): give a copy. Without, hand over
    /// the message itself. `None` if it was already handed over.
    fn message(&mut self, keep: bool) -> Option<Self::Message>;

    /// Where the message is, for errors and logs (`orders[2]@17`, a queue and delivery
    /// tag, a stream sequence).
    fn position(&self) -> String;

    /// Settle the delivery as the loop decided. `span` is the context of the message's
    /// process span (a message forwarded from here is sent from inside it) and `attempt`
    /// the delivery attempt of the run that decided. Returns what was done, recorded on
    /// the span as `tracehop.settlement` (`ack`, `commit`, `nack_requeue`, `nak`, `term`,
    /// `forward`, `none`, ...).
    fn settle(
        &mut self,
        settlement: Settlement<'_, Self::Action>,
        span: &Context,
        attempt: u32,
    ) -> impl Future<Output = Result<&'static str, SettleError>> + Send;
}

/// How the loop asks a delivery to be settled. (Not `non_exhaustive`: an adapter must
/// handle every case, so a new one is a breaking change.)
#[derive(Debug, PartialEq, Eq)]
pub enum Settlement<'a, A> {
    /// The message is done: it succeeded, or the policy said skip (ack, commit).
    Done,
    /// Give it back to the broker for another delivery (nack with requeue, nak, seek).
    Redeliver,
    /// A broker-specific settlement.
    Action(&'a A),
    /// Settle nothing: the handler or the broker does (manual settlement, `no_ack`
    /// consumers, Kafka auto-commit).
    Nothing,
}

impl<A> Clone for Settlement<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Settlement<'_, A> {}

/// An error the source reported instead of a delivery.
#[derive(Debug)]
pub struct SourceError {
    /// Whether the consumer cannot go on (the loop ends with it).
    pub fatal: bool,
    /// The client's error.
    pub error: BoxError,
}

impl SourceError {
    /// An error after which the source can go on (logged and counted).
    pub fn transient(error: impl Into<BoxError>) -> SourceError {
        SourceError {
            fatal: false,
            error: error.into(),
        }
    }

    /// An error that ends the loop.
    pub fn fatal(error: impl Into<BoxError>) -> SourceError {
        SourceError {
            fatal: true,
            error: error.into(),
        }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// A settlement the broker did not take.
#[derive(Debug)]
pub struct SettleError {
    /// What was being done (`ack`, `commit`, `forward`, ...).
    pub settlement: &'static str,
    /// Whether the loop must stop: going on would lose the message (a Kafka forward that
    /// failed: a later commit would skip the message).
    pub fatal: bool,
    /// The client's error.
    pub error: BoxError,
}

impl SettleError {
    /// A settlement that failed; the loop records it and goes on.
    pub fn new(settlement: &'static str, error: impl Into<BoxError>) -> SettleError {
        SettleError {
            settlement,
            fatal: false,
            error: error.into(),
        }
    }

    /// A settlement that failed in a way that must end the loop.
    pub fn fatal(settlement: &'static str, error: impl Into<BoxError>) -> SettleError {
        SettleError {
            settlement,
            fatal: true,
            error: error.into(),
        }
    }
}

impl fmt::Display for SettleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.settlement, self.error)
    }
}

/// The headers of a delivery that has none (or whose message was handed over).
#[cfg_attr(
    not(any(feature = "kafka", feature = "nats", feature = "amqp")),
    allow(dead_code)
)]
pub(crate) const NO_HEADERS: &dyn ReadCarrier = &NoHeaders;

#[cfg_attr(
    not(any(feature = "kafka", feature = "nats", feature = "amqp")),
    allow(dead_code)
)]
struct NoHeaders;

impl ReadCarrier for NoHeaders {
    fn get(&self, _key: &str) -> Option<&[u8]> {
        None
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}
