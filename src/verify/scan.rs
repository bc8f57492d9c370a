//! A fast reader for span journal lines: one pass over the bytes, picking out the fields
//! verification reads as slices of the line, without serde's visitor machinery.
//!
//! It reads what the serde structs in [`super::parse`] read (keys in any order, unknown
//! keys skipped) and gives up, returning `None`, on anything it is not sure it reads the
//! same way: a key with an escape, a value of an unexpected type, a duplicate field, an
//! event other than `span_finished`, numbers it would have to round, deep nesting, a
//! `resourceSpans` key (OTLP JSON), anything that is not JSON. The caller then reads the
//! line with serde, so the result is the same either way; only the time differs. Strings
//! with escapes and numbers that are not plain digits are handed to `serde_json` itself.

use std::borrow::Cow;

use super::fields::Known;
use super::parse::{raw, take, wanted, RawLine, Scalar, Str};
use super::store::Detail;
use crate::journal::{Kind, Status};

/// Nesting deeper than this inside a skipped value is left to serde.
const MAX_DEPTH: usize = 64;

/// `text` (one trimmed line) as the serde structs would read it, or `None` when it is
/// left to them.
pub(crate) fn line(text: &str, detail: Detail) -> Option<RawLine<'_>> {
    let mut c = Cursor {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut line = RawLine::default();
    let mut seen = 0u32;
    let mut latency: Option<&str> = None;
    c.eat(b'{')?;
    if c.peek()? == b'}' {
        c.at += 1;
    } else {
        loop {
            let key = c.key()?;
            c.eat(b':')?;
            c.ws();
            let bit = match key {
                "timestamp" => {
                    line.timestamp = c.opt_str()?;
                    1
                }
                "trace_id" => {
                    line.trace_id = c.opt_str()?;
                    1 << 1
                }
                "span_id" => {
                    line.span_id = c.opt_str()?;
                    1 << 2
                }
                "parent_span_id" => {
                    line.parent_span_id = c.opt_str()?;
                    1 << 3
                }
                "service_name" => {
                    line.service_name = c.opt_str()?;
                    1 << 4
                }
                "operation_name" => {
                    line.operation_name = c.opt_str()?;
                    1 << 5
                }
                "span_kind" => {
                    line.span_kind = c.kind()?;
                    1 << 6
                }
                "start_time" => {
                    line.start_time = c.opt_str()?;
                    1 << 7
                }
                "latency_ms" => {
                    latency = c.latency()?;
                    1 << 8
                }
                "duration_ns" => {
                    line.duration_ns = c.duration()?;
                    1 << 9
                }
                "status" => {
                    line.status = c.status()?;
                    1 << 10
                }
                "error" => {
                    line.error = c.opt_str()?;
                    1 << 11
                }
                "event" => {
                    line.event = c.opt_str()?;
                    if line.event.as_ref().is_some_and(|e| e != "span_finished") {
                        return None;
                    }
                    1 << 12
                }
                "attributes" => {
                    line.attributes = c.attributes(detail)?.map(Ok);
                    1 << 13
                }
                "links" => {
                    line.links = c.opt_raw()?;
                    1 << 14
                }
                "events" => {
                    line.events = c.opt_raw()?;
                    1 << 15
                }
                // An OTLP JSON document: read as one.
                "resourceSpans" => return None,
                _ => {
                    c.value(0)?;
                    0
                }
            };
            // serde rejects a field given twice.
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match c.peek()? {
                b',' => c.at += 1,
                b'}' => {
                    c.at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    c.ws();
    if c.at != c.bytes.len() {
        return None;
    }
    // The duration in milliseconds is read only when there is no exact one.
    if line.duration_ns.is_none() {
        if let Some(ms) = latency {
            line.latency_ms = Some(serde_json::from_str::<f64>(ms).ok()?);
        }
    }
    Some(line)
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// `LO * b` has `b` in every byte of a word.
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn slice(&self, from: usize, to: usize) -> Option<&'a str> {
        self.text.get(from..to)
    }

    /// A key without escapes (a key with one is left to serde).
    fn key(&mut self) -> Option<&'a str> {
        self.ws();
        self.plain_str()
    }

    /// Past the string whose opening quote was taken, to after its closing quote:
    /// whether it had an escape. Control characters and bad escapes are refused as serde
    /// refuses them; `\u` escapes are checked as serde checks strings it skips (four hex
    /// digits, a lone surrogate allowed): the strings this reader keeps and that have an
    /// escape are read by serde_json, which checks the rest.
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            self.skip_plain();
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match *self.bytes.get(self.at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                        b'u' => {
                            let hex = self.bytes.get(self.at + 2..self.at + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 6;
                        }
                        _ => return None,
                    }
                }
                // A control character.
                _ => return None,
            }
        }
    }

    /// Past bytes that need nothing (not `"`, `\` or a control character), eight at a
    /// time.
    fn skip_plain(&mut self) {
        while let Some(word) = self.bytes.get(self.at..self.at + 8) {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(word);
            let x = u64::from_le_bytes(eight);
            let quote = x ^ (LO * u64::from(b'"'));
            let backslash = x ^ (LO * u64::from(b'\\'));
            let found = (quote.wrapping_sub(LO) & !quote)
                | (backslash.wrapping_sub(LO) & !backslash)
                | (x.wrapping_sub(LO * 0x20) & !x);
            if found & HI != 0 {
                break;
            }
            self.at += 8;
        }
        while let Some(&b) = self.bytes.get(self.at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                return;
            }
            self.at += 1;
        }
    }

    /// A string value: borrowed when it has no escapes, else unescaped by serde_json.
    fn str_value(&mut self) -> Option<Cow<'a, str>> {
        let open = self.at;
        self.at += 1;
        if self.string()? {
            let quoted = self.slice(open, self.at)?;
            Some(serde_json::from_str::<Str<'_>>(quoted).ok()?.0)
        } else {
            self.slice(open + 1, self.at - 1).map(Cow::Borrowed)
        }
    }

    fn null(&mut self) -> Option<()> {
        self.literal(b"null")
    }

    /// A string or `null`.
    fn opt_str(&mut self) -> Option<Option<Cow<'a, str>>> {
        match *self.bytes.get(self.at)? {
            b'"' => self.str_value().map(Some),
            b'n' => self.null().map(|()| None),
            _ => None,
        }
    }

    /// A string without escapes (one with escapes is left to serde).
    fn plain_str(&mut self) -> Option<&'a str> {
        if *self.bytes.get(self.at)? != b'"' {
            return None;
        }
        self.at += 1;
        let start = self.at;
        if self.string()? {
            return None;
        }
        self.slice(start, self.at - 1)
    }

    fn kind(&mut self) -> Option<Option<Kind>> {
        if self.bytes.get(self.at) == Some(&b'n') {
            return self.null().map(|()| None);
        }
        Some(Some(match self.plain_str()? {
            "internal" => Kind::Internal,
            "server" => Kind::Server,
            "client" => Kind::Client,
            "producer" => Kind::Producer,
            "consumer" => Kind::Consumer,
            _ => return None,
        }))
    }

    fn status(&mut self) -> Option<Status> {
        Some(match self.plain_str()? {
            "ok" => Status::Ok,
            "error" => Status::Error,
            // Any other name is `unset` (`#[serde(other)]`).
            _ => Status::Unset,
        })
    }

    /// A number, checked as JSON spells one: its text.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        let digits = |c: &mut Cursor<'_>| {
            let from = c.at;
            while c.bytes.get(c.at).is_some_and(u8::is_ascii_digit) {
                c.at += 1;
            }
            c.at > from
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match *self.bytes.get(self.at)? {
            b'0' => {
                self.at += 1;
                if self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if !digits(self) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        self.slice(start, self.at)
    }

    /// `latency_ms`: `null`, or a number's text, read later only if there is no
    /// `duration_ns`. A number serde_json might find out of range is read now.
    fn latency(&mut self) -> Option<Option<&'a str>> {
        if self.bytes.get(self.at) == Some(&b'n') {
            return self.null().map(|()| None);
        }
        let text = self.number()?;
        if text.len() > 64 || text.bytes().any(|b| b == b'e' || b == b'E') {
            serde_json::from_str::<f64>(text).ok()?;
        }
        Some(Some(text))
    }

    /// `duration_ns`: `null` or digits that fit a `u64`.
    fn duration(&mut self) -> Option<Option<u64>> {
        if self.bytes.get(self.at) == Some(&b'n') {
            return self.null().map(|()| None);
        }
        let text = self.number()?;
        let mut n = 0u64;
        for b in text.bytes() {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        Some(Some(n))
    }

    /// An attribute value as serde reads it into a [`Scalar`]; arrays and objects are
    /// left to serde.
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match *self.bytes.get(self.at)? {
            b'"' => self.str_value().map(Scalar::Str),
            b'[' | b'{' => None,
            _ => {
                let (from, to) = self.value(0)?;
                serde_json::from_str::<Scalar<'_>>(self.slice(from, to)?).ok()
            }
        }
    }

    /// `attributes`: `null`, or an object: the attributes verification reads, and the
    /// object as read when every detail is kept.
    #[allow(clippy::type_complexity)]
    fn attributes(&mut self, detail: Detail) -> Option<Option<(Known<'a>, Option<&'a str>)>> {
        let start = self.at;
        match *self.bytes.get(self.at)? {
            b'n' => return self.null().map(|()| None),
            b'{' => self.at += 1,
            _ => return None,
        }
        let mut known = Known::default();
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                let key = self.key()?;
                self.eat(b':')?;
                self.ws();
                if wanted(key) {
                    let value = self.scalar()?;
                    take(&mut known, key, value);
                } else {
                    self.value(0)?;
                }
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        let text = match detail {
            Detail::Full => raw(self.slice(start, self.at)?),
            Detail::Lean => None,
        };
        Some(Some((known, text)))
    }

    /// `null`, or any value's text.
    fn opt_raw(&mut self) -> Option<Option<&'a str>> {
        if self.bytes.get(self.at) == Some(&b'n') {
            return self.null().map(|()| None);
        }
        let (from, to) = self.value(0)?;
        self.slice(from, to).map(Some)
    }

    /// Past any JSON value starting here (whitespace already skipped), checked as serde
    /// checks a value it skips: where it starts and ends.
    fn value(&mut self, depth: usize) -> Option<(usize, usize)> {
        let start = self.at;
        match *self.bytes.get(self.at)? {
            b'"' => {
                self.at += 1;
                self.string()?;
            }
            b'n' => self.null()?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'-' | b'0'..=b'9' => {
                self.number()?;
            }
            b'[' if depth < MAX_DEPTH => {
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                } else {
                    loop {
                        self.ws();
                        self.value(depth + 1)?;
                        match self.peek()? {
                            b',' => self.at += 1,
                            b']' => {
                                self.at += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            b'{' if depth < MAX_DEPTH => {
                self.at += 1;
                if self.peek()? == b'}' {
                    self.at += 1;
                } else {
                    loop {
                        self.eat(b'"')?;
                        self.string()?;
                        self.eat(b':')?;
                        self.ws();
                        self.value(depth + 1)?;
                        match self.peek()? {
                            b',' => self.at += 1,
                            b'}' => {
                                self.at += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            _ => return None,
        }
        Some((start, self.at))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }
}

#[cfg(test)]
mod tests;
