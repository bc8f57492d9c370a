//! Starting a span the sampler may record: through the SDK's tracer, or straight into the
//! journal when it is the handle's only span processor (see `journal::direct`).

use opentelemetry::trace::{Span as _, TraceContextExt as _, TraceId, Tracer as _};
use opentelemetry::{Context, StringValue};

use crate::journal::{SpanName, SpanStart};
use crate::telemetry::{with_trace_id, Inner};

/// The name of a span starting as `operation` on `destination` (see
/// [`span_name`](super::span_name)): shared if the journal will record it, made for the
/// SDK otherwise.
pub(crate) fn span_name(
    inner: &Inner,
    operation: &'static str,
    destination: &str,
    temporary: bool,
) -> SpanName {
    if inner.direct.is_some() {
        let (name, clean) = super::names::span(operation, destination, temporary);
        SpanName::Shared(name, clean)
    } else {
        SpanName::Owned(super::span_name(operation, destination, temporary).into())
    }
}

/// [`span_name`] of a destination held as a shared value (see `names::span_of`).
pub(crate) fn span_name_of(
    inner: &Inner,
    operation: &'static str,
    destination: &StringValue,
    temporary: bool,
) -> SpanName {
    if inner.direct.is_some() {
        let (name, clean) = super::names::span_of(operation, destination, temporary);
        SpanName::Shared(name, clean)
    } else {
        SpanName::Owned(super::span_name(operation, destination.as_str(), temporary).into())
    }
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
