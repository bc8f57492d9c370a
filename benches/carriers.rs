//! Per-message propagation cost on each broker's own header type: inject + extract of W3C
//! trace context, alone and with a small baggage (3 members), through tracehop's default
//! [`Propagation`] (which also writes `tracehop-sent-at`), next to the bare OpenTelemetry
//! propagators over a `HashMap` as the baseline.
//!
//! ```text
//! cargo bench --bench carriers --features kafka,nats,amqp
//! ```
//!
//! Each carrier group has three functions per format: `inject+extract` (one message's
//! round trip: a fresh, empty header container, the context written into it, then read
//! back), and `inject` and `extract` alone to show where the time goes. Without a broker
//! feature its group is left out, so `cargo bench --no-run` builds with any features.
//!
//! Wall time on a shared machine moves with its load; instructions do not. For those,
//! run one carrier's round trip a fixed number of times under callgrind (and once with
//! `TRACEHOP_BENCH_ITERS=0` for the start-up cost to subtract):
//!
//! ```text
//! TRACEHOP_BENCH_ITERS=100000 TRACEHOP_BENCH_CARRIER=nats TRACEHOP_BENCH_BAGGAGE=1 \
//!     valgrind --tool=callgrind target/release/deps/carriers-<hash>
//! ```
//!
//! (`TRACEHOP_BENCH_CARRIER`: `hashmap`, `kafka`, `nats` or `amqp`.)

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, BenchmarkGroup, Criterion};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracehop::{Propagation, ReadCarrier, WriteCarrier};

mod common;
use common::context;

const FORMATS: [(&str, bool); 2] = [("w3c", false), ("w3c+baggage", true)];

/// The baseline: OpenTelemetry's own propagators over a `HashMap<String, String>`.
fn baseline(c: &mut Criterion) {
    let mut group = c.benchmark_group("carrier/hashmap-otel-baseline");
    let bare = TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]);
    for (label, baggage) in FORMATS {
        let cx = context(baggage);
        group.bench_function(format!("inject+extract/{label}"), |b| {
            b.iter(|| {
                let mut h: HashMap<String, String> = HashMap::new();
                bare.inject_context(black_box(&cx), &mut h);
                black_box(bare.extract(&h))
            })
        });
    }
    group.finish();
}

/// inject+extract, inject and extract of one carrier type through tracehop.
///
/// `fresh` makes the empty container a message starts with; `read` turns the written
/// container into what the consumer side reads.
fn carrier<W, R>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    fresh: impl Fn() -> W,
    read: impl Fn(W) -> R,
) where
    W: WriteCarrier,
    R: ReadCarrier,
{
    let propagation = Propagation::default();
    for (label, baggage) in FORMATS {
        let cx = context(baggage);
        group.bench_function(format!("inject+extract/{label}"), |b| {
            b.iter(|| {
                let mut headers = fresh();
                propagation.inject(black_box(&cx), &mut headers);
                let incoming = read(headers);
                black_box(propagation.extract(&incoming))
            })
        });
        group.bench_function(format!("inject/{label}"), |b| {
            b.iter(|| {
                let mut headers = fresh();
                propagation.inject(black_box(&cx), &mut headers);
                headers
            })
        });
        let mut written = fresh();
        propagation.inject(&cx, &mut written);
        let incoming = read(written);
        group.bench_function(format!("extract/{label}"), |b| {
            b.iter(|| black_box(propagation.extract(black_box(&incoming))))
        });
    }
}

fn hashmap(c: &mut Criterion) {
    let mut group = c.benchmark_group("carrier/hashmap");
    carrier(&mut group, HashMap::<String, String>::new, |h| h);
    group.finish();
}

#[cfg(feature = "kafka")]
fn kafka(c: &mut Criterion) {
    use rdkafka::message::OwnedHeaders;
    // A produced record starts without headers (rdkafka's `FutureRecord::headers` is
    // `None`); the wrapper starts from an empty `OwnedHeaders`, as here.
    let mut group = c.benchmark_group("carrier/rdkafka-OwnedHeaders");
    carrier(&mut group, OwnedHeaders::new, |h| h);
    group.finish();
}

#[cfg(not(feature = "kafka"))]
fn kafka(_: &mut Criterion) {}

#[cfg(feature = "nats")]
fn nats(c: &mut Criterion) {
    use async_nats::HeaderMap;
    // The consumer reads `Message::headers`, an `Option<HeaderMap>`.
    let mut group = c.benchmark_group("carrier/async-nats-HeaderMap");
    carrier(&mut group, HeaderMap::new, Some);
    group.finish();
}

#[cfg(not(feature = "nats"))]
fn nats(_: &mut Criterion) {}

#[cfg(feature = "amqp")]
fn amqp(c: &mut Criterion) {
    use lapin::types::FieldTable;
    let mut group = c.benchmark_group("carrier/lapin-FieldTable");
    carrier(&mut group, FieldTable::default, |h| h);
    group.finish();
}

#[cfg(not(feature = "amqp"))]
fn amqp(_: &mut Criterion) {}

/// `iters` round trips of one carrier type, for callgrind.
fn fixed_run<W: WriteCarrier, R: ReadCarrier>(
    iters: u64,
    fresh: impl Fn() -> W,
    read: impl Fn(W) -> R,
) {
    let propagation = Propagation::default();
    let baggage = std::env::var("TRACEHOP_BENCH_BAGGAGE").is_ok_and(|v| v == "1");
    let cx = context(baggage);
    for _ in 0..iters {
        let mut headers = fresh();
        propagation.inject(black_box(&cx), &mut headers);
        let incoming = read(headers);
        black_box(propagation.extract(&incoming));
    }
}

/// The carrier named by `TRACEHOP_BENCH_CARRIER`, `iters` times; `false` if unknown.
fn fixed_run_of(carrier: &str, iters: u64) -> bool {
    match carrier {
        "hashmap" => fixed_run(iters, HashMap::<String, String>::new, |h| h),
        #[cfg(feature = "kafka")]
        "kafka" => fixed_run(iters, rdkafka::message::OwnedHeaders::new, |h| h),
        #[cfg(feature = "nats")]
        "nats" => fixed_run(iters, async_nats::HeaderMap::new, Some),
        #[cfg(feature = "amqp")]
        "amqp" => fixed_run(iters, lapin::types::FieldTable::default, |h| h),
        _ => return false,
    }
    true
}

criterion_group!(benches, baseline, hashmap, kafka, nats, amqp);

fn main() {
    if let Some(iters) = std::env::var("TRACEHOP_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let carrier = std::env::var("TRACEHOP_BENCH_CARRIER").unwrap_or_default();
        if !fixed_run_of(&carrier, iters) {
            eprintln!("TRACEHOP_BENCH_CARRIER must be hashmap, kafka, nats or amqp");
            std::process::exit(2);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
