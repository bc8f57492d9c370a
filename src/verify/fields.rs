//! The fields of one span as a reader found them, and the attributes verification reads.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::ids::Interner;
use super::store::{flag, Extra, Span, NONE};
use crate::journal::{Kind, Status};
use crate::messaging::attributes as attr;

/// The fields of one span as a reader found them, borrowed from its input.
#[derive(Debug, Default)]
pub(crate) struct Fields<'a> {
    pub(crate) trace_id: &'a str,
    pub(crate) span_id: &'a str,
    pub(crate) parent_span_id: Option<&'a str>,
    pub(crate) service: Option<&'a str>,
    pub(crate) operation: Option<&'a str>,
    pub(crate) kind: Option<Kind>,
    pub(crate) start: Option<SystemTime>,
    pub(crate) end: Option<SystemTime>,
    pub(crate) duration: Option<Duration>,
    pub(crate) status: Status,
    pub(crate) error: Option<&'a str>,
    pub(crate) known: Known<'a>,
    pub(crate) links: Vec<(&'a str, &'a str, Option<&'a str>)>,
    pub(crate) raw_attributes: Option<&'a str>,
    pub(crate) raw_events: Option<&'a str>,
}

/// The attributes verification reads, from whatever form they came in.
#[derive(Debug, Default)]
pub(crate) struct Known<'a> {
    pub(crate) queue_ms: Option<f64>,
    pub(crate) attempt: Option<i64>,
    pub(crate) batch: Option<i64>,
    pub(crate) destination: Option<Cow<'a, str>>,
    pub(crate) system: Option<Cow<'a, str>>,
    pub(crate) operation_type: Option<Cow<'a, str>>,
    pub(crate) error_type: Option<Cow<'a, str>>,
    pub(crate) context_missing: bool,
    pub(crate) context_linked: bool,
    pub(crate) rejected: Option<String>,
}

impl<'a> Known<'a> {
    /// Take in one attribute, if it is one verification reads.
    pub(crate) fn take(&mut self, key: &str, value: &'a Value) {
        let text = || value.as_str().map(Cow::Borrowed);
        match key {
            attr::QUEUE_TIME_MS => self.queue_ms = value.as_f64(),
            attr::DELIVERY_ATTEMPT => self.attempt = value.as_i64(),
            attr::MESSAGING_BATCH_MESSAGE_COUNT => self.batch = value.as_i64(),
            attr::MESSAGING_DESTINATION_NAME => self.destination = text(),
            // Older semantic conventions, as OpenTelemetry Python's instrumentations write.
            "messaging.destination" if self.destination.is_none() => self.destination = text(),
            attr::MESSAGING_SYSTEM => self.system = text(),
            attr::MESSAGING_OPERATION_TYPE => self.operation_type = text(),
            "messaging.operation" if self.operation_type.is_none() => {
                self.operation_type = text();
            }
            attr::ERROR_TYPE => self.error_type = text(),
            attr::CONTEXT_MISSING => self.context_missing = truthy(value),
            attr::CONTEXT_LINKED => self.context_linked = truthy(value),
            attr::CONTEXT_REJECTED => {
                self.rejected = Some(
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned),
                );
            }
            _ => {}
        }
    }
}

fn truthy(value: &Value) -> bool {
    value.as_bool() == Some(true) || value.as_str() == Some("true")
}

/// The attributes of a span kept with [`Detail::Lean`]: the ones verification reads,
/// rebuilt from the compact fields.
pub(crate) fn known_attributes(
    span: &Span,
    names: &Interner,
    extra: Option<&Extra>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    let name = |i: u32| names.get(i).map(|s| Value::String(s.to_owned()));
    if let Some(v) = name(span.system) {
        put(attr::MESSAGING_SYSTEM, v);
    }
    if let Some(v) = name(span.destination) {
        put(attr::MESSAGING_DESTINATION_NAME, v);
    }
    if span.has(flag::RECEIVE) {
        put(attr::MESSAGING_OPERATION_TYPE, "receive".into());
    } else if span.has(flag::PROCESS) {
        put(attr::MESSAGING_OPERATION_TYPE, "process".into());
    } else if span.has(flag::SEND) {
        put(attr::MESSAGING_OPERATION_TYPE, "send".into());
    }
    if let Some(q) = span.known_queue() {
        put(attr::QUEUE_TIME_MS, serde_json::json!(q as f64 / 1e6));
    }
    if span.attempt != NONE {
        put(attr::DELIVERY_ATTEMPT, span.attempt.into());
    }
    if span.batch != NONE {
        put(attr::MESSAGING_BATCH_MESSAGE_COUNT, span.batch.into());
    }
    if let Some(v) = name(span.error_type) {
        put(attr::ERROR_TYPE, v);
    }
    if span.has(flag::CONTEXT_MISSING) {
        put(attr::CONTEXT_MISSING, true.into());
    }
    if span.has(flag::CONTEXT_LINKED) {
        put(attr::CONTEXT_LINKED, true.into());
    }
    if let Some(r) = extra.and_then(|e| e.rejected.as_deref()) {
        put(attr::CONTEXT_REJECTED, r.into());
    }
    out
}
