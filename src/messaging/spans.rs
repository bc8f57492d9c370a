//! The span-opening methods of [`Telemetry`]: send, process, batch and reply spans.

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;

use super::send::Target;
use super::{BatchSpan, Incoming, Outgoing, ParentPolicy, ProcessSpan, SendSpan};
use crate::propagation::{ReadCarrier, WriteCarrier};
use crate::Telemetry;

impl Telemetry {
    /// Open a send span for `msg` as a child of the current context and write its context
    /// into `headers`.
    ///
    /// "Current" is OpenTelemetry's current context, which is also the current `tracing`
    /// span when a `tracing-opentelemetry` layer is installed: a send inside a user's
    /// `#[instrument]` span, or inside a handler run by a process span, continues that
    /// trace.
    pub fn send_span(&self, msg: Outgoing<'_>, headers: &mut dyn WriteCarrier) -> SendSpan {
        Context::map_current(|cx| SendSpan::start(self.inner(), msg, cx, headers))
    }

    /// Open a send span (a child of `parent`, else of the current context) whose message
    /// is described by `describe` only if the span is recorded, and write its context into
    /// `headers`: what the adapters use, so an unsampled send builds no description.
    /// `stamped`: the broker or client timestamps the message itself, so no
    /// `tracehop-sent-at` is written (queue time comes from that timestamp).
    #[cfg_attr(
        not(any(feature = "kafka", feature = "nats", feature = "amqp")),
        allow(dead_code)
    )]
    pub(crate) fn send_span_lazy<'a>(
        &self,
        parent: Option<&Context>,
        headers: &mut dyn WriteCarrier,
        stamped: bool,
        target: Target<'_>,
        describe: impl FnOnce() -> Outgoing<'a>,
    ) -> SendSpan {
        let inner = self.inner();
        match parent {
            Some(parent) => SendSpan::start_with(inner, parent, headers, stamped, target, describe),
            None => Context::map_current(|cx| {
                SendSpan::start_with(inner, cx, headers, stamped, target, describe)
            }),
        }
    }

    /// Open a send span with an explicit parent.
    pub fn send_span_with_parent(
        &self,
        msg: Outgoing<'_>,
        parent: &Context,
        headers: &mut dyn WriteCarrier,
    ) -> SendSpan {
        SendSpan::start(self.inner(), msg, parent, headers)
    }

    /// Read `headers` and open the process span for `msg`: a child of the producer's span
    /// (or a new root linked to it, under [`ParentPolicy::Link`](crate::ParentPolicy)). A
    /// message without usable context gets a new root that says why.
    pub fn process_span(&self, mut msg: Incoming<'_>, headers: &dyn ReadCarrier) -> ProcessSpan {
        if !self.traces(msg.system, || msg.destination, headers) {
            return ProcessSpan::untraced();
        }
        let extracted = self.inner().propagation.extract(headers);
        if msg.attempt.is_none() {
            msg.attempt = extracted.attempt;
        }
        let policy = msg.policy;
        ProcessSpan::start_with(
            self.inner(),
            policy,
            &extracted,
            None,
            Some(headers),
            || msg,
        )
    }

    /// Whether the filter hook (if any) keeps a delivery from `destination` traced. The
    /// destination is read only if there is a hook (rdkafka checks a topic name as UTF-8
    /// each time it is read).
    pub(crate) fn traces<'d>(
        &self,
        system: &'static str,
        destination: impl FnOnce() -> &'d str,
        headers: &dyn ReadCarrier,
    ) -> bool {
        self.inner().hooks.keeps(|| super::MessageRef {
            system,
            destination: destination(),
            operation: super::Operation::Process,
            headers: Some(headers),
        })
    }

    /// Open a process span for a message whose headers were already read.
    pub fn process_span_extracted(
        &self,
        mut msg: Incoming<'_>,
        extracted: &crate::Extracted,
    ) -> ProcessSpan {
        if msg.attempt.is_none() {
            msg.attempt = extracted.attempt;
        }
        ProcessSpan::start(self.inner(), msg, extracted, None)
    }

    /// Open one span for a batch of messages, linked to each message's context. `batch`
    /// describes the batch (destination, consumer group); one carrier per message.
    pub fn batch_span<'c>(
        &self,
        batch: Incoming<'_>,
        headers: impl IntoIterator<Item = &'c dyn ReadCarrier>,
    ) -> BatchSpan {
        BatchSpan::start(self, batch, headers)
    }

    /// Record the requester's span for a reply to its request, then end it: a child of
    /// the responder's reply span, or of the request span when the reply brings no usable
    /// context (the span says why). In link mode it stays under the request span (the
    /// requester's own) and links to the responder's span, without adopting the
    /// responder's baggage. Named after the operation alone: reply destinations are
    /// temporary.
    #[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
    pub(crate) fn record_reply(
        &self,
        msg: Incoming<'_>,
        headers: &dyn ReadCarrier,
        request: &Context,
    ) {
        let mut extracted = self.inner().propagation.extract(headers);
        let msg = msg.temporary();
        let span = if msg.policy == ParentPolicy::Link {
            let remote = extracted.span_context().clone();
            extracted.set_context(Context::new().with_remote_span_context(remote));
            extracted.join_trace = None;
            ProcessSpan::start(self.inner(), msg, &extracted, Some(request))
        } else {
            if !extracted.has_parent() {
                // Keep `source`/`rejected` as found, so the span still says why.
                extracted.set_context(request.clone());
                extracted.join_trace = None;
            }
            ProcessSpan::start(self.inner(), msg, &extracted, None)
        };
        span.record(&Ok::<(), std::convert::Infallible>(()));
        span.end();
    }
}
