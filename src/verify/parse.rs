//! One journal line to compact span fields, borrowing from the line: no `Value` tree, no
//! string copies for ids and names, unknown attributes skipped without being built.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::store::{Detail, Fields, Known, Spans};
use crate::journal::{Kind, Status};
use crate::messaging::attributes as attr;

/// A string borrowed from the input when it has no escapes.
#[derive(Debug)]
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The journal line, as far as verification reads it; `$attributes` is how the attributes
/// object is read (kept raw, or only the attributes verification reads).
macro_rules! line_struct {
    ($name:ident, $attributes:ty) => {
        #[derive(Debug, Deserialize)]
        struct $name<'a> {
            #[serde(default, borrow)]
            timestamp: Option<Str<'a>>,
            #[serde(default, borrow)]
            trace_id: Option<Str<'a>>,
            #[serde(default, borrow)]
            span_id: Option<Str<'a>>,
            #[serde(default, borrow)]
            parent_span_id: Option<Str<'a>>,
            #[serde(default, borrow)]
            service_name: Option<Str<'a>>,
            #[serde(default, borrow)]
            operation_name: Option<Str<'a>>,
            #[serde(default)]
            span_kind: Option<Kind>,
            #[serde(default, borrow)]
            start_time: Option<Str<'a>>,
            #[serde(default)]
            latency_ms: Option<f64>,
            #[serde(default)]
            duration_ns: Option<u64>,
            #[serde(default)]
            status: Status,
            #[serde(default, borrow)]
            error: Option<Str<'a>>,
            #[serde(default, borrow)]
            event: Option<Str<'a>>,
            #[serde(default, borrow)]
            attributes: Option<$attributes>,
            #[serde(default, borrow)]
            links: Option<&'a RawValue>,
            #[serde(default, borrow)]
            events: Option<&'a RawValue>,
        }
    };
}

line_struct!(Line, &'a RawValue);
line_struct!(LeanLine, KnownAttributes<'a>);

/// How a line's attributes were read.
trait Attributes<'a> {
    /// The attributes verification reads.
    fn known(self) -> Result<(Known<'a>, Option<&'a str>), String>;
}

impl<'a> Attributes<'a> for &'a RawValue {
    fn known(self) -> Result<(Known<'a>, Option<&'a str>), String> {
        match serde_json::from_str::<Option<KnownAttributes<'_>>>(self.get()) {
            Ok(k) => Ok((k.map(|k| k.0).unwrap_or_default(), raw(self.get()))),
            Err(e) => Err(format!("not a span: attributes: {e}")),
        }
    }
}

impl<'a> Attributes<'a> for KnownAttributes<'a> {
    fn known(self) -> Result<(Known<'a>, Option<&'a str>), String> {
        Ok((self.0, None))
    }
}

/// Raw JSON text kept for the output, unless it holds nothing.
pub(crate) fn raw(r: &str) -> Option<&str> {
    (!matches!(r, "null" | "{}" | "[]")).then_some(r)
}

fn raw_text(r: Option<&RawValue>) -> Option<&str> {
    r.map(RawValue::get).and_then(raw)
}

#[derive(Debug, Deserialize)]
struct LinkLine<'a> {
    #[serde(borrow)]
    trace_id: Str<'a>,
    #[serde(borrow)]
    span_id: Str<'a>,
    #[serde(default, borrow)]
    attributes: Option<&'a RawValue>,
}

/// The event name alone, to tell skipped events from malformed spans.
#[derive(Debug, Deserialize)]
struct EventOnly<'a> {
    #[serde(default, borrow)]
    event: Option<Str<'a>>,
}

/// An attribute value verification may read.
#[derive(Debug)]
pub(crate) enum Scalar<'a> {
    Str(Cow<'a, str>),
    F64(f64),
    I64(i64),
    Bool(bool),
    Other(String),
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::F64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::I64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Scalar::F64(v as f64), Scalar::I64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other("null".to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Scalar::Other(v.to_string()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'a> Scalar<'a> {
    fn f64(&self) -> Option<f64> {
        match self {
            Scalar::F64(v) => Some(*v),
            Scalar::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    fn i64(&self) -> Option<i64> {
        match self {
            Scalar::I64(v) => Some(*v),
            _ => None,
        }
    }
    fn truthy(&self) -> bool {
        matches!(self, Scalar::Bool(true)) || matches!(self, Scalar::Str(s) if s == "true")
    }
    fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
    fn display(self) -> String {
        match self {
            Scalar::Str(s) => s.into_owned(),
            Scalar::F64(v) => v.to_string(),
            Scalar::I64(v) => v.to_string(),
            Scalar::Bool(v) => v.to_string(),
            Scalar::Other(v) => v,
        }
    }
}

/// The attributes verification reads, numbered.
const WANTED: [&str; 12] = [
    attr::QUEUE_TIME_MS,
    attr::DELIVERY_ATTEMPT,
    attr::MESSAGING_BATCH_MESSAGE_COUNT,
    attr::MESSAGING_DESTINATION_NAME,
    "messaging.destination",
    attr::MESSAGING_SYSTEM,
    attr::MESSAGING_OPERATION_TYPE,
    "messaging.operation",
    attr::ERROR_TYPE,
    attr::CONTEXT_MISSING,
    attr::CONTEXT_LINKED,
    attr::CONTEXT_REJECTED,
];

/// Which attribute verification reads `key` is (an index into [`WANTED`]), if any.
pub(crate) fn wanted(key: &str) -> Option<u8> {
    WANTED.iter().position(|w| *w == key).map(|i| i as u8)
}

/// Take in the value of an attribute [`wanted`] said verification reads.
pub(crate) fn take<'a>(k: &mut Known<'a>, which: u8, value: Scalar<'a>) {
    match which {
        0 => k.queue_ms = value.f64(),
        1 => k.attempt = value.i64(),
        2 => k.batch = value.i64(),
        3 => k.destination = value.text(),
        // Older semantic conventions, as OpenTelemetry Python's instrumentations write.
        4 if k.destination.is_none() => k.destination = value.text(),
        5 => k.system = value.text(),
        6 => k.operation_type = value.text(),
        7 if k.operation_type.is_none() => k.operation_type = value.text(),
        8 => k.error_type = value.text(),
        9 => k.context_missing = value.truthy(),
        10 => k.context_linked = value.truthy(),
        11 => k.rejected = Some(value.display()),
        _ => {}
    }
}

/// The attributes verification reads, from a journal's attributes object.
#[derive(Debug)]
struct KnownAttributes<'a>(Known<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for KnownAttributes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = KnownAttributes<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attributes object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut k = Known::default();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let Some(which) = wanted(&key) else {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    let value: Scalar<'de> = map.next_value()?;
                    take(&mut k, which, value);
                }
                Ok(KnownAttributes(k))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// What one line was.
pub(crate) enum LineOutcome {
    /// A span, added.
    Span,
    /// Blank.
    Blank,
    /// A well-formed event that is not a finished span.
    Skipped,
    /// Not a span: why.
    Malformed(String),
}

fn time(s: Option<&str>, field: &str) -> Result<Option<SystemTime>, String> {
    match s {
        None => Ok(None),
        Some(text) => crate::time::fast_rfc3339(text)
            .or_else(|| crate::time::parse_rfc3339(text))
            .map(Some)
            .ok_or_else(|| format!("not a span: {field}: not an RFC 3339 time: {text}")),
    }
}

/// A journal line as far as verification reads it, from either reader: the serde structs
/// ([`Line`], [`LeanLine`]) or the scanner ([`super::scan`]).
#[derive(Debug, Default)]
pub(crate) struct RawLine<'a> {
    pub(crate) timestamp: Option<Cow<'a, str>>,
    pub(crate) trace_id: Option<Cow<'a, str>>,
    pub(crate) span_id: Option<Cow<'a, str>>,
    pub(crate) parent_span_id: Option<Cow<'a, str>>,
    pub(crate) service_name: Option<Cow<'a, str>>,
    pub(crate) operation_name: Option<Cow<'a, str>>,
    pub(crate) span_kind: Option<Kind>,
    pub(crate) start_time: Option<Cow<'a, str>>,
    pub(crate) latency_ms: Option<f64>,
    pub(crate) duration_ns: Option<u64>,
    pub(crate) status: Status,
    pub(crate) error: Option<Cow<'a, str>>,
    pub(crate) event: Option<Cow<'a, str>>,
    /// The attributes verification reads and the object as read ([`Detail::Full`]), or
    /// why they could not be read.
    pub(crate) attributes: Option<Result<(Known<'a>, Option<&'a str>), String>>,
    /// The links array as read.
    pub(crate) links: Option<&'a str>,
    /// The events array as read.
    pub(crate) events: Option<&'a str>,
}

macro_rules! raw_line {
    ($line:expr) => {{
        let l = $line;
        RawLine {
            timestamp: l.timestamp.map(|s| s.0),
            trace_id: l.trace_id.map(|s| s.0),
            span_id: l.span_id.map(|s| s.0),
            parent_span_id: l.parent_span_id.map(|s| s.0),
            service_name: l.service_name.map(|s| s.0),
            operation_name: l.operation_name.map(|s| s.0),
            span_kind: l.span_kind,
            start_time: l.start_time.map(|s| s.0),
            latency_ms: l.latency_ms,
            duration_ns: l.duration_ns,
            status: l.status,
            error: l.error.map(|s| s.0),
            event: l.event.map(|s| s.0),
            attributes: l.attributes.map(Attributes::known),
            links: l.links.map(RawValue::get),
            events: l.events.map(RawValue::get),
        }
    }};
}

/// Add the span a read line describes: `Ok(false)` for an event that is not a finished
/// span. Nothing is added on an error.
#[inline]
pub(crate) fn add(line: RawLine<'_>, spans: &mut Spans) -> Result<bool, String> {
    if line.event.as_ref().is_some_and(|e| e != "span_finished") {
        return Ok(false);
    }
    let trace_id = line
        .trace_id
        .ok_or("not a span: missing field `trace_id`")?;
    let span_id = line.span_id.ok_or("not a span: missing field `span_id`")?;
    let end = time(line.timestamp.as_deref(), "timestamp")?;
    let start_time = time(line.start_time.as_deref(), "start_time")?;
    let duration = match (line.duration_ns, line.latency_ms) {
        (Some(ns), _) => Some(Duration::from_nanos(ns)),
        // Too long for a `Duration` (centuries of milliseconds): not known.
        (None, Some(ms)) if ms.is_finite() && ms >= 0.0 => {
            Duration::try_from_secs_f64(ms / 1000.0).ok()
        }
        _ => None,
    };
    let start = start_time.or_else(|| end?.checked_sub(duration.unwrap_or_default()));
    let end = end.or_else(|| Some(start? + duration?));
    let (known, raw_attributes) = match line.attributes {
        Some(a) => a?,
        None => (Known::default(), None),
    };
    let links: Vec<LinkLine<'_>> = match line.links {
        Some(raw) if raw != "[]" => serde_json::from_str::<Option<Vec<LinkLine<'_>>>>(raw)
            .map_err(|e| format!("not a span: links: {e}"))?
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let parent = line.parent_span_id.filter(|s| !s.is_empty() && s != "-");
    spans.push(Fields {
        trace_id: &trace_id,
        span_id: &span_id,
        parent_span_id: parent.as_deref(),
        service: line.service_name.as_deref(),
        operation: line.operation_name.as_deref(),
        kind: line.span_kind,
        start,
        end,
        duration,
        status: line.status,
        error: line.error.as_deref(),
        known,
        links: links
            .iter()
            .map(|l| (&*l.trace_id.0, &*l.span_id.0, raw_text(l.attributes)))
            .collect(),
        raw_attributes,
        raw_events: line.events.and_then(raw),
    });
    Ok(true)
}

/// Read one journal line into `spans` with the fast reader ([`super::scan`]) if it reads
/// it: whether it added a span. When it does not, [`journal_line`] reads the line (with the
/// same result the fast reader would have had).
pub(crate) fn scanned_line(line: &[u8], spans: &mut Spans) -> bool {
    // When what is left starts and ends with a brace, `str::trim` leaves the same.
    let line = line.trim_ascii();
    if line.first() != Some(&b'{') || line.last() != Some(&b'}') {
        return false;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    match super::scan::line(text, spans.detail, &mut spans.memo) {
        Some(raw) => matches!(add(raw, spans), Ok(true)),
        None => false,
    }
}

/// Read one journal line into `spans` with serde.
pub(crate) fn journal_line(line: &[u8], spans: &mut Spans) -> LineOutcome {
    let Ok(text) = std::str::from_utf8(line) else {
        return LineOutcome::Malformed("not UTF-8".to_owned());
    };
    let text = text.trim();
    if text.is_empty() {
        return LineOutcome::Blank;
    }
    let result = match spans.detail {
        Detail::Full => serde_json::from_str::<Line<'_>>(text).map(|l| add(raw_line!(l), spans)),
        _ => serde_json::from_str::<LeanLine<'_>>(text).map(|l| add(raw_line!(l), spans)),
    };
    match result {
        Ok(Ok(true)) => LineOutcome::Span,
        Ok(Ok(false)) => LineOutcome::Skipped,
        Ok(Err(e)) => LineOutcome::Malformed(e),
        Err(e) => match serde_json::from_str::<EventOnly<'_>>(text) {
            Ok(EventOnly {
                event: Some(Str(ev)),
            }) if ev != "span_finished" => LineOutcome::Skipped,
            Ok(_) => LineOutcome::Malformed(format!("not a span: {e}")),
            Err(_) if serde_json::from_str::<IgnoredAny>(text).is_ok() => {
                LineOutcome::Malformed(format!("not a span: {e}"))
            }
            Err(e) => LineOutcome::Malformed(format!("not JSON: {e}")),
        },
    }
}
