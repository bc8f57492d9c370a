//! `tracing` interoperates both ways: a send inside a user's `#[instrument]` span continues
//! its trace, and a user's `tracing` span inside a handler nests under the process span.

use std::collections::HashMap;

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use tracehop::{Incoming, Outgoing, SpanCollector, Telemetry};
use tracing::{instrument, Instrument as _};
use tracing_subscriber::layer::SubscriberExt;

type Headers = HashMap<String, String>;

#[instrument(skip_all)]
async fn handle_request(gateway: &Telemetry, headers: &mut Headers) {
    tokio::task::yield_now().await;
    gateway
        .send_span(Outgoing::new("kafka", "tasks"), headers)
        .end();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_spans_and_tracehop_spans_share_one_tree() {
    let spans = SpanCollector::new();
    let gateway = Telemetry::builder("gateway")
        .collector(&spans)
        .build()
        .expect("gateway");
    let worker = Telemetry::builder("worker")
        .collector(&spans)
        .build()
        .expect("worker");
    // The application's own subscriber exports through the gateway's provider.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(gateway.provider().tracer("app")));
    let _default = tracing::subscriber::set_default(subscriber);

    let mut headers = Headers::new();
    handle_request(&gateway, &mut headers).await;

    let process = worker.process_span(Incoming::new("kafka", "tasks"), &headers);
    let spawned = process
        .run(async {
            // A span the user opens inside the handler...
            async {
                // ...and work spawned from it the documented way keep the context.
                let handle = tokio::spawn(
                    async {
                        opentelemetry::Context::current()
                            .span()
                            .span_context()
                            .span_id()
                    }
                    .with_current_context(),
                );
                Ok::<_, String>(handle.await.ok())
            }
            .instrument(tracing::info_span!("call_llm"))
            .await
        })
        .await;
    process.end();
    drop(_default);

    let spans = spans.records();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.operation_name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
    };
    let request = find("handle_request");
    let send = find("send tasks");
    let proc = find("process tasks");
    let llm = find("call_llm");
    assert_eq!(send.parent_span_id.as_ref(), Some(&request.span_id));
    assert_eq!(send.trace_id, request.trace_id);
    assert_eq!(proc.parent_span_id.as_ref(), Some(&send.span_id));
    assert_eq!(llm.parent_span_id.as_ref(), Some(&proc.span_id));
    assert_eq!(llm.trace_id, request.trace_id);
    let spawned_saw = spawned.ok().flatten().map(|id| id.to_string());
    assert_eq!(
        spawned_saw.as_ref(),
        Some(&llm.span_id),
        "spawned task sees the current span"
    );
}
