//! The producer side: a [`FutureProducer`] whose sends are traced.

use std::fmt;
use std::future::Future;

use futures_util::FutureExt;
use opentelemetry::{Context, StringValue};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::FromClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::message::{OwnedHeaders, ToBytes};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::IntoOpaque;
use rdkafka::util::{AsyncRuntime, DefaultRuntime, Timeout};
use rdkafka::ClientConfig;

use super::carrier::ContextHeaders;
use super::{error_type, key_text};
use crate::messaging::attributes::{self as attr, system};
use crate::{Outgoing, SendSpan, Sent, Telemetry};

/// A [`FutureProducer`] whose every send is one `send <topic>` span (kind PRODUCER) with
/// its context written into the record's headers.
///
/// [`send`](Self::send) takes the same record and timeout as
/// [`FutureProducer::send`] and returns the same delivery (with the span context the
/// message carries, as [`Sent`]), rdkafka's errors unchanged. The
/// span is a child of the current context *when `send` is called* (inside a handler run by
/// a [`TracedConsumer`](super::TracedConsumer), that is the process span), and carries
/// `messaging.system=kafka`, the topic, the partition and offset once delivered, the key
/// when it is UTF-8 text, the client id, the body size, and
/// `messaging.kafka.message.tombstone` for a record without payload. A failed delivery
/// ends the span as an error whose `error.type` is librdkafka's error code.
///
/// The record's headers are kept exactly as given (order, bytes, null values); the
/// context headers are appended, and a header already named like one of them is replaced
/// rather than duplicated (see [Headers](crate::kafka#headers)).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use rdkafka::producer::FutureRecord;
/// use rdkafka::ClientConfig;
/// use tracehop::kafka::TracedProducer;
///
/// let telemetry = tracehop::Telemetry::builder("gateway").build()?;
/// let producer = TracedProducer::from_config(
///     ClientConfig::new().set("bootstrap.servers", "localhost:9092"),
///     telemetry,
/// )?;
/// let delivery = producer
///     .send(FutureRecord::to("tasks").key("run-1").payload("summarise"), Duration::from_secs(5))
///     .await;
/// let delivery = delivery.map_err(|(e, _message)| e)?;
/// println!("stored at {}/{}", delivery.partition, delivery.offset);
/// # Ok(()) }
/// ```
pub struct TracedProducer<C = DefaultClientContext, R = DefaultRuntime>
where
    C: ClientContext + 'static,
{
    producer: FutureProducer<C, R>,
    telemetry: Telemetry,
    client_id: Option<StringValue>,
}

impl<C: ClientContext + 'static, R> fmt::Debug for TracedProducer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedProducer")
            .field("service", &self.telemetry.service_name())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl<C: ClientContext + 'static, R> Clone for TracedProducer<C, R> {
    fn clone(&self) -> Self {
        TracedProducer {
            producer: self.producer.clone(),
            telemetry: self.telemetry.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

impl TracedProducer {
    /// Create the producer from `config` and trace it with `telemetry`. The client id for
    /// the spans is taken from `client.id`, if set. (For another client context or async
    /// runtime, create the `FutureProducer` yourself and use [`new`](Self::new).)
    pub fn from_config(config: &ClientConfig, telemetry: Telemetry) -> Result<Self, KafkaError> {
        let producer = FutureProducer::from_config(config)?;
        let client_id = config.get("client.id").map(super::shared);
        Ok(TracedProducer {
            producer,
            telemetry,
            client_id,
        })
    }
}

impl<C, R> TracedProducer<C, R>
where
    C: ClientContext + 'static,
    R: AsyncRuntime,
{
    /// Trace `producer`, an existing [`FutureProducer`], with `telemetry`.
    pub fn new(producer: FutureProducer<C, R>, telemetry: Telemetry) -> Self {
        TracedProducer {
            producer,
            telemetry,
            client_id: None,
        }
    }

    /// The client id recorded on spans (`messaging.client.id`); rdkafka does not expose
    /// the one it was configured with.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(super::shared(client_id));
        self
    }

    /// The wrapped producer, for everything tracehop does not wrap (flush, transactions).
    pub fn inner(&self) -> &FutureProducer<C, R> {
        &self.producer
    }

    /// The telemetry handle spans are recorded with.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Send `record` as [`FutureProducer::send`] does, inside a send span that is a child
    /// of the current context.
    ///
    /// The span starts (and the context is captured) when this is called, not when the
    /// future is first polled, so a send prepared inside a span and awaited elsewhere
    /// still belongs to that span.
    pub fn send<'a, K, P, T>(
        &'a self,
        record: FutureRecord<'a, K, P>,
        queue_timeout: T,
    ) -> impl Future<Output = SendResult> + 'a
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout> + 'a,
    {
        self.send_in(record, queue_timeout, None)
    }

    /// Like [`send`](Self::send), with the send span a child of `parent` instead of the
    /// current context.
    pub fn send_with_parent<'a, K, P, T>(
        &'a self,
        record: FutureRecord<'a, K, P>,
        queue_timeout: T,
        parent: &Context,
    ) -> impl Future<Output = SendResult> + 'a
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout> + 'a,
    {
        self.send_in(record, queue_timeout, Some(parent))
    }

    /// Open the send span of `record` (a child of `parent`, else of the current context)
    /// now; the returned future is rdkafka's own send, polled in place, and ends the span
    /// with its result.
    // The error is rdkafka's own `(KafkaError, OwnedMessage)`, as `FutureProducer::send`
    // returns it.
    #[allow(clippy::result_large_err)]
    fn send_in<'a, K, P, T>(
        &'a self,
        mut record: FutureRecord<'a, K, P>,
        queue_timeout: T,
        parent: Option<&Context>,
    ) -> impl Future<Output = SendResult> + 'a
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout> + 'a,
    {
        let span = open_send_span(
            &self.telemetry,
            self.client_id.as_ref(),
            &mut record,
            parent,
        );
        self.producer
            .send(record, queue_timeout)
            .map(move |result| {
                let sent = span.span_context();
                match &result {
                    Ok(delivery) => settle(span, Ok((delivery.partition, delivery.offset))),
                    Err((error, _)) => settle(span, Err(error)),
                }
                result.map(|delivery| Sent::new(delivery, sent))
            })
    }

    /// Wait until every message sent so far has been delivered or has failed, at most
    /// `timeout` (librdkafka's `flush`; it blocks the calling thread, so it runs on
    /// Tokio's blocking pool here). Call it before the producer is dropped at shutdown.
    pub async fn flush<T: Into<Timeout>>(&self, timeout: T) -> Result<(), KafkaError>
    where
        C: ClientContext + 'static,
    {
        let producer = self.producer.clone();
        let timeout = timeout.into();
        match tokio::task::spawn_blocking(move || producer.flush(timeout)).await {
            Ok(flushed) => flushed,
            Err(join) => {
                tracing::warn!(error = %join, "kafka flush task failed");
                Err(KafkaError::Canceled)
            }
        }
    }
}

/// What [`TracedProducer::send`] returns: rdkafka's delivery with the span context the
/// message carries, or rdkafka's error and the message, unchanged.
pub type SendResult = Result<Sent<Delivery>, (KafkaError, OwnedMessage)>;

/// What a send span needs to know about a record, and where its headers go.
pub(crate) struct Record<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) payload: Option<&'a [u8]>,
    pub(crate) headers: &'a mut Option<OwnedHeaders>,
}

/// A record of one of rdkafka's producers, seen as a [`Record`].
pub(crate) trait SendRecord {
    fn record(&mut self) -> Record<'_>;
}

/// `SendRecord` for a record type with rdkafka's public record fields.
macro_rules! send_record {
    ($record:ty $(, $bound:ident: $trait:path)?) => {
        impl<K: ToBytes + ?Sized, P: ToBytes + ?Sized $(, $bound: $trait)?> SendRecord for $record {
            fn record(&mut self) -> Record<'_> {
                Record {
                    topic: self.topic,
                    partition: self.partition,
                    key: self.key.map(ToBytes::to_bytes),
                    payload: self.payload.map(ToBytes::to_bytes),
                    headers: &mut self.headers,
                }
            }
        }
    };
}

send_record!(FutureRecord<'_, K, P>);
send_record!(BaseRecord<'_, K, P, D>, D: IntoOpaque);

/// Open the send span of `record` (a child of `parent`, else of the current context) and
/// write its context into its headers, keeping the headers already there.
pub(crate) fn open_send_span(
    telemetry: &Telemetry,
    client_id: Option<&StringValue>,
    record: &mut dyn SendRecord,
    parent: Option<&Context>,
) -> SendSpan {
    let record = record.record();
    let headers = record.headers;
    let (topic, partition, key, payload) =
        (record.topic, record.partition, record.key, record.payload);
    let mut context = ContextHeaders::default();
    // Kafka timestamps records too, but in milliseconds: `tracehop-sent-at` keeps queue
    // time to the microsecond.
    let target = crate::messaging::Target {
        system: system::KAFKA,
        destination: topic,
        headers: headers
            .as_ref()
            .map(|h| h as &dyn crate::propagation::ReadCarrier),
    };
    let span = telemetry.send_span_lazy(parent, &mut context, false, target, || {
        let mut msg = Outgoing::new(system::KAFKA, topic);
        msg.push(
            attr::MESSAGING_MESSAGE_BODY_SIZE,
            payload.map_or(0, <[u8]>::len) as i64,
        );
        if payload.is_none() {
            msg.push(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true);
        }
        if let Some(key) = key_text(key) {
            msg.push(attr::MESSAGING_KAFKA_MESSAGE_KEY, key.to_owned());
        }
        if let Some(partition) = partition {
            msg.push(
                attr::MESSAGING_DESTINATION_PARTITION_ID,
                super::partition_id(partition),
            );
        }
        if let Some(id) = client_id {
            msg.push(attr::MESSAGING_CLIENT_ID, id.clone());
        }
        msg
    });
    *headers = Some(context.add_to(headers.take()));
    span
}

/// End a send span with the delivery's partition and offset, or as failed.
pub(crate) fn settle(span: SendSpan, delivery: Result<(i32, i64), &KafkaError>) {
    match delivery {
        Ok((partition, offset)) => {
            // Skipped, not just dropped by the SDK, when the span is not recorded.
            if span.is_recording() {
                span.set_attribute(
                    attr::MESSAGING_DESTINATION_PARTITION_ID,
                    super::partition_id(partition),
                );
                span.set_attribute(attr::MESSAGING_KAFKA_OFFSET, offset);
            }
            span.end();
        }
        Err(error) => span.end_with_error(&error_type(error), error),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::error::RDKafkaErrorCode;
    use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{
        BaseProducer, BaseRecord, DefaultProducerContext, FutureRecord, Producer,
    };
    use rdkafka::ClientConfig;

    use super::*;
    use crate::journal::Status;
    use crate::kafka::TracingProducerContext;
    use crate::propagation::TRACEPARENT;
    use crate::SpanCollector;

    /// A producer config whose records over 1000 bytes are refused before they are queued
    /// (no broker needed).
    fn config() -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.max.bytes", "1000")
            .set("client.id", "unit");
        config
    }

    #[tokio::test]
    async fn a_failed_send_ends_the_span_as_error_and_returns_rdkafkas_error() {
        let spans = SpanCollector::new();
        let telemetry = Telemetry::builder("svc").collector(&spans).build().unwrap();
        let producer = TracedProducer::from_config(&config(), telemetry).unwrap();
        let payload = vec![7u8; 2000];
        let headers = OwnedHeaders::new().insert(Header {
            key: "user",
            value: None::<&[u8]>,
        });
        let result = producer
            .send(
                FutureRecord::to("t")
                    .key("k")
                    .payload(&payload)
                    .headers(headers),
                Duration::ZERO,
            )
            .await;
        let (error, message) = result.expect_err("oversized");
        assert_eq!(
            error,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
        );
        assert_eq!(message.payload(), Some(&payload[..]));
        let returned = message.headers().expect("headers");
        assert_eq!(returned.get(0).key, "user");
        assert_eq!(returned.get(0).value, None);

        let records = spans.records();
        assert_eq!(records.len(), 1);
        let span = &records[0];
        assert_eq!(span.operation_name.as_deref(), Some("send t"));
        assert_eq!(span.status, Status::Error);
        assert_eq!(
            span.attribute_str("error.type"),
            Some("message_size_too_large")
        );
        assert_eq!(span.error.as_deref(), Some(error.to_string().as_str()));
        assert_eq!(span.attribute_str("messaging.client.id"), Some("unit"));
        assert_eq!(span.attribute_str("messaging.kafka.message.key"), Some("k"));
        assert_eq!(
            span.attribute("messaging.message.body.size"),
            Some(&2000.into())
        );
        assert_eq!(span.attribute("messaging.kafka.offset"), None);
    }

    #[test]
    fn a_record_refused_by_a_base_producer_can_fail_its_span() {
        let spans = SpanCollector::new();
        let telemetry = Telemetry::builder("svc").collector(&spans).build().unwrap();
        let context =
            TracingProducerContext::new(DefaultProducerContext, telemetry).client_id("unit");
        let producer: BaseProducer<_> = config().create_with_context(context).unwrap();
        let payload = vec![7u8; 2000];
        let record = producer
            .context()
            .trace(BaseRecord::<(), _>::to("t").payload(&payload));
        let headers = record.headers.as_ref().expect("context headers");
        assert!(headers.iter().any(|h| h.key == TRACEPARENT));
        let (error, record) = producer.send(record).expect_err("oversized");
        assert!(spans.is_empty(), "the span stays open until settled");
        record.delivery_opaque.fail(&error);
        let records = spans.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].status, Status::Error);
        assert_eq!(
            records[0].attribute_str("error.type"),
            Some("message_size_too_large")
        );
        assert_eq!(
            records[0].attribute("messaging.kafka.message.tombstone"),
            None
        );
    }

    #[test]
    fn a_tombstone_is_marked() {
        let spans = SpanCollector::new();
        let telemetry = Telemetry::builder("svc").collector(&spans).build().unwrap();
        let mut record = BaseRecord::<[u8], [u8]>::to("t")
            .partition(3)
            .key(&[0xff, 0xfe][..]);
        let span = open_send_span(&telemetry, None, &mut record, None);
        let headers = record.headers;
        settle(span, Ok((3, 42)));
        assert!(headers.is_some_and(|h| h.iter().any(|h| h.key == TRACEPARENT)));
        let records = spans.records();
        let span = &records[0];
        assert_eq!(
            span.attribute("messaging.kafka.message.tombstone"),
            Some(&true.into())
        );
        assert_eq!(
            span.attribute("messaging.message.body.size"),
            Some(&0.into())
        );
        assert_eq!(
            span.attribute("messaging.kafka.message.key"),
            None,
            "not UTF-8"
        );
        assert_eq!(
            span.attribute_str("messaging.destination.partition.id"),
            Some("3")
        );
        assert_eq!(span.attribute("messaging.kafka.offset"), Some(&42.into()));
        assert_eq!(span.status, Status::Ok);
    }
}
