//! Deciding, before anything is built for a span, that the sampler will not record it.
//!
//! A span that is not recorded still needs a span context (a fresh span id in the
//! parent's trace, not sampled), so that the message carries context and the next hop
//! keeps the trace. The SDK gives one only after the whole span was described: name,
//! attributes, links. For the samplers whose answer does not depend on any of that
//! (`AlwaysOff`, `TraceIdRatioBased`, and `ParentBased` below a parent), tracehop asks the
//! sampler itself first and, if it says drop, makes that span context without describing
//! the span at all. Any other sampler (a custom one may look at attributes; `ParentBased`
//! for a root asks its delegate) sees the whole span, through the SDK, as before.

use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt as _, TraceId};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample,
};

use crate::telemetry::Inner;

/// What the sampler said before the span was described.
pub(crate) enum Early {
    /// It drops the span: this is its context, a child of the parent.
    Dropped(Context),
    /// It may record the span: describe it and let the SDK decide, for a root in this
    /// trace (the one the sampler was asked about, so the SDK's decision is the same).
    Record(Option<TraceId>),
}

/// Ask the configured sampler about a span, a child of `parent`, before it is described.
/// `join` is the trace a root would join (the article's `x-trace-id`).
pub(crate) fn decide(
    inner: &Inner,
    parent: &Context,
    kind: SpanKind,
    join: Option<TraceId>,
) -> Early {
    let Some(sampler) = inner.sampler.as_ref() else {
        return Early::Record(join);
    };
    let (has_parent, parent_trace, flags) = {
        let span = parent.span();
        let sc = span.span_context();
        (sc.is_valid(), sc.trace_id(), sc.trace_flags())
    };
    let decides_alone = match sampler {
        Sampler::AlwaysOff | Sampler::TraceIdRatioBased(_) => true,
        Sampler::ParentBased(_) => has_parent,
        _ => false,
    };
    if !decides_alone {
        return Early::Record(join);
    }
    let ids = RandomIdGenerator::default();
    let trace_id = if has_parent {
        parent_trace
    } else {
        join.unwrap_or_else(|| ids.new_trace_id())
    };
    let result = sampler.should_sample(Some(parent), trace_id, "", &kind, &[], &[]);
    if !matches!(result.decision, SamplingDecision::Drop) {
        return Early::Record((!has_parent).then_some(trace_id));
    }
    let sc = SpanContext::new(
        trace_id,
        ids.new_span_id(),
        flags.with_sampled(false),
        false,
        result.trace_state,
    );
    Early::Dropped(parent.with_remote_span_context(sc))
}
