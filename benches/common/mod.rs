//! What the micro benchmarks share: the context they propagate.

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

/// A sampled remote span context, with the three-member baggage if `baggage`.
pub fn context(baggage: bool) -> Context {
    let cx = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        SpanId::from(0x00f0_67aa_0ba9_02b7),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ));
    if baggage {
        cx.with_baggage(vec![
            KeyValue::new("run_id", "run-7a31"),
            KeyValue::new("tenant", "acme"),
            KeyValue::new("user_query", "find-vendor-invoices"),
        ])
    } else {
        cx
    }
}
