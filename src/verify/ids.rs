//! Ids and names, small: hex ids as the integers they spell, other ids and every name
//! interned once, and a fast hash for the maps over them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::store::NONE;

/// FxHash: ids are random already and names are short, so a multiply-rotate hash is
/// enough and several times faster than SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_u128(&mut self, n: u128) {
        self.add(n as u64);
        self.add((n >> 64) as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Each distinct string once, numbered from 0.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interner {
    map: FxMap<Box<str>, u32>,
    strings: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.map.get(s) {
            return i;
        }
        let i = u32::try_from(self.strings.len()).unwrap_or(NONE - 1);
        self.strings.push(s.into());
        self.map.insert(s.into(), i);
        i
    }

    pub(crate) fn get(&self, i: u32) -> Option<&str> {
        self.strings.get(i as usize).map(|s| &**s)
    }

    /// Every string, in number order.
    pub(crate) fn strings(&self) -> impl Iterator<Item = &str> {
        self.strings.iter().map(|s| &**s)
    }

    pub(crate) fn lookup(&self, s: &str) -> Option<u32> {
        self.map.get(s).copied()
    }
}

/// A span id: 16 lowercase hex digits as the integer they spell (what OpenTelemetry and
/// tracehop write), any other id interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SpanKey {
    Hex(u64),
    Text(u32),
}

/// A trace id: 32 lowercase hex digits as an integer, any other id interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TraceKey {
    Hex(u128),
    Text(u32),
}

fn hex64(bytes: &[u8]) -> Option<u64> {
    if let Ok(sixteen) = <&[u8; 16]>::try_from(bytes) {
        let (high, low) = sixteen.split_at(8);
        return Some(
            (u64::from(crate::hex::eight(high)?) << 32) | u64::from(crate::hex::eight(low)?),
        );
    }
    let mut v = 0u64;
    let mut bad = 0u8;
    for &b in bytes {
        let d = crate::hex::VALUES[usize::from(b)];
        bad |= d;
        v = (v << 4) | u64::from(d & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(v)
}

/// `s` as an integer, when it is exactly `digits` lowercase hex digits (16 or 32).
fn lower_hex(s: &str, digits: usize) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != digits {
        return None;
    }
    if digits <= 16 {
        return hex64(b).map(u128::from);
    }
    let (high, low) = b.split_at(digits - 16);
    Some((u128::from(hex64(high)?) << 64) | u128::from(hex64(low)?))
}

impl SpanKey {
    pub(crate) fn parse(s: &str, ids: &mut Interner) -> SpanKey {
        match lower_hex(s, 16) {
            Some(v) => SpanKey::Hex(v as u64),
            None => SpanKey::Text(ids.intern(s)),
        }
    }

    /// The key `s` would have, without interning (None: a text id nobody used).
    pub(crate) fn find(s: &str, ids: &Interner) -> Option<SpanKey> {
        match lower_hex(s, 16) {
            Some(v) => Some(SpanKey::Hex(v as u64)),
            None => ids.lookup(s).map(SpanKey::Text),
        }
    }

    pub(crate) fn id<'a>(self, ids: &'a Interner) -> Id<'a> {
        match self {
            SpanKey::Hex(v) => Id(IdRepr::Hex64(v)),
            SpanKey::Text(i) => Id(IdRepr::Text(ids.get(i).unwrap_or(""))),
        }
    }
}

impl TraceKey {
    pub(crate) fn parse(s: &str, ids: &mut Interner) -> TraceKey {
        match lower_hex(s, 32) {
            Some(v) => TraceKey::Hex(v),
            None => TraceKey::Text(ids.intern(s)),
        }
    }

    pub(crate) fn find(s: &str, ids: &Interner) -> Option<TraceKey> {
        match lower_hex(s, 32) {
            Some(v) => Some(TraceKey::Hex(v)),
            None => ids.lookup(s).map(TraceKey::Text),
        }
    }

    pub(crate) fn id<'a>(self, ids: &'a Interner) -> Id<'a> {
        match self {
            TraceKey::Hex(v) => Id(IdRepr::Hex128(v)),
            TraceKey::Text(i) => Id(IdRepr::Text(ids.get(i).unwrap_or(""))),
        }
    }
}

/// `000102…ff`: each byte's two lowercase hex digits.
const HEX_PAIRS: &str = {
    const BYTES: [u8; 512] = {
        let digits = b"0123456789abcdef";
        let mut out = [0u8; 512];
        let mut i = 0;
        while i < 256 {
            out[2 * i] = digits[i >> 4];
            out[2 * i + 1] = digits[i & 0xf];
            i += 1;
        }
        out
    };
    match std::str::from_utf8(&BYTES) {
        Ok(text) => text,
        Err(_) => "",
    }
};

/// A span or trace id as it was read, without keeping a string for hex ids.
///
/// Displays as the original text (hex ids as lowercase hex); compares equal to that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id<'a>(IdRepr<'a>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdRepr<'a> {
    Hex64(u64),
    Hex128(u128),
    Text(&'a str),
}

impl Id<'_> {
    /// The id as text.
    pub fn as_str(&self) -> Cow<'_, str> {
        match self.0 {
            IdRepr::Text(s) => Cow::Borrowed(s),
            _ => Cow::Owned(self.to_string()),
        }
    }

    /// The first `len` characters of a hex id (all of any other id), as the text tree
    /// shortens ids.
    pub fn prefix(&self, len: usize) -> Cow<'_, str> {
        match self.0 {
            IdRepr::Hex64(v) if len < 16 => Cow::Owned(format!("{:0len$x}", v >> ((16 - len) * 4))),
            IdRepr::Hex128(v) if len < 32 => {
                Cow::Owned(format!("{:0len$x}", v >> ((32 - len) * 4)))
            }
            IdRepr::Text(s) if s.len() > len && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Cow::Borrowed(&s[..len])
            }
            _ => self.as_str(),
        }
    }
}

impl Id<'_> {
    /// Write [`prefix`](Self::prefix) without allocating.
    /// [`prefix`](Self::prefix) appended to `out`, hex digits written by hand (the text
    /// tree writes two per span).
    pub(crate) fn push_prefix(&self, out: &mut String, len: usize) {
        let mut hex = |v: u128, total: usize| {
            let digits = total.min(len);
            let v = v >> ((total - digits) * 4);
            // Two digits at a time, from the table of every byte's.
            let mut k = digits;
            if k % 2 == 1 {
                k -= 1;
                let nibble = ((v >> (k * 4)) & 0xf) as usize;
                out.push_str(&HEX_PAIRS[2 * nibble + 1..2 * nibble + 2]);
            }
            while k > 0 {
                k -= 2;
                let byte = ((v >> (k * 4)) & 0xff) as usize;
                out.push_str(&HEX_PAIRS[2 * byte..2 * byte + 2]);
            }
        };
        match self.0 {
            IdRepr::Hex64(v) => hex(u128::from(v), 16),
            IdRepr::Hex128(v) => hex(v, 32),
            IdRepr::Text(s) if s.len() > len && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                out.push_str(&s[..len]);
            }
            IdRepr::Text(s) => out.push_str(s),
        }
    }

    pub(crate) fn write_prefix(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        len: usize,
    ) -> std::fmt::Result {
        match self.0 {
            IdRepr::Hex64(v) if len < 16 => write!(f, "{:0len$x}", v >> ((16 - len) * 4)),
            IdRepr::Hex128(v) if len < 32 => write!(f, "{:0len$x}", v >> ((32 - len) * 4)),
            IdRepr::Text(s) if s.len() > len && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                f.write_str(&s[..len])
            }
            _ => write!(f, "{self}"),
        }
    }
}

impl std::fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IdRepr::Hex64(v) => write!(f, "{v:016x}"),
            IdRepr::Hex128(v) => write!(f, "{v:032x}"),
            IdRepr::Text(s) => f.write_str(s),
        }
    }
}

impl PartialEq<str> for Id<'_> {
    fn eq(&self, other: &str) -> bool {
        match self.0 {
            IdRepr::Text(s) => s == other,
            IdRepr::Hex64(v) => lower_hex(other, 16) == Some(u128::from(v)),
            IdRepr::Hex128(v) => lower_hex(other, 32) == Some(v),
        }
    }
}

impl PartialEq<&str> for Id<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl serde::Serialize for Id<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::lower_hex;

    fn naive(s: &[u8]) -> Option<u128> {
        s.iter().try_fold(0u128, |v, &b| match b {
            b'0'..=b'9' => Some(v << 4 | u128::from(b - b'0')),
            b'a'..=b'f' => Some(v << 4 | u128::from(b - b'a' + 10)),
            _ => None,
        })
    }

    /// Every byte at every place of 16- and 32-digit ids: a word at a time reads what a
    /// digit at a time reads.
    #[test]
    fn hex_ids_are_read_a_word_at_a_time_as_a_digit_at_a_time() {
        for digits in [16, 32] {
            let base: Vec<u8> = b"0123456789abcdeffedcba9876543210"[..digits].to_vec();
            for at in 0..digits {
                for b in 0..=255u8 {
                    let mut id = base.clone();
                    id[at] = b;
                    let Ok(text) = std::str::from_utf8(&id) else {
                        continue;
                    };
                    assert_eq!(lower_hex(text, digits), naive(&id), "{text:?}");
                }
            }
            assert_eq!(lower_hex("0123456789abcdef", 32), None);
        }
        assert_eq!(
            lower_hex("00f067aa0ba902b7", 16),
            Some(0x00f0_67aa_0ba9_02b7)
        );
        assert_eq!(
            lower_hex("4bf92f3577b34da6a3ce929d0e0e4736", 32),
            Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
    }
}
