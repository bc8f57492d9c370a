//! The span journal, tracehop's embedded default: one JSON line per finished span, in the
//! article's shape, to standard output, a file or any writer; and its reader.
//!
//! ```text
//! {"timestamp":"2026-03-21T15:17:00.410000Z","event":"span_finished","trace_id":"4bf9…",
//!  "span_id":"00f0…","parent_span_id":"a3ce…","service_name":"worker",
//!  "operation_name":"process tasks","span_kind":"consumer","start_time":"…",
//!  "latency_ms":410.0,"duration_ns":410000000,"status":"ok","error":null,
//!  "attributes":{"messaging.system":"kafka",…},"links":[]}
//! ```
//!
//! # No span is lost silently
//!
//! A journal is lossless by default: after [`Telemetry::shutdown`](crate::Telemetry::shutdown)
//! returns `Ok`, every span that ended before it has its line, however fast spans came.
//! How, and what it costs:
//!
//! - **The line is written on the thread that ends the span**, straight from the SDK's
//!   span data into a buffer that thread reuses (no record, no per-field `io::Write`
//!   call, strings escaped only when they need it, the date formatted once per second).
//!   Nothing of the span outlives `end()`: no span data waits in a queue.
//! - **When the journal is the handle's only span processor** (the default), tracehop's
//!   own send and process spans skip the SDK's span and span data: the span's fields are
//!   kept by the journal and written from there when it ends, with the handle's sampler
//!   and the SDK's span limits, so the line is the one the SDK's span would have given.
//!   Add any other span processor (an exporter, a collector,
//!   [`record_baggage`](crate::TelemetryBuilder::record_baggage)) and every span goes
//!   through the SDK again; your own spans and `tracing`'s always do.
//! - **Lines are appended to one shared block** (a short lock and a copy). A full block
//!   (up to 256 KiB) goes to a bounded queue read by the journal's own writer thread,
//!   which writes whole blocks and flushes after each. A partly filled block is handed
//!   over after half a second without a full one, and at every flush.
//! - **When the queue is full, the thread ending a span waits** for the writer (back
//!   pressure) instead of dropping the span. Memory stays bounded by the journal's
//!   [`buffer`](Journal::buffer) (2 MiB by default) plus one block being filled and one
//!   being written, whatever the burst; a burst is slowed to the destination's speed.
//!   The writer thread never waits for itself, and it writes through `catch_unwind`, so
//!   a writer that panics counts as a failed write rather than stopping the journal.
//! - **Opting out**: [`Journal::lossy`] never waits; a line that does not fit is dropped,
//!   counted, logged through `tracing` once per burst (when a second has passed without a
//!   drop, or at the next flush), and reported by
//!   [`Telemetry::flush`](crate::Telemetry::flush) and `shutdown` as
//!   [`Error::Dropped`](crate::Error::Dropped) with the total.
//! - A destination that fails (full disk, closed pipe) is reported the same way as
//!   [`Error::JournalWrite`](crate::Error::JournalWrite), with how many spans were written
//!   and lost; [`Telemetry::journal_stats`](crate::Telemetry::journal_stats) has the
//!   counts at any time.
//!
//! Spans that end after `shutdown` are not recorded (the SDK discards them before any
//! exporter sees them).
//!
//! # Reading
//!
//! Reading accepts any JSON line with `trace_id` and `span_id`, so the article's example
//! event loads as it stands:
//!
//! ```
//! let line = r#"{"timestamp": "2026-03-21T15:17:00Z", "event": "span_finished",
//!   "trace_id": "tr_7a31", "span_id": "sp_worker_02", "parent_span_id": "sp_gateway_01",
//!   "service_name": "worker", "operation_name": "process_task", "latency_ms": 410,
//!   "status": "ok"}"#;
//! let report = tracehop::journal::read_str("example", &line.replace('\n', " "));
//! assert_eq!(report.spans[0].parent_span_id.as_deref(), Some("sp_gateway_01"));
//! assert_eq!(report.spans[0].latency_ms, Some(410.0));
//! ```

mod collector;
mod direct;
mod line;
mod processor;
mod reader;
mod record;
mod target;

use opentelemetry::Key;
use opentelemetry_sdk::Resource;

pub(crate) use collector::CollectorExporter;
pub use collector::SpanCollector;
pub(crate) use direct::{DirectJournal, SpanName, SpanStart};
pub(crate) use line::is_json_clean;
pub(crate) use processor::{JournalProcessor, Shared as JournalShared};
pub(crate) use reader::for_each_source;
pub use reader::{read_files, read_reader, read_str, Malformed, ReadReport};
pub use record::{Kind, LinkRecord, SpanRecord, Status};
pub use target::{Journal, DEFAULT_BUFFER};

/// What a journal has done so far (see [`Telemetry::journal_stats`](crate::Telemetry::journal_stats)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalStats {
    /// The journal's name (its path, `-` for standard output, or the name given).
    pub name: String,
    /// Spans whose lines reached the destination.
    pub written: u64,
    /// Spans whose lines the destination refused (a write error).
    pub failed: u64,
    /// Spans dropped because a [lossy](Journal::lossy) journal's buffer was full.
    pub dropped: u64,
    /// The most bytes of lines that ever waited for the writer at once.
    pub peak_buffered_bytes: usize,
    /// How many bytes of lines may wait ([`Journal::buffer`]).
    pub buffer_limit: usize,
}

/// The service name of `resource` as a journal line writes it.
pub(crate) fn service_json_of(resource: &Resource) -> Vec<u8> {
    line::service_json(service_name(resource).as_deref())
}

/// `service.name` of a resource.
fn service_name(resource: &Resource) -> Option<String> {
    resource
        .get(&Key::from_static_str("service.name"))
        .map(|v| v.as_str().into_owned())
}

#[cfg(test)]
mod tests;
