//! The text tree and the findings list, written line by line.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use super::{format_duration, shorten, RenderOptions};
use crate::journal::Status;
use crate::verify::findings::{FailedSpan, Finding, Report};
use crate::verify::node::{Node, Trace};
use crate::verify::rules::{blank, describe, label, operation_of, service_of};
use crate::verify::store::{Id, SpanKey};
use crate::verify::timing::CriticalPath;
use crate::verify::Traces;

/// Indentation stops growing at this depth.
const MAX_INDENT: usize = 32;
/// A longer critical path shows its first and last this many spans.
const PATH_SHOWN: usize = 20;

pub(crate) struct Paint {
    pub(crate) on: bool,
}

impl Paint {
    fn wrap<'t>(&self, code: &str, text: &'t str) -> Cow<'t, str> {
        if self.on {
            Cow::Owned(format!("\x1b[{code}m{text}\x1b[0m"))
        } else {
            Cow::Borrowed(text)
        }
    }
    fn bold<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("1", t)
    }
    fn dim<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("2", t)
    }
    fn red<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("31", t)
    }
    fn green<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("32", t)
    }
    fn yellow<'t>(&self, t: &'t str) -> Cow<'t, str> {
        self.wrap("33", t)
    }
    fn cyan<'t>(&self, t: &'t str) -> Cow<'t, str> {
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
                        let mut text = String::new();
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
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
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

/// The shortest prefix length, from 8 up, that tells apart every span id of `trace` and
/// every parent id they name.
fn id_len(trace: &Trace<'_>) -> usize {
    let spans = trace.spans();
    let keys = spans
        .iter()
        .flat_map(|s| std::iter::once(s.id).chain(s.parent));
    let mut hex: Vec<u64> = Vec::new();
    let mut text: Vec<String> = Vec::new();
    for key in keys {
        match key {
            SpanKey::Hex(v) => hex.push(v),
            SpanKey::Text(_) => {
                let id = key.id(&trace.all.ids).to_string();
                if id.len() > 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    text.push(id);
                }
            }
        }
    }
    hex.sort_unstable();
    hex.dedup();
    text.sort_unstable();
    text.dedup();
    let mut len = 8;
    while len < 16 {
        let shift = (16 - len) * 4;
        let hex_ok = hex.windows(2).all(|w| w[0] >> shift != w[1] >> shift);
        let mut short: Vec<&str> = text.iter().map(|id| shorten(id, len)).collect();
        short.dedup();
        if hex_ok && short.len() == text.len() {
            return len;
        }
        len += 4;
    }
    len
}

fn id_text(id: Id<'_>, len: usize) -> String {
    id.prefix(len).into_owned()
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
    let summary = trace.summary_with(&self_times, &path);
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

/// `critical path: 368ms, 183ms of it waiting`, then a line per span on it: its time on
/// the path and how long it waited first.
fn critical_path_text(out: &mut String, trace: &Trace<'_>, path: &CriticalPath, len: usize) {
    let spans = path.spans();
    if spans.len() < 2 {
        return;
    }
    let mut work = vec![std::time::Duration::ZERO; trace.len()];
    let mut waited = vec![std::time::Duration::ZERO; trace.len()];
    for step in &path.steps {
        let slot = if step.waiting { &mut waited } else { &mut work };
        slot[step.index] += step.duration();
    }
    let _ = write!(
        out,
        "critical path: {} over {} spans",
        format_duration(path.duration()),
        spans.len()
    );
    if !path.waiting().is_zero() {
        let _ = write!(out, ", {} of it waiting", format_duration(path.waiting()));
    }
    out.push('\n');
    for (k, &i) in spans.iter().enumerate() {
        if spans.len() > 2 * PATH_SHOWN && k == PATH_SHOWN {
            let _ = writeln!(out, "  ... {} more", spans.len() - 2 * PATH_SHOWN);
        }
        if spans.len() > 2 * PATH_SHOWN && k >= PATH_SHOWN && k < spans.len() - PATH_SHOWN {
            continue;
        }
        let node = trace.node(i);
        let _ = write!(
            out,
            "  {} {} {} ",
            service_of(&node),
            operation_of(&node),
            Prefix(node.span_id(), len)
        );
        super::push_duration(out, work[i]);
        if !waited[i].is_zero() {
            out.push_str(" (waited ");
            super::push_duration(out, waited[i]);
            out.push(')');
        }
        out.push('\n');
    }
}

fn span_line(out: &mut String, node: Node<'_>, len: usize, p: &Paint) {
    // Deep chains (a retry loop, a recursive agent) would make lines quadratic in size:
    // beyond MAX_INDENT levels, say the depth instead of indenting further.
    let depth = node.depth();
    if depth <= MAX_INDENT {
        out.extend(std::iter::repeat_n(' ', 2 * depth));
    } else {
        out.extend(std::iter::repeat_n(' ', 2 * MAX_INDENT));
        let _ = write!(out, "(depth {depth}) ");
    }
    let service = if blank(node.service()) {
        p.yellow(service_of(&node))
    } else {
        p.cyan(service_of(&node))
    };
    let operation = if blank(node.operation()) {
        p.yellow(operation_of(&node))
    } else {
        p.bold(operation_of(&node))
    };
    let _ = write!(out, "{service} {operation} span ");
    if p.on {
        out.push_str(&p.dim(&id_text(node.span_id(), len)));
    } else {
        let _ = write!(out, "{}", Prefix(node.span_id(), len));
    }
    out.push_str(" parent=");
    match node.parent_span_id() {
        None => out.push('-'),
        Some(id) if node.parent_missing() => {
            out.push_str(&p.yellow(&format!("{} (missing)", id.prefix(len))));
        }
        Some(id) if node.in_cycle() => {
            out.push_str(&p.yellow(&format!("{} (loop)", id.prefix(len))))
        }
        Some(id) => {
            let _ = write!(out, "{}", Prefix(id, len));
        }
    }
    out.push(' ');
    match node.duration() {
        Some(d) => super::push_duration(out, d),
        None => out.push_str("latency=?"),
    }
    if let Some(q) = node.queue_time() {
        out.push_str(" queue=");
        super::push_duration(out, q);
    }
    let status = match node.status() {
        Status::Ok => p.green("ok"),
        Status::Error => p.red("error"),
        Status::Unset => Cow::Borrowed("unset"),
    };
    let _ = write!(out, " status={status}");
    if let Some(error) = node.error() {
        let _ = write!(out, " error={}", p.red(&format!("{error:?}")));
    }
    if let Some(attempt) = node.attempt().filter(|&a| a > 1) {
        let _ = write!(out, " attempt={attempt}");
    }
    if let Some(n) = node.batch_size() {
        let _ = write!(out, " batch={n}");
    }
    if node.links().len() > 0 {
        out.push_str(" links=");
        for (i, l) in node.links().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{}/{}",
                Prefix(l.trace_id(), 8),
                Prefix(l.span_id(), len)
            );
        }
    }
    if let Some(why) = node.context_rejected() {
        let _ = write!(out, " {}", p.yellow(&format!("context=rejected({why})")));
    } else if node.context_missing() {
        let _ = write!(out, " {}", p.yellow("context=missing"));
    } else if node.context_linked() {
        out.push_str(" context=linked");
    }
    out.push('\n');
}

/// An id shortened as the tree shows it, written without an intermediate string.
struct Prefix<'a>(Id<'a>, usize);

impl std::fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.write_prefix(f, self.1)
    }
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
            p.red("[error]"),
            e.trace_id,
            span,
            e.error.as_deref().unwrap_or("error")
        )?;
    }
    writeln!(out, "{}", p.total(traces, report))
}
