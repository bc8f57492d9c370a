//! The rules, one trace at a time.

use super::findings::{CheckOptions, Finding, Rule};
use super::node::{Node, Trace};
use super::store::FxMap;

/// `service operation (span id)`, for messages.
pub(crate) fn describe(node: &Node<'_>) -> String {
    format!("{} (span {})", label(node), node.span_id())
}

/// `service operation`, with placeholders for missing or blank names.
pub(crate) fn label(node: &Node<'_>) -> String {
    format!("{} {}", service_of(node), operation_of(node))
}

pub(crate) fn service_of<'a>(node: &Node<'a>) -> &'a str {
    name_or(node.service(), "<no service>")
}

pub(crate) fn operation_of<'a>(node: &Node<'a>) -> &'a str {
    name_or(node.operation(), "<no operation>")
}

pub(crate) fn blank(name: Option<&str>) -> bool {
    name.is_none_or(is_blank)
}

/// Only whitespace, or nothing; a name starting with a visible ASCII character is not
/// (the tree asks for every span, and names nearly always start so).
fn is_blank(s: &str) -> bool {
    match s.as_bytes().first() {
        Some(&b) if b > b' ' && b < 0x80 => false,
        _ => s.trim().is_empty(),
    }
}

fn name_or<'a>(name: Option<&'a str>, placeholder: &'a str) -> &'a str {
    name.filter(|s| !is_blank(s)).unwrap_or(placeholder)
}

/// A root that is a root on purpose: a batch span linking its messages, or a process span
/// at a trust boundary that links the producer instead of adopting it.
fn intended_root(node: &Node<'_>) -> bool {
    (node.batch_size().is_some() || node.context_linked()) && node.links().len() > 0
}

fn destination(node: &Node<'_>) -> String {
    node.destination()
        .map_or_else(|| "its destination".to_owned(), |d| format!("`{d}`"))
}

fn list(nodes: &[Node<'_>]) -> String {
    nodes.iter().map(describe).collect::<Vec<_>>().join(", ")
}

/// A consumer span that carried no message: a consumer by kind alone, with no messaging
/// attributes, no links and no children (a poll that returned nothing, which
/// OpenTelemetry Python's confluent-kafka instrumentation records as a `recv` span).
pub(crate) fn received_nothing(node: &Node<'_>) -> bool {
    !node.raw().has(super::store::flag::PROCESS)
        && node.destination().is_none()
        && node.messaging_system().is_none()
        && node.links().len() == 0
        && node.children().next().is_none()
}

/// A consumer span of `trace` whose link leads to a send span of another trace in the
/// input: the trace is a linked continuation of that one.
pub(crate) fn continues<'a>(trace: &Trace<'a>) -> Option<(Node<'a>, Node<'a>)> {
    trace
        .by_start()
        .filter(Node::is_consumer)
        .find_map(|consumer| {
            consumer
                .links()
                .filter_map(|l| l.target())
                .find(|send| send.is_send() && send.trace().index() != trace.index())
                .map(|send| (consumer, send))
        })
}

pub(crate) fn check_trace(trace: Trace<'_>, options: &CheckOptions, out: &mut Vec<Finding>) {
    let trace_id = trace.trace_id().to_string();
    let finding = |rule, nodes: &[Node<'_>], message: String, fix: String| Finding {
        rule,
        trace_id: trace_id.clone(),
        span_ids: nodes.iter().map(|n| n.span_id().to_string()).collect(),
        message,
        fix,
    };
    let roots: Vec<Node<'_>> = trace.roots().collect();

    // A run split into several traces.
    if let [root] = roots[..] {
        if let Some((message, fix)) = split(&trace, &root, options) {
            out.push(finding(Rule::SplitTrace, &[root], message, fix));
        }
    }

    // Parents that no input contains, grouped by the missing parent, in tree order of the
    // first span naming each.
    let mut orphans: Vec<(String, Vec<Node<'_>>)> = Vec::new();
    let mut group: FxMap<String, usize> = FxMap::default();
    for node in trace.nodes().filter(Node::parent_missing) {
        if let Some(parent) = node.parent_span_id() {
            let parent = parent.to_string();
            let i = *group.entry(parent.clone()).or_insert_with(|| {
                orphans.push((parent, Vec::new()));
                orphans.len() - 1
            });
            orphans[i].1.push(node);
        }
    }
    for (parent, nodes) in orphans {
        let mut services: Vec<&str> = nodes.iter().filter_map(Node::service).collect();
        services.dedup();
        let first = &nodes[0];
        let fix = if first.is_consumer() {
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
        let mut services: Vec<&str> = roots.iter().map(service_of).collect();
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
    for (field, service) in [("service_name", true), ("operation_name", false)] {
        let nodes: Vec<Node<'_>> = trace
            .nodes()
            .filter(|n| blank(if service { n.service() } else { n.operation() }))
            .collect();
        if nodes.is_empty() {
            continue;
        }
        let fix = if service {
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
        let Some(reason) = node.context_rejected() else {
            continue;
        };
        out.push(finding(
            Rule::RejectedContext,
            &[node],
            format!(
                "{} rejected the context its message carried ({reason}) and started a new \
                 trace",
                describe(&node)
            ),
            rejection_fix(reason, &destination(&node)),
        ));
    }
}

/// Whether the trace rooted at `root` is a run split off another: the message and fix.
fn split(trace: &Trace<'_>, root: &Node<'_>, options: &CheckOptions) -> Option<(String, String)> {
    let service = service_of(root);
    let entry = options.entries().iter().any(|e| e == service);
    if root.context_rejected().is_some() || intended_root(root) || entry {
        return None;
    }
    // A linked continuation of another run; or a poll that consumed nothing (no run).
    if continues(trace).is_some() || (root.is_consumer() && received_nothing(root)) {
        return None;
    }
    if root.is_consumer() {
        if root.context_missing() {
            return Some((
                format!(
                    "{} consumed a message that carried no trace context and started a new \
                     trace",
                    describe(root)
                ),
                format!(
                    "make the producer of {} write trace context into the message headers \
                     (send through tracehop: Telemetry::send_span or the adapter's \
                     producer), and check that every hop in between keeps the headers",
                    destination(root)
                ),
            ));
        }
        // A consumer that links its producer, but the producer's span is not in the input.
        let dangling = trace
            .by_start()
            .filter(Node::is_consumer)
            .find_map(|n| n.links().find(|l| l.target().is_none()).map(|l| (n, l)));
        if let Some((consumer, link)) = dangling {
            return Some((
                format!(
                    "{} started a new trace; {} links span {} of trace {}, which no input \
                     contains",
                    describe(root),
                    describe(&consumer),
                    link.span_id(),
                    link.trace_id()
                ),
                format!(
                    "add the journal (or OTLP file) of the service that sent to {}, so the \
                     link can be followed: the trace then reads as a linked continuation \
                     of the producer's run; if {service} starts runs on purpose, name it \
                     with --entry",
                    destination(&consumer)
                ),
            ));
        }
        return Some((
            format!(
                "{} processes a message but has no parent and links no span: it started a \
                 new trace",
                describe(root)
            ),
            format!(
                "if the consumer is yours, open its span from the message headers \
                 (Telemetry::process_span, or the adapter's consumer) so it is a child of \
                 the producer's send span. If it is not (an OpenTelemetry instrumentation \
                 such as confluent-kafka's starts a trace per message), make sure the \
                 message carries traceparent (send it through tracehop) so the consumer \
                 links the send span, and give tracehop both services' spans: a consumer \
                 span that links a send span in the input continues that run. If {service} \
                 starts runs on purpose, name it with --entry"
            ),
        ));
    }
    if options.entries().is_empty() {
        return None;
    }
    Some((
        format!(
            "the trace starts at {}, but {service} is not an entry point ({})",
            describe(root),
            options.entries().join(", ")
        ),
        format!(
            "{service} received work without trace context: propagate context on the call \
             or message that reaches it, or name it with --entry if it really starts runs"
        ),
    ))
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
