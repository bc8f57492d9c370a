//! Each rule fires on a crafted journal and names the right spans; whole runs pass.

use std::path::PathBuf;
use std::time::Duration;

use tracehop::journal::{Kind, Status};
use tracehop::verify::{self, CheckOptions, Report, Rule, Traces};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(names: &[&str]) -> verify::Input {
    let paths: Vec<PathBuf> = names.iter().map(|n| fixture(n)).collect();
    verify::read_files(&paths).expect("fixtures are readable")
}

fn check(names: &[&str], options: &CheckOptions) -> (Traces, Report) {
    let input = read(names);
    assert!(input.malformed.is_empty(), "{:?}", input.malformed);
    let traces = Traces::from_records(input.spans);
    let report = traces.check(options);
    (traces, report)
}

/// (rule, trace, spans) of every finding.
fn found(report: &Report) -> Vec<(Rule, &str, Vec<&str>)> {
    report
        .findings
        .iter()
        .map(|f| {
            (
                f.rule,
                f.trace_id.as_str(),
                f.span_ids.iter().map(String::as_str).collect(),
            )
        })
        .collect()
}

const ARTICLE: [&str; 3] = [
    "article_tools.jsonl",
    "article_gateway.jsonl",
    "article_agent_runtime.jsonl",
];
const WHOLE: [&str; 3] = [
    "whole_worker.jsonl",
    "whole_tools.jsonl",
    "whole_gateway.jsonl",
];

#[test]
fn the_articles_run_from_three_files_is_one_whole_tree() {
    let (traces, report) = check(&ARTICLE, &CheckOptions::default());
    assert!(report.is_whole(), "{:#?}", report.findings);
    assert_eq!(traces.len(), 1);
    let trace = traces.get("tr_7a31").unwrap();
    let tree: Vec<(String, usize, Option<String>)> = trace
        .nodes()
        .map(|n| {
            (
                n.span_id().to_string(),
                n.depth(),
                n.parent().map(|p| p.span_id().to_string()),
            )
        })
        .collect();
    assert_eq!(
        tree.iter()
            .map(|(a, d, p)| (a.as_str(), *d, p.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("g1", 0, None),
            ("a1", 1, Some("g1")),
            ("t1", 2, Some("a1")),
            ("a2", 2, Some("a1")),
            ("l1", 3, Some("a2")),
        ]
    );

    let summary = trace.summary();
    assert_eq!(
        summary.slowest,
        Some(("l1".into(), Duration::from_millis(690)))
    );
    assert_eq!(summary.critical_path, ["g1", "a1", "a2", "l1"]);
    let self_times: Vec<(&str, u128)> = summary
        .service_times
        .iter()
        .map(|s| (s.service.as_str(), s.self_time.as_millis()))
        .collect();
    // a1 (240 ms) is covered 100..260 by t1 and a2, and 12.5 ms earlier by t1's wait in
    // the queue; a2 (130 ms) 200..280 by l1.
    assert_eq!(
        self_times,
        [
            ("llm_provider", 690),
            ("tool_service", 410),
            ("agent_runtime", 117),
            ("gateway", 18)
        ]
    );
    assert_eq!(summary.queue_time, Duration::from_micros(14_500));
    assert_eq!(
        summary.longest_queue,
        Some(("t1".into(), Duration::from_micros(12_500)))
    );
}

#[test]
fn the_articles_example_event_loads_as_it_stands_and_its_parent_is_missing() {
    let (traces, report) = check(&["article_event.jsonl"], &CheckOptions::default());
    let span = &traces.get("tr_7a31").unwrap().records()[0];
    assert_eq!(span.span_id, "sp_worker_02");
    assert_eq!(span.latency_ms, Some(410.0));
    assert_eq!(
        found(&report),
        [(Rule::MissingParent, "tr_7a31", vec!["sp_worker_02"])]
    );
    assert!(report.findings[0].message.contains("sp_gateway_01"));
}

#[test]
fn a_whole_run_with_retry_batch_and_trust_boundary_passes() {
    for options in [
        CheckOptions::default(),
        CheckOptions::new().entry("gateway"),
    ] {
        let (traces, report) = check(&WHOLE, &options);
        assert!(report.is_whole(), "{:#?}", report.findings);
        assert_eq!(traces.len(), 3, "main run, batch trace, linked trace");
        assert_eq!(report.spans, 9);
        // The failed first attempt is listed, apart from findings.
        assert_eq!(report.errors.len(), 1);
        let e = &report.errors[0];
        assert_eq!(e.span_id, "2222222222222222");
        assert_eq!(e.service_name.as_deref(), Some("worker"));
        assert_eq!(e.error_type.as_deref(), Some("ToolTimeout"));
        assert_eq!(e.error.as_deref(), Some("tool call timed out"));
    }
}

#[test]
fn a_missing_journal_shows_as_missing_parents() {
    // Without the gateway's journal, the worker's first process span has no parent.
    let (_, report) = check(&["whole_worker.jsonl"], &CheckOptions::default());
    assert_eq!(
        found(&report),
        [(
            Rule::MissingParent,
            "4bf92f3577b34da6a3ce929d0e0e4736",
            vec!["2222222222222222"]
        )]
    );
    assert!(
        report.findings[0].fix.contains("`jobs`"),
        "{}",
        report.findings[0].fix
    );
}

#[test]
fn split_trace_consumer_without_context() {
    let (_, report) = check(&["split_missing_context.jsonl"], &CheckOptions::default());
    assert_eq!(
        found(&report),
        [(
            Rule::SplitTrace,
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            vec!["b000000000000001"]
        )]
    );
    let f = &report.findings[0];
    assert!(
        f.message.contains("carried no trace context"),
        "{}",
        f.message
    );
    assert!(f.fix.contains("`tasks`"), "{}", f.fix);
}

#[test]
fn split_trace_consumer_root_from_another_tool() {
    let (_, report) = check(&["split_consumer_root.jsonl"], &CheckOptions::default());
    assert_eq!(
        found(&report),
        [(
            Rule::SplitTrace,
            "cccccccccccccccccccccccccccccccc",
            vec!["c000000000000001"]
        )]
    );
}

#[test]
fn split_trace_root_outside_the_entry_services() {
    let (_, report) = check(&["split_entry.jsonl"], &CheckOptions::default());
    assert!(
        report.is_whole(),
        "without entry services, any non-consumer root may start a run"
    );

    let (_, report) = check(
        &["split_entry.jsonl"],
        &CheckOptions::new().entry("gateway"),
    );
    assert_eq!(
        found(&report),
        [(
            Rule::SplitTrace,
            "2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b",
            vec!["2b00000000000001"]
        )]
    );
    assert!(report.findings[0]
        .message
        .contains("scheduler is not an entry point"));

    let both = CheckOptions::new().entry("gateway").entry("scheduler");
    assert!(check(&["split_entry.jsonl"], &both).1.is_whole());
}

#[test]
fn missing_parents_grouped_by_the_parent_that_is_missing() {
    let (traces, report) = check(&["missing_parent.jsonl"], &CheckOptions::default());
    let t = "dddddddddddddddddddddddddddddddd";
    assert_eq!(
        found(&report),
        [
            (
                Rule::MissingParent,
                t,
                vec!["d000000000000004", "d000000000000005"]
            ),
            (Rule::MissingParent, t, vec!["d000000000000007"]),
        ]
    );
    assert!(report.findings[0].message.contains("9999999999999999"));
    assert!(report.findings[0].fix.contains("`tool.calls`"));
    assert!(report.findings[1].message.contains("8888888888888888"));
    // The orphan's own child hangs under it, not at the top.
    let trace = traces.get(t).unwrap();
    assert_eq!(trace.find("d000000000000006").unwrap().depth(), 1);
}

#[test]
fn flat_trace_names_every_root() {
    let (_, report) = check(&["flat.jsonl"], &CheckOptions::new().entry("gateway"));
    assert_eq!(
        found(&report),
        [(Rule::FlatTrace, "tr_flat", vec!["f1", "f2", "f3"])]
    );
    assert!(report.findings[0]
        .message
        .contains("across services agent_runtime, gateway, tool_service"));
}

#[test]
fn spans_without_names() {
    let (_, report) = check(&["missing_name.jsonl"], &CheckOptions::default());
    assert_eq!(
        found(&report),
        [
            (Rule::MissingName, "tr_names", vec!["n2"]),
            (Rule::MissingName, "tr_names", vec!["n3", "n4"]),
        ]
    );
    assert!(report.findings[0].message.contains("service_name"));
    assert!(report.findings[1].message.contains("operation_name"));
}

#[test]
fn rejected_context_names_the_consumer_and_the_reason() {
    let (_, report) = check(&["rejected.jsonl"], &CheckOptions::default());
    assert_eq!(
        found(&report),
        [(
            Rule::RejectedContext,
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
            vec!["e000000000000001"]
        )],
        "a rejected consumer root is reported once, as rejected, not also as split"
    );
    assert!(report.findings[0]
        .message
        .contains("traceparent has uppercase hex"));
}

#[test]
fn corrupt_parent_loops_are_reported() {
    let (traces, report) = check(&["cycle.jsonl"], &CheckOptions::default());
    assert_eq!(
        found(&report),
        [(Rule::MissingParent, "tr_loop", vec!["x2"])]
    );
    assert_eq!(traces.get("tr_loop").unwrap().nodes().count(), 3);
}

#[test]
fn malformed_lines_are_counted_with_file_and_line_not_fatal() {
    let input = read(&["malformed.jsonl"]);
    assert_eq!(input.spans.len(), 2);
    assert_eq!(input.skipped, 1, "the span_started event");
    let lines: Vec<(String, usize)> = input
        .malformed
        .iter()
        .map(|m| {
            (
                PathBuf::from(&m.source)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                m.line,
            )
        })
        .collect();
    let want = |l| ("malformed.jsonl".to_owned(), l);
    assert_eq!(lines, [want(2), want(3), want(7)]);
    let traces = Traces::from_records(input.spans);
    assert!(traces.check(&CheckOptions::default()).is_whole());
}

#[test]
fn otlp_json_from_the_collector_file_exporter_stitches_with_other_inputs() {
    let input = read(&["otlp_pretty.json", "otlp_collector.json"]);
    assert_eq!(input.spans.len(), 4);
    assert_eq!(input.malformed.len(), 1, "the span without a trace id");
    assert_eq!(input.malformed[0].line, 3);
    assert!(input.malformed[0].error.contains("traceId"));

    let traces = Traces::from_records(input.spans);
    let report = traces.check(&CheckOptions::new().entry("gateway"));
    assert!(report.is_whole(), "{:#?}", report.findings);
    let trace = traces.get("5b8efff798038103d269b633813fc60c").unwrap();
    let chain: Vec<(&str, String)> = trace
        .ancestry(trace.find("bbb19b7ec3c1b177").unwrap().index())
        .iter()
        .map(|n| (n.service().unwrap(), n.span_id().to_string()))
        .collect();
    assert_eq!(
        chain
            .iter()
            .map(|(a, b)| (*a, b.as_str()))
            .collect::<Vec<_>>(),
        [
            ("gateway", "eee19b7ec3c1b174"),
            ("gateway", "eee19b7ec3c1b175"),
            ("worker", "aaa19b7ec3c1b176"),
            ("tool_service", "bbb19b7ec3c1b177"),
        ]
    );
    let worker = trace.find("aaa19b7ec3c1b176").unwrap().record();
    assert_eq!(worker.span_kind, Some(Kind::Consumer));
    assert_eq!(worker.status, Status::Error);
    assert_eq!(worker.error.as_deref(), Some("tool call timed out"));
    assert_eq!(worker.attribute("messaging.kafka.offset"), Some(&42.into()));
    assert_eq!(worker.duration(), Some(Duration::from_millis(40)));
    let tool = trace.find("bbb19b7ec3c1b177").unwrap().record();
    assert_eq!(tool.links[0].span_id, "eee19b7ec3c1b174");
    assert_eq!(report.errors.len(), 1);
}

#[test]
fn the_same_journal_given_twice_is_counted_once() {
    let (traces, report) = check(
        &["article_gateway.jsonl", "article_gateway.jsonl"],
        &CheckOptions::default(),
    );
    assert_eq!(traces.span_count(), 1);
    assert_eq!(traces.duplicates(), 1);
    assert!(report.is_whole());
}
