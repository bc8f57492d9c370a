//! `record_baggage`: chosen baggage members become attributes of every span started in
//! their context, across a hop, and never from an untrusted producer (link mode).

use std::collections::HashMap;

use tracehop::context::{baggage, with_baggage};
use tracehop::{Incoming, Journal, Outgoing, ParentPolicy, SpanCollector, SpanRecord, Telemetry};

type Headers = HashMap<String, String>;

fn service(name: &str, spans: &SpanCollector) -> Telemetry {
    Telemetry::builder(name)
        .collector(spans)
        .record_baggage(["run.id", "tenant"])
        .build()
        .expect("telemetry")
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> &'a SpanRecord {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

/// A gateway sends inside `with_baggage` (run.id and an unrecorded member), a worker
/// processes the message and opens a span of its own in the handler.
async fn hop(policy: ParentPolicy) -> Vec<SpanRecord> {
    let spans = SpanCollector::new();
    let gateway = service("gateway", &spans);
    let worker = service("worker", &spans);
    let mut headers = Headers::new();
    let entries = [("run.id", "run-42"), ("user.secret", "not recorded")];
    with_baggage(entries, async {
        gateway
            .in_span("handle_request", async {
                gateway
                    .send_span(Outgoing::new("kafka", "tasks"), &mut headers)
                    .end();
            })
            .await;
    })
    .await;
    let process = worker.process_span(
        Incoming::new("kafka", "tasks").parent_policy(policy),
        &headers,
    );
    let seen = process
        .run(worker.in_span("plan", async { Ok::<_, String>(baggage("run.id")) }))
        .await;
    process.end();
    let expected = match policy {
        ParentPolicy::Link => None,
        _ => Some("run-42".to_owned()),
    };
    assert_eq!(seen, Ok(expected), "baggage the handler sees");
    spans.records()
}

#[tokio::test]
async fn every_span_of_a_run_records_its_run_id_across_the_hop() {
    let spans = hop(ParentPolicy::Child).await;
    for name in ["handle_request", "send tasks", "process tasks", "plan"] {
        let span = named(&spans, name);
        assert_eq!(span.attribute_str("run.id"), Some("run-42"), "{span:#?}");
        assert_eq!(span.attribute("user.secret"), None, "only the chosen keys");
        assert_eq!(
            span.attribute("tenant"),
            None,
            "a chosen key that is not there"
        );
    }
    let send = named(&spans, "send tasks");
    let process = named(&spans, "process tasks");
    assert_eq!(process.trace_id, send.trace_id);
    assert_eq!(
        process.parent_span_id.as_deref(),
        Some(send.span_id.as_str())
    );
    assert_eq!(
        named(&spans, "plan").parent_span_id,
        Some(process.span_id.clone())
    );
}

#[tokio::test]
async fn a_linked_consumer_records_none_of_an_untrusted_producers_baggage() {
    let spans = hop(ParentPolicy::Link).await;
    assert_eq!(
        named(&spans, "send tasks").attribute_str("run.id"),
        Some("run-42")
    );
    for name in ["process tasks", "plan"] {
        assert_eq!(named(&spans, name).attribute("run.id"), None, "{name}");
    }
}

#[tokio::test]
async fn spans_without_baggage_get_no_attribute_and_the_default_journal_still_applies() {
    let dir = std::env::temp_dir().join(format!("tracehop-baggage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("plain.jsonl");
    let _ = std::fs::remove_file(&path);
    // record_baggage is not an exporter: the journal given is the only one.
    let plain = Telemetry::builder("plain")
        .record_baggage(["run.id"])
        .journal(Journal::file(&path).expect("journal"))
        .build()
        .expect("telemetry");
    plain.in_span("no_baggage", async {}).await;
    with_baggage(
        [("run.id", "run-7")],
        plain.in_span("with_baggage", async {}),
    )
    .await;
    plain.shutdown().expect("shutdown");
    let lines = std::fs::read_to_string(&path).expect("journal");
    let records: Vec<SpanRecord> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a journal line"))
        .collect();
    assert_eq!(named(&records, "no_baggage").attribute("run.id"), None);
    assert_eq!(
        named(&records, "with_baggage").attribute_str("run.id"),
        Some("run-7")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
