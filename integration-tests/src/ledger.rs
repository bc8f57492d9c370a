//! The books of a fault test: which messages the broker acknowledged (and their send
//! spans), which the consumer handled (in which process spans), and the checks that
//! nothing acknowledged was lost and every process span is a child of its send span.
//!
//! Messages are numbered; the payload is the number in decimal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tokio::sync::watch;
use tracehop::journal::Status;
use tracehop::SpanRecord;

/// A publish the broker acknowledged: its send span, and where the broker stored the
/// message if it says (JetStream's stream sequence).
#[derive(Debug, Clone)]
pub struct Acked {
    /// The send span's trace.
    pub trace_id: String,
    /// The send span.
    pub span_id: String,
    /// Where the broker stored the message.
    pub sequence: Option<u64>,
}

impl Acked {
    /// The publish whose send span is `span`, stored at `sequence`.
    pub fn new(span: &SpanContext, sequence: Option<u64>) -> Acked {
        Acked {
            trace_id: span.trace_id().to_string(),
            span_id: span.span_id().to_string(),
            sequence,
        }
    }
}

/// One handler run: which message, where the broker had it, in which process span.
#[derive(Debug, Clone)]
pub struct Handled {
    /// The message's number, if the payload was one.
    pub index: Option<usize>,
    /// Where the broker had it, if it says.
    pub sequence: Option<u64>,
    /// The process span's trace.
    pub trace_id: String,
    /// The process span.
    pub span_id: String,
}

/// The handler runs of a consumer, shared between its handler and the test.
#[derive(Debug, Clone)]
pub struct Handlings {
    runs: Arc<Mutex<Vec<Handled>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Default for Handlings {
    fn default() -> Self {
        Handlings {
            runs: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }
}

impl Handlings {
    /// Record a run of the handler on `payload`, in the current context (the process
    /// span the consume loop runs the handler in). Call it from the handler.
    pub fn record(&self, payload: &[u8], sequence: Option<u64>) {
        let cx = opentelemetry::Context::current();
        let span = cx.span().span_context().clone();
        let run = Handled {
            index: std::str::from_utf8(payload)
                .ok()
                .and_then(|p| p.parse().ok()),
            sequence,
            trace_id: span.trace_id().to_string(),
            span_id: span.span_id().to_string(),
        };
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(run);
        self.count.send_modify(|n| *n += 1);
    }

    /// How many runs so far, and a receiver that changes with it.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Every run so far.
    pub fn runs(&self) -> Vec<Handled> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wait (up to `within`) until every message in `acked` has been handled at least
    /// once; `Err` with the numbers still missing otherwise. Each wake-up looks only at
    /// the runs added since the last (the handler waits for the lock meanwhile).
    pub async fn wait_for_all(
        &self,
        acked: &HashMap<usize, Acked>,
        within: Duration,
    ) -> Result<(), Vec<usize>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changed = self.watch();
        let mut remaining: HashSet<usize> = acked.keys().copied().collect();
        let mut seen = 0;
        loop {
            {
                let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
                for run in &runs[seen..] {
                    if let Some(index) = run.index {
                        remaining.remove(&index);
                    }
                }
                seen = runs.len();
            }
            if remaining.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                let mut missing: Vec<usize> = remaining.into_iter().collect();
                missing.sort_unstable();
                return Err(missing);
            }
        }
    }
}

/// The acknowledged messages no run handled, by number.
pub fn missing(acked: &HashMap<usize, Acked>, handled: &[Handled]) -> Vec<usize> {
    let seen: HashSet<usize> = handled.iter().filter_map(|h| h.index).collect();
    let mut missing: Vec<usize> = acked
        .keys()
        .filter(|i| !seen.contains(i))
        .copied()
        .collect();
    missing.sort_unstable();
    missing
}

/// Check the runs against the books and the spans: every run handled a message of the
/// test (numbered below `messages`), one process span named `process` per run; each
/// process span's parent is a send span named `send` in its trace; for an acknowledged
/// message, that parent is the message's own send span, which ended OK, and the run saw
/// the message where the broker said it stored it.
///
/// # Panics
/// On the first run that does not check out, with what it found.
pub fn check_runs(
    acked: &HashMap<usize, Acked>,
    handled: &[Handled],
    spans: &[SpanRecord],
    messages: usize,
    (process, send): (&str, &str),
) {
    let by_id: HashMap<&str, &SpanRecord> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let processed = spans
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(process))
        .count();
    assert_eq!(processed, handled.len(), "one process span per handler run");
    for run in handled {
        let index = run
            .index
            .filter(|i| *i < messages)
            .unwrap_or_else(|| panic!("a message of this test: {run:?}"));
        let span = by_id
            .get(run.span_id.as_str())
            .unwrap_or_else(|| panic!("the process span of {run:?} was recorded"));
        assert_eq!(span.operation_name.as_deref(), Some(process), "{span:#?}");
        assert_eq!(span.trace_id, run.trace_id);
        let parent = span
            .parent_span_id
            .as_deref()
            .and_then(|id| by_id.get(id))
            .unwrap_or_else(|| panic!("the process span's parent was recorded: {span:#?}"));
        assert_eq!(parent.operation_name.as_deref(), Some(send), "{parent:#?}");
        assert_eq!(parent.trace_id, span.trace_id, "{span:#?}");
        let Some(ack) = acked.get(&index) else {
            continue;
        };
        assert_eq!(parent.span_id, ack.span_id, "{span:#?}");
        assert_eq!(parent.trace_id, ack.trace_id);
        assert_eq!(parent.status, Status::Ok, "{parent:#?}");
        if ack.sequence.is_some() {
            assert_eq!(
                run.sequence, ack.sequence,
                "message {index} is where its ack said"
            );
        }
    }
}
