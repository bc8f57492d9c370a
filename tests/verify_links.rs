//! A consumer that follows OpenTelemetry's convention for messaging (a new trace per
//! message, a span that links the producer's send span) continues the producer's run:
//! `check` passes it, draws it with its producer, and hints what to do when the producer's
//! spans are missing.
//!
//! The fixtures in `tests/fixtures/otel_python/` were recorded from a real run: tracehop's
//! send spans (its own journal) and the spans of a confluent-kafka consumer instrumented
//! by OpenTelemetry Python (opentelemetry-instrumentation-confluent-kafka, from PyPI) as
//! OTLP JSON. `record_the_otel_python_fixtures` (ignored) records them again.

#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tracehop::verify::{self, CheckOptions, Rule, Traces};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/otel_python")
        .join(name)
}

const GATEWAY: &str = "gateway.jsonl";
const WORKER: &str = "python_worker.otlp.json";

fn tracehop(args: &[&str], files: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(args)
        .args(files.iter().map(|f| fixture(f)))
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn load(files: &[&str], options: &CheckOptions) -> (Traces, verify::Report) {
    let paths: Vec<PathBuf> = files.iter().map(|f| fixture(f)).collect();
    let input = verify::read_files(&paths).unwrap();
    assert!(input.malformed.is_empty(), "{:?}", input.malformed);
    let traces = Traces::from_spans(input.spans);
    let report = traces.check(options);
    (traces, report)
}

#[test]
fn the_python_consumers_traces_continue_the_gateways_run() {
    let (traces, report) = load(&[GATEWAY, WORKER], &CheckOptions::new().entry("gateway"));
    assert!(report.is_whole(), "{:#?}", report.findings);
    // The gateway's run, one trace per message the Python consumer polled, and a `recv`
    // trace for each poll that returned nothing (the instrumentation records those too).
    let empty_polls = traces
        .iter()
        .filter(|t| t.len() == 1 && t.roots().next().unwrap().operation() == Some("recv"))
        .count();
    assert_eq!(traces.len(), 4 + empty_polls);
    let continuations = traces.continuations();
    let runs = continuations.runs();
    assert_eq!(
        runs.len(),
        1 + empty_polls,
        "the messages' traces drawn together"
    );
    let gateway = &runs[0][0];
    assert_eq!(gateway.services(), ["gateway"]);
    let sends: Vec<String> = gateway
        .nodes()
        .filter(|n| n.is_send())
        .map(|n| n.span_id().to_string())
        .collect();
    assert_eq!(sends.len(), 3);
    for trace in &runs[0][1..] {
        assert_eq!(trace.services(), ["python_worker"]);
        let root = trace.roots().next().unwrap();
        assert_eq!(root.operation(), Some("recv"));
        assert!(root.is_consumer());
        // The link sits one level down, on `<topic> process`, with the instrumentation's
        // own attributes (not tracehop's).
        let (consumer, send) = continuations.continues(trace.index()).unwrap();
        assert_eq!(consumer.operation(), Some("agent.tasks process"));
        assert_eq!(consumer.depth(), 1);
        assert_eq!(consumer.destination(), Some("agent.tasks"));
        assert!(!consumer.context_linked());
        assert_eq!(send.trace().index(), gateway.index());
        assert!(sends.contains(&send.span_id().to_string()));
        // The handler's own span sits under the process span.
        let handler = consumer.children().next().unwrap();
        assert_eq!(handler.operation(), Some("handle_task"));
    }
    // Each message was consumed once.
    let mut linked: Vec<String> = runs[0][1..]
        .iter()
        .map(|t| {
            continuations
                .continues(t.index())
                .unwrap()
                .1
                .span_id()
                .to_string()
        })
        .collect();
    linked.sort();
    let mut sends = sends;
    sends.sort();
    assert_eq!(linked, sends);
}

#[test]
fn check_passes_and_the_tree_says_which_trace_each_continues() {
    let out = tracehop(
        &["check", "--tree", "--entry", "gateway", "--no-color"],
        &[GATEWAY, WORKER],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.matches("continues trace ").count(), 3, "{text}");
    assert!(
        text.contains("python_worker agent.tasks process (span "),
        "{text}"
    );
    assert!(text.contains(": whole\n"), "{text}");
    assert!(!text.contains("[split-trace]"), "{text}");
}

#[test]
fn without_the_producers_spans_the_hint_says_what_to_add() {
    let (_, report) = load(&[WORKER], &CheckOptions::default());
    assert_eq!(report.findings.len(), 3, "{:#?}", report.findings);
    for f in &report.findings {
        assert_eq!(f.rule, Rule::SplitTrace);
        assert!(f.message.contains("python_worker recv"), "{}", f.message);
        assert!(
            f.message.contains("which no input contains"),
            "{}",
            f.message
        );
        assert!(
            f.fix.contains(
                "add the journal (or OTLP file) of the service that sent to `agent.tasks`"
            ),
            "{}",
            f.fix
        );
        assert!(f.fix.contains("--entry"), "{}", f.fix);
    }
    // Naming the consumer as an entry point is the other way out.
    let (_, report) = load(&[WORKER], &CheckOptions::new().entry("python_worker"));
    assert!(report.is_whole(), "{:#?}", report.findings);
    let out = tracehop(&["check", "--entry", "python_worker"], &[WORKER]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn stats_count_the_pathway_through_the_link() {
    let out = tracehop(&["stats", "--json"], &[GATEWAY, WORKER]);
    assert_eq!(out.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pathways = value["pathways"].as_array().unwrap();
    assert_eq!(pathways.len(), 1, "{pathways:#?}");
    let p = &pathways[0];
    assert_eq!(p["producer"], "gateway");
    assert_eq!(p["destination"], "agent.tasks");
    assert_eq!(p["consumer"], "python_worker");
    assert_eq!(p["messages"], 3);
    assert_eq!(p["deliveries"], 3);
    assert_eq!(p["broken_context"], 0);
    assert_eq!(p["queue_time"]["count"], 3);
    assert!(p["processing_time"]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_view_draws_the_consumer_traces_with_their_producer() {
    let dir = std::env::temp_dir().join(format!("tracehop-links-view-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("run.html");
    let out = Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(["view", "-o"])
        .arg(&page)
        .arg(fixture(GATEWAY))
        .arg(fixture(WORKER))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let html = std::fs::read_to_string(&page).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let first_run = &html[html.find("<section class=\"run\"").unwrap()..];
    let first_run = &first_run[..first_run.find("</section>").unwrap()];
    assert_eq!(first_run.matches("class=\"trace-head\"").count(), 4);
    assert_eq!(first_run.matches("· continues trace ").count(), 3);
    assert_eq!(html.matches("· continues trace ").count(), 3);
    assert_eq!(html.matches(" data-links=\"").count(), 3);
}

/// Record the fixtures again: tracehop's send spans, then the Python consumer.
///
/// `cargo test --features cli --test verify_links -- --ignored record` with a Python
/// that has the packages `record.py` names (`TRACEHOP_PYTHON`, default `python3`).
#[test]
#[ignore = "records tests/fixtures/otel_python from a real run; needs Python and PyPI packages"]
fn record_the_otel_python_fixtures() {
    use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
    use std::collections::HashMap;
    use tracehop::{Journal, Outgoing, Telemetry};

    let dir = std::env::temp_dir().join(format!("tracehop-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join(GATEWAY);
    let gateway = Telemetry::builder("gateway")
        .journal(Journal::file(&journal).unwrap())
        .build()
        .unwrap();
    let root = gateway.provider().tracer("record").start("handle_request");
    let cx = opentelemetry::Context::current_with_span(root);
    let mut messages = Vec::new();
    for i in 1..=3 {
        let _attached = cx.clone().attach();
        let mut headers = HashMap::<String, String>::new();
        gateway
            .send_span(Outgoing::new("kafka", "agent.tasks"), &mut headers)
            .end();
        messages.push(serde_json::json!({
            "topic": "agent.tasks", "key": format!("run-{i}"),
            "value": format!("task {i}"), "headers": headers,
        }));
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    cx.span().end();
    gateway.shutdown().unwrap();
    let messages_path = dir.join("messages.json");
    std::fs::write(&messages_path, serde_json::to_string(&messages).unwrap()).unwrap();

    let otlp = dir.join(WORKER);
    let python = std::env::var("TRACEHOP_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(python)
        .arg(fixture("record.py"))
        .arg(&messages_path)
        .arg(&otlp)
        .status()
        .unwrap();
    assert!(status.success());

    let note = |what: &str| {
        serde_json::json!({
            "event": "fixture",
            "note": format!(
                "recorded from a real run by tests/verify_links.rs \
                 record_the_otel_python_fixtures: {what}"
            ),
        })
        .to_string()
    };
    let write = |name: &str, what: &str, body: String| {
        std::fs::write(fixture(name), format!("{}\n{body}", note(what))).unwrap();
    };
    write(
        GATEWAY,
        "tracehop's journal of the gateway's send spans (Telemetry::send_span)",
        std::fs::read_to_string(&journal).unwrap(),
    );
    write(
        WORKER,
        "OTLP JSON of a confluent-kafka consumer instrumented by OpenTelemetry Python \
         (opentelemetry-instrumentation-confluent-kafka), see record.py",
        std::fs::read_to_string(&otlp).unwrap(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
