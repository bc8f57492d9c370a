//! THE consume loop: one implementation of receiving, tracing, handling and settling
//! messages, used by every broker.
//!
//! A broker adapter supplies a [`Source`] of deliveries and, per delivery, how to
//! describe, read and [`Settle`] it. [`Consumer`] owns everything else: the limit, the
//! stop signal, the delivery attempt, the process span, running the handler (its panics
//! caught), the [failure policy](FailurePolicy) and its [`Decision`], settlement and its
//! recording (`tracehop.settlement` on the span), and the [`Summary`]. So every traced
//! consumer, on every broker, is configured and run the same way:
//!
//! ```text
//! consumer
//!     .limit(100)                          // messages settled, then return
//!     .stop_on(&stop)                      // or when this Stop fires
//!     .on_failure(OnFailure::redeliver())  // what a failed (or panicking) handler means
//!     .run(|message| async move { ... })   // -> Result<Summary, ConsumeError<E>>
//! ```
//!
//! `kafka::TracedConsumer`, `amqp::TracedConsumer`, `nats::TracedSubscriber` and
//! `nats::TracedMessages` are this type over their broker's source.

/// The next item of the consumer's source inside its loop, or `continue` (the stop signal
/// fired and the source drains) or `break` (it fired and the loop ends): the receiving
/// step of `run` and `run_batches`, written once.
macro_rules! receive {
    ($consumer:expr, $stop:ident) => {{
        match $consumer.after_stop(&mut $stop).await {
            Some(true) => continue,
            Some(false) => break,
            None => {}
        }
        let Some(item) = $consumer.next_unless_stopped($stop.as_ref()).await else {
            continue;
        };
        item
    }};
}

mod batch;
mod handler;
mod policy;
mod record;
mod source;
mod stop;
mod summary;
pub(crate) mod watch;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

pub use batch::{Batch, BatchOptions};
pub use policy::{Decision, Failure, FailurePolicy, OnFailure};
#[cfg_attr(
    not(any(feature = "kafka", feature = "nats", feature = "amqp")),
    allow(unused_imports)
)]
pub(crate) use source::NO_HEADERS;
pub use source::{BoxError, Settle, SettleError, Settlement, Source, SourceError};
pub use stop::Stop;
pub use summary::{ConsumeError, Summary};

use self::handler::{record, run_guarded};
use self::record::{record_settlement, Run, RETRY_IN_PLACE};
use self::summary::HandlerFailure;
use super::attributes as attr;
use crate::metrics::{ConsumeCache, Metrics};
use crate::propagation::Extracted;
use crate::{ParentPolicy, ProcessSpan, Telemetry};

/// A traced consumer: a broker's [`Source`] of deliveries run through the one consume
/// loop (see the [module docs](self)).
///
/// Each delivery gets a process span (kind CONSUMER, a child of the producer's send
/// span, or linked under [`ParentPolicy::Link`]) with the delivery attempt and queue
/// time; the handler runs inside it, so its own spans and sends nest under it. A handler
/// that succeeds has its message settled as done (ack, commit). One that fails, or
/// panics, is recorded on the span (status error, `error.type`, an `exception` event) and
/// its message settled as the [`FailurePolicy`] decides (default: redeliver); the loop
/// goes on with the next message.
pub struct Consumer<S: Source> {
    source: S,
    telemetry: Telemetry,
    on_failure: Box<dyn FailurePolicy<S::Action>>,
    parent: ParentPolicy,
    limit: Option<u64>,
    stop: Option<Stop>,
    propagate_panics: bool,
    manual: bool,
    /// This consumer's bound instruments per destination, when metrics are on.
    metrics: Option<(Arc<Metrics>, ConsumeCache)>,
}

impl<S: Source + fmt::Debug> fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("source", &self.source)
            .field("service", &self.telemetry.service_name())
            .field("parent", &self.parent)
            .field("limit", &self.limit)
            .field("stop", &self.stop.as_ref().map(Stop::is_stopped))
            .field("propagate_panics", &self.propagate_panics)
            .field("manual_settlement", &self.manual)
            .finish_non_exhaustive()
    }
}

impl<S: Source> Consumer<S> {
    /// Consume `source` as service `telemetry`: redeliver failed messages, adopt the
    /// producer's span as parent, no limit, no stop signal.
    pub fn from_source(source: S, telemetry: Telemetry) -> Self {
        Consumer {
            source,
            on_failure: Box::new(OnFailure::<S::Action>::redeliver()),
            parent: ParentPolicy::Child,
            limit: None,
            stop: None,
            propagate_panics: false,
            manual: false,
            metrics: telemetry
                .inner()
                .metrics
                .clone()
                .map(|m| (m, ConsumeCache::default())),
            telemetry,
        }
    }

    /// Return after `messages` deliveries have been settled (a redelivered message counts
    /// again). Applies to each [`run`](Self::run).
    pub fn limit(mut self, messages: u64) -> Self {
        self.limit = Some(messages);
        self
    }

    /// Return when `stop` fires: the message in hand is finished and settled first.
    pub fn stop_on(mut self, stop: &Stop) -> Self {
        self.stop = Some(stop.clone());
        self
    }

    /// What to do with a message whose handler failed or panicked: an [`OnFailure`], or
    /// any `Fn(&Failure<'_>) -> Decision<Action>` closure.
    pub fn on_failure(mut self, policy: impl FailurePolicy<S::Action>) -> Self {
        self.on_failure = Box::new(policy);
        self
    }

    /// Child of the producer's span (the default), or a new trace linked to it
    /// ([`ParentPolicy::Link`], for trust boundaries).
    pub fn parent_policy(mut self, policy: ParentPolicy) -> Self {
        self.parent = policy;
        self
    }

    /// Resume a handler's panic instead of going on: the panic is still recorded on the
    /// span and the message given back to the broker (as [`Decision::Stop`] does), then
    /// the loop unwinds with it.
    pub fn propagate_panics(mut self) -> Self {
        self.propagate_panics = true;
        self
    }

    /// Settle nothing: the handler settles each message itself, or the broker needs no
    /// settlement (a `no_ack` consumer, JetStream's `AckPolicy::None`, Kafka auto-commit).
    /// Spans say `tracehop.settlement=none`.
    pub fn manual_settlement(mut self) -> Self {
        self.manual = true;
        self
    }

    /// The source (the wrapped client consumer).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The source, mutably.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The source, taken out of the consumer.
    pub fn into_source(self) -> S {
        self.source
    }

    /// Close the consumer and wait until it has: a Kafka consumer leaves its group (on
    /// the blocking pool, not the async worker); the others are dropped. Close a consumer
    /// before what it talks to goes away (an in-process `MockCluster`, a runtime that is
    /// shutting down).
    pub async fn close(self)
    where
        S: 'static,
    {
        self.source.close().await;
    }

    /// The service's telemetry handle.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The parent policy the process spans use.
    pub fn parent(&self) -> ParentPolicy {
        self.parent
    }

    /// Run `handler` on every delivery until the source ends, the [limit](Self::limit)
    /// is reached, the [stop signal](Self::stop_on) fires, the failure policy says
    /// [`Decision::Stop`], or the consumer fails.
    ///
    /// The handler gets the message as the client gives it and runs with the message's
    /// process span as the current context. Errors the consumer reports between messages
    /// that it recovers from are logged and counted in
    /// [`Summary::source_errors`]; a fatal one ends the loop with
    /// [`ConsumeError::Source`].
    pub async fn run<F, Fut, T, E>(&mut self, mut handler: F) -> Result<Summary, ConsumeError<E>>
    where
        F: FnMut(S::Message) -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        E: fmt::Display + Send,
    {
        watch::beating(async move {
            self.source.prepare(self.limit).await;
            let mut summary = Summary::default();
            let mut stop = self.stop.clone();
            loop {
                if self.limit.is_some_and(|n| summary.messages >= n) {
                    break;
                }
                let item = receive!(self, stop);
                match item {
                    None => break,
                    Some(Err(e)) => self.source_error(e, &mut summary)?,
                    Some(Ok(delivery)) => self.handle(delivery, &mut handler, &mut summary).await?,
                }
            }
            Ok(summary)
        })
        .await
    }

    /// If the stop signal has fired: forget it and drain the source (`Some(true)`: go on
    /// reading what it still holds) or end (`Some(false)`). `None` while it has not fired.
    async fn after_stop(&mut self, stop: &mut Option<Stop>) -> Option<bool> {
        if !stop.as_ref().is_some_and(Stop::is_stopped) {
            return None;
        }
        *stop = None;
        Some(self.source.drain().await)
    }

    /// The source's next item, or `None` if `stop` fires first.
    async fn next_unless_stopped(
        &self,
        stop: Option<&Stop>,
    ) -> Option<Option<Result<S::Delivery<'_>, SourceError>>> {
        match stop {
            Some(signal) => tokio::select! {
                biased;
                () = signal.stopped() => None,
                item = self.source.next() => Some(item),
            },
            None => Some(self.source.next().await),
        }
    }

    /// An error from the source: fatal ones end the loop, the rest are logged and counted.
    fn source_error<E>(
        &self,
        e: SourceError,
        summary: &mut Summary,
    ) -> Result<(), ConsumeError<E>> {
        if e.fatal {
            return Err(ConsumeError::source(e));
        }
        tracing::warn!(error = %e, service = self.telemetry.service_name(), "consumer error");
        summary.source_errors += 1;
        Ok(())
    }

    /// The process span of one run on `delivery` (described only if it is recorded).
    fn open_span(
        &self,
        delivery: &S::Delivery<'_>,
        attempt: u32,
        extracted: &Extracted,
        batch: Option<&opentelemetry::Context>,
    ) -> ProcessSpan {
        ProcessSpan::start_with(
            self.telemetry.inner(),
            self.parent,
            extracted,
            batch,
            Some(delivery.headers()),
            || {
                delivery
                    .describe()
                    .parent_policy(self.parent)
                    .attempt(attempt)
            },
        )
    }

    /// The first delivery attempt of `delivery`: the attempt its producer wrote (a
    /// forwarded retry), else 1, plus the broker's redeliveries.
    fn first_attempt(delivery: &S::Delivery<'_>, extracted: &Extracted) -> u32 {
        extracted
            .attempt
            .unwrap_or(1)
            .saturating_add(delivery.redeliveries())
    }

    async fn handle<F, Fut, T, E>(
        &self,
        mut delivery: S::Delivery<'_>,
        handler: &mut F,
        summary: &mut Summary,
    ) -> Result<(), ConsumeError<E>>
    where
        F: FnMut(S::Message) -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        E: fmt::Display + Send,
    {
        let extracted = self
            .telemetry
            .inner()
            .propagation
            .extract(delivery.headers());
        let traced = self.telemetry.traces(
            delivery.system(),
            || delivery.destination(),
            delivery.headers(),
        );
        let measure = self
            .metrics
            .as_ref()
            .filter(|_| traced)
            .map(|(metrics, cache)| {
                let bound = self.bound(metrics, cache, &delivery);
                bound.received(&extracted, delivery.enqueued_at());
                bound
            });
        let measure = measure.as_deref();
        let first = Self::first_attempt(&delivery, &extracted);
        let keep = self.on_failure.may_retry_in_place();
        let mut runs: u32 = 0;
        loop {
            runs += 1;
            let attempt = first.saturating_add(runs - 1);
            let run = measure.map(|m| {
                m.run(attempt);
                Run {
                    bound: m,
                    started: Instant::now(),
                    error_type: None,
                }
            });
            let span = if traced {
                self.open_span(&delivery, attempt, &extracted, None)
            } else {
                ProcessSpan::untraced()
            };
            let Some(message) = delivery.message(keep) else {
                // A policy that said it never retries in place asked for a retry: the
                // message was handed over, so give it back to the broker instead.
                tracing::warn!(
                    position = %delivery.position(),
                    "retry in place asked for by a policy whose may_retry_in_place() is false; redelivering"
                );
                summary.failed += 1;
                return self
                    .settle(
                        &mut delivery,
                        span,
                        Settlement::Redeliver,
                        attempt,
                        summary,
                        run,
                    )
                    .await;
            };
            let result = run_guarded(span.context(), || handler(message)).await;
            record(&span, &result);
            let failure = match result {
                Ok(_) => {
                    summary.succeeded += 1;
                    return self
                        .settle(&mut delivery, span, Settlement::Done, attempt, summary, run)
                        .await;
                }
                Err(failure) => failure,
            };
            let run = run.map(|r| r.failed(failure.error_type()));
            let decision = self.on_failure.decide(&Failure {
                destination: delivery.destination(),
                attempt,
                runs,
                messages: 1,
                error: &failure,
                panicked: failure.panicked(),
            });
            if let Decision::Retry { after } = decision {
                // Nothing settled: the message runs again in place.
                span.set_attribute(attr::SETTLEMENT, RETRY_IN_PLACE);
                span.end();
                if let Some(run) = run {
                    run.bound
                        .processed(run.started.elapsed(), run.error_type.as_deref());
                }
                summary.retries += 1;
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                continue;
            }
            summary.failed += 1;
            summary.panicked += u64::from(failure.panicked());
            let (settlement, stop) = self.settlement(&decision, failure.panicked());
            self.settle(&mut delivery, span, settlement, attempt, summary, run)
                .await?;
            if !stop {
                return Ok(());
            }
            return Err(self.stop_with(failure, delivery.position()));
        }
    }

    /// How to settle a failed delivery the policy decided on (never a retry), and whether
    /// the loop then stops.
    fn settlement<'d>(
        &self,
        decision: &'d Decision<S::Action>,
        panicked: bool,
    ) -> (Settlement<'d, S::Action>, bool) {
        let stop = self.propagate_panics && panicked || matches!(decision, Decision::Stop);
        let settlement = match decision {
            _ if stop => Settlement::Redeliver,
            Decision::Skip => Settlement::Done,
            Decision::Settle(action) => Settlement::Action(action),
            _ => Settlement::Redeliver,
        };
        (settlement, stop)
    }

    /// The loop ends with `failure`: return it, or resume its panic when panics
    /// propagate.
    fn stop_with<E>(&self, failure: HandlerFailure<E>, position: String) -> ConsumeError<E> {
        match failure {
            HandlerFailure::Panic(panic) if self.propagate_panics => {
                std::panic::resume_unwind(panic.payload)
            }
            failure => failure.into_error(position),
        }
    }

    /// Settle `delivery` (or nothing, under manual settlement), record it on `span`, end
    /// the span and count the message.
    async fn settle<E>(
        &self,
        delivery: &mut S::Delivery<'_>,
        span: ProcessSpan,
        settlement: Settlement<'_, S::Action>,
        attempt: u32,
        summary: &mut Summary,
        run: Option<Run<'_>>,
    ) -> Result<(), ConsumeError<E>> {
        let settlement = if self.manual {
            Settlement::Nothing
        } else {
            settlement
        };
        let settling = run.as_ref().map(|_| Instant::now());
        let settled = delivery.settle(settlement, span.context(), attempt).await;
        if let (Some(run), Some(settling)) = (&run, settling) {
            let forwarded = matches!(settlement, Settlement::Action(_));
            run.settled(&settled, settling.elapsed(), forwarded);
        }
        let fatal = record_settlement(&span, settled, summary, || delivery.position());
        span.end();
        if let Some(run) = run {
            run.bound
                .processed(run.started.elapsed(), run.error_type.as_deref());
        }
        match fatal {
            Some(e) => Err(ConsumeError::settle(e, delivery.position())),
            None => {
                summary.messages += 1;
                Ok(())
            }
        }
    }
}

/// Which delivery of its message a delivery is, counting from 1: the attempt its producer
/// wrote in `tracehop-attempt` (a forwarded retry), else 1, plus the broker's
/// `redeliveries` of it.
#[cfg(any(feature = "kafka", feature = "nats", feature = "amqp"))]
pub(crate) fn delivery_attempt(
    headers: &dyn crate::propagation::ReadCarrier,
    redeliveries: u32,
) -> u32 {
    crate::propagation::attempt(headers)
        .unwrap_or(1)
        .saturating_add(redeliveries)
}
