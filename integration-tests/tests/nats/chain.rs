//! Core NATS hops: a chain of services is one trace, wildcard subscriptions name spans
//! after their pattern, link mode starts a new trace.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hop_chain_forms_one_trace() {
    let spans = SpanCollector::new();
    let gateway = service(&spans, "gateway").await;
    let runtime = service(&spans, "agent_runtime").await;
    let tool = service(&spans, "tool_service").await;
    let tasks = unique("nats.chain.tasks");
    let calls = unique("nats.chain.calls");

    let mut tool_sub = tool
        .subscribe(calls.clone())
        .await
        .expect("subscribe")
        .limit(1);
    ready(&tool).await;
    let tool_seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = tool_seen.clone();
    let tool_loop = tokio::spawn(async move {
        tool_sub
            .run(move |message| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(message.payload.to_vec());
                    Ok::<(), String>(())
                }
            })
            .await
    });

    let mut runtime_sub = runtime
        .subscribe(tasks.clone())
        .await
        .expect("subscribe")
        .limit(1);
    ready(&runtime).await;
    let forward = runtime.clone();
    let calls_subject = calls.clone();
    let runtime_loop = tokio::spawn(async move {
        runtime_sub
            .run(move |message| {
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
            })
            .await
    });

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

    let runtime_done = finish(runtime_loop, "runtime loop").await.expect("consume");
    let tool_done = finish(tool_loop, "tool loop").await.expect("consume");
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
        .expect("subscribe")
        .limit(2);
    ready(&consumer).await;
    for part in ["eu", "us"] {
        producer
            .publish(format!("{base}.{part}"), part.into())
            .await
            .expect("publish");
    }
    let messages = deliveries(&mut sub, &producer, &consumer).await;
    let payloads: Vec<&[u8]> = messages.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, [b"eu", b"us"]);

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
        .expect("subscribe")
        .limit(1);
    ready(&consumer).await;
    producer
        .publish(subject.clone(), "untrusted".into())
        .await
        .expect("publish");
    let message = delivery(&mut sub, &producer, &consumer).await;
    assert_eq!(&message.payload[..], b"untrusted");

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
