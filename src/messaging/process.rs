//! Process spans: the consumer side of a hop, and running a handler inside one.

use std::fmt;
use std::future::Future;
use std::time::SystemTime;

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Link, SpanKind, SpanRef, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue, Value};

use super::attributes as attr;
use super::recorded::Named;
use super::{Incoming, MessageRef, Operation, ParentPolicy};
use crate::journal::SpanStart;
use crate::propagation::{ContextSource, Extracted, ReadCarrier};
use crate::telemetry::Inner;

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
    pub(crate) cx: Context,
    /// Whether the span is recorded; nothing is set on one that is not.
    pub(crate) recording: bool,
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
        let policy = msg.policy;
        ProcessSpan::start_with(inner, policy, extracted, parent_override, None, || msg)
    }

    /// [`start`](Self::start), with the message described by `describe` only if the span
    /// is recorded: an unsampled delivery builds no name, attributes, links or SDK span.
    /// `headers`: the delivery's, for header capture and the enrich hook.
    pub(crate) fn start_with<'a>(
        inner: &Inner,
        policy: ParentPolicy,
        extracted: &Extracted,
        parent_override: Option<&Context>,
        headers: Option<&dyn ReadCarrier>,
        describe: impl FnOnce() -> Incoming<'a>,
    ) -> ProcessSpan {
        let remote = extracted.span_context();
        // The parent: the batch span, a fresh root (link mode), or the message's context
        // (`None`: built from the extracted parts only if the span is recorded). The
        // message's baggage comes along except across a trust boundary (link mode).
        let chosen = match (parent_override, policy) {
            (Some(batch), _) => Some(with_baggage_of(extracted, batch.clone())),
            (None, ParentPolicy::Link) => Some(Context::new()),
            (None, ParentPolicy::Child) if remote.is_valid() => None,
            (None, ParentPolicy::Child) => Some(with_baggage_of(extracted, Context::new())),
        };
        let join = match (parent_override, policy) {
            (None, ParentPolicy::Child) => extracted.join_trace,
            _ => None,
        };
        let of = match &chosen {
            Some(parent) => super::sampling::Parent::Context(parent),
            None => super::sampling::Parent::Extracted(extracted),
        };
        let early = super::sampling::decide(inner, &of, SpanKind::Consumer, join);
        let (join, decided) = match early {
            super::sampling::Early::Record {
                root_trace,
                decided,
            } => (root_trace, decided),
            super::sampling::Early::Dropped(cx) => {
                return ProcessSpan {
                    cx,
                    recording: false,
                }
            }
        };
        let parent = chosen.unwrap_or_else(|| extracted.to_context());

        let mut msg = describe();
        if let Some(template) = inner.hooks.template.as_ref() {
            if let Some(t) = template(msg.system, msg.destination) {
                msg.set_template(t.into());
            }
        }
        if let Some(enrich) = &inner.hooks.enrich {
            let view = MessageRef {
                system: msg.system,
                destination: msg.destination,
                operation: Operation::Process,
                headers,
            };
            enrich(&view, &mut msg.attributes);
        }
        if let (Some(capture), Some(headers)) = (&inner.capture, headers) {
            capture.capture(headers, &mut msg.attributes);
        }
        let now = SystemTime::now();
        let mut attributes = msg.attributes;
        let destination = match msg.destination_value {
            Some(value) => value,
            None => super::names::value(msg.destination),
        };
        // Named after the template (found by its shared value's address among the names
        // a thread keeps), else the destination's text: an adapter's destination value
        // may be longer (RabbitMQ's `exchange:routing key:queue`).
        let named = match &msg.template {
            Some(template) => Named::Value(template),
            None => Named::Text(msg.destination),
        };
        let name = super::recorded::span_name(inner, msg.operation_name, named, msg.temporary);
        // The core's attributes below (5 or 6 as a rule, at most 9) go in the room the
        // description was made with: a `reserve` for the most would reallocate a
        // JetStream delivery's attributes on every message.
        super::push_common_attributes(
            &mut attributes,
            msg.system,
            destination,
            attr::operation_type::PROCESS,
            msg.operation_name,
        );
        if let Some(why) = extracted.rejected {
            attributes.push(KeyValue::new(attr::CONTEXT_REJECTED, why.as_str()));
        } else if extracted.source == ContextSource::None {
            attributes.push(KeyValue::new(attr::CONTEXT_MISSING, true));
        }
        if let Some(attempt) = msg.attempt {
            attributes.push(KeyValue::new(attr::DELIVERY_ATTEMPT, i64::from(attempt)));
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

        let link_to_message = parent_override.is_some() || policy == ParentPolicy::Link;
        let mut links = Vec::new();
        if link_to_message && remote.is_valid() {
            links.push(Link::with_context(remote.clone()));
            if parent_override.is_none() {
                attributes.push(KeyValue::new(attr::CONTEXT_LINKED, true));
            }
        }

        let start = SpanStart {
            name,
            kind: SpanKind::Consumer,
            start_time: now,
            attributes,
            links,
        };
        let (cx, recording) = super::recorded::start(inner, start, &parent, join, decided);
        ProcessSpan { cx, recording }
    }

    /// A span for a message the filter hook left untraced: nothing is recorded, and the
    /// handler runs in an empty context.
    pub(crate) fn untraced() -> ProcessSpan {
        ProcessSpan {
            cx: Context::new(),
            recording: false,
        }
    }

    /// The context of this span (its span context and the message's baggage).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Add an attribute to the span.
    pub fn set_attribute(&self, key: &'static str, value: impl Into<Value>) {
        if self.recording {
            self.cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Whether the span is recorded (sampled).
    pub fn is_recording(&self) -> bool {
        self.recording
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
        match result {
            Ok(_) => {
                if self.recording {
                    self.cx.span().set_status(Status::Ok);
                }
                ProcessOutcome::Ok
            }
            Err(e) => self.record_error(e),
        }
    }

    /// Record a handler's error: status error, `error.type` (the error's type name in
    /// snake case: `HandlerError` is `handler_error`), and an `exception` event.
    pub fn record_error<E: fmt::Display + ?Sized>(&self, error: &E) -> ProcessOutcome {
        let (error_type, message) = if self.recording {
            record_error_on(&self.cx.span(), error)
        } else {
            (error_type_name::<E>(), error.to_string())
        };
        ProcessOutcome::Error {
            error_type,
            message,
        }
    }

    /// Record a panic of the handler: status error, `error.type=panic`, and an `exception`
    /// event with the panic's message.
    pub(crate) fn record_panic(&self, message: &str) {
        if self.recording {
            record_error(&self.cx.span(), attr::PANIC, message);
        }
    }

    /// Add several attributes to the span.
    pub(crate) fn set_attributes(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        if self.recording {
            self.cx.span().set_attributes(attributes);
        }
    }

    /// End the span while it is shared (a batch's message spans).
    pub(crate) fn end_shared(&self) {
        if self.recording {
            self.cx.span().end();
        }
    }

    /// End the span.
    pub fn end(self) {
        if self.recording {
            self.cx.span().end();
        }
    }
}

/// `cx` with the baggage the message carried.
fn with_baggage_of(extracted: &Extracted, cx: Context) -> Context {
    let baggage = extracted.base().baggage();
    if baggage.is_empty() {
        return cx;
    }
    cx.with_baggage(
        baggage
            .iter()
            .map(|(k, (v, m))| (k.clone(), (v.clone(), m.clone())))
            .collect::<opentelemetry::baggage::Baggage>(),
    )
}

/// Mark a span as failed by `error`: its type name as `error.type`, its text as the
/// status and an `exception` event. Returns both.
pub(crate) fn record_error_on<E: fmt::Display + ?Sized>(
    span: &SpanRef<'_>,
    error: &E,
) -> (String, String) {
    let error_type = error_type_name::<E>();
    let message = error.to_string();
    record_error(span, &error_type, &message);
    (error_type, message)
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

/// `error.type` for a handler's error type: its name without module paths, in snake case
/// (`my::HandlerError` -> `handler_error`, `Box<dyn core::error::Error + Send>` ->
/// `box_dyn_error_send`), a type named `Error` with the module that names it
/// (`std::io::Error` -> `io_error`, `anyhow::Error` -> `anyhow_error`): stable,
/// low-cardinality, and in the style of the rest of tracehop's `error.type` values.
pub(crate) fn error_type_name<E: ?Sized>() -> String {
    snake_case(&strip_paths(std::any::type_name::<E>()))
}

/// `CamelCase` and punctuation to `snake_case`: a word boundary before an upper-case
/// letter that follows a lower-case letter or digit (or starts a word before a lower-case
/// one, `HTTPError` -> `http_error`), and one `_` for every run of other characters.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && i > 0 && !out.is_empty() && !out.ends_with('_') {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                if prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next_lower)
                {
                    out.push('_');
                }
            }
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// `full` (a type name) with each path cut to its last segment, except that a type named
/// just `Error` keeps the module that says which error it is (`std::io::error::Error` ->
/// `io_Error`, `serde_json::error::Error` -> `serde_json_Error`; `core::error::Error` stays
/// `Error`): a crate's `Error` is the common case, and `error` alone says nothing.
fn strip_paths(full: &str) -> String {
    let is_path = |c: char| c.is_alphanumeric() || matches!(c, '_' | '{' | '}' | ':');
    let mut out = String::with_capacity(full.len());
    let mut rest = full;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !is_path(c)).unwrap_or(rest.len());
        let (path, tail) = rest.split_at(end);
        // From the last segment back.
        let mut segments = path.rsplit("::");
        let last = segments.next().unwrap_or_default();
        if last == "Error" {
            let module = segments.find(|m| !matches!(*m, "" | "error" | "std" | "core" | "alloc"));
            if let Some(module) = module {
                out.push_str(module);
                out.push('_');
            }
        }
        out.push_str(last);
        let mut tail = tail.chars();
        if let Some(c) = tail.next() {
            out.push(c);
        }
        rest = tail.as_str();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{error_type_name, snake_case, strip_paths};

    /// A process span is named after its destination's text, not after a destination
    /// value an adapter gave with other text (RabbitMQ's `exchange:routing key:queue`),
    /// and after its template when it has one; the attribute keeps the value. Both on the
    /// journal's own path and through the SDK.
    #[test]
    fn process_spans_are_named_after_the_destination_or_the_template() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let capture = crate::testing::Capture::new();
        let buffer = Buffer::default();
        let direct = crate::Telemetry::builder("direct")
            .journal(crate::Journal::writer("memory", buffer.clone()))
            .build()
            .expect("telemetry");
        assert!(direct.inner().direct.is_some(), "the journal's own path");
        let headers: std::collections::HashMap<String, String> = Default::default();
        for telemetry in [direct.clone(), capture.service("sdk")] {
            let mut msg = crate::Incoming::new("rabbitmq", "tasks");
            msg.destination_value = Some("orders:created:tasks".into());
            telemetry.process_span(msg, &headers).end();
            let templated = crate::Incoming::new("nats", "jobs.eu.1").destination_template(
                opentelemetry::StringValue::from(Arc::<str>::from("jobs.*.*")),
            );
            telemetry.process_span(templated, &headers).end();
        }
        direct.shutdown().expect("journal written");
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let sdk = capture.records();
        assert_eq!((lines.len(), sdk.len()), (2, 2), "{text}");
        assert_eq!(lines[0]["operation_name"], "process tasks");
        assert_eq!(
            lines[0]["attributes"]["messaging.destination.name"],
            "orders:created:tasks"
        );
        assert_eq!(lines[1]["operation_name"], "process jobs.*.*");
        assert_eq!(sdk[0].operation_name.as_deref(), Some("process tasks"));
        assert_eq!(sdk[1].operation_name.as_deref(), Some("process jobs.*.*"));
    }

    #[test]
    fn error_type_is_the_short_type_name_in_snake_case() {
        struct HandlerError;
        assert_eq!(error_type_name::<HandlerError>(), "handler_error");
        assert_eq!(error_type_name::<std::io::Error>(), "io_error");
        assert_eq!(error_type_name::<serde_json::Error>(), "serde_json_error");
        assert_eq!(error_type_name::<dyn std::error::Error>(), "dyn_error");
        assert_eq!(error_type_name::<String>(), "string");
        assert_eq!(error_type_name::<&String>(), "string");
        assert_eq!(error_type_name::<str>(), "str");
        assert_eq!(
            strip_paths("chain::handler_error::{{closure}}::ToolTimeout"),
            "ToolTimeout"
        );
        assert_eq!(
            error_type_name::<Box<dyn std::error::Error + Send + Sync>>(),
            "box_dyn_error_send_sync"
        );
        assert_eq!(
            error_type_name::<Result<std::io::Error, Vec<u8>>>(),
            "result_io_error_vec_u8"
        );
        assert_eq!(snake_case("HTTPError"), "http_error");
        assert_eq!(snake_case("MessageTimedOut"), "message_timed_out");
        assert_eq!(snake_case("Io2Error"), "io2_error");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }
}
