//! What a consume loop does when its server goes away. Through a restart it waits and
//! resumes (async-nats reconnects and subscribes again), but it must say so: an outage is
//! an error it recovers from (logged, counted in `Summary::source_errors`), not silence.
//! When the client gives up reconnecting (`max_reconnects`), the loop must end with
//! `ConsumeError::Source`, not as if it had been unsubscribed, and never hang.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, stream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracehop::nats::{TracedClient, TracedJetStream};
use tracehop::testing::Capture;
use tracehop::{ConsumeError, Stop, Summary};
use tracehop_integration_tests::nats_server::{NatsServer, Signal};
use tracehop_integration_tests::spans::{assert_child, one};
use tracehop_integration_tests::WAIT;

use super::{connect, options, wait_state, watched_options};

/// How long a loop may take to end once its client has given up, or once it is stopped.
const END_WITHIN: Duration = Duration::from_secs(20);

type Loop = JoinHandle<Result<Summary, ConsumeError<String>>>;

/// A client that gives up after two failed reconnect attempts (a few milliseconds once
/// the server is gone).
async fn giving_up_client(url: &str, name: &str) -> async_nats::Client {
    options(name)
        .max_reconnects(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{name}: connecting to {url}: {e}"))
}

/// The loop's result, or a failure saying it hung.
async fn ended(task: Loop, what: &str) -> Result<Summary, ConsumeError<String>> {
    match tokio::time::timeout(END_WITHIN, task).await {
        Ok(joined) => joined.expect("the loop's task"),
        Err(_) => panic!("{what}: the loop has not ended within {END_WITHIN:?}: it hangs"),
    }
}

/// The loop ended with [`ConsumeError::Source`]; anything else is the silent end the
/// user cannot tell from an unsubscribe or a cancel.
#[track_caller]
fn assert_source_error(ended: Result<Summary, ConsumeError<String>>, what: &str) {
    match ended {
        Err(ConsumeError::Source(e)) => eprintln!("{what}: ended with: {e}"),
        Ok(summary) => panic!(
            "{what}: its client gave up reconnecting, yet the loop ended cleanly, as after \
             an unsubscribe ({summary:?}): the user is not told the connection is gone"
        ),
        Err(e) => panic!("{what}: expected ConsumeError::Source, got {e:?}"),
    }
}

/// Subscribe `consumer` to `subject` (confirmed by a round trip) and run the loop in a
/// task, handing each message to `received`, until `stop` fires.
async fn spawn_subscriber(
    consumer: &TracedClient,
    subject: &'static str,
    stop: &Stop,
    received: mpsc::UnboundedSender<async_nats::Message>,
) -> Loop {
    let mut subscriber = consumer
        .subscribe(subject)
        .await
        .expect("subscribe")
        .stop_on(stop);
    consumer.round_trip().await.expect("round trip");
    tokio::spawn(async move {
        subscriber
            .run(move |message: async_nats::Message| {
                let _ = received.send(message);
                async { Ok(()) }
            })
            .await
    })
}

#[tokio::test]
async fn core_subscriber_waits_through_a_server_restart_and_resumes() {
    let mut server = NatsServer::start().await;
    let capture = Capture::new();
    let producer = TracedClient::new(
        connect(&server.url(), "producer").await,
        capture.service("producer"),
    );
    let consumer = TracedClient::new(
        connect(&server.url(), "consumer").await,
        capture.service("consumer"),
    );
    let stop = Stop::new();
    let (tx, mut received) = mpsc::unbounded_channel();
    let task = spawn_subscriber(&consumer, "restarts", &stop, tx).await;

    producer
        .publish("restarts", "before".into())
        .await
        .expect("publish");
    let got = tokio::time::timeout(WAIT, received.recv()).await;
    let got = got.ok().flatten().map(|m| m.payload);
    assert_eq!(got.as_deref(), Some(&b"before"[..]));

    server.stop(Signal::Kill).await;
    let clients = [
        ("producer", producer.client()),
        ("consumer", consumer.client()),
    ];
    wait_state(&clients, State::Disconnected).await;
    assert!(
        !task.is_finished(),
        "the loop waits while its client reconnects"
    );
    server.restart().await;
    wait_state(&clients, State::Connected).await;
    // The client subscribes again first thing after reconnecting; the round trip
    // confirms the server has it.
    consumer.round_trip().await.expect("round trip");

    let sent = producer
        .publish("restarts", "after".into())
        .await
        .expect("publish");
    let got = tokio::time::timeout(WAIT, received.recv()).await;
    let got = got.ok().flatten().map(|m| m.payload);
    assert_eq!(got.as_deref(), Some(&b"after"[..]));

    stop.stop();
    let summary = ended(task, "stopped subscriber").await.expect("clean stop");
    assert_eq!((summary.messages, summary.succeeded), (2, 2), "{summary:?}");
    let spans = capture.records();
    let sends: Vec<_> = spans
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some("publish restarts"))
        .collect();
    let after = sends
        .iter()
        .find(|s| s.span_id == sent.span_context().span_id().to_string())
        .expect("the send span of the message after the restart");
    let processed: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(after.span_id.as_str()))
        .collect();
    assert_eq!(processed.len(), 1, "{spans:#?}");
    assert_child(processed[0], after);
}

#[tokio::test]
async fn core_subscriber_reports_an_outage_it_waits_through() {
    let mut server = NatsServer::start().await;
    let capture = Capture::new();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let client = watched_options("consumer", Some(events_tx))
        .connect(server.url())
        .await
        .expect("connect");
    let consumer = TracedClient::new(client, capture.service("consumer"));
    let stop = Stop::new();
    let task = spawn_subscriber(&consumer, "outage", &stop, mpsc::unbounded_channel().0).await;

    server.stop(Signal::Kill).await;
    // The client has noticed, and tried and failed to reconnect twice.
    let mut failed_reconnects = 0;
    while failed_reconnects < 2 {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("client events while the server is down")
            .expect("the client's event callback");
        if event.starts_with("client error") {
            failed_reconnects += 1;
        }
    }
    // Outages shorter than the loop's connection check (1 s) are the client's to report
    // (its event callback); one that lasts longer must reach the loop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.restart().await;
    wait_state(&[("consumer", consumer.client())], State::Connected).await;
    stop.stop();
    let summary = ended(task, "stopped subscriber").await.expect("clean stop");
    assert!(
        summary.source_errors >= 1,
        "the loop waited through an outage without a word: no error logged or counted \
         ({summary:?}); a consumer whose server is gone for good hangs silently"
    );
}

#[tokio::test]
async fn core_subscriber_ends_with_an_error_when_its_client_gives_up_reconnecting() {
    let mut server = NatsServer::start().await;
    let capture = Capture::new();
    let consumer = TracedClient::new(
        giving_up_client(&server.url(), "consumer").await,
        capture.service("consumer"),
    );
    let task = spawn_subscriber(&consumer, "gone", &Stop::new(), mpsc::unbounded_channel().0).await;

    server.stop(Signal::Kill).await;
    assert_source_error(ended(task, "core subscriber").await, "core subscriber");
}

#[tokio::test]
async fn jetstream_loop_ends_with_an_error_when_its_client_gives_up_reconnecting() {
    let mut server = NatsServer::start().await;
    let capture = Capture::new();
    let url = server.url();
    let producer = TracedJetStream::new(
        jetstream::new(connect(&url, "producer").await),
        capture.service("producer"),
    );
    let js = TracedJetStream::new(
        jetstream::new(giving_up_client(&url, "consumer").await),
        capture.service("consumer"),
    );
    let stream = js
        .context()
        .create_stream(stream::Config {
            name: "GONE".to_owned(),
            subjects: vec!["gone".to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("worker".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("pull consumer");
    let sent = producer
        .publish("gone", "first".into())
        .await
        .expect("publish");
    let (tx, mut received) = mpsc::unbounded_channel();
    let mut traced = js.messages(consumer.messages().await.expect("messages"));
    let task: Loop = tokio::spawn(async move {
        traced
            .run(move |message: jetstream::Message| {
                let _ = tx.send(message.payload.clone());
                async { Ok(()) }
            })
            .await
    });
    let got = tokio::time::timeout(WAIT, received.recv()).await;
    assert_eq!(got.ok().flatten().as_deref(), Some(&b"first"[..]));
    let spans = capture
        .wait_until(WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.operation_name.as_deref() == Some("process gone"))
        })
        .await;
    let send = one(&spans, "producer", "publish gone");
    assert_eq!(send.span_id, sent.span_context().span_id().to_string());
    assert_child(one(&spans, "consumer", "process gone"), send);

    server.stop(Signal::Kill).await;
    assert_source_error(ended(task, "JetStream loop").await, "JetStream loop");
}
