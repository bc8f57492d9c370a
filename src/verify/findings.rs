//! Rules: where context broke, which spans are involved and what to fix.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use super::tree::{Node, Trace, Traces};
use crate::journal::{Kind, SpanRecord, Status};
use crate::messaging::attributes as attr;

/// What to check beyond the rules that always apply.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    entry_services: Vec<String>,
}

impl CheckOptions {
    /// Defaults: no entry services named, so only consumers that start a new trace count
    /// as a split run.
    pub fn new() -> CheckOptions {
        CheckOptions::default()
    }

    /// Name a service where runs may start (a gateway, a scheduler). Once any is named, a
    /// trace rooted in any other service is a split run.
    pub fn entry(mut self, service: impl Into<String>) -> Self {
        self.entry_services.push(service.into());
        self
    }

    /// The entry services named so far.
    pub fn entries(&self) -> &[String] {
        &self.entry_services
    }
}

/// A rule that a whole trace satisfies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Rule {
    /// A run split into several traces: a process span started a new root although it
    /// consumed a message, or a trace is rooted in a service that is not an entry point.
    SplitTrace,
    /// A span names a parent that no input contains: context was lost on the way, or the
    /// journal of the service that holds the parent is missing.
    MissingParent,
    /// Several roots in one trace id: spans share the trace id but not parent relations.
    FlatTrace,
    /// A span has no `service_name` or no `operation_name`.
    MissingName,
    /// A consumer rejected the context a message carried (and started a new trace).
    RejectedContext,
}

impl Rule {
    /// The rule's stable name (`split-trace`, `missing-parent`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SplitTrace => "split-trace",
            Rule::MissingParent => "missing-parent",
            Rule::FlatTrace => "flat-trace",
            Rule::MissingName => "missing-name",
            Rule::RejectedContext => "rejected-context",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One place where a trace is not whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule broken.
    pub rule: Rule,
    /// The trace it was found in.
    pub trace_id: String,
    /// The spans involved (full ids), most relevant first.
    pub span_ids: Vec<String>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

/// A span that ended in error: reported apart from findings, since a failed step can
/// still sit in a whole trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedSpan {
    /// The trace.
    pub trace_id: String,
    /// The span.
    pub span_id: String,
    /// Its service.
    pub service_name: Option<String>,
    /// Its operation.
    pub operation_name: Option<String>,
    /// `error.type`, when recorded.
    pub error_type: Option<String>,
    /// The error description.
    pub error: Option<String>,
}

/// The outcome of checking traces: findings (structural) and failed spans (not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Where traces are not whole, by trace (in trace order), then by rule.
    pub findings: Vec<Finding>,
    /// Spans that ended in error, in trace and tree order.
    pub errors: Vec<FailedSpan>,
    /// How many traces were checked.
    pub traces: usize,
    /// How many spans were checked.
    pub spans: usize,
}

impl Report {
    /// Whether every trace is whole: no findings. Failed spans do not count.
    pub fn is_whole(&self) -> bool {
        self.findings.is_empty()
    }

    /// The findings about trace `trace_id`.
    pub fn findings_for<'a>(&'a self, trace_id: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.trace_id == trace_id)
    }

    /// The failed spans of trace `trace_id`.
    pub fn errors_for<'a>(
        &'a self,
        trace_id: &'a str,
    ) -> impl Iterator<Item = &'a FailedSpan> + 'a {
        self.errors.iter().filter(move |e| e.trace_id == trace_id)
    }
}

impl Traces {
    /// Check every trace against the rules.
    pub fn check(&self, options: &CheckOptions) -> Report {
        let mut report = Report {
            traces: self.len(),
            spans: self.span_count(),
            ..Report::default()
        };
        for trace in self {
            check_trace(trace, options, &mut report.findings);
            report.errors.extend(
                trace
                    .nodes()
                    .map(|n| n.span())
                    .filter(|s| s.status == Status::Error)
                    .map(|s| FailedSpan {
                        trace_id: s.trace_id.clone(),
                        span_id: s.span_id.clone(),
                        service_name: s.service_name.clone(),
                        operation_name: s.operation_name.clone(),
                        error_type: s.attribute_str(attr::ERROR_TYPE).map(str::to_owned),
                        error: s.error.clone(),
                    }),
            );
        }
        report
    }
}

/// `service operation span id`, for messages.
pub(crate) fn describe(span: &SpanRecord) -> String {
    format!("{} (span {})", label(span), span.span_id)
}

/// `service operation`, with placeholders for missing or blank names.
pub(crate) fn label(span: &SpanRecord) -> String {
    format!("{} {}", service_of(span), operation_of(span))
}

pub(crate) fn service_of(span: &SpanRecord) -> &str {
    name_or(&span.service_name, "<no service>")
}

pub(crate) fn operation_of(span: &SpanRecord) -> &str {
    name_or(&span.operation_name, "<no operation>")
}

fn name_or<'a>(name: &'a Option<String>, placeholder: &'a str) -> &'a str {
    name.as_deref()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(placeholder)
}

fn is_process(span: &SpanRecord) -> bool {
    span.span_kind == Some(Kind::Consumer)
        || span.attribute_str(attr::MESSAGING_OPERATION_TYPE) == Some(attr::operation_type::PROCESS)
}

fn is_true(span: &SpanRecord, key: &str) -> bool {
    span.attribute(key)
        .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"))
}

/// A root that is a root on purpose: a batch span linking its messages, or a process span
/// at a trust boundary that links the producer instead of adopting it.
fn intended_root(span: &SpanRecord) -> bool {
    let batch = span
        .attribute(attr::MESSAGING_BATCH_MESSAGE_COUNT)
        .is_some();
    let linked = is_true(span, attr::CONTEXT_LINKED);
    (batch || linked) && !span.links.is_empty()
}

fn destination(span: &SpanRecord) -> String {
    span.attribute_str(attr::MESSAGING_DESTINATION_NAME)
        .map_or_else(|| "its destination".to_owned(), |d| format!("`{d}`"))
}

fn list(nodes: &[Node<'_>]) -> String {
    nodes
        .iter()
        .map(|n| describe(n.span()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_trace(trace: &Trace, options: &CheckOptions, out: &mut Vec<Finding>) {
    let trace_id = trace.trace_id().to_owned();
    let finding = |rule, nodes: &[Node<'_>], message: String, fix: String| Finding {
        rule,
        trace_id: trace_id.clone(),
        span_ids: nodes.iter().map(|n| n.span().span_id.clone()).collect(),
        message,
        fix,
    };
    let roots: Vec<Node<'_>> = trace.roots().collect();

    // A run split into several traces.
    if let [root] = roots[..] {
        let span = root.span();
        let rejected = span.attribute(attr::CONTEXT_REJECTED).is_some();
        if !rejected && !intended_root(span) {
            let service = service_of(span);
            if is_process(span) {
                let (message, fix) = if is_true(span, attr::CONTEXT_MISSING) {
                    (
                        format!(
                            "{} consumed a message that carried no trace context and started \
                             a new trace",
                            describe(span)
                        ),
                        format!(
                            "make the producer of {} write trace context into the message \
                             headers (send through tracehop: Telemetry::send_span or the \
                             adapter's producer), and check that every hop in between keeps \
                             the headers",
                            destination(span)
                        ),
                    )
                } else {
                    (
                        format!(
                            "{} processes a message but has no parent: it started a new trace",
                            describe(span)
                        ),
                        format!(
                            "open the consumer's span from the message headers \
                             (Telemetry::process_span) so it is a child of the producer's send \
                             span; if {service} starts runs on purpose, name it with --entry"
                        ),
                    )
                };
                out.push(finding(Rule::SplitTrace, &[root], message, fix));
            } else if !options.entry_services.is_empty()
                && !options.entry_services.iter().any(|e| e == service)
            {
                out.push(finding(
                    Rule::SplitTrace,
                    &[root],
                    format!(
                        "the trace starts at {}, but {service} is not an entry point ({})",
                        describe(span),
                        options.entry_services.join(", ")
                    ),
                    format!(
                        "{service} received work without trace context: propagate context \
                         on the call or message that reaches it, or name it with --entry if \
                         it really starts runs"
                    ),
                ));
            }
        }
    }

    // Parents that no input contains, grouped by the missing parent.
    // In tree order of the first span naming each missing parent.
    let mut orphans: Vec<(&str, Vec<Node<'_>>)> = Vec::new();
    let mut group: HashMap<&str, usize> = HashMap::new();
    for node in trace.nodes().filter(Node::parent_missing) {
        if let Some(parent) = node.span().parent_span_id.as_deref() {
            let i = *group.entry(parent).or_insert_with(|| {
                orphans.push((parent, Vec::new()));
                orphans.len() - 1
            });
            orphans[i].1.push(node);
        }
    }
    for (parent, nodes) in orphans {
        let services: Vec<&str> = {
            let mut s: Vec<&str> = nodes
                .iter()
                .filter_map(|n| n.span().service_name.as_deref())
                .collect();
            s.dedup();
            s
        };
        let first = nodes[0].span();
        let fix = if is_process(first) {
            format!(
                "span {parent} is the send span of whoever published to {}: add that \
                 service's journal to the input, or make sure it flushes before exit \
                 (Telemetry::shutdown); if it is there, the message carried context from \
                 a span that was never recorded (sampled out, or a foreign tracer)",
                destination(first)
            )
        } else {
            format!(
                "add the journal of the service that started span {parent}, or make sure it \
                 flushes before exit (Telemetry::shutdown); otherwise the context {} \
                 received came from a span that was never recorded",
                services.join(", ")
            )
        };
        out.push(finding(
            Rule::MissingParent,
            &nodes,
            format!(
                "{} name{} parent {parent}, which no input contains",
                list(&nodes),
                if nodes.len() == 1 { "s" } else { "" }
            ),
            fix,
        ));
    }
    let cycles: Vec<Node<'_>> = trace.nodes().filter(Node::in_cycle).collect();
    if !cycles.is_empty() {
        out.push(finding(
            Rule::MissingParent,
            &cycles,
            format!(
                "the parent chain of {} loops back to itself, so the trace has no root there",
                list(&cycles)
            ),
            "span ids are being reused or rewritten: check the exporter or whatever \
             rewrites the journal"
                .to_owned(),
        ));
    }

    // Several roots in one trace id.
    if roots.len() > 1 {
        let mut services: Vec<&str> = roots.iter().map(|n| service_of(n.span())).collect();
        services.sort_unstable();
        services.dedup();
        out.push(finding(
            Rule::FlatTrace,
            &roots,
            format!(
                "{} spans share the trace id but have no parent: {} ({})",
                roots.len(),
                list(&roots),
                if services.len() > 1 {
                    format!("across services {}", services.join(", "))
                } else {
                    format!("all in {}", services[0])
                }
            ),
            "propagate the parent span id along with the trace id (W3C traceparent, which \
             tracehop writes by default, rather than x-trace-id alone), and open each \
             service's spans as children of the incoming context"
                .to_owned(),
        ));
    }

    // Spans without names.
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    for (field, pick) in [
        (
            "service_name",
            (|s: &SpanRecord| &s.service_name) as fn(&SpanRecord) -> &Option<String>,
        ),
        ("operation_name", |s: &SpanRecord| &s.operation_name),
    ] {
        let nodes: Vec<Node<'_>> = trace.nodes().filter(|n| blank(pick(n.span()))).collect();
        if nodes.is_empty() {
            continue;
        }
        let fix = if field == "service_name" {
            "give every service a name: Telemetry::builder(\"name\"), or the service.name \
             resource attribute of your own tracer provider"
        } else {
            "give every span a name (the operation it stands for)"
        };
        out.push(finding(
            Rule::MissingName,
            &nodes,
            format!(
                "{} span{} without {field}: {}",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                list(&nodes)
            ),
            fix.to_owned(),
        ));
    }

    // Incoming context a consumer rejected.
    for node in trace.nodes() {
        let span = node.span();
        let Some(reason) = span.attribute(attr::CONTEXT_REJECTED) else {
            continue;
        };
        let reason = reason
            .as_str()
            .map_or_else(|| reason.to_string(), str::to_owned);
        out.push(finding(
            Rule::RejectedContext,
            &[node],
            format!(
                "{} rejected the context its message carried ({reason}) and started a new \
                 trace",
                describe(span)
            ),
            rejection_fix(&reason, &destination(span)),
        ));
    }
}

fn rejection_fix(reason: &str, destination: &str) -> String {
    let what = if reason.contains("x-trace-id") {
        "x-trace-id must be 32 and x-span-id 16 lowercase hex digits, not all zeros"
    } else if reason.contains("oversized") {
        "traceparent is 55 characters in version 00; something writes far more into it"
    } else if reason.contains("all zeros") {
        "the producer sends an invalid (all-zero) id: it has no real span when it publishes"
    } else if reason.contains("not UTF-8") {
        "the header is binary: a client or proxy re-encodes it"
    } else {
        "the producer, or a proxy or client library in between, writes traceparent in a \
         form the W3C spec does not allow (version-traceid-spanid-flags, lowercase hex)"
    };
    format!(
        "fix the traceparent written by the producer of {destination}: {what}; send through \
         tracehop or another W3C propagator"
    )
}
