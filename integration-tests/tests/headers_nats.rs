#![cfg(feature = "nats")]
//! Repeated context headers and a `tracestate` with duplicate keys over a real NATS
//! server (`TRACEHOP_NATS_URL`): published by the plain async-nats client, read back with
//! `Telemetry::process_span` from what a plain subscription received.

use std::collections::HashMap;

use async_nats::HeaderMap;
use futures_util::StreamExt as _;
use opentelemetry::baggage::BaggageExt as _;
use tracehop::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE};
use tracehop::{Incoming, Outgoing, SpanCollector, Telemetry};
use tracehop_integration_tests::{nats_url, unique, WAIT};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_TP: &str = "00-11111111111111111111111111111111-2222222222222222-01";

/// The headers of each message; a name's values keep their order.
fn messages() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![(TRACEPARENT, TP), ("user", "u"), (TRACEPARENT, OTHER_TP)],
        vec![
            (TRACEPARENT, TP),
            (TRACESTATE, "a=1,b=2"),
            (BAGGAGE, "k1=v1"),
            (TRACESTATE, "c=3"),
            (BAGGAGE, "k2=v2,k3=v3"),
            (TRACESTATE, "d=4,e=5"),
        ],
        vec![(TRACEPARENT, TP), (TRACESTATE, "foo=1,foo=2")],
        vec![
            (TRACEPARENT, TP),
            (TRACESTATE, "foo=1"),
            (TRACESTATE, "foo=2"),
        ],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_headers_follow_w3c() {
    let client = async_nats::connect(nats_url())
        .await
        .expect("nats-server on TRACEHOP_NATS_URL");
    let subject = unique("headers");
    let mut subscription = client.subscribe(subject.clone()).await.expect("subscribe");
    // The same connection: the server has the subscription before the publishes.
    for (i, headers) in messages().iter().enumerate() {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, *v);
        }
        client
            .publish_with_headers(subject.clone(), map, format!("message {i}").into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");

    let spans = SpanCollector::new();
    let telemetry = Telemetry::builder("nats-headers")
        .collector(&spans)
        .build()
        .expect("telemetry");
    let mut forwarded = Vec::new();
    for (i, sent) in messages().iter().enumerate() {
        let message = tokio::time::timeout(WAIT, subscription.next())
            .await
            .expect("a message in time")
            .expect("a message");
        assert_eq!(&message.payload[..], format!("message {i}").as_bytes());
        let headers = message.headers.as_ref().expect("headers");
        // The server kept every value of every name, in order.
        for name in [TRACEPARENT, TRACESTATE, BAGGAGE] {
            let want: Vec<&str> = sent
                .iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .collect();
            let got: Vec<&str> = headers.get_all(name).map(|v| v.as_str()).collect();
            assert_eq!(got, want, "message {i}, {name}");
        }
        let process = telemetry.process_span(Incoming::new("nats", &subject), &message.headers);
        if i == 1 {
            let baggage = process.context().baggage();
            let mut members: Vec<String> = baggage
                .iter()
                .map(|(k, (v, _))| format!("{k}={v}"))
                .collect();
            members.sort();
            assert_eq!(members, ["k1=v1", "k2=v2", "k3=v3"]);
        }
        let mut out: HashMap<String, String> = HashMap::new();
        process.in_scope(|| {
            telemetry
                .send_span(Outgoing::new("nats", "next"), &mut out)
                .end()
        });
        forwarded.push(out);
        process.end();
    }

    let records = spans.records();
    let process: Vec<_> = records
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(&*format!("process {subject}")))
        .collect();
    assert_eq!(process.len(), 4);
    assert_eq!(process[0].parent_span_id, None);
    assert_ne!(process[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        process[0].attribute_str("tracehop.context.rejected"),
        Some("traceparent is repeated")
    );
    assert_eq!(
        process[1].parent_span_id.as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(
        forwarded[1].get(TRACESTATE).map(String::as_str),
        Some("a=1,b=2,c=3,d=4,e=5")
    );
    for (p, out) in process[2..].iter().zip(&forwarded[2..]) {
        assert_eq!(p.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(
            p.attribute_str("tracehop.context.discarded"),
            Some("tracestate has duplicate keys")
        );
        assert_eq!(out.get(TRACESTATE), None, "{out:?}");
    }
}
