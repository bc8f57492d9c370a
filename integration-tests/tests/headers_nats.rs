#![cfg(feature = "nats")]
//! Repeated context headers and a `tracestate` with duplicate keys over a real NATS
//! server (`TRACEHOP_NATS_URL`): published by the plain async-nats client, read back with
//! `Telemetry::process_span` from what a plain subscription received.

use async_nats::HeaderMap;
use futures_util::StreamExt as _;
use tracehop::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE};
use tracehop::{SpanCollector, Telemetry};
use tracehop_integration_tests::repeated_headers::{assert_w3c, messages, process_and_forward};
use tracehop_integration_tests::{nats_url, unique, WAIT};

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
        forwarded.push(process_and_forward(
            &telemetry,
            i,
            "nats",
            &subject,
            &message.headers,
        ));
    }
    assert_w3c(&spans.records(), &subject, &forwarded);
}
