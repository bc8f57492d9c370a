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

mod exporter;
mod reader;
mod record;

pub use exporter::{Journal, SpanCollector};
pub(crate) use exporter::{JournalExporter, JournalHealth};
pub(crate) use reader::for_each_source;
pub use reader::{read_files, read_reader, read_str, Malformed, ReadReport};
pub use record::{Kind, LinkRecord, SpanRecord, Status};
