//! Per-message span cost: a send span plus a process span (inject, extract, handler run,
//! outcome recorded), exported to the journal, over OTLP with batching, and unsampled.
//!
//! `cargo bench --bench spans --features otlp`

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry_sdk::trace::Sampler;
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

    let unsampled = |name: &str| {
        Telemetry::builder(name)
            .journal(Journal::writer("sink", std::io::sink()))
            .sampler(Sampler::AlwaysOff)
            .build()
            .expect("telemetry")
    };
    let (p, q) = (unsampled("gateway"), unsampled("agent_runtime"));
    group.bench_function("unsampled", |b| b.iter(|| hop(&p, &q)));

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
