//! Rendering traces and findings: text trees for people, JSON for machines.
//!
//! The text form draws each trace the way the article shows a run, one line per span,
//! indented by depth:
//!
//! ```text
//! trace_id: tr_7a31
//! gateway handle_request span g1 parent=- 18ms status=ok
//!   agent_runtime plan span a1 parent=g1 240ms queue=3ms status=ok
//! ```
//!
//! followed by where the time went (slowest span, self time per service, queue time, the
//! critical path), the spans that failed, and where context broke.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::findings::{describe, label, operation_of, service_of, FailedSpan, Finding, Report};
use super::tree::{queue_time_of, Node, Trace, Traces};
use crate::journal::Status;
use crate::messaging::attributes as attr;

/// Indentation stops growing at this depth.
const MAX_INDENT: usize = 32;

/// How to render text.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Use ANSI colours (for a terminal).
    pub color: bool,
}

impl RenderOptions {
    /// No colours.
    pub fn plain() -> RenderOptions {
        RenderOptions { color: false }
    }

    /// ANSI colours.
    pub fn colored() -> RenderOptions {
        RenderOptions { color: true }
    }
}

/// A shortened span id: the first 8 digits of a long hex id, any other id as it is.
pub fn short_id(id: &str) -> &str {
    shorten(id, 8)
}

/// The first `len` digits of a hex id longer than that; any other id as it is.
fn shorten(id: &str, len: usize) -> &str {
    if id.len() > len && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..len]
    } else {
        id
    }
}

/// The shortest prefix length, from 8 up, that tells apart every span id of `trace` and
/// every parent id they name.
fn id_len(trace: &Trace) -> usize {
    let ids: Vec<&str> = trace
        .spans()
        .iter()
        .flat_map(|s| std::iter::once(s.span_id.as_str()).chain(s.parent_span_id.as_deref()))
        .collect();
    let mut len = 8;
    loop {
        let mut short: Vec<&str> = ids.iter().map(|id| shorten(id, len)).collect();
        let mut full = ids.clone();
        short.sort_unstable();
        short.dedup();
        full.sort_unstable();
        full.dedup();
        if short.len() == full.len() || len >= 32 {
            return len;
        }
        len += 4;
    }
}

/// A duration in milliseconds (`18ms`, `12.5ms`, `0.42ms`, `0.004ms`), or seconds from one second up
/// (`1.3s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    let (text, unit) = if ms >= 1000.0 {
        (format!("{:.2}", ms / 1000.0), "s")
    } else if ms >= 1.0 {
        (format!("{ms:.1}"), "ms")
    } else if ms >= 0.01 {
        (format!("{ms:.2}"), "ms")
    } else {
        (format!("{ms:.3}"), "ms")
    };
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn bold(&self, t: &str) -> String {
        self.wrap("1", t)
    }
    fn dim(&self, t: &str) -> String {
        self.wrap("2", t)
    }
    fn red(&self, t: &str) -> String {
        self.wrap("31", t)
    }
    fn green(&self, t: &str) -> String {
        self.wrap("32", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.wrap("33", t)
    }
    fn cyan(&self, t: &str) -> String {
        self.wrap("36", t)
    }
}

/// Every trace as a text tree with its summary, failed spans and findings, then a total
/// line.
pub fn text(traces: &Traces, report: &Report, options: &RenderOptions) -> String {
    let paint = Paint { on: options.color };
    let mut out = String::new();
    if traces.is_empty() {
        out.push_str("no spans\n");
        return out;
    }
    let by_trace = ByTrace::new(report);
    for (i, trace) in traces.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        trace_text(&mut out, trace, &by_trace, &paint);
    }
    out.push('\n');
    out.push_str(&paint.total(traces, report));
    out.push('\n');
    out
}

/// The last line of [`text`]: how many traces and spans, and whether they are whole.
pub fn total_line(traces: &Traces, report: &Report, options: &RenderOptions) -> String {
    Paint { on: options.color }.total(traces, report)
}

impl Paint {
    fn total(&self, traces: &Traces, report: &Report) -> String {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let mut line = format!(
            "{}, {}: ",
            plural(traces.len(), "trace"),
            plural(traces.span_count(), "span")
        );
        if report.is_whole() {
            line.push_str(&self.green("whole"));
        } else {
            let mut broken: Vec<&str> = report
                .findings
                .iter()
                .map(|f| f.trace_id.as_str())
                .collect();
            broken.sort_unstable();
            broken.dedup();
            line.push_str(&self.red(&format!(
                "{} in {}",
                plural(report.findings.len(), "finding"),
                plural(broken.len(), "trace")
            )));
        }
        if !report.errors.is_empty() {
            let _ = write!(line, ", {}", plural(report.errors.len(), "failed span"));
        }
        if traces.duplicates() > 0 {
            let _ = write!(
                line,
                " ({} ignored)",
                plural(traces.duplicates(), "duplicate record")
            );
        }
        line
    }
}

/// A report's findings and failed spans grouped by trace.
struct ByTrace<'a> {
    findings: HashMap<&'a str, Vec<&'a Finding>>,
    errors: HashMap<&'a str, Vec<&'a FailedSpan>>,
}

impl<'a> ByTrace<'a> {
    fn new(report: &'a Report) -> ByTrace<'a> {
        let mut by = ByTrace {
            findings: HashMap::new(),
            errors: HashMap::new(),
        };
        for f in &report.findings {
            by.findings.entry(f.trace_id.as_str()).or_default().push(f);
        }
        for e in &report.errors {
            by.errors.entry(e.trace_id.as_str()).or_default().push(e);
        }
        by
    }

    fn findings(&self, trace_id: &str) -> &[&'a Finding] {
        self.findings.get(trace_id).map_or(&[], Vec::as_slice)
    }

    fn errors(&self, trace_id: &str) -> &[&'a FailedSpan] {
        self.errors.get(trace_id).map_or(&[], Vec::as_slice)
    }
}

fn trace_text(out: &mut String, trace: &Trace, report: &ByTrace<'_>, p: &Paint) {
    let summary = trace.summary();
    let len = id_len(trace);
    let _ = writeln!(
        out,
        "trace_id: {}  ({} span{}, {} service{}{})",
        p.bold(trace.trace_id()),
        summary.spans,
        if summary.spans == 1 { "" } else { "s" },
        summary.services.len(),
        if summary.services.len() == 1 { "" } else { "s" },
        summary
            .duration
            .map(|d| format!(", {}", format_duration(d)))
            .unwrap_or_default()
    );
    for node in trace.nodes() {
        span_line(out, node, len, p);
    }

    let find = |id: &str| trace.find(id).map(|n| n.span());
    if let Some((id, d)) = &summary.slowest {
        if let Some(span) = find(id) {
            let _ = writeln!(
                out,
                "slowest: {} span {} {}",
                label(span),
                shorten(id, len),
                format_duration(*d)
            );
        }
    }
    if !summary.service_times.is_empty() {
        let parts: Vec<String> = summary
            .service_times
            .iter()
            .map(|s| format!("{} {}", s.service, format_duration(s.self_time)))
            .collect();
        let _ = writeln!(out, "most time (self): {}", parts.join(", "));
    }
    if summary.queued_messages > 0 {
        let mut line = format!(
            "queue time: {} over {} message{}",
            format_duration(summary.queue_time),
            summary.queued_messages,
            if summary.queued_messages == 1 {
                ""
            } else {
                "s"
            }
        );
        if let Some((id, d)) = &summary.longest_queue {
            if let Some(span) = find(id) {
                let _ = write!(
                    line,
                    ", longest {} before {} span {}",
                    format_duration(*d),
                    label(span),
                    shorten(id, len)
                );
            }
        }
        let _ = writeln!(out, "{line} (in no service's time)");
    }
    if summary.critical_path.len() > 1 {
        let steps: Vec<String> = summary
            .critical_path
            .iter()
            .filter_map(|id| {
                let span = find(id)?;
                Some(format!("{} {}", service_of(span), shorten(id, len)))
            })
            .collect();
        let _ = writeln!(out, "critical path: {}", steps.join(" > "));
    }

    let errors = report.errors(trace.trace_id());
    if errors.is_empty() {
        let _ = writeln!(out, "errors: none");
    } else {
        let _ = writeln!(out, "errors: {}", p.red(&errors.len().to_string()));
        for e in errors {
            let what = match (&e.error_type, &e.error) {
                (Some(t), Some(m)) => format!("{t}: {m}"),
                (None, Some(m)) => m.clone(),
                (Some(t), None) => t.clone(),
                (None, None) => "error".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {} {} span {}: {}",
                e.service_name.as_deref().unwrap_or("<no service>"),
                e.operation_name.as_deref().unwrap_or("<no operation>"),
                shorten(&e.span_id, len),
                p.red(&what)
            );
        }
    }

    let findings = report.findings(trace.trace_id());
    if findings.is_empty() {
        let _ = writeln!(out, "context: {}", p.green("whole"));
    } else {
        let _ = writeln!(out, "context broke: {}", p.red(&findings.len().to_string()));
        for f in findings {
            let _ = writeln!(
                out,
                "  {} {}",
                p.yellow(&format!("[{}]", f.rule)),
                f.message
            );
            let _ = writeln!(out, "    fix: {}", f.fix);
        }
    }
}

fn span_line(out: &mut String, node: Node<'_>, len: usize, p: &Paint) {
    let span = node.span();
    // Deep chains (a retry loop, a recursive agent) would make lines quadratic in size:
    // beyond MAX_INDENT levels, say the depth instead of indenting further.
    let indent = if node.depth() <= MAX_INDENT {
        "  ".repeat(node.depth())
    } else {
        format!("{}(depth {}) ", "  ".repeat(MAX_INDENT), node.depth())
    };
    let blank = |name: &Option<String>| name.as_deref().is_none_or(|n| n.trim().is_empty());
    let service = if blank(&span.service_name) {
        p.yellow(service_of(span))
    } else {
        p.cyan(service_of(span))
    };
    let operation = if blank(&span.operation_name) {
        p.yellow(operation_of(span))
    } else {
        p.bold(operation_of(span))
    };
    let parent = match span.parent_span_id.as_deref() {
        None => "-".to_owned(),
        Some(id) if node.parent_missing() => p.yellow(&format!("{} (missing)", shorten(id, len))),
        Some(id) if node.in_cycle() => p.yellow(&format!("{} (loop)", shorten(id, len))),
        Some(id) => shorten(id, len).to_owned(),
    };
    let latency = span
        .duration()
        .map_or_else(|| "latency=?".to_owned(), format_duration);
    let mut line = format!(
        "{indent}{service} {operation} span {} parent={parent} {latency}",
        p.dim(shorten(&span.span_id, len))
    );
    if let Some(q) = queue_time_of(span) {
        let _ = write!(line, " queue={}", format_duration(q));
    }
    let status = match span.status {
        Status::Ok => p.green("ok"),
        Status::Error => p.red("error"),
        Status::Unset => "unset".to_owned(),
    };
    let _ = write!(line, " status={status}");
    if let Some(error) = &span.error {
        let _ = write!(line, " error={}", p.red(&format!("{error:?}")));
    }
    if let Some(attempt) = span
        .attribute(attr::DELIVERY_ATTEMPT)
        .and_then(Value::as_i64)
    {
        if attempt > 1 {
            let _ = write!(line, " attempt={attempt}");
        }
    }
    if let Some(n) = span
        .attribute(attr::MESSAGING_BATCH_MESSAGE_COUNT)
        .and_then(Value::as_i64)
    {
        let _ = write!(line, " batch={n}");
    }
    if !span.links.is_empty() {
        let links: Vec<String> = span
            .links
            .iter()
            .map(|l| format!("{}/{}", short_id(&l.trace_id), shorten(&l.span_id, len)))
            .collect();
        let _ = write!(line, " links={}", links.join(","));
    }
    if let Some(why) = span.attribute(attr::CONTEXT_REJECTED) {
        let why = why.as_str().map_or_else(|| why.to_string(), str::to_owned);
        let _ = write!(line, " {}", p.yellow(&format!("context=rejected({why})")));
    } else if span
        .attribute(attr::CONTEXT_MISSING)
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let _ = write!(line, " {}", p.yellow("context=missing"));
    } else if span
        .attribute(attr::CONTEXT_LINKED)
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let _ = write!(line, " context=linked");
    }
    out.push_str(&line);
    out.push('\n');
}

fn ms(d: Duration) -> Value {
    json!(crate::time::millis_f64(d))
}

/// Every trace, its spans in tree order with depth, its summary, the findings and the
/// failed spans, as one JSON object:
///
/// ```text
/// {"whole": bool, "traces": [{"trace_id", "whole", "spans": [...], "summary": {...}}],
///  "findings": [...], "errors": [...], "total": {"traces", "spans", ...}}
/// ```
pub fn json(traces: &Traces, report: &Report) -> Value {
    let by_trace = ByTrace::new(report);
    let traces_json: Vec<Value> = traces
        .iter()
        .map(|trace| {
            let summary = trace.summary();
            let spans: Vec<Value> = trace
                .nodes()
                .map(|node| {
                    let s = node.span();
                    json!({
                        "span_id": s.span_id,
                        "parent_span_id": s.parent_span_id,
                        "depth": node.depth(),
                        "parent_missing": node.parent_missing(),
                        "service_name": s.service_name,
                        "operation_name": s.operation_name,
                        "span_kind": s.span_kind,
                        "start_time": s.start().map(crate::time::rfc3339),
                        "latency_ms": s.duration().map(ms),
                        "self_time_ms": ms(node.self_time()),
                        "queue_time_ms": queue_time_of(s).map(ms),
                        "status": s.status,
                        "error": s.error,
                        "attributes": s.attributes,
                        "links": s.links,
                    })
                })
                .collect();
            json!({
                "trace_id": trace.trace_id(),
                "whole": by_trace.findings(trace.trace_id()).is_empty(),
                "spans": spans,
                "summary": {
                    "spans": summary.spans,
                    "services": summary.services,
                    "duration_ms": summary.duration.map(ms),
                    "slowest": summary.slowest.as_ref().map(|(id, d)| json!({
                        "span_id": id, "latency_ms": ms(*d),
                    })),
                    "service_self_time_ms": summary.service_times.iter().map(|s| json!({
                        "service": s.service, "self_time_ms": ms(s.self_time),
                    })).collect::<Vec<_>>(),
                    "busiest_service": summary.busiest_service().map(|s| &s.service),
                    "queue_time_ms": ms(summary.queue_time),
                    "queued_messages": summary.queued_messages,
                    "longest_queue": summary.longest_queue.as_ref().map(|(id, d)| json!({
                        "span_id": id, "queue_time_ms": ms(*d),
                    })),
                    "critical_path": summary.critical_path,
                },
            })
        })
        .collect();
    json!({
        "whole": report.is_whole(),
        "traces": traces_json,
        "findings": report.findings,
        "errors": report.errors,
        "total": {
            "traces": traces.len(),
            "spans": traces.span_count(),
            "findings": report.findings.len(),
            "errors": report.errors.len(),
            "duplicates": traces.duplicates(),
        },
    })
}

/// One line per finding and failed span, for `check`: rule, spans (with service and
/// operation), message and fix.
pub fn findings_text(traces: &Traces, report: &Report, options: &RenderOptions) -> String {
    let p = Paint { on: options.color };
    let mut out = String::new();
    for f in &report.findings {
        let _ = writeln!(
            out,
            "{} trace {}: {}",
            p.yellow(&format!("[{}]", f.rule)),
            f.trace_id,
            f.message
        );
        let _ = writeln!(out, "  fix: {}", f.fix);
    }
    for e in &report.errors {
        let span = traces
            .get(&e.trace_id)
            .and_then(|t| t.find(&e.span_id))
            .map(|n| describe(n.span()))
            .unwrap_or_else(|| e.span_id.clone());
        let _ = writeln!(
            out,
            "{} trace {}: {} failed: {}",
            p.red("[error]"),
            e.trace_id,
            span,
            e.error.as_deref().unwrap_or("error")
        );
    }
    out.push_str(&p.total(traces, report));
    out.push('\n');
    out
}
