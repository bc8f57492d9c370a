//! Kafka consumer lag per partition, from rdkafka's statistics: [`ConsumerLag`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use opentelemetry::metrics::Gauge;
use opentelemetry::{KeyValue, StringValue};
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::Statistics;

use crate::messaging::attributes as attr;
use crate::metrics::names;
use crate::Telemetry;

/// A consumer context that records each assigned partition's consumer lag (the
/// partition's high watermark minus the consumer's position, as librdkafka reports it)
/// as the gauge `tracehop.kafka.consumer.lag` of the handle's metrics, with
/// `messaging.destination.name`, `messaging.destination.partition.id` and, when given,
/// `messaging.consumer.group.name`.
///
/// librdkafka reports statistics every `statistics.interval.ms` (off by default: set it
/// on the consumer's configuration). rdkafka hands the statistics over while the consumer
/// is read (`recv`, the stream, or a running consume loop, which reads it): a consumer
/// nobody reads, or one paused in a long handler, reports no new lag until it is read
/// again. Partitions whose lag is not known yet (`-1`) are
/// skipped. Without metrics on the handle, the last lags are still kept for
/// [`lag`](Self::lag).
///
/// ```no_run
/// # use rdkafka::ClientConfig;
/// # use rdkafka::consumer::StreamConsumer;
/// # fn f(telemetry: tracehop::Telemetry) -> Result<(), rdkafka::error::KafkaError> {
/// use tracehop::kafka::{ConsumerLag, TracedConsumer};
/// let consumer: StreamConsumer<ConsumerLag> = ClientConfig::new()
///     .set("bootstrap.servers", "127.0.0.1:9092")
///     .set("group.id", "workers")
///     .set("statistics.interval.ms", "5000")
///     .create_with_context(ConsumerLag::new(&telemetry).group("workers"))?;
/// let traced = TracedConsumer::new(consumer, telemetry);
/// # let _ = traced; Ok(()) }
/// ```
pub struct ConsumerLag {
    gauge: Option<Gauge<i64>>,
    group: Option<StringValue>,
    last: Mutex<HashMap<(String, i32), i64>>,
}

impl fmt::Debug for ConsumerLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerLag")
            .field("metrics", &self.gauge.is_some())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl ConsumerLag {
    /// Record lag with `telemetry`'s metrics (if they are on).
    pub fn new(telemetry: &Telemetry) -> ConsumerLag {
        let gauge = telemetry.inner().metrics.as_ref().map(|m| {
            m.meter
                .i64_gauge(names::KAFKA_CONSUMER_LAG)
                .with_unit("{message}")
                .with_description("Messages of the partition the consumer has not read yet.")
                .build()
        });
        ConsumerLag {
            gauge,
            group: None,
            last: Mutex::default(),
        }
    }

    /// The consumer group, recorded as `messaging.consumer.group.name`.
    pub fn group(mut self, group: impl Into<StringValue>) -> ConsumerLag {
        self.group = Some(group.into());
        self
    }

    /// The last lag reported for `topic`'s `partition`.
    pub fn lag(&self, topic: &str, partition: i32) -> Option<i64> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(&(topic.to_owned(), partition)).copied()
    }

    fn record(&self, statistics: &Statistics) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                last.insert((topic.clone(), *partition), p.consumer_lag);
                if let Some(gauge) = &self.gauge {
                    let mut attributes = vec![
                        KeyValue::new(attr::MESSAGING_SYSTEM, attr::system::KAFKA),
                        KeyValue::new(attr::MESSAGING_DESTINATION_NAME, topic.clone()),
                        KeyValue::new(
                            attr::MESSAGING_DESTINATION_PARTITION_ID,
                            partition.to_string(),
                        ),
                    ];
                    if let Some(group) = &self.group {
                        attributes.push(KeyValue::new(
                            attr::MESSAGING_CONSUMER_GROUP_NAME,
                            group.clone(),
                        ));
                    }
                    gauge.record(p.consumer_lag, &attributes);
                }
            }
        }
    }
}

impl ClientContext for ConsumerLag {
    fn stats(&self, statistics: Statistics) {
        self.record(&statistics);
    }
}

impl ConsumerContext for ConsumerLag {}
