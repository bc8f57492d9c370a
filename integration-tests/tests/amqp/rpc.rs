//! Request/reply over direct reply-to: one trace there and back; the caller's span for
//! the reply is the core's reply span (`process`, temporary destination), with the same
//! fallback to the request span and the same link handling as NATS request/reply.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceContextExt as _;
use tokio::task::JoinHandle;
use tracehop::amqp::{RpcClient, RpcError, TracedChannel};
use tracehop::journal::{Kind, Status};
use tracehop::testing::Capture;
use tracehop::{ConsumeError, ParentPolicy, Summary, Telemetry};
use tracehop_integration_tests::spans::{assert_child, flag, links_to, one, root, text};
use tracehop_integration_tests::WAIT;

use super::{confirm_channel, finished, spawn_run, TestQueue};

/// A server on `queue` that answers one request with `pong: <request>`, through a traced
/// reply (`traced`) or a plain lapin publish that carries no context.
async fn pong_server(
    queue: &TestQueue,
    server: &Telemetry,
    traced: bool,
) -> JoinHandle<Result<Summary, ConsumeError<RpcError>>> {
    let server_channel = queue.channel().await;
    let replies = TracedChannel::new(server_channel.clone(), server.clone());
    let consumer = queue.consumer(&server_channel, server).await.limit(1);
    spawn_run(consumer, move |request| {
        let replies = replies.clone();
        async move {
            let mut body = b"pong: ".to_vec();
            body.extend_from_slice(&request.data);
            if traced {
                replies
                    .reply(&request, &body, BasicProperties::default())
                    .await?
                    .await?;
            } else {
                let properties = request
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map_or_else(BasicProperties::default, |id| {
                        BasicProperties::default().with_correlation_id(id.clone())
                    });
                let reply_to = request
                    .properties
                    .reply_to()
                    .clone()
                    .ok_or(RpcError::NoReplyTo)?;
                replies
                    .channel()
                    .basic_publish(
                        ShortString::default(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?
                    .await?;
            }
            Ok::<(), RpcError>(())
        }
    })
}

/// Call `queue` with `ping` inside a root span `checkout` of `client`, and the reply.
async fn ping(rpc: &RpcClient, client: &Telemetry, queue: &str) -> lapin::message::Delivery {
    let cx = root(client, "checkout");
    let reply = tokio::time::timeout(
        WAIT,
        rpc.call(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default(),
        )
        .with_context(cx.clone()),
    )
    .await
    .expect("reply in time")
    .expect("call");
    cx.span().end();
    assert_eq!(reply.data, b"pong: ping");
    reply
}

async fn rpc_client(connection: &Connection, client: &Telemetry) -> RpcClient {
    let ch: Channel = confirm_channel(connection).await;
    RpcClient::new(ch, client.clone())
        .await
        .expect("rpc client")
}

#[tokio::test]
async fn rpc_round_trip_is_one_trace() {
    let capture = Capture::new();
    let (client, server) = (capture.service("client"), capture.service("server"));
    let queue = TestQueue::declare("rpc").await;

    let server_loop = pong_server(&queue, &server, true).await;
    let rpc = rpc_client(&queue.connection, &client).await;
    let reply = ping(&rpc, &client, &queue.name).await;
    finished(server_loop).await;

    let spans = capture.records();
    let root = one(&spans, "client", "checkout");
    let request = one(&spans, "client", "publish amq.default");
    let handled = one(&spans, "server", &queue.process());
    let answer = one(&spans, "server", "publish amq.default");
    // The reply destination is temporary: the span is named after the operation alone.
    let answered = one(&spans, "client", "process");
    assert_child(request, root);
    assert_child(handled, request);
    assert_child(answer, handled);
    assert_child(answered, answer);
    capture.assert_one_trace();
    capture.assert_chain(&["client", "server", "client"]);

    let correlation = reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_owned())
        .expect("the reply carries the correlation id");
    for span in [request, handled, answer, answered] {
        assert_eq!(
            text(span, "messaging.message.conversation_id"),
            Some(correlation.as_str()),
            "{span:#?}"
        );
    }
    assert!(text(answer, "messaging.rabbitmq.destination.routing_key")
        .is_some_and(|rk| rk.starts_with("amq.rabbitmq.reply-to")));
    assert_eq!(answered.status, Status::Ok);
    assert_eq!(answered.span_kind, Some(Kind::Consumer));
    assert_eq!(
        flag(answered, "messaging.destination.temporary"),
        Some(true)
    );
    assert_eq!(text(answered, "messaging.system"), Some("rabbitmq"));

    queue.delete().await;
}

#[tokio::test]
async fn rpc_reply_without_context_is_recorded_under_the_request_span() {
    let capture = Capture::new();
    let (client, server) = (capture.service("client"), capture.service("server"));
    let queue = TestQueue::declare("rpc-bare").await;

    let server_loop = pong_server(&queue, &server, false).await;
    let rpc = rpc_client(&queue.connection, &client).await;
    ping(&rpc, &client, &queue.name).await;
    finished(server_loop).await;

    let spans = capture.records();
    let request = one(&spans, "client", "publish amq.default");
    let handled = one(&spans, "server", &queue.process());
    let answered = one(&spans, "client", "process");
    assert_child(handled, request);
    // The reply carried no context: the caller's reply span falls back to the request
    // span, and says why.
    assert_child(answered, request);
    assert_eq!(flag(answered, "tracehop.context.missing"), Some(true));
    assert_eq!(answered.status, Status::Ok);
    assert_eq!(
        flag(answered, "messaging.destination.temporary"),
        Some(true)
    );
    capture.assert_one_trace();

    queue.delete().await;
}

#[tokio::test]
async fn rpc_reply_in_link_mode_stays_under_the_request_and_links_to_the_responder() {
    let capture = Capture::new();
    let (client, server) = (capture.service("client"), capture.service("server"));
    let queue = TestQueue::declare("rpc-link").await;

    let server_loop = pong_server(&queue, &server, true).await;
    let rpc = rpc_client(&queue.connection, &client)
        .await
        .parent_policy(ParentPolicy::Link);
    ping(&rpc, &client, &queue.name).await;
    finished(server_loop).await;

    let spans = capture.records();
    let request = one(&spans, "client", "publish amq.default");
    let answer = one(&spans, "server", "publish amq.default");
    let answered = one(&spans, "client", "process");
    // The responder does not choose the caller's parent: the reply span is the request
    // span's child, linked to the responder's reply span.
    assert_child(answered, request);
    assert!(links_to(answered, answer), "{answered:#?}");
    assert_eq!(answered.links.len(), 1, "{answered:#?}");
    capture.assert_one_trace();

    queue.delete().await;
}
