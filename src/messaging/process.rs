//! Process spans: the consumer side of a hop, and running a handler inside one.

use std::fmt;
use std::future::Future;
use std::time::SystemTime;

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Link, SpanKind, SpanRef, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, StringValue, Value};

use super::attributes as attr;
use super::Incoming;
use crate::propagation::{ContextSource, Extracted};
use crate::telemetry::{with_trace_id, Inner};

/// What a handler's run came to, as recorded on its process span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// The handler succeeded.
    Ok,
    /// The handler failed.
    Error {
        /// `error.type`: the error's type name.
        error_type: String,
        /// The error's text.
        message: String,
    },
}

/// The span of one message being processed (kind CONSUMER, named `process <destination>`).
///
/// Run the handler with [`run`](Self::run): the span is then the current context for
/// everything the handler does, including `tracing` spans and further sends. Then settle
/// the message (ack, commit, forward to a retry destination — a send made now is a child
/// of this span) and [`end`](Self::end) it.
#[must_use = "a process span should run the handler and be ended"]
pub struct ProcessSpan {
    cx: Context,
}

impl fmt::Debug for ProcessSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessSpan")
            .field("span_context", self.cx.span().span_context())
            .finish()
    }
}

impl ProcessSpan {
    /// Open a process span for a message whose context has been extracted.
    ///
    /// `parent_override` makes it a child of that context instead (a batch span), with a
    /// link to the message's own context.
    pub(crate) fn start(
        inner: &Inner,
        msg: Incoming<'_>,
        extracted: &Extracted,
        parent_override: Option<&Context>,
    ) -> ProcessSpan {
        let now = SystemTime::now();
        let mut attributes = msg.attributes;
        let destination = match msg.destination_value {
            Some(value) => value,
            None => msg.destination.to_owned().into(),
        };
        // The core's attributes below, at most 8.
        attributes.reserve(8);
        attributes.extend(super::common_attributes(
            msg.system,
            destination,
            attr::operation_type::PROCESS,
            msg.operation_name,
        ));
        if let Some(why) = extracted.rejected {
            attributes.push(KeyValue::new(attr::CONTEXT_REJECTED, why.as_str()));
        } else if extracted.source == ContextSource::None {
            attributes.push(KeyValue::new(attr::CONTEXT_MISSING, true));
        }
        match extracted.discarded.as_slice() {
            [] => {}
            [why] => attributes.push(KeyValue::new(attr::CONTEXT_DISCARDED, why.as_str())),
            several => attributes.push(KeyValue::new(
                attr::CONTEXT_DISCARDED,
                several
                    .iter()
                    .map(|why| why.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
        if let Some(sent) = extracted.sent_at.or(msg.enqueued_at) {
            let waited = now.duration_since(sent).unwrap_or_default();
            attributes.push(KeyValue::new(
                attr::QUEUE_TIME_MS,
                crate::time::millis_f64(waited),
            ));
        }

        let remote = extracted.context.span().span_context().clone();
        let link_to_message = parent_override.is_some() || msg.policy == super::ParentPolicy::Link;
        let mut links = Vec::new();
        if link_to_message && remote.is_valid() {
            links.push(Link::with_context(remote.clone()));
            if parent_override.is_none() {
                attributes.push(KeyValue::new(attr::CONTEXT_LINKED, true));
            }
        }

        // The parent: the batch span, a fresh root (link mode), or the message's context.
        // The message's baggage comes along except across a trust boundary (link mode).
        let baggage = extracted.context.baggage();
        let with_baggage = |cx: Context| {
            if baggage.is_empty() {
                return cx;
            }
            cx.with_baggage(
                baggage
                    .iter()
                    .map(|(k, (v, m))| (k.clone(), (v.clone(), m.clone())))
                    .collect::<opentelemetry::baggage::Baggage>(),
            )
        };
        let parent = match (parent_override, msg.policy) {
            (Some(batch), _) => with_baggage(batch.clone()),
            (None, super::ParentPolicy::Link) => Context::new(),
            (None, super::ParentPolicy::Child) if remote.is_valid() => extracted.context.clone(),
            (None, super::ParentPolicy::Child) => with_baggage(Context::new()),
        };

        let builder = inner
            .tracer
            .span_builder(super::span_name(
                msg.operation_name,
                msg.template
                    .as_ref()
                    .map_or(msg.destination, StringValue::as_str),
                msg.temporary,
            ))
            .with_kind(SpanKind::Consumer)
            .with_start_time(now)
            .with_attributes(attributes)
            .with_links(links);
        let join = match (parent_override, msg.policy) {
            (None, super::ParentPolicy::Child) => extracted.join_trace,
            _ => None,
        };
        let span = with_trace_id(join, || builder.start_with_context(&inner.tracer, &parent));
        ProcessSpan {
            cx: parent.with_span(span),
        }
    }

    /// The context of this span (its span context and the message's baggage).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Add an attribute to the span.
    pub fn set_attribute(&self, key: &'static str, value: impl Into<Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// Run `handler` with this span as the current context and record its outcome.
    ///
    /// The span stays open, so the caller can still settle or forward the message inside
    /// it. Work the handler spawns keeps the context if it is spawned with
    /// [`FutureExt::with_current_context`](opentelemetry::context::FutureExt::with_current_context)
    /// (or inside a `tracing` span with `.in_current_span()`).
    pub async fn run<F, T, E>(&self, handler: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let result = handler.with_context(self.cx.clone()).await;
        self.record(&result);
        result
    }

    /// Run a synchronous closure with this span as the current context.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.cx.clone().attach();
        f()
    }

    /// Record a handler's result on the span and say what it came to.
    pub fn record<T, E: fmt::Display>(&self, result: &Result<T, E>) -> ProcessOutcome {
        let span = self.cx.span();
        match result {
            Ok(_) => {
                span.set_status(Status::Ok);
                ProcessOutcome::Ok
            }
            Err(e) => {
                let error_type = short_type_name::<E>();
                let message = e.to_string();
                record_error(&span, &error_type, &message);
                ProcessOutcome::Error {
                    error_type,
                    message,
                }
            }
        }
    }

    /// End the span.
    pub fn end(self) {
        self.cx.span().end();
    }
}

/// Mark a span as failed: status, `error.type` and an `exception` event.
pub(crate) fn record_error(span: &SpanRef<'_>, error_type: &str, message: &str) {
    span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()));
    span.add_event(
        "exception",
        vec![
            KeyValue::new(attr::EXCEPTION_TYPE, error_type.to_owned()),
            KeyValue::new(attr::EXCEPTION_MESSAGE, message.to_owned()),
        ],
    );
    span.set_status(Status::error(message.to_owned()));
}

/// The type name with every module path removed, generics kept (`my::HandlerError` ->
/// `HandlerError`, `Box<dyn core::error::Error + Send>` -> `Box<dyn Error + Send>`): a
/// stable, low-cardinality, readable `error.type`.
fn short_type_name<E>() -> String {
    strip_paths(std::any::type_name::<E>())
}

fn strip_paths(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    // Where the path segment being copied started in `out`; a `::` after it means it was
    // a module (or `{{closure}}`) segment, so it is dropped.
    let mut segment_start = 0;
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(segment_start);
        } else {
            out.push(c);
            if !(c.is_alphanumeric() || matches!(c, '_' | '{' | '}')) {
                segment_start = out.len();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{short_type_name, strip_paths};

    #[test]
    fn error_type_is_the_short_type_name() {
        struct HandlerError;
        assert_eq!(short_type_name::<HandlerError>(), "HandlerError");
        assert_eq!(short_type_name::<std::io::Error>(), "Error");
        assert_eq!(short_type_name::<String>(), "String");
        assert_eq!(
            strip_paths("chain::handler_error::{{closure}}::ToolTimeout"),
            "ToolTimeout"
        );
        assert_eq!(
            strip_paths("alloc::boxed::Box<dyn core::error::Error + core::marker::Send>"),
            "Box<dyn Error + Send>"
        );
        assert_eq!(
            short_type_name::<Result<std::io::Error, Vec<u8>>>(),
            "Result<Error, Vec<u8>>"
        );
        assert_eq!(
            short_type_name::<Box<dyn std::error::Error + Send + Sync>>(),
            "Box<dyn Error + Send + Sync>"
        );
    }
}
