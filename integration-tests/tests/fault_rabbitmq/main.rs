#![cfg(feature = "amqp")]
//! A RabbitMQ broker bounce, on the SHARED node (a second node cannot be started on these
//! machines): `rabbitmqctl stop_app` / `start_app` while a traced publisher (publisher
//! confirms) and a traced consumer run, with the reconnect recipe the README documents.
//!
//! It would break every other test using the node, so it is `#[ignore]`d in the normal
//! run, and `cargo xtask test` runs it alone, after the rest:
//! `cargo test --workspace --all-features --test fault_rabbitmq -- --ignored`. It refuses
//! to bounce the node while other clients are connected, and leaves the node running and
//! answering AMQP when it ends, pass or fail.

mod broker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::watch;
use tracehop::amqp::{TracedChannel, TracedConsumer};
use tracehop::testing::Capture;
use tracehop::{ConsumeError, Stop, Telemetry};
use tracehop_integration_tests::ledger::{self, Acked, Handlings};
use tracehop_integration_tests::{amqp_url, unique};

use broker::{Bounce, CONNECTION_NAME};

/// Messages published at least (the publisher goes on until it has been through the
/// bounce), and at most.
const MESSAGES: usize = 6_000;
const MAX_MESSAGES: usize = 200_000;
/// Publishes awaiting their confirm at once.
const WINDOW: usize = 64;
/// How long a client keeps trying to connect while the node is down.
const RECONNECT_WAIT: Duration = Duration::from_secs(90);
/// How long one attempt to connect (and set up a channel) may take.
const ATTEMPT_WAIT: Duration = Duration::from_secs(10);
/// How long the test waits for the consumer to catch up once publishing is done.
const CATCH_UP: Duration = Duration::from_secs(60);

/// What the consumer task is doing, step by step, and the state lapin gives its current
/// connection and channel, for a test that waited in vain.
#[derive(Default)]
struct Watch {
    notes: Vec<String>,
    statuses: Option<(lapin::ConnectionStatus, lapin::ChannelStatus)>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("notes", &self.notes)
            .field("connection", &self.statuses.as_ref().map(|s| &s.0))
            .field("channel", &self.statuses.as_ref().map(|s| &s.1))
            .finish()
    }
}

type Journal = Arc<Mutex<Watch>>;

/// How one run of the consumer's loop ended.
#[derive(Debug)]
enum LoopEnd {
    /// Stopped by the test.
    Stopped,
    /// Ended cleanly without being stopped (the broker cancelled the consumer, or the
    /// channel closed cleanly).
    Clean,
    /// `ConsumeError::Source`: the channel or connection failed.
    Source(String),
    /// `ConsumeError::Settle`: an ack could not be sent (the message comes back).
    Settle(String),
    /// Had not returned [`HANG_AFTER`] after lapin put its connection in an error state:
    /// the test gave up on it (what a user can only do with a watchdog like this one).
    Hung(String),
}

/// How long a loop may go on after its connection failed before the test calls it hung.
const HANG_AFTER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bounces the shared RabbitMQ node: `cargo xtask test` runs it alone, after the rest"]
async fn broker_bounce_loses_no_confirmed_message_and_the_consumer_ends_with_an_error() {
    let started = std::time::Instant::now();
    broker::wait_until_alone(Duration::from_secs(120)).await;
    let bounce = Bounce::new(started);
    let capture = Capture::new();
    let producer = capture.service("producer");
    let queue = unique("bounce");
    declare_durable_queue(&queue).await;
    let idle_queue = unique("bounce-idle");
    declare_durable_queue(&idle_queue).await;
    let idle_task = tokio::spawn(consume_idle(idle_queue.clone(), capture.service("idle")));

    let (confirmed_tx, confirmed_rx) = watch::channel(0usize);
    let handled = Handlings::default();
    let mut handled_rx = handled.watch();
    let stop = Stop::new();
    let journal = Journal::default();
    let consumer_task = tokio::spawn(consume(
        queue.clone(),
        capture.clone(),
        stop.clone(),
        handled.clone(),
        Arc::clone(&journal),
    ));
    let publisher_task = tokio::spawn(publish_all(queue.clone(), producer, confirmed_tx));

    // Mid-stream: after a third is confirmed and the consumer is at work.
    let mut confirmed = confirmed_rx.clone();
    confirmed
        .wait_for(|n| *n >= MESSAGES / 3)
        .await
        .expect("publisher running");
    handled_rx
        .wait_for(|n| *n > 0)
        .await
        .expect("consumer running");
    let others = tokio::task::spawn_blocking(broker::other_clients)
        .await
        .expect("rabbitmqctl task")
        .expect("list connections");
    assert!(
        others.is_empty(),
        "other clients connected since the test started; not bouncing the node under \
         them: {others:#?}"
    );
    eprintln!(
        "{:?}: bouncing after {} confirms, {} handled",
        started.elapsed(),
        *confirmed.borrow(),
        *handled_rx.borrow()
    );
    bounce.stop().await;
    // A consumer that was waiting for a delivery when its connection died.
    let idle_end = tokio::time::timeout(Duration::from_secs(30), idle_task).await;
    bounce.start().await;

    let (confirmed, publisher_connections) = publisher_task.await.expect("publisher task");
    eprintln!(
        "{:?}: published, {} confirmed, {publisher_connections} connections",
        started.elapsed(),
        confirmed.len()
    );
    if let Err(missing) = handled.wait_for_all(&confirmed, CATCH_UP).await {
        panic!(
            "{} confirmed messages not consumed within {CATCH_UP:?}, first: {:?}; \
             the queue: {}; {}; the consumer: {:#?}",
            missing.len(),
            &missing[..missing.len().min(20)],
            queue_state(&queue).await,
            spans_of_runs(&handled.runs(), &capture.records()),
            journal.lock().expect("consumer journal"),
        );
    }
    stop.stop();
    let ends = tokio::time::timeout(Duration::from_secs(30), consumer_task)
        .await
        .expect("the consumer returns once stopped")
        .expect("consumer task");
    eprintln!("{:?}: consumer loops ended: {ends:?}", started.elapsed());

    let handled = handled.runs();
    let spans = capture.records();
    delete_queue(&queue).await;
    delete_queue(&idle_queue).await;

    assert!(confirmed.len() >= MESSAGES * 9 / 10, "{}", confirmed.len());
    assert_eq!(
        ledger::missing(&confirmed, &handled),
        Vec::<usize>::new(),
        "confirmed messages lost"
    );
    ledger::check_runs(
        &confirmed,
        &handled,
        &spans,
        MAX_MESSAGES,
        (&format!("process {queue}"), "publish amq.default"),
    );
    assert!(publisher_connections >= 2, "the publisher reconnected");
    // The loop running when the node went down ended with an error the user can act
    // on (reconnect), not silently; the last was stopped by the test.
    match ends.first() {
        Some(LoopEnd::Source(e) | LoopEnd::Settle(e)) => eprintln!("first loop ended: {e}"),
        Some(LoopEnd::Hung(e)) => panic!(
            "the consume loop whose connection died hung (a library bug): {e}; a run whose \
             process span is still open is a delivery the loop was settling: the ack never \
             resolved"
        ),
        other => panic!("the loop whose connection died ended with {other:?}: {ends:?}"),
    }
    assert!(
        ends.len() >= 2 && matches!(ends.last(), Some(LoopEnd::Stopped)),
        "the consumer reconnected, then was stopped: {ends:?}"
    );
    match idle_end {
        Err(_) => panic!("a consumer waiting for a delivery hangs when its connection dies"),
        Ok(joined) => match joined.expect("idle consumer task") {
            LoopEnd::Source(e) => eprintln!("the idle loop ended: {e}"),
            other => panic!("the idle loop whose connection died ended with {other:?}"),
        },
    }
    eprintln!("{:?}: checked", started.elapsed());
    drop(bounce);
}

/// `attempt` (a new connection and what is set up on it), retried while the node is down
/// or coming back (up to [`RECONNECT_WAIT`]): the first step of the reconnect recipe.
async fn retrying<T, Fut>(role: &str, mut attempt: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = lapin::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + RECONNECT_WAIT;
    loop {
        // A node that is starting may take the connection and not answer.
        let failed = match tokio::time::timeout(ATTEMPT_WAIT, attempt()).await {
            Ok(Ok(done)) => return done,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {ATTEMPT_WAIT:?}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{role}: not connected within {RECONNECT_WAIT:?}: {failed}"
        );
        eprintln!("{role}: {failed}; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new connection, named as this test's.
async fn connect(role: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{CONNECTION_NAME}-{role}").into());
    Connection::connect(&amqp_url(), properties).await
}

/// A durable queue (it survives the bounce), removed after five idle minutes if the test
/// cannot delete it.
async fn declare_durable_queue(queue: &str) {
    let connection = retrying("admin", || connect("admin")).await;
    let channel = connection.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(300_000));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("queue_declare");
    close(connection, "declared").await;
}

async fn delete_queue(queue: &str) {
    let connection = retrying("admin", || connect("admin")).await;
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    close(connection, "done").await;
}

/// A traced publisher on a new connection, publisher confirms on.
async fn publisher(producer: &Telemetry) -> (Connection, TracedChannel) {
    retrying("publisher", || async {
        let connection = connect("publisher").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, TracedChannel::new(channel, producer.clone())))
    })
    .await
}

/// Publish messages, persistent, [`WINDOW`] at a time, awaiting the confirms of each
/// window, until at least [`MESSAGES`] are out and the publisher has been through the
/// outage (so the bounce always falls mid-stream, however fast the publisher). A publish
/// that fails or is not acked is not confirmed; after a window with a publish or confirm
/// error (lapin may still call a reset connection connected), drop the connection, open a
/// new one and a channel, and go on. Returns the confirmed messages and how many
/// connections it took.
async fn publish_all(
    queue: String,
    producer: Telemetry,
    confirmed_tx: watch::Sender<usize>,
) -> (HashMap<usize, Acked>, u32) {
    let (mut connection, mut channel) = publisher(&producer).await;
    let mut connections = 1;
    let mut confirmed = HashMap::new();
    let mut failed = 0usize;
    let mut next = 0;
    let mut broken = false;
    while next < MESSAGES || connections < 2 {
        assert!(
            next < MAX_MESSAGES,
            "the node did not go down while {MAX_MESSAGES} messages were published"
        );
        if broken {
            // Dropped, not closed: a close on a dead connection may never complete.
            (connection, channel) = publisher(&producer).await;
            connections += 1;
            broken = false;
        }
        let mut pending = Vec::new();
        for index in next..next + WINDOW {
            let body = index.to_string();
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(body.clone().into());
            match channel
                .basic_publish(
                    ShortString::default(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    properties,
                )
                .await
            {
                Ok(confirm) => pending.push((index, confirm.span_context(), confirm)),
                Err(_) => {
                    failed += 1;
                    broken = true;
                }
            }
        }
        next += WINDOW;
        let (sent, confirms): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .map(|(index, span, confirm)| ((index, span), confirm))
            .unzip();
        for ((index, span), answer) in sent.into_iter().zip(join_all(confirms).await) {
            match answer {
                Ok(confirmation) if confirmation.is_ack() => {
                    confirmed.insert(index, Acked::new(&span, None));
                    confirmed_tx.send_modify(|n| *n += 1);
                }
                // A nack: the broker is there, but did not take the message.
                Ok(_) => failed += 1,
                Err(_) => {
                    failed += 1;
                    broken = true;
                }
            }
        }
    }
    eprintln!("{next} published, {failed} not confirmed");
    close(connection, "published").await;
    (confirmed, connections)
}

/// The consumer, with the README's recipe: a new connection, channel and consumer each
/// time the loop ends with `ConsumeError::Source` (the channel or connection failed),
/// `ConsumeError::Settle` (an ack could not be sent) or cleanly without being stopped.
async fn consume(
    queue: String,
    capture: Capture,
    stop: Stop,
    handled: Handlings,
    journal: Journal,
) -> Vec<LoopEnd> {
    let worker = capture.service("worker");
    let note = |what: String| journal.lock().expect("consumer journal").notes.push(what);
    let mut ends = Vec::new();
    while !stop.is_stopped() {
        note(format!("connecting ({} loops ended)", ends.len()));
        let (connection, channel, consumer) =
            retrying("consumer", || subscribe("consumer", &queue)).await;
        journal.lock().expect("consumer journal").statuses =
            Some((connection.status().clone(), channel.status().clone()));
        note("consuming".to_owned());
        let mut traced = TracedConsumer::new(consumer, worker.clone()).stop_on(&stop);
        let run = traced.run(|delivery: Delivery| {
            handled.record(&delivery.data, None);
            async { Ok::<(), String>(()) }
        });
        let end = tokio::select! {
            ended = run => match ended {
                Ok(_) if stop.is_stopped() => LoopEnd::Stopped,
                other => loop_end(other),
            },
            failed_for = failed_connection(connection.status()) => LoopEnd::Hung(format!(
                "the loop had not returned {failed_for:?} after lapin said its connection \
                 failed ({:?}, {:?}); {}",
                connection.status(),
                channel.status(),
                spans_of_runs(&handled.runs(), &capture.records()),
            )),
        };
        eprintln!("consumer: loop ended: {end:?}");
        note(format!("loop ended: {end:?}"));
        // A connection that failed is dropped, not closed: the close may never complete.
        if matches!(end, LoopEnd::Stopped | LoopEnd::Clean) {
            close(connection, "consumer done").await;
        }
        ends.push(end);
    }
    ends
}

/// A consumer of an empty queue, waiting for a delivery when the node goes down: how its
/// loop ends.
async fn consume_idle(queue: String, telemetry: Telemetry) -> LoopEnd {
    let (_connection, _channel, consumer) = retrying("idle", || subscribe("idle", &queue)).await;
    let ended = TracedConsumer::new(consumer, telemetry)
        .run(|_delivery: Delivery| async { Err::<(), String>("the queue is empty".to_owned()) })
        .await;
    loop_end(ended)
}

/// Whether the process spans of the handler runs have ended (a span ends once its
/// delivery is settled): where a loop that stopped moving is stuck.
fn spans_of_runs(runs: &[ledger::Handled], spans: &[tracehop::SpanRecord]) -> String {
    let ended: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let open: Vec<_> = runs
        .iter()
        .filter(|run| !ended.contains(run.span_id.as_str()))
        .collect();
    format!(
        "{} handler runs, {} of them with their process span still open: {open:?}",
        runs.len(),
        open.len()
    )
}

/// The queue's ready messages and consumers, as the broker counts them.
async fn queue_state(queue: &str) -> String {
    let inspect = || async {
        let connection = connect("admin").await?;
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        close(connection, "inspected").await;
        Ok::<_, lapin::Error>(format!(
            "{} ready, {} consumers",
            declared.message_count(),
            declared.consumer_count()
        ))
    };
    match tokio::time::timeout(ATTEMPT_WAIT, inspect()).await {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => format!("not known: {e}"),
        Err(_) => "not known: no answer".to_owned(),
    }
}

/// A new connection, a channel with a prefetch of 100, and a consumer of `queue` on it.
async fn subscribe(
    role: &str,
    queue: &str,
) -> lapin::Result<(Connection, lapin::Channel, lapin::Consumer)> {
    let connection = connect(role).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            ShortString::default(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel, consumer))
}

/// Returns once `status` has not been connected for [`HANG_AFTER`] (how long it was).
async fn failed_connection(status: &lapin::ConnectionStatus) -> Duration {
    let mut since = None;
    loop {
        if status.connected() {
            since = None;
        } else {
            let failed_at = *since.get_or_insert_with(tokio::time::Instant::now);
            if failed_at.elapsed() >= HANG_AFTER {
                return failed_at.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a loop the test did not stop ended.
fn loop_end(ended: Result<tracehop::Summary, ConsumeError<String>>) -> LoopEnd {
    match ended {
        Ok(_) => LoopEnd::Clean,
        Err(e @ ConsumeError::Source(_)) => LoopEnd::Source(describe(&e)),
        Err(e @ ConsumeError::Settle { .. }) => LoopEnd::Settle(describe(&e)),
        Err(e) => panic!("the handler never fails on a message of this test: {e:?}"),
    }
}

/// The error and the client's error behind it (what a user would match on: a
/// `lapin::Error`, or tracehop's word that the channel closed before an ack).
fn describe(e: &ConsumeError<String>) -> String {
    let client = e
        .client_error()
        .unwrap_or_else(|| panic!("a source or settle error carries the client's: {e:?}"));
    match client.downcast_ref::<lapin::Error>() {
        Some(lapin_error) => format!("{e} (lapin: {lapin_error:?})"),
        None => format!("{e} (client: {client})"),
    }
}

/// Close `connection` if it is still open, waiting at most 5 s: lapin's `close` on a
/// connection the broker has reset can wait for a `close-ok` that never comes (its status
/// may still say connected).
async fn close(connection: Connection, reason: &str) {
    if !connection.status().connected() {
        return;
    }
    let closing = connection.close(200, reason.into());
    if tokio::time::timeout(Duration::from_secs(5), closing)
        .await
        .is_err()
    {
        eprintln!("closing a connection ({reason}) took more than 5 s; dropped");
    }
}
