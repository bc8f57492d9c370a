//! The bytes of one line, read token by token as JSON spells them and as serde_json
//! checks them.

use std::borrow::Cow;

use crate::journal::{Kind, Status};
use crate::verify::parse::{Scalar, Str};

/// Nesting deeper than this inside a skipped value is left to serde.
const MAX_DEPTH: usize = 64;

/// The powers of ten serde_json divides by, as it writes them (each exact).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Whether two slices of one length are equal, eight bytes at a time and without a call
/// (keys are a few dozen bytes).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    let word = |s: &[u8], at: usize| {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(eight)
    };
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let mut at = 0;
    while at + 8 <= n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    // The last word, overlapping the one before.
    word(a, n - 8) == word(b, n - 8)
}

/// A number's value as serde_json gives it to a visitor.
#[derive(Debug, Clone, Copy)]
pub(super) enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
    /// One this reader leaves to serde_json (an exponent, many digits).
    Other,
}

/// A place in a line.
pub(super) struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pub(super) at: usize,
}

/// `LO * b` has `b` in every byte of a word.
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

impl<'a> Cursor<'a> {
    pub(super) fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            text,
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    /// The byte here (whitespace not skipped).
    #[inline]
    pub(super) fn byte(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Whether the line goes on with `pattern` here.
    #[inline]
    pub(super) fn at_pattern(&self, pattern: &[u8]) -> bool {
        self.bytes
            .get(self.at..self.at + pattern.len())
            .is_some_and(|b| same(b, pattern))
    }

    /// Whether the whole line has been read.
    #[inline]
    pub(super) fn done(&self) -> bool {
        self.at == self.bytes.len()
    }

    #[inline]
    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    #[inline]
    pub(super) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.at).copied()
    }

    /// After an object's member: a `,` (another member follows: `false`) or the `}` that
    /// ends the object (`true`), consumed; anything else is not JSON (`None`).
    #[inline]
    pub(super) fn member_end(&mut self) -> Option<bool> {
        let end = match self.peek()? {
            b',' => false,
            b'}' => true,
            _ => return None,
        };
        self.at += 1;
        Some(end)
    }

    #[inline]
    pub(super) fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// The whole line.
    #[inline]
    pub(super) fn text(&self) -> &'a str {
        self.text
    }

    #[inline]
    pub(super) fn slice(&self, from: usize, to: usize) -> Option<&'a str> {
        self.text.get(from..to)
    }

    /// A key without escapes (a key with one is left to serde).
    #[inline]
    pub(super) fn key(&mut self) -> Option<&'a str> {
        self.ws();
        self.plain_str()
    }

    /// Past the string whose opening quote was taken, to after its closing quote:
    /// whether it had an escape. Control characters and bad escapes are refused as serde
    /// refuses them; `\u` escapes are checked as serde checks strings it skips (four hex
    /// digits, a lone surrogate allowed): the strings this reader keeps and that have an
    /// escape are read by serde_json, which checks the rest.
    #[inline(always)]
    pub(super) fn string(&mut self) -> Option<bool> {
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
    /// time: of the bytes a word flags, the lowest is exact (the borrow that can flag a
    /// byte wrongly only runs upwards from a flagged one).
    #[inline(always)]
    fn skip_plain(&mut self) {
        while let Some(word) = self.bytes.get(self.at..self.at + 8) {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(word);
            let x = u64::from_le_bytes(eight);
            let quote = x ^ (LO * u64::from(b'"'));
            let backslash = x ^ (LO * u64::from(b'\\'));
            let found = ((quote.wrapping_sub(LO) & !quote)
                | (backslash.wrapping_sub(LO) & !backslash)
                | (x.wrapping_sub(LO * 0x20) & !x))
                & HI;
            if found != 0 {
                self.at += (found.trailing_zeros() / 8) as usize;
                return;
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
    #[inline]
    pub(super) fn str_value(&mut self) -> Option<Cow<'a, str>> {
        let open = self.at;
        self.at += 1;
        if self.string()? {
            let quoted = self.slice(open, self.at)?;
            Some(serde_json::from_str::<Str<'_>>(quoted).ok()?.0)
        } else {
            self.slice(open + 1, self.at - 1).map(Cow::Borrowed)
        }
    }

    #[inline]
    pub(super) fn null(&mut self) -> Option<()> {
        self.literal(b"null")
    }

    /// A string or `null`.
    #[inline]
    pub(super) fn opt_str(&mut self) -> Option<Option<Cow<'a, str>>> {
        match *self.bytes.get(self.at)? {
            b'"' => self.str_value().map(Some),
            b'n' => self.null().map(|()| None),
            _ => None,
        }
    }

    /// A string without escapes (one with escapes is left to serde).
    #[inline]
    pub(super) fn plain_str(&mut self) -> Option<&'a str> {
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

    pub(super) fn kind(&mut self) -> Option<Option<Kind>> {
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

    pub(super) fn status(&mut self) -> Option<Status> {
        Some(match self.plain_str()? {
            "ok" => Status::Ok,
            "error" => Status::Error,
            // Any other name is `unset` (`#[serde(other)]`).
            _ => Status::Unset,
        })
    }

    /// A number, checked as JSON spells one: its text, and its value as serde_json reads
    /// it when this reader computes the same.
    #[inline]
    pub(super) fn number(&mut self) -> Option<(&'a str, Number)> {
        let start = self.at;
        let negative = self.byte() == Some(b'-');
        if negative {
            self.at += 1;
        }
        // The digits as one integer (wrapping: only used when there are at most 19).
        let mut significand = 0u64;
        let digits;
        let more = |c: &mut Cursor<'_>, significand: &mut u64| {
            let from = c.at;
            while let Some(d @ b'0'..=b'9') = c.byte() {
                *significand = significand
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(d - b'0'));
                c.at += 1;
            }
            c.at - from
        };
        match self.byte()? {
            b'0' => {
                self.at += 1;
                digits = 1;
                if self.byte().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => digits = more(self, &mut significand),
            _ => return None,
        }
        let mut fraction = 0;
        if self.byte() == Some(b'.') {
            self.at += 1;
            fraction = more(self, &mut significand);
            if fraction == 0 {
                return None;
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.byte() {
            exponent = true;
            self.at += 1;
            if let Some(b'+' | b'-') = self.byte() {
                self.at += 1;
            }
            if more(self, &mut 0) == 0 {
                return None;
            }
        }
        let text = self.slice(start, self.at)?;
        // What serde_json does (without `float_roundtrip`), where it cannot overflow.
        let value = if exponent || digits + fraction > 19 || fraction >= POW10.len() {
            Number::Other
        } else if fraction > 0 {
            let f = significand as f64 / POW10[fraction];
            Number::F64(if negative { -f } else { f })
        } else if !negative {
            Number::U64(significand)
        } else {
            let neg = (significand as i64).wrapping_neg();
            // `-0` and what does not fit an i64 are floats.
            if neg >= 0 {
                Number::F64(-(significand as f64))
            } else {
                Number::I64(neg)
            }
        };
        Some((text, value))
    }

    /// `latency_ms`: `null` or a number.
    pub(super) fn latency(&mut self) -> Option<Option<f64>> {
        if self.byte() == Some(b'n') {
            return self.null().map(|()| None);
        }
        Some(Some(match self.number()? {
            (_, Number::U64(v)) => v as f64,
            (_, Number::I64(v)) => v as f64,
            (_, Number::F64(f)) => f,
            (text, Number::Other) => serde_json::from_str::<f64>(text).ok()?,
        }))
    }

    /// `duration_ns`: `null` or digits that fit a `u64`.
    pub(super) fn duration(&mut self) -> Option<Option<u64>> {
        if self.byte() == Some(b'n') {
            return self.null().map(|()| None);
        }
        match self.number()? {
            (_, Number::U64(v)) => Some(Some(v)),
            (text, Number::Other) if text.bytes().all(|b| b.is_ascii_digit()) => {
                let mut n = 0u64;
                for b in text.bytes() {
                    n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                }
                Some(Some(n))
            }
            _ => None,
        }
    }

    /// An attribute value as serde reads it into a [`Scalar`]; arrays and objects are
    /// left to serde.
    pub(super) fn scalar(&mut self) -> Option<Scalar<'a>> {
        match *self.bytes.get(self.at)? {
            b'"' => self.str_value().map(Scalar::Str),
            b'[' | b'{' => None,
            b'-' | b'0'..=b'9' => Some(match self.number()? {
                (_, Number::U64(v)) => i64::try_from(v).map_or(Scalar::F64(v as f64), Scalar::I64),
                (_, Number::I64(v)) => Scalar::I64(v),
                (_, Number::F64(f)) => Scalar::F64(f),
                (text, Number::Other) => serde_json::from_str::<Scalar<'_>>(text).ok()?,
            }),
            _ => {
                let (from, to) = self.value()?;
                serde_json::from_str::<Scalar<'_>>(self.slice(from, to)?).ok()
            }
        }
    }

    /// `null`, or any value's text.
    pub(super) fn opt_raw(&mut self) -> Option<Option<&'a str>> {
        if self.bytes.get(self.at) == Some(&b'n') {
            return self.null().map(|()| None);
        }
        let (from, to) = self.value()?;
        self.slice(from, to).map(Some)
    }

    /// Past any JSON value starting here (whitespace already skipped), checked as serde
    /// checks a value it skips: where it starts and ends.
    pub(super) fn value(&mut self) -> Option<(usize, usize)> {
        self.value_in(0)
    }

    fn value_in(&mut self, depth: usize) -> Option<(usize, usize)> {
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
                        self.value_in(depth + 1)?;
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
                        self.value_in(depth + 1)?;
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

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }
}
