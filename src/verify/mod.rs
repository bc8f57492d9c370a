//! Verification: span records to trace trees, findings, statistics and rendering.
//!
//! This module owns how tracehop answers "did the async steps stay in the trace?": it
//! reads span journals (one per service, any order) or OTLP JSON into compact spans
//! ([`Spans`]), stitches them into one tree per trace ([`Traces`]), checks each trace
//! against the rules ([`Rule`]), finds where the time went (self time, the blocking
//! [`CriticalPath`], [`Stats`] across runs) and draws it ([`render`]: text, JSON, HTML).
//! The `tracehop` command line tool and the `testing` module are thin layers over it.
//!
//! ```
//! use tracehop::verify::{self, CheckOptions, RenderOptions, Rule, Traces};
//!
//! let journal = r#"
//! {"trace_id":"tr_7a31","span_id":"g1","service_name":"gateway","operation_name":"handle","latency_ms":18,"status":"ok"}
//! {"trace_id":"tr_7a31","span_id":"a1","parent_span_id":"g1","service_name":"agent_runtime","operation_name":"plan","latency_ms":240,"status":"ok"}
//! {"trace_id":"tr_7a31","span_id":"t1","parent_span_id":"zz","service_name":"tool_service","operation_name":"call","latency_ms":410,"status":"ok"}
//! "#;
//! let input = verify::read_bytes("run.jsonl", journal.as_bytes());
//! let traces = Traces::from_spans(input.spans);
//! let report = traces.check(&CheckOptions::default());
//!
//! assert!(!report.is_whole());
//! assert_eq!(report.findings[0].rule, Rule::MissingParent);
//! assert_eq!(report.findings[0].span_ids, ["t1"]);
//!
//! let text = verify::render::text(&traces, &report, &RenderOptions::plain());
//! assert!(text.contains("  agent_runtime plan span a1 parent=g1 240ms status=ok"));
//! ```
//!
//! Memory: a span costs about 150 bytes once read ([`Detail::Lean`] keeps only what the
//! rules, trees and statistics read; [`Detail::Full`] also keeps every attribute and
//! event as read, for JSON and HTML), so a million spans fit in well under 300 MB.

mod fields;
mod findings;
mod ids;
mod input;
mod links;
mod node;
mod otlp_json;
mod parse;
pub mod render;
mod rules;
mod scan;
mod stats;
mod store;
mod summary;
mod timing;
mod tree;

pub use findings::{CheckOptions, FailedSpan, Finding, Report, Rule};
pub use ids::Id;
pub use input::{read_bytes, read_bytes_with, read_files, read_files_with, Input};
pub use links::Continuations;
pub use node::{Node, SpanLink, Trace};
pub use render::RenderOptions;
pub use stats::{Distribution, Pathway, ServiceStats, Stats};
pub use store::{Detail, Spans};
pub use summary::{ServiceTime, Summary};
pub use timing::{CriticalPath, PathStep};
pub use tree::Traces;

/// The results of scoped worker threads, in the order they were spawned; a worker's panic
/// goes on in the caller, as if the work had run on its thread.
pub(crate) fn join_all<'scope, T>(
    handles: impl IntoIterator<Item = std::thread::ScopedJoinHandle<'scope, T>>,
) -> Vec<T> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .collect()
}

#[cfg(test)]
mod tests;
