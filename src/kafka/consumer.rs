//! The consumer side: a [`StreamConsumer`] as a source for the one consume loop, whose
//! messages are committed once settled, sought back to for redelivery, or forwarded to a
//! retry or dead-letter topic.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::{Context, StringValue};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{
    CommitMode, Consumer as _, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::{AsyncRuntime, DefaultRuntime};
use rdkafka::{ClientConfig, Offset};

use super::carrier::HeaderSnapshot;
use super::producer::SendResult;
use super::rewinds::Rewinds;
use super::{describe, TracedProducer};
use crate::messaging::attributes::{self as attr, system};
use crate::messaging::consume::{Settle, SettleError, Settlement, Source, SourceError, NO_HEADERS};
use crate::propagation::{self, ReadCarrier, WriteCarrier};
use crate::{Consumer, Incoming, OnFailure, ProcessSpan, Telemetry};

/// A [`StreamConsumer`] run through the one [`Consumer`] loop: each message's handler
/// runs inside a `process <topic>` span (kind CONSUMER) whose parent is the producer's
/// send span.
///
/// Everything the handler does runs with that span as the current context: its own
/// `tracing` or OpenTelemetry spans nest under it, and a [`TracedProducer`] send made from
/// it is its child. The span carries the topic, partition, offset, key (when UTF-8 text),
/// consumer group, client id, body size, delivery attempt and queue time (from the
/// `tracehop-sent-at` header, else the record's timestamp).
///
/// **Offsets.** Each message is committed once settled (handled, skipped or forwarded),
/// asynchronously, unless told otherwise ([`commit`](Consumer::commit)). Create the
/// consumer with `enable.auto.commit=false` so that librdkafka does not commit on its
/// own: [`from_config`](Consumer::from_config) then commits, and otherwise leaves offsets
/// to librdkafka.
///
/// **Failures.** The failure policy decides (default [`OnFailure::redeliver`]: the
/// partition is sought back to the message, so it is consumed again, and nothing past it
/// is committed meanwhile). [`OnFailure::retry_topic`] and
/// [`OnFailure::dead_letter_topic`] forward it through the producer given to
/// [`forward_with`](Consumer::forward_with), from inside the failed process span, with
/// the attempt number in the `tracehop-attempt` header; the offset is committed once the
/// broker has the forwarded copy. A forward that fails ends the loop (going on would
/// commit past the message).
///
/// **Closing.** Dropping an rdkafka consumer blocks while librdkafka leaves the group.
/// Dropped inside a Tokio runtime, a traced consumer does that on a thread of its own, so
/// neither the async worker nor the runtime's shutdown waits for it (rdkafka's close has
/// no deadline); [`close`](Consumer::close) does it and waits.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use rdkafka::consumer::Consumer as _;
/// use rdkafka::{ClientConfig, Message};
/// use tracehop::kafka::{TracedConsumer, TracedProducer};
/// use tracehop::OnFailure;
///
/// let telemetry = tracehop::Telemetry::builder("worker").build()?;
/// let mut config = ClientConfig::new();
/// config
///     .set("bootstrap.servers", "localhost:9092")
///     .set("group.id", "workers")
///     .set("enable.auto.commit", "false");
/// let dead_letters = TracedProducer::from_config(&config, telemetry.clone())?;
/// let mut consumer = TracedConsumer::from_config(&config, telemetry)?
///     .on_failure(OnFailure::dead_letter_topic("tasks.dlq"))
///     .forward_with(dead_letters);
/// consumer.inner().subscribe(&["tasks"])?;
/// let worker = tokio::spawn(async move {
///     consumer
///         .run(|msg| async move {
///             let task = msg.payload_view::<str>().and_then(Result::ok).unwrap_or_default();
///             if task.is_empty() {
///                 return Err("empty task");
///             }
///             Ok(())
///         })
///         .await
/// });
/// # drop(worker);
/// # Ok(()) }
/// ```
pub type TracedConsumer<C = DefaultConsumerContext, R = DefaultRuntime> =
    Consumer<KafkaSource<C, R>>;

/// What a Kafka failure policy can do beyond the common decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KafkaAction {
    /// Send the message to `topic` (a retry or dead-letter topic) from inside the failed
    /// process span, with the user's key, payload and headers unchanged and the
    /// `tracehop-attempt` header set to the next attempt; commit once the broker has it.
    Forward {
        /// The topic to forward to.
        topic: String,
    },
}

impl OnFailure<KafkaAction> {
    /// Forward the failed message to the dead-letter topic `topic` and go on.
    pub fn dead_letter_topic(topic: impl Into<String>) -> Self {
        OnFailure::settle(KafkaAction::Forward {
            topic: topic.into(),
        })
    }

    /// Forward the failed message to the retry topic `topic` while its attempt number is
    /// below `attempts`; then stop (or whatever [`then`](Self::then) says). A consumer of
    /// the retry topic sees attempt 2, 3, ... in the same trace.
    pub fn retry_topic(topic: impl Into<String>, attempts: u32) -> Self {
        OnFailure::dead_letter_topic(topic).below_attempt(attempts)
    }
}

/// Sends a forwarded record; lets the consumer hold a producer of any context type.
trait Forward: Send + Sync {
    fn forward<'a>(
        &'a self,
        record: FutureRecord<'a, [u8], [u8]>,
        timeout: Duration,
        parent: &Context,
    ) -> Pin<Box<dyn Future<Output = SendResult> + Send + 'a>>;
}

impl<C, R> Forward for TracedProducer<C, R>
where
    C: ClientContext + 'static,
    R: AsyncRuntime,
{
    fn forward<'a>(
        &'a self,
        record: FutureRecord<'a, [u8], [u8]>,
        timeout: Duration,
        parent: &Context,
    ) -> Pin<Box<dyn Future<Output = SendResult> + Send + 'a>> {
        Box::pin(self.send_with_parent(record, timeout, parent))
    }
}

/// The source behind a [`TracedConsumer`]: a [`StreamConsumer`], the names its spans
/// record, and how its messages are committed and forwarded.
pub struct KafkaSource<C = DefaultConsumerContext, R = DefaultRuntime>
where
    C: ConsumerContext + 'static,
    R: AsyncRuntime,
{
    /// `Some` until dropped (see the `Drop` impl).
    consumer: Option<StreamConsumer<C, R>>,
    group_id: Option<StringValue>,
    client_id: Option<StringValue>,
    commit: Option<CommitMode>,
    forwarder: Option<Arc<dyn Forward>>,
    forward_timeout: Duration,
    rewinds: Rewinds,
}

impl<C: ConsumerContext + 'static, R: AsyncRuntime> fmt::Debug for KafkaSource<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("group_id", &self.group_id)
            .field("client_id", &self.client_id)
            .field("commit", &self.commit)
            .field("forwards", &self.forwarder.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: ConsumerContext + 'static, R: AsyncRuntime> Drop for KafkaSource<C, R> {
    /// librdkafka's close blocks while the consumer leaves its group, and rdkafka polls
    /// until the close completes, without a deadline: with the broker gone it can wait
    /// for ever. Inside a Tokio runtime it happens on a thread of its own, so that neither
    /// an async worker nor the runtime's shutdown (which waits for its blocking pool)
    /// waits for it.
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            drop(consumer);
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("tracehop-kafka-close".into())
            .spawn(move || drop(consumer));
        if let Err(e) = spawned {
            // The closure, and the consumer with it, was dropped (closed) on this thread.
            tracing::warn!(error = %e, "no thread to close the Kafka consumer on: closed here");
        }
    }
}

impl<C: ConsumerContext + 'static, R: AsyncRuntime> KafkaSource<C, R> {
    /// The wrapped consumer.
    pub fn consumer(&self) -> &StreamConsumer<C, R> {
        match &self.consumer {
            Some(consumer) => consumer,
            // Taken only in `drop`.
            None => unreachable!("the consumer is only taken when the source is dropped"),
        }
    }

    /// Commit `message` (or note why not) and say what was done.
    fn commit(&self, message: &BorrowedMessage<'_>) -> Result<&'static str, SettleError> {
        let Some(mode) = self.commit else {
            return Ok("none");
        };
        if self.rewinds.blocks(message) {
            // A message before it on this partition is coming again; committing this
            // offset would commit that one too. This one comes again after it.
            return Ok("none");
        }
        self.consumer()
            .commit_message(message, mode)
            .map(|()| "commit")
            .map_err(|e| SettleError::new("commit", e))
    }

    /// Seek `message`'s partition back to it, so it is consumed again (its
    /// `redeliveries` so far count towards the next delivery's attempt).
    fn seek_back(
        &self,
        message: &BorrowedMessage<'_>,
        redeliveries: u32,
    ) -> Result<&'static str, SettleError> {
        self.rewinds.add(message, redeliveries.saturating_add(1));
        self.consumer()
            .seek(
                message.topic(),
                message.partition(),
                Offset::Offset(message.offset()),
                Duration::ZERO,
            )
            .map(|()| "seek")
            .map_err(|e| SettleError::fatal("seek", e))
    }

    /// Send `message` to `topic` from inside `span`: key, payload and headers as they
    /// were, `tracehop-attempt` set to the next attempt, fresh context.
    async fn forward(
        &self,
        message: &BorrowedMessage<'_>,
        topic: &str,
        span: &Context,
        attempt: u32,
    ) -> Result<(), SettleError> {
        let Some(forwarder) = &self.forwarder else {
            return Err(SettleError::fatal(
                "forward",
                format!("cannot forward to {topic}: no producer (TracedConsumer::forward_with)"),
            ));
        };
        let mut headers = message
            .headers()
            .map(BorrowedHeaders::detach)
            .unwrap_or_default();
        headers.set(propagation::ATTEMPT, attempt.saturating_add(1).to_string());
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        record.key = message.key();
        record.payload = message.payload();
        record.headers = Some(headers);
        forwarder
            .forward(record, self.forward_timeout, span)
            .await
            .map(|_| ())
            .map_err(|(e, _)| SettleError::fatal("forward", e))
    }
}

fn message_headers<'m>(message: &'m BorrowedMessage<'_>) -> &'m dyn ReadCarrier {
    match message.headers() {
        Some(headers) => headers,
        None => NO_HEADERS,
    }
}

impl<C: ConsumerContext + 'static, R: AsyncRuntime> Source for KafkaSource<C, R> {
    type Message = OwnedMessage;
    type Action = KafkaAction;
    type Delivery<'a>
        = KafkaDelivery<'a, C, R>
    where
        Self: 'a;

    async fn next(&self) -> Option<Result<KafkaDelivery<'_, C, R>, SourceError>> {
        match self.consumer().recv().await {
            Ok(message) => {
                let redeliveries = self.rewinds.arrived(&message);
                Some(Ok(KafkaDelivery {
                    source: self,
                    message,
                    redeliveries,
                }))
            }
            Err(e) => {
                let fatal = matches!(e, KafkaError::MessageConsumptionFatal(_))
                    || e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
                // librdkafka retries the others itself.
                Some(Err(SourceError {
                    fatal,
                    error: Box::new(e),
                }))
            }
        }
    }

    async fn close(mut self) {
        if let Some(consumer) = self.consumer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        }
    }

    fn describe_batch<'a>(&'a self, destination: &'a str) -> Incoming<'a> {
        let mut batch = Incoming::new(system::KAFKA, destination);
        if let Some(group) = &self.group_id {
            batch = batch.attribute(attr::MESSAGING_CONSUMER_GROUP_NAME, group.clone());
        }
        if let Some(id) = &self.client_id {
            batch = batch.attribute(attr::MESSAGING_CLIENT_ID, id.clone());
        }
        batch
    }
}

/// A message consumed from Kafka; it borrows its consumer.
pub struct KafkaDelivery<'a, C = DefaultConsumerContext, R = DefaultRuntime>
where
    C: ConsumerContext + 'static,
    R: AsyncRuntime,
{
    source: &'a KafkaSource<C, R>,
    message: BorrowedMessage<'a>,
    /// How often this consumer sought back to this message before.
    redeliveries: u32,
}

impl<C: ConsumerContext + 'static, R: AsyncRuntime> fmt::Debug for KafkaDelivery<'_, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaDelivery")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

impl<C: ConsumerContext + 'static, R: AsyncRuntime> Settle for KafkaDelivery<'_, C, R> {
    type Message = OwnedMessage;
    type Action = KafkaAction;

    fn describe(&self) -> Incoming<'_> {
        describe(
            &self.message,
            self.source.group_id.as_ref(),
            self.source.client_id.as_ref(),
        )
    }

    fn destination(&self) -> &str {
        self.message.topic()
    }

    fn system(&self) -> &'static str {
        crate::messaging::attributes::system::KAFKA
    }

    fn enqueued_at(&self) -> Option<std::time::SystemTime> {
        super::stored_at(&self.message)
    }

    fn headers(&self) -> &dyn ReadCarrier {
        message_headers(&self.message)
    }

    fn redeliveries(&self) -> u32 {
        self.redeliveries
    }

    fn message(&mut self, _keep: bool) -> Option<OwnedMessage> {
        // The borrowed message stays, for committing and forwarding.
        Some(self.message.detach())
    }

    fn position(&self) -> String {
        position(&self.message)
    }

    async fn settle(
        &mut self,
        settlement: Settlement<'_, KafkaAction>,
        span: &Context,
        attempt: u32,
    ) -> Result<&'static str, SettleError> {
        let source = self.source;
        match settlement {
            Settlement::Nothing => Ok("none"),
            Settlement::Done => {
                source.rewinds.settled(&self.message, self.redeliveries);
                source.commit(&self.message)
            }
            Settlement::Redeliver => source.seek_back(&self.message, self.redeliveries),
            Settlement::Action(KafkaAction::Forward { topic }) => {
                source.forward(&self.message, topic, span, attempt).await?;
                source.rewinds.settled(&self.message, self.redeliveries);
                // Forwarded: the copy is what counts now.
                source.commit(&self.message).map(|_| "forward")
            }
        }
    }
}

/// `topic[partition]@offset`.
fn position<M: Message>(message: &M) -> String {
    format!(
        "{}[{}]@{}",
        message.topic(),
        message.partition(),
        message.offset()
    )
}

impl TracedConsumer {
    /// Create the consumer from `config` and trace it with `telemetry`.
    ///
    /// The consumer group and client id for the spans come from `group.id` and
    /// `client.id`. Offsets are committed after each message (asynchronously) when
    /// `enable.auto.commit` is `false`, and left to librdkafka otherwise. (For another
    /// consumer context or async runtime, create the `StreamConsumer` yourself and use
    /// [`new`](Self::new).)
    pub fn from_config(config: &ClientConfig, telemetry: Telemetry) -> Result<Self, KafkaError> {
        let consumer = StreamConsumer::from_config(config)?;
        let auto_commit = config
            .get("enable.auto.commit")
            .is_none_or(|v| !v.trim().eq_ignore_ascii_case("false"));
        let mut traced = TracedConsumer::new(consumer, telemetry);
        let source = traced.source_mut();
        source.group_id = config.get("group.id").map(super::shared);
        source.client_id = config.get("client.id").map(super::shared);
        source.commit = (!auto_commit).then_some(CommitMode::Async);
        Ok(traced)
    }
}

impl<C, R> Consumer<KafkaSource<C, R>>
where
    C: ConsumerContext + 'static,
    R: AsyncRuntime,
{
    /// Trace `consumer`, an existing [`StreamConsumer`], with `telemetry`. Each message is
    /// committed ([`CommitMode::Async`]) once settled; see [`commit`](Self::commit).
    pub fn new(consumer: StreamConsumer<C, R>, telemetry: Telemetry) -> Self {
        let source = KafkaSource {
            consumer: Some(consumer),
            group_id: None,
            client_id: None,
            commit: Some(CommitMode::Async),
            forwarder: None,
            forward_timeout: Duration::from_secs(30),
            rewinds: Rewinds::default(),
        };
        Consumer::from_source(source, telemetry)
    }

    /// The consumer group recorded on spans (`messaging.consumer.group.name`).
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.source_mut().group_id = Some(super::shared(group_id));
        self
    }

    /// The client id recorded on spans (`messaging.client.id`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.source_mut().client_id = Some(super::shared(client_id));
        self
    }

    /// How settled messages are committed: `Some(mode)` commits each one, `None` leaves
    /// offsets to librdkafka's auto-commit.
    pub fn commit(mut self, mode: Option<CommitMode>) -> Self {
        self.source_mut().commit = mode;
        self
    }

    /// The producer that forwards failed messages to retry and dead-letter topics.
    pub fn forward_with<PC, PR>(mut self, producer: TracedProducer<PC, PR>) -> Self
    where
        PC: ClientContext + 'static,
        PR: AsyncRuntime,
    {
        self.source_mut().forwarder = Some(Arc::new(producer));
        self
    }

    /// How long a forward may wait for room in the producer's queue (default 30 s).
    pub fn forward_timeout(mut self, timeout: Duration) -> Self {
        self.source_mut().forward_timeout = timeout;
        self
    }

    /// The wrapped consumer, to subscribe, assign, seek or read committed offsets.
    pub fn inner(&self) -> &StreamConsumer<C, R> {
        self.source().consumer()
    }

    /// Open the process span for `message` as the loop does, for a loop of your own: run
    /// the handler with [`ProcessSpan::run`], settle the message, then end the span.
    pub fn process_span<M: Message>(&self, message: &M) -> ProcessSpan {
        let source = self.source();
        let msg = describe(message, source.group_id.as_ref(), source.client_id.as_ref())
            .parent_policy(self.parent());
        self.telemetry()
            .process_span(msg, &HeaderSnapshot::of(message.headers()))
    }
}
