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
        /// Reused between spans to put their attributes in order.
        order: Vec<usize>,
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
                order: Vec::new(),
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
        let service_name = self.service_name.as_deref();
        match &mut *target {
            Target::Memory(collector) => {
                collector.push_all(batch.iter().map(|s| to_record(s, service_name)));
                Ok(())
            }
            Target::Writer { name, out, order } => {
                let n = batch.len() as u64;
                let result = batch
                    .iter()
                    .try_for_each(|span| {
                        write_line(&mut *out, span, service_name, order)?;
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
        if let Target::Writer { name, out, .. } = &mut *target {
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

/// Write `span` as one journal line (without the newline): byte for byte what serializing
/// [`to_record`]'s record writes, without building the record's strings, map and vectors
/// first. `order` is scratch space.
pub(crate) fn write_line<W: Write>(
    out: &mut W,
    span: &SpanData,
    service_name: Option<&str>,
    order: &mut Vec<usize>,
) -> io::Result<()> {
    let sc = &span.span_context;
    let duration = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    write!(
        out,
        "{{\"timestamp\":\"{}\",\"event\":\"span_finished\",\"trace_id\":",
        humantime::format_rfc3339_nanos(span.end_time),
    )?;
    json_hex(out, &sc.trace_id().to_bytes())?;
    out.write_all(b",\"span_id\":")?;
    json_hex(out, &sc.span_id().to_bytes())?;
    out.write_all(b",\"parent_span_id\":")?;
    if span.parent_span_id == SpanId::INVALID {
        out.write_all(b"null")?;
    } else {
        json_hex(out, &span.parent_span_id.to_bytes())?;
    }
    out.write_all(b",\"service_name\":")?;
    match service_name {
        Some(name) => json_str(out, name)?,
        None => out.write_all(b"null")?,
    }
    out.write_all(b",\"operation_name\":")?;
    json_str(out, &span.name)?;
    let kind = match span.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    write!(
        out,
        ",\"span_kind\":\"{kind}\",\"start_time\":\"{}\",\"latency_ms\":",
        humantime::format_rfc3339_nanos(span.start_time)
    )?;
    json_value(out, &crate::time::millis_f64(duration))?;
    out.write_all(b",\"duration_ns\":")?;
    json_value(out, &u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))?;
    match &span.status {
        OtelStatus::Ok => out.write_all(b",\"status\":\"ok\",\"error\":null")?,
        OtelStatus::Unset => out.write_all(b",\"status\":\"unset\",\"error\":null")?,
        OtelStatus::Error { description } => {
            out.write_all(b",\"status\":\"error\",\"error\":")?;
            if !description.is_empty() {
                json_str(out, description)?;
            } else {
                match exception_message_value(span) {
                    Some(message) => json_str(out, &message.as_str())?,
                    None => out.write_all(b"\"error\"")?,
                }
            }
        }
    }
    if !span.attributes.is_empty() {
        out.write_all(b",\"attributes\":")?;
        json_attributes(out, &span.attributes, order)?;
    }
    if !span.links.links.is_empty() {
        out.write_all(b",\"links\":[")?;
        for (i, link) in span.links.links.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            out.write_all(b"{\"trace_id\":")?;
            json_hex(out, &link.span_context.trace_id().to_bytes())?;
            out.write_all(b",\"span_id\":")?;
            json_hex(out, &link.span_context.span_id().to_bytes())?;
            if !link.attributes.is_empty() {
                out.write_all(b",\"attributes\":")?;
                json_attributes(out, &link.attributes, order)?;
            }
            out.write_all(b"}")?;
        }
        out.write_all(b"]")?;
    }
    out.write_all(b"}")
}

/// A JSON string, escaped as serde_json escapes it: control characters, `"` and `\`
/// (most strings have none, and are copied as they are).
fn json_str<W: Write>(out: &mut W, s: &str) -> io::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.write_all(b"\"")?;
        out.write_all(s.as_bytes())?;
        return out.write_all(b"\"");
    }
    json_value(out, s)
}

/// An id as a JSON string of lowercase hex, as its `Display` writes it.
fn json_hex<W: Write>(out: &mut W, id: &[u8]) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'"'; 34];
    let len = 2 * id.len();
    for (pair, &b) in buf[1..=len].chunks_exact_mut(2).zip(id) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
    out.write_all(&buf[..len + 2])
}

fn json_value<W: Write, T: serde::Serialize + ?Sized>(out: &mut W, value: &T) -> io::Result<()> {
    serde_json::to_writer(out, value).map_err(io::Error::other)
}

/// An attribute list as the record's map: ordered by key, the last value of a key
/// repeated in the list winning.
fn json_attributes<W: Write>(
    out: &mut W,
    attributes: &[KeyValue],
    order: &mut Vec<usize>,
) -> io::Result<()> {
    order.clear();
    order.extend(0..attributes.len());
    // Stable: among equal keys the list order stays, so the last one is the later value.
    order.sort_by(|a, b| attributes[*a].key.as_str().cmp(attributes[*b].key.as_str()));
    out.write_all(b"{")?;
    let mut first = true;
    for (i, &at) in order.iter().enumerate() {
        let kv = &attributes[at];
        let superseded = order
            .get(i + 1)
            .is_some_and(|next| attributes[*next].key.as_str() == kv.key.as_str());
        if superseded {
            continue;
        }
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        json_str(out, kv.key.as_str())?;
        out.write_all(b":")?;
        match &kv.value {
            Value::Bool(b) => json_value(out, b)?,
            Value::I64(n) => json_value(out, n)?,
            // Not finite: `null`, as the record's `Number::from_f64` gives.
            Value::F64(f) => json_value(out, f)?,
            Value::String(s) => json_str(out, s.as_str())?,
            other => json_str(out, &other.as_str())?,
        }
    }
    out.write_all(b"}")
}

fn exception_message_value(span: &SpanData) -> Option<&Value> {
    span.events
        .events
        .iter()
        .filter(|e| e.name == "exception")
        .flat_map(|e| e.attributes.iter())
        .find(|kv| kv.key.as_str() == "exception.message")
        .map(|kv| &kv.value)
}

fn exception_message(span: &SpanData) -> Option<String> {
    exception_message_value(span).map(|v| v.as_str().into_owned())
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{
        Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState,
        Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{
        SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter,
    };

    use super::{to_record, write_line};

    /// Keeps the finished spans as the SDK hands them over.
    #[derive(Debug, Clone, Default)]
    struct Keep(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Keep {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("lock").extend(batch);
            Ok(())
        }
    }

    /// The direct writer writes exactly what serializing the record writes, for spans
    /// with every kind of field: escapes, non-ASCII, repeated and unsorted attribute
    /// keys, every value type, non-finite floats, links, each status.
    #[test]
    fn direct_lines_equal_serialized_records() {
        let keep = Keep::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(SimpleSpanProcessor::new(keep.clone()))
            .build();
        let tracer = provider.tracer("t");
        let remote = SpanContext::new(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128.into(),
            0x00f0_67aa_0ba9_02b7_u64.into(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let parent = Context::new().with_remote_span_context(remote.clone());
        let mut span = tracer
            .span_builder("send \"odd\" \\ naïve\u{1}")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("z.last", "v\n\t\"q\""),
                KeyValue::new("a.first", 1_i64),
                KeyValue::new("dup", "old"),
                KeyValue::new("m.float", 0.1_f64),
                KeyValue::new("m.nan", f64::NAN),
                KeyValue::new("m.inf", f64::INFINITY),
                KeyValue::new("b.bool", true),
                KeyValue::new("dup", "new"),
                KeyValue::new("neg", -42_i64),
                KeyValue::new("arr", opentelemetry::Value::Array(vec![1_i64, 2].into())),
                KeyValue::new("big", 1e21_f64),
                KeyValue::new("del", "a\u{7f}b ☃"),
            ])
            .with_links(vec![
                Link::with_context(remote.clone()),
                Link::new(remote.clone(), vec![KeyValue::new("k", "v")], 0),
            ])
            .start_with_context(&tracer, &parent);
        span.set_status(Status::error("broke: \"x\""));
        span.end();
        let mut span = tracer.start("plain");
        span.set_status(Status::Ok);
        span.end();
        tracer.start("unset").end();
        let mut span = tracer.start_with_context("failed", &Context::new());
        span.add_event(
            "exception",
            vec![KeyValue::new("exception.message", "from the event ☃")],
        );
        span.set_status(Status::error(""));
        span.end();
        let mut span = tracer.start("failed quietly");
        span.set_status(Status::error(""));
        span.end();

        let spans = keep.0.lock().expect("lock").clone();
        assert_eq!(spans.len(), 5);
        let mut order = Vec::new();
        for service in [Some("svc \"q\""), None] {
            for span in &spans {
                let mut direct = Vec::new();
                write_line(&mut direct, span, service, &mut order).expect("write");
                let record = serde_json::to_string(&to_record(span, service)).expect("json");
                assert_eq!(String::from_utf8(direct).expect("utf-8"), record);
            }
        }
    }
}
