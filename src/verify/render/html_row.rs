//! One span's row of the HTML view, and what its detail pane shows.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::format_duration;
use super::html::{esc, Axis};
use crate::journal::Status;
use crate::verify::node::Node;
use crate::verify::rules::{operation_of, service_of};

pub(crate) fn row(
    out: &mut String,
    k: usize,
    node: &Node<'_>,
    axis: Option<&Axis>,
    services: &[&str],
    on_path: bool,
    steps: &[(i64, i64, bool)],
) {
    let raw = node.raw();
    let colour = node
        .service()
        .and_then(|s| services.iter().position(|x| *x == s))
        .map_or(11, |i| i % 12);
    let error = node.status() == Status::Error;
    let mut class = String::from("row");
    if on_path {
        class.push_str(" cp");
    }
    if error {
        class.push_str(" err");
    }
    if node.is_send() {
        class.push_str(" send");
    }
    if node.is_consumer() {
        class.push_str(" process");
    }
    let children = node.children().count();
    let links: Vec<String> = node
        .links()
        .map(|l| format!("{}/{}", l.trace_id(), l.span_id()))
        .collect();
    let span_id = node.span_id().to_string();
    let _ = write!(
        out,
        "<div class=\"{class}\" data-k=\"{k}\" data-depth=\"{}\" data-span=\"{}\" \
         data-trace=\"{}\" data-key=\"{}/{}\"",
        node.depth(),
        esc(&span_id),
        esc(&node.trace().trace_id().to_string()),
        esc(&node.trace().trace_id().to_string()),
        esc(&span_id),
    );
    if !links.is_empty() {
        let _ = write!(out, " data-links=\"{}\"", esc(&links.join(" ")));
    }
    let _ = write!(
        out,
        "><div class=\"label\" style=\"padding-left:{}px\">",
        4 + 14 * node.depth().min(40)
    );
    if children > 0 {
        let _ = write!(
            out,
            "<button class=\"tog\" title=\"collapse {children} children\">▾</button>"
        );
    } else {
        out.push_str("<span class=\"tog\"></span>");
    }
    let _ = write!(
        out,
        "<span class=\"svc c{colour}\">{}</span> <span class=\"op\">{}</span> \
         <code class=\"sid\">{}</code>",
        esc(service_of(node)),
        esc(operation_of(node)),
        esc(&span_id)
    );
    if let Some(a) = node.attempt().filter(|_| node.is_consumer()) {
        let retried = node
            .parent()
            .is_some_and(|p| p.children().filter(Node::is_consumer).count() > 1);
        if a > 1 || retried {
            let _ = write!(out, " <span class=\"badge attempt\">attempt {a}</span>");
        }
    }
    if node.is_send() {
        let deliveries = node.children().filter(Node::is_consumer).count();
        if deliveries > 1 {
            let _ = write!(
                out,
                " <span class=\"badge retries\">{deliveries} deliveries</span>"
            );
        }
    }
    if let Some(n) = node.batch_size() {
        let _ = write!(out, " <span class=\"badge\">batch of {n}</span>");
    }
    if !links.is_empty() {
        let _ = write!(
            out,
            " <span class=\"badge link\">↗ {} link{}</span>",
            links.len(),
            if links.len() == 1 { "" } else { "s" }
        );
    }
    if error {
        out.push_str(" <span class=\"badge error\">error</span>");
    }
    if node.parent_missing() {
        out.push_str(" <span class=\"badge warn\">parent missing</span>");
    }
    if node.context_rejected().is_some() || node.context_missing() {
        out.push_str(" <span class=\"badge warn\">context lost</span>");
    }
    out.push_str("</div><div class=\"lane\">");
    match (axis, raw.known_start(), raw.known_end()) {
        (Some(axis), Some(start), Some(end)) => {
            if let Some(q) = raw.known_queue().filter(|&q| q > 0) {
                let (left, width) = axis.segment(start - q as i64, start);
                let _ = write!(
                    out,
                    "<span class=\"seg queue\" style=\"left:{left:.3}%;width:{width:.3}%\" \
                     title=\"waited {} in a queue\"></span>",
                    format_duration(std::time::Duration::from_nanos(q))
                );
            }
            let (left, width) = axis.segment(start, end);
            let _ = write!(
                out,
                "<span class=\"seg bar c{colour}\" style=\"left:{left:.3}%;width:{width:.3}%\"></span>"
            );
            for &(from, to, waiting) in steps {
                let (left, width) = axis.segment(from, to);
                let _ = write!(
                    out,
                    "<span class=\"seg cpseg{}\" style=\"left:{left:.3}%;width:{width:.3}%\"></span>",
                    if waiting { " wait" } else { "" }
                );
            }
            let _ = write!(
                out,
                "<span class=\"dur\" style=\"left:{:.3}%\">{}</span>",
                axis.at(end),
                node.duration().map_or(String::new(), format_duration)
            );
        }
        _ => out.push_str("<span class=\"dur\">time unknown</span>"),
    }
    out.push_str("</div></div>\n");
}

pub(crate) fn detail(node: &Node<'_>, self_time: std::time::Duration, on_path: bool) -> Value {
    let ms = |d: std::time::Duration| super::ms(d);
    let links: Vec<Value> = node
        .links()
        .map(|l| {
            let target = l.target();
            json!({
                "trace_id": l.trace_id(),
                "span_id": l.span_id(),
                "attributes": l.attributes(),
                "target": target.map(|t| format!("{} {}", service_of(&t), operation_of(&t))),
                "in_input": target.is_some(),
            })
        })
        .collect();
    json!({
        "span_id": node.span_id(),
        "trace_id": node.trace().trace_id(),
        "parent_span_id": node.parent_span_id(),
        "service": node.service(),
        "operation": node.operation(),
        "kind": node.kind(),
        "status": node.status(),
        "error": node.error(),
        "start": node.start().map(crate::time::rfc3339),
        "duration_ms": node.duration().map(ms),
        "self_time_ms": ms(self_time),
        "queue_time_ms": node.queue_time().map(ms),
        "attempt": node.attempt(),
        "on_critical_path": on_path,
        "attributes": node.attributes(),
        "events": node.events(),
        "links": links,
    })
}
