//! One finished span as the journal stores it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A finished span in the article's shape: one JSON line of the journal.
///
/// Only `trace_id` and `span_id` are required when reading, so journals written by other
/// tools (the article's example event, say) load as they are. Ids are kept as the strings
/// found; tracehop writes lowercase hex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// When the span finished.
    #[serde(default, with = "opt_time", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<SystemTime>,
    /// Always `span_finished` for spans tracehop writes.
    #[serde(default = "span_finished")]
    pub event: String,
    /// The trace this span belongs to.
    pub trace_id: String,
    /// This span's id.
    pub span_id: String,
    /// The parent span's id; `None` for a root.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub parent_span_id: Option<String>,
    /// The service the span ran in (`service.name`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// What the service did (the span name).
    #[serde(default)]
    pub operation_name: Option<String>,
    /// The span kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_kind: Option<Kind>,
    /// When the span started.
    #[serde(default, with = "opt_time", skip_serializing_if = "Option::is_none")]
    pub start_time: Option<SystemTime>,
    /// Duration in milliseconds (microsecond precision when tracehop writes it).
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Duration in nanoseconds, exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    /// `ok`, `error` or `unset`.
    #[serde(default)]
    pub status: Status,
    /// The error description, for failed spans.
    #[serde(default)]
    pub error: Option<String>,
    /// Span attributes (messaging attributes among them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Value>,
    /// Links to other spans (batch processing, trust boundaries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkRecord>,
}

impl SpanRecord {
    /// The span's duration: `duration_ns` if present, else `latency_ms`.
    pub fn duration(&self) -> Option<Duration> {
        match (self.duration_ns, self.latency_ms) {
            (Some(ns), _) => Some(Duration::from_nanos(ns)),
            // Too long for a `Duration` (centuries of milliseconds): not known.
            (None, Some(ms)) if ms.is_finite() && ms >= 0.0 => {
                Duration::try_from_secs_f64(ms / 1000.0).ok()
            }
            _ => None,
        }
    }

    /// When the span started: `start_time`, else `timestamp` minus the duration.
    pub fn start(&self) -> Option<SystemTime> {
        self.start_time.or_else(|| {
            let end = self.timestamp?;
            end.checked_sub(self.duration().unwrap_or_default())
        })
    }

    /// An attribute's value.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// An attribute's value as text.
    pub fn attribute_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// A link from one span to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The linked span's trace.
    pub trace_id: String,
    /// The linked span.
    pub span_id: String,
    /// The link's attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Value>,
}

/// A span's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Completed successfully.
    Ok,
    /// Failed.
    Error,
    /// No status was set.
    #[default]
    #[serde(other)]
    Unset,
}

/// A span's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An internal operation.
    Internal,
    /// The server side of a synchronous call.
    Server,
    /// The client side of a synchronous call.
    Client,
    /// Sending a message.
    Producer,
    /// Receiving or processing a message.
    Consumer,
}

fn span_finished() -> String {
    "span_finished".to_owned()
}

fn empty_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.filter(|s| !s.is_empty() && s != "-"))
}

mod opt_time {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&crate::time::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        match v {
            None => Ok(None),
            Some(s) => crate::time::parse_rfc3339(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s}"))),
        }
    }
}
