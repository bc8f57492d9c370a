//! Send spans: the producer side of a hop.

use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue, Value};

use super::attributes as attr;
use super::process::record_error;
use super::sampling::Early;
use super::{MessageRef, Operation, Outgoing};
use crate::journal::SpanStart;
use crate::metrics::SendBound;
use crate::propagation::WriteCarrier;
use crate::telemetry::Inner;

/// The span of one message being sent (kind PRODUCER, named `send <destination>`).
///
/// Its context has already been written into the message's headers. End it when the
/// broker has accepted the message ([`end`](Self::end)) or refused it
/// ([`end_with_error`](Self::end_with_error)). Dropping it ends it with no status.
#[must_use = "a send span records the outcome of the send only when it is ended"]
pub struct SendSpan {
    cx: Context,
    /// Whether the span is recorded (sampled); nothing is set on one that is not.
    recording: bool,
    /// The send's metrics, when they are on.
    metric: Option<SendMetric>,
}

/// A send's bound instruments and when it started.
struct SendMetric {
    bound: Arc<SendBound>,
    start: Instant,
}

/// What the core knows of an outgoing message before it is described: enough to apply
/// the filter hook and find the destination's metrics.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) system: &'static str,
    pub(crate) destination: &'a str,
    /// The user's headers, for header capture and hooks, when the adapter can read them.
    pub(crate) headers: Option<&'a dyn crate::propagation::ReadCarrier>,
}

/// Describe the message now (`describe` is called once), named by `template` if a hook
/// gave one.
fn describe_now<'a, F: FnOnce() -> Outgoing<'a>>(
    describe: &mut Option<F>,
    template: &Option<String>,
) -> Outgoing<'a> {
    // Called at most twice by `start_with`, the second time only if the first did not.
    let describe = describe.take().expect("a message is described once");
    let msg = describe();
    match template {
        Some(t) => msg.destination_template(t.clone()),
        None => msg,
    }
}

impl fmt::Debug for SendSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendSpan")
            .field("span_context", self.cx.span().span_context())
            .finish()
    }
}

impl SendSpan {
    pub(crate) fn start(
        inner: &Inner,
        msg: Outgoing<'_>,
        parent: &Context,
        carrier: &mut dyn WriteCarrier,
    ) -> SendSpan {
        let target = Target {
            system: msg.system,
            destination: msg.destination,
            headers: None,
        };
        SendSpan::start_with(inner, parent, carrier, false, target, || msg)
    }

    /// [`start`](Self::start), with the message described by `describe` only if the span
    /// is recorded (or, once per destination, to bind its metrics): an unsampled send
    /// builds no name, attributes or SDK span. `stamped`: the broker or client timestamps
    /// the message (no `tracehop-sent-at` is written).
    pub(crate) fn start_with<'a>(
        inner: &Inner,
        parent: &Context,
        carrier: &mut dyn WriteCarrier,
        stamped: bool,
        target: Target<'_>,
        describe: impl FnOnce() -> Outgoing<'a>,
    ) -> SendSpan {
        let hooks = &inner.hooks;
        if !hooks.keeps(|| MessageRef {
            system: target.system,
            destination: target.destination,
            operation: Operation::Send,
            headers: target.headers,
        }) {
            return SendSpan {
                cx: parent.clone(),
                recording: false,
                metric: None,
            };
        }
        let template = hooks
            .template
            .as_ref()
            .and_then(|t| t(target.system, target.destination));
        let mut describe = Some(describe);
        let mut described: Option<Outgoing<'a>> = None;
        let metric = inner.metrics.as_ref().map(|metrics| {
            let key = template.as_deref().unwrap_or(target.destination);
            let bound = match metrics.cached_send(target.system, key) {
                Some(bound) => bound,
                None => metrics.bind_send(
                    key,
                    described.insert(describe_now(&mut describe, &template)),
                ),
            };
            SendMetric {
                bound,
                start: Instant::now(),
            }
        });
        let (root_trace, decided) = match super::sampling::decide(
            inner,
            &super::sampling::Parent::Context(parent),
            SpanKind::Producer,
            None,
        ) {
            Early::Record {
                root_trace,
                decided,
            } => (root_trace, decided),
            Early::Dropped(cx) => {
                let now = inner
                    .propagation
                    .writes_sent_at(stamped)
                    .then(SystemTime::now);
                inner.propagation.inject_sent_at(&cx, carrier, now, stamped);
                return SendSpan {
                    cx,
                    recording: false,
                    metric,
                };
            }
        };
        let mut msg = match described {
            Some(msg) => msg,
            None => describe_now(&mut describe, &template),
        };
        if let Some(enrich) = &hooks.enrich {
            let view = MessageRef {
                system: msg.system,
                destination: msg.destination,
                operation: Operation::Send,
                headers: target.headers,
            };
            enrich(&view, &mut msg.attributes);
        }
        if let (Some(capture), Some(headers)) = (&inner.capture, target.headers) {
            capture.capture(headers, &mut msg.attributes);
        }
        let attributes = msg.span_attributes(attr::operation_type::SEND);
        let named = msg.template.as_deref().unwrap_or(msg.destination);
        // One clock read for the span's start and the `tracehop-sent-at` header.
        let now = SystemTime::now();
        let start = SpanStart {
            name: super::recorded::span_name(
                inner,
                msg.operation_name,
                super::recorded::Named::Text(named),
                msg.temporary,
            ),
            kind: SpanKind::Producer,
            start_time: now,
            attributes,
            links: Vec::new(),
        };
        let (cx, recording) = super::recorded::start(inner, start, parent, root_trace, decided);
        inner
            .propagation
            .inject_sent_at(&cx, carrier, Some(now), stamped);
        if let (true, Some(capture), Some(written)) =
            (recording, &inner.capture, carrier.readable())
        {
            // The context headers just written, if named.
            let mut context = Vec::new();
            capture.capture(written, &mut context);
            cx.span().set_attributes(context);
        }
        SendSpan {
            cx,
            recording,
            metric,
        }
    }

    /// Whether the span is recorded (sampled): attributes set on a span that is not are
    /// dropped, so callers can skip building them.
    #[cfg_attr(not(any(feature = "kafka", feature = "nats")), allow(dead_code))]
    pub(crate) fn is_recording(&self) -> bool {
        self.recording
    }

    /// The context of this span: its span context and the baggage that was sent.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The span context the message carries (trace id and this span's id).
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// Add an attribute learnt after the send started (partition, offset, sequence).
    pub fn set_attribute(&self, key: &'static str, value: impl Into<Value>) {
        if self.recording {
            self.cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// End the span: the broker accepted the message.
    pub fn end(self) {
        if let Some(m) = &self.metric {
            m.bound.ok(m.start.elapsed());
        }
        if self.recording {
            let span = self.cx.span();
            span.set_status(Status::Ok);
            span.end();
        }
    }

    /// End the span as failed. `error_type` is a low-cardinality class (`error.type`), the
    /// error's text becomes the status description and an `exception` event.
    pub fn end_with_error(self, error_type: &str, error: &dyn fmt::Display) {
        if let Some(m) = &self.metric {
            m.bound.failed(error_type, m.start.elapsed());
        }
        if self.recording {
            let span = self.cx.span();
            record_error(&span, error_type, &error.to_string());
            span.end();
        }
    }
}

/// What a traced send returns once the broker has the message: the client's own result
/// (`value`, also reachable through `Deref`) and the span context the message carries,
/// so the caller can log or return the trace id of what it just sent.
#[derive(Debug, Clone)]
pub struct Sent<T> {
    value: T,
    span: SpanContext,
}

impl<T> Sent<T> {
    /// The result `value` of sending a message whose send span has context `span`.
    pub fn new(value: T, span: SpanContext) -> Sent<T> {
        Sent { value, span }
    }

    /// The span context of the message's send span: the message's trace id and parent
    /// span id, as its consumers see them.
    pub fn span_context(&self) -> &SpanContext {
        &self.span
    }

    /// The trace the message belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.span.trace_id()
    }

    /// The client's result.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> std::ops::Deref for Sent<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}
