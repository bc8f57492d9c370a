//! `tracehop view` in a real browser: headless Chromium loads the page, runs its script,
//! and the DOM it dumps and the screenshot it takes are checked.
//!
//! Chromium is required (CI installs Debian's `chromium`: `cargo xtask services`); set
//! `TRACEHOP_CHROMIUM` to use another binary.

#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A run with a retry, a batch consumer and a partner that links the producer.
const WHOLE: [&str; 3] = [
    "whole_gateway.jsonl",
    "whole_worker.jsonl",
    "whole_tools.jsonl",
];

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

mod common;
use common::TempDir;

/// The browser: `TRACEHOP_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("TRACEHOP_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the HTML view is tested in a real browser, and no chromium was found on PATH: \
         install it with `apt-get install -y chromium` (CI does this in `cargo xtask \
         services`), or point TRACEHOP_CHROMIUM at a Chromium binary"
    );
}

/// Run headless Chromium on `page` with `args` (a fresh profile each time).
fn browse(dir: &TempDir, page: &Path, args: &[&str]) -> Vec<u8> {
    let profile = dir.0.join(format!("profile-{}", args.len()));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn view(dir: &TempDir, files: &[String]) -> PathBuf {
    let page = dir.0.join("run.html");
    let out = Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .arg("view")
        .args(files)
        .arg("-o")
        .arg(&page)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    page
}

/// One span row of the dumped DOM.
#[derive(Debug)]
struct Row {
    span: String,
    critical: bool,
    hidden: bool,
    queue_segments: usize,
    text: String,
}

/// The rows of the dumped DOM, in order.
fn rows(dom: &str) -> Vec<Row> {
    dom.split("<div class=\"row")
        .skip(1)
        .map(|chunk| {
            let classes = &chunk[..chunk.find('"').unwrap()];
            let attr = |name: &str| {
                let at = chunk.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                chunk[at..at + chunk[at..].find('"').unwrap()].to_owned()
            };
            // The row ends where the next trace header or row begins.
            let body = &chunk[..chunk.find("<div class=\"trace-head").unwrap_or(chunk.len())];
            Row {
                span: attr("data-span"),
                critical: classes.split(' ').any(|c| c == "cp"),
                hidden: classes.split(' ').any(|c| c == "hidden"),
                queue_segments: body.matches("class=\"seg queue\"").count(),
                text: body.to_owned(),
            }
        })
        .collect()
}

#[test]
fn the_page_has_a_row_per_span_queue_segments_the_critical_path_and_link_arrows() {
    let dir = TempDir::new("view");
    let files = WHOLE.map(fixture);
    let page = view(&dir, &files);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from the network"
    );

    let dom = String::from_utf8(browse(&dir, &page, &["--dump-dom"])).unwrap();
    let rows = rows(&dom);
    // 9 spans in 3 traces, drawn as one run: the batch consumer and the partner link
    // the gateway's send spans.
    assert_eq!(rows.len(), 9, "{dom}");
    assert_eq!(dom.matches("<section class=\"run\"").count(), 1);
    let spans: Vec<&str> = rows.iter().map(|r| r.span.as_str()).collect();
    assert_eq!(
        spans,
        [
            "00f067aa0ba902b7",
            "1111111111111111",
            "2222222222222222",
            "3333333333333333",
            "4444444444444444",
            "1212121212121212",
            "5555555555555555",
            "6666666666666666",
            "7777777777777777",
        ]
    );
    // Span ids and operation names are text in the page.
    for row in &rows {
        assert!(
            row.text.contains(&format!(">{}</code>", row.span)),
            "{}",
            row.text
        );
    }
    assert!(dom.contains(">process jobs.retry</span>"));

    // A queue segment exactly where a queue time was recorded.
    let queued: Vec<&str> = rows
        .iter()
        .filter(|r| r.queue_segments > 0)
        .map(|r| r.span.as_str())
        .collect();
    assert_eq!(
        queued,
        ["2222222222222222", "4444444444444444", "6666666666666666"]
    );
    assert!(rows.iter().all(|r| r.queue_segments <= 1));

    // The blocking path: the request, the send, the failed attempt, its forward to the
    // retry destination, and the retry that ended last.
    let critical: Vec<&str> = rows
        .iter()
        .filter(|r| r.critical && r.span.len() == 16)
        .filter(|r| {
            !["5555555555555555", "6666666666666666", "7777777777777777"].contains(&r.span.as_str())
        })
        .map(|r| r.span.as_str())
        .collect();
    assert_eq!(
        critical,
        [
            "00f067aa0ba902b7",
            "1111111111111111",
            "2222222222222222",
            "3333333333333333",
            "4444444444444444",
        ]
    );
    assert!(!rows[5].critical, "send events did not hold the run up");
    // Errors are marked, attempts numbered.
    assert!(rows[2].text.contains("badge error"));
    assert!(rows[4].text.contains("attempt 2"));

    // The script ran in the browser: it drew the three links as arrows.
    let svg = &dom[dom.find("<svg class=\"links\"").unwrap()..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    assert_eq!(svg.matches("<path ").count(), 3, "{svg}");
}

#[test]
fn the_screenshot_is_a_drawn_waterfall_not_a_blank_page() {
    let dir = TempDir::new("view-shot");
    let files = WHOLE.map(fixture);
    let page = view(&dir, &files);
    let shot = dir.0.join("shot.png");
    browse(
        &dir,
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 800));
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let background = pixels[0];
    let drawn = pixels.iter().filter(|p| p[..3] != background[..3]).count();
    let mut colours: Vec<[u8; 3]> = pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 50, "only {} colours", colours.len());
    assert!(
        drawn > pixels.len() / 10,
        "only {drawn} of {} pixels differ from the background",
        pixels.len()
    );
    // The service colours of the bars are there (gateway blue, worker orange).
    for colour in [[0x4e, 0x79, 0xa7], [0xf2, 0x8e, 0x2b]] {
        assert!(colours.contains(&colour), "no bar in #{colour:02x?}");
    }
}

#[test]
fn ten_thousand_spans_render_every_row_and_deep_subtrees_start_collapsed() {
    let dir = TempDir::new("view-large");
    // 100 traces of 100 spans: a root, 9 sends, each with a process span and 9 children.
    // 10,000 spans.
    let journal = dir.0.join("large.jsonl");
    let mut lines = String::new();
    let base = 1_774_106_220_000_000u64;
    for t in 0..100u64 {
        let trace = format!("{:032x}", t + 1);
        let mut id = t * 1000 + 1;
        let mut line = |id: u64,
                        parent: Option<u64>,
                        op: &str,
                        kind: &str,
                        start: u64,
                        ms: u64,
                        queue: Option<f64>| {
            let mut v = serde_json::json!({
                "trace_id": trace, "span_id": format!("{id:016x}"),
                "service_name": if kind == "consumer" { "worker" } else { "gateway" },
                "operation_name": op, "span_kind": kind,
                "start_time": format!("2026-03-21T15:17:{:02}.{:06}Z", (start / 1_000_000) % 60, start % 1_000_000),
                "latency_ms": ms, "status": "ok",
                "attributes": {"messaging.destination.name": "jobs"},
            });
            if let Some(p) = parent {
                v["parent_span_id"] = format!("{p:016x}").into();
            }
            if let Some(q) = queue {
                v["attributes"]["tracehop.queue_time_ms"] = q.into();
            }
            lines.push_str(&v.to_string());
            lines.push('\n');
        };
        let root = id;
        line(
            root,
            None,
            "handle_request",
            "server",
            base % 60_000_000,
            900,
            None,
        );
        for s in 0..9u64 {
            id += 1;
            let send = id;
            line(
                send,
                Some(root),
                "send jobs",
                "producer",
                base % 60_000_000 + s * 1000,
                1,
                None,
            );
            id += 1;
            let process = id;
            line(
                process,
                Some(send),
                "process jobs",
                "consumer",
                base % 60_000_000 + s * 1000 + 5000,
                80,
                Some(4.0),
            );
            for c in 0..9u64 {
                id += 1;
                line(
                    id,
                    Some(process),
                    "step",
                    "internal",
                    base % 60_000_000 + s * 1000 + 5000 + c * 8000,
                    7,
                    None,
                );
            }
        }
    }
    std::fs::write(&journal, lines).unwrap();
    let page = view(&dir, &[journal.display().to_string()]);
    let dom = String::from_utf8(browse(&dir, &page, &["--dump-dom"])).unwrap();
    let rows = rows(&dom);
    assert_eq!(rows.len(), 10_000);
    assert_eq!(rows.iter().filter(|r| r.queue_segments == 1).count(), 900);
    assert_eq!(
        dom.matches("<tr class=\"ok\">").count(),
        100,
        "an index row per run"
    );
    // Past 5,000 rows the script starts with each process span's subtree collapsed.
    assert_eq!(rows.iter().filter(|r| r.hidden).count(), 900 * 9);
    assert!(rows
        .iter()
        .filter(|r| r.hidden)
        .all(|r| r.text.contains(">step</span>")));
}
