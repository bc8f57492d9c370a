//! Headers on the wire: the user's headers arrive unchanged beside the context headers,
//! and a message without usable context is processed under a new root that says why.

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tracehop::journal::Status;
use tracehop::propagation::{SENT_AT, TRACEPARENT, TRACESTATE};
use tracehop::SpanCollector;
use tracehop_integration_tests::spans::{find, flag, service, settlement, text};
use tracehop_integration_tests::{finish, unique};

use crate::{
    closed, deliver, header_list, headers_of, keep_in, key_of, spawn_run, Broker, Captured, SEND,
};

/// User headers arrive unchanged (order, bytes, null values, duplicates); a stale
/// `traceparent` the user set is replaced in place, never duplicated.
async fn user_headers_survive_unchanged(broker: Broker) {
    let spans = SpanCollector::new();
    let (gateway, worker) = (service(&spans, "gateway"), service(&spans, "worker"));
    let topic = broker.topic("headers", 1).await;

    let user = || {
        OwnedHeaders::new()
            .insert(Header {
                key: "binary",
                value: Some(&[0u8, 0xff, 0xfe, b'\n'][..]),
            })
            .insert(Header {
                key: "null-value",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "dup",
                value: Some("first"),
            })
            .insert(Header {
                key: "dup",
                value: Some("second"),
            })
            .insert(Header {
                key: "empty",
                value: Some(""),
            })
    };
    let stale = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let producer = broker.producer(&gateway);
    deliver(
        &producer,
        FutureRecord::to(&topic)
            .key("k")
            .payload("plain")
            .headers(user()),
    )
    .await;
    deliver(
        &producer,
        FutureRecord::to(&topic).key("k").payload("stale").headers(
            user()
                .insert(Header {
                    key: TRACEPARENT,
                    value: Some(stale),
                })
                .insert(Header {
                    key: "after",
                    value: Some("x"),
                }),
        ),
    )
    .await;

    let seen = Captured::default();
    let task = spawn_run(
        broker
            .consumer(&worker, &topic, &unique("headers"))
            .limit(2),
        keep_in(&seen),
    );
    closed(finish(task, "consumer").await)
        .await
        .expect("consumer loop");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let expected_user = header_list(&user());
    let sends = find(&spans.records(), "gateway", &format!("send {topic}"))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(sends.len(), 2);

    // First message: the user's headers first, untouched; then only context headers.
    let plain = headers_of(&seen[0]);
    assert_eq!(seen[0].payload(), Some(&b"plain"[..]));
    assert_eq!(seen[0].key(), Some(&b"k"[..]));
    assert_eq!(&plain[..expected_user.len()], &expected_user[..]);
    let added: Vec<&str> = plain[expected_user.len()..]
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    // Only context headers are added (tracestate only when the core writes it).
    assert_eq!(added.first(), Some(&TRACEPARENT), "{added:?}");
    assert!(added.contains(&SENT_AT), "{added:?}");
    assert!(
        added
            .iter()
            .all(|k| [TRACEPARENT, TRACESTATE, SENT_AT].contains(k)),
        "{added:?}"
    );
    let traceparent = plain
        .iter()
        .find(|(k, _)| k == TRACEPARENT)
        .and_then(|(_, v)| v.clone())
        .expect("context header");
    let expected = format!("00-{}-{}-01", sends[0].trace_id, sends[0].span_id);
    assert_eq!(String::from_utf8(traceparent).unwrap(), expected);

    // Second message: the stale traceparent is replaced where it was, exactly once.
    let stale_headers = headers_of(&seen[1]);
    assert_eq!(&stale_headers[..expected_user.len()], &expected_user[..]);
    let n = expected_user.len();
    assert_eq!(stale_headers[n].0, TRACEPARENT);
    assert_eq!(
        stale_headers[n].1.as_deref(),
        Some(format!("00-{}-{}-01", sends[1].trace_id, sends[1].span_id).as_bytes())
    );
    assert_eq!(
        stale_headers[n + 1],
        ("after".to_owned(), Some(b"x".to_vec()))
    );
    assert_eq!(
        stale_headers
            .iter()
            .filter(|(k, _)| k == TRACEPARENT)
            .count(),
        1,
        "{stale_headers:?}"
    );
    assert_ne!(sends[1].trace_id, "0af7651916cd43dd8448eb211c80319c");
}

/// A message from a plain rdkafka producer (no context) and one with a malformed
/// `traceparent` are processed normally, each under a new root that says why.
async fn message_without_context_starts_a_new_root(broker: Broker) {
    let spans = SpanCollector::new();
    let worker = service(&spans, "worker");
    let topic = broker.topic("plain", 1).await;
    let plain = broker.plain_producer();
    plain
        .send(
            FutureRecord::to(&topic).key("a").payload("no context"),
            SEND,
        )
        .await
        .expect("delivered");
    plain
        .send(
            FutureRecord::to(&topic)
                .key("b")
                .payload("bad context")
                .headers(OwnedHeaders::new().insert(Header {
                    key: TRACEPARENT,
                    value: Some("00-not-a-trace-01"),
                })),
            SEND,
        )
        .await
        .expect("delivered");

    let handled = Captured::default();
    let task = spawn_run(
        broker.consumer(&worker, &topic, &unique("plain")).limit(2),
        keep_in(&handled),
    );
    let summary = closed(finish(task, "consumer").await)
        .await
        .expect("consumer loop");
    assert_eq!(
        (summary.messages, summary.succeeded, summary.failed),
        (2, 2, 0)
    );
    assert_eq!(handled.lock().unwrap().len(), 2);

    let all = spans.records();
    let processed = find(&all, "worker", &format!("process {topic}"));
    assert_eq!(processed.len(), 2, "{all:#?}");
    let missing = processed
        .iter()
        .find(|s| key_of(s) == Some("a"))
        .expect("span for a");
    let rejected = processed
        .iter()
        .find(|s| key_of(s) == Some("b"))
        .expect("span for b");
    for s in [missing, rejected] {
        assert_eq!(s.parent_span_id, None, "a new root");
        assert_eq!(s.status, Status::Ok);
        assert!(s.links.is_empty());
        assert_eq!(settlement(s), Some("commit"));
    }
    assert_ne!(missing.trace_id, rejected.trace_id);
    assert_eq!(flag(missing, "tracehop.context.missing"), Some(true));
    assert!(
        text(rejected, "tracehop.context.rejected").is_some(),
        "{rejected:#?}"
    );
    assert_eq!(rejected.attribute("tracehop.context.missing"), None);
}

on_both_brokers!(
    user_headers_survive_unchanged,
    message_without_context_starts_a_new_root,
);
