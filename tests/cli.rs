//! The `tracehop` binary: exit codes, standard input, unreadable files, JSON output.
#![cfg(feature = "cli")]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn tracehop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run tracehop")
}

fn tracehop_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tracehop");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_exits_0_for_whole_traces() {
    let out = tracehop(&[
        "check",
        "--entry",
        "gateway",
        &fixture("whole_gateway.jsonl"),
        &fixture("whole_worker.jsonl"),
        &fixture("whole_tools.jsonl"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with("3 traces, 9 spans: whole, 1 failed span\n"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("[failed span] trace 4bf92f3577b34da6a3ce929d0e0e4736: worker process jobs"),
        "{stdout}"
    );
    assert!(!stdout.contains('\x1b'), "no colour when not on a terminal");
}

#[test]
fn check_exits_1_for_each_broken_fixture_and_names_the_spans() {
    for (file, rule, span) in [
        (
            "split_missing_context.jsonl",
            "split-trace",
            "b000000000000001",
        ),
        (
            "split_consumer_root.jsonl",
            "split-trace",
            "c000000000000001",
        ),
        ("missing_parent.jsonl", "missing-parent", "d000000000000004"),
        ("flat.jsonl", "flat-trace", "f2"),
        ("missing_name.jsonl", "missing-name", "n2"),
        ("rejected.jsonl", "rejected-context", "e000000000000001"),
        ("article_event.jsonl", "missing-parent", "sp_worker_02"),
    ] {
        let out = tracehop(&["check", &fixture(file)]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{file}: {stdout}");
        assert!(stdout.contains(&format!("[{rule}]")), "{file}: {stdout}");
        assert!(
            stdout.contains(&format!("(span {span})")),
            "{file}: {stdout}"
        );
        assert!(stdout.contains("  fix: "), "{file}: {stdout}");
    }
}

#[test]
fn entry_services_decide_where_runs_may_start() {
    let file = fixture("split_entry.jsonl");
    assert_eq!(tracehop(&["check", &file]).status.code(), Some(0));
    let out = tracehop(&["check", "--entry", "gateway", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("scheduler is not an entry point"));
    let out = tracehop(&["check", "--entry", "gateway", "--entry", "scheduler", &file]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn tree_draws_the_articles_run_from_three_files() {
    let out = tracehop(&[
        "tree",
        &fixture("article_tools.jsonl"),
        &fixture("article_gateway.jsonl"),
        &fixture("article_agent_runtime.jsonl"),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let expected = std::fs::read_to_string(fixture("article.tree.txt")).unwrap();
    assert_eq!(text(&out.stdout), expected);
}

#[test]
fn tree_exits_0_even_when_traces_are_broken() {
    let out = tracehop(&["tree", &fixture("flat.jsonl")]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("[flat-trace]"));
}

#[test]
fn standard_input_is_read_with_a_dash_and_mixes_with_files() {
    let gateway = std::fs::read(fixture("article_gateway.jsonl")).unwrap();
    let out = tracehop_stdin(
        &[
            "check",
            &fixture("article_agent_runtime.jsonl"),
            "-",
            &fixture("article_tools.jsonl"),
        ],
        &gateway,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), "1 trace, 5 spans: whole\n");

    // Without the gateway's journal on stdin, the run has lost its root.
    let out = tracehop_stdin(
        &["check", &fixture("article_agent_runtime.jsonl"), "-"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("[missing-parent]"));
}

#[test]
fn otlp_json_on_standard_input() {
    let otlp = std::fs::read(fixture("otlp_collector.json")).unwrap();
    let out = tracehop_stdin(&["check", "--json", "-"], &otlp);
    // The gateway and worker spans are whole; the third line has a span without trace id.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["whole"], true);
    assert_eq!(value["total"]["spans"], 3);
    assert_eq!(value["input"]["malformed"][0]["source"], "-");
    assert_eq!(value["input"]["malformed"][0]["line"], 3);
    assert!(text(&out.stderr).contains("warning: -:3: OTLP span not read"));
}

#[test]
fn malformed_lines_are_warnings_with_file_and_line() {
    let file = fixture("malformed.jsonl");
    let out = tracehop(&["check", &file]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    for line in [2, 3, 7] {
        assert!(stderr.contains(&format!("{file}:{line}: ")), "{stderr}");
    }
}

#[test]
fn json_output_names_findings_and_spans() {
    let out = tracehop(&["check", "--json", &fixture("missing_parent.jsonl")]);
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["whole"], false);
    assert_eq!(value["findings"][0]["rule"], "missing-parent");
    assert_eq!(
        value["findings"][0]["span_ids"],
        serde_json::json!(["d000000000000004", "d000000000000005"])
    );
    let spans = value["traces"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 7);
    assert_eq!(spans[3]["span_id"], "d000000000000004");
    assert_eq!(spans[3]["parent_missing"], true);
}

#[test]
fn unreadable_files_exit_2_with_a_clear_error() {
    let missing = fixture("no_such_journal.jsonl");
    let out = tracehop(&["check", &fixture("flat.jsonl"), &missing]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("tracehop: cannot read {missing}: ")),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is checked when an input is missing"
    );

    // A directory is not a journal either.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = tracehop(&["tree", &dir.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(
        tracehop(&["check"]).status.code(),
        Some(2),
        "files are required"
    );
    assert_eq!(tracehop(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(tracehop(&["check", "-", "-"]).status.code(), Some(2));
    let help = tracehop(&["check", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    assert!(help.contains("--entry <SERVICE>"), "{help}");
    assert!(help.contains("`-` for standard input"), "{help}");
    let top = text(&tracehop(&["--help"]).stdout);
    assert!(top.contains("Exit status"), "{top}");
}

#[test]
fn an_empty_input_has_nothing_to_check() {
    let out = tracehop_stdin(&["check", "-"], b"\n\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no spans"));
    let out = tracehop_stdin(&["tree", "-"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "no spans\n");
}

#[test]
fn stats_sum_up_pathways_with_errors_retries_and_broken_context() {
    let out = tracehop(&[
        "stats",
        "--json",
        &fixture("whole_gateway.jsonl"),
        &fixture("whole_worker.jsonl"),
        &fixture("whole_tools.jsonl"),
        &fixture("split_missing_context.jsonl"),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pathway = |producer: Option<&str>, destination: &str, consumer: &str| {
        value["pathways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["producer"].as_str() == producer
                    && p["destination"] == destination
                    && p["consumer"] == consumer
            })
            .unwrap_or_else(|| panic!("no {producer:?} > {destination} > {consumer}: {value:#}"))
            .clone()
    };
    let jobs = pathway(Some("gateway"), "jobs", "worker");
    assert_eq!(
        (jobs["messages"].as_u64(), jobs["deliveries"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(jobs["error_rate"], 1.0);
    assert_eq!(jobs["queue_time"]["p50_ms"], 24.0);
    assert_eq!(jobs["processing_time"]["p99_ms"], 40.0);
    let retry = pathway(Some("worker"), "jobs.retry", "worker");
    assert_eq!(retry["retry_rate"], 1.0);
    assert_eq!(retry["error_rate"], 0.0);
    // The batch consumer's per-message span is the delivery, not the batch span.
    let events = pathway(Some("gateway"), "events", "tools");
    assert_eq!(events["deliveries"], 1);
    // A consumer that got no context: its producer is unknown, its context broken.
    let broken = value["pathways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["broken_context"].as_u64() == Some(1))
        .expect("a pathway with broken context");
    assert_eq!(broken["broken_context_rate"], 1.0);
    assert_eq!(broken["consumer"], "worker");
    // Per service self time, most first.
    let services: Vec<&str> = value["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(services[0], "worker");
    let text = text(
        &tracehop(&[
            "stats",
            &fixture("whole_gateway.jsonl"),
            &fixture("whole_worker.jsonl"),
        ])
        .stdout,
    );
    assert!(text.contains("gateway > jobs > worker"), "{text}");
    assert!(text.contains("100.0%"), "{text}");
}
