//! Messaging metrics: the semantic conventions' four messaging metrics and tracehop's own,
//! recorded through the OpenTelemetry metrics SDK of one [`Telemetry`](crate::Telemetry)
//! handle (no global meter provider is used or installed).
//!
//! Metrics are off unless the handle was built with a meter provider
//! ([`TelemetryBuilder::metrics`](crate::TelemetryBuilder::metrics), or
//! `otlp_metrics` with the `otlp` feature, or `testing::MetricsCapture`): a handle without
//! one computes nothing for metrics, not even a clock read.
//!
//! With metrics on, the instruments are *bound* once per destination (send side: per
//! system and destination on the handle; consume side: per consumer and destination or
//! template), so a message costs a cache look-up and a few atomic adds, not an attribute
//! set hashed per measurement. Failures (`error.type`), rejected context (its reason),
//! forwarded messages and settlements are recorded with their attributes as they come.
//!
//! | metric | instrument, unit | recorded |
//! |---|---|---|
//! | `messaging.client.sent.messages` | counter, `{message}` | each send the broker accepted or refused (`error.type` then) |
//! | `messaging.client.operation.duration` | histogram, `s` | each send (`messaging.operation.type=send`) and each settlement (`settle`, `messaging.operation.name` = `ack`, `commit`, `nak`, ...) |
//! | `messaging.client.consumed.messages` | counter, `{message}` | each delivery the consume loop received |
//! | `messaging.process.duration` | histogram, `s` | each run of the handler, settlement included (`error.type` on failure) |
//! | `tracehop.messaging.queue_time` | histogram, `s` | time between send and the start of processing, when known |
//! | `tracehop.messaging.redeliveries` | counter, `{delivery}` | each run of a handler on a delivery attempt beyond the first |
//! | `tracehop.messaging.forwarded` | counter, `{message}` | each message settled with a broker action: forwarded to a retry or dead-letter topic, rejected or nacked into a dead-letter exchange, terminated (`tracehop.settlement`) |
//! | `tracehop.context.rejected` | counter, `{message}` | each delivery whose context was rejected (`tracehop.context.rejected` = why) |
//! | `tracehop.context.missing` | counter, `{message}` | each delivery that carried no trace context |
//! | `tracehop.kafka.consumer.lag` | gauge, `{message}` | per partition, from rdkafka's statistics (`kafka::ConsumerLag`) |

mod bound;
#[cfg(feature = "testing")]
pub(crate) mod capture;

use std::sync::RwLock;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::metrics::SdkMeterProvider;

pub(crate) use bound::{ConsumeBound, ConsumeCache, SendBound};

use crate::messaging::attributes as attr;

/// The semantic conventions' version tracehop follows (its `schema_url`, set on the
/// instrumentation scope of its spans and metrics).
pub const SCHEMA_URL: &str = opentelemetry_semantic_conventions::SCHEMA_URL;

/// Metric names: the semantic conventions' and tracehop's own.
pub mod names {
    pub use opentelemetry_semantic_conventions::metric::{
        MESSAGING_CLIENT_CONSUMED_MESSAGES, MESSAGING_CLIENT_OPERATION_DURATION,
        MESSAGING_CLIENT_SENT_MESSAGES, MESSAGING_PROCESS_DURATION,
    };
    /// Time between send and the start of processing (histogram, seconds).
    pub const QUEUE_TIME: &str = "tracehop.messaging.queue_time";
    /// Handler runs on a delivery attempt beyond the first (counter).
    pub const REDELIVERIES: &str = "tracehop.messaging.redeliveries";
    /// Messages settled with a broker action: forwarded, dead-lettered, terminated.
    pub const FORWARDED: &str = "tracehop.messaging.forwarded";
    /// Deliveries whose incoming context was rejected (counter).
    pub const CONTEXT_REJECTED: &str = "tracehop.context.rejected";
    /// Deliveries that carried no trace context (counter).
    pub const CONTEXT_MISSING: &str = "tracehop.context.missing";
    /// Kafka consumer lag per partition, from rdkafka's statistics (gauge).
    pub const KAFKA_CONSUMER_LAG: &str = "tracehop.kafka.consumer.lag";
}

/// The semantic conventions' bucket boundaries for messaging durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The instrumentation scope of tracehop's spans and metrics: name, version, schema.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("tracehop")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(SCHEMA_URL)
        .build()
}

/// One handle's instruments and its send-side cache of bound instruments.
pub(crate) struct Metrics {
    pub(crate) sent: Counter<u64>,
    pub(crate) consumed: Counter<u64>,
    pub(crate) operation: Histogram<f64>,
    pub(crate) process: Histogram<f64>,
    pub(crate) queue_time: Histogram<f64>,
    pub(crate) redeliveries: Counter<u64>,
    pub(crate) forwarded: Counter<u64>,
    pub(crate) rejected: Counter<u64>,
    pub(crate) missing: Counter<u64>,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) meter: Meter,
    /// The provider, flushed and shut down with the handle.
    pub(crate) provider: SdkMeterProvider,
    /// Bound send instruments per system, then destination.
    sends: RwLock<bound::Sends>,
}

impl Metrics {
    pub(crate) fn new(provider: SdkMeterProvider) -> Metrics {
        let meter = provider.meter_with_scope(scope());
        let duration = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        Metrics {
            sent: counter(
                names::MESSAGING_CLIENT_SENT_MESSAGES,
                "{message}",
                "Number of messages producer attempted to send to the broker.",
            ),
            consumed: counter(
                names::MESSAGING_CLIENT_CONSUMED_MESSAGES,
                "{message}",
                "Number of messages that were delivered to the application.",
            ),
            operation: duration(
                names::MESSAGING_CLIENT_OPERATION_DURATION,
                "Duration of messaging operation initiated by a producer or consumer client.",
            ),
            process: duration(
                names::MESSAGING_PROCESS_DURATION,
                "Duration of processing operation.",
            ),
            queue_time: duration(
                names::QUEUE_TIME,
                "Time between the send of a message and the start of its processing.",
            ),
            redeliveries: counter(
                names::REDELIVERIES,
                "{delivery}",
                "Handler runs on a delivery attempt beyond the first.",
            ),
            forwarded: counter(
                names::FORWARDED,
                "{message}",
                "Messages settled with a broker action: forwarded, dead-lettered, terminated.",
            ),
            rejected: counter(
                names::CONTEXT_REJECTED,
                "{message}",
                "Deliveries whose trace context was rejected.",
            ),
            missing: counter(
                names::CONTEXT_MISSING,
                "{message}",
                "Deliveries that carried no trace context.",
            ),
            meter,
            provider,
            sends: RwLock::default(),
        }
    }
}

/// The attributes of a metric point taken from a message's description: system,
/// destination name or template, operation name, consumer group, server address.
pub(crate) fn metric_attributes(
    system: &'static str,
    destination: &str,
    template: Option<&str>,
    operation_name: &'static str,
    described: &[KeyValue],
) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(6);
    out.push(KeyValue::new(attr::MESSAGING_SYSTEM, system));
    match template {
        Some(template) => out.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_TEMPLATE,
            template.to_owned(),
        )),
        None => out.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_NAME,
            destination.to_owned(),
        )),
    }
    out.push(KeyValue::new(
        attr::MESSAGING_OPERATION_NAME,
        operation_name,
    ));
    for kv in described {
        let key = kv.key.as_str();
        if key == attr::MESSAGING_CONSUMER_GROUP_NAME || key == SERVER_ADDRESS {
            out.push(kv.clone());
        }
    }
    out
}

/// `server.address`.
pub(crate) const SERVER_ADDRESS: &str =
    opentelemetry_semantic_conventions::attribute::SERVER_ADDRESS;

/// `attributes` plus one more.
pub(crate) fn with(attributes: &[KeyValue], kv: KeyValue) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(attributes.len() + 1);
    out.extend_from_slice(attributes);
    out.push(kv);
    out
}

/// Seconds of `d`, as the duration histograms take them.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
