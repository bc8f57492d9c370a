//! Deciding, before anything is built for a span, that the sampler will not record it.
//!
//! A span that is not recorded still needs a span context (a fresh span id in the
//! parent's trace, not sampled), so that the message carries context and the next hop
//! keeps the trace. The SDK gives one only after the whole span was described: name,
//! attributes, links. For the samplers whose answer does not depend on any of that
//! (`AlwaysOff`, `TraceIdRatioBased`, and `ParentBased` below a parent), tracehop decides
//! first (`AlwaysOff` and `ParentBased` from the parent's span context, as the SDK would;
//! `TraceIdRatioBased` by asking it) and, on a drop, makes that span context without
//! describing the span at all. A span to be recorded is described once and, when its
//! sampler's answer is known without it (`AlwaysOn`; `ParentBased` below a parent; the
//! default `ParentBased(AlwaysOn)` for a root), the journal does not ask again. Any other
//! sampler (a custom one may look at attributes; a user's `ParentBased` for a root asks
//! its hidden delegate) sees the whole span, through the SDK, as before.

use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt as _, TraceId};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample,
};

use crate::propagation::Extracted;
use crate::telemetry::Inner;

/// What the sampler said before the span was described.
pub(crate) enum Early {
    /// It drops the span: this is its context, a child of the parent.
    Dropped(Context),
    /// It may record the span: describe it and let the SDK decide, for a root in this
    /// trace (the one the sampler was asked about, so the SDK's decision is the same).
    Record {
        /// The trace a root joins.
        root_trace: Option<TraceId>,
        /// The sampler has already chosen to record the span, from its parent alone.
        decided: bool,
    },
}

/// The parent of a span that is being decided.
pub(crate) enum Parent<'a> {
    /// A context (the current one, a batch span's, a fresh root).
    Context(&'a Context),
    /// A message's extracted context: its parts are enough for a span that is dropped,
    /// so its context is built only if the sampler needs it.
    Extracted(&'a Extracted),
}

/// Ask the configured sampler about a span, a child of `parent`, before it is described.
/// `join` is the trace a root would join (the article's `x-trace-id`).
pub(crate) fn decide(
    inner: &Inner,
    parent: &Parent<'_>,
    kind: SpanKind,
    join: Option<TraceId>,
) -> Early {
    let Some(sampler) = inner.sampler.as_ref() else {
        return Early::Record {
            root_trace: join,
            decided: false,
        };
    };
    match parent {
        Parent::Context(cx) => {
            let span = cx.span();
            let below = Below {
                sampler,
                default_root: inner.default_sampler,
                parent: span.span_context(),
                active: cx.has_active_span(),
            };
            below.decide(cx, || cx, kind, join)
        }
        Parent::Extracted(message) => Below {
            sampler,
            default_root: inner.default_sampler,
            parent: message.span_context(),
            // The message's context holds the remote parent when it is valid (and whatever
            // span a custom propagator's context holds).
            active: message.span_context().is_valid() || message.base().has_active_span(),
        }
        .decide(message.base(), || message.context(), kind, join),
    }
}

/// A sampler asked about a span below `parent` (its span context; invalid: none).
struct Below<'a> {
    sampler: &'a Sampler,
    /// The sampler is the default `ParentBased(AlwaysOn)`, which records every root (see
    /// `Inner::default_sampler`).
    default_root: bool,
    parent: &'a SpanContext,
    /// The parent context holds a span, even one whose span context is not valid (a
    /// no-op span): the SDK's `ParentBased` then follows that span (not sampled: drop)
    /// instead of asking its root sampler, and `AlwaysOn` takes its trace state.
    active: bool,
}

impl Below<'_> {
    /// [`decide`] below the parent, the other entries of `entries` (baggage) coming along;
    /// `context` is the parent as one context.
    fn decide<'c>(
        &self,
        entries: &Context,
        context: impl FnOnce() -> &'c Context,
        kind: SpanKind,
        join: Option<TraceId>,
    ) -> Early {
        let Below {
            sampler,
            default_root,
            parent,
            active,
        } = *self;
        let has_parent = parent.is_valid();
        // A span that is not valid, in the context: left to the sampler (see `active`).
        let invalid_span = active && !has_parent;
        let decides_alone = match sampler {
            Sampler::AlwaysOff | Sampler::TraceIdRatioBased(_) => true,
            Sampler::AlwaysOn => !invalid_span,
            Sampler::ParentBased(_) => has_parent || (default_root && !invalid_span),
            _ => false,
        };
        if !decides_alone {
            return Early::Record {
                root_trace: join,
                decided: false,
            };
        }
        let ids = RandomIdGenerator::default();
        let trace_id = if has_parent {
            parent.trace_id()
        } else {
            join.unwrap_or_else(|| ids.new_trace_id())
        };
        // What the SDK's `should_sample` answers for these, from the parent's span context
        // alone (the trace state is always the parent's); the others are asked.
        let (dropped, trace_state) = match sampler {
            Sampler::AlwaysOn => (false, parent.trace_state().clone()),
            Sampler::AlwaysOff => (true, parent.trace_state().clone()),
            // A root, reached only when the root sampler records every span.
            Sampler::ParentBased(_) if !has_parent => (false, parent.trace_state().clone()),
            // Reached with a valid parent only: the parent's decision.
            Sampler::ParentBased(_) => (!parent.is_sampled(), parent.trace_state().clone()),
            _ => {
                let result = sampler.should_sample(Some(context()), trace_id, "", &kind, &[], &[]);
                (
                    matches!(result.decision, SamplingDecision::Drop),
                    result.trace_state,
                )
            }
        };
        if !dropped {
            return Early::Record {
                root_trace: (!has_parent).then_some(trace_id),
                decided: true,
            };
        }
        let sc = SpanContext::new(
            trace_id,
            ids.new_span_id(),
            parent.trace_flags().with_sampled(false),
            false,
            trace_state,
        );
        Early::Dropped(entries.with_remote_span_context(sc))
    }
}
