//! One journal line, written straight from the SDK's `SpanData` into a reused byte
//! buffer: byte for byte what serializing the span's [`SpanRecord`] gives, without
//! building the record's strings, map and vectors, and without `io::Write` calls per
//! field.
//!
//! What keeps it cheap: strings are copied as they are unless the escape table finds a
//! byte JSON must escape; each attribute shape a thread has seen keeps its attribute
//! object written out, with the values that stay the same in place (see [`Shapes`]); the
//! date and time of day are formatted once per second ([`DateCache`]); milliseconds are
//! written from their integer microseconds, integers from their digits, other numbers
//! through `zmij`, which is what `serde_json` uses, so the digits are the same.
//!
//! [`SpanRecord`]: super::SpanRecord

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status as OtelStatus, TraceId,
};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

use crate::hex::DIGITS as HEX;
use crate::time::DateCache;

/// What a thread keeps between the lines it writes: the date of the last second, and the
/// attribute lists it has seen.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    dates: DateCache,
    shapes: Shapes,
}

/// The service name as the line writes it: a JSON string, or `null`.
pub(crate) fn service_json(name: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    match name {
        Some(name) => json_str(&mut out, name),
        None => out.extend_from_slice(b"null"),
    }
    out
}

/// A finished span as the line writer reads it: borrowed from the SDK's [`SpanData`], or
/// from a span the journal recorded itself (`journal::direct`).
pub(crate) struct Finished<'a> {
    pub(crate) span_context: &'a SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) name: &'a str,
    /// `name` is known to need no JSON escape ([`is_json_clean`]).
    pub(crate) clean_name: bool,
    pub(crate) span_kind: &'a SpanKind,
    pub(crate) start_time: SystemTime,
    pub(crate) end_time: SystemTime,
    pub(crate) status: &'a OtelStatus,
    pub(crate) attributes: &'a [KeyValue],
    pub(crate) events: &'a [Event],
    pub(crate) links: &'a [Link],
}

impl<'a> Finished<'a> {
    /// The view of the SDK's span data.
    pub(crate) fn of(span: &'a SpanData) -> Finished<'a> {
        Finished {
            span_context: &span.span_context,
            parent_span_id: span.parent_span_id,
            name: &span.name,
            clean_name: false,
            span_kind: &span.span_kind,
            start_time: span.start_time,
            end_time: span.end_time,
            status: &span.status,
            attributes: &span.attributes,
            events: &span.events.events,
            links: &span.links.links,
        }
    }
}

/// Append `span` as one journal line (without the newline). `service` comes from
/// [`service_json`].
pub(crate) fn write_line(
    out: &mut Vec<u8>,
    span: &Finished<'_>,
    service: &[u8],
    scratch: &mut Scratch,
) {
    let Scratch { dates, shapes } = scratch;
    let sc = span.span_context;
    // Both times as offsets from the epoch, each read once: their difference is the
    // duration (times before the epoch are rare enough to take the long way).
    let end = span.end_time.duration_since(UNIX_EPOCH).ok();
    let start = span.start_time.duration_since(UNIX_EPOCH).ok();
    let duration = match (start, end) {
        (Some(start), Some(end)) => end.checked_sub(start),
        _ => span.end_time.duration_since(span.start_time).ok(),
    }
    .unwrap_or_default();
    out.extend_from_slice(b"{\"timestamp\":\"");
    dates.push_since_epoch(out, end);
    out.extend_from_slice(b"\",\"event\":\"span_finished\",\"trace_id\":");
    json_trace_id(out, sc.trace_id());
    out.extend_from_slice(b",\"span_id\":");
    json_span_id(out, sc.span_id());
    out.extend_from_slice(b",\"parent_span_id\":");
    if span.parent_span_id == SpanId::INVALID {
        out.extend_from_slice(b"null");
    } else {
        json_span_id(out, span.parent_span_id);
    }
    out.extend_from_slice(b",\"service_name\":");
    out.extend_from_slice(service);
    out.extend_from_slice(b",\"operation_name\":");
    if span.clean_name {
        json_clean_str(out, span.name);
    } else {
        json_str(out, span.name);
    }
    out.extend_from_slice(match span.span_kind {
        SpanKind::Client => b",\"span_kind\":\"client\",\"start_time\":\"",
        SpanKind::Server => b",\"span_kind\":\"server\",\"start_time\":\"",
        SpanKind::Producer => b",\"span_kind\":\"producer\",\"start_time\":\"",
        SpanKind::Consumer => b",\"span_kind\":\"consumer\",\"start_time\":\"",
        SpanKind::Internal => b",\"span_kind\":\"internal\",\"start_time\":\"",
    });
    dates.push_since_epoch(out, start);
    out.extend_from_slice(b"\",\"latency_ms\":");
    json_millis(out, duration);
    out.extend_from_slice(b",\"duration_ns\":");
    json_u64(out, u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    match span.status {
        OtelStatus::Ok => out.extend_from_slice(b",\"status\":\"ok\",\"error\":null"),
        OtelStatus::Unset => out.extend_from_slice(b",\"status\":\"unset\",\"error\":null"),
        OtelStatus::Error { description } => {
            out.extend_from_slice(b",\"status\":\"error\",\"error\":");
            if !description.is_empty() {
                json_str(out, description);
            } else {
                match super::collector::exception_message_value(span.events) {
                    Some(message) => json_str(out, &message.as_str()),
                    None => out.extend_from_slice(b"\"error\""),
                }
            }
        }
    }
    if !span.attributes.is_empty() {
        out.extend_from_slice(b",\"attributes\":");
        shapes.write(out, span.attributes);
    }
    if !span.links.is_empty() {
        out.extend_from_slice(b",\"links\":[");
        for (i, link) in span.links.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"trace_id\":");
            json_trace_id(out, link.span_context.trace_id());
            out.extend_from_slice(b",\"span_id\":");
            json_span_id(out, link.span_context.span_id());
            if !link.attributes.is_empty() {
                out.extend_from_slice(b",\"attributes\":");
                json_attributes(out, &link.attributes);
            }
            out.push(b'}');
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// What a byte becomes inside a JSON string, as `serde_json` escapes it: 0 for itself,
/// `u` for `\u00XX`, else the letter after the backslash.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Whether `s` is written in a JSON string as it is (no byte to escape): a span name the
/// journal keeps is checked once, and then written without looking ([`Finished::clean_name`]).
pub(crate) fn is_json_clean(s: &str) -> bool {
    first_escape(s.as_bytes()).is_none()
}

/// A JSON string of text known to need no escape ([`is_json_clean`]).
fn json_clean_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string. Most strings need no escape and are copied in one go.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    match first_escape(bytes) {
        None => out.extend_from_slice(bytes),
        Some(at) => escape_from(out, bytes, at),
    }
    out.push(b'"');
}

/// `LO * b` has `b` in every byte of a word.
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The index of the first byte JSON must escape, eight bytes at a time: a word holds
/// one if a byte is below 0x20 or equals `"` or `\` (the classic "has zero byte" and
/// "has byte less than" tests, exact for telling whether there is one). A string of
/// eight bytes or more ends with a word that overlaps the one before it, so a clean
/// string is known clean without looking at a byte alone.
fn first_escape(bytes: &[u8]) -> Option<usize> {
    let position = |from: usize| {
        bytes[from..]
            .iter()
            .position(|&b| ESCAPE[usize::from(b)] != 0)
            .map(|i| from + i)
    };
    if bytes.len() < 8 {
        return position(0);
    }
    let mut at = 0;
    while at + 8 <= bytes.len() {
        if needs_escape(&bytes[at..at + 8]) {
            return position(at);
        }
        at += 8;
    }
    if at == bytes.len() || !needs_escape(&bytes[bytes.len() - 8..]) {
        return None;
    }
    // The bytes before `at` are clean: the one to escape is in the tail.
    position(at)
}

/// Whether eight bytes hold one JSON must escape.
#[inline]
fn needs_escape(word: &[u8]) -> bool {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(word);
    let x = u64::from_le_bytes(eight);
    let quote = x ^ (LO * u64::from(b'"'));
    let backslash = x ^ (LO * u64::from(b'\\'));
    let found = (quote.wrapping_sub(LO) & !quote)
        | (backslash.wrapping_sub(LO) & !backslash)
        | (x.wrapping_sub(LO * 0x20) & !x);
    found & HI != 0
}

/// The rest of a string from its first byte to escape, at `at`.
fn escape_from(out: &mut Vec<u8>, bytes: &[u8], at: usize) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(at) {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            b'u' => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0x0f)],
            ]),
            letter => out.extend_from_slice(&[b'\\', letter]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A trace id as a JSON string of lowercase hex, as its `Display` writes it.
fn json_trace_id(out: &mut Vec<u8>, id: TraceId) {
    let mut buf = [b'"'; 34];
    crate::hex::put_u128(&mut buf[1..33], u128::from_be_bytes(id.to_bytes()));
    out.extend_from_slice(&buf);
}

/// A span id as a JSON string of lowercase hex, as its `Display` writes it.
fn json_span_id(out: &mut Vec<u8>, id: SpanId) {
    let mut buf = [b'"'; 18];
    crate::hex::put_u64(&mut buf[1..17], u64::from_be_bytes(id.to_bytes()));
    out.extend_from_slice(&buf);
}

fn json_u64(out: &mut Vec<u8>, n: u64) {
    push_decimal(out, n, [0; 4], 0);
}

fn json_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_decimal(out, n.unsigned_abs(), [0; 4], 0);
}

/// A float as `serde_json` writes it; not finite: `null` (as the record's
/// `Number::from_f64` gives).
fn json_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Microseconds below this (2^42 µs, about 51 days), as milliseconds, are written from
/// their digits: there two decimals with at most three fraction digits are many floats
/// apart, so the shortest text that reads back as `micros / 1000` (what `zmij` and
/// `serde_json` write) is that decimal itself. Longer durations go through `zmij`.
const MILLIS_FROM_DIGITS: u64 = 1 << 42;

/// A duration as `latency_ms` is written: [`millis_f64`](crate::time::millis_f64) as
/// `serde_json` writes that float, made from the integer microseconds without the float.
fn json_millis(out: &mut Vec<u8>, d: std::time::Duration) {
    match u64::try_from(d.as_micros()) {
        Ok(micros) if micros < MILLIS_FROM_DIGITS => millis_digits(out, micros),
        _ => json_f64(out, crate::time::millis_f64(d)),
    }
}

/// `micros / 1000` as its shortest decimal: the whole milliseconds, a point, then the
/// thousandths without trailing zeros (`0` when there are none), as `zmij` writes
/// floats below 10^16.
fn millis_digits(out: &mut Vec<u8>, micros: u64) {
    let (whole, frac) = (micros / 1000, (micros % 1000) as usize);
    let digits = [
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if frac % 100 == 0 {
        2
    } else if frac % 10 == 0 {
        3
    } else {
        4
    };
    push_decimal(out, whole, digits, len);
}

/// Two decimal digits of every number below 100, as `itoa` keeps them.
static PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut n = 0;
    while n < 100 {
        table[2 * n] = b'0' + (n / 10) as u8;
        table[2 * n + 1] = b'0' + (n % 10) as u8;
        n += 1;
    }
    table
};

/// The most digits a `u64` has.
const U64_DIGITS: usize = 20;

/// `n` in decimal (as `itoa` writes it), then the first `tail_len` bytes of `tail`: laid
/// out on the stack and appended as one copy of a fixed size, cut to length afterwards,
/// instead of two copies whose sizes depend on the digits (each a `memcpy` call).
fn push_decimal(out: &mut Vec<u8>, mut n: u64, tail: [u8; 4], tail_len: usize) {
    const WINDOW: usize = U64_DIGITS + 4;
    // The digits end at `U64_DIGITS`, the tail follows; the window starts at the first
    // digit, so the buffer holds a whole window past any start.
    let mut buf = [0u8; U64_DIGITS + WINDOW];
    let mut at = U64_DIGITS;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[n as usize * 2..n as usize * 2 + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    buf[U64_DIGITS..U64_DIGITS + 4].copy_from_slice(&tail);
    let mut window = [0u8; WINDOW];
    window.copy_from_slice(&buf[at..at + WINDOW]);
    let end = out.len() + (U64_DIGITS - at) + tail_len.min(4);
    out.extend_from_slice(&window);
    out.truncate(end);
}

/// A float attribute: whole microseconds as milliseconds (queue times) from their
/// digits, anything else through `zmij`. The digits are the same either way.
fn json_f64_value(out: &mut Vec<u8>, f: f64) {
    // Exact in both directions below 2^42 thousandths: the float is micros / 1000
    // rounded once, and that is what the digits say.
    let scaled = f * 1000.0;
    if (0.0..MILLIS_FROM_DIGITS as f64).contains(&scaled) {
        let micros = (scaled + 0.5) as u64;
        if micros as f64 / 1000.0 == f && (f != 0.0 || f.is_sign_positive()) {
            return millis_digits(out, micros);
        }
    }
    json_f64(out, f);
}

/// Attribute lists longer than this are put in order on the heap.
const SORT_ON_STACK: usize = 32;

/// An attribute list as the record's map: ordered by key, the last value of a key
/// repeated in the list winning.
fn json_attributes(out: &mut Vec<u8>, attributes: &[KeyValue]) {
    let in_order = attributes
        .windows(2)
        .all(|pair| pair[0].key.as_str() < pair[1].key.as_str());
    out.push(b'{');
    if in_order {
        for (i, kv) in attributes.iter().enumerate() {
            json_attribute(out, i > 0, kv);
        }
    } else if attributes.len() <= SORT_ON_STACK {
        let mut order = [("", 0_usize); SORT_ON_STACK];
        write_sorted(out, attributes, &mut order[..attributes.len()]);
    } else {
        let mut order = vec![("", 0_usize); attributes.len()];
        write_sorted(out, attributes, &mut order);
    }
    out.push(b'}');
}

/// Write `attributes` in key order, each key once (its last value), using `order` (one
/// slot per attribute) to sort.
fn write_sorted<'a>(out: &mut Vec<u8>, attributes: &'a [KeyValue], order: &mut [(&'a str, usize)]) {
    for (slot, (i, kv)) in order.iter_mut().zip(attributes.iter().enumerate()) {
        *slot = (kv.key.as_str(), i);
    }
    // Stable: among equal keys the list order stays, so the last one is the later value.
    order.sort_by(|a, b| a.0.cmp(b.0));
    let mut first = true;
    for (i, &(key, at)) in order.iter().enumerate() {
        if order.get(i + 1).is_some_and(|next| next.0 == key) {
            continue;
        }
        json_attribute(out, !first, &attributes[at]);
        first = false;
    }
}

/// The attribute lists a thread saw last, each with how it is written. A service's spans
/// come in a few shapes (its send spans, its process spans), and most of their values
/// are the same from span to span (the system, the destination, the operation, the
/// server): each shape keeps its attribute object written out with those values in
/// place, so a span that finds its list here costs comparing its keys and those values,
/// then copying the kept text around the few values that change (sizes, ids, times).
#[derive(Debug, Default)]
struct Shapes {
    shapes: Vec<Shape>,
    /// The slot the next new shape replaces.
    next: usize,
}

/// How many attribute lists a thread remembers.
const SHAPES: usize = 8;
/// Longer lists are sorted each time.
const SHAPE_MAX_KEYS: usize = 64;

#[derive(Debug)]
struct Shape {
    /// The keys, in list order, each with where its text is (clones: a static key keeps
    /// its address, so most comparisons are of two addresses).
    keys: Vec<(Key, At)>,
    /// In key order, each key once: the attribute whose value is written there.
    writes: Vec<usize>,
    /// Per attribute, in list order, its value as last written while it stays the same
    /// (`Kept::Not` for one whose key comes again later: it is not written), and how many
    /// times a kept value there changed. In list order so that one pass over a span's
    /// attributes compares both their keys and their values.
    kept: Vec<(Kept, u8)>,
    /// The attribute object: `{`, each write's `"key":` (after a comma but for the first)
    /// and its kept value, `}`. A write whose value is not kept leaves a gap after its key.
    template: Vec<u8>,
    /// The writes not kept, each with where in `template` its value goes.
    gaps: Vec<(usize, usize)>,
}

/// A value a shape keeps in its template, compared with each new span's value at that
/// place: a string by its text (at once when it is the very string kept, a shared
/// `Arc<str>` or a `&'static str`), the others by value. A value that keeps changing
/// is not kept.
#[derive(Debug)]
enum Kept {
    Str(opentelemetry::StringValue, At),
    I64(i64),
    Bool(bool),
    /// The float's bits.
    F64(u64),
    /// Not kept: written each time.
    Not,
}

/// Where a text a shape keeps is (its address and length), to compare a span's text with
/// it by address first: computed from the shape's own clone, which shares a static or
/// `Arc<str>` text's bytes and owns any other, so while the shape keeps it no other text
/// can be at that address (an empty text may share a dangling one, and is equal anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At(usize, usize);

impl At {
    #[inline]
    fn of(text: &str) -> At {
        At(text.as_ptr().addr(), text.len())
    }
}

/// A write whose kept value changes this many times (over the shape's life, not in a
/// row) is written each time from then on: only the speed depends on it.
const KEPT_GIVE_UP: u8 = 4;

impl Kept {
    /// What to keep of `value`.
    fn of(value: &Value) -> Kept {
        match value {
            Value::String(s) => {
                let kept = s.clone();
                let at = At::of(kept.as_str());
                Kept::Str(kept, at)
            }
            Value::I64(n) => Kept::I64(*n),
            Value::Bool(b) => Kept::Bool(*b),
            Value::F64(f) => Kept::F64(f.to_bits()),
            _ => Kept::Not,
        }
    }

    /// Whether `value` is the one kept (always true for a value not kept).
    #[inline]
    fn holds(&self, value: &Value) -> bool {
        match (self, value) {
            (Kept::Not, _) => true,
            (Kept::Str(kept, at), Value::String(s)) => {
                let s = s.as_str();
                At::of(s) == *at || kept.as_str() == s
            }
            (Kept::I64(kept), Value::I64(n)) => kept == n,
            (Kept::Bool(kept), Value::Bool(b)) => kept == b,
            (Kept::F64(kept), Value::F64(f)) => *kept == f.to_bits(),
            _ => false,
        }
    }
}

impl Shape {
    fn of(attributes: &[KeyValue]) -> Shape {
        let mut order: Vec<(&str, usize)> = attributes
            .iter()
            .enumerate()
            .map(|(i, kv)| (kv.key.as_str(), i))
            .collect();
        order.sort_by(|a, b| a.0.cmp(b.0));
        let mut writes = Vec::with_capacity(order.len());
        for (i, &(key, at)) in order.iter().enumerate() {
            // Of a repeated key, the last value wins (the sort is stable).
            if order.get(i + 1).is_some_and(|next| next.0 == key) {
                continue;
            }
            writes.push(at);
        }
        let mut kept: Vec<(Kept, u8)> = attributes.iter().map(|_| (Kept::Not, 0)).collect();
        for &at in &writes {
            kept[at].0 = Kept::of(&attributes[at].value);
        }
        let mut shape = Shape {
            keys: attributes
                .iter()
                .map(|kv| {
                    let key = kv.key.clone();
                    let at = At::of(key.as_str());
                    (key, at)
                })
                .collect(),
            kept,
            writes,
            template: Vec::new(),
            gaps: Vec::new(),
        };
        shape.render(attributes);
        shape
    }

    /// Whether `attributes` has this shape's keys (`None` if not) and, if so, whether
    /// every value kept is the one it has: one pass over both.
    #[inline]
    fn check(&self, attributes: &[KeyValue]) -> Option<bool> {
        if self.keys.len() != attributes.len() {
            return None;
        }
        let mut same = true;
        for (((key, at), (kept, _)), kv) in self.keys.iter().zip(&self.kept).zip(attributes) {
            let other = kv.key.as_str();
            // Keys are mostly the same `&'static str` each time: the same bytes.
            if At::of(other) != *at && key.as_str() != other {
                return None;
            }
            same &= kept.holds(&kv.value);
        }
        Some(same)
    }

    /// Write the template from the kept values (`attributes` has this shape).
    fn render(&mut self, attributes: &[KeyValue]) {
        let Shape {
            writes,
            kept,
            template,
            gaps,
            ..
        } = self;
        template.clear();
        gaps.clear();
        template.push(b'{');
        for (i, &at) in writes.iter().enumerate() {
            if i > 0 {
                template.push(b',');
            }
            json_str(template, attributes[at].key.as_str());
            template.push(b':');
            match kept[at].0 {
                Kept::Not => gaps.push((at, template.len())),
                _ => json_value(template, &attributes[at].value),
            }
        }
        template.push(b'}');
    }

    /// Keep `attributes`' values where they differ from the kept ones (until a place has
    /// changed too often), and write the template again (some did: see [`check`](Self::check)).
    fn refresh(&mut self, attributes: &[KeyValue]) {
        let mut changed = false;
        for ((kept, changes), kv) in self.kept.iter_mut().zip(attributes) {
            let value = &kv.value;
            if !kept.holds(value) {
                *changes += 1;
                *kept = if *changes < KEPT_GIVE_UP {
                    Kept::of(value)
                } else {
                    Kept::Not
                };
                changed = true;
            }
        }
        if changed {
            self.render(attributes);
        }
    }

    /// The attribute object: the template, with the values not kept written into its gaps.
    fn write(&self, out: &mut Vec<u8>, attributes: &[KeyValue]) {
        let mut from = 0;
        for &(at, to) in &self.gaps {
            out.extend_from_slice(&self.template[from..to]);
            json_value(out, &attributes[at].value);
            from = to;
        }
        out.extend_from_slice(&self.template[from..]);
    }
}

impl Shapes {
    /// Write `attributes` as the record's map: ordered by key, the last value of a key
    /// repeated in the list winning.
    fn write(&mut self, out: &mut Vec<u8>, attributes: &[KeyValue]) {
        if attributes.len() > SHAPE_MAX_KEYS {
            return json_attributes(out, attributes);
        }
        let found = self
            .shapes
            .iter()
            .enumerate()
            .find_map(|(at, s)| s.check(attributes).map(|same| (at, same)));
        let at = match found {
            Some((at, true)) => at,
            Some((at, false)) => {
                self.shapes[at].refresh(attributes);
                at
            }
            None if self.shapes.len() < SHAPES => {
                self.shapes.push(Shape::of(attributes));
                self.shapes.len() - 1
            }
            None => {
                let at = self.next;
                self.next = (self.next + 1) % SHAPES;
                self.shapes[at] = Shape::of(attributes);
                at
            }
        };
        self.shapes[at].write(out, attributes);
    }
}

fn json_attribute(out: &mut Vec<u8>, comma: bool, kv: &KeyValue) {
    if comma {
        out.push(b',');
    }
    json_str(out, kv.key.as_str());
    out.push(b':');
    json_value(out, &kv.value);
}

fn json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::I64(n) => json_i64(out, *n),
        Value::F64(f) => json_f64_value(out, *f),
        Value::String(s) => json_str(out, s.as_str()),
        Value::Array(array) => json_array(out, array),
        other => json_str(out, &other.as_str()),
    }
}

/// An array attribute as a JSON array of its values (captured headers are string arrays).
fn json_array(out: &mut Vec<u8>, array: &opentelemetry::Array) {
    use opentelemetry::Array;
    fn each<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write(out, item);
        }
        out.push(b']');
    }
    match array {
        Array::Bool(items) => each(out, items, |out, b| {
            out.extend_from_slice(if *b { b"true" } else { b"false" })
        }),
        Array::I64(items) => each(out, items, |out, n| json_i64(out, *n)),
        Array::F64(items) => each(out, items, |out, f| json_f64(out, *f)),
        Array::String(items) => each(out, items, |out, s| json_str(out, s.as_str())),
        other => json_str(out, &other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{json_f64, json_f64_value, json_i64, json_millis, json_str, json_u64};

    /// Integers as serde_json writes them: every digit count, both ends of both types,
    /// and appended after what the line already holds (the fixed-size copy is cut back).
    #[test]
    fn integers_are_written_as_serde_json_writes_them() {
        let mut unsigned = vec![0, 1, 9, 10, 99, 100, 101, 999, 1000, u64::MAX, u64::MAX - 1];
        let mut p = 1_u64;
        while let Some(next) = p.checked_mul(10) {
            unsigned.extend([p - 1, p, p + 1, next - 1]);
            p = next;
        }
        for n in unsigned {
            let mut ours = b"{\"n\":".to_vec();
            json_u64(&mut ours, n);
            ours.push(b'}');
            assert_eq!(
                String::from_utf8(ours).expect("utf-8"),
                serde_json::json!({ "n": n }).to_string()
            );
            for m in [n as i64, (n as i64).wrapping_neg(), i64::MIN, i64::MAX] {
                let mut ours = Vec::new();
                json_i64(&mut ours, m);
                assert_eq!(ours, serde_json::to_vec(&m).expect("json"), "{m}");
            }
        }
    }

    /// Floats as the record's serialization (serde_json) writes them: milliseconds with
    /// microsecond precision (latencies, queue times), any fraction, the edges; through
    /// `zmij`, through the float attribute's writer, and (for a whole number of
    /// microseconds) from the integer duration as `latency_ms` is written.
    #[test]
    fn floats_are_written_as_serde_json_writes_them() {
        let check = |f: f64| {
            let theirs = serde_json::to_string(&f).expect("json");
            for write in [json_f64, json_f64_value] {
                let mut ours = Vec::new();
                write(&mut ours, f);
                assert_eq!(String::from_utf8(ours).expect("utf-8"), theirs, "{f:e}");
            }
        };
        let millis = |micros: u64, nanos: u32| {
            let d = Duration::from_micros(micros) + Duration::from_nanos(u64::from(nanos));
            let mut ours = Vec::new();
            json_millis(&mut ours, d);
            let theirs = serde_json::to_string(&crate::time::millis_f64(d)).expect("json");
            assert_eq!(String::from_utf8(ours).expect("utf-8"), theirs, "{d:?}");
        };
        for micros in 0..300_000_u64 {
            check(micros as f64 / 1000.0);
            millis(micros, (micros % 1000) as u32);
        }
        // A walk over milliseconds up to 2^50 thousandths, and over fractions below 1.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let micros = x % (1 << 50);
            check(micros as f64 / 1000.0);
            millis(micros, 999);
            millis(micros % (1 << 43), 0);
            check((x >> 11) as f64 / (1u64 << 53) as f64);
            check((micros as f64 / 1000.0).next_up());
            check((micros as f64 / 1000.0).next_down());
            check(-(micros as f64) / 1000.0);
        }
        for micros in [(1 << 42) - 1, 1 << 42, (1 << 42) + 1, u64::MAX / 2] {
            check(micros as f64 / 1000.0);
            millis(micros, 0);
        }
        for f in [
            -0.0,
            -1.5,
            0.1,
            0.3,
            1e-7,
            1e15,
            1e16,
            1e21,
            1_099_511_627.775,
            1_099_511_627.776,
            1_099_511_627_776.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            check(f);
        }
    }

    /// Every byte JSON escapes, at every position of the eight-byte words and the tail,
    /// next to multi-byte characters: what serde_json writes.
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let specials = [
            '"', '\\', '\n', '\u{0}', '\u{1f}', '\u{8}', '\u{7f}', 'é', '☃',
        ];
        for len in 0..20 {
            for at in 0..len {
                for special in specials {
                    let s: String = (0..len)
                        .map(|i| if i == at { special } else { 'a' })
                        .collect();
                    let mut ours = Vec::new();
                    json_str(&mut ours, &s);
                    let theirs = serde_json::to_string(&s).expect("json");
                    assert_eq!(String::from_utf8(ours).expect("utf-8"), theirs, "{s:?}");
                }
            }
        }
    }
}
