//! Per-message propagation cost: inject + extract of W3C trace context (and a small
//! baggage) through tracehop, against the bare OpenTelemetry propagator over a `HashMap`.
//!
//! `cargo bench --bench propagation`

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracehop::Propagation;

mod common;
use common::context;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("inject+extract/hashmap");
    for baggage in [false, true] {
        let cx = context(baggage);
        let label = if baggage { "w3c+baggage" } else { "w3c" };

        let bare: TextMapCompositePropagator = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        group.bench_function(format!("otel-baseline/{label}"), |b| {
            b.iter(|| {
                let mut h: HashMap<String, String> = HashMap::with_capacity(4);
                bare.inject_context(black_box(&cx), &mut h);
                black_box(bare.extract(&h))
            })
        });

        let tracehop = Propagation::default();
        group.bench_function(format!("tracehop/{label}"), |b| {
            b.iter(|| {
                let mut h: HashMap<String, String> = HashMap::with_capacity(4);
                tracehop.inject(black_box(&cx), &mut h);
                black_box(tracehop.extract(&h))
            })
        });

        let sdk_codec = Propagation::sdk_w3c();
        group.bench_function(format!("tracehop-sdk-codec/{label}"), |b| {
            b.iter(|| {
                let mut h: HashMap<String, String> = HashMap::with_capacity(4);
                sdk_codec.inject(black_box(&cx), &mut h);
                black_box(sdk_codec.extract(&h))
            })
        });

        let no_sent_at = Propagation::default().write_sent_at(false);
        group.bench_function(format!("tracehop-no-sent-at/{label}"), |b| {
            b.iter(|| {
                let mut h: HashMap<String, String> = HashMap::with_capacity(4);
                no_sent_at.inject(black_box(&cx), &mut h);
                black_box(no_sent_at.extract(&h))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
