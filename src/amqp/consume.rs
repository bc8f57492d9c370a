//! Consuming: a process span per delivery, the handler run inside it, and the delivery
//! settled by policy.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{Acker, BasicProperties, Consumer};
use opentelemetry::StringValue;

use super::{carrier, REDELIVERED, SETTLEMENT};
use crate::messaging::attributes as attr;
use crate::{Incoming, ParentPolicy, Telemetry};

/// The header RabbitMQ adds each time a message is dead-lettered.
const X_DEATH: &str = "x-death";
/// The header quorum queues add to a redelivered message: earlier delivery attempts.
const X_DELIVERY_COUNT: &str = "x-delivery-count";

/// How a [`TracedConsumer`] settles a delivery once its handler has run.
///
/// Every policy but [`Manual`](Self::Manual) acks a delivery whose handler succeeded. They
/// differ in what happens to one whose handler failed. A delivery the handler already
/// settled itself (through the `Delivery`'s acker) is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AckPolicy {
    /// `basic.nack` with `requeue`: the broker delivers the message again (the default;
    /// nothing is ever lost, but a message that always fails comes back forever).
    #[default]
    NackRequeue,
    /// `basic.nack` without `requeue`: the broker dead-letters the message if its queue
    /// has a dead-letter exchange, and drops it otherwise.
    Nack,
    /// `basic.reject` without `requeue`: like [`Nack`](Self::Nack), with the older method.
    Reject,
    /// Never settle: the consumer was started with `no_ack`, or the handler settles every
    /// delivery itself.
    Manual,
}

/// What was done with a delivery, as recorded in the `tracehop.amqp.settlement`
/// attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Acknowledged.
    Ack,
    /// Negatively acknowledged and requeued.
    NackRequeue,
    /// Negatively acknowledged without requeue (dead-lettered or dropped by the broker).
    Nack,
    /// Rejected without requeue (dead-lettered or dropped by the broker).
    Reject,
    /// Not settled, by policy ([`AckPolicy::Manual`]).
    None,
    /// Already settled by the handler.
    ByHandler,
}

impl Settlement {
    /// The attribute value: `ack`, `nack_requeue`, `nack`, `reject`, `none` or `handler`.
    pub fn as_str(self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::NackRequeue => "nack_requeue",
            Settlement::Nack => "nack",
            Settlement::Reject => "reject",
            Settlement::None => "none",
            Settlement::ByHandler => "handler",
        }
    }
}

impl AckPolicy {
    /// Settle the delivery behind `acker` after its handler `succeeded` (or not).
    ///
    /// For your own consume loop; [`TracedConsumer`] calls it for you.
    pub async fn settle(self, acker: &Acker, succeeded: bool) -> lapin::Result<Settlement> {
        let (done, settlement) = match (self, succeeded) {
            (AckPolicy::Manual, _) => return Ok(Settlement::None),
            (_, true) => (
                acker.ack(BasicAckOptions::default()).await?,
                Settlement::Ack,
            ),
            (AckPolicy::NackRequeue, false) => (
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?,
                Settlement::NackRequeue,
            ),
            (AckPolicy::Nack, false) => (
                acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await?,
                Settlement::Nack,
            ),
            (AckPolicy::Reject, false) => (
                acker.reject(BasicRejectOptions { requeue: false }).await?,
                Settlement::Reject,
            ),
        };
        // lapin answers `false` for a delivery that was already settled through a clone
        // of its acker (the handler did it).
        Ok(if done {
            settlement
        } else {
            Settlement::ByHandler
        })
    }
}

/// Describe a delivery from `queue` for [`Telemetry::process_span`]: routing key, delivery
/// tag, redelivered flag, delivery attempt, body size, message and correlation ids, and
/// the message timestamp (for queue time when the producer wrote no `tracehop-sent-at`).
///
/// For your own consume loop:
/// `telemetry.process_span(describe(queue, &delivery), &delivery.properties)`.
pub fn describe<'a>(queue: &'a str, delivery: &Delivery) -> Incoming<'a> {
    let properties = &delivery.properties;
    let mut msg = Incoming::new(attr::system::RABBITMQ, queue)
        .body_size(delivery.data.len())
        .attempt(attempt(queue, properties, delivery.redelivered))
        .attribute(
            attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
            i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX),
        )
        .attribute(REDELIVERED, delivery.redelivered);
    if !delivery.routing_key.as_str().is_empty() {
        msg = msg.attribute(
            attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
            delivery.routing_key.as_str().to_owned(),
        );
    }
    if let Some(id) = properties.message_id() {
        msg = msg.message_id(id.as_str().to_owned());
    }
    if let Some(id) = properties.correlation_id() {
        msg = msg.attribute(
            attr::MESSAGING_MESSAGE_CONVERSATION_ID,
            id.as_str().to_owned(),
        );
    }
    if let Some(at) = properties
        .timestamp()
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
    {
        msg = msg.enqueued_at(at);
    }
    msg
}

/// Which delivery of its message this is on `queue`, counting from 1.
///
/// The largest of: the `tracehop-attempt` header (written by a consumer that forwarded
/// the message for a retry); 1 + the `count` of the `x-death` entries for `queue` (times
/// the message was dead-lettered from this queue and came back); 1 + a quorum queue's
/// `x-delivery-count`. A message the broker marks `redelivered` without counting (a
/// requeue on a classic queue) is at least attempt 2.
pub fn attempt(queue: &str, properties: &BasicProperties, redelivered: bool) -> u32 {
    let headers = properties.headers().as_ref();
    let from_header = crate::propagation::attempt(properties).unwrap_or(1);
    let deaths = headers
        .and_then(|h| h.inner().get(X_DEATH))
        .map_or(0, |v| dead_lettered_from(queue, v));
    let deliveries = headers
        .and_then(|h| h.inner().get(X_DELIVERY_COUNT))
        .and_then(as_u64)
        .unwrap_or(0);
    let counted = deaths.max(deliveries).saturating_add(1);
    let attempt = u32::try_from(counted).unwrap_or(u32::MAX).max(from_header);
    if redelivered {
        attempt.max(2)
    } else {
        attempt
    }
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

/// A lapin [`Consumer`] whose deliveries are processed inside process spans.
///
/// [`run`](Self::run) takes each delivery in turn, opens its process span (a child of the
/// producer's send span, or a new trace linked to it under [`ParentPolicy::Link`]), runs
/// the handler inside it, settles the delivery by the [`AckPolicy`] and ends the span.
/// Everything the handler does, publishes included, nests under the process span.
///
/// The loop stops when the consumer is cancelled (`basic_cancel` with its
/// [`tag`](Self::tag), or the channel closes), after [`stop_after`](Self::stop_after)
/// deliveries, when the shutdown future given to [`run_until`](Self::run_until)
/// completes, or on a consumer error. Its future is `Send`: spawn it.
pub struct TracedConsumer {
    consumer: Consumer,
    telemetry: Telemetry,
    queue: String,
    /// `queue` as the process spans' `messaging.destination.name`, shared by all of them.
    queue_value: StringValue,
    ack: AckPolicy,
    parent: ParentPolicy,
    limit: Option<u64>,
}

impl fmt::Debug for TracedConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedConsumer")
            .field("queue", &self.queue)
            .field("tag", &self.consumer.tag())
            .field("ack", &self.ack)
            .field("parent", &self.parent)
            .field("limit", &self.limit)
            .finish()
    }
}

/// What a [`TracedConsumer`] loop did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeSummary {
    /// Deliveries processed.
    pub deliveries: u64,
    /// Deliveries whose handler failed.
    pub failed: u64,
}

impl TracedConsumer {
    /// Process the deliveries of `consumer` as service `telemetry`, acking by
    /// [`AckPolicy::NackRequeue`] and adopting the producer's span as parent until told
    /// otherwise.
    pub fn new(consumer: Consumer, telemetry: Telemetry) -> TracedConsumer {
        TracedConsumer {
            queue: consumer.queue().as_str().to_owned(),
            queue_value: StringValue::from(Arc::<str>::from(consumer.queue().as_str())),
            consumer,
            telemetry,
            ack: AckPolicy::default(),
            parent: ParentPolicy::Child,
            limit: None,
        }
    }

    /// How to settle deliveries.
    pub fn ack_policy(mut self, policy: AckPolicy) -> Self {
        self.ack = policy;
        self
    }

    /// Child of the producer's span (the default) or a new trace with a link to it.
    pub fn parent_policy(mut self, policy: ParentPolicy) -> Self {
        self.parent = policy;
        self
    }

    /// Stop after `deliveries` deliveries.
    pub fn stop_after(mut self, deliveries: u64) -> Self {
        self.limit = Some(deliveries);
        self
    }

    /// The consumer tag: `basic_cancel` it to stop the loop.
    pub fn tag(&self) -> ShortString {
        self.consumer.tag()
    }

    /// The queue consumed, the process spans' destination.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Run `handler` for each delivery until the loop stops (see the type's docs).
    ///
    /// The handler gets the delivery as lapin gives it. Its error is recorded on the
    /// process span (status, `error.type`, an `exception` event) and decides the
    /// settlement; it does not stop the loop. A consumer error (the channel or connection
    /// failed) stops the loop and is returned; deliveries not yet settled then go back to
    /// the queue, as the broker does for any closed channel.
    pub async fn run<H, Fut, E>(self, handler: H) -> lapin::Result<ConsumeSummary>
    where
        H: FnMut(Delivery) -> Fut + Send,
        Fut: Future<Output = Result<(), E>> + Send,
        E: fmt::Display + Send,
    {
        self.run_until(handler, std::future::pending::<()>()).await
    }

    /// Like [`run`](Self::run), and also stop when `shutdown` completes. The delivery
    /// being handled then is finished and settled first; deliveries the client had
    /// prefetched go back to the queue when you close the channel.
    pub async fn run_until<H, Fut, E, S>(
        mut self,
        mut handler: H,
        shutdown: S,
    ) -> lapin::Result<ConsumeSummary>
    where
        S: Future<Output = ()> + Send,
        H: FnMut(Delivery) -> Fut + Send,
        Fut: Future<Output = Result<(), E>> + Send,
        E: fmt::Display + Send,
    {
        let mut summary = ConsumeSummary::default();
        let mut shutdown = std::pin::pin!(shutdown);
        while self.limit.is_none_or(|n| summary.deliveries < n) {
            let next = tokio::select! {
                biased;
                () = &mut shutdown => break,
                next = self.consumer.next() => next,
            };
            let delivery = match next {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(delivery)) => delivery,
            };
            let acker = delivery.acker.clone();
            let mut msg = describe(&self.queue, &delivery).parent_policy(self.parent);
            msg.destination_value = Some(self.queue_value.clone());
            let span = self.telemetry.process_span(msg, &delivery.properties);
            let succeeded = span.run(handler(delivery)).await.is_ok();
            summary.deliveries += 1;
            if !succeeded {
                summary.failed += 1;
            }
            match self.ack.settle(&acker, succeeded).await {
                Ok(settlement) => span.set_attribute(SETTLEMENT, settlement.as_str()),
                Err(e) => {
                    span.set_attribute(SETTLEMENT, "failed");
                    span.end();
                    return Err(e);
                }
            }
            span.end();
        }
        Ok(summary)
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
        assert_eq!(attempt("work", &p, true), 4);
        let p = props(&[("x-delivery-count", AMQPValue::LongLongInt(2))]);
        assert_eq!(attempt("work", &p, true), 3);
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
        assert_eq!(get(attr::DELIVERY_ATTEMPT).as_deref(), Some("2"));
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
