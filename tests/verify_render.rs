//! Rendering on fixed input, compared against committed expected files.
//!
//! To accept a deliberate change of output, run with `TRACEHOP_UPDATE_SNAPSHOTS=1` and
//! review the diff of `tests/fixtures/*.txt` / `*.json`.

use std::path::PathBuf;

use tracehop::verify::{self, render, CheckOptions, RenderOptions, Report, Traces};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(names: &[&str], options: &CheckOptions) -> (Traces, Report) {
    let paths: Vec<PathBuf> = names.iter().map(|n| fixture(n)).collect();
    let input = verify::read_files(&paths).expect("fixtures are readable");
    let traces = Traces::from_records(input.spans);
    let report = traces.check(options);
    (traces, report)
}

fn snapshot(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("TRACEHOP_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with TRACEHOP_UPDATE_SNAPSHOTS=1)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendering, first at line {}:\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            first + 1,
            expected,
            actual
        );
    }
}

const ARTICLE: [&str; 3] = [
    "article_gateway.jsonl",
    "article_agent_runtime.jsonl",
    "article_tools.jsonl",
];

const BROKEN: [&str; 8] = [
    "split_missing_context.jsonl",
    "split_consumer_root.jsonl",
    "split_entry.jsonl",
    "missing_parent.jsonl",
    "flat.jsonl",
    "missing_name.jsonl",
    "rejected.jsonl",
    "article_event.jsonl",
];

#[test]
fn the_articles_run_renders_like_the_article() {
    let (traces, report) = load(&ARTICLE, &CheckOptions::default());
    let text = render::text(&traces, &report, &RenderOptions::plain());
    // The tree lines are the article's, with operation names and queue times added.
    let tree: Vec<&str> = text.lines().skip(1).take(5).collect();
    assert_eq!(
        tree,
        [
            "gateway handle_request span g1 parent=- 18ms status=ok",
            "  agent_runtime plan span a1 parent=g1 240ms queue=2ms status=ok",
            "    tool_service search span t1 parent=a1 410ms queue=12.5ms status=ok",
            "    agent_runtime reason span a2 parent=a1 130ms status=ok",
            "      llm_provider complete span l1 parent=a2 690ms status=ok",
        ]
    );
    snapshot("article.tree.txt", &text);
}

#[test]
fn the_articles_run_as_json() {
    let (traces, report) = load(&ARTICLE, &CheckOptions::default());
    let value = render::json(&traces, &report);
    assert_eq!(value["whole"], true);
    assert_eq!(
        value["traces"][0]["summary"]["busiest_service"],
        "llm_provider"
    );
    assert_eq!(
        value["traces"][0]["summary"]["critical_path"],
        serde_json::json!(["g1", "a1", "a2", "l1"])
    );
    let spans = value["traces"][0]["spans"].as_array().unwrap();
    let depth: Vec<(&str, u64)> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s["depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        depth,
        [("g1", 0), ("a1", 1), ("t1", 2), ("a2", 2), ("l1", 3)]
    );
    let mut text = serde_json::to_string_pretty(&value).unwrap();
    text.push('\n');
    snapshot("article.tree.json", &text);
}

#[test]
fn a_whole_run_with_retry_batch_and_link() {
    let (traces, report) = load(
        &[
            "whole_gateway.jsonl",
            "whole_worker.jsonl",
            "whole_tools.jsonl",
        ],
        &CheckOptions::new().entry("gateway"),
    );
    let text = render::text(&traces, &report, &RenderOptions::plain());
    assert!(
        text.ends_with("3 traces, 9 spans: whole, 1 failed span\n"),
        "{text}"
    );
    snapshot("whole.tree.txt", &text);
}

#[test]
fn broken_traces_show_where_context_broke() {
    let (traces, report) = load(&BROKEN, &CheckOptions::new().entry("gateway"));
    let text = render::text(&traces, &report, &RenderOptions::plain());
    for rule in [
        "[split-trace]",
        "[missing-parent]",
        "[flat-trace]",
        "[missing-name]",
        "[rejected-context]",
    ] {
        assert!(text.contains(rule), "{rule} in\n{text}");
    }
    snapshot("broken.tree.txt", &text);
    snapshot(
        "broken.check.txt",
        &render::findings_text(&traces, &report, &RenderOptions::plain()),
    );
}

#[test]
fn colour_only_when_asked() {
    let (traces, report) = load(&["whole_worker.jsonl"], &CheckOptions::default());
    let plain = render::text(&traces, &report, &RenderOptions::plain());
    let colored = render::text(&traces, &report, &RenderOptions::colored());
    assert!(!plain.contains('\x1b'));
    assert!(colored.contains("\x1b[31merror\x1b[0m"), "{colored}");
    let stripped = {
        let mut out = String::new();
        let mut chars = colored.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    assert_eq!(stripped, plain, "colour changes nothing but colour");
}

#[test]
fn no_spans() {
    let traces = Traces::from_records(Vec::new());
    let report = traces.check(&CheckOptions::default());
    assert_eq!(
        render::text(&traces, &report, &RenderOptions::plain()),
        "no spans\n"
    );
}
