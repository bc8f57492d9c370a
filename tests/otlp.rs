//! OTLP export: spans reach a collector named by the standard `OTEL_EXPORTER_OTLP_*`
//! variables. The collector here is a minimal OTLP/HTTP receiver on loopback that keeps
//! the request bodies; the test looks for the span's raw trace id and service name in the
//! protobuf payload.
#![cfg(feature = "otlp")]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::fake_collector;

use tracehop::{Outgoing, SpanCollector, Telemetry};

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
