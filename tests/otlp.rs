//! OTLP export: spans reach a collector named by the standard `OTEL_EXPORTER_OTLP_*`
//! variables. The collector here is a minimal OTLP/HTTP receiver on loopback that keeps
//! the request bodies; the test looks for the span's raw trace id and service name in the
//! protobuf payload.
#![cfg(feature = "otlp")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use tracehop::{Outgoing, SpanCollector, Telemetry};

/// Accept OTLP/HTTP posts until `n` bodies were received; send each (path, body) back.
fn fake_collector(n: usize) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((path, body));
        }
    });
    (format!("http://{addr}"), rx)
}

#[test]
fn spans_are_exported_to_the_collector_named_by_the_environment() {
    let (endpoint, bodies) = fake_collector(1);
    // The only test in this binary, so setting the variable races with nothing.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let spans = SpanCollector::new();
    let telemetry = Telemetry::builder("otlp-checkout")
        .otlp()
        .expect("otlp exporter")
        .collector(&spans)
        .build()
        .expect("telemetry");
    let mut headers: HashMap<String, String> = HashMap::new();
    telemetry
        .send_span(Outgoing::new("kafka", "orders"), &mut headers)
        .end();
    telemetry.shutdown().expect("export and shut down");

    let (path, body) = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("the collector received an export");
    assert_eq!(path, "/v1/traces");
    let trace_id = &spans.records()[0].trace_id;
    let raw_trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&raw_trace_id),
        "trace id {trace_id} not in the OTLP payload"
    );
    assert!(
        contains(b"otlp-checkout"),
        "service name not in the OTLP payload"
    );
    assert!(
        contains(b"send orders"),
        "span name not in the OTLP payload"
    );
}
