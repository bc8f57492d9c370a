//! Every trace as JSON, serialized as it is written (no `Value` tree of the whole input).

use std::cell::Cell;
use std::io::{self, Write};

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::ms;
use super::text::ByTrace;
use crate::verify::findings::Report;
use crate::verify::node::{Node, Trace};
use crate::verify::Traces;

/// Every trace, its spans in tree order with depth, its summary, the findings and the
/// failed spans, as one JSON object:
///
/// ```text
/// {"whole": bool, "traces": [{"trace_id", "whole", "spans": [...], "summary": {...}}],
///  "findings": [...], "errors": [...], "total": {"traces", "spans", ...}}
/// ```
///
/// Each span has `on_critical_path`; each summary has `critical_path` (span ids) and
/// `critical_path_steps` (span, from, to, waiting); a trace that continues another by a
/// link has `continues` (`trace_id`, `consumer_span_id`, `send_span_id`).
pub fn json(traces: &Traces, report: &Report) -> Value {
    let extra = Map::new();
    serde_json::to_value(Document {
        traces,
        report,
        extra: &extra,
    })
    .unwrap_or(Value::Null)
}

/// [`json()`], pretty-printed to `out` as it is serialized.
pub fn write_json(out: &mut impl Write, traces: &Traces, report: &Report) -> io::Result<()> {
    write_json_with(out, traces, report, Map::new())
}

/// [`write_json`] with `extra` members after the others (the CLI adds `input`).
pub fn write_json_with(
    out: &mut impl Write,
    traces: &Traces,
    report: &Report,
    extra: Map<String, Value>,
) -> io::Result<()> {
    let document = Document {
        traces,
        report,
        extra: &extra,
    };
    serde_json::to_writer_pretty(&mut *out, &document)?;
    out.write_all(b"\n")
}

struct Document<'a> {
    traces: &'a Traces,
    report: &'a Report,
    extra: &'a Map<String, Value>,
}

impl Serialize for Document<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (traces, report) = (self.traces, self.report);
        let by_trace = ByTrace::new(report);
        let runs = traces.continuations();
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("whole", &report.is_whole())?;
        map.serialize_entry(
            "traces",
            &Each(Cell::new(Some(traces.iter().map(|trace| TraceJson {
                trace,
                whole: by_trace.findings(&trace.trace_id().to_string()).is_empty(),
                continues: runs.continues(trace.index()),
            })))),
        )?;
        map.serialize_entry("findings", &report.findings)?;
        map.serialize_entry("errors", &report.errors)?;
        map.serialize_entry(
            "total",
            &json!({
                "traces": traces.len(),
                "spans": traces.span_count(),
                "findings": report.findings.len(),
                "errors": report.errors.len(),
                "duplicates": traces.duplicates(),
            }),
        )?;
        for (key, value) in self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Serializes an iterator as a sequence, once.
struct Each<I>(Cell<Option<I>>);

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Each<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        if let Some(items) = self.0.take() {
            for item in items {
                seq.serialize_element(&item)?;
            }
        }
        seq.end()
    }
}

struct TraceJson<'a> {
    trace: Trace<'a>,
    whole: bool,
    continues: Option<(Node<'a>, Node<'a>)>,
}

impl Serialize for TraceJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let trace = self.trace;
        let self_times = trace.self_times();
        let path = trace.critical_path();
        let summary = trace.summary_with(&self_times, &path, true);
        let mut on_path = vec![false; trace.len()];
        for step in &path.steps {
            on_path[step.index] = true;
        }
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("trace_id", &trace.trace_id())?;
        map.serialize_entry("whole", &self.whole)?;
        if let Some((consumer, send)) = &self.continues {
            map.serialize_entry(
                "continues",
                &json!({
                    "trace_id": send.trace().trace_id(),
                    "consumer_span_id": consumer.span_id(),
                    "send_span_id": send.span_id(),
                }),
            )?;
        }
        let spans = trace.nodes().map(|node| SpanJson {
            node,
            self_time_ms: ms(self_times[node.index()]),
            on_critical_path: on_path[node.index()],
        });
        map.serialize_entry("spans", &Each(Cell::new(Some(spans))))?;
        map.serialize_entry(
            "summary",
            &SummaryJson {
                trace,
                summary: &summary,
                path: &path,
            },
        )?;
        map.end()
    }
}

/// A trace's summary; the critical path (as long as the trace, for a chain) streamed.
struct SummaryJson<'a> {
    trace: Trace<'a>,
    summary: &'a crate::verify::Summary,
    path: &'a crate::verify::CriticalPath,
}

impl Serialize for SummaryJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (trace, summary) = (self.trace, self.summary);
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("spans", &summary.spans)?;
        map.serialize_entry("services", &summary.services)?;
        map.serialize_entry("duration_ms", &summary.duration.map(ms))?;
        map.serialize_entry(
            "slowest",
            &summary.slowest.as_ref().map(|(id, d)| {
                json!({
                    "span_id": id, "latency_ms": ms(*d),
                })
            }),
        )?;
        map.serialize_entry(
            "service_self_time_ms",
            &summary
                .service_times
                .iter()
                .map(|s| json!({"service": s.service, "self_time_ms": ms(s.self_time)}))
                .collect::<Vec<_>>(),
        )?;
        map.serialize_entry(
            "busiest_service",
            &summary.busiest_service().map(|s| &s.service),
        )?;
        map.serialize_entry("queue_time_ms", &ms(summary.queue_time))?;
        map.serialize_entry("queued_messages", &summary.queued_messages)?;
        map.serialize_entry(
            "longest_queue",
            &summary.longest_queue.as_ref().map(|(id, d)| {
                json!({
                    "span_id": id, "queue_time_ms": ms(*d),
                })
            }),
        )?;
        map.serialize_entry("critical_path", &summary.critical_path)?;
        map.serialize_entry("critical_path_ms", &ms(summary.critical_path_duration))?;
        map.serialize_entry(
            "critical_path_waiting_ms",
            &ms(summary.critical_path_waiting),
        )?;
        let steps = self.path.steps.iter().map(|step| StepJson { trace, step });
        map.serialize_entry("critical_path_steps", &Each(Cell::new(Some(steps))))?;
        map.end()
    }
}

struct StepJson<'a> {
    trace: Trace<'a>,
    step: &'a crate::verify::PathStep,
}

impl Serialize for StepJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let step = self.step;
        let mut map = s.serialize_map(Some(5))?;
        map.serialize_entry("span_id", &self.trace.node(step.index).span_id())?;
        map.serialize_entry("from", &crate::time::rfc3339(step.from))?;
        map.serialize_entry("to", &crate::time::rfc3339(step.to))?;
        map.serialize_entry("ms", &ms(step.duration()))?;
        map.serialize_entry("waiting", &step.waiting)?;
        map.end()
    }
}

struct SpanJson<'a> {
    node: Node<'a>,
    self_time_ms: f64,
    on_critical_path: bool,
}

impl Serialize for SpanJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = &self.node;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("span_id", &n.span_id())?;
        map.serialize_entry("parent_span_id", &n.parent_span_id())?;
        map.serialize_entry("depth", &n.depth())?;
        map.serialize_entry("parent_missing", &n.parent_missing())?;
        map.serialize_entry("service_name", &n.service())?;
        map.serialize_entry("operation_name", &n.operation())?;
        map.serialize_entry("span_kind", &n.kind())?;
        map.serialize_entry("start_time", &n.start().map(crate::time::rfc3339))?;
        map.serialize_entry("latency_ms", &n.duration().map(ms))?;
        map.serialize_entry("self_time_ms", &self.self_time_ms)?;
        map.serialize_entry("queue_time_ms", &n.queue_time().map(ms))?;
        map.serialize_entry("status", &n.status())?;
        map.serialize_entry("error", &n.error())?;
        match n.raw_attributes().map(serde_json::from_str::<&RawValue>) {
            Some(Ok(raw)) => map.serialize_entry("attributes", raw)?,
            _ => map.serialize_entry("attributes", &n.attributes())?,
        }
        let links: Vec<Value> = n
            .links()
            .map(|l| {
                let attributes = l.attributes();
                let mut link = json!({"trace_id": l.trace_id(), "span_id": l.span_id()});
                if !attributes.is_empty() {
                    link["attributes"] = json!(attributes);
                }
                link
            })
            .collect();
        map.serialize_entry("links", &links)?;
        let events = n.events();
        if !events.is_empty() {
            map.serialize_entry("events", &events)?;
        }
        map.serialize_entry("on_critical_path", &self.on_critical_path)?;
        map.end()
    }
}
