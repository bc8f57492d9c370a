//! Attribute names: the OpenTelemetry messaging semantic conventions (re-exported from
//! `opentelemetry-semantic-conventions` at the pinned version) and tracehop's own.
//!
//! NATS has no official convention; tracehop uses the names the nats.net client emits
//! (`messaging.nats.*`, see the `nats` module).

pub use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, EXCEPTION_MESSAGE, EXCEPTION_TYPE, MESSAGING_BATCH_MESSAGE_COUNT,
    MESSAGING_CLIENT_ID, MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID, MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
    MESSAGING_DESTINATION_TEMPLATE, MESSAGING_DESTINATION_TEMPORARY, MESSAGING_KAFKA_MESSAGE_KEY,
    MESSAGING_KAFKA_MESSAGE_TOMBSTONE, MESSAGING_KAFKA_OFFSET, MESSAGING_MESSAGE_BODY_SIZE,
    MESSAGING_MESSAGE_CONVERSATION_ID, MESSAGING_MESSAGE_ID, MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE, MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
    MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, MESSAGING_SYSTEM,
};

/// Why incoming context was rejected and a new root started (see
/// [`Rejection`](crate::Rejection)). Absent when context was adopted or simply missing.
pub const CONTEXT_REJECTED: &str = "tracehop.context.rejected";
/// `true` on a process span whose message carried no trace context at all.
pub const CONTEXT_MISSING: &str = "tracehop.context.missing";
/// On a process span whose trace went on without the message's `tracestate` or
/// `baggage`: why they were left out (see [`Discarded`](crate::propagation::Discarded);
/// several reasons are joined with `; `).
pub const CONTEXT_DISCARDED: &str = "tracehop.context.discarded";
/// On a send span whose message went out without context headers because they would
/// have made it too large for the broker: the limit, `max_payload` (NATS) or
/// `frame_max` (AMQP). The message is sent exactly as the plain client would send it.
pub const CONTEXT_DROPPED: &str = "tracehop.context.dropped";
/// Which delivery of this message this is, counting from 1 (from the broker's redelivery
/// count, `x-death`, or the retry header tracehop writes when it forwards a message).
pub const DELIVERY_ATTEMPT: &str = "tracehop.delivery.attempt";
/// How long the message waited between send and the start of processing, in
/// milliseconds (float, microsecond precision). Clock skew between hosts is clamped at 0.
pub const QUEUE_TIME_MS: &str = "tracehop.queue_time_ms";
/// On a process span started in link mode or as a trust boundary: the incoming context
/// was linked, not adopted as parent.
pub const CONTEXT_LINKED: &str = "tracehop.context.linked";

/// What the consumer did with a delivery once its handler had run, on its process span:
/// the broker's own word for it (`ack`, `commit`, `nack_requeue`, `nack`, `reject`, `nak`,
/// `term`, `seek`, `forward`, `handler` when the handler had already settled it, `none`
/// when nothing was settled, `retry` on a failed run the policy runs again in place).
pub const SETTLEMENT: &str = "tracehop.settlement";
/// Why the settlement of a delivery failed (the client's error), next to
/// [`SETTLEMENT`].
pub const SETTLEMENT_ERROR: &str = "tracehop.settlement.error";
/// The `error.type` of a process span whose handler panicked.
pub const PANIC: &str = "panic";

/// `messaging.operation.type` values.
pub mod operation_type {
    /// Creating a message (when it is separate from sending it).
    pub const CREATE: &str = "create";
    /// Sending or publishing one or more messages.
    pub const SEND: &str = "send";
    /// Receiving messages (a pull).
    pub const RECEIVE: &str = "receive";
    /// Processing one or more received messages.
    pub const PROCESS: &str = "process";
    /// Settling (ack, nack, commit) a message.
    pub const SETTLE: &str = "settle";
}

/// `messaging.system` values for the supported brokers.
pub mod system {
    /// Apache Kafka and Kafka-protocol brokers.
    pub const KAFKA: &str = "kafka";
    /// NATS, core and JetStream.
    pub const NATS: &str = "nats";
    /// RabbitMQ and other AMQP 0.9.1 brokers.
    pub const RABBITMQ: &str = "rabbitmq";
}
