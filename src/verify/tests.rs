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
    SpanRecord {
        timestamp: Some(at(start + dur)),
        event: "span_finished".into(),
        trace_id: "t".into(),
        span_id: id.into(),
        parent_span_id: parent.map(Into::into),
        service_name: Some(service.into()),
        operation_name: Some(format!("op_{id}")),
        span_kind: None,
        start_time: Some(at(start)),
        latency_ms: Some(dur as f64),
        duration_ns: None,
        status: crate::journal::Status::Ok,
        error: None,
        attributes: Default::default(),
        links: Vec::new(),
    }
}

fn ids<'a>(nodes: impl Iterator<Item = Node<'a>>) -> Vec<(String, usize)> {
    nodes
        .map(|n| (n.span_id().to_string(), n.depth()))
        .collect()
}

fn self_time(trace: &Trace<'_>, id: &str) -> Duration {
    trace.self_times()[trace.find(id).unwrap().index()]
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
    let order: Vec<String> = traces.iter().map(|t| t.trace_id().to_string()).collect();
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
    assert_eq!(self_time(&trace, "agent"), Duration::from_millis(20));
    assert_eq!(self_time(&trace, "send"), Duration::from_millis(1));
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
    assert_eq!(self_time(&trace, "p"), Duration::from_millis(50));
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
    assert_eq!(self_time(&trace, "p"), Duration::from_millis(70));
}

fn send(mut s: SpanRecord) -> SpanRecord {
    s.span_kind = Some(crate::journal::Kind::Producer);
    s
}

fn consumer(mut s: SpanRecord) -> SpanRecord {
    s.span_kind = Some(crate::journal::Kind::Consumer);
    s
}

fn path(traces: &Traces) -> Vec<String> {
    traces.iter().next().unwrap().summary().critical_path
}

#[test]
fn critical_path_starts_at_the_span_that_ends_last_and_walks_back_through_the_hop() {
    // The root ends first; the process span under the send span ends last of all. A
    // sibling consumer of the same message in another service (a fan-out) did not hold
    // the process span up; the root's own work before the send did.
    let traces = Traces::from_records(vec![
        span("root", None, "gw", 0, 30),
        send(span("send", Some("root"), "gw", 1, 1)),
        span("internal", Some("root"), "gw", 2, 20),
        consumer(span("process", Some("send"), "worker", 40, 100)),
        consumer(span("other", Some("send"), "audit", 35, 2)),
    ]);
    assert_eq!(path(&traces), ["root", "send", "process"]);
    let trace = traces.get("t").unwrap();
    let cp = trace.critical_path();
    assert_eq!(cp.duration(), Duration::from_millis(140));
    // The message waited 2..40 between the send span's end and processing.
    assert_eq!(cp.waiting(), Duration::from_millis(38));
    let waits: Vec<_> = cp.steps.iter().filter(|s| s.waiting).collect();
    assert_eq!(waits.len(), 1);
    assert_eq!(trace.node(waits[0].index).span_id(), "process");
}

#[test]
fn a_queue_wait_is_a_wait_even_when_the_brokers_ack_ends_the_send_span_later() {
    // The message left at 1 ms (queue time 39 ms before processing at 40 ms), but the send
    // span ended only at 60 ms, when the broker's acknowledgement came back.
    let mut process = consumer(span("process", Some("send"), "worker", 40, 100));
    process
        .attributes
        .insert("tracehop.queue_time_ms".into(), json!(39.0));
    let traces = Traces::from_records(vec![
        span("root", None, "gw", 0, 2),
        send(span("send", Some("root"), "gw", 1, 59)),
        process,
    ]);
    let trace = traces.get("t").unwrap();
    let cp = trace.critical_path();
    assert_eq!(path(&traces), ["root", "send", "process"]);
    assert_eq!(cp.waiting(), Duration::from_millis(39));
    let waits: Vec<_> = cp.steps.iter().filter(|s| s.waiting).collect();
    assert_eq!(waits.len(), 1);
    assert_eq!(trace.node(waits[0].index).span_id(), "process");
}

#[test]
fn an_earlier_failed_attempt_is_on_the_path_of_the_redelivery() {
    let mut first = consumer(span("attempt1", Some("send"), "worker", 10, 20));
    first.status = crate::journal::Status::Error;
    first
        .attributes
        .insert("tracehop.delivery.attempt".into(), json!(1));
    let mut second = consumer(span("attempt2", Some("send"), "worker", 50, 10));
    second
        .attributes
        .insert("tracehop.delivery.attempt".into(), json!(2));
    let traces = Traces::from_records(vec![
        span("root", None, "gw", 0, 5),
        send(span("send", Some("root"), "gw", 1, 1)),
        first,
        second,
    ]);
    assert_eq!(path(&traces), ["root", "send", "attempt1", "attempt2"]);
}

#[test]
fn fan_out_then_fan_in_over_queues_names_the_slowest_branch() {
    // The root sends three messages; three workers take 40, 70 and 20 ms; each sends a
    // result; the aggregator's last result arrival (from the slowest worker) starts the
    // final step.
    let mut spans = vec![span("root", None, "gw", 0, 5)];
    for (i, (start, dur)) in [(10, 40), (10, 70), (10, 20)].into_iter().enumerate() {
        let n = i + 1;
        let (s, p, r) = (format!("s{n}"), format!("p{n}"), format!("r{n}"));
        spans.push(send(span(&s, Some("root"), "gw", n as u64, 1)));
        spans.push(consumer(span(&p, Some(&s), "worker", start, dur)));
        let end = start + dur;
        spans.push(send(span(&r, Some(&p), "worker", end - 1, 1)));
        spans.push(consumer(span(
            &format!("a{n}"),
            Some(&r),
            "agg",
            end + 5,
            1,
        )));
    }
    spans.push(span("final", Some("a2"), "agg", 86, 34));
    let traces = Traces::from_records(spans);
    assert_eq!(
        path(&traces),
        ["root", "s1", "s2", "p2", "r2", "a2", "final"]
    );
}

#[test]
fn in_process_fan_out_and_join_follow_the_child_that_finished_last() {
    let traces = Traces::from_records(vec![
        span("r", None, "svc", 0, 100),
        span("c1", Some("r"), "svc", 10, 30),
        span("c2", Some("r"), "svc", 10, 80),
        span("c3", Some("r"), "svc", 10, 10),
        span("join", Some("r"), "svc", 90, 10),
        span("inner", Some("c2"), "svc", 20, 50),
    ]);
    assert_eq!(path(&traces), ["r", "c2", "inner", "join"]);
    let cp = traces.get("t").unwrap().critical_path();
    assert_eq!(cp.duration(), Duration::from_millis(100));
    assert!(cp.waiting().is_zero());
}

#[test]
fn a_chain_of_200000_spans_is_walked_without_recursion() {
    let n = 200_000u64;
    let mut spans = vec![span("s0", None, "svc", 0, 2 * n)];
    for i in 1..n {
        spans.push(span(
            &format!("s{i}"),
            Some(&format!("s{}", i - 1)),
            "svc",
            i,
            2 * (n - i),
        ));
    }
    let traces = Traces::from_records(spans);
    let trace = traces.get("t").unwrap();
    assert_eq!(trace.nodes().last().unwrap().depth(), n as usize - 1);
    assert_eq!(trace.critical_path().spans().len(), n as usize);
    let times = trace.self_times();
    assert_eq!(times[0], Duration::from_millis(2));
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
    // The u64 arithmetic writes what the u128 one writes, at every rounding edge.
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut values: Vec<u64> = Vec::new();
    for edge in [
        0_u64,
        500,
        1_000,
        9_995,
        10_000,
        999_950,
        1_000_000,
        999_995_000,
        1_000_000_000,
    ] {
        values.extend(edge.saturating_sub(20)..edge + 20);
    }
    for step in [1_000_u64, 10_000, 100_000, 10_000_000] {
        for q in 0..300 {
            values.extend([
                q * step + step / 2,
                q * step + step / 2 + 1,
                q * step + step / 2 - 1,
            ]);
        }
    }
    for _ in 0..100_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        values.push(rng >> (rng % 60));
    }
    values.extend([u64::MAX, u64::MAX - 1, 1 << 63]);
    for ns in values {
        let d = Duration::from_nanos(ns);
        let (mut fast, mut wide) = (String::new(), String::new());
        render::push_duration(&mut fast, d);
        render::push_duration_wide(&mut wide, d);
        assert_eq!(fast, wide, "{ns}");
    }
    assert_eq!(format_duration(Duration::MAX), {
        let mut wide = String::new();
        render::push_duration_wide(&mut wide, Duration::MAX);
        wide
    });
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
    assert_eq!(report.spans.len(), 2);
    assert_eq!(report.malformed.len(), 1);
    assert_eq!(
        (
            report.malformed[0].source.as_str(),
            report.malformed[0].line
        ),
        ("mixed", 2)
    );
    let traces = Traces::from_spans(report.spans);
    let worker = traces
        .iter()
        .next()
        .unwrap()
        .find("0102030405060708")
        .unwrap()
        .record();
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

#[test]
fn a_journal_read_in_blocks_on_several_threads_keeps_line_numbers_and_every_span() {
    // ~9 MB: three blocks of 4 MiB, parsed by several workers.
    let mut text = String::new();
    let mut expected_bad = Vec::new();
    for i in 1..=90_000u64 {
        if i == 3 || i == 45_001 || i == 89_999 {
            text.push_str("not json\n");
            expected_bad.push(i as usize);
            continue;
        }
        let parent = if i == 1 {
            String::new()
        } else {
            format!(r#","parent_span_id":"{:016x}""#, 1)
        };
        text.push_str(&format!(
            r#"{{"trace_id":"{:032x}","span_id":"{i:016x}"{parent},"service_name":"svc{}","operation_name":"op","latency_ms":1,"status":"ok","attributes":{{"padding":"{}"}}}}"#,
            7,
            i % 3,
            "x".repeat(40)
        ));
        text.push('\n');
    }
    let path = std::env::temp_dir().join(format!("tracehop-blocks-{}.jsonl", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let input = read_files_with(&[&path], Detail::Lean).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<usize> = input.malformed.iter().map(|m| m.line).collect();
    assert_eq!(lines, expected_bad);
    assert_eq!(input.spans.len(), 90_000 - 3);
    let traces = Traces::from_spans(input.spans);
    assert_eq!(traces.len(), 1);
    let trace = traces.iter().next().unwrap();
    assert_eq!(trace.roots().count(), 1);
    assert_eq!(trace.services(), ["svc0", "svc1", "svc2"]);
    assert_eq!(trace.node(0).children().count(), 90_000 - 4);
}

#[test]
fn the_fast_time_parser_agrees_with_the_general_one() {
    for text in [
        "2026-03-21T15:17:00Z",
        "2026-03-21T15:17:00.1Z",
        "2026-03-21T15:17:00.123456789Z",
        "2024-02-29T23:59:59.999999999Z",
        "1970-01-01T00:00:00Z",
        "2100-12-31T00:00:00.000001Z",
    ] {
        let line =
            format!(r#"{{"trace_id":"t","span_id":"s","start_time":"{text}","latency_ms":0}}"#);
        let input = read_bytes("t", line.as_bytes());
        let traces = Traces::from_spans(input.spans);
        let start = traces.iter().next().unwrap().node(0).start();
        assert_eq!(start, crate::time::parse_rfc3339(text), "{text}");
    }
    // Not in the fast form: read by the general parser, or reported.
    let input = read_bytes(
        "t",
        br#"{"trace_id":"t","span_id":"s","start_time":"2026-03-21 15:17:00"}"#,
    );
    assert_eq!(input.spans.len(), 1);
    let input = read_bytes(
        "t",
        br#"{"trace_id":"t","span_id":"s","start_time":"yesterday"}"#,
    );
    assert_eq!(input.malformed.len(), 1);
}
