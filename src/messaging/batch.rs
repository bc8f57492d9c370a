//! Batch processing: one span that links every message, and a child per message.

use std::fmt;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use super::attributes as attr;
use super::{Incoming, ProcessSpan};
use crate::propagation::{Extracted, ReadCarrier};
use crate::telemetry::Telemetry;

/// A span for processing several messages at once (kind CONSUMER, `process <destination>`,
/// `messaging.batch.message_count`), linked to the context of every message in the batch.
///
/// Each message then gets its own process span, a child of the batch span with a link to
/// the message's producer, from [`message_span`](Self::message_span).
#[must_use = "a batch span should be ended"]
pub struct BatchSpan {
    cx: Context,
    telemetry: Telemetry,
    messages: Vec<Extracted>,
}

impl fmt::Debug for BatchSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSpan")
            .field("span_context", self.cx.span().span_context())
            .field("messages", &self.messages.len())
            .finish()
    }
}

impl BatchSpan {
    pub(crate) fn start<'c>(
        telemetry: &Telemetry,
        batch: Incoming<'_>,
        carriers: impl IntoIterator<Item = &'c dyn ReadCarrier>,
    ) -> BatchSpan {
        let propagation = &telemetry.inner().propagation;
        let messages = carriers
            .into_iter()
            .map(|c| propagation.extract(c))
            .collect();
        BatchSpan::from_extracted(telemetry, batch, messages)
    }

    /// A batch span over messages whose headers were already read.
    pub(crate) fn from_extracted(
        telemetry: &Telemetry,
        batch: Incoming<'_>,
        messages: Vec<Extracted>,
    ) -> BatchSpan {
        let inner = telemetry.inner();
        let links: Vec<Link> = messages
            .iter()
            .map(|m| m.span_context().clone())
            .filter(|sc| sc.is_valid())
            .map(Link::with_context)
            .collect();
        let mut batch = batch;
        let mut attributes = batch.span_attributes(attr::operation_type::PROCESS);
        attributes.push(KeyValue::new(
            attr::MESSAGING_BATCH_MESSAGE_COUNT,
            messages.len() as i64,
        ));
        let span = inner
            .tracer
            .span_builder(super::span_name(
                batch.operation_name,
                batch.destination,
                false,
            ))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&inner.tracer, &Context::new());
        BatchSpan {
            cx: Context::new().with_span(span),
            telemetry: telemetry.clone(),
            messages,
        }
    }

    /// The context of the batch span.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// What was extracted from message `index` (in the order the carriers were given).
    pub fn extracted(&self, index: usize) -> Option<&Extracted> {
        self.messages.get(index)
    }

    /// The process span for message `index`: a child of the batch span, linked to the
    /// message's own context, carrying the message's baggage. `None` if `index` is out of
    /// range.
    pub fn message_span(&self, index: usize, msg: Incoming<'_>) -> Option<ProcessSpan> {
        let extracted = self.messages.get(index)?;
        Some(ProcessSpan::start(
            self.telemetry.inner(),
            msg,
            extracted,
            Some(&self.cx),
        ))
    }

    /// End the batch span, marking it failed if `failed` messages failed.
    pub fn end(self, failed: usize) {
        let span = self.cx.span();
        if failed > 0 {
            super::process::record_error(
                &span,
                "BatchFailure",
                &format!("{failed} of {} messages failed", self.messages.len()),
            );
        } else {
            span.set_status(opentelemetry::trace::Status::Ok);
        }
        span.end();
    }
}
