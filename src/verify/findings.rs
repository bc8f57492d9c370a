//! Rules: where context broke, which spans are involved and what to fix.

use std::fmt;

use serde::Serialize;

use super::rules::check_trace;
use super::tree::Traces;
use crate::journal::Status;

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
            let trace_id = trace.trace_id().to_string();
            report.errors.extend(
                trace
                    .nodes()
                    .filter(|n| n.status() == Status::Error)
                    .map(|n| FailedSpan {
                        trace_id: trace_id.clone(),
                        span_id: n.span_id().to_string(),
                        service_name: n.service().map(str::to_owned),
                        operation_name: n.operation().map(str::to_owned),
                        error_type: n.error_type().map(str::to_owned),
                        error: n.error().map(str::to_owned),
                    }),
            );
        }
        report
    }
}
