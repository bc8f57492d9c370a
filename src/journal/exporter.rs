//! The journal exporter: OpenTelemetry spans to JSON lines, or to memory.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, Status as OtelStatus};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use serde_json::Value as Json;

use super::record::{Kind, LinkRecord, SpanRecord, Status};
use crate::{Error, Result};

/// Where journal lines go.
pub struct Journal {
    name: String,
    writer: Box<dyn Write + Send>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal").field("name", &self.name).finish()
    }
}

impl Journal {
    /// Write to standard output.
    pub fn stdout() -> Journal {
        Journal::writer("-", io::stdout())
    }

    /// Append to the file at `path`, creating it if needed (an existing journal is never
    /// truncated).
    pub fn file(path: impl AsRef<Path>) -> Result<Journal> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::JournalIo {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Journal::writer(path.display().to_string(), file))
    }

    /// Write to any writer; `name` identifies it in errors.
    pub fn writer(name: impl Into<String>, writer: impl Write + Send + 'static) -> Journal {
        Journal {
            name: name.into(),
            writer: Box::new(writer),
        }
    }
}

/// Collects finished spans in memory as [`SpanRecord`]s, in the order they end.
///
/// Give it to [`TelemetryBuilder::collector`](crate::TelemetryBuilder::collector) of one
/// or several handles; clones share the same store.
#[derive(Clone, Default)]
pub struct SpanCollector {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
}

impl fmt::Debug for SpanCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanCollector")
            .field("spans", &self.len())
            .finish()
    }
}

impl SpanCollector {
    /// An empty collector.
    pub fn new() -> SpanCollector {
        SpanCollector::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SpanRecord>> {
        // A panic elsewhere while holding the lock leaves the Vec intact; keep going.
        self.spans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of every span collected so far.
    pub fn records(&self) -> Vec<SpanRecord> {
        self.lock().clone()
    }

    /// How many spans have been collected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no span has been collected.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forget every span collected so far.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Wait until `predicate` holds for the collected spans (checked every 5 ms), up to
    /// `timeout`; return the spans either way. For tests whose consumers run elsewhere.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&[SpanRecord]) -> bool,
    ) -> Vec<SpanRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let spans = self.lock();
                if predicate(&spans) || tokio::time::Instant::now() >= deadline {
                    return spans.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn push_all(&self, records: impl IntoIterator<Item = SpanRecord>) {
        self.lock().extend(records);
    }
}

/// Shared count of what a journal wrote and the first error it hit.
#[derive(Clone, Debug)]
pub(crate) struct JournalHealth(Arc<HealthInner>);

#[derive(Debug)]
struct HealthInner {
    written: AtomicU64,
    dropped: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl JournalHealth {
    fn new() -> JournalHealth {
        JournalHealth(Arc::new(HealthInner {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }))
    }

    /// `Err` if any write failed.
    pub(crate) fn check(&self) -> Result<()> {
        let first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
        match first.as_ref() {
            None => Ok(()),
            Some(message) => Err(Error::JournalWrite {
                written: self.0.written.load(Ordering::Relaxed),
                dropped: self.0.dropped.load(Ordering::Relaxed),
                message: message.clone(),
            }),
        }
    }

    fn failed(&self, name: &str, err: &io::Error, lost: u64) {
        self.0.dropped.fetch_add(lost, Ordering::Relaxed);
        let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            // Said once, on stderr, because a journal that cannot be written cannot say it.
            eprintln!("tracehop: span journal {name}: {err}; spans are being dropped");
            *first = Some(format!("{name}: {err}"));
        }
    }
}

enum Target {
    Writer {
        name: String,
        out: BufWriter<Box<dyn Write + Send>>,
    },
    Memory(SpanCollector),
}

/// A `SpanExporter` that turns spans into [`SpanRecord`]s and writes them as JSON lines
/// (or keeps them in a [`SpanCollector`]).
pub(crate) struct JournalExporter {
    target: Mutex<Target>,
    service_name: Option<String>,
    health: JournalHealth,
}

impl fmt::Debug for JournalExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalExporter")
            .field("service_name", &self.service_name)
            .finish_non_exhaustive()
    }
}

impl JournalExporter {
    pub(crate) fn new(journal: Journal) -> JournalExporter {
        JournalExporter {
            target: Mutex::new(Target::Writer {
                name: journal.name,
                out: BufWriter::with_capacity(64 * 1024, journal.writer),
            }),
            service_name: None,
            health: JournalHealth::new(),
        }
    }

    pub(crate) fn collect(collector: SpanCollector) -> JournalExporter {
        JournalExporter {
            target: Mutex::new(Target::Memory(collector)),
            service_name: None,
            health: JournalHealth::new(),
        }
    }

    pub(crate) fn health(&self) -> JournalHealth {
        self.health.clone()
    }

    fn write(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let records = batch
            .iter()
            .map(|s| to_record(s, self.service_name.as_deref()));
        match &mut *target {
            Target::Memory(collector) => {
                collector.push_all(records);
                Ok(())
            }
            Target::Writer { name, out } => {
                let n = batch.len() as u64;
                let result = records
                    .into_iter()
                    .try_for_each(|r| {
                        serde_json::to_writer(&mut *out, &r).map_err(io::Error::other)?;
                        out.write_all(b"\n")
                    })
                    .and_then(|()| out.flush());
                match result {
                    Ok(()) => {
                        self.health.0.written.fetch_add(n, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        self.health.failed(name, &e, n);
                        Err(OTelSdkError::InternalFailure(format!(
                            "journal {name}: {e}"
                        )))
                    }
                }
            }
        }
    }

    fn flush(&self) -> OTelSdkResult {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Target::Writer { name, out } = &mut *target {
            if let Err(e) = out.flush() {
                self.health.failed(name, &e, 0);
                return Err(OTelSdkError::InternalFailure(format!(
                    "journal {name}: {e}"
                )));
            }
        }
        Ok(())
    }
}

impl SpanExporter for JournalExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.write(batch))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.flush()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.service_name = resource
            .get(&Key::from_static_str("service.name"))
            .map(|v| v.as_str().into_owned());
    }
}

/// Convert a finished OpenTelemetry span to a journal record.
pub(crate) fn to_record(span: &SpanData, service_name: Option<&str>) -> SpanRecord {
    let sc = &span.span_context;
    let duration = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    let (status, error) = match &span.status {
        OtelStatus::Ok => (Status::Ok, None),
        OtelStatus::Unset => (Status::Unset, None),
        OtelStatus::Error { description } => {
            let text = if description.is_empty() {
                exception_message(span).unwrap_or_else(|| "error".to_owned())
            } else {
                description.to_string()
            };
            (Status::Error, Some(text))
        }
    };
    SpanRecord {
        timestamp: Some(span.end_time),
        event: "span_finished".to_owned(),
        trace_id: sc.trace_id().to_string(),
        span_id: sc.span_id().to_string(),
        parent_span_id: (span.parent_span_id != SpanId::INVALID)
            .then(|| span.parent_span_id.to_string()),
        service_name: service_name.map(str::to_owned),
        operation_name: Some(span.name.to_string()),
        span_kind: Some(match span.span_kind {
            SpanKind::Client => Kind::Client,
            SpanKind::Server => Kind::Server,
            SpanKind::Producer => Kind::Producer,
            SpanKind::Consumer => Kind::Consumer,
            SpanKind::Internal => Kind::Internal,
        }),
        start_time: Some(span.start_time),
        latency_ms: Some(crate::time::millis_f64(duration)),
        duration_ns: Some(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)),
        status,
        error,
        attributes: span.attributes.iter().map(attribute).collect(),
        links: span
            .links
            .links
            .iter()
            .map(|l| LinkRecord {
                trace_id: l.span_context.trace_id().to_string(),
                span_id: l.span_context.span_id().to_string(),
                attributes: l.attributes.iter().map(attribute).collect(),
            })
            .collect(),
    }
}

fn exception_message(span: &SpanData) -> Option<String> {
    span.events
        .events
        .iter()
        .filter(|e| e.name == "exception")
        .flat_map(|e| e.attributes.iter())
        .find(|kv| kv.key.as_str() == "exception.message")
        .map(|kv| kv.value.as_str().into_owned())
}

fn attribute(kv: &KeyValue) -> (String, Json) {
    let value = match &kv.value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I64(i) => Json::from(*i),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.as_str().to_owned()),
        other => Json::String(other.as_str().into_owned()),
    };
    (kv.key.as_str().to_owned(), value)
}
