//! The batch API: handle several messages at once in one span that links every message's
//! producer, with a child process span per message.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use opentelemetry::Context;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::util::AsyncRuntime;
use rdkafka::{Offset, TopicPartitionList};

use super::carrier::HeaderSnapshot;
use super::consumer::{ConsumeError, MessagePosition, RunSummary};
use super::policy::{Decision, Failure};
use super::TracedConsumer;
use crate::messaging::attributes::{self as attr, system};
use crate::propagation::{self, ReadCarrier};
use crate::{Incoming, ProcessSpan};

/// How the batch loop gathers a batch: up to `max_messages`, waiting at most `max_wait`
/// after the first one arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    max_messages: usize,
    max_wait: Duration,
}

impl BatchOptions {
    /// Batches of up to `max_messages` (at least 1), gathered for at most `max_wait` after
    /// the first message.
    pub fn new(max_messages: usize, max_wait: Duration) -> BatchOptions {
        BatchOptions {
            max_messages: max_messages.max(1),
            max_wait,
        }
    }
}

impl Default for BatchOptions {
    /// Up to 100 messages, gathered for at most 100 ms.
    fn default() -> Self {
        BatchOptions::new(100, Duration::from_millis(100))
    }
}

const NOT_RUN: u8 = 0;
const SUCCEEDED: u8 = 1;
const FAILED: u8 = 2;

/// A batch of messages handed to the handler of
/// [`TracedConsumer::run_batches`](super::TracedConsumer::run_batches).
///
/// The handler runs with the batch span as the current context. Work for one message
/// belongs in that message's own process span: run it with [`process`](Self::process).
/// Cheap to clone.
#[derive(Clone)]
pub struct Batch {
    inner: Arc<BatchInner>,
}

struct BatchInner {
    messages: Vec<OwnedMessage>,
    spans: Vec<Option<ProcessSpan>>,
    outcomes: Vec<AtomicU8>,
    context: Context,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("messages", &self.inner.messages.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// The messages, in the order they were received.
    pub fn messages(&self) -> &[OwnedMessage] {
        &self.inner.messages
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.inner.messages.len()
    }

    /// Whether the batch is empty (never, for a batch given to a handler).
    pub fn is_empty(&self) -> bool {
        self.inner.messages.is_empty()
    }

    /// The context of the batch span.
    pub fn context(&self) -> &Context {
        &self.inner.context
    }

    /// The context of message `index`'s process span.
    pub fn message_context(&self, index: usize) -> Option<&Context> {
        self.inner
            .spans
            .get(index)
            .and_then(Option::as_ref)
            .map(ProcessSpan::context)
    }

    /// Run `work` for message `index` inside that message's process span and record its
    /// outcome there. A failure marks the message failed: if the batch handler then
    /// fails, only failed messages are forwarded. (An `index` out of range runs `work`
    /// as it is.)
    pub async fn process<Fut, T, E>(&self, index: usize, work: Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let Some(span) = self.inner.spans.get(index).and_then(Option::as_ref) else {
            return work.await;
        };
        let result = span.run(work).await;
        if let Some(outcome) = self.inner.outcomes.get(index) {
            let value = if result.is_ok() { SUCCEEDED } else { FAILED };
            // A failure sticks: a later success in the same batch does not undo it.
            outcome.fetch_max(value, Ordering::Relaxed);
        }
        result
    }

    fn failed(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.inner.outcomes[i].load(Ordering::Relaxed) == FAILED)
            .collect()
    }

    /// Record `result` on every message span the handler did not run, then end them
    /// all. If the handler kept a clone of the batch, the spans end when it drops it.
    fn finish<E: fmt::Display>(self, result: Result<(), &E>) {
        for (span, outcome) in self.inner.spans.iter().zip(&self.inner.outcomes) {
            if let (Some(span), NOT_RUN) = (span, outcome.load(Ordering::Relaxed)) {
                span.record(&result);
            }
        }
        if let Ok(inner) = Arc::try_unwrap(self.inner) {
            inner.spans.into_iter().flatten().for_each(ProcessSpan::end);
        }
    }
}

impl<C, R> TracedConsumer<C, R>
where
    C: ConsumerContext + 'static,
    R: AsyncRuntime,
{
    /// Handle messages in batches: each batch gets one `process <topic>` span (kind
    /// CONSUMER, `messaging.batch.message_count`) linking every message's producer span,
    /// and each message a child process span linked to its own producer.
    ///
    /// On success every message of the batch is committed. On failure the policy decides
    /// for the batch as a whole ([`Failure::messages`] is the batch size): stop (nothing
    /// committed), skip (commit), retry (run the handler again on the same messages, as a
    /// new batch with the next attempt numbers) or forward — each failed message (those
    /// whose [`Batch::process`] failed, else all of them) from inside its own process span
    /// — then commit.
    pub async fn run_batches<F, Fut, E>(
        &self,
        options: BatchOptions,
        handler: F,
    ) -> Result<RunSummary, ConsumeError<E>>
    where
        F: FnMut(Batch) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        self.run_batches_until(options, handler, std::future::pending())
            .await
    }

    /// Like [`run_batches`](Self::run_batches), and also return once `stop` completes
    /// (checked while waiting for the first message of a batch).
    pub async fn run_batches_until<F, Fut, E, S>(
        &self,
        options: BatchOptions,
        mut handler: F,
        stop: S,
    ) -> Result<RunSummary, ConsumeError<E>>
    where
        F: FnMut(Batch) -> Fut,
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
            let first = tokio::select! {
                biased;
                () = &mut stop => return Ok(summary),
                received = self.consumer.recv() => received,
            };
            let first = match first {
                Ok(message) => message,
                Err(e) => {
                    self.recv_error(e)?;
                    continue;
                }
            };
            let mut messages = vec![first];
            let deadline = tokio::time::Instant::now() + options.max_wait;
            while messages.len() < options.max_messages {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Err(_elapsed) => break,
                    Ok(Ok(message)) => messages.push(message),
                    Ok(Err(e)) => self.recv_error(e)?,
                }
            }
            self.handle_batch(&messages, &mut handler, &mut summary)
                .await?;
        }
    }

    async fn handle_batch<F, Fut, E>(
        &self,
        messages: &[BorrowedMessage<'_>],
        handler: &mut F,
        summary: &mut RunSummary,
    ) -> Result<(), ConsumeError<E>>
    where
        F: FnMut(Batch) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let headers: Vec<HeaderSnapshot<'_>> = messages
            .iter()
            .map(|m| HeaderSnapshot::of(m.headers()))
            .collect();
        let first_attempts: Vec<u32> = headers
            .iter()
            .map(|h| propagation::attempt(h).unwrap_or(1))
            .collect();
        let topic = batch_destination(messages);
        let mut runs: u32 = 0;
        loop {
            runs += 1;
            let mut description = Incoming::new(system::KAFKA, &topic);
            if let Some(group) = &self.group_id {
                description =
                    description.attribute(attr::MESSAGING_CONSUMER_GROUP_NAME, group.clone());
            }
            if let Some(id) = &self.client_id {
                description = description.attribute(attr::MESSAGING_CLIENT_ID, id.clone());
            }
            let batch_span = self
                .telemetry
                .batch_span(description, headers.iter().map(|h| h as &dyn ReadCarrier));
            let spans = messages
                .iter()
                .zip(&first_attempts)
                .enumerate()
                .map(|(i, (m, first))| {
                    let attempt = first.saturating_add(runs - 1);
                    batch_span.message_span(i, self.describe(m, attempt))
                })
                .collect();
            let batch = Batch {
                inner: Arc::new(BatchInner {
                    messages: messages.iter().map(BorrowedMessage::detach).collect(),
                    spans,
                    outcomes: messages.iter().map(|_| AtomicU8::new(NOT_RUN)).collect(),
                    context: batch_span.context().clone(),
                }),
            };
            let work = {
                let _current = batch_span.context().clone().attach();
                handler(batch.clone())
            };
            let result = work.with_context(batch_span.context().clone()).await;
            let n = messages.len() as u64;

            let error = match result {
                Ok(()) => {
                    batch.finish::<&str>(Ok(()));
                    self.commit_all(messages, summary);
                    batch_span.end(0);
                    summary.succeeded += n;
                    summary.batches += 1;
                    return Ok(());
                }
                Err(error) => error,
            };
            let mut failed = batch.failed();
            if failed.is_empty() {
                failed = (0..messages.len()).collect();
            }
            let first_failed = &messages[failed[0]];
            let decision = {
                let failure = Failure {
                    topic: first_failed.topic(),
                    partition: first_failed.partition(),
                    offset: first_failed.offset(),
                    attempt: first_attempts[failed[0]].saturating_add(runs - 1),
                    runs,
                    messages: messages.len(),
                    error: &error,
                };
                self.on_failure.decide(&failure)
            };
            let position = MessagePosition::of(first_failed);
            match decision {
                Decision::Stop => {
                    batch.finish(Err(&error));
                    batch_span.end(failed.len());
                    return Err(ConsumeError::Handler { error, position });
                }
                Decision::Skip => {
                    batch.finish(Err(&error));
                    self.commit_all(messages, summary);
                    batch_span.end(failed.len());
                    summary.skipped += failed.len() as u64;
                    summary.succeeded += n - failed.len() as u64;
                    summary.batches += 1;
                    return Ok(());
                }
                Decision::Retry { after } => {
                    batch.finish(Err(&error));
                    batch_span.end(failed.len());
                    summary.retries += 1;
                    if !after.is_zero() {
                        tokio::time::sleep(after).await;
                    }
                }
                Decision::Forward { topic } => {
                    for &i in &failed {
                        let Some(span) = batch.inner.spans[i].as_ref() else {
                            continue;
                        };
                        let attempt = first_attempts[i].saturating_add(runs - 1);
                        if let Err(e) = self.forward(&messages[i], &topic, attempt, span).await {
                            batch.finish(Err(&error));
                            batch_span.end(failed.len());
                            return Err(ConsumeError::forward(
                                e,
                                error,
                                topic,
                                MessagePosition::of(&messages[i]),
                            ));
                        }
                    }
                    batch.finish(Err(&error));
                    self.commit_all(messages, summary);
                    batch_span.end(failed.len());
                    summary.forwarded += failed.len() as u64;
                    summary.succeeded += n - failed.len() as u64;
                    summary.batches += 1;
                    return Ok(());
                }
            }
        }
    }

    /// Commit the highest offset of each partition in `messages`.
    fn commit_all(&self, messages: &[BorrowedMessage<'_>], summary: &mut RunSummary) {
        let Some(mode) = self.commit else { return };
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in messages {
            let offset = next
                .entry((m.topic(), m.partition()))
                .or_insert(m.offset() + 1);
            *offset = (*offset).max(m.offset() + 1);
        }
        let mut list = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            if let Err(e) = list.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                summary.commit_errors += 1;
                tracing::warn!(error = %e, topic, partition, "kafka commit failed");
            }
        }
        if let Err(e) = self.consumer.commit(&list, mode) {
            summary.commit_errors += 1;
            tracing::warn!(error = %e, "kafka batch commit failed");
        }
    }
}

/// The batch span's destination: the topic, or the topics joined with `,` when a batch
/// spans several.
fn batch_destination(messages: &[BorrowedMessage<'_>]) -> String {
    let mut topics: Vec<&str> = messages.iter().map(Message::topic).collect();
    topics.sort_unstable();
    topics.dedup();
    topics.join(",")
}
