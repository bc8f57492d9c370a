//! In-memory span capture and one-line trace assertions for tests.
//!
//! A [`Capture`] hands out one [`Telemetry`] handle per service, all writing into the same
//! in-memory [`SpanCollector`]; after the run, assert in one line that the run is one
//! unbroken trace and that services appear in a given parent chain. Failures print the
//! rendered trace tree.
//!
//! ```
//! use std::collections::HashMap;
//! use tracehop::testing::Capture;
//! use tracehop::{Incoming, Outgoing};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let capture = Capture::new();
//! let gateway = capture.service("gateway");
//! let worker = capture.service("worker");
//!
//! let mut headers = HashMap::<String, String>::new();
//! gateway.send_span(Outgoing::new("nats", "tasks"), &mut headers).end();
//! let process = worker.process_span(Incoming::new("nats", "tasks"), &headers);
//! let _: Result<(), String> = process.run(async { Ok(()) }).await;
//! process.end();
//!
//! capture.assert_one_trace();
//! capture.assert_chain(&["gateway", "worker"]);
//! # }
//! ```
//!
//! Adapters' tests that capture spans some other way can use the free functions
//! [`check_one_trace`] and [`check_chain`] on the records.

use std::time::Duration;

pub use crate::metrics::capture::{MetricPoint, MetricsCapture, PointValue};

use crate::journal::{SpanCollector, SpanRecord};
use crate::verify::{self, CheckOptions, RenderOptions, Traces};
use crate::Telemetry;

/// Captures the spans of one or more services in memory.
///
/// Clones share the same store.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    collector: SpanCollector,
}

impl Capture {
    /// An empty capture.
    pub fn new() -> Capture {
        Capture::default()
    }

    /// A capture around an existing collector (spans already in it count).
    pub fn from_collector(collector: SpanCollector) -> Capture {
        Capture { collector }
    }

    /// A telemetry handle for service `name` whose spans land in this capture, each as soon
    /// as it ends.
    ///
    /// # Panics
    ///
    /// If the handle cannot be built (it cannot, with an in-memory collector; this is a
    /// test helper).
    pub fn service(&self, name: &str) -> Telemetry {
        match Telemetry::builder(name).collector(&self.collector).build() {
            Ok(telemetry) => telemetry,
            Err(e) => panic!("tracehop::testing: building telemetry for {name}: {e}"),
        }
    }

    /// The collector the handles write to.
    pub fn collector(&self) -> &SpanCollector {
        &self.collector
    }

    /// Every span captured so far, in the order they ended.
    pub fn records(&self) -> Vec<SpanRecord> {
        self.collector.records()
    }

    /// Wait until `predicate` holds for the captured spans (or `timeout` passes), for tests
    /// whose consumers run in other tasks; returns the spans either way.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&[SpanRecord]) -> bool,
    ) -> Vec<SpanRecord> {
        self.collector.wait_until(timeout, predicate).await
    }

    /// Wait until at least `count` spans have been captured (or `timeout` passes).
    pub async fn wait_for_spans(&self, count: usize, timeout: Duration) -> Vec<SpanRecord> {
        self.wait_until(timeout, |spans| spans.len() >= count).await
    }

    /// The captured spans stitched into trace trees.
    pub fn traces(&self) -> Traces {
        Traces::from_records(self.records())
    }

    /// The captured spans rendered as text trees, with findings (no colour).
    pub fn tree(&self) -> String {
        render_records(&self.records())
    }

    /// `Ok` if the captured spans form exactly one trace with no broken context; else a
    /// message with the findings and the rendered tree.
    pub fn check_one_trace(&self) -> Result<(), String> {
        check_one_trace(&self.records())
    }

    /// `Ok` if some parent chain (root to leaf) runs through `services` in this order (not
    /// necessarily adjacent); else a message with the rendered tree.
    pub fn check_chain(&self, services: &[&str]) -> Result<(), String> {
        check_chain(&self.records(), services)
    }

    /// Assert that the captured spans form exactly one unbroken trace.
    ///
    /// # Panics
    ///
    /// When they do not, with the findings and the rendered tree.
    #[track_caller]
    pub fn assert_one_trace(&self) {
        if let Err(message) = self.check_one_trace() {
            panic!("{message}");
        }
    }

    /// Assert that `services` appear in this ancestor order along one parent chain.
    ///
    /// # Panics
    ///
    /// When they do not, with the rendered tree.
    #[track_caller]
    pub fn assert_chain(&self, services: &[&str]) {
        if let Err(message) = self.check_chain(services) {
            panic!("{message}");
        }
    }
}

fn render_records(records: &[SpanRecord]) -> String {
    let traces = Traces::from_records(records.to_vec());
    let report = traces.check(&CheckOptions::default());
    verify::render::text(&traces, &report, &RenderOptions::plain())
}

/// `Ok` if `records` form exactly one trace with no broken context (errors in spans are
/// allowed); else a message with the findings and the rendered tree.
pub fn check_one_trace(records: &[SpanRecord]) -> Result<(), String> {
    let traces = Traces::from_records(records.to_vec());
    let report = traces.check(&CheckOptions::default());
    let tree = || verify::render::text(&traces, &report, &RenderOptions::plain());
    if records.is_empty() {
        return Err("expected one trace, but no spans were captured".to_owned());
    }
    if traces.len() != 1 {
        return Err(format!(
            "expected one trace, found {} ({} spans):\n\n{}",
            traces.len(),
            records.len(),
            tree()
        ));
    }
    if !report.is_whole() {
        let findings: Vec<String> = report
            .findings
            .iter()
            .map(|f| format!("  [{}] {}", f.rule, f.message))
            .collect();
        return Err(format!(
            "expected one unbroken trace, but context broke:\n{}\n\n{}",
            findings.join("\n"),
            tree()
        ));
    }
    Ok(())
}

/// `Ok` if some parent chain (root to leaf) in `records` runs through `services` in this
/// order (not necessarily adjacent: other services and spans may sit between them); else a
/// message with the longest prefix found and the rendered tree.
pub fn check_chain(records: &[SpanRecord], services: &[&str]) -> Result<(), String> {
    let traces = Traces::from_records(records.to_vec());
    let mut best = 0;
    for trace in traces.iter() {
        for leaf in trace.nodes() {
            let chain = trace.ancestry(leaf.index());
            let mut matched = 0;
            for node in chain {
                if matched < services.len() && node.service() == Some(services[matched]) {
                    matched += 1;
                }
            }
            if matched == services.len() {
                return Ok(());
            }
            best = best.max(matched);
        }
    }
    let report = traces.check(&CheckOptions::default());
    Err(format!(
        "expected a parent chain through {}, but the longest found is {}:\n\n{}",
        services.join(" > "),
        if best == 0 {
            "empty".to_owned()
        } else {
            services[..best].join(" > ")
        },
        verify::render::text(&traces, &report, &RenderOptions::plain())
    ))
}
