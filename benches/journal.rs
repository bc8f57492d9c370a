//! The journal's cost per span written: one finished span with a process span's shape
//! (kind, remote parent, ten messaging attributes), through a telemetry handle whose
//! journal writes to `io::sink()`, against the same span through a handle with no
//! exporter at all. The difference is what the journal adds to a span.
//!
//! ```text
//! cargo bench --bench journal
//! ```
//!
//! Wall time cannot see work done on another thread, so for the whole cost (the thread
//! that ends the span *and* any writer thread) run a fixed number of spans under
//! callgrind, once with the journal and once without, and divide the difference:
//!
//! ```text
//! TRACEHOP_BENCH_SPANS=100000 TRACEHOP_BENCH_JOURNAL=1 valgrind --tool=callgrind \
//!     target/release/deps/journal-<hash>
//! TRACEHOP_BENCH_SPANS=100000 TRACEHOP_BENCH_JOURNAL=0 valgrind --tool=callgrind \
//!     target/release/deps/journal-<hash>
//! ```

use std::hint::black_box;
use std::io;

use criterion::{criterion_group, Criterion};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracehop::{Journal, Telemetry};

/// The remote parent every span continues.
fn parent() -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        SpanId::from(0x00f0_67aa_0ba9_02b7),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// One span shaped like a Kafka process span, ended at once.
fn span(tracer: &SdkTracer, parent: &Context, n: i64) {
    let span = tracer
        .span_builder("process agent.tasks")
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", "agent.tasks".to_owned()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.partition.id", "3"),
            KeyValue::new("messaging.kafka.offset", n),
            KeyValue::new("messaging.kafka.message.key", "run-42".to_owned()),
            KeyValue::new("messaging.consumer.group.name", "agents"),
            KeyValue::new("messaging.message.body.size", 128_i64),
            KeyValue::new("tracehop.queue_time_ms", 1.25_f64),
        ])
        .start_with_context(tracer, parent);
    let cx = parent.with_span(span);
    cx.span().set_status(Status::Ok);
    cx.span().end();
}

fn journaled() -> Telemetry {
    Telemetry::builder("agent_runtime")
        .journal(Journal::writer("sink", io::sink()))
        .build()
        .expect("telemetry")
}

/// The floor: the same handle shape with a span processor that does nothing.
fn bare() -> SdkTracerProvider {
    SdkTracerProvider::builder().build()
}

fn bench(c: &mut Criterion) {
    let parent = parent();
    let mut group = c.benchmark_group("journal");
    let provider = bare();
    let tracer = provider.tracer("bench");
    group.bench_function("span/no-exporter", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            span(black_box(&tracer), &parent, n)
        })
    });
    let telemetry = journaled();
    let tracer = telemetry.provider().tracer("bench");
    group.bench_function("span/journal-to-sink", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            span(black_box(&tracer), &parent, n)
        })
    });
    group.finish();
    telemetry.shutdown().expect("journal shut down");
}

/// A fixed number of spans and nothing else, for callgrind (see the module docs).
fn fixed_run(spans: i64) {
    let parent = parent();
    let journal = std::env::var("TRACEHOP_BENCH_JOURNAL").map_or(true, |v| v != "0");
    if journal {
        let telemetry = journaled();
        let tracer = telemetry.provider().tracer("bench");
        for n in 0..spans {
            span(&tracer, &parent, n);
        }
        telemetry.shutdown().expect("journal shut down");
    } else {
        let provider = bare();
        let tracer = provider.tracer("bench");
        for n in 0..spans {
            span(&tracer, &parent, n);
        }
        provider.shutdown().expect("shut down");
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Some(spans) = std::env::var("TRACEHOP_BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        fixed_run(spans);
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
