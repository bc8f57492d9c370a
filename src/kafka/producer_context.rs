//! Tracing for `BaseProducer` and `ThreadedProducer`: a producer context that ends each
//! record's send span when librdkafka reports the delivery.

use std::error::Error as StdError;
use std::fmt;

use opentelemetry::{Context, StringValue};
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Partitioner, ProducerContext,
};
use rdkafka::statistics::Statistics;
use rdkafka::IntoOpaque;

use super::producer::{open_send_span, settle};
use crate::{SendSpan, Telemetry};

/// A [`ProducerContext`] for [`BaseProducer`](rdkafka::producer::BaseProducer) and
/// [`ThreadedProducer`](rdkafka::producer::ThreadedProducer) that traces their sends the
/// way [`TracedProducer`](super::TracedProducer) traces a `FutureProducer`'s.
///
/// Wrap your own context (or [`DefaultProducerContext`]) in it when creating the producer,
/// and pass each record through [`trace`](Self::trace) before sending it: that opens the
/// send span and writes its context into the record's headers. The span ends with the
/// partition and offset, or as an error, when librdkafka reports the delivery; then your
/// context's `delivery` runs with your own opaque, unchanged. Every other callback is
/// passed to your context as it is.
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
/// use rdkafka::ClientConfig;
/// use tracehop::kafka::TracingProducerContext;
///
/// let telemetry = tracehop::Telemetry::builder("gateway").build()?;
/// let context = TracingProducerContext::new(DefaultProducerContext, telemetry);
/// let producer: ThreadedProducer<_> = ClientConfig::new()
///     .set("bootstrap.servers", "localhost:9092")
///     .create_with_context(context)?;
/// let record = producer
///     .context()
///     .trace(BaseRecord::to("tasks").key("run-1").payload("plan"));
/// if let Err((error, record)) = producer.send(record) {
///     // Not even queued: end the span as failed and get your opaque back.
///     let () = record.delivery_opaque.fail(&error);
/// }
/// producer.flush(Duration::from_secs(5))?;
/// # Ok(()) }
/// ```
pub struct TracingProducerContext<C = DefaultProducerContext> {
    inner: C,
    telemetry: Telemetry,
    client_id: Option<StringValue>,
}

impl<C> fmt::Debug for TracingProducerContext<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingProducerContext")
            .field("service", &self.telemetry.service_name())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl<C> TracingProducerContext<C> {
    /// Trace the sends of a producer whose own context is `inner`.
    pub fn new(inner: C, telemetry: Telemetry) -> Self {
        TracingProducerContext {
            inner,
            telemetry,
            client_id: None,
        }
    }

    /// The client id recorded on spans (`messaging.client.id`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(super::shared(client_id));
        self
    }

    /// Your context.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Open the send span of `record` as a child of the current context, write its context
    /// into the record's headers (keeping the ones it has), and wrap its delivery opaque
    /// so that the span ends when the delivery is reported.
    pub fn trace<'a, K, P, D>(
        &self,
        record: BaseRecord<'a, K, P, D>,
    ) -> BaseRecord<'a, K, P, Box<Traced<D>>>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        D: IntoOpaque,
    {
        self.open(record, None)
    }

    /// Like [`trace`](Self::trace), with the send span a child of `parent`.
    pub fn trace_with_parent<'a, K, P, D>(
        &self,
        record: BaseRecord<'a, K, P, D>,
        parent: &Context,
    ) -> BaseRecord<'a, K, P, Box<Traced<D>>>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        D: IntoOpaque,
    {
        self.open(record, Some(parent))
    }

    fn open<'a, K, P, D>(
        &self,
        mut record: BaseRecord<'a, K, P, D>,
        parent: Option<&Context>,
    ) -> BaseRecord<'a, K, P, Box<Traced<D>>>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        D: IntoOpaque,
    {
        let span = open_send_span(
            &self.telemetry,
            self.client_id.as_ref(),
            &mut record,
            parent,
        );
        BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(Traced {
                span,
                opaque: record.delivery_opaque,
            }),
        }
    }
}

/// A record's delivery opaque together with its open send span (see
/// [`TracingProducerContext::trace`]). Records carry it boxed, which is what lets
/// librdkafka hold it.
pub struct Traced<D> {
    span: SendSpan,
    opaque: D,
}

impl<D> fmt::Debug for Traced<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traced")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl<D> Traced<D> {
    /// For a record the producer refused outright (`send` returned it with an error): end
    /// its send span as failed with `error` and return your opaque. (Send the record again
    /// instead to keep the span open until that attempt's delivery.)
    pub fn fail(self, error: &KafkaError) -> D {
        let Traced { span, opaque } = self;
        settle(span, Err(error));
        opaque
    }
}

impl<C: ClientContext> ClientContext for TracingProducerContext<C> {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = C::ENABLE_REFRESH_OAUTH_TOKEN;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.inner.log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.inner.stats(statistics);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.inner.stats_raw(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.inner.error(error, reason);
    }

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn StdError>> {
        self.inner.generate_oauth_token(oauthbearer_config)
    }
}

impl<C, Part> ProducerContext<Part> for TracingProducerContext<C>
where
    C: ProducerContext<Part>,
    Part: Partitioner,
{
    type DeliveryOpaque = Box<Traced<C::DeliveryOpaque>>;

    fn delivery(
        &self,
        delivery_result: &DeliveryResult<'_>,
        delivery_opaque: Self::DeliveryOpaque,
    ) {
        let Traced { span, opaque } = *delivery_opaque;
        match delivery_result {
            Ok(message) => settle(span, Ok((message.partition(), message.offset()))),
            Err((error, _)) => settle(span, Err(error)),
        }
        self.inner.delivery(delivery_result, opaque);
    }

    fn get_custom_partitioner(&self) -> Option<&Part> {
        self.inner.get_custom_partitioner()
    }
}
