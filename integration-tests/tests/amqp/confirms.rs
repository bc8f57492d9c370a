//! Publisher confirms: the send span ends with the broker's answer (ack, nack, returned),
//! and the caller of a publish knows the context the message carries.

use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Confirmation};
use tracehop::amqp::{header_text, TracedChannel};
use tracehop::journal::Status;
use tracehop::testing::Capture;
use tracehop_integration_tests::spans::{assert_child, one, text};
use tracehop_integration_tests::unique;

use super::{
    channel, collecting, confirm_channel, connect, declare_queue, delete_queues, finished,
    spawn_run, TestQueue,
};

#[tokio::test]
async fn publisher_confirms_end_send_spans_with_the_brokers_answer() {
    let capture = Capture::new();
    let producer = capture.service("producer");
    let connection = connect().await;
    let admin = channel(&connection).await;
    let queue = unique("bounded");
    // Room for one message; the broker nacks publishes beyond that.
    declare_queue(
        &admin,
        &queue,
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
        ],
    )
    .await;

    let publisher = TracedChannel::new(confirm_channel(&connection).await, producer.clone());
    let publish = |body: &'static [u8], routing_key: String, mandatory: bool| {
        let publisher = publisher.clone();
        async move {
            publisher
                .basic_publish(
                    "".into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    BasicProperties::default()
                        .with_message_id(String::from_utf8_lossy(body).into_owned().into()),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm")
        }
    };
    assert!(publish(b"fits", queue.clone(), false).await.is_ack());
    assert!(publish(b"overflows", queue.clone(), false).await.is_nack());
    let returned = publish(b"unroutable", unique("nowhere"), true).await;
    assert!(
        matches!(returned, Confirmation::Ack(Some(_))),
        "{returned:?}"
    );

    // Without confirms the span ends when the message is handed over.
    let unconfirmed = TracedChannel::new(channel(&connection).await, producer.clone());
    let answer = unconfirmed
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"no confirms",
            BasicProperties::default().with_message_id("no confirms".into()),
        )
        .await
        .expect("publish");
    let spans = capture.records();
    let by_id = |id: &str| {
        spans
            .iter()
            .find(|s| text(s, "messaging.message.id") == Some(id))
            .unwrap_or_else(|| panic!("no send span for {id}: {spans:#?}"))
    };
    assert_eq!(
        by_id("no confirms").status,
        Status::Ok,
        "ended before the answer"
    );
    assert!(matches!(answer.await, Ok(Confirmation::NotRequested)));

    assert_eq!(by_id("fits").status, Status::Ok);
    let nacked = by_id("overflows");
    assert_eq!(nacked.status, Status::Error);
    assert_eq!(text(nacked, "error.type"), Some("nack"));
    let unroutable = by_id("unroutable");
    assert_eq!(unroutable.status, Status::Error);
    assert_eq!(text(unroutable, "error.type"), Some("returned"));
    assert!(
        unroutable
            .error
            .as_deref()
            .is_some_and(|e| e.contains("312")),
        "{unroutable:#?}"
    );

    delete_queues(&admin, &[&queue]).await;
}

#[tokio::test]
async fn a_publish_tells_its_caller_the_context_the_message_carries() {
    let capture = Capture::new();
    let (producer, worker) = (capture.service("producer"), capture.service("worker"));
    let queue = TestQueue::declare("sent-context").await;

    let (collect, mut deliveries) = collecting();
    let worker_channel = queue.channel().await;
    let worker_consumer = queue.consumer(&worker_channel, &worker).await.limit(1);
    let worker_loop = spawn_run(worker_consumer, collect);

    let publisher = queue.publisher(&producer).await;
    let confirm = publisher
        .basic_publish(
            "".into(),
            queue.name.as_str().into(),
            BasicPublishOptions::default(),
            b"which trace?",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    // Known before the broker answers.
    let sent = confirm.span_context();
    {
        use opentelemetry::trace::TraceContextExt as _;
        assert_eq!(confirm.context().span().span_context(), &sent);
    }
    assert!(sent.is_valid());
    assert!(confirm.await.expect("confirm").is_ack());
    finished(worker_loop).await;

    let spans = capture.records();
    let send = one(&spans, "producer", "publish amq.default");
    let handled = one(&spans, "worker", &queue.process());
    assert_eq!(sent.trace_id().to_string(), send.trace_id);
    assert_eq!(sent.span_id().to_string(), send.span_id);
    assert_child(handled, send);
    let expected = format!("00-{}-{}-01", send.trace_id, send.span_id);
    let delivery = deliveries.recv().await.expect("delivery");
    assert_eq!(
        header_text(&delivery.properties, "traceparent"),
        Some(expected.as_str()),
        "the message carries that context"
    );

    queue.delete().await;
}
