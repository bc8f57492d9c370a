//! Subscriptions: live once `round_trip` returns; a panicking handler; stop and drain.

use super::*;

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
            .expect("subscribe")
            .limit(1);
        consumer.round_trip().await.expect("round trip");
        producer
            .publish(subject.clone(), format!("message {i}").into())
            .await
            .expect("publish");
        let message = delivery(&mut sub, &producer, &consumer).await;
        assert_eq!(message.payload, format!("message {i}").as_bytes());
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
async fn a_panicking_handler_fails_one_message_and_the_subscription_goes_on() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let consumer = service(&spans, "consumer").await;
    let subject = unique("nats.panic");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .limit(4);
    ready(&consumer).await;
    for i in 0..4 {
        producer
            .publish(subject.clone(), format!("job-{i}").into())
            .await
            .expect("publish");
    }
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = handled.clone();
    let summary = within(
        sub.run(move |message| {
            let sink = sink.clone();
            async move {
                let body = String::from_utf8_lossy(&message.payload).into_owned();
                if body == "job-1" {
                    panic!("the tool returned garbage for {body}");
                }
                sink.lock().unwrap().push(body);
                Ok::<(), String>(())
            }
        }),
        &[
            ("producer", producer.client()),
            ("consumer", consumer.client()),
        ],
    )
    .await
    .expect("the loop ends normally at its limit");
    assert_eq!(
        (
            summary.messages,
            summary.succeeded,
            summary.failed,
            summary.panicked
        ),
        (4, 3, 1, 1)
    );
    assert_eq!(*handled.lock().unwrap(), ["job-0", "job-2", "job-3"]);

    let spans = spans.records();
    let processes = named(&spans, &format!("process {subject}"));
    assert_eq!(processes.len(), 4, "{spans:#?}");
    let sends = named(&spans, &format!("publish {subject}"));
    for (process, send) in processes.iter().zip(&sends) {
        assert_eq!(process.parent_span_id.as_ref(), Some(&send.span_id));
        // Core NATS delivers at most once: nothing to settle, nothing redelivered.
        assert_eq!(settlement(process), Some("none"));
    }
    let panicked = processes[1];
    assert_eq!(panicked.status, Status::Error);
    assert_eq!(panicked.attribute_str("error.type"), Some("panic"));
    assert_eq!(
        panicked.error.as_deref(),
        Some("the tool returned garbage for job-1")
    );
    assert!(processes
        .iter()
        .enumerate()
        .all(|(i, p)| i == 1 || p.status == Status::Ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_subscription_drains_what_reached_the_client_then_returns() {
    let spans = SpanCollector::new();
    let producer = service(&spans, "producer").await;
    let consumer = service(&spans, "consumer").await;
    let subject = unique("nats.drain");
    let stop = Stop::new();
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe")
        .stop_on(&stop);
    ready(&consumer).await;
    for i in 0..5 {
        producer
            .publish(subject.clone(), format!("job-{i}").into())
            .await
            .expect("publish");
    }
    // The five messages reach the consumer's connection before the stop fires.
    round_trip(producer.client()).await.expect("round trip");
    round_trip(consumer.client()).await.expect("round trip");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let signal = stop.clone();
    let summary = within(
        sub.run(move |message| {
            let sink = sink.clone();
            // Stop while handling the first message: the other four are drained.
            signal.stop();
            async move {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&message.payload).into_owned());
                Ok::<(), String>(())
            }
        }),
        &[
            ("producer", producer.client()),
            ("consumer", consumer.client()),
        ],
    )
    .await
    .expect("consume");
    assert_eq!(summary.messages, 5, "{summary:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        ["job-0", "job-1", "job-2", "job-3", "job-4"]
    );
    // The subscription is gone: a message published now reaches nobody.
    producer
        .publish(subject.clone(), "late".into())
        .await
        .expect("publish");
    round_trip(producer.client()).await.expect("round trip");
    let again = within(
        sub.run(|_message| async { Ok::<(), String>(()) }),
        &[("consumer", consumer.client())],
    )
    .await
    .expect("consume");
    assert_eq!(again.messages, 0);
    assert_eq!(
        named(&spans.records(), &format!("process {subject}")).len(),
        5
    );
}
