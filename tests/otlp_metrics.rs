//! OTLP metrics: a handle built with `otlp_metrics` exports the messaging metrics to the
//! collector named by `OTEL_EXPORTER_OTLP_ENDPOINT` (the loopback receiver of
//! `tests/support`), with the handle's service name and the conventions' schema URL.
#![cfg(feature = "otlp")]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::fake_collector;
use tracehop::{Incoming, Outgoing, SpanCollector, Telemetry};

#[tokio::test]
async fn otlp_metrics_reach_the_loopback_receiver() {
    let (endpoint, bodies) = fake_collector(1);
    // The only test in this binary, so setting the variable races with nothing.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let spans = SpanCollector::new();
    let telemetry = Telemetry::builder("otlp-metrics-svc")
        .collector(&spans)
        .otlp_metrics()
        .expect("otlp metric exporter")
        .build()
        .expect("telemetry");
    let mut headers: HashMap<String, String> = HashMap::new();
    for _ in 0..3 {
        telemetry
            .send_span(Outgoing::new("kafka", "metered-orders"), &mut headers)
            .end();
    }
    let process = telemetry.process_span(Incoming::new("kafka", "metered-orders"), &headers);
    process.end();
    telemetry.shutdown().expect("export and shut down");

    let (path, body) = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("the collector received an export");
    assert_eq!(path, "/v1/metrics");
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    for needle in [
        &b"messaging.client.sent.messages"[..],
        b"messaging.client.operation.duration",
        b"metered-orders",
        b"otlp-metrics-svc",
        tracehop::metrics::SCHEMA_URL.as_bytes(),
    ] {
        assert!(
            contains(needle),
            "{} not in the OTLP metrics payload",
            String::from_utf8_lossy(needle)
        );
    }
    // Three sends: the counter's point holds 3 (a protobuf `as_int` of 3: field 6, varint).
    assert!(
        contains(&[0x31, 3, 0, 0, 0, 0, 0, 0, 0]),
        "no data point of value 3 in the payload"
    );
}
