//! Starting a span the sampler may record: through the SDK's tracer, or straight into the
//! journal when it is the handle's only span processor (see `journal::direct`).

use opentelemetry::trace::{Span as _, TraceContextExt as _, TraceId, Tracer as _};
use opentelemetry::{Context, StringValue};

use crate::journal::{SpanName, SpanStart};
use crate::telemetry::{with_trace_id, Inner};

/// What a span is named after: a destination's (or template's) text, or a shared value
/// holding it (the name a thread keeps for it is then found by the value's address; see
/// `names::span_of`).
#[derive(Clone, Copy)]
pub(crate) enum Named<'a> {
    Text(&'a str),
    Value(&'a StringValue),
}

/// The name of a span starting as `operation` on `destination` (see
/// [`span_name`](super::span_name)): shared if the journal will record it, made for the
/// SDK otherwise.
pub(crate) fn span_name(
    inner: &Inner,
    operation: &'static str,
    destination: Named<'_>,
    temporary: bool,
) -> SpanName {
    if inner.direct.is_none() {
        let text = match destination {
            Named::Text(text) => text,
            Named::Value(value) => value.as_str(),
        };
        return SpanName::Owned(super::span_name(operation, text, temporary).into());
    }
    let (name, clean) = match destination {
        Named::Text(text) => super::names::span(operation, text, temporary),
        Named::Value(value) => super::names::span_of(operation, value, temporary),
    };
    SpanName::Shared(name, clean)
}

/// Start `span` as a child of `parent` (a root joins `root_trace` if given) and return
/// `parent` with it, and whether it is recorded. `decided`: the sampler already chose to
/// record it from the parent alone.
pub(crate) fn start(
    inner: &Inner,
    span: SpanStart,
    parent: &Context,
    root_trace: Option<TraceId>,
    decided: bool,
) -> (Context, bool) {
    if let Some(direct) = inner.direct.as_ref() {
        if !parent.is_telemetry_suppressed() {
            return direct.start(span, parent, root_trace, decided);
        }
    }
    let SpanStart {
        name,
        kind,
        start_time,
        attributes,
        links,
    } = span;
    let mut builder = inner
        .tracer
        .span_builder(name.into_cow())
        .with_kind(kind)
        .with_start_time(start_time)
        .with_attributes(attributes);
    if !links.is_empty() {
        builder = builder.with_links(links);
    }
    let span = with_trace_id(root_trace, || {
        builder.start_with_context(&inner.tracer, parent)
    });
    let recording = span.is_recording();
    (parent.with_span(span), recording)
}
