//! Keeping spans in memory as [`SpanRecord`]s (for tests and tools), and the conversion
//! from the SDK's `SpanData` to a record that the journal line is written to match.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, Status as OtelStatus};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use serde_json::Value as Json;

use super::record::{Kind, LinkRecord, SpanRecord, Status};

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

/// A `SpanExporter` that keeps spans in a [`SpanCollector`], as records.
#[derive(Debug)]
pub(crate) struct CollectorExporter {
    collector: SpanCollector,
    service_name: Option<String>,
}

impl CollectorExporter {
    pub(crate) fn new(collector: SpanCollector) -> CollectorExporter {
        CollectorExporter {
            collector,
            service_name: None,
        }
    }
}

impl SpanExporter for CollectorExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let service_name = self.service_name.as_deref();
        self.collector
            .push_all(batch.iter().map(|s| to_record(s, service_name)));
        std::future::ready(Ok(()))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.service_name = super::service_name(resource);
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

pub(crate) fn exception_message_value(events: &[opentelemetry::trace::Event]) -> Option<&Value> {
    events
        .iter()
        .filter(|e| e.name == "exception")
        .flat_map(|e| e.attributes.iter())
        .find(|kv| kv.key.as_str() == "exception.message")
        .map(|kv| &kv.value)
}

fn exception_message(span: &SpanData) -> Option<String> {
    exception_message_value(&span.events.events).map(|v| v.as_str().into_owned())
}

fn attribute(kv: &KeyValue) -> (String, Json) {
    let value = match &kv.value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I64(i) => Json::from(*i),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.as_str().to_owned()),
        Value::Array(array) => array_json(array),
        other => Json::String(other.as_str().into_owned()),
    };
    (kv.key.as_str().to_owned(), value)
}

/// An array attribute as a JSON array (what the journal writes).
fn array_json(array: &opentelemetry::Array) -> Json {
    use opentelemetry::Array;
    match array {
        Array::Bool(items) => items.iter().map(|b| Json::Bool(*b)).collect(),
        Array::I64(items) => items.iter().map(|i| Json::from(*i)).collect(),
        Array::F64(items) => items
            .iter()
            .map(|f| serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number))
            .collect(),
        Array::String(items) => items
            .iter()
            .map(|s| Json::String(s.as_str().to_owned()))
            .collect(),
        other => Json::String(other.to_string()),
    }
}
