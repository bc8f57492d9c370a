//! A fast reader for span journal lines: one pass over the bytes, picking out the fields
//! verification reads as slices of the line, without serde's visitor machinery.
//!
//! It reads what the serde structs in [`super::parse`] read (keys in any order, unknown
//! keys skipped) and gives up, returning `None`, on anything it is not sure it reads the
//! same way: a key with an escape, a value of an unexpected type, a duplicate field, an
//! event other than `span_finished`, an array or object where an attribute verification
//! reads should be, deep nesting, a `resourceSpans` key (OTLP JSON), anything that is not
//! JSON. The caller then reads the line with serde, so the result is the same either way;
//! only the time differs. Strings with escapes, and numbers with an exponent or more than
//! 19 digits, are handed to `serde_json` itself; other numbers are computed as serde_json
//! computes them.
//!
//! [`Memo`] is what it remembers between lines (kept in [`Spans`], one per reading thread):
//! the last line's key order and the attribute key lists seen, so that a journal's lines,
//! which repeat a few shapes, have their keys recognised by one comparison each.
//!
//! [`Spans`]: super::Spans

mod cursor;

use cursor::Cursor;

use super::fields::Known;
use super::parse::{raw, take, wanted, RawLine};
use super::store::Detail;

/// The fields the reader knows, in the order of [`FIELDS`].
const TIMESTAMP: u8 = 0;
const TRACE_ID: u8 = 1;
const SPAN_ID: u8 = 2;
const PARENT_SPAN_ID: u8 = 3;
const SERVICE_NAME: u8 = 4;
const OPERATION_NAME: u8 = 5;
const SPAN_KIND: u8 = 6;
const START_TIME: u8 = 7;
const LATENCY_MS: u8 = 8;
const DURATION_NS: u8 = 9;
const STATUS: u8 = 10;
const ERROR: u8 = 11;
const EVENT: u8 = 12;
const ATTRIBUTES: u8 = 13;
const LINKS: u8 = 14;
const EVENTS: u8 = 15;
/// A key of an OTLP JSON document.
const RESOURCE_SPANS: u8 = 16;
/// Any other key.
const OTHER: u8 = 17;

/// Each known field's key as it appears in a line, quoted and followed by its colon.
const FIELDS: [&[u8]; 17] = [
    b"\"timestamp\":",
    b"\"trace_id\":",
    b"\"span_id\":",
    b"\"parent_span_id\":",
    b"\"service_name\":",
    b"\"operation_name\":",
    b"\"span_kind\":",
    b"\"start_time\":",
    b"\"latency_ms\":",
    b"\"duration_ns\":",
    b"\"status\":",
    b"\"error\":",
    b"\"event\":",
    b"\"attributes\":",
    b"\"links\":",
    b"\"events\":",
    b"\"resourceSpans\":",
];

/// Lines are remembered for so many keys.
const MEMO_KEYS: usize = 32;

/// What the reader remembers of the lines it read (per reading thread): the fields of
/// the last line in key order, so that the next line's keys, in the same order, are
/// recognised by one comparison each; and the attribute key lists last seen.
#[derive(Clone, Default)]
pub(crate) struct Memo {
    order: Vec<u8>,
    shapes: Shapes,
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A cache: what it holds changes no result.
        f.write_str("Memo")
    }
}

/// `text` (one trimmed line) as the serde structs would read it, or `None` when it is
/// left to them.
pub(crate) fn line<'a>(text: &'a str, detail: Detail, memo: &mut Memo) -> Option<RawLine<'a>> {
    let mut c = Cursor::new(text);
    let mut line = RawLine::default();
    let mut seen = 0u32;
    c.eat(b'{')?;
    if c.peek()? == b'}' {
        c.at += 1;
    } else {
        let mut position = 0;
        loop {
            let field = field(&mut c, memo.order.get(position).copied())?;
            if let Some(slot) = memo.order.get_mut(position) {
                *slot = field;
            } else if position < MEMO_KEYS {
                memo.order.push(field);
            }
            position += 1;
            c.ws();
            let bit = 1u32 << field;
            match field {
                TIMESTAMP => line.timestamp = c.opt_str()?,
                TRACE_ID => line.trace_id = c.opt_str()?,
                SPAN_ID => line.span_id = c.opt_str()?,
                PARENT_SPAN_ID => line.parent_span_id = c.opt_str()?,
                SERVICE_NAME => line.service_name = c.opt_str()?,
                OPERATION_NAME => line.operation_name = c.opt_str()?,
                SPAN_KIND => line.span_kind = c.kind()?,
                START_TIME => line.start_time = c.opt_str()?,
                LATENCY_MS => line.latency_ms = c.latency()?,
                DURATION_NS => line.duration_ns = c.duration()?,
                STATUS => line.status = c.status()?,
                ERROR => line.error = c.opt_str()?,
                EVENT => {
                    line.event = c.opt_str()?;
                    if line.event.as_ref().is_some_and(|e| e != "span_finished") {
                        return None;
                    }
                }
                ATTRIBUTES => {
                    line.attributes = attributes(&mut c, detail, &mut memo.shapes)?.map(Ok);
                }
                LINKS => line.links = c.opt_raw()?,
                EVENTS => line.events = c.opt_raw()?,
                // An OTLP JSON document: read as one.
                RESOURCE_SPANS => return None,
                _ => {
                    c.value()?;
                }
            }
            let bit = if field == OTHER { 0 } else { bit };
            // serde rejects a field given twice.
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            if c.member_end()? {
                break;
            }
        }
    }
    c.ws();
    if !c.done() {
        return None;
    }
    Some(line)
}

/// The key next (after `{` or `,`) and its colon: the field it names. The field at this
/// place in the last line is tried first, with one comparison.
fn field(c: &mut Cursor<'_>, expected: Option<u8>) -> Option<u8> {
    if let Some(pattern) = expected.and_then(|f| FIELDS.get(usize::from(f))) {
        if c.at_pattern(pattern) {
            c.at += pattern.len();
            return expected;
        }
    }
    let key = c.key()?;
    c.eat(b':')?;
    Some(match key {
        "timestamp" => TIMESTAMP,
        "trace_id" => TRACE_ID,
        "span_id" => SPAN_ID,
        "parent_span_id" => PARENT_SPAN_ID,
        "service_name" => SERVICE_NAME,
        "operation_name" => OPERATION_NAME,
        "span_kind" => SPAN_KIND,
        "start_time" => START_TIME,
        "latency_ms" => LATENCY_MS,
        "duration_ns" => DURATION_NS,
        "status" => STATUS,
        "error" => ERROR,
        "event" => EVENT,
        "attributes" => ATTRIBUTES,
        "links" => LINKS,
        "events" => EVENTS,
        "resourceSpans" => RESOURCE_SPANS,
        _ => OTHER,
    })
}

/// Attribute key lists remembered.
const SHAPES: usize = 8;

/// The attribute key lists last seen, each found by its first key: a service writes a
/// few (its send spans', its process spans'), so after the first key the others are
/// recognised by one comparison each, with whether verification reads them.
#[derive(Clone, Default)]
struct Shapes {
    shapes: Vec<Shape>,
    /// The slot the next new list replaces.
    next: usize,
    /// Where the keys of the object being read are (without quotes).
    keys: Vec<(usize, usize)>,
}

#[derive(Clone)]
struct Shape {
    /// Each key quoted and followed by its colon, in order.
    keys: Vec<Box<[u8]>>,
    /// Which attribute verification reads each key is, if any ([`wanted`]).
    wanted: Vec<Option<u8>>,
}

impl Shapes {
    fn find(&self, first: &str) -> Option<usize> {
        self.shapes.iter().position(|s| {
            s.keys[0].len() == first.len() + 3 && s.keys[0][1..=first.len()] == *first.as_bytes()
        })
    }

    /// Remember the list just read (the keys of `text` at `self.keys`), in place of
    /// `replace` (the list with the same first key) if there is one.
    fn remember(&mut self, text: &str, replace: Option<usize>) {
        let mut keys = Vec::with_capacity(self.keys.len());
        let mut wants = Vec::with_capacity(self.keys.len());
        for &(from, to) in &self.keys {
            let Some(key) = text.get(from..to) else {
                return;
            };
            let mut pattern = Vec::with_capacity(key.len() + 3);
            pattern.push(b'"');
            pattern.extend_from_slice(key.as_bytes());
            pattern.extend_from_slice(b"\":");
            keys.push(pattern.into_boxed_slice());
            wants.push(wanted(key));
        }
        let shape = Shape {
            keys,
            wanted: wants,
        };
        match replace {
            Some(at) => self.shapes[at] = shape,
            None if self.shapes.len() < SHAPES => self.shapes.push(shape),
            None => {
                self.shapes[self.next] = shape;
                self.next = (self.next + 1) % SHAPES;
            }
        }
    }
}

/// `attributes`: `null`, or an object: the attributes verification reads, and the object
/// as read when every detail is kept.
#[allow(clippy::type_complexity)]
fn attributes<'a>(
    c: &mut Cursor<'a>,
    detail: Detail,
    shapes: &mut Shapes,
) -> Option<Option<(Known<'a>, Option<&'a str>)>> {
    let start = c.at;
    match c.byte()? {
        b'n' => return c.null().map(|()| None),
        b'{' => c.at += 1,
        _ => return None,
    }
    let mut known = Known::default();
    shapes.keys.clear();
    // The remembered list this object follows so far.
    let mut shape = None;
    let mut follows = true;
    if c.peek()? == b'}' {
        c.at += 1;
    } else {
        loop {
            let n = shapes.keys.len();
            let predicted = shape.and_then(|s: usize| {
                let s = &shapes.shapes[s];
                let pattern = s.keys.get(n)?;
                c.at_pattern(pattern).then(|| (pattern.len(), s.wanted[n]))
            });
            let (key, wants) = match predicted {
                Some((len, wants)) => {
                    let key = (c.at + 1, c.at + len - 2);
                    c.at += len;
                    (key, wants)
                }
                None => {
                    c.ws();
                    let from = c.at + 1;
                    let key = c.key()?;
                    let to = c.at - 1;
                    c.eat(b':')?;
                    if n == 0 {
                        shape = shapes.find(key);
                    } else {
                        follows = false;
                        shape = None;
                    }
                    ((from, to), wanted(key))
                }
            };
            shapes.keys.push(key);
            c.ws();
            match wants {
                Some(which) => {
                    let value = c.scalar()?;
                    take(&mut known, which, value);
                }
                None => {
                    c.value()?;
                }
            }
            if c.member_end()? {
                break;
            }
        }
    }
    let n = shapes.keys.len();
    let first = match shapes.keys.first() {
        Some(&(from, to)) => c.slice(from, to)?,
        None => "",
    };
    let remembered = shapes.find(first);
    let same = follows && remembered.is_some_and(|s| shapes.shapes[s].keys.len() == n);
    if n > 0 && !same {
        shapes.remember(c.text(), remembered);
    }
    let text = match detail {
        Detail::Full => raw(c.slice(start, c.at)?),
        Detail::Lean => None,
    };
    Some(Some((known, text)))
}

#[cfg(test)]
mod tests;
