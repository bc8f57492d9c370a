//! Consuming: lapin deliveries as a source for the one consume loop, settled with
//! `basic.ack`, `basic.nack` or `basic.reject` as the loop decides.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties};
use opentelemetry::{Context, StringValue};

use super::{carrier, REDELIVERED};
use crate::messaging::attributes as attr;
use crate::messaging::consume::watch::watched;
use crate::messaging::consume::{
    delivery_attempt, Settle, SettleError, Settlement, Source, SourceError, NO_HEADERS,
};
use crate::propagation::ReadCarrier;
use crate::{Consumer, Incoming, OnFailure, Telemetry};

/// The header RabbitMQ adds each time a message is dead-lettered.
const X_DEATH: &str = "x-death";
/// The header quorum queues add to a redelivered message: earlier delivery attempts.
const X_DELIVERY_COUNT: &str = "x-delivery-count";

/// A lapin [`Consumer`](lapin::Consumer) run through the one [`Consumer`] loop.
///
/// Each delivery's handler runs inside its process span (a child of the producer's send
/// span, or a new trace linked to it under [`ParentPolicy::Link`](crate::ParentPolicy)),
/// then the delivery is acked; a failed (or panicking) handler's delivery is settled as
/// the failure policy says: by default `basic.nack` with requeue
/// ([`OnFailure::redeliver`]), or into the queue's dead-letter exchange
/// ([`OnFailure::dead_letter`], [`OnFailure::reject`]). A delivery the handler already
/// settled itself (through the `Delivery`'s acker) is left alone
/// (`tracehop.settlement=handler`); with a `no_ack` consumer, use
/// [`manual_settlement`](Consumer::manual_settlement).
///
/// The loop ends when the consumer is cancelled (`basic_cancel` with its
/// [`tag`](Consumer::tag), or the channel closes cleanly), at its limit or stop signal,
/// or with [`ConsumeError::Source`](crate::ConsumeError::Source) when the channel or
/// connection fails. Deliveries the client prefetched but the loop did not take go back
/// to the queue when the channel closes.
pub type TracedConsumer = Consumer<Deliveries>;

/// What a RabbitMQ failure policy can do beyond the common decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmqpAction {
    /// `basic.nack` without requeue: the broker dead-letters the message if its queue has
    /// a dead-letter exchange, and drops it otherwise.
    Nack,
    /// `basic.reject` without requeue: like [`Nack`](Self::Nack), with the older method.
    Reject,
}

impl OnFailure<AmqpAction> {
    /// `basic.nack` without requeue: into the queue's dead-letter exchange (dropped if it
    /// has none).
    pub fn dead_letter() -> Self {
        OnFailure::settle(AmqpAction::Nack)
    }

    /// `basic.reject` without requeue: into the queue's dead-letter exchange (dropped if
    /// it has none).
    pub fn reject() -> Self {
        OnFailure::settle(AmqpAction::Reject)
    }
}

impl TracedConsumer {
    /// Process the deliveries of `consumer` as service `telemetry`.
    pub fn new(consumer: lapin::Consumer, telemetry: Telemetry) -> TracedConsumer {
        let queue = consumer.queue().as_str().to_owned();
        let source = Deliveries {
            queue_value: StringValue::from(Arc::<str>::from(queue.as_str())),
            queue,
            consumer: Mutex::new(Receiving {
                consumer,
                last: None,
            }),
        };
        Consumer::from_source(source, telemetry)
    }

    /// The consumer tag: `basic_cancel` it to stop the loop.
    pub fn tag(&self) -> ShortString {
        self.source()
            .consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .consumer
            .tag()
    }

    /// The queue consumed, the process spans' destination.
    pub fn queue(&self) -> &str {
        &self.source().queue
    }
}

/// The source behind a [`TracedConsumer`]: a lapin consumer and its queue.
#[derive(Debug)]
pub struct Deliveries {
    consumer: Mutex<Receiving>,
    queue: String,
    /// `queue` as the process spans' `messaging.destination.name`, shared by all of them.
    queue_value: StringValue,
}

/// The lapin consumer, and the acker of its latest delivery: whether that one is
/// poisoned says whether the channel failed (the consumer itself does not say).
#[derive(Debug)]
struct Receiving {
    consumer: lapin::Consumer,
    last: Option<Acker>,
}

/// How often a consumer waiting for a delivery, or for lapin to confirm a settlement,
/// checks whether its channel failed under it.
const CHECK_CHANNEL: Duration = Duration::from_secs(1);

impl Source for Deliveries {
    type Message = Delivery;
    type Action = AmqpAction;
    type Delivery<'a> = AmqpDelivery<'a>;

    async fn next(&self) -> Option<Result<AmqpDelivery<'_>, SourceError>> {
        let next = std::future::poll_fn(|cx| {
            let mut receiving = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
            // Boxed as it arrives: a `Delivery` is large (about a kilobyte), and waiting
            // and wrapping it would otherwise copy it several times.
            let polled = receiving
                .consumer
                .poll_next_unpin(cx)
                .map(|item| item.map(|delivery| delivery.map(Box::new)));
            if let std::task::Poll::Ready(Some(Ok(delivery))) = &polled {
                receiving.last = Some(delivery.acker.clone());
            }
            polled
        });
        // lapin can miss ending the stream of a channel whose connection failed (about
        // one connection reset in fourteen): waiting is re-polled every second, and ends
        // once the latest delivery's acker says the channel failed.
        let failed = || {
            let receiving = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
            receiving
                .last
                .as_ref()
                .is_some_and(Acker::poisoned)
                .then_some(())
        };
        match watched(next, CHECK_CHANNEL, failed).await {
            Ok(None) => None,
            Ok(Some(Ok(delivery))) => Some(Ok(AmqpDelivery {
                source: self,
                acker: delivery.acker.clone(),
                delivery_tag: delivery.delivery_tag,
                redeliveries: redeliveries(&self.queue, &delivery.properties, delivery.redelivered),
                delivery: Some(delivery),
            })),
            // lapin follows an error with the end of the stream: the channel is gone.
            Ok(Some(Err(e))) => Some(Err(SourceError::fatal(e))),
            Err(()) => Some(Err(SourceError::fatal(
                "the consumer's channel failed (its deliveries' ackers are poisoned) and lapin did not end its stream",
            ))),
        }
    }

    fn describe_batch<'a>(&'a self, destination: &'a str) -> Incoming<'a> {
        Incoming::new(attr::system::RABBITMQ, destination)
    }
}

/// A delivery from a RabbitMQ queue.
pub struct AmqpDelivery<'a> {
    source: &'a Deliveries,
    acker: Acker,
    delivery_tag: u64,
    redeliveries: u32,
    /// `None` once handed to the handler. Boxed: a `Delivery` is large, and the loop moves
    /// the delivery around before the handler takes it.
    delivery: Option<Box<Delivery>>,
}

impl fmt::Debug for AmqpDelivery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDelivery")
            .field("queue", &self.source.queue)
            .field("delivery_tag", &self.delivery_tag)
            .finish_non_exhaustive()
    }
}

impl Settle for AmqpDelivery<'_> {
    type Message = Delivery;
    type Action = AmqpAction;

    fn describe(&self) -> Incoming<'_> {
        let queue = &self.source.queue;
        let mut msg = match &self.delivery {
            Some(delivery) => describe_unattempted(queue, delivery),
            None => Incoming::new(attr::system::RABBITMQ, queue),
        };
        if msg.destination_value.is_none() {
            msg.destination_value = Some(self.source.queue_value.clone());
        }
        msg
    }

    fn destination(&self) -> &str {
        &self.source.queue
    }

    fn system(&self) -> &'static str {
        attr::system::RABBITMQ
    }

    fn metric_key(&self) -> std::borrow::Cow<'_, str> {
        let queue = self.source.queue.as_str();
        match &self.delivery {
            Some(d) => super::consume_name(d.exchange.as_str(), d.routing_key.as_str(), queue),
            None => queue.into(),
        }
    }

    fn enqueued_at(&self) -> Option<std::time::SystemTime> {
        stored_at(&self.delivery.as_ref()?.properties)
    }

    fn headers(&self) -> &dyn ReadCarrier {
        match &self.delivery {
            Some(delivery) => &delivery.properties,
            None => NO_HEADERS,
        }
    }

    fn redeliveries(&self) -> u32 {
        self.redeliveries
    }

    fn message(&mut self, keep: bool) -> Option<Delivery> {
        if keep {
            self.delivery.as_deref().map(copy)
        } else {
            self.delivery.take().map(|delivery| *delivery)
        }
    }

    fn position(&self) -> String {
        format!("queue {} delivery {}", self.source.queue, self.delivery_tag)
    }

    async fn settle(
        &mut self,
        settlement: Settlement<'_, AmqpAction>,
        _span: &Context,
        _attempt: u32,
    ) -> Result<&'static str, SettleError> {
        let acker = &self.acker;
        let (label, done) = match settlement {
            Settlement::Nothing => return Ok("none"),
            Settlement::Done => (
                "ack",
                settled(acker, acker.ack(BasicAckOptions::default())).await,
            ),
            Settlement::Redeliver => (
                "nack_requeue",
                settled(
                    acker,
                    acker.nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    }),
                )
                .await,
            ),
            Settlement::Action(AmqpAction::Nack) => (
                "nack",
                settled(
                    acker,
                    acker.nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    }),
                )
                .await,
            ),
            Settlement::Action(AmqpAction::Reject) => (
                "reject",
                settled(acker, acker.reject(BasicRejectOptions { requeue: false })).await,
            ),
        };
        match done {
            Ok(true) => Ok(label),
            // lapin answers `false` both for a delivery already settled through a clone of
            // its acker (the handler did it) and for one whose channel closed: the broker
            // delivers that one again, so it was not settled.
            Ok(false) if acker.poisoned() => Err(SettleError::fatal(label, CHANNEL_CLOSED)),
            Ok(false) => Ok("handler"),
            // The channel is gone: the loop cannot settle anything more.
            Err(e) => Err(SettleError::fatal(label, e)),
        }
    }
}

/// The outcome of a settlement `call` of `acker`, or `Ok(false)` once the acker is
/// poisoned while lapin has not answered (a call in flight when the connection failed
/// may never resolve): the delivery counts as not settled, the broker delivers it again.
async fn settled(
    acker: &Acker,
    call: impl std::future::Future<Output = lapin::Result<bool>>,
) -> lapin::Result<bool> {
    let poisoned = || acker.poisoned().then_some(());
    watched(call, CHECK_CHANNEL, poisoned)
        .await
        .unwrap_or(Ok(false))
}

/// Why a delivery could not be settled after its channel closed.
const CHANNEL_CLOSED: &str =
    "the channel closed before the delivery was settled; the broker delivers it again";

/// A copy of `delivery` for one run of the handler (lapin's `Delivery` is not `Clone`);
/// its acker settles the same delivery.
fn copy(delivery: &Delivery) -> Delivery {
    Delivery {
        delivery_tag: delivery.delivery_tag,
        exchange: delivery.exchange.clone(),
        routing_key: delivery.routing_key.clone(),
        redelivered: delivery.redelivered,
        properties: delivery.properties.clone(),
        data: delivery.data.clone(),
        acker: delivery.acker.clone(),
    }
}

/// Describe a delivery from `queue` for [`Telemetry::process_span`]: routing key, delivery
/// tag, redelivered flag, delivery attempt, body size, message and correlation ids, and
/// the message timestamp (for queue time when the producer wrote no `tracehop-sent-at`).
///
/// For your own consume loop:
/// `telemetry.process_span(describe(queue, &delivery), &delivery.properties)`.
///
/// [`Telemetry::process_span`]: crate::Telemetry::process_span
pub fn describe<'a>(queue: &'a str, delivery: &Delivery) -> Incoming<'a> {
    describe_unattempted(queue, delivery).attempt(attempt(
        queue,
        &delivery.properties,
        delivery.redelivered,
    ))
}

/// [`describe`] without the delivery attempt (the consume loop adds it).
fn describe_unattempted<'a>(queue: &'a str, delivery: &Delivery) -> Incoming<'a> {
    let properties = &delivery.properties;
    // Built in place: each builder call would move the whole description.
    let mut msg = Incoming::new(attr::system::RABBITMQ, queue);
    msg.push(
        crate::messaging::attributes::MESSAGING_MESSAGE_BODY_SIZE,
        delivery.data.len() as i64,
    );
    msg.push(
        attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
        i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX),
    );
    msg.push(REDELIVERED, delivery.redelivered);
    super::with_routing(&mut msg, &delivery.routing_key, queue, properties);
    if let std::borrow::Cow::Owned(name) = super::consume_name(
        delivery.exchange.as_str(),
        delivery.routing_key.as_str(),
        queue,
    ) {
        msg.destination_value = Some(name.into());
    }
    if let Some(at) = stored_at(properties) {
        msg.enqueued_at = Some(at);
    }
    msg
}

/// The message's `timestamp` property (seconds since the epoch) as a time, if set.
fn stored_at(properties: &BasicProperties) -> Option<std::time::SystemTime> {
    properties
        .timestamp()
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
}

/// Which delivery of its message this is on `queue`, counting from 1: the attempt the
/// `tracehop-attempt` header carries (a forwarded retry), else 1, plus the
/// [`redeliveries`] the broker counted.
pub fn attempt(queue: &str, properties: &BasicProperties, redelivered: bool) -> u32 {
    delivery_attempt(properties, redeliveries(queue, properties, redelivered))
}

/// How many times RabbitMQ delivered this message on `queue` before: the largest of the
/// `count` of the `x-death` entries for `queue` (times it was dead-lettered from this
/// queue and came back) and a quorum queue's `x-delivery-count`. A message the broker
/// marks `redelivered` without counting (a requeue on a classic queue) was delivered at
/// least once before.
pub fn redeliveries(queue: &str, properties: &BasicProperties, redelivered: bool) -> u32 {
    let (death, count) = properties
        .headers()
        .as_ref()
        .map_or((None, None), redelivery_headers);
    let deaths = death.map_or(0, |v| dead_lettered_from(queue, v));
    let deliveries = count.and_then(as_u64).unwrap_or(0);
    let counted = u32::try_from(deaths.max(deliveries)).unwrap_or(u32::MAX);
    if redelivered {
        counted.max(1)
    } else {
        counted
    }
}

/// The `x-death` and `x-delivery-count` headers, in one walk over a few headers
/// ([`WALK_HEADERS`](crate::propagation::WALK_HEADERS)).
fn redelivery_headers(headers: &FieldTable) -> (Option<&AMQPValue>, Option<&AMQPValue>) {
    let table = headers.inner();
    if table.len() > crate::propagation::WALK_HEADERS {
        return (table.get(X_DEATH), table.get(X_DELIVERY_COUNT));
    }
    let (mut death, mut count) = (None, None);
    for (name, value) in table {
        match name.as_str() {
            X_DEATH => death = Some(value),
            X_DELIVERY_COUNT => count = Some(value),
            _ => {}
        }
    }
    (death, count)
}

/// The sum of `count` over the `x-death` entries whose `queue` is `queue`.
fn dead_lettered_from(queue: &str, x_death: &AMQPValue) -> u64 {
    let AMQPValue::FieldArray(entries) = x_death else {
        return 0;
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .filter(|t| {
            t.inner()
                .get("queue")
                .and_then(carrier::value_bytes)
                .is_some_and(|q| q == queue.as_bytes())
        })
        .filter_map(|t| t.inner().get("count").and_then(as_u64))
        .fold(0u64, u64::saturating_add)
}

/// A non-negative integer header value of any width.
fn as_u64(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, FieldTable};

    fn death(queue: &str, count: AMQPValue) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert("queue".into(), AMQPValue::LongString(queue.into()));
        t.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        t.insert("count".into(), count);
        AMQPValue::FieldTable(t)
    }

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(t)
    }

    #[test]
    fn first_delivery_is_attempt_one() {
        assert_eq!(attempt("work", &BasicProperties::default(), false), 1);
        assert_eq!(attempt("work", &props(&[]), false), 1);
    }

    #[test]
    fn x_death_counts_only_this_queue() {
        let deaths = AMQPValue::FieldArray(FieldArray::from(vec![
            death("retry", AMQPValue::LongLongInt(5)),
            death("work", AMQPValue::LongLongInt(2)),
            death("work", AMQPValue::LongInt(1)),
        ]));
        let p = props(&[("x-death", deaths)]);
        assert_eq!(attempt("work", &p, false), 4);
        assert_eq!(attempt("retry", &p, false), 6);
        assert_eq!(attempt("dead-letters", &p, false), 1);
    }

    #[test]
    fn malformed_x_death_is_ignored() {
        let p = props(&[("x-death", AMQPValue::LongString("3".into()))]);
        assert_eq!(attempt("work", &p, false), 1);
        let odd = AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Boolean(true),
            death("work", AMQPValue::LongLongInt(-4)),
            death("work", AMQPValue::LongString("2".into())),
        ]));
        assert_eq!(attempt("work", &props(&[("x-death", odd)]), false), 1);
    }

    #[test]
    fn tracehop_attempt_header_and_delivery_count_are_used() {
        let p = props(&[("tracehop-attempt", AMQPValue::LongString("3".into()))]);
        assert_eq!(attempt("work", &p, false), 3);
        let p = props(&[(
            "tracehop-attempt",
            AMQPValue::ByteArray(b"4".to_vec().into()),
        )]);
        // Forwarded as attempt 4, then redelivered once by the broker.
        assert_eq!(attempt("work", &p, true), 5);
        assert_eq!(attempt("work", &p, false), 4);
        let p = props(&[("x-delivery-count", AMQPValue::LongLongInt(2))]);
        assert_eq!(attempt("work", &p, true), 3);
    }

    /// Both counts are read with a few headers (walked) and with many (looked up): the
    /// larger one wins.
    #[test]
    fn x_death_and_delivery_count_among_few_or_many_headers() {
        let deaths = || {
            AMQPValue::FieldArray(FieldArray::from(vec![death(
                "work",
                AMQPValue::LongLongInt(3),
            )]))
        };
        let of = |headers: &[(String, AMQPValue)]| {
            let named: Vec<(&str, AMQPValue)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            props(&named)
        };
        for others in [0, 2, 12] {
            let mut headers: Vec<(String, AMQPValue)> = (0..others)
                .map(|i| (format!("h-{i:02}"), AMQPValue::LongString("v".into())))
                .collect();
            headers.push(("x-death".into(), deaths()));
            headers.push(("x-delivery-count".into(), AMQPValue::LongLongInt(5)));
            assert_eq!(attempt("work", &of(&headers), false), 6, "{others}");
            assert_eq!(attempt("retry", &of(&headers), false), 6, "{others}");
            headers.pop();
            assert_eq!(attempt("work", &of(&headers), false), 4, "{others}");
            assert_eq!(attempt("retry", &of(&headers), true), 2, "{others}");
        }
    }

    #[test]
    fn uncounted_redelivery_is_at_least_attempt_two() {
        assert_eq!(attempt("work", &BasicProperties::default(), true), 2);
    }

    #[test]
    fn describe_reads_the_delivery() {
        let mut d = Delivery::mock(9, "ex".into(), "rk".into(), true, b"hello".to_vec());
        d.properties = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_timestamp(1_700_000_000);
        let msg = describe("q", &d);
        let get = |k: &str| {
            msg.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(
            get(attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG).as_deref(),
            Some("9")
        );
        assert_eq!(
            get(attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY).as_deref(),
            Some("rk")
        );
        assert_eq!(get(REDELIVERED).as_deref(), Some("true"));
        assert_eq!(msg.attempt, Some(2));
        assert_eq!(get(attr::MESSAGING_MESSAGE_BODY_SIZE).as_deref(), Some("5"));
        assert_eq!(get(attr::MESSAGING_MESSAGE_ID).as_deref(), Some("m-1"));
        assert_eq!(
            get(attr::MESSAGING_MESSAGE_CONVERSATION_ID).as_deref(),
            Some("c-1")
        );
        assert_eq!(
            msg.enqueued_at,
            UNIX_EPOCH.checked_add(Duration::from_secs(1_700_000_000))
        );
        assert_eq!(msg.destination, "q");
    }
}
