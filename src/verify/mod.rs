//! Verification: span records to trace trees, findings and rendering.
//!
//! This module owns how tracehop answers "did the async steps stay in the trace?": it
//! reads span journals (one per service, any order) or OTLP JSON, stitches the spans into
//! one tree per trace ([`Traces`]), checks each trace against the rules ([`Rule`]) and
//! draws it ([`render`]). The `tracehop` command line tool and the `testing` module are
//! thin layers over it.
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
//! let traces = Traces::from_records(input.spans);
//! let report = traces.check(&CheckOptions::default());
//!
//! assert!(!report.is_whole());
//! assert_eq!(report.findings[0].rule, Rule::MissingParent);
//! assert_eq!(report.findings[0].span_ids, ["t1"]);
//!
//! let text = verify::render::text(&traces, &report, &RenderOptions::plain());
//! assert!(text.contains("  agent_runtime plan span a1 parent=g1 240ms status=ok"));
//! ```

mod findings;
mod input;
mod otlp_json;
pub mod render;
mod tree;

pub use findings::{CheckOptions, FailedSpan, Finding, Report, Rule};
pub use input::{read_bytes, read_files};
pub use render::RenderOptions;
pub use tree::{Node, ServiceTime, Summary, Trace, Traces};

#[cfg(test)]
mod tests;
