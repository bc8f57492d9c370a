//! The span journal: written per service, read back from several files, robust to bad
//! lines, and loud (never panicking) when it cannot be written.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;

use tracehop::journal::{self, Kind, Status};
use tracehop::{Error, Incoming, Journal, Outgoing, Telemetry};

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracehop-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn per_service_journals_round_trip_through_the_reader() {
    let gw_path = temp_path("gateway.jsonl");
    let wk_path = temp_path("worker.jsonl");
    let gateway = Telemetry::builder("gateway")
        .journal(Journal::file(&gw_path).expect("open"))
        .build()
        .expect("gateway");
    let worker = Telemetry::builder("worker")
        .journal(Journal::file(&wk_path).expect("open"))
        .build()
        .expect("worker");

    let mut h: HashMap<String, String> = HashMap::new();
    gateway
        .send_span(Outgoing::new("kafka", "tasks").body_size(7), &mut h)
        .end();
    let p = worker.process_span(Incoming::new("kafka", "tasks"), &h);
    let _ = p.run(async { Err::<(), _>("model refused") }).await;
    p.end();
    gateway.shutdown().expect("gateway journal written");
    worker.shutdown().expect("worker journal written");

    // Every line is one finished span with the article's fields.
    let text = std::fs::read_to_string(&wk_path).expect("read");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    for key in [
        "timestamp",
        "event",
        "trace_id",
        "span_id",
        "parent_span_id",
        "service_name",
        "operation_name",
        "span_kind",
        "start_time",
        "latency_ms",
        "duration_ns",
        "status",
        "error",
        "attributes",
    ] {
        assert!(line.get(key).is_some(), "journal line lacks {key}: {line}");
    }
    assert_eq!(line["event"], "span_finished");

    // Read both files back, worker first: order does not matter.
    let report = journal::read_files(&[&wk_path, &gw_path]).expect("read journals");
    assert!(report.malformed.is_empty(), "{:?}", report.malformed);
    assert_eq!(report.spans.len(), 2);
    let send = report
        .spans
        .iter()
        .find(|s| s.span_kind == Some(Kind::Producer))
        .expect("send");
    let proc = report
        .spans
        .iter()
        .find(|s| s.span_kind == Some(Kind::Consumer))
        .expect("process");
    assert_eq!(send.service_name.as_deref(), Some("gateway"));
    assert_eq!(proc.service_name.as_deref(), Some("worker"));
    assert_eq!(proc.trace_id, send.trace_id);
    assert_eq!(proc.parent_span_id.as_ref(), Some(&send.span_id));
    assert_eq!(send.parent_span_id, None);
    assert_eq!(send.status, Status::Ok);
    assert_eq!(proc.status, Status::Error);
    assert_eq!(proc.error.as_deref(), Some("model refused"));
    assert_eq!(
        send.attribute("messaging.message.body.size"),
        Some(&7.into())
    );
    let (start, end) = (
        proc.start_time.expect("start"),
        proc.timestamp.expect("end"),
    );
    assert_eq!(end.duration_since(start).ok(), proc.duration());
    assert!(proc.latency_ms.expect("latency") >= 0.0);
}

#[test]
fn the_articles_example_event_reads_as_it_stands() {
    let event = r#"{
"timestamp": "2026-03-21T15:17:00Z",
"event": "span_finished",
"trace_id": "tr_7a31",
"span_id": "sp_worker_02",
"parent_span_id": "sp_gateway_01",
"service_name": "worker",
"operation_name": "process_task",
"latency_ms": 410,
"status": "ok"
}"#;
    let one_line = event.replace('\n', " ");
    let report = journal::read_str("article", &one_line);
    assert!(report.malformed.is_empty(), "{:?}", report.malformed);
    let s = &report.spans[0];
    assert_eq!(s.trace_id, "tr_7a31");
    assert_eq!(s.span_id, "sp_worker_02");
    assert_eq!(s.parent_span_id.as_deref(), Some("sp_gateway_01"));
    assert_eq!(s.service_name.as_deref(), Some("worker"));
    assert_eq!(s.operation_name.as_deref(), Some("process_task"));
    assert_eq!(s.status, Status::Ok);
    assert_eq!(s.duration(), Some(std::time::Duration::from_millis(410)));
    assert_eq!(
        s.timestamp,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_774_106_220))
    );
}

#[test]
fn malformed_lines_are_counted_with_their_line_numbers() {
    let input = b"{\"trace_id\":\"t1\",\"span_id\":\"s1\"}\n\
not json\n\
\n\
{\"event\":\"span_started\",\"trace_id\":\"t1\",\"span_id\":\"s2\"}\n\
{\"trace_id\":\"t1\"}\n\
\xff\xfe\n\
{\"trace_id\":\"t1\",\"span_id\":\"s3\",\"parent_span_id\":\"s1\",\"timestamp\":\"yesterday\"}\n\
{\"trace_id\":\"t1\",\"span_id\":\"s4\",\"parent_span_id\":null}\n";
    let report = journal::read_reader("svc.jsonl", &input[..]).expect("in-memory read");
    let ids: Vec<&str> = report.spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids, ["s1", "s4"]);
    let lines: Vec<usize> = report.malformed.iter().map(|m| m.line).collect();
    assert_eq!(lines, [2, 5, 6, 7]);
    assert!(report.malformed.iter().all(|m| m.source == "svc.jsonl"));
    assert_eq!(
        report.skipped, 1,
        "span_started events are skipped, not malformed"
    );
}

#[test]
fn an_unreadable_file_is_a_clear_error() {
    let missing = temp_path("does-not-exist.jsonl");
    match journal::read_files(&[&missing]) {
        Err(Error::JournalIo { path, .. }) => assert!(path.ends_with("does-not-exist.jsonl")),
        other => panic!("expected JournalIo, got {other:?}"),
    }
}

#[test]
fn a_full_disk_is_reported_not_a_panic() {
    let telemetry = Telemetry::builder("svc")
        .journal(Journal::file("/dev/full").expect("/dev/full opens"))
        .build()
        .expect("telemetry");
    let mut h: HashMap<String, String> = HashMap::new();
    telemetry
        .send_span(Outgoing::new("nats", "x"), &mut h)
        .end();
    match telemetry.shutdown() {
        Err(Error::JournalWrite {
            dropped, message, ..
        }) => {
            assert!(dropped >= 1);
            assert!(message.contains("/dev/full"), "{message}");
        }
        other => panic!("expected a journal write error, got {other:?}"),
    }
}

struct ClosedPipe;
impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

#[test]
fn a_closed_pipe_is_reported_not_a_panic() {
    let telemetry = Telemetry::builder("svc")
        .journal(Journal::writer("pipe", ClosedPipe))
        .build()
        .expect("telemetry");
    let mut h: HashMap<String, String> = HashMap::new();
    for _ in 0..3 {
        telemetry
            .send_span(Outgoing::new("nats", "x"), &mut h)
            .end();
    }
    assert!(matches!(telemetry.flush(), Err(Error::JournalWrite { .. })));
    assert!(matches!(
        telemetry.shutdown(),
        Err(Error::JournalWrite { .. })
    ));
}

#[test]
fn dropping_the_last_handle_flushes_the_journal() {
    let path = temp_path("dropped.jsonl");
    {
        let telemetry = Telemetry::builder("svc")
            .journal(Journal::file(&path).expect("open"))
            .build()
            .expect("telemetry");
        let mut h: HashMap<String, String> = HashMap::new();
        for _ in 0..100 {
            telemetry
                .send_span(Outgoing::new("nats", "x"), &mut h)
                .end();
        }
    }
    let report = journal::read_files(&[&path]).expect("read");
    assert_eq!(report.spans.len(), 100);
}
