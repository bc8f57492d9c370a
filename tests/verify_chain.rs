//! A real run through the core — three services, each writing its own journal file, over an
//! in-memory carrier, with a failed attempt forwarded to a retry destination and a batch
//! consumer — reads back as whole traces and renders the expected tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry::Context;
use tracehop::propagation::{self, ReadCarrier};
use tracehop::verify::{self, render, CheckOptions, RenderOptions, Rule, Traces};
use tracehop::{Incoming, Journal, Outgoing, Telemetry};

type Headers = HashMap<String, String>;

mod common;
use common::TempDir;

fn service(dir: &TempDir, name: &str) -> Telemetry {
    Telemetry::builder(name)
        .journal(Journal::file(dir.file(&format!("{name}.jsonl"))).unwrap())
        .build()
        .unwrap()
}

#[derive(Debug)]
struct ToolTimeout;
impl std::fmt::Display for ToolTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tool call timed out")
    }
}

/// Run gateway -> agent_runtime -> tool_service (attempt 1 fails and is forwarded to a
/// retry destination, attempt 2 succeeds), plus two events the runtime consumes as one
/// batch; return the journal files.
async fn run_chain(dir: &TempDir) -> Vec<PathBuf> {
    let gateway = service(dir, "gateway");
    let runtime = service(dir, "agent_runtime");
    let tool = service(dir, "tool_service");

    let root = gateway.provider().tracer("app").start("handle_request");
    let root_cx = Context::current_with_span(root);
    let mut to_runtime = Headers::new();
    let mut events = [Headers::new(), Headers::new()];
    {
        let _g = root_cx.clone().attach();
        gateway
            .send_span(Outgoing::new("kafka", "agent.tasks"), &mut to_runtime)
            .end();
        for e in &mut events {
            gateway.send_span(Outgoing::new("kafka", "events"), e).end();
        }
    }
    root_cx.span().end();

    let mut to_tool = Headers::new();
    let process = runtime.process_span(Incoming::new("kafka", "agent.tasks"), &to_runtime);
    let _: Result<(), ToolTimeout> = process
        .run(async {
            runtime
                .send_span(Outgoing::new("nats", "tool.calls"), &mut to_tool)
                .end();
            Ok(())
        })
        .await;
    process.end();

    // Attempt 1 fails; the message is forwarded to the retry destination from inside the
    // failed process span.
    let mut retry = Headers::new();
    let process = tool.process_span(Incoming::new("nats", "tool.calls").attempt(1), &to_tool);
    let outcome: Result<(), ToolTimeout> = process.run(async { Err(ToolTimeout) }).await;
    assert!(outcome.is_err());
    process.in_scope(|| {
        tool.send_span(Outgoing::new("nats", "tool.calls.retry"), &mut retry)
            .end()
    });
    retry.insert(propagation::ATTEMPT.to_owned(), "2".to_owned());
    process.end();

    let attempt = propagation::attempt(&retry).unwrap_or(1);
    let process = tool.process_span(
        Incoming::new("nats", "tool.calls.retry").attempt(attempt),
        &retry,
    );
    let _: Result<(), ToolTimeout> = process.run(async { Ok(()) }).await;
    process.end();

    // The runtime consumes both events as one batch.
    let carriers: Vec<&dyn ReadCarrier> = events.iter().map(|h| h as &dyn ReadCarrier).collect();
    let batch = runtime.batch_span(Incoming::new("kafka", "events"), carriers);
    for i in 0..batch.len() {
        let span = batch
            .message_span(i, Incoming::new("kafka", "events"))
            .unwrap();
        let _: Result<(), ToolTimeout> = span.run(async { Ok(()) }).await;
        span.end();
    }
    batch.end(0);

    for t in [&gateway, &runtime, &tool] {
        t.shutdown().unwrap();
    }
    ["tool_service", "gateway", "agent_runtime"]
        .iter()
        .map(|s| dir.file(&format!("{s}.jsonl")))
        .collect()
}

/// Replace ids (hex runs of 8 or more, keyed by their first 8 digits) by `#n` in order of
/// appearance, and durations by `<t>`, so a run renders the same every time.
fn normalize(text: &str) -> String {
    let mut labels: HashMap<String, usize> = HashMap::new();
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let boundary =
        |i: usize| i >= chars.len() || !(chars[i].is_ascii_alphanumeric() || chars[i] == '_');
    let mut i = 0;
    while i < chars.len() {
        let start_ok = i == 0 || boundary(i - 1);
        if start_ok {
            let hex = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_digit() || ('a'..='f').contains(*c))
                .count();
            if hex >= 8 && boundary(i + hex) {
                let key: String = chars[i..i + 8].iter().collect();
                let n = labels.len() + 1;
                let label = *labels.entry(key).or_insert(n);
                out.push_str(&format!("#{label}"));
                i += hex;
                continue;
            }
            let num = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == '.')
                .count();
            let unit = ["ms", "s"].into_iter().find_map(|unit| {
                let end = i + num + unit.len();
                let matches = num > 0
                    && end <= chars.len()
                    && chars[i + num..end].iter().copied().eq(unit.chars())
                    && boundary(end);
                matches.then_some(end)
            });
            if let Some(end) = unit {
                out.push_str("<t>");
                i = end;
                continue;
            }
        }
        if i < chars.len() {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test]
async fn journals_from_a_real_chain_check_whole_and_render_the_expected_tree() {
    let dir = TempDir::new("verify-chain");
    let files = run_chain(&dir).await;
    let input = verify::read_files(&files).unwrap();
    assert!(input.malformed.is_empty(), "{:?}", input.malformed);
    assert_eq!(input.spans.len(), 12);

    let traces = Traces::from_records(input.spans);
    let report = traces.check(&CheckOptions::new().entry("gateway"));
    assert!(report.is_whole(), "{:#?}", report.findings);
    assert_eq!(traces.len(), 2, "the run and the batch");
    assert_eq!(report.errors.len(), 1);
    assert_eq!(
        report.errors[0].service_name.as_deref(),
        Some("tool_service")
    );
    assert_eq!(report.errors[0].error_type.as_deref(), Some("tool_timeout"));

    // The services along the retried path, root to leaf.
    let run = traces.iter().next().unwrap();
    let leaf = run
        .nodes()
        .find(|n| n.operation() == Some("process tool.calls.retry"))
        .unwrap();
    let path: Vec<String> = run
        .ancestry(leaf.index())
        .iter()
        .map(|n| format!("{}/{}", n.service().unwrap(), n.operation().unwrap()))
        .collect();
    assert_eq!(
        path,
        [
            "gateway/handle_request",
            "gateway/send agent.tasks",
            "agent_runtime/process agent.tasks",
            "agent_runtime/send tool.calls",
            "tool_service/process tool.calls",
            "tool_service/send tool.calls.retry",
            "tool_service/process tool.calls.retry",
        ]
    );
    assert_eq!(run.summary().critical_path.len(), 7);

    // The tree lines and verdicts, with ids and times normalized; summary lines (which
    // depend on timing) are left out.
    let text = render::text(&traces, &report, &RenderOptions::plain());
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("trace_id:")
                || l.contains(" parent=")
                || l.starts_with("errors:")
                || (l.starts_with("  tool_service") && l.contains(" span "))
                || l.starts_with("continues trace")
                || l.starts_with("context")
                || l.contains(" traces, ")
        })
        .collect();
    let normalized = normalize(&kept.join("\n"));
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chain.tree.txt");
    if std::env::var_os("TRACEHOP_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, format!("{normalized}\n")).unwrap();
    }
    let expected = std::fs::read_to_string(&snapshot).unwrap();
    assert_eq!(
        normalized.trim_end(),
        expected.trim_end(),
        "\nfull output:\n{text}"
    );
}

#[cfg(feature = "cli")]
#[tokio::test]
async fn the_cli_checks_the_journals_of_a_real_chain() {
    let dir = TempDir::new("verify-chain-cli");
    let files = run_chain(&dir).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .arg("check")
        .args(["--entry", "gateway"])
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.ends_with("2 traces, 12 spans: whole, 1 failed span\n"),
        "{stdout}"
    );

    // Without the runtime's journal, the tool service's spans lose their parent.
    let without_runtime: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !f.ends_with("agent_runtime.jsonl"))
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .arg("check")
        .args(&without_runtime)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("[{}]", Rule::MissingParent)),
        "{stdout}"
    );
    assert!(
        stdout.contains("tool_service process tool.calls"),
        "{stdout}"
    );
}
