//! Headers: user headers survive byte for byte; missing, bad, rejected or oversized
//! context never fails a message.

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use tracehop::otel::sdk::propagation::TraceContextPropagator;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_headers_survive_byte_for_byte() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let consumer = service(&spans, "consumer").await;
    let subject = unique("nats.headers");
    let reply_to = unique("nats.headers.reply");

    // What is on the wire, as a plain subscriber sees it.
    let raw = connect().await;
    let mut wire = raw.subscribe(subject.clone()).await.expect("subscribe");
    round_trip(&raw).await.expect("round trip");
    let mut traced = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(2);
    ready(&consumer).await;
    let got: Arc<Mutex<Vec<async_nats::Message>>> = Arc::default();
    let sink = got.clone();
    let traced_loop = tokio::spawn(async move {
        traced
            .run(move |message| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(message);
                    Ok::<(), String>(())
                }
            })
            .await
    });

    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json; charset=utf-8");
    headers.append("X-Tag", "alpha");
    headers.append("X-Tag", "beta");
    headers.append("X-Tag", "gamma");
    headers.insert("x-lower-case", "Mixed Case Value, with: punctuation");
    headers.insert("X-Json", r#"{"k":[1,2,3],"s":"äé"}"#);
    headers.insert("X-Empty", HeaderValue::new());
    headers.insert("Nats-Msg-Id", "order-42");
    let payload: &[u8] = b"\x00\x01binary\xffpayload";
    producer
        .publish_with_headers(subject.clone(), headers.clone(), payload.to_vec().into())
        .await
        .expect("publish");
    producer
        .publish_with_reply_and_headers(
            subject.clone(),
            reply_to.clone(),
            headers.clone(),
            payload.to_vec().into(),
        )
        .await
        .expect("publish with reply");

    for expect_reply in [None, Some(reply_to.as_str())] {
        let message = within(
            wire.next(),
            &[
                ("producer", producer.client()),
                ("raw", &raw),
                ("consumer", consumer.client()),
            ],
        )
        .await
        .expect("subscription open");
        assert_eq!(&message.payload[..], payload);
        assert_eq!(message.reply.as_deref(), expect_reply);
        let received = message.headers.expect("headers");
        for (name, values) in headers.iter() {
            let sent: Vec<&str> = values.iter().map(HeaderValue::as_str).collect();
            let got: Vec<&str> = received
                .get_all(name.clone())
                .map(HeaderValue::as_str)
                .collect();
            assert_eq!(got, sent, "header {name}");
        }
        // Nothing else was added but the context headers.
        let added: Vec<String> = received
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| headers.get(k.as_str()).is_none())
            .collect();
        assert!(added.iter().any(|k| k == TRACEPARENT), "{added:?}");
        for name in &added {
            assert!(
                [TRACEPARENT, "tracestate", "baggage", "tracehop-sent-at"].contains(&name.as_str()),
                "unexpected header {name}"
            );
        }
    }

    let done = finish(traced_loop, "consumer").await.expect("consume");
    assert_eq!(done.messages, 2);
    for message in got.lock().unwrap().iter() {
        assert_eq!(
            &message.payload[..],
            payload,
            "the handler gets the message as sent"
        );
        let received = message.headers.as_ref().expect("headers");
        let tags: Vec<&str> = received.get_all("X-Tag").map(HeaderValue::as_str).collect();
        assert_eq!(tags, ["alpha", "beta", "gamma"]);
    }
    let spans = spans.records();
    let sends = named(&spans, &format!("publish {subject}"));
    let processes = named(&spans, &format!("process {subject}"));
    assert_eq!((sends.len(), processes.len()), (2, 2), "{spans:#?}");
    for p in processes {
        assert_eq!(p.attribute_str("messaging.message.id"), Some("order-42"));
        assert!(sends
            .iter()
            .any(|s| p.parent_span_id.as_ref() == Some(&s.span_id)));
    }
    let with_reply: Vec<_> = sends
        .iter()
        .filter_map(|s| s.attribute_str("messaging.nats.message.reply_to"))
        .collect();
    assert_eq!(with_reply, [reply_to.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_or_with_bad_context_start_new_roots() {
    let spans = SpanCollector::new();
    let consumer = service(&spans, "consumer").await;
    let subject = unique("nats.badcontext");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(4);
    ready(&consumer).await;
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = bodies.clone();
    let consumer_loop = tokio::spawn(async move {
        sub.run(move |message| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&message.payload).into_owned());
                Ok::<(), String>(())
            }
        })
        .await
    });

    let plain = connect().await;
    let with = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    };
    plain
        .publish(subject.clone(), "no headers".into())
        .await
        .expect("publish");
    plain
        .publish_with_headers(
            subject.clone(),
            with(&[("X-Other", "1")]),
            "no context".into(),
        )
        .await
        .expect("publish");
    plain
        .publish_with_headers(
            subject.clone(),
            with(&[(TRACEPARENT, "garbage")]),
            "malformed".into(),
        )
        .await
        .expect("publish");
    plain
        .publish_with_headers(
            subject.clone(),
            with(&[(
                TRACEPARENT,
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
            "zero trace id".into(),
        )
        .await
        .expect("publish");
    plain.flush().await.expect("flush");

    let done = finish(consumer_loop, "consumer").await.expect("consume");
    assert_eq!(
        (done.messages, done.failed),
        (4, 0),
        "every message reached the handler"
    );
    assert_eq!(
        *bodies.lock().unwrap(),
        ["no headers", "no context", "malformed", "zero trace id"]
    );

    let spans = spans.records();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let traces: HashSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 4, "four separate traces");
    for s in &spans {
        assert_eq!(s.parent_span_id, None, "a new root: {s:#?}");
        assert_eq!(s.status, Status::Ok);
    }
    let missing = spans
        .iter()
        .filter(|s| s.attribute("tracehop.context.missing") == Some(&true.into()))
        .count();
    let rejected: Vec<&str> = spans
        .iter()
        .filter_map(|s| s.attribute_str("tracehop.context.rejected"))
        .collect();
    assert_eq!(missing, 2, "{spans:#?}");
    assert_eq!(rejected.len(), 2, "{spans:#?}");
}

/// Writes one good header and two the NATS client would reject (and panic on, through its
/// infallible conversions).
#[derive(Debug)]
struct HostilePropagator;

impl TextMapPropagator for HostilePropagator {
    fn inject_context(&self, _cx: &Context, injector: &mut dyn Injector) {
        injector.set("x-crlf", "line one\r\nInjected: header".to_owned());
        injector.set("bad name:", "value".to_owned());
        injector.set("x-fine", "kept".to_owned());
    }
    fn extract_with_context(&self, cx: &Context, _extractor: &dyn Extractor) -> Context {
        cx.clone()
    }
    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_client_rejects_never_fail_a_publish() {
    let spans = SpanCollector::new();
    let propagation =
        Propagation::default().with_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(HostilePropagator),
        ]));
    let telemetry = Telemetry::builder("producer")
        .collector(&spans)
        .propagation(propagation)
        .build()
        .expect("telemetry");
    let producer = TracedClient::new(connect().await, telemetry);
    let consumer = service(&spans, "consumer").await;
    let subject = unique("nats.hostile");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(1);
    ready(&consumer).await;

    producer
        .publish(subject.clone(), "payload".into())
        .await
        .expect("publish");
    let message = delivery(&mut sub, &producer, &consumer).await;
    let headers = message.headers.expect("headers");
    let received: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v[0].to_string()))
        .collect();
    assert_eq!(received.get("x-fine").map(String::as_str), Some("kept"));
    assert!(received.contains_key(TRACEPARENT));
    assert!(
        !received.contains_key("x-crlf") && !received.contains_key("Injected"),
        "{received:?}"
    );
    assert_eq!(&message.payload[..], b"payload");

    let spans = spans.records();
    let send = span(&spans, "producer", &format!("publish {subject}"));
    let process = span(&spans, "consumer", &format!("process {subject}"));
    assert_eq!(send.status, Status::Ok);
    assert_eq!(process.parent_span_id.as_ref(), Some(&send.span_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_that_would_overflow_max_payload_is_left_out() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let consumer = service(&spans, "consumer").await;
    let subject = unique("nats.maxpayload");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(1);
    ready(&consumer).await;

    // Exactly as large as the server allows: it fits alone, not with a traceparent.
    let max = producer.client().server_info().max_payload;
    producer
        .publish(subject.clone(), vec![b'x'; max].into())
        .await
        .expect("the publish still succeeds");
    let message = delivery(&mut sub, &producer, &consumer).await;
    assert_eq!(message.payload.len(), max);
    assert!(message.headers.is_none(), "sent as the user sent it");

    let spans = spans.records();
    let send = span(&spans, "producer", &format!("publish {subject}"));
    let process = span(&spans, "consumer", &format!("process {subject}"));
    assert_eq!(send.status, Status::Ok);
    assert_eq!(
        send.attribute("tracehop.context.dropped"),
        Some(&"max_payload".into())
    );
    assert_eq!(process.parent_span_id, None);
    assert_eq!(
        process.attribute("tracehop.context.missing"),
        Some(&true.into())
    );
}
