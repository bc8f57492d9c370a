//! The producer side: a [`FutureProducer`] whose sends are traced.

use std::fmt;
use std::future::Future;

use opentelemetry::Context;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::FromClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::{AsyncRuntime, DefaultRuntime, Timeout};
use rdkafka::ClientConfig;

use super::{error_type, key_text};
use crate::messaging::attributes::{self as attr, system};
use crate::{Outgoing, SendSpan, Telemetry};

/// A [`FutureProducer`] whose every send is one `send <topic>` span (kind PRODUCER) with
/// its context written into the record's headers.
///
/// [`send`](Self::send) takes the same record and timeout as
/// [`FutureProducer::send`] and returns the same result, rdkafka's errors unchanged. The
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
    client_id: Option<String>,
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
        let client_id = config.get("client.id").map(str::to_owned);
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
        self.client_id = Some(client_id.into());
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
    ) -> impl Future<Output = OwnedDeliveryResult> + 'a
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout> + 'a,
    {
        let (record, span) = self.start(record, None);
        self.deliver(record, queue_timeout, span)
    }

    /// Like [`send`](Self::send), with the send span a child of `parent` instead of the
    /// current context.
    pub fn send_with_parent<'a, K, P, T>(
        &'a self,
        record: FutureRecord<'a, K, P>,
        queue_timeout: T,
        parent: &Context,
    ) -> impl Future<Output = OwnedDeliveryResult> + 'a
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout> + 'a,
    {
        let (record, span) = self.start(record, Some(parent));
        self.deliver(record, queue_timeout, span)
    }

    fn start<'a, K, P>(
        &self,
        mut record: FutureRecord<'a, K, P>,
        parent: Option<&Context>,
    ) -> (FutureRecord<'a, K, P>, SendSpan)
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let payload = record.payload.map(ToBytes::to_bytes);
        let mut msg =
            Outgoing::new(system::KAFKA, record.topic).body_size(payload.map_or(0, <[u8]>::len));
        if payload.is_none() {
            msg = msg.attribute(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true);
        }
        if let Some(key) = key_text(record.key.map(ToBytes::to_bytes)) {
            msg = msg.attribute(attr::MESSAGING_KAFKA_MESSAGE_KEY, key.to_owned());
        }
        if let Some(partition) = record.partition {
            msg = msg.attribute(
                attr::MESSAGING_DESTINATION_PARTITION_ID,
                partition.to_string(),
            );
        }
        if let Some(id) = &self.client_id {
            msg = msg.attribute(attr::MESSAGING_CLIENT_ID, id.clone());
        }
        let mut headers = record.headers.take().unwrap_or_default();
        let span = match parent {
            Some(parent) => self
                .telemetry
                .send_span_with_parent(msg, parent, &mut headers),
            None => self.telemetry.send_span(msg, &mut headers),
        };
        record.headers = Some(headers);
        (record, span)
    }

    async fn deliver<K, P, T>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: T,
        span: SendSpan,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        let result = self.producer.send(record, queue_timeout).await;
        match &result {
            Ok(delivery) => {
                span.set_attribute(
                    attr::MESSAGING_DESTINATION_PARTITION_ID,
                    delivery.partition.to_string(),
                );
                span.set_attribute(attr::MESSAGING_KAFKA_OFFSET, delivery.offset);
                span.end();
            }
            Err((error, _)) => span.end_with_error(&error_type(error), error),
        }
        result
    }
}
