//! Queue groups: every message is handled once, under its own producer's span; a limited
//! member leaves the rest to the group.

use futures_util::FutureExt as _;

use super::*;

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
        let mut sub = worker
            .queue_subscribe(subject.clone(), group.clone())
            .await
            .expect("queue subscribe")
            .stop_on(&stop);
        assert_eq!(sub.queue_group(), Some(group.as_str()));
        ready(&worker).await;
        let handled = handled.clone();
        loops.push(tokio::spawn(async move {
            sub.run(move |message| {
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
            })
            .await
        }));
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
        let done = finish(l, "worker loop").await.expect("consume");
        assert_eq!(done.failed, 0);
        processed += done.messages;
    }
    assert_eq!(
        processed, published as u64,
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
    // worker-a takes its one message and keeps its subscription open. The first step of
    // its loop asks the server to stop after one message (nothing has arrived yet); the
    // round trip makes sure the server has read that before anything is published.
    let handle_a = record("worker-a");
    let mut a_task = Box::pin(async move {
        let summary = a_sub.run(handle_a).await;
        (summary, a_sub)
    });
    assert!((&mut a_task).now_or_never().is_none());
    ready(&a).await;
    let a_task = tokio::spawn(a_task);
    let b = service(&spans, "worker-b").await;
    let stop = Stop::new();
    let mut b_sub = b
        .queue_subscribe(subject.clone(), group.clone())
        .await
        .expect("queue subscribe")
        .stop_on(&stop);
    ready(&b).await;
    let handle_b = record("worker-b");
    let b_loop = tokio::spawn(async move { b_sub.run(handle_b).await });

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
    let (a_done, _still_subscribed) = finish(a_task, "worker-a").await;
    let a_done = a_done.expect("consume");
    assert_eq!(
        (a_done.messages, a_done.failed),
        (1, 0),
        "the limit is reached"
    );
    stop.stop();
    let b_done = finish(b_loop, "worker-b").await.expect("consume");
    assert_eq!(
        b_done.messages,
        published as u64 - 1,
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
