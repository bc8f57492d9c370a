#![cfg(feature = "nats")]
//! Core NATS against a real nats-server: hops, request-reply, queue groups, user headers
//! and incoming context that is missing or bad.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_nats::{Client, HeaderMap, HeaderValue};
use futures_util::{FutureExt as _, StreamExt};
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry::Context;
use tracehop::journal::{Kind, Status};
use tracehop::nats::{round_trip, Delivery, Stop, TracedClient, TracedSubscriber};
use tracehop::otel::sdk::propagation::TraceContextPropagator;
use tracehop::propagation::TRACEPARENT;
use tracehop::{ParentPolicy, Propagation, SpanCollector, SpanRecord, Telemetry};
use tracehop_integration_tests::{nats_url, unique, WAIT};

/// A new connection whose events (disconnects, slow consumers, server errors) are printed,
/// so a test that loses a message shows what the connection went through.
async fn connect() -> Client {
    async_nats::ConnectOptions::new()
        .event_callback(|event| async move {
            eprintln!("{:?} nats event: {event}", std::time::SystemTime::now());
        })
        .connect(nats_url())
        .await
        .expect("nats-server on TRACEHOP_NATS_URL (start it with .ci/run or docker compose)")
}

/// What each connection has sent and received, for a test that waited in vain.
fn statistics(clients: &[(&str, &Client)]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    for (name, client) in clients {
        let s = client.statistics();
        out.push_str(&format!(
            "\n  {name}: state {:?}, out {} msgs, in {} msgs, connects {}",
            client.connection_state(),
            s.out_messages.load(Relaxed),
            s.in_messages.load(Relaxed),
            s.connects.load(Relaxed),
        ));
    }
    out
}

/// `future`'s output, or a panic after [`WAIT`] that shows the connections' statistics.
async fn within<F: std::future::Future>(future: F, clients: &[(&str, &Client)]) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(out) => out,
        Err(_) => panic!(
            "nothing arrived within {WAIT:?}; connections:{}",
            statistics(clients)
        ),
    }
}

/// A service with its own connection, so hops really cross the server.
async fn service(spans: &SpanCollector, name: &str) -> TracedClient {
    let telemetry = Telemetry::builder(name)
        .collector(spans)
        .build()
        .expect("telemetry");
    TracedClient::new(connect().await, telemetry)
}

fn span<'a>(spans: &'a [SpanRecord], service: &str, name: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| {
            s.service_name.as_deref() == Some(service) && s.operation_name.as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("no span {service}/{name} in {spans:#?}"))
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(name))
        .collect()
}

/// The next message on `sub`, published by `producer`, with its process span open.
async fn delivery(
    sub: &mut TracedSubscriber,
    producer: &TracedClient,
    consumer: &TracedClient,
) -> Delivery {
    within(
        sub.next(),
        &[
            ("producer", producer.client()),
            ("consumer", consumer.client()),
        ],
    )
    .await
    .expect("a message")
}

/// Make sure the server has seen `client`'s subscriptions before anyone publishes.
async fn ready(client: &TracedClient) {
    client.round_trip().await.expect("round trip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hop_chain_forms_one_trace() {
    let spans = SpanCollector::new();
    let gateway = service(&spans, "gateway").await;
    let runtime = service(&spans, "agent_runtime").await;
    let tool = service(&spans, "tool_service").await;
    let tasks = unique("nats.chain.tasks");
    let calls = unique("nats.chain.calls");

    let tool_sub = tool
        .subscribe(calls.clone())
        .await
        .expect("subscribe")
        .limit(1);
    ready(&tool).await;
    let tool_seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = tool_seen.clone();
    let tool_loop = tokio::spawn(tool_sub.process(move |message| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(message.payload.to_vec());
            Ok::<(), String>(())
        }
    }));

    let runtime_sub = runtime
        .subscribe(tasks.clone())
        .await
        .expect("subscribe")
        .limit(1);
    ready(&runtime).await;
    let forward = runtime.clone();
    let calls_subject = calls.clone();
    let runtime_loop = tokio::spawn(runtime_sub.process(move |message| {
        let forward = forward.clone();
        let calls_subject = calls_subject.clone();
        async move {
            let mut call = b"tool call for ".to_vec();
            call.extend_from_slice(&message.payload);
            forward
                .publish(calls_subject, call.into())
                .await
                .map_err(|e| e.to_string())
        }
    }));

    // The gateway publishes inside its own request span.
    let root = gateway
        .telemetry()
        .provider()
        .tracer("app")
        .start("handle_request");
    let root_cx = Context::current_with_span(root);
    gateway
        .publish(tasks.clone(), "summarize doc 7".into())
        .with_context(root_cx.clone())
        .await
        .expect("publish");
    root_cx.span().end();

    let runtime_done = runtime_loop.await.expect("runtime loop");
    let tool_done = tool_loop.await.expect("tool loop");
    assert_eq!((runtime_done.messages, runtime_done.failed), (1, 0));
    assert_eq!((tool_done.messages, tool_done.failed), (1, 0));
    assert_eq!(
        *tool_seen.lock().unwrap(),
        [b"tool call for summarize doc 7".to_vec()]
    );

    let spans = spans.records();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let root = span(&spans, "gateway", "handle_request");
    let send1 = span(&spans, "gateway", &format!("publish {tasks}"));
    let proc1 = span(&spans, "agent_runtime", &format!("process {tasks}"));
    let send2 = span(&spans, "agent_runtime", &format!("publish {calls}"));
    let proc2 = span(&spans, "tool_service", &format!("process {calls}"));
    for s in [send1, proc1, send2, proc2] {
        assert_eq!(s.trace_id, root.trace_id, "one trace: {s:#?}");
    }
    assert_eq!(root.parent_span_id, None);
    assert_eq!(send1.parent_span_id.as_ref(), Some(&root.span_id));
    assert_eq!(proc1.parent_span_id.as_ref(), Some(&send1.span_id));
    assert_eq!(send2.parent_span_id.as_ref(), Some(&proc1.span_id));
    assert_eq!(proc2.parent_span_id.as_ref(), Some(&send2.span_id));

    assert_eq!(send1.span_kind, Some(Kind::Producer));
    assert_eq!(proc1.span_kind, Some(Kind::Consumer));
    assert_eq!(send1.status, Status::Ok);
    assert_eq!(proc2.status, Status::Ok);
    assert_eq!(send1.attribute_str("messaging.system"), Some("nats"));
    assert_eq!(
        send1.attribute_str("messaging.destination.name"),
        Some(tasks.as_str())
    );
    assert_eq!(
        send1.attribute_str("messaging.operation.name"),
        Some("publish")
    );
    assert_eq!(
        send1.attribute("messaging.message.body.size"),
        Some(&15.into())
    );
    let info = gateway.client().server_info();
    assert_eq!(
        send1.attribute_str("server.address"),
        Some(info.host.as_str()),
        "{send1:#?}"
    );
    assert_eq!(
        send1.attribute("server.port").and_then(|p| p.as_i64()),
        Some(i64::from(info.port))
    );
    assert_eq!(proc1.attribute_str("messaging.system"), Some("nats"));
    assert_eq!(
        proc1.attribute_str("messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        proc1.attribute_str("messaging.destination.name"),
        Some(tasks.as_str())
    );
    assert_eq!(
        proc1.attribute_str("messaging.nats.message.subject"),
        Some(tasks.as_str())
    );
    assert_eq!(
        proc1.attribute_str("messaging.destination.template"),
        Some(tasks.as_str())
    );
    assert_eq!(
        proc1.attribute("messaging.message.body.size"),
        Some(&15.into())
    );
    let envelope = proc1
        .attribute("messaging.message.envelope.size")
        .and_then(|v| v.as_i64());
    assert!(envelope.is_some_and(|n| n > 15), "{proc1:#?}");
    assert!(proc1
        .attribute("tracehop.queue_time_ms")
        .and_then(|v| v.as_f64())
        .is_some());
    assert_eq!(proc1.attribute("messaging.consumer.group.name"), None);
    assert_eq!(
        proc2.attribute("messaging.message.body.size"),
        Some(&29.into())
    );
}

/// A responder on `subject` that answers one request with `echo: <payload>`, ready
/// before this returns.
async fn echo_once(
    responder: &TracedClient,
    subject: &str,
) -> tokio::task::JoinHandle<tracehop::nats::Processed> {
    let requests = responder
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe")
        .limit(1);
    ready(responder).await;
    let replier = responder.clone();
    tokio::spawn(requests.process(move |request| {
        let replier = replier.clone();
        async move {
            let mut answer = b"echo: ".to_vec();
            answer.extend_from_slice(&request.payload);
            replier.respond(&request, answer.into()).await
        }
    }))
}

/// Request `ping` from an [`echo_once`] responder on `subject`; the spans once the four
/// of the round trip are in.
async fn echo_round_trip(
    spans: &SpanCollector,
    requester: &TracedClient,
    responder: &TracedClient,
    subject: &str,
) -> Vec<SpanRecord> {
    let responder_loop = echo_once(responder, subject).await;
    let reply = requester
        .request(subject.to_owned(), "ping".into())
        .await
        .expect("request");
    assert_eq!(&reply.payload[..], b"echo: ping");
    assert_eq!(responder_loop.await.expect("responder").failed, 0);
    spans.wait_until(WAIT, |s| s.len() >= 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_forms_one_trace() {
    let spans = SpanCollector::new();
    let requester = service(&spans, "requester").await;
    let responder = service(&spans, "responder").await;
    let subject = unique("nats.rpc.echo");

    let spans = echo_round_trip(&spans, &requester, &responder, &subject).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let request = span(&spans, "requester", &format!("request {subject}"));
    let process = span(&spans, "responder", &format!("process {subject}"));
    let inbox = process
        .attribute_str("messaging.nats.message.reply_to")
        .expect("the request's reply subject")
        .to_owned();
    // Inboxes are temporary: the reply spans are named after the operation alone.
    let respond = span(&spans, "responder", "publish");
    let received = span(&spans, "requester", "process");
    assert_eq!(
        respond.attribute_str("messaging.destination.name"),
        Some(inbox.as_str())
    );
    assert_eq!(
        received.attribute_str("messaging.destination.name"),
        Some(inbox.as_str())
    );

    for s in [process, respond, received] {
        assert_eq!(
            s.trace_id, request.trace_id,
            "the round trip is one trace: {s:#?}"
        );
    }
    assert_eq!(request.parent_span_id, None);
    assert_eq!(process.parent_span_id.as_ref(), Some(&request.span_id));
    assert_eq!(respond.parent_span_id.as_ref(), Some(&process.span_id));
    assert_eq!(
        received.parent_span_id.as_ref(),
        Some(&respond.span_id),
        "the reply carried the responder's context"
    );

    assert_eq!(request.span_kind, Some(Kind::Producer));
    assert_eq!(
        request.attribute_str("messaging.operation.name"),
        Some("request")
    );
    assert_eq!(
        request.attribute_str("messaging.operation.type"),
        Some("send")
    );
    assert_eq!(request.status, Status::Ok);
    assert_eq!(respond.span_kind, Some(Kind::Producer));
    assert_eq!(
        respond.attribute("messaging.destination.temporary"),
        Some(&true.into())
    );
    assert_eq!(received.span_kind, Some(Kind::Consumer));
    assert_eq!(
        received.attribute("messaging.destination.temporary"),
        Some(&true.into())
    );
    assert_eq!(received.attribute("tracehop.context.missing"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_link_mode_the_reply_stays_under_the_request_and_links_the_responder() {
    let spans = SpanCollector::new();
    let requester = service(&spans, "requester")
        .await
        .parent_policy(ParentPolicy::Link);
    let responder = service(&spans, "responder").await;
    let subject = unique("nats.rpc.link");
    let spans = echo_round_trip(&spans, &requester, &responder, &subject).await;
    let request = span(&spans, "requester", &format!("request {subject}"));
    let respond = span(&spans, "responder", "publish");
    let received = span(&spans, "requester", "process");
    assert_eq!(received.trace_id, request.trace_id, "{spans:#?}");
    assert_eq!(received.parent_span_id.as_ref(), Some(&request.span_id));
    assert_eq!(received.links.len(), 1, "{received:#?}");
    assert_eq!(received.links[0].span_id, respond.span_id);
    assert_eq!(received.attribute("tracehop.context.missing"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_context_is_recorded_under_the_request() {
    let spans = SpanCollector::new();
    let requester = service(&spans, "requester").await;
    let plain = connect().await;
    let subject = unique("nats.rpc.plain");
    let mut requests = plain.subscribe(subject.clone()).await.expect("subscribe");
    round_trip(&plain).await.expect("round trip");
    let responder = tokio::spawn(async move {
        let request = requests.next().await.expect("a request");
        let has_context = request
            .headers
            .as_ref()
            .and_then(|h| h.get(TRACEPARENT))
            .is_some();
        plain
            .publish(request.reply.expect("reply subject"), "pong".into())
            .await
            .expect("reply");
        plain.flush().await.expect("flush");
        has_context
    });
    let reply = requester
        .request(subject.clone(), "ping".into())
        .await
        .expect("request");
    assert_eq!(&reply.payload[..], b"pong");
    assert!(
        responder.await.expect("responder"),
        "the request carried context"
    );

    let spans = spans.records();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let request = span(&spans, "requester", &format!("request {subject}"));
    let received = spans
        .iter()
        .find(|s| s.span_id != request.span_id)
        .expect("reply span");
    assert_eq!(received.trace_id, request.trace_id);
    assert_eq!(received.parent_span_id.as_ref(), Some(&request.span_id));
    assert_eq!(
        received.attribute("tracehop.context.missing"),
        Some(&true.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_ends_its_span_as_an_error() {
    let spans = SpanCollector::new();
    let requester = service(&spans, "requester").await;
    let subject = unique("nats.rpc.nobody");
    let err = requester
        .request(subject.clone(), "anyone?".into())
        .await
        .expect_err("no responders");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    let spans = spans.records();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].status, Status::Error);
    assert_eq!(spans[0].attribute_str("error.type"), Some("NoResponders"));

    // Responding to a message that has no reply subject is an error, not a panic.
    let message = async_nats::Message {
        subject: "x".into(),
        reply: None,
        payload: "y".into(),
        headers: None,
        status: None,
        description: None,
        length: 2,
    };
    let err = requester
        .respond(&message, "z".into())
        .await
        .expect_err("no reply subject");
    assert_eq!(
        err.kind(),
        async_nats::client::PublishErrorKind::InvalidSubject
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_of_two_yields_correct_parents() {
    // The server picks a member per message; publish (one at a time, each from its own
    // trace) until both members have had some, and check every message.
    const AT_LEAST: usize = 6;
    const AT_MOST: usize = 200;
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let subject = unique("nats.queue.jobs");
    let group = unique("workers");
    let stop = Stop::new();
    // Which worker handled which message, and in which trace (seen from inside the handler).
    let handled: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let mut loops = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let worker = service(&spans, name).await;
        let sub = worker
            .queue_subscribe(subject.clone(), group.clone())
            .await
            .expect("queue subscribe")
            .stop_on(&stop);
        assert_eq!(sub.queue_group(), Some(group.as_str()));
        ready(&worker).await;
        let handled = handled.clone();
        loops.push(tokio::spawn(sub.process(move |message| {
            let handled = handled.clone();
            async move {
                let trace_id =
                    Context::map_current(|cx| cx.span().span_context().trace_id().to_string());
                let body =
                    String::from_utf8(message.payload.to_vec()).map_err(|e| e.to_string())?;
                handled
                    .lock()
                    .unwrap()
                    .push((name.to_owned(), body, trace_id));
                Ok::<(), String>(())
            }
        })));
    }

    let tracer = producer.telemetry().provider().tracer("app");
    let process_name = format!("process {subject}");
    let mut published = 0;
    let both = |handled: &[(String, String, String)]| {
        ["worker-a", "worker-b"]
            .iter()
            .all(|w| handled.iter().any(|(h, ..)| h == w))
    };
    while published < AT_MOST && (published < AT_LEAST || !both(&handled.lock().unwrap())) {
        let cx = Context::current_with_span(tracer.start(format!("job-{published}")));
        producer
            .publish(subject.clone(), format!("job-{published}").into())
            .with_context(cx.clone())
            .await
            .expect("publish");
        cx.span().end();
        published += 1;
        spans
            .wait_until(WAIT, |s| named(s, &process_name).len() >= published)
            .await;
    }
    let spans = spans.records();
    stop.stop();
    let mut processed = 0;
    for l in loops {
        let done = l.await.expect("worker loop");
        assert_eq!(done.failed, 0);
        processed += done.messages;
    }
    assert_eq!(
        processed, published,
        "each message went to exactly one member"
    );

    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), published);
    assert!(
        both(&handled),
        "both members processed messages: {handled:?}"
    );
    let by_trace = |name: &str| -> HashMap<String, SpanRecord> {
        named(&spans, name)
            .into_iter()
            .map(|s| (s.trace_id.clone(), s.clone()))
            .collect()
    };
    let sends = by_trace(&format!("publish {subject}"));
    let processes = by_trace(&process_name);
    assert_eq!(sends.len(), published, "one trace per message");
    assert_eq!(processes.len(), published, "one process span per trace");
    for (worker, body, trace_id) in &handled {
        let root = span(&spans, "producer", body);
        assert_eq!(
            &root.trace_id, trace_id,
            "{body} was handled in its producer's trace"
        );
        let send = &sends[trace_id];
        let process = &processes[trace_id];
        assert_eq!(send.parent_span_id.as_ref(), Some(&root.span_id));
        assert_eq!(process.parent_span_id.as_ref(), Some(&send.span_id));
        assert_eq!(process.service_name.as_deref(), Some(worker.as_str()));
        assert_eq!(
            process.attribute_str("messaging.consumer.group.name"),
            Some(group.as_str())
        );
        assert_eq!(
            process.attribute_str("messaging.destination.template"),
            Some(subject.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_queue_member_leaves_the_rest_to_the_group() {
    const AT_MOST: usize = 200;
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let subject = unique("nats.queue.limit");
    let group = unique("workers");
    let handled: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = |name: &'static str| {
        let handled = handled.clone();
        move |message: async_nats::Message| {
            let handled = handled.clone();
            async move {
                let body = String::from_utf8_lossy(&message.payload).into_owned();
                handled.lock().unwrap().push((name.to_owned(), body));
                Ok::<(), String>(())
            }
        }
    };

    let a = service(&spans, "worker-a").await;
    let mut a_sub = a
        .queue_subscribe(subject.clone(), group.clone())
        .await
        .expect("queue subscribe")
        .limit(1);
    // The first step of the loop asks the server to stop after one message; nothing has
    // arrived yet.
    assert!(a_sub.next().now_or_never().is_none());
    ready(&a).await;
    let b = service(&spans, "worker-b").await;
    let stop = Stop::new();
    let b_sub = b
        .queue_subscribe(subject.clone(), group.clone())
        .await
        .expect("queue subscribe")
        .stop_on(&stop);
    ready(&b).await;
    // worker-a takes its one message and keeps its subscription open.
    let handle_a = record("worker-a");
    let a_task = tokio::spawn(async move {
        let delivery = a_sub.next().await.expect("a message");
        let outcome = delivery.span.run(handle_a(delivery.message)).await;
        delivery.span.end();
        outcome.expect("handler");
        assert!(a_sub.next().await.is_none(), "the limit is reached");
        a_sub
    });
    let b_loop = tokio::spawn(b_sub.process(record("worker-b")));

    // Publish one at a time until worker-a has had its one message, then five more.
    let process_name = format!("process {subject}");
    let mut published = 0;
    let mut after_a = 0;
    while published < AT_MOST && after_a < 5 {
        if handled.lock().unwrap().iter().any(|(w, _)| w == "worker-a") {
            after_a += 1;
        }
        producer
            .publish(subject.clone(), format!("job-{published}").into())
            .await
            .expect("publish");
        published += 1;
        spans
            .wait_until(WAIT, |s| named(s, &process_name).len() >= published)
            .await;
    }
    let _still_subscribed = a_task.await.expect("worker-a");
    stop.stop();
    let b_done = b_loop.await.expect("worker-b");
    assert_eq!(
        b_done.messages,
        published - 1,
        "worker-b got everything else"
    );
    let handled = handled.lock().unwrap().clone();
    let mut bodies: Vec<&str> = handled.iter().map(|(_, b)| b.as_str()).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        published,
        "no message was lost or handled twice: {handled:?}"
    );
}

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
    let traced = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(2);
    ready(&consumer).await;
    let got: Arc<Mutex<Vec<async_nats::Message>>> = Arc::default();
    let sink = got.clone();
    let traced_loop = tokio::spawn(traced.process(move |message| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(message);
            Ok::<(), String>(())
        }
    }));

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

    let done = traced_loop.await.expect("consumer");
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
    let sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(4);
    ready(&consumer).await;
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = bodies.clone();
    let consumer_loop = tokio::spawn(sub.process(move |message| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&message.payload).into_owned());
            Ok::<(), String>(())
        }
    }));

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

    let done = consumer_loop.await.expect("consumer");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_mode_starts_a_new_trace_linked_to_the_producer() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let consumer = service(&spans, "consumer")
        .await
        .parent_policy(ParentPolicy::Link);
    let subject = unique("nats.link");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe");
    ready(&consumer).await;
    producer
        .publish(subject.clone(), "untrusted".into())
        .await
        .expect("publish");
    let delivery = delivery(&mut sub, &producer, &consumer).await;
    let outcome: Result<(), String> = delivery.span.run(async { Ok(()) }).await;
    delivery.span.end();
    outcome.expect("handler");

    let spans = spans.records();
    let send = span(&spans, "producer", &format!("publish {subject}"));
    let process = span(&spans, "consumer", &format!("process {subject}"));
    assert_ne!(process.trace_id, send.trace_id);
    assert_eq!(process.parent_span_id, None);
    assert_eq!(process.links.len(), 1);
    assert_eq!(process.links[0].span_id, send.span_id);
    assert_eq!(process.links[0].trace_id, send.trace_id);
    assert_eq!(
        process.attribute("tracehop.context.linked"),
        Some(&true.into())
    );
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
        .expect("subscribe");
    ready(&consumer).await;

    producer
        .publish(subject.clone(), "payload".into())
        .await
        .expect("publish");
    let delivery = delivery(&mut sub, &producer, &consumer).await;
    delivery.span.end();
    let headers = delivery.message.headers.expect("headers");
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
    assert_eq!(&delivery.message.payload[..], b"payload");

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
        .expect("subscribe");
    ready(&consumer).await;

    // Exactly as large as the server allows: it fits alone, not with a traceparent.
    let max = producer.client().server_info().max_payload;
    producer
        .publish(subject.clone(), vec![b'x'; max].into())
        .await
        .expect("the publish still succeeds");
    let delivery = delivery(&mut sub, &producer, &consumer).await;
    delivery.span.end();
    assert_eq!(delivery.message.payload.len(), max);
    assert!(
        delivery.message.headers.is_none(),
        "sent as the user sent it"
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_live_once_round_trip_returns() {
    // Core NATS drops what nobody is subscribed to, and async-nats' `flush` does not wait
    // for the server: only a round trip makes "subscribe, then another connection
    // publishes at once" safe. Each subscription here gets exactly its one message.
    // The probe is answered by the server itself, so a connection that does not receive
    // its own messages can use it too.
    let no_echo = async_nats::ConnectOptions::new()
        .no_echo()
        .connect(nats_url())
        .await
        .expect("connect");
    round_trip(&no_echo).await.expect("round trip without echo");
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let consumer = service(&spans, "consumer").await;
    // A subscribe/flush/publish cycle lost ~3% of messages here; 200 cycles catch that.
    for i in 0..200 {
        let subject = unique("nats.roundtrip");
        let mut sub = consumer
            .subscribe(subject.clone())
            .await
            .expect("subscribe");
        consumer.round_trip().await.expect("round trip");
        producer
            .publish(subject.clone(), format!("message {i}").into())
            .await
            .expect("publish");
        let delivery = delivery(&mut sub, &producer, &consumer).await;
        delivery.span.end();
        assert_eq!(delivery.message.payload, format!("message {i}").as_bytes());
    }
    let spans = spans.records();
    // One publish and one process span per message, and no span for the probes.
    assert_eq!(spans.len(), 400);
    assert!(spans.iter().all(|s| !s
        .attribute_str("messaging.destination.name")
        .unwrap_or_default()
        .starts_with("_INBOX")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subscription_names_spans_after_its_pattern() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let consumer = service(&spans, "consumer").await;
    let base = unique("nats.wild");
    let pattern = format!("{base}.*");
    let mut sub = consumer
        .subscribe(pattern.clone())
        .await
        .expect("subscribe");
    ready(&consumer).await;
    for part in ["eu", "us"] {
        producer
            .publish(format!("{base}.{part}"), part.into())
            .await
            .expect("publish");
        let delivery = delivery(&mut sub, &producer, &consumer).await;
        delivery.span.end();
        assert_eq!(delivery.message.payload, part.as_bytes());
    }

    let spans = spans.records();
    let processes = named(&spans, &format!("process {pattern}"));
    assert_eq!(processes.len(), 2, "{spans:#?}");
    for part in ["eu", "us"] {
        let subject = format!("{base}.{part}");
        let process = processes
            .iter()
            .find(|p| p.attribute_str("messaging.destination.name") == Some(subject.as_str()))
            .unwrap_or_else(|| panic!("no process span for {subject}: {spans:#?}"));
        assert_eq!(
            process.attribute_str("messaging.destination.template"),
            Some(pattern.as_str())
        );
        let send = span(&spans, "producer", &format!("publish {subject}"));
        assert_eq!(process.parent_span_id.as_ref(), Some(&send.span_id));
    }
}
