//! The batch step of the consume loop: gather several deliveries, handle them at once in
//! one span that links every message's producer, with a child process span per message.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::Context;

use super::handler::{record, run_guarded};
use super::record::Run;
use super::summary::HandlerFailure;
use super::{Consumer, Decision, Failure, Settle, Settlement, Source, Summary};
use crate::messaging::attributes as attr;
use crate::messaging::BatchSpan;
use crate::metrics::ConsumeBound;
use crate::propagation::Extracted;
use crate::{ConsumeError, ProcessSpan};

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

/// A batch of messages handed to the handler of [`Consumer::run_batches`].
///
/// The handler runs with the batch span as the current context. Work for one message
/// belongs in that message's own process span: run it with [`process`](Self::process).
/// Cheap to clone.
pub struct Batch<M> {
    inner: Arc<BatchInner<M>>,
}

impl<M> Clone for Batch<M> {
    fn clone(&self) -> Self {
        Batch {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct BatchInner<M> {
    messages: Vec<M>,
    spans: Vec<ProcessSpan>,
    outcomes: Vec<AtomicU8>,
    context: Context,
}

impl<M> fmt::Debug for Batch<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("messages", &self.inner.messages.len())
            .finish_non_exhaustive()
    }
}

impl<M> Batch<M> {
    /// The messages, in the order they were received.
    pub fn messages(&self) -> &[M] {
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
        self.inner.spans.get(index).map(ProcessSpan::context)
    }

    /// Run `work` for message `index` inside that message's process span and record its
    /// outcome there. A failure marks the message failed: if the batch handler then
    /// fails, the failure policy's decision applies to the failed messages only, and the
    /// others are settled as done. (An `index` out of range runs `work` as it is.)
    pub async fn process<Fut, T, E>(&self, index: usize, work: Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let Some(span) = self.inner.spans.get(index) else {
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

    /// The messages whose [`process`](Self::process) failed; all of them if none did.
    fn failed(&self) -> Vec<usize> {
        let failed: Vec<usize> = (0..self.len())
            .filter(|&i| self.inner.outcomes[i].load(Ordering::Relaxed) == FAILED)
            .collect();
        if failed.is_empty() {
            (0..self.len()).collect()
        } else {
            failed
        }
    }

    /// Record the batch handler's `result` on every message span it did not run.
    fn record_unrun<T, E: fmt::Display>(&self, result: &Result<T, HandlerFailure<E>>) {
        for (span, outcome) in self.inner.spans.iter().zip(&self.inner.outcomes) {
            if outcome.load(Ordering::Relaxed) == NOT_RUN {
                record(span, result);
            }
        }
    }
}

impl<S: Source> Consumer<S> {
    /// Handle deliveries in batches: each batch gets one `process <destination>` span
    /// (kind CONSUMER, `messaging.batch.message_count`) linking every message's producer
    /// span, and each message a child process span linked to its own producer.
    ///
    /// On success every message of the batch is settled as done. On failure the policy
    /// decides for the batch as a whole ([`Failure::messages`] is the batch size): stop,
    /// skip, retry (the handler runs again on the same messages, as a new batch with the
    /// next attempt numbers), redeliver or a broker-specific settlement, applied to each
    /// failed message (those whose [`Batch::process`] failed, else all of them) from
    /// inside its own process span; the others are settled as done. The limit and the
    /// stop signal work as for [`run`](Self::run); a batch never takes more messages
    /// than the limit has left.
    pub async fn run_batches<F, Fut, T, E>(
        &mut self,
        options: BatchOptions,
        mut handler: F,
    ) -> Result<Summary, ConsumeError<E>>
    where
        F: FnMut(Batch<S::Message>) -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        E: fmt::Display + Send,
        S::Message: Sync,
    {
        super::watch::beating(async move {
            self.source.prepare(self.limit).await;
            let mut summary = Summary::default();
            let mut stop = self.stop.clone();
            loop {
                let room = match self.limit {
                    Some(n) if summary.messages >= n => break,
                    Some(n) => usize::try_from(n - summary.messages).unwrap_or(usize::MAX),
                    None => usize::MAX,
                };
                let first = match receive!(self, stop) {
                    None => break,
                    Some(Err(e)) => {
                        self.source_error(e, &mut summary)?;
                        continue;
                    }
                    Some(Ok(delivery)) => delivery,
                };
                let mut deliveries = vec![first];
                let mut ended = false;
                let deadline = tokio::time::Instant::now() + options.max_wait;
                while deliveries.len() < options.max_messages.min(room) {
                    match tokio::time::timeout_at(deadline, self.source.next()).await {
                        Err(_elapsed) => break,
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Ok(Some(Ok(delivery))) => deliveries.push(delivery),
                        Ok(Some(Err(e))) => self.source_error(e, &mut summary)?,
                    }
                }
                self.handle_batch(deliveries, &mut handler, &mut summary)
                    .await?;
                if ended {
                    break;
                }
            }
            Ok(summary)
        })
        .await
    }

    async fn handle_batch<F, Fut, T, E>(
        &self,
        mut deliveries: Vec<S::Delivery<'_>>,
        handler: &mut F,
        summary: &mut Summary,
    ) -> Result<(), ConsumeError<E>>
    where
        F: FnMut(Batch<S::Message>) -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        E: fmt::Display + Send,
        S::Message: Sync,
    {
        let propagation = &self.telemetry.inner().propagation;
        let extracted: Vec<Extracted> = deliveries
            .iter()
            .map(|d| propagation.extract(d.headers()))
            .collect();
        let firsts: Vec<u32> = deliveries
            .iter()
            .zip(&extracted)
            .map(|(d, x)| Self::first_attempt(d, x))
            .collect();
        // Each delivery's bound instruments, when metrics are on: every message of a batch
        // is measured as a delivery of the one loop is.
        let bounds: Option<Vec<Arc<ConsumeBound>>> =
            self.metrics.as_ref().map(|(metrics, cache)| {
                deliveries
                    .iter()
                    .zip(&extracted)
                    .map(|(d, x)| {
                        let bound = self.bound(metrics, cache, d);
                        bound.received(x, d.enqueued_at());
                        bound
                    })
                    .collect()
            });
        let destination = batch_destination(&deliveries);
        let keep = self.on_failure.may_retry_in_place();
        let n = deliveries.len();
        let mut runs: u32 = 0;
        loop {
            runs += 1;
            // Measured only when metrics are on: no clock read otherwise.
            let measure = bounds.as_deref().map(|bounds| {
                for (bound, first) in bounds.iter().zip(&firsts) {
                    bound.run(first.saturating_add(runs - 1));
                }
                (bounds, Instant::now())
            });
            let batch_span = BatchSpan::from_extracted(
                &self.telemetry,
                self.source.describe_batch(&destination),
                extracted.clone(),
            );
            let spans: Vec<ProcessSpan> = deliveries
                .iter()
                .zip(&extracted)
                .zip(&firsts)
                .map(|((d, x), first)| {
                    let attempt = first.saturating_add(runs - 1);
                    self.open_span(d, attempt, x, Some(batch_span.context()))
                })
                .collect();
            let messages: Option<Vec<S::Message>> =
                deliveries.iter_mut().map(|d| d.message(keep)).collect();
            let Some(messages) = messages else {
                tracing::warn!(
                    "retry in place asked for by a policy whose may_retry_in_place() is false; redelivering the batch"
                );
                for (i, ((delivery, span), first)) in
                    deliveries.iter_mut().zip(spans).zip(&firsts).enumerate()
                {
                    summary.failed += 1;
                    let attempt = first.saturating_add(runs - 1);
                    let run = measure.map(|(bounds, started)| Run {
                        bound: &bounds[i],
                        started,
                        error_type: None,
                    });
                    self.settle(delivery, span, Settlement::Redeliver, attempt, summary, run)
                        .await?;
                }
                batch_span.end(n);
                return Ok(());
            };
            let batch = Batch {
                inner: Arc::new(BatchInner {
                    messages,
                    outcomes: spans.iter().map(|_| AtomicU8::new(NOT_RUN)).collect(),
                    spans,
                    context: batch_span.context().clone(),
                }),
            };
            let result = run_guarded(batch_span.context(), || handler(batch.clone())).await;
            batch.record_unrun(&result);
            let failure = match result {
                Ok(_) => {
                    self.settle_batch(
                        &mut deliveries,
                        &batch,
                        (&[], None, None),
                        (&firsts, runs, measure),
                        summary,
                    )
                    .await?;
                    summary.succeeded += n as u64;
                    summary.batches += 1;
                    batch_span.end(0);
                    return Ok(());
                }
                Err(failure) => failure,
            };
            let failed = batch.failed();
            let decision = self.on_failure.decide(&Failure {
                destination: deliveries[failed[0]].destination(),
                attempt: firsts[failed[0]].saturating_add(runs - 1),
                runs,
                messages: n,
                error: &failure,
                panicked: failure.panicked(),
            });
            // Only metrics read the class of the failure.
            let error_type = measure.is_some().then(|| failure.error_type());
            if let Decision::Retry { after } = decision {
                for span in &batch.inner.spans {
                    span.set_attribute(attr::SETTLEMENT, super::RETRY_IN_PLACE);
                    span.end_shared();
                }
                if let Some((bounds, started)) = measure {
                    for (i, bound) in bounds.iter().enumerate() {
                        let failed = error_type.as_deref().filter(|_| failed.contains(&i));
                        bound.processed(started.elapsed(), failed);
                    }
                }
                batch_span.end(failed.len());
                summary.retries += 1;
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                continue;
            }
            let (settlement, stop) = self.settlement(&decision, failure.panicked());
            summary.failed += failed.len() as u64;
            summary.succeeded += (n - failed.len()) as u64;
            if failure.panicked() {
                summary.panicked += failed.len() as u64;
            }
            summary.batches += 1;
            let settled = self
                .settle_batch(
                    &mut deliveries,
                    &batch,
                    (&failed, Some(settlement), error_type.as_ref()),
                    (&firsts, runs, measure),
                    summary,
                )
                .await;
            batch_span.end(failed.len());
            settled?;
            if stop {
                return Err(self.stop_with(failure, deliveries[failed[0]].position()));
            }
            return Ok(());
        }
    }

    /// Settle every delivery of a batch in order: the `failed` ones as `on_failure` says
    /// (their runs measured with `error_type`), the others as done; record each on its
    /// span and end it, and measure its run when metrics are on (`measure`: the bound
    /// instruments of each delivery and when the run started).
    async fn settle_batch<E>(
        &self,
        deliveries: &mut [S::Delivery<'_>],
        batch: &Batch<S::Message>,
        (failed, on_failure, error_type): Failed<'_, S::Action>,
        (firsts, runs, measure): (&[u32], u32, Measure<'_>),
        summary: &mut Summary,
    ) -> Result<(), ConsumeError<E>> {
        for (i, delivery) in deliveries.iter_mut().enumerate() {
            let attempt = firsts[i].saturating_add(runs - 1);
            let settlement = match on_failure {
                Some(settlement) if failed.contains(&i) => settlement,
                _ => Settlement::Done,
            };
            let span = &batch.inner.spans[i];
            let settlement = if self.manual {
                Settlement::Nothing
            } else {
                settlement
            };
            let run = measure.map(|(bounds, started)| Run {
                bound: &bounds[i],
                started,
                error_type: error_type.filter(|_| failed.contains(&i)).cloned(),
            });
            let settling = run.as_ref().map(|_| Instant::now());
            let settled = delivery.settle(settlement, span.context(), attempt).await;
            if let (Some(run), Some(settling)) = (&run, settling) {
                let forwarded = matches!(settlement, Settlement::Action(_));
                run.settled(&settled, settling.elapsed(), forwarded);
            }
            let fatal = super::record_settlement(span, settled, summary, || delivery.position());
            span.end_shared();
            if let Some(run) = run {
                run.bound
                    .processed(run.started.elapsed(), run.error_type.as_deref());
            }
            if let Some(e) = fatal {
                // The rest of the batch stays unsettled: the broker delivers it again.
                for rest in &batch.inner.spans[i + 1..] {
                    rest.end_shared();
                }
                return Err(ConsumeError::settle(e, delivery.position()));
            }
            summary.messages += 1;
        }
        Ok(())
    }
}

/// The failed messages of a batch (their indices), how the policy settles them, and the
/// failure's `error.type`.
type Failed<'a, A> = (&'a [usize], Option<Settlement<'a, A>>, Option<&'a String>);

/// Each delivery's bound instruments and when the batch's run started, when metrics are
/// on.
type Measure<'a> = Option<(&'a [Arc<ConsumeBound>], Instant)>;

/// The batch span's destination: the destination, or the destinations joined with `,`
/// when a batch spans several.
fn batch_destination<D: Settle>(deliveries: &[D]) -> String {
    let mut names: Vec<&str> = deliveries.iter().map(Settle::destination).collect();
    names.sort_unstable();
    names.dedup();
    names.join(",")
}
