use std::str::FromStr;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use super::carrier::merge;
use super::JetStreamAction;
use crate::propagation::{ReadCarrier, WriteCarrier, TRACEPARENT};
use crate::{Decision, Failure, FailurePolicy as _, OnFailure};
use crate::{Incoming, Outgoing, SpanCollector, Telemetry};

fn user_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Content-Type", "application/json");
    h.append("X-Multi", "first");
    h.append("X-Multi", "second");
    h.append("X-Multi", "third");
    h
}

fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name).map(|v| v.as_str().to_owned()).collect()
}

#[test]
fn read_carrier_looks_up_exact_names_and_the_first_value() {
    let h = user_headers();
    assert_eq!(
        ReadCarrier::get(&h, "Content-Type"),
        Some(&b"application/json"[..])
    );
    assert_eq!(
        ReadCarrier::get(&h, "content-type"),
        None,
        "names are case-sensitive"
    );
    assert_eq!(ReadCarrier::get(&h, "X-Multi"), Some(&b"first"[..]));
    assert_eq!(
        ReadCarrier::get(&h, "bad name: with colon"),
        None,
        "no panic on a bad name"
    );
    let mut keys = ReadCarrier::keys(&h);
    keys.sort_unstable();
    assert_eq!(keys, ["Content-Type", "X-Multi"]);

    let none: Option<HeaderMap> = None;
    assert_eq!(ReadCarrier::get(&none, TRACEPARENT), None);
    assert!(ReadCarrier::keys(&none).is_empty());
    assert_eq!(ReadCarrier::get(&Some(h), "X-Multi"), Some(&b"first"[..]));
}

#[test]
fn write_carrier_skips_what_async_nats_would_panic_on() {
    let mut h = user_headers();
    h.set("tracestate", String::new());
    h.set("x-crlf", "a\r\nInjected: yes".to_owned());
    h.set("x-lf", "a\nb".to_owned());
    h.set("bad:name", "v".to_owned());
    h.set("bad name", "v".to_owned());
    h.set("bäd", "v".to_owned());
    h.set("X-Multi", "replaced".to_owned());
    assert_eq!(ReadCarrier::get(&h, "tracestate"), Some(&b""[..]));
    // Only what was valid is in the map: the user's two headers and the two set here
    // (the invalid names cannot even be looked up, so list the map itself).
    let mut names: Vec<String> = h.iter().map(|(k, _)| k.to_string()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Content-Type", "X-Multi", "tracestate"]);
    assert_eq!(
        values(&h, "X-Multi"),
        ["replaced"],
        "set replaces a same-named header"
    );
    assert_eq!(values(&h, "Content-Type"), ["application/json"]);
}

fn context_headers() -> HeaderMap {
    let mut c = HeaderMap::new();
    c.set(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    c.set("tracehop-sent-at", "1700000000000000".to_owned());
    c
}

#[test]
fn merge_keeps_every_user_header_and_adds_the_context() {
    let (merged, dropped) = merge(Some(user_headers()), context_headers(), 10, 1 << 20);
    let merged = merged.expect("headers");
    assert!(!dropped);
    assert_eq!(values(&merged, "X-Multi"), ["first", "second", "third"]);
    assert_eq!(values(&merged, "Content-Type"), ["application/json"]);
    assert_eq!(
        values(&merged, TRACEPARENT),
        ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    );
    assert_eq!(merged.len(), 4);

    let (merged, dropped) = merge(None, context_headers(), 10, 0);
    assert!(!dropped);
    assert_eq!(merged.expect("headers").len(), 2);

    let (merged, dropped) = merge(Some(user_headers()), HeaderMap::new(), 10, 1);
    assert!(!dropped);
    assert_eq!(
        merged,
        Some(user_headers()),
        "nothing to add: the user's headers as they were"
    );
}

#[test]
fn merge_replaces_a_user_header_of_the_same_name() {
    let mut user = user_headers();
    user.insert(
        HeaderName::from_str(TRACEPARENT).expect("name"),
        HeaderValue::from_str("stale").expect("value"),
    );
    let (merged, _) = merge(Some(user), context_headers(), 0, 0);
    assert_eq!(
        values(&merged.expect("headers"), TRACEPARENT),
        ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    );
}

#[test]
fn merge_leaves_the_context_out_rather_than_fail_a_message_that_fits() {
    // The user's header block as async-nats writes it on the wire.
    let user_len = "NATS/1.0\r\nContent-Type: application/json\r\n\
        X-Multi: first\r\nX-Multi: second\r\nX-Multi: third\r\n\r\n"
        .len();
    let payload = 100;
    let (merged, dropped) = merge(
        Some(user_headers()),
        context_headers(),
        payload,
        user_len + payload,
    );
    assert!(dropped);
    assert_eq!(
        merged,
        Some(user_headers()),
        "the user's headers, untouched"
    );

    let (merged, dropped) = merge(None, context_headers(), payload, payload);
    assert!(dropped);
    assert_eq!(merged, None, "no headers at all, as the user sent it");

    // One byte less and the user's message does not fit either: publish as asked and let
    // the client report it, exactly as without tracing.
    let (merged, dropped) = merge(
        Some(user_headers()),
        context_headers(),
        payload,
        user_len + payload - 1,
    );
    assert!(!dropped);
    assert!(merged.is_some_and(|h| h.get(TRACEPARENT).is_some()));
}

#[test]
fn jetstream_policies_decide_by_delivery_count() {
    let failure = |attempt| Failure {
        destination: "orders",
        attempt,
        runs: 1,
        messages: 1,
        error: &"boom",
        panicked: false,
    };
    let decide = |p: &OnFailure<JetStreamAction>, attempt| p.decide(&failure(attempt));
    assert_eq!(decide(&OnFailure::default(), 1), Decision::Redeliver);
    assert_eq!(
        decide(&OnFailure::nak_after(Duration::from_secs(2)), 1),
        Decision::Settle(JetStreamAction::Nak {
            delay: Some(Duration::from_secs(2))
        })
    );
    assert_eq!(
        decide(&OnFailure::term(), 1),
        Decision::Settle(JetStreamAction::Term)
    );
    assert_eq!(
        decide(&OnFailure::leave(), 1),
        Decision::Settle(JetStreamAction::Leave)
    );
    let retry = OnFailure::nak_until(3, None);
    let nak = Decision::Settle(JetStreamAction::Nak { delay: None });
    assert_eq!(decide(&retry, 1), nak);
    assert_eq!(decide(&retry, 2), nak);
    assert_eq!(decide(&retry, 3), Decision::Settle(JetStreamAction::Term));
}

#[test]
fn context_crosses_a_header_map_hop() {
    let spans = SpanCollector::new();
    let telemetry = Telemetry::builder("svc")
        .collector(&spans)
        .build()
        .expect("telemetry");
    let mut headers = user_headers();
    telemetry
        .send_span(
            Outgoing::new("nats", "jobs").operation_name("publish"),
            &mut headers,
        )
        .end();
    assert_eq!(values(&headers, "X-Multi"), ["first", "second", "third"]);
    let process = telemetry.process_span(Incoming::new("nats", "jobs"), &headers);
    process.end();
    let records = spans.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].operation_name.as_deref(), Some("publish jobs"));
    assert_eq!(records[1].trace_id, records[0].trace_id);
    assert_eq!(
        records[1].parent_span_id.as_deref(),
        Some(records[0].span_id.as_str())
    );
}
