//! OTLP JSON, as the OpenTelemetry Collector's file exporter writes it
//! (`resourceSpans` -> `scopeSpans` -> `spans`), to span records.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::journal::{Kind, LinkRecord, SpanRecord, Status};

/// Whether `value` is an OTLP traces document (an object with `resourceSpans`).
pub(crate) fn is_otlp(value: &Value) -> bool {
    value.get("resourceSpans").is_some()
}

/// Convert one OTLP JSON document; spans that cannot be read are described in the second
/// list (with their position in the document) and skipped.
pub(crate) fn spans(doc: &Value) -> (Vec<SpanRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let Some(resource_spans) = doc.get("resourceSpans").and_then(Value::as_array) else {
        errors.push("resourceSpans is not an array".to_owned());
        return (records, errors);
    };
    for (r, rs) in resource_spans.iter().enumerate() {
        let service = rs
            .get("resource")
            .and_then(|res| res.get("attributes"))
            .and_then(|a| attributes(a).remove("service.name"))
            .and_then(|v| v.as_str().map(str::to_owned));
        // `instrumentationLibrarySpans` is the pre-1.0 name of `scopeSpans`.
        let scopes = rs
            .get("scopeSpans")
            .or_else(|| rs.get("instrumentationLibrarySpans"))
            .and_then(Value::as_array);
        for (s, scope) in scopes.into_iter().flatten().enumerate() {
            let spans = scope.get("spans").and_then(Value::as_array);
            for (i, span) in spans.into_iter().flatten().enumerate() {
                match record(span, service.as_deref()) {
                    Ok(rec) => records.push(rec),
                    Err(e) => errors.push(format!(
                        "resourceSpans[{r}].scopeSpans[{s}].spans[{i}]: {e}"
                    )),
                }
            }
        }
    }
    (records, errors)
}

fn record(span: &Value, service: Option<&str>) -> Result<SpanRecord, String> {
    let trace_id = id(span.get("traceId"), 16).ok_or("no valid traceId")?;
    let span_id = id(span.get("spanId"), 8).ok_or("no valid spanId")?;
    let parent_span_id = id(span.get("parentSpanId"), 8).filter(|p| p.bytes().any(|b| b != b'0'));
    let start = nanos(span.get("startTimeUnixNano"));
    let end = nanos(span.get("endTimeUnixNano"));
    let to_time = |n: u64| UNIX_EPOCH.checked_add(Duration::from_nanos(n));
    let duration_ns = match (start, end) {
        (Some(s), Some(e)) => Some(e.saturating_sub(s)),
        _ => None,
    };
    let status_obj = span.get("status");
    let code = status_obj.and_then(|s| s.get("code"));
    let status = match code {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(1) => Status::Ok,
            Some(2) => Status::Error,
            _ => Status::Unset,
        },
        Some(Value::String(s)) => match s.as_str() {
            "STATUS_CODE_OK" | "Ok" | "OK" => Status::Ok,
            "STATUS_CODE_ERROR" | "Error" | "ERROR" => Status::Error,
            _ => Status::Unset,
        },
        _ => Status::Unset,
    };
    let attrs = span.get("attributes").map(attributes).unwrap_or_default();
    let error = (status == Status::Error).then(|| {
        status_obj
            .and_then(|s| s.get("message"))
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .or_else(|| exception_message(span))
            .unwrap_or_else(|| "error".to_owned())
    });
    let links = span
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some(LinkRecord {
                trace_id: id(l.get("traceId"), 16)?,
                span_id: id(l.get("spanId"), 8)?,
                attributes: l.get("attributes").map(attributes).unwrap_or_default(),
            })
        })
        .collect();
    Ok(SpanRecord {
        timestamp: end.and_then(to_time),
        event: "span_finished".to_owned(),
        trace_id,
        span_id,
        parent_span_id,
        service_name: service.map(str::to_owned),
        operation_name: span.get("name").and_then(Value::as_str).map(str::to_owned),
        span_kind: kind(span.get("kind")),
        start_time: start.and_then(to_time),
        latency_ms: duration_ns.map(|ns| ns as f64 / 1_000_000.0),
        duration_ns,
        status,
        error,
        attributes: attrs,
        links,
    })
}

fn kind(v: Option<&Value>) -> Option<Kind> {
    let n = match v? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => match s.trim_start_matches("SPAN_KIND_") {
            "INTERNAL" => 1,
            "SERVER" => 2,
            "CLIENT" => 3,
            "PRODUCER" => 4,
            "CONSUMER" => 5,
            _ => return None,
        },
        _ => return None,
    };
    Some(match n {
        2 => Kind::Server,
        3 => Kind::Client,
        4 => Kind::Producer,
        5 => Kind::Consumer,
        _ => Kind::Internal,
    })
}

/// A time in Unix nanoseconds: OTLP JSON writes 64-bit integers as strings.
fn nanos(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
    .filter(|n| *n > 0)
}

/// A trace or span id of `bytes` bytes: lowercase hex as OTLP JSON specifies, or base64 as
/// generic protobuf JSON writes it.
fn id(v: Option<&Value>, bytes: usize) -> Option<String> {
    let s = v?.as_str()?;
    if s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(s.to_ascii_lowercase());
    }
    let raw = base64(s)?;
    (raw.len() == bytes).then(|| raw.iter().map(|b| format!("{b:02x}")).collect())
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// `[{"key": k, "value": {"stringValue": ...}}]` to a map of JSON values.
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv.get("key")?.as_str()?.to_owned();
            Some((key, any_value(kv.get("value")?)))
        })
        .collect()
}

fn any_value(v: &Value) -> Value {
    let Some(obj) = v.as_object() else {
        return v.clone();
    };
    let get = |k: &str| obj.get(k);
    if let Some(s) = get("stringValue") {
        return s.clone();
    }
    if let Some(b) = get("boolValue") {
        return b.clone();
    }
    if let Some(i) = get("intValue") {
        return match i {
            Value::String(s) => s.parse::<i64>().map_or_else(|_| i.clone(), Value::from),
            other => other.clone(),
        };
    }
    if let Some(d) = get("doubleValue") {
        return match d {
            Value::String(s) => s
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| d.clone(), Value::Number),
            other => other.clone(),
        };
    }
    if let Some(a) = get("arrayValue") {
        let values = a.get("values").and_then(Value::as_array);
        return Value::Array(values.into_iter().flatten().map(any_value).collect());
    }
    if let Some(kv) = get("kvlistValue") {
        let map: Map<String, Value> = attributes(kv.get("values").unwrap_or(&Value::Null))
            .into_iter()
            .collect();
        return Value::Object(map);
    }
    if let Some(b) = get("bytesValue") {
        return b.clone();
    }
    Value::Null
}

fn exception_message(span: &Value) -> Option<String> {
    span.get("events")?
        .as_array()?
        .iter()
        .filter(|e| e.get("name").and_then(Value::as_str) == Some("exception"))
        .find_map(|e| {
            attributes(e.get("attributes")?)
                .remove("exception.message")
                .and_then(|v| v.as_str().map(str::to_owned))
        })
}
