//! Request-reply: the round trip is one trace; replies without context, link mode and
//! failed requests.

use super::*;

/// A responder on `subject` that answers one request with `echo: <payload>`, ready
/// before this returns.
async fn echo_once(
    responder: &TracedClient,
    subject: &str,
) -> tokio::task::JoinHandle<
    Result<tracehop::Summary, tracehop::ConsumeError<async_nats::client::PublishError>>,
> {
    let mut requests = responder
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe")
        .limit(1);
    ready(responder).await;
    let replier = responder.clone();
    tokio::spawn(async move {
        requests
            .run(move |request| {
                let replier = replier.clone();
                async move {
                    let mut answer = b"echo: ".to_vec();
                    answer.extend_from_slice(&request.payload);
                    replier.respond(&request, answer.into()).await
                }
            })
            .await
    })
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
    assert_eq!(
        responder_loop
            .await
            .expect("responder")
            .expect("consume")
            .failed,
        0
    );
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
    assert_eq!(spans[0].attribute_str("error.type"), Some("no_responders"));

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
