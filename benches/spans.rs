//! Per-message span cost: a send span plus a process span (inject, extract, handler run,
//! outcome recorded), exported to the journal, over OTLP with batching, and unsampled.
//!
//! `hand-rolled/*` is the floor to compare with: the same two spans (same names,
//! attributes and kinds) made directly with the OpenTelemetry SDK tracer of the same
//! telemetry handle, with the SDK's own W3C propagator over the same `HashMap`, as code
//! instrumented by hand would do.
//!
//! `cargo bench --bench spans --features otlp`

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer};
use tracehop::{Incoming, Journal, Outgoing, Telemetry};

/// One message through a send span and a process span.
fn hop(producer: &Telemetry, consumer: &Telemetry) {
    let mut headers: HashMap<String, String> = HashMap::with_capacity(4);
    producer
        .send_span(
            Outgoing::new("kafka", "agent.tasks").body_size(64),
            &mut headers,
        )
        .end();
    let process = consumer.process_span(Incoming::new("kafka", "agent.tasks"), &headers);
    let outcome = process.record(&Ok::<(), &str>(()));
    process.end();
    black_box(outcome);
}

/// The same hop, instrumented by hand with the SDK: the floor tracehop is measured against.
fn hand_rolled(producer: &SdkTracer, consumer: &SdkTracer, propagator: &TraceContextPropagator) {
    let mut headers: HashMap<String, String> = HashMap::with_capacity(4);
    let send = producer
        .span_builder("send agent.tasks")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.message.body.size", 64_i64),
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", "agent.tasks".to_owned()),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "send"),
        ])
        .start(producer);
    let cx = Context::new().with_span(send);
    propagator.inject_context(&cx, &mut headers);
    cx.span().set_status(Status::Ok);
    cx.span().end();
    let parent = propagator.extract(&headers);
    let process = consumer
        .span_builder("process agent.tasks")
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", "agent.tasks".to_owned()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
        ])
        .start_with_context(consumer, &parent);
    let cx = parent.with_span(process);
    cx.span().set_status(Status::Ok);
    cx.span().end();
    black_box(cx);
}

/// A loopback OTLP/HTTP receiver that accepts and discards exports.
fn discard_collector() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || loop {
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => return,
                });
                let mut length = 0usize;
                let mut first = true;
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == "\r\n" && !first {
                        break;
                    }
                    first = false;
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err()
                    || stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                {
                    return;
                }
            });
        }
    });
    format!("http://{addr}")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("send+process");

    let journal = |name: &str| {
        Telemetry::builder(name)
            .journal(Journal::writer("sink", std::io::sink()))
            .build()
            .expect("telemetry")
    };
    let (p, q) = (journal("gateway"), journal("agent_runtime"));
    group.bench_function("journal", |b| b.iter(|| hop(&p, &q)));
    let w3c = TraceContextPropagator::new();
    let (pt, qt) = (p.provider().tracer("hand"), q.provider().tracer("hand"));
    group.bench_function("hand-rolled/journal", |b| {
        b.iter(|| hand_rolled(&pt, &qt, &w3c))
    });

    let unsampled = |name: &str| {
        Telemetry::builder(name)
            .journal(Journal::writer("sink", std::io::sink()))
            .sampler(Sampler::AlwaysOff)
            .build()
            .expect("telemetry")
    };
    let (p, q) = (unsampled("gateway"), unsampled("agent_runtime"));
    group.bench_function("unsampled", |b| b.iter(|| hop(&p, &q)));
    let (pt, qt) = (p.provider().tracer("hand"), q.provider().tracer("hand"));
    group.bench_function("hand-rolled/unsampled", |b| {
        b.iter(|| hand_rolled(&pt, &qt, &w3c))
    });

    #[cfg(feature = "otlp")]
    {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", discard_collector());
        let otlp = |name: &str| {
            Telemetry::builder(name)
                .otlp()
                .expect("otlp")
                .build()
                .expect("telemetry")
        };
        let (p, q) = (otlp("gateway"), otlp("agent_runtime"));
        group.bench_function("otlp-batched", |b| b.iter(|| hop(&p, &q)));
    }
    #[cfg(not(feature = "otlp"))]
    let _ = discard_collector;

    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
