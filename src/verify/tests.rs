use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::render::{format_duration, short_id};
use super::*;
use crate::journal::SpanRecord;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_774_106_220) + Duration::from_millis(ms)
}

/// A span starting at `start` ms lasting `dur` ms.
fn span(id: &str, parent: Option<&str>, service: &str, start: u64, dur: u64) -> SpanRecord {
    let mut v = json!({
        "trace_id": "t",
        "span_id": id,
        "service_name": service,
        "operation_name": format!("op_{id}"),
        "latency_ms": dur,
        "status": "ok",
    });
    if let Some(p) = parent {
        v["parent_span_id"] = json!(p);
    }
    let mut s: SpanRecord = serde_json::from_value(v).unwrap();
    s.start_time = Some(at(start));
    s.timestamp = Some(at(start + dur));
    s
}

fn ids<'a>(nodes: impl Iterator<Item = Node<'a>>) -> Vec<(String, usize)> {
    nodes
        .map(|n| (n.span().span_id.clone(), n.depth()))
        .collect()
}

#[test]
fn tree_orders_siblings_by_start_then_id_whatever_the_input_order() {
    let spans = vec![
        span("c", Some("r"), "svc", 5, 1),
        span("b", Some("r"), "svc", 5, 1),
        span("a", Some("r"), "svc", 9, 1),
        span("d", Some("b"), "svc", 6, 1),
        span("r", None, "svc", 0, 20),
    ];
    let mut reversed = spans.clone();
    reversed.reverse();
    for input in [spans, reversed] {
        let traces = Traces::from_records(input);
        let trace = traces.get("t").unwrap();
        assert_eq!(
            ids(trace.nodes()),
            [("r", 0), ("b", 1), ("d", 2), ("c", 1), ("a", 1)]
                .map(|(i, d)| (i.to_owned(), d))
                .to_vec()
        );
    }
}

#[test]
fn orphans_are_drawn_at_the_top_and_named() {
    let traces = Traces::from_records(vec![
        span("r", None, "gateway", 0, 10),
        span("o", Some("gone"), "worker", 20, 10),
        span("oc", Some("o"), "worker", 21, 1),
    ]);
    let trace = traces.get("t").unwrap();
    assert_eq!(
        ids(trace.tops()),
        [("r".to_owned(), 0), ("o".to_owned(), 0)]
    );
    assert!(trace.find("o").unwrap().parent_missing());
    assert!(!trace.find("oc").unwrap().parent_missing());
    assert_eq!(trace.roots().count(), 1);
    let report = traces.check(&CheckOptions::default());
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.findings[0].rule, Rule::MissingParent);
    assert_eq!(report.findings[0].span_ids, ["o"]);
    assert!(report.findings[0].message.contains("gone"));
}

#[test]
fn parent_loops_are_cut_and_reported_not_looped_forever() {
    let traces = Traces::from_records(vec![
        span("a", Some("b"), "svc", 0, 1),
        span("b", Some("a"), "svc", 1, 1),
        span("s", Some("s"), "svc", 2, 1),
    ]);
    let trace = traces.get("t").unwrap();
    assert_eq!(trace.nodes().count(), 3, "every span drawn once");
    assert_eq!(
        ids(trace.tops()),
        [("a".to_owned(), 0), ("s".to_owned(), 0)]
    );
    assert_eq!(trace.find("b").unwrap().depth(), 1);
    let report = traces.check(&CheckOptions::default());
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.findings[0].rule, Rule::MissingParent);
    assert_eq!(report.findings[0].span_ids, ["a", "s"]);
}

#[test]
fn duplicate_records_are_kept_once() {
    let s = span("r", None, "svc", 0, 1);
    let traces = Traces::from_records(vec![s.clone(), s.clone(), s]);
    assert_eq!(traces.span_count(), 1);
    assert_eq!(traces.duplicates(), 2);
    assert!(traces.check(&CheckOptions::default()).is_whole());
}

#[test]
fn traces_are_ordered_by_first_start_then_id() {
    let mut late = span("x", None, "svc", 50, 1);
    late.trace_id = "a_late".into();
    let mut early = span("y", None, "svc", 10, 1);
    early.trace_id = "z_early".into();
    let traces = Traces::from_records(vec![late, early]);
    let order: Vec<&str> = traces.iter().map(Trace::trace_id).collect();
    assert_eq!(order, ["z_early", "a_late"]);
}

#[test]
fn waiting_for_downstream_work_over_a_queue_is_not_self_time() {
    // An agent (0..200) sends a tool call (a 1 ms send span at 10); the message waits
    // 29 ms in a queue, then the tool works 40..190. The agent only worked 10 + 10 ms,
    // the send span its own 1 ms.
    let mut process = span("tool", Some("send"), "tools", 40, 150);
    process
        .attributes
        .insert("tracehop.queue_time_ms".into(), serde_json::json!(29.0));
    let traces = Traces::from_records(vec![
        span("agent", None, "runtime", 0, 200),
        span("send", Some("agent"), "runtime", 10, 1),
        process,
    ]);
    let trace = traces.get("t").unwrap();
    assert_eq!(
        trace.find("agent").unwrap().self_time(),
        Duration::from_millis(20)
    );
    assert_eq!(
        trace.find("send").unwrap().self_time(),
        Duration::from_millis(1)
    );
}

#[test]
fn self_time_subtracts_the_union_of_children_clipped_to_the_span() {
    let traces = Traces::from_records(vec![
        span("p", None, "a", 0, 100),
        // Overlapping children: 10..40 and 30..50 cover 40 ms of the parent.
        span("c1", Some("p"), "b", 10, 30),
        span("c2", Some("p"), "b", 30, 20),
        // A child that runs past the parent's end only counts inside it: 90..100.
        span("c3", Some("p"), "c", 90, 500),
    ]);
    let trace = traces.get("t").unwrap();
    let p = trace.find("p").unwrap();
    assert_eq!(p.self_time(), Duration::from_millis(50));
    let summary = trace.summary();
    assert_eq!(summary.busiest_service().unwrap().service, "c");
    assert_eq!(
        summary
            .service_times
            .iter()
            .map(|s| (s.service.as_str(), s.self_time.as_millis()))
            .collect::<Vec<_>>(),
        [("c", 500), ("a", 50), ("b", 50)]
    );
    assert_eq!(
        summary.slowest,
        Some(("c3".into(), Duration::from_millis(500)))
    );
}

#[test]
fn self_time_without_start_times_subtracts_children_durations() {
    let mut p = span("p", None, "a", 0, 100);
    let mut c = span("c", Some("p"), "b", 0, 30);
    for s in [&mut p, &mut c] {
        s.start_time = None;
        s.timestamp = None;
    }
    let traces = Traces::from_records(vec![p, c]);
    let trace = traces.get("t").unwrap();
    assert_eq!(
        trace.find("p").unwrap().self_time(),
        Duration::from_millis(70)
    );
}

#[test]
fn critical_path_follows_the_child_whose_work_ends_last() {
    // The send span ends at once, but the process span under it ends last of all.
    let traces = Traces::from_records(vec![
        span("root", None, "gw", 0, 30),
        span("send", Some("root"), "gw", 1, 1),
        span("internal", Some("root"), "gw", 2, 20),
        span("process", Some("send"), "worker", 40, 100),
        span("early", Some("send"), "worker", 35, 2),
    ]);
    let summary = traces.get("t").unwrap().summary();
    assert_eq!(summary.critical_path, ["root", "send", "process"]);
    assert_eq!(summary.duration, Some(Duration::from_millis(140)));
}

#[test]
fn queue_time_is_summed_apart_from_service_time() {
    let mut p1 = span("p1", Some("r"), "worker", 10, 5);
    p1.attributes
        .insert("tracehop.queue_time_ms".into(), json!(4.5));
    let mut p2 = span("p2", Some("r"), "worker", 20, 5);
    p2.attributes
        .insert("tracehop.queue_time_ms".into(), json!(12.0));
    let traces = Traces::from_records(vec![span("r", None, "gw", 0, 1), p1, p2]);
    let summary = traces.get("t").unwrap().summary();
    assert_eq!(summary.queue_time, Duration::from_micros(16_500));
    assert_eq!(summary.queued_messages, 2);
    assert_eq!(
        summary.longest_queue,
        Some(("p2".into(), Duration::from_millis(12)))
    );
    assert_eq!(
        summary.service_times[0].self_time,
        Duration::from_millis(10)
    );
}

#[test]
fn durations_and_ids_are_shortened_for_display() {
    assert_eq!(format_duration(Duration::from_millis(18)), "18ms");
    assert_eq!(format_duration(Duration::from_micros(12_500)), "12.5ms");
    assert_eq!(format_duration(Duration::from_micros(420)), "0.42ms");
    assert_eq!(format_duration(Duration::from_millis(1300)), "1.3s");
    assert_eq!(format_duration(Duration::from_micros(4)), "0.004ms");
    assert_eq!(format_duration(Duration::ZERO), "0ms");
    assert_eq!(short_id("00f067aa0ba902b7"), "00f067aa");
    assert_eq!(short_id("sp_worker_02"), "sp_worker_02");
    assert_eq!(short_id("g1"), "g1");
}

#[test]
fn short_ids_grow_until_they_tell_spans_apart() {
    let traces = Traces::from_records(vec![
        span("eee19b7ec3c1b174", None, "gw", 0, 10),
        span("eee19b7ec3c1b175", Some("eee19b7ec3c1b174"), "gw", 1, 1),
    ]);
    let report = traces.check(&CheckOptions::default());
    let text = render::text(&traces, &report, &RenderOptions::plain());
    assert!(
        text.contains("span eee19b7ec3c1b175 parent=eee19b7ec3c1b174 1ms"),
        "{text}"
    );
}

#[test]
fn read_bytes_mixes_journal_and_otlp_lines_keeping_line_numbers() {
    let otlp = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "worker"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "AQIDBAUGBwg=",
            "parentSpanId": "eee19b7ec3c1b174",
            "name": "process tasks",
            "kind": 5,
            "startTimeUnixNano": "1774106220000000000",
            "endTimeUnixNano": 1_774_106_220_040_000_000u64,
            "attributes": [
                {"key": "n", "value": {"intValue": "42"}},
                {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": true}}]}}}
            ],
            "status": {"code": 2, "message": "boom"}
        }]}]
    }]});
    let text = format!(
        "{}\nnot json\n{}\n",
        json!({"trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b174"}),
        otlp
    );
    let report = read_bytes("mixed", text.as_bytes());
    assert_eq!(report.spans.len(), 2, "{report:?}");
    assert_eq!(report.malformed.len(), 1);
    assert_eq!(
        (
            report.malformed[0].source.as_str(),
            report.malformed[0].line
        ),
        ("mixed", 2)
    );
    let worker = report
        .spans
        .iter()
        .find(|s| s.span_id == "0102030405060708")
        .unwrap();
    assert_eq!(worker.service_name.as_deref(), Some("worker"));
    assert_eq!(worker.parent_span_id.as_deref(), Some("eee19b7ec3c1b174"));
    assert_eq!(worker.span_kind, Some(crate::journal::Kind::Consumer));
    assert_eq!(worker.duration(), Some(Duration::from_millis(40)));
    assert_eq!(worker.status, crate::journal::Status::Error);
    assert_eq!(worker.error.as_deref(), Some("boom"));
    assert_eq!(worker.attribute("n"), Some(&json!(42)));
    assert_eq!(worker.attribute("kv"), Some(&json!({"k": true})));
}

#[test]
fn deep_chains_stop_indenting_and_say_their_depth() {
    let mut spans = vec![span("s0", None, "svc", 0, 1)];
    for i in 1..40 {
        spans.push(span(
            &format!("s{i}"),
            Some(&format!("s{}", i - 1)),
            "svc",
            i,
            1,
        ));
    }
    let traces = Traces::from_records(spans);
    let report = traces.check(&CheckOptions::default());
    let text = render::text(&traces, &report, &RenderOptions::plain());
    let line = |id: &str| {
        text.lines()
            .find(|l| l.contains(&format!(" span {id} ")))
            .unwrap()
            .to_owned()
    };
    assert!(line("s32").starts_with(&format!("{}svc op_s32", " ".repeat(64))));
    assert!(line("s39").starts_with(&format!("{}(depth 39) svc op_s39", " ".repeat(64))));
}
