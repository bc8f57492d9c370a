//! The HTML view: one self-contained page (inline CSS and JS, nothing from the network).
//!
//! Each run (a trace and the traces that continue it by a link) is a waterfall on one time
//! axis: a row per span, indented by parent, coloured by service; the time a message
//! waited in a queue drawn as its own segment before its process span; delivery attempts
//! numbered under their send span; links drawn between rows; errors marked; the critical
//! path highlighted. Rows are rendered here (so span ids and operation names are in the
//! page as text, and it reads without JavaScript); the script adds collapsing subtrees,
//! a detail pane (attributes, events, links) and the link arrows.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde_json::Value;

use super::format_duration;
use super::html_row::{detail, row};
use super::text::ByTrace;
use crate::verify::findings::Report;
use crate::verify::node::Trace;
use crate::verify::rules::{operation_of, service_of};
use crate::verify::Traces;

const STYLE: &str = include_str!("view.css");
const SCRIPT: &str = include_str!("view.js");

/// Every trace as one self-contained HTML page.
pub fn html(traces: &Traces, report: &Report) -> String {
    let mut out = Vec::new();
    // Writing to memory cannot fail.
    let _ = write_html(&mut out, traces, report);
    String::from_utf8(out).unwrap_or_default()
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that is safe inside `<script>`: no `</` or `<!--`.
fn script_json(value: &Value) -> String {
    value.to_string().replace('<', "\\u003c")
}

/// [`html`], written to `out` a run at a time.
pub fn write_html(out: &mut impl Write, traces: &Traces, report: &Report) -> io::Result<()> {
    let by_trace = ByTrace::new(report);
    let continuations = traces.continuations();
    let runs = continuations.runs();
    let total = super::total_line(traces, report, &super::RenderOptions::plain());
    // Services get a colour each, in order of first appearance across the input.
    let mut services: Vec<&str> = Vec::new();
    for trace in traces.iter() {
        for s in trace.services() {
            if !services.contains(&s) {
                services.push(s);
            }
        }
    }
    write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tracehop: {}</title><style>{STYLE}</style></head><body>\n",
        esc(&total)
    )?;
    writeln!(
        out,
        "<header><h1>tracehop</h1><p class=\"total {}\">{}</p></header>",
        if report.is_whole() { "ok" } else { "bad" },
        esc(&total)
    )?;
    let mut page = String::new();
    legend(&mut page, &services);
    if runs.len() > 1 {
        index(&mut page, &runs, &by_trace);
    }
    out.write_all(page.as_bytes())?;
    let mut details: Vec<Value> = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        let mut section = String::new();
        run_section(
            &mut section,
            r,
            run,
            &by_trace,
            &continuations,
            &services,
            &mut details,
        );
        out.write_all(section.as_bytes())?;
    }
    write!(
        out,
        "<aside id=\"details\" hidden><button class=\"close\" title=\"close\">×</button>\
         <div class=\"body\"></div></aside>\n\
         <script type=\"application/json\" id=\"span-data\">{}</script>\n\
         <script>{SCRIPT}</script>\n</body></html>\n",
        script_json(&Value::Array(details))
    )
}

fn legend(out: &mut String, services: &[&str]) {
    out.push_str("<div class=\"legend\">");
    for (i, s) in services.iter().enumerate() {
        let _ = write!(
            out,
            "<span class=\"key\"><i class=\"c{}\"></i>{}</span>",
            i % 12,
            esc(s)
        );
    }
    out.push_str(
        "<span class=\"key\"><i class=\"queue-key\"></i>waiting in a queue</span>\
         <span class=\"key\"><i class=\"cp-key\"></i>critical path</span>\
         <span class=\"key\"><i class=\"err-key\"></i>error</span></div>\n",
    );
}

fn verdict(run: &[Trace<'_>], by_trace: &ByTrace<'_>) -> (usize, usize) {
    let ids: Vec<String> = run.iter().map(|t| t.trace_id().to_string()).collect();
    let findings = ids.iter().map(|id| by_trace.findings(id).len()).sum();
    let errors = ids.iter().map(|id| by_trace.errors(id).len()).sum();
    (findings, errors)
}

fn run_bounds(run: &[Trace<'_>]) -> Option<(i64, i64)> {
    let bounds: Vec<(i64, i64)> = run.iter().filter_map(Trace::bounds).collect();
    let start = bounds.iter().map(|b| b.0).min()?;
    let end = bounds.iter().map(|b| b.1).max()?;
    Some((start, end))
}

fn index(out: &mut String, runs: &[Vec<Trace<'_>>], by_trace: &ByTrace<'_>) {
    out.push_str(
        "<section id=\"index\"><h2>Runs</h2><table><thead><tr><th>run</th><th>trace</th>\
         <th>start</th><th>duration</th><th>services</th><th>spans</th><th>verdict</th>\
         </tr></thead><tbody>\n",
    );
    for (r, run) in runs.iter().enumerate() {
        let (findings, errors) = verdict(run, by_trace);
        let mut services: Vec<&str> = run.iter().flat_map(|t| t.services()).collect();
        services.sort_unstable();
        services.dedup();
        let spans: usize = run.iter().map(Trace::len).sum();
        let bounds = run_bounds(run);
        let duration = bounds.map_or("?".to_owned(), |(s, e)| {
            format_duration(std::time::Duration::from_nanos((e - s).max(0) as u64))
        });
        let start = run
            .first()
            .and_then(Trace::start)
            .map_or("?".to_owned(), crate::time::rfc3339);
        let first = run[0].trace_id().to_string();
        let more = if run.len() > 1 {
            format!(" +{} linked", run.len() - 1)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "<tr class=\"{}\"><td><a href=\"#run-{r}\">{}</a></td><td><code>{}</code>{more}</td>\
             <td>{}</td><td>{duration}</td><td>{}</td><td>{spans}</td><td>{}</td></tr>",
            if findings > 0 { "bad" } else { "ok" },
            r + 1,
            esc(&first),
            esc(&start),
            esc(&services.join(", ")),
            verdict_text(findings, errors)
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn verdict_text(findings: usize, errors: usize) -> String {
    let mut text = if findings == 0 {
        "whole".to_owned()
    } else {
        format!("{findings} finding{}", if findings == 1 { "" } else { "s" })
    };
    if errors > 0 {
        let _ = write!(
            text,
            ", {errors} failed span{}",
            if errors == 1 { "" } else { "s" }
        );
    }
    text
}

/// A position on the run's axis, in percent.
pub(crate) struct Axis {
    start: i64,
    span: f64,
}

impl Axis {
    pub(crate) fn at(&self, t: i64) -> f64 {
        ((t - self.start) as f64 / self.span * 100.0).clamp(0.0, 100.0)
    }

    pub(crate) fn segment(&self, from: i64, to: i64) -> (f64, f64) {
        let left = self.at(from);
        (left, (self.at(to) - left).max(0.0))
    }
}

fn run_section(
    out: &mut String,
    r: usize,
    run: &[Trace<'_>],
    by_trace: &ByTrace<'_>,
    continuations: &crate::verify::Continuations<'_>,
    services: &[&str],
    details: &mut Vec<Value>,
) {
    let (findings, errors) = verdict(run, by_trace);
    let spans: usize = run.iter().map(Trace::len).sum();
    let bounds = run_bounds(run);
    let axis = bounds.map(|(s, e)| Axis {
        start: s,
        span: ((e - s).max(1)) as f64,
    });
    let _ = writeln!(
        out,
        "<section class=\"run\" id=\"run-{r}\"><h2>Run {}: trace <code>{}</code> \
         <small>{spans} span{}, {}{}</small></h2>",
        r + 1,
        esc(&run[0].trace_id().to_string()),
        if spans == 1 { "" } else { "s" },
        bounds.map_or("duration unknown".to_owned(), |(s, e)| {
            format_duration(std::time::Duration::from_nanos((e - s).max(0) as u64))
        }),
        if run.len() > 1 {
            format!(", {} traces joined by links", run.len())
        } else {
            String::new()
        }
    );
    banner(out, run, by_trace, findings, errors);
    out.push_str("<div class=\"waterfall\">");
    if let (Some(axis), Some((s, e))) = (&axis, bounds) {
        out.push_str("<div class=\"axis\"><div class=\"label\"></div><div class=\"lane\">");
        for k in 0..=4 {
            let t = s + (e - s) * k / 4;
            let _ = write!(
                out,
                "<span class=\"tick\" style=\"left:{:.3}%\">{}</span>",
                axis.at(t),
                format_duration(std::time::Duration::from_nanos((t - s).max(0) as u64))
            );
        }
        out.push_str("</div></div>\n");
    }
    for trace in run {
        trace_rows(out, trace, axis.as_ref(), continuations, services, details);
    }
    out.push_str("<svg class=\"links\" aria-hidden=\"true\"></svg></div></section>\n");
}

fn banner(
    out: &mut String,
    run: &[Trace<'_>],
    by_trace: &ByTrace<'_>,
    findings: usize,
    errors: usize,
) {
    let class = if findings > 0 { "bad" } else { "ok" };
    let _ = write!(
        out,
        "<div class=\"banner {class}\"><strong>check: {}</strong>",
        verdict_text(findings, errors)
    );
    out.push_str("<ul>");
    for trace in run {
        let id = trace.trace_id().to_string();
        for f in by_trace.findings(&id) {
            let _ = write!(
                out,
                "<li class=\"finding\"><b>[{}]</b> {}<br><span class=\"fix\">fix: {}</span></li>",
                f.rule,
                esc(&f.message),
                esc(&f.fix)
            );
        }
        for e in by_trace.errors(&id) {
            let _ = write!(
                out,
                "<li class=\"failed\"><b>[failed span]</b> {} {} (span <code>{}</code>): {}</li>",
                esc(e.service_name.as_deref().unwrap_or("<no service>")),
                esc(e.operation_name.as_deref().unwrap_or("<no operation>")),
                esc(&e.span_id),
                esc(e
                    .error
                    .as_deref()
                    .or(e.error_type.as_deref())
                    .unwrap_or("error"))
            );
        }
    }
    out.push_str("</ul></div>\n");
}

fn trace_rows(
    out: &mut String,
    trace: &Trace<'_>,
    axis: Option<&Axis>,
    continuations: &crate::verify::Continuations<'_>,
    services: &[&str],
    details: &mut Vec<Value>,
) {
    let path = trace.critical_path();
    let self_times = trace.self_times();
    let mut on_path = vec![false; trace.len()];
    let mut steps: Vec<Vec<(i64, i64, bool)>> = vec![Vec::new(); trace.len()];
    for step in &path.steps {
        on_path[step.index] = true;
        let (from, to) = (
            crate::verify::store::nanos(step.from),
            crate::verify::store::nanos(step.to),
        );
        steps[step.index].push((from, to, step.waiting));
    }
    let trace_id = trace.trace_id().to_string();
    let _ = write!(
        out,
        "<div class=\"trace-head\" data-trace=\"{}\">trace <code>{}</code> · {} span{} · \
         critical path {} ({} waiting)",
        esc(&trace_id),
        esc(&trace_id),
        trace.len(),
        if trace.len() == 1 { "" } else { "s" },
        format_duration(path.duration()),
        format_duration(path.waiting())
    );
    if let Some((consumer, send)) = continuations.continues(trace.index()) {
        let _ = write!(
            out,
            " · continues trace <code>{}</code>: {} {} links {} {}",
            esc(&send.trace().trace_id().to_string()),
            esc(service_of(&consumer)),
            esc(operation_of(&consumer)),
            esc(service_of(&send)),
            esc(operation_of(&send))
        );
    }
    out.push_str("</div>\n");
    for node in trace.nodes() {
        let k = details.len();
        details.push(detail(
            &node,
            self_times[node.index()],
            on_path[node.index()],
        ));
        row(
            out,
            k,
            &node,
            axis,
            services,
            on_path[node.index()],
            &steps[node.index()],
        );
    }
}
