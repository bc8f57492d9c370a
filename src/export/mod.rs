//! Getting finished spans off the hot path without losing one silently: the bounded queue
//! shared by the journal's writer and the OTLP batch processor, and the health counters
//! both report through [`Telemetry::flush`](crate::Telemetry::flush) and
//! [`Telemetry::shutdown`](crate::Telemetry::shutdown).
//!
//! Every span a processor is handed ends up in exactly one count: written (exported),
//! failed (the sink or collector returned an error), or dropped (a lossy queue was full).
//! A failure or a drop turns the next `flush`/`shutdown` into an error carrying the
//! counts, and a burst of drops is logged once through `tracing` when it is over.

#[cfg(feature = "otlp")]
mod batch;
mod queue;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "otlp")]
pub(crate) use batch::BatchProcessor;
pub(crate) use queue::{Popped, Queue, Wait};

use crate::{Error, Result};

/// How long without a drop ends a burst (and lets its one log line out).
const BURST_QUIET: Duration = Duration::from_secs(1);

/// What kind of sink a [`Health`] describes: it decides the error a failure becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SinkKind {
    /// A span journal ([`Error::JournalWrite`] on a failed write).
    Journal,
    /// A span exporter ([`Error::Export`] on a failed export).
    #[cfg_attr(not(feature = "otlp"), allow(dead_code))]
    Exporter,
}

/// The counts of one sink, shared by its processor, its worker thread and the handle.
#[derive(Clone, Debug)]
pub(crate) struct Health(Arc<HealthInner>);

#[derive(Debug)]
struct HealthInner {
    name: String,
    kind: SinkKind,
    written: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    /// Dropped spans already logged (the rest belong to the current burst).
    logged: AtomicU64,
    /// When the last span was dropped, in nanoseconds after `epoch`.
    last_drop: AtomicU64,
    epoch: Instant,
    /// The most bytes (journal) or spans (exporter) ever waiting in the queue.
    peak_queued: AtomicUsize,
    /// How much the queue may hold, in the same unit.
    limit: usize,
    first_error: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn new(name: impl Into<String>, kind: SinkKind, limit: usize) -> Health {
        Health(Arc::new(HealthInner {
            name: name.into(),
            kind,
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            last_drop: AtomicU64::new(0),
            epoch: Instant::now(),
            peak_queued: AtomicUsize::new(0),
            limit,
            first_error: Mutex::new(None),
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }

    pub(crate) fn kind(&self) -> SinkKind {
        self.0.kind
    }

    /// `spans` reached the sink.
    pub(crate) fn written(&self, spans: u64) {
        self.0.written.fetch_add(spans, Ordering::Relaxed);
    }

    /// `spans` were lost to a sink error; the first error is kept.
    pub(crate) fn failed(&self, spans: u64, error: &dyn std::fmt::Display) {
        self.0.failed.fetch_add(spans, Ordering::Relaxed);
        let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            let message = format!("{}: {error}", self.0.name);
            if self.0.kind == SinkKind::Journal {
                // Also on stderr: a journal that cannot be written may be where logs go.
                eprintln!("tracehop: span journal {message}; spans are being dropped");
            }
            tracing::error!(sink = %self.0.name, %error, "tracehop: {message}; spans are being lost");
            *first = Some(message);
        }
    }

    /// `spans` were dropped because the queue was full (lossy mode) or closed.
    pub(crate) fn dropped(&self, spans: u64) {
        self.0.dropped.fetch_add(spans, Ordering::Relaxed);
        let since = u64::try_from(self.0.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last_drop.store(since, Ordering::Relaxed);
    }

    /// Record how much is waiting in the queue now.
    pub(crate) fn queued(&self, amount: usize) {
        self.0.peak_queued.fetch_max(amount, Ordering::Relaxed);
    }

    /// Log the current burst of drops once it is over (no drop for a second), or now if
    /// `now`. One log line per burst, with the burst's count.
    pub(crate) fn end_burst(&self, now: bool) {
        let dropped = self.0.dropped.load(Ordering::Relaxed);
        let logged = self.0.logged.load(Ordering::Relaxed);
        if dropped == logged {
            return;
        }
        let last = Duration::from_nanos(self.0.last_drop.load(Ordering::Relaxed));
        if !now && self.0.epoch.elapsed().saturating_sub(last) < BURST_QUIET {
            return;
        }
        let claimed =
            self.0
                .logged
                .compare_exchange(logged, dropped, Ordering::Relaxed, Ordering::Relaxed);
        if claimed.is_ok() {
            tracing::warn!(
                sink = %self.0.name,
                dropped = dropped - logged,
                total_dropped = dropped,
                "tracehop: {} dropped {} spans: its queue was full (lossy mode); \
                 flush and shutdown report the total",
                self.0.name,
                dropped - logged,
            );
        }
    }

    /// The counts so far.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            written: self.0.written.load(Ordering::Relaxed),
            failed: self.0.failed.load(Ordering::Relaxed),
            dropped: self.0.dropped.load(Ordering::Relaxed),
            peak_queued: self.0.peak_queued.load(Ordering::Relaxed),
            limit: self.0.limit,
        }
    }

    /// `Err` if any span was lost so far: the first sink error with the counts, else the
    /// number of spans dropped.
    pub(crate) fn check(&self) -> Result<()> {
        self.end_burst(true);
        let counts = self.counts();
        let first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
        match (first.as_ref(), self.0.kind) {
            (Some(message), SinkKind::Journal) => Err(Error::JournalWrite {
                written: counts.written,
                dropped: counts.failed + counts.dropped,
                message: message.clone(),
            }),
            (Some(message), SinkKind::Exporter) => Err(Error::Export {
                exporter: self.0.name.clone(),
                dropped: counts.failed + counts.dropped,
                message: message.clone(),
            }),
            (None, _) if counts.dropped > 0 => Err(Error::Dropped {
                sink: self.0.name.clone(),
                dropped: counts.dropped,
            }),
            (None, _) => Ok(()),
        }
    }
}

/// A snapshot of a [`Health`]'s counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) written: u64,
    pub(crate) failed: u64,
    pub(crate) dropped: u64,
    pub(crate) peak_queued: usize,
    pub(crate) limit: usize,
}
