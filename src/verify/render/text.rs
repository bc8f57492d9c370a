//! The text tree and the findings list, written line by line.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use super::lines::{critical_path_text, id_len, span_line};
use super::{format_duration, shorten, RenderOptions};
use crate::verify::findings::{FailedSpan, Finding, Report};
use crate::verify::node::Trace;
use crate::verify::rules::{describe, label};
use crate::verify::Traces;

/// Indentation stops growing at this depth.
pub(crate) const MAX_INDENT: usize = 32;
/// A longer critical path shows its first and last this many spans.
pub(crate) const PATH_SHOWN: usize = 20;

pub(crate) struct Paint {
    pub(crate) on: bool,
}

impl Paint {
    pub(crate) fn wrap<'t>(&self, code: &str, text: &'t str) -> Cow<'t, str> {
        if self.on {
            Cow::Owned(format!("\x1b[{code}m{text}\x1b[0m"))
        } else {
            Cow::Borrowed(text)
        }
    }
    pub(crate) fn bold<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("1", t)
    }
    pub(crate) fn dim<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("2", t)
    }
    pub(crate) fn red<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("31", t)
    }
    pub(crate) fn green<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("32", t)
    }
    pub(crate) fn yellow<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("33", t)
    }
    pub(crate) fn cyan<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("36", t)
    }
}

/// Every trace as a text tree with its summary, failed spans and findings, then a total
/// line.
pub fn text(traces: &Traces, report: &Report, options: &RenderOptions) -> String {
    let mut out = Vec::new();
    // Writing to memory cannot fail.
    let _ = write_text(&mut out, traces, report, options);
    String::from_utf8(out).unwrap_or_default()
}

/// [`text`], written to `out` a trace at a time.
pub fn write_text(
    out: &mut impl Write,
    traces: &Traces,
    report: &Report,
    options: &RenderOptions,
) -> io::Result<()> {
    let paint = Paint { on: options.color };
    if traces.is_empty() {
        return out.write_all(b"no spans\n");
    }
    let by_trace = ByTrace::new(report);
    let runs = traces.continuations();
    // Small traces are drawn in batches, a share of each batch per core, and written in
    // order; a big trace is drawn on this thread and written as it grows.
    const BIG: usize = 10_000;
    const BATCH: usize = 1024;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let (n, mut i) = (traces.len(), 0);
    while i < n {
        if traces.trace(i).len() > BIG {
            let mut text = String::new();
            if i > 0 {
                text.push('\n');
            }
            trace_text(
                &mut text,
                Some(&mut *out),
                traces.trace(i),
                &by_trace,
                &runs,
                &paint,
            )?;
            out.write_all(text.as_bytes())?;
            i += 1;
            continue;
        }
        let mut end = i;
        while end < n && end - i < BATCH * workers && traces.trace(end).len() <= BIG {
            end += 1;
        }
        let chunk = (end - i).div_ceil(workers);
        let (by_trace, runs, paint) = (&by_trace, &runs, &paint);
        let parts: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (i..end)
                .step_by(chunk)
                .map(|from| {
                    scope.spawn(move || {
                        // About two lines of ~100 bytes per span (tree and critical path).
                        let spans: usize = (from..(from + chunk).min(end))
                            .map(|t| traces.trace(t).len())
                            .sum();
                        let mut text = String::with_capacity(spans * 200 + 1024);
                        for t in from..(from + chunk).min(end) {
                            if t > 0 {
                                text.push('\n');
                            }
                            // Drawing into memory cannot fail.
                            let _ =
                                trace_text(&mut text, None, traces.trace(t), by_trace, runs, paint);
                        }
                        text
                    })
                })
                .collect();
            crate::verify::join_all(handles)
        });
        for part in parts {
            out.write_all(part.as_bytes())?;
        }
        i = end;
    }
    writeln!(out, "\n{}", paint.total(traces, report))
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
pub(crate) struct ByTrace<'a> {
    findings: HashMap<&'a str, Vec<&'a Finding>>,
    errors: HashMap<&'a str, Vec<&'a FailedSpan>>,
}

impl<'a> ByTrace<'a> {
    pub(crate) fn new(report: &'a Report) -> ByTrace<'a> {
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

    pub(crate) fn findings(&self, trace_id: &str) -> &[&'a Finding] {
        self.findings.get(trace_id).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn errors(&self, trace_id: &str) -> &[&'a FailedSpan] {
        self.errors.get(trace_id).map_or(&[], Vec::as_slice)
    }
}

/// One trace's text; with `w`, written out as it grows (for a trace too big to hold).
fn trace_text(
    out: &mut String,
    mut w: Option<&mut dyn Write>,
    trace: Trace<'_>,
    report: &ByTrace<'_>,
    runs: &crate::verify::Continuations<'_>,
    p: &Paint,
) -> io::Result<()> {
    let self_times = trace.self_times();
    let path = trace.critical_path();
    let summary = trace.summary_with(&self_times, &path, false);
    let len = id_len(&trace);
    let trace_id = trace.trace_id().to_string();
    let _ = writeln!(
        out,
        "trace_id: {}  ({} span{}, {} service{}{})",
        p.bold(&trace_id),
        summary.spans,
        if summary.spans == 1 { "" } else { "s" },
        summary.services.len(),
        if summary.services.len() == 1 { "" } else { "s" },
        summary
            .duration
            .map(|d| format!(", {}", format_duration(d)))
            .unwrap_or_default()
    );
    if let Some((consumer, send)) = runs.continues(trace.index()) {
        let _ = writeln!(
            out,
            "continues trace {}: {} links {}",
            send.trace().trace_id(),
            describe(&consumer),
            describe(&send)
        );
    }
    for node in trace.nodes() {
        span_line(out, node, len, p);
        if let Some(w) = w.as_mut().filter(|_| out.len() > 1 << 16) {
            w.write_all(out.as_bytes())?;
            out.clear();
        }
    }

    let find = |id: &str| trace.find(id);
    if let Some((id, d)) = &summary.slowest {
        if let Some(node) = find(id) {
            let _ = writeln!(
                out,
                "slowest: {} span {} {}",
                label(&node),
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
            if let Some(node) = find(id) {
                let _ = write!(
                    line,
                    ", longest {} before {} span {}",
                    format_duration(*d),
                    label(&node),
                    shorten(id, len)
                );
            }
        }
        let _ = writeln!(out, "{line} (in no service's time)");
    }
    critical_path_text(out, &trace, &path, len);

    let errors = report.errors(&trace_id);
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

    let findings = report.findings(&trace_id);
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
    Ok(())
}

/// One line per finding and failed span, for `check`: rule, spans (with service and
/// operation), message and fix.
pub fn findings_text(traces: &Traces, report: &Report, options: &RenderOptions) -> String {
    let mut out = Vec::new();
    // Writing to memory cannot fail.
    let _ = write_findings(&mut out, traces, report, options);
    String::from_utf8(out).unwrap_or_default()
}

/// [`findings_text`], written to `out`.
pub fn write_findings(
    out: &mut impl Write,
    traces: &Traces,
    report: &Report,
    options: &RenderOptions,
) -> io::Result<()> {
    let p = Paint { on: options.color };
    for f in &report.findings {
        writeln!(
            out,
            "{} trace {}: {}",
            p.yellow(&format!("[{}]", f.rule)),
            f.trace_id,
            f.message
        )?;
        writeln!(out, "  fix: {}", f.fix)?;
    }
    for e in &report.errors {
        let span = traces
            .get(&e.trace_id)
            .and_then(|t| t.find(&e.span_id))
            .map(|n| describe(&n))
            .unwrap_or_else(|| e.span_id.clone());
        writeln!(
            out,
            "{} trace {}: {} failed: {}",
            p.red("[failed span]"),
            e.trace_id,
            span,
            e.error.as_deref().unwrap_or("error")
        )?;
    }
    writeln!(out, "{}", p.total(traces, report))
}
