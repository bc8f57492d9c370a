//! The consumer side: a [`StreamConsumer`] loop that runs a handler for each message
//! inside its process span, commits after success and applies the failure policy.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::{Context, StringValue};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{
    CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::FutureRecord;
use rdkafka::util::{AsyncRuntime, DefaultRuntime};
use rdkafka::ClientConfig;

use super::carrier::HeaderSnapshot;
use super::policy::{Decision, Failure, FailurePolicy, OnFailure};
use super::{describe, TracedProducer};
use crate::propagation::{self, WriteCarrier};
use crate::{ParentPolicy, ProcessSpan, Telemetry};

/// Where a message sits: topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessagePosition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
}

impl MessagePosition {
    pub(crate) fn of<M: Message>(msg: &M) -> MessagePosition {
        MessagePosition {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
        }
    }
}

impl fmt::Display for MessagePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// Why a consumer loop stopped with an error. `E` is the handler's error type.
///
/// In every case the message concerned was not committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError<E> {
    /// The handler failed and the failure policy said [`Decision::Stop`].
    #[error("handler failed on {position}: {error}")]
    Handler {
        /// The handler's error, unchanged.
        error: E,
        /// The message it failed on (the first failed message of a batch).
        position: MessagePosition,
    },
    /// The failure policy said [`Decision::Forward`], and the forward failed.
    #[error(
        "forwarding {position} to {destination} failed: {error} (handler error: {handler_error})"
    )]
    Forward {
        /// rdkafka's error, unchanged.
        error: KafkaError,
        /// The handler's error.
        handler_error: E,
        /// The topic it was to be forwarded to.
        destination: String,
        /// The message.
        position: MessagePosition,
    },
    /// The failure policy said [`Decision::Forward`], but no producer was given to
    /// [`TracedConsumer::forward_with`].
    #[error(
        "cannot forward {position} to {destination}: no producer (TracedConsumer::forward_with); handler error: {handler_error}"
    )]
    NoForwarder {
        /// The handler's error.
        handler_error: E,
        /// The topic it was to be forwarded to.
        destination: String,
        /// The message.
        position: MessagePosition,
    },
    /// The consumer hit a fatal error.
    #[error("kafka consumer: {0}")]
    Kafka(KafkaError),
}

impl<E> ConsumeError<E> {
    /// The error for a forward that failed (`None`: there was no producer).
    pub(crate) fn forward(
        error: Option<KafkaError>,
        handler_error: E,
        destination: String,
        position: MessagePosition,
    ) -> ConsumeError<E> {
        match error {
            Some(error) => ConsumeError::Forward {
                error,
                handler_error,
                destination,
                position,
            },
            None => ConsumeError::NoForwarder {
                handler_error,
                destination,
                position,
            },
        }
    }
}

/// What a consumer loop did before it returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Messages handled successfully.
    pub succeeded: u64,
    /// Failed messages committed without further action ([`Decision::Skip`]).
    pub skipped: u64,
    /// Failed messages forwarded to another topic ([`Decision::Forward`]).
    pub forwarded: u64,
    /// Handler runs repeated in place ([`Decision::Retry`]).
    pub retries: u64,
    /// Batches handled (batch API only).
    pub batches: u64,
    /// Offset commits that librdkafka refused (the messages will be delivered again).
    pub commit_errors: u64,
}

impl RunSummary {
    /// Messages settled: succeeded, skipped or forwarded.
    pub fn settled(&self) -> u64 {
        self.succeeded + self.skipped + self.forwarded
    }
}

/// Sends a forwarded record; lets the consumer hold a producer of any context type.
pub(crate) trait Forward: Send + Sync {
    fn forward<'a>(
        &'a self,
        record: FutureRecord<'a, [u8], [u8]>,
        timeout: Duration,
        parent: &Context,
    ) -> Pin<Box<dyn Future<Output = OwnedDeliveryResult> + Send + 'a>>;
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
    ) -> Pin<Box<dyn Future<Output = OwnedDeliveryResult> + Send + 'a>> {
        Box::pin(self.send_with_parent(record, timeout, parent))
    }
}

/// A [`StreamConsumer`] that runs an async handler for each message inside a
/// `process <topic>` span (kind CONSUMER) whose parent is the producer's send span.
///
/// Everything the handler does runs with that span as the current context: its own
/// `tracing` or OpenTelemetry spans nest under it, and a [`TracedProducer`] send made from
/// it is its child, so consume-then-produce chains need no extra code. The span carries
/// the topic, partition, offset, key (when UTF-8 text), consumer group, client id, body
/// size, delivery attempt and queue time (from the `tracehop-sent-at` header, else the
/// record's timestamp). A message without context, or with bad context, is processed all
/// the same, under a new root that says why.
///
/// **Offsets.** Unless told otherwise ([`commit`](Self::commit)), each message is
/// committed after its handler succeeded, or after the failure policy settled it (skipped
/// or forwarded). Create the consumer with `enable.auto.commit=false` so that librdkafka
/// does not commit on its own: [`from_config`](Self::from_config) then commits, and
/// otherwise leaves offsets to librdkafka.
///
/// **Failures.** The [`FailurePolicy`] decides (default [`OnFailure::stop`]): stop and
/// return the error, skip, run again in place, or forward to a retry or dead-letter topic
/// through the producer given to [`forward_with`](Self::forward_with). A forward is sent
/// from inside the failed process span, so its processing stays in the same trace, with
/// the attempt number in the `tracehop-attempt` header.
///
/// The loop future is `Send`: spawn it. It returns on a fatal consumer error, when the
/// policy says stop, after [`stop_after`](Self::stop_after) messages, or when the `stop`
/// future of [`run_until`](Self::run_until) completes (checked between messages, never
/// during a handler).
///
/// **Closing.** Dropping an rdkafka consumer blocks the calling thread while librdkafka
/// leaves the group and closes (often 100 ms or more). Inside an async runtime, drop the
/// consumer off the workers, for example
/// `tokio::task::spawn_blocking(move || drop(consumer)).await`, or tasks scheduled on that
/// worker wait for it.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use rdkafka::consumer::Consumer;
/// use rdkafka::{ClientConfig, Message};
/// use tracehop::kafka::{OnFailure, TracedConsumer, TracedProducer};
///
/// let telemetry = tracehop::Telemetry::builder("worker").build()?;
/// let mut config = ClientConfig::new();
/// config
///     .set("bootstrap.servers", "localhost:9092")
///     .set("group.id", "workers")
///     .set("enable.auto.commit", "false");
/// let dead_letters = TracedProducer::from_config(&config, telemetry.clone())?;
/// let consumer = TracedConsumer::from_config(&config, telemetry)?
///     .on_failure(OnFailure::dead_letter("tasks.dlq"))
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
pub struct TracedConsumer<C = DefaultConsumerContext, R = DefaultRuntime>
where
    C: ConsumerContext + 'static,
{
    pub(crate) consumer: StreamConsumer<C, R>,
    pub(crate) telemetry: Telemetry,
    pub(crate) group_id: Option<StringValue>,
    pub(crate) client_id: Option<StringValue>,
    pub(crate) parent_policy: ParentPolicy,
    pub(crate) commit: Option<CommitMode>,
    pub(crate) on_failure: Arc<dyn FailurePolicy>,
    pub(crate) forwarder: Option<Arc<dyn Forward>>,
    pub(crate) forward_timeout: Duration,
    pub(crate) stop_after: Option<u64>,
}

impl<C: ConsumerContext + 'static, R> fmt::Debug for TracedConsumer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedConsumer")
            .field("service", &self.telemetry.service_name())
            .field("group_id", &self.group_id)
            .field("client_id", &self.client_id)
            .field("parent_policy", &self.parent_policy)
            .field("commit", &self.commit)
            .field("forwards", &self.forwarder.is_some())
            .field("stop_after", &self.stop_after)
            .finish_non_exhaustive()
    }
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
        traced.group_id = config.get("group.id").map(super::shared);
        traced.client_id = config.get("client.id").map(super::shared);
        traced.commit = (!auto_commit).then_some(CommitMode::Async);
        Ok(traced)
    }
}

impl<C, R> TracedConsumer<C, R>
where
    C: ConsumerContext + 'static,
    R: AsyncRuntime,
{
    /// Trace `consumer`, an existing [`StreamConsumer`], with `telemetry`. Each message is
    /// committed ([`CommitMode::Async`]) once settled; see [`commit`](Self::commit).
    pub fn new(consumer: StreamConsumer<C, R>, telemetry: Telemetry) -> Self {
        TracedConsumer {
            consumer,
            telemetry,
            group_id: None,
            client_id: None,
            parent_policy: ParentPolicy::Child,
            commit: Some(CommitMode::Async),
            on_failure: Arc::new(OnFailure::stop()),
            forwarder: None,
            forward_timeout: Duration::from_secs(30),
            stop_after: None,
        }
    }

    /// The consumer group recorded on spans (`messaging.consumer.group.name`).
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(super::shared(group_id));
        self
    }

    /// The client id recorded on spans (`messaging.client.id`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(super::shared(client_id));
        self
    }

    /// Child of the producer's span (the default), or a new trace linked to it
    /// ([`ParentPolicy::Link`], for producers you do not trust).
    pub fn parent_policy(mut self, policy: ParentPolicy) -> Self {
        self.parent_policy = policy;
        self
    }

    /// How settled messages are committed: `Some(mode)` commits each one, `None` leaves
    /// offsets to librdkafka's auto-commit.
    pub fn commit(mut self, mode: Option<CommitMode>) -> Self {
        self.commit = mode;
        self
    }

    /// What to do when the handler fails (default [`OnFailure::stop`]).
    pub fn on_failure(mut self, policy: impl FailurePolicy) -> Self {
        self.on_failure = Arc::new(policy);
        self
    }

    /// The producer that forwards failed messages to retry and dead-letter topics.
    pub fn forward_with<PC, PR>(mut self, producer: TracedProducer<PC, PR>) -> Self
    where
        PC: ClientContext + 'static,
        PR: AsyncRuntime,
    {
        self.forwarder = Some(Arc::new(producer));
        self
    }

    /// How long a forward may wait for room in the producer's queue (default 30 s).
    pub fn forward_timeout(mut self, timeout: Duration) -> Self {
        self.forward_timeout = timeout;
        self
    }

    /// Return after settling `messages` messages (a batch is never cut short).
    pub fn stop_after(mut self, messages: u64) -> Self {
        self.stop_after = Some(messages);
        self
    }

    /// The wrapped consumer, to subscribe, assign, seek or read committed offsets.
    pub fn inner(&self) -> &StreamConsumer<C, R> {
        &self.consumer
    }

    /// The telemetry handle spans are recorded with.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Open the process span for `message` as the loop does, for a loop of your own: run
    /// the handler with [`ProcessSpan::run`], settle the message, then end the span.
    pub fn process_span<M: Message>(&self, message: &M) -> ProcessSpan {
        let headers = HeaderSnapshot::of(message.headers());
        let attempt = propagation::attempt(&headers).unwrap_or(1);
        self.telemetry
            .process_span(self.describe(message, attempt), &headers)
    }

    pub(crate) fn describe<'m, M: Message>(
        &'m self,
        message: &'m M,
        attempt: u32,
    ) -> crate::Incoming<'m> {
        describe(
            message,
            attempt,
            self.group_id.as_ref(),
            self.client_id.as_ref(),
            self.parent_policy,
        )
    }

    /// Run `handler` on every message until a fatal error, a stop decision or
    /// [`stop_after`](Self::stop_after).
    pub async fn run<F, Fut, E>(&self, handler: F) -> Result<RunSummary, ConsumeError<E>>
    where
        F: FnMut(OwnedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        self.run_until(handler, std::future::pending()).await
    }

    /// Like [`run`](Self::run), and also return (with what was done so far) once `stop`
    /// completes. `stop` is checked while waiting for a message, never while a handler
    /// runs, so the message in hand is always settled first.
    pub async fn run_until<F, Fut, E, S>(
        &self,
        mut handler: F,
        stop: S,
    ) -> Result<RunSummary, ConsumeError<E>>
    where
        F: FnMut(OwnedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
        S: Future<Output = ()>,
    {
        tokio::pin!(stop);
        let mut summary = RunSummary::default();
        loop {
            if self.stop_after.is_some_and(|n| summary.settled() >= n) {
                return Ok(summary);
            }
            let received = tokio::select! {
                biased;
                () = &mut stop => return Ok(summary),
                received = self.consumer.recv() => received,
            };
            match received {
                Ok(message) => self.handle(&message, &mut handler, &mut summary).await?,
                Err(e) => self.recv_error(e)?,
            }
        }
    }

    /// A consumer error: fatal ones end the loop, the rest are logged (librdkafka retries
    /// them itself).
    // The error is large only on the way out of the loop, once.
    #[allow(clippy::result_large_err)]
    pub(crate) fn recv_error<E>(&self, e: KafkaError) -> Result<(), ConsumeError<E>> {
        let fatal = matches!(e, KafkaError::MessageConsumptionFatal(_))
            || e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
        if fatal {
            return Err(ConsumeError::Kafka(e));
        }
        tracing::warn!(error = %e, "kafka consumer error");
        Ok(())
    }

    async fn handle<F, Fut, E>(
        &self,
        message: &BorrowedMessage<'_>,
        handler: &mut F,
        summary: &mut RunSummary,
    ) -> Result<(), ConsumeError<E>>
    where
        F: FnMut(OwnedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let headers = HeaderSnapshot::of(message.headers());
        let first_attempt = propagation::attempt(&headers).unwrap_or(1);
        let mut runs: u32 = 0;
        loop {
            runs += 1;
            let attempt = first_attempt.saturating_add(runs - 1);
            let span = self
                .telemetry
                .process_span(self.describe(message, attempt), &headers);
            let work = span.in_scope(|| handler(message.detach()));
            let error = match span.run(work).await {
                Ok(()) => {
                    self.commit_one(message, summary);
                    summary.succeeded += 1;
                    span.end();
                    return Ok(());
                }
                Err(error) => error,
            };
            // The failure borrows the error; it must not live across an await.
            let decision = {
                let failure = Failure {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    attempt,
                    runs,
                    messages: 1,
                    error: &error,
                };
                self.on_failure.decide(&failure)
            };
            match decision {
                Decision::Stop => {
                    span.end();
                    return Err(ConsumeError::Handler {
                        error,
                        position: MessagePosition::of(message),
                    });
                }
                Decision::Skip => {
                    self.commit_one(message, summary);
                    summary.skipped += 1;
                    span.end();
                    return Ok(());
                }
                Decision::Retry { after } => {
                    span.end();
                    summary.retries += 1;
                    if !after.is_zero() {
                        tokio::time::sleep(after).await;
                    }
                }
                Decision::Forward { topic } => {
                    let forwarded = self.forward(message, &topic, attempt, &span).await;
                    if let Err(e) = forwarded {
                        span.end();
                        return Err(ConsumeError::forward(
                            e,
                            error,
                            topic,
                            MessagePosition::of(message),
                        ));
                    }
                    self.commit_one(message, summary);
                    summary.forwarded += 1;
                    span.end();
                    return Ok(());
                }
            }
        }
    }

    /// Send `message` to `topic` from inside `span`: key, payload and headers as they
    /// were, `tracehop-attempt` set to the next attempt, fresh context. Fails with `None`
    /// when there is no producer to forward with.
    pub(crate) async fn forward(
        &self,
        message: &BorrowedMessage<'_>,
        topic: &str,
        attempt: u32,
        span: &ProcessSpan,
    ) -> Result<(), Option<KafkaError>> {
        let Some(forwarder) = &self.forwarder else {
            return Err(None);
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
            .forward(record, self.forward_timeout, span.context())
            .await
            .map(|_| ())
            .map_err(|(e, _)| Some(e))
    }

    fn commit_one(&self, message: &BorrowedMessage<'_>, summary: &mut RunSummary) {
        let Some(mode) = self.commit else { return };
        if let Err(e) = self.consumer.commit_message(message, mode) {
            summary.commit_errors += 1;
            tracing::warn!(error = %e, position = %MessagePosition::of(message), "kafka commit failed");
        }
    }
}
