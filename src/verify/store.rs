//! What verification keeps of each span: a few dozen bytes, names interned, ids as integers.
//!
//! A journal line is ~350 bytes of JSON; a [`SpanRecord`] in memory is about three times
//! that. Verification needs neither: it keeps the fields its rules, trees and statistics
//! read in typed form ([`Span`]), service and operation names once per distinct name
//! ([`Interner`]), and hex ids as integers ([`SpanKey`], [`TraceKey`]). Everything else
//! (every attribute, events, link attributes) is kept as raw JSON text only when asked for
//! ([`Detail::Full`]), for the JSON output and the HTML view.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::journal::{Kind, LinkRecord, SpanRecord, Status};
use crate::messaging::attributes as attr;

/// "Not known" for the `u32` fields (names, attempts, batch sizes, extras).
pub(crate) const NONE: u32 = u32::MAX;
/// "Not known" for times in nanoseconds since the Unix epoch.
pub(crate) const NO_TIME: i64 = i64::MIN;
/// "Not known" for durations in nanoseconds.
pub(crate) const NO_DURATION: u64 = u64::MAX;

/// How much of each span to keep when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Detail {
    /// What the rules, trees, critical path and statistics read: ids, names, kind, times,
    /// status, error, links, and the messaging and tracehop attributes they use. Enough
    /// for `check`, `tree` and `stats`; the smallest in memory.
    #[default]
    Lean,
    /// Also every attribute, the events and the links' attributes, as they were read (for
    /// JSON output and the HTML view).
    Full,
}

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

/// The value of each lowercase hex digit; 0xff for any other byte.
const HEX: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn hex64(bytes: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    let mut bad = 0u8;
    for &b in bytes {
        let d = HEX[b as usize];
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

/// Span flags.
pub(crate) mod flag {
    /// `messaging.operation.type` is `process` (or `receive`).
    pub(crate) const PROCESS: u8 = 1;
    /// `messaging.operation.type` is `send`, `publish` or `create`.
    pub(crate) const SEND: u8 = 2;
    /// `tracehop.context.missing` is true.
    pub(crate) const CONTEXT_MISSING: u8 = 4;
    /// `tracehop.context.linked` is true.
    pub(crate) const CONTEXT_LINKED: u8 = 8;
    /// `tracehop.context.rejected` is present.
    pub(crate) const CONTEXT_REJECTED: u8 = 16;
    /// `messaging.operation.type` is `receive`.
    pub(crate) const RECEIVE: u8 = 32;
}

/// One span, compact. Times are nanoseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    /// When it started: `start_time`, else the end minus the duration.
    pub(crate) start: i64,
    /// When it ended: `timestamp`, else the start plus the duration.
    pub(crate) end: i64,
    pub(crate) duration: u64,
    /// `tracehop.queue_time_ms`, in nanoseconds.
    pub(crate) queue: u64,
    pub(crate) id: SpanKey,
    pub(crate) parent: Option<SpanKey>,
    /// The trace, numbered in reading order until the spans are stitched.
    pub(crate) trace: u32,
    pub(crate) service: u32,
    pub(crate) operation: u32,
    /// `messaging.destination.name`.
    pub(crate) destination: u32,
    /// `messaging.system`.
    pub(crate) system: u32,
    /// `error.type`.
    pub(crate) error_type: u32,
    /// `tracehop.delivery.attempt`.
    pub(crate) attempt: u32,
    /// `messaging.batch.message_count`.
    pub(crate) batch: u32,
    /// Index into the extras (error text, links, raw attributes), or [`NONE`].
    pub(crate) extra: u32,
    pub(crate) kind: Option<Kind>,
    pub(crate) status: Status,
    pub(crate) flags: u8,
}

impl Span {
    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// A consumer: kind consumer, or `messaging.operation.type` process or receive.
    pub(crate) fn is_consumer(&self) -> bool {
        self.kind == Some(Kind::Consumer) || self.has(flag::PROCESS)
    }

    /// A producer: kind producer, or `messaging.operation.type` send, publish or create.
    pub(crate) fn is_send(&self) -> bool {
        self.kind == Some(Kind::Producer) || self.has(flag::SEND)
    }

    pub(crate) fn known_start(&self) -> Option<i64> {
        (self.start != NO_TIME).then_some(self.start)
    }

    pub(crate) fn known_end(&self) -> Option<i64> {
        (self.end != NO_TIME).then_some(self.end)
    }

    pub(crate) fn known_duration(&self) -> Option<u64> {
        (self.duration != NO_DURATION).then_some(self.duration)
    }

    pub(crate) fn known_queue(&self) -> Option<u64> {
        (self.queue != NO_DURATION).then_some(self.queue)
    }
}

/// What few spans carry beyond the compact fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extra {
    pub(crate) error: Option<Box<str>>,
    /// `tracehop.context.rejected`, as text.
    pub(crate) rejected: Option<Box<str>>,
    pub(crate) links: Box<[Link]>,
    /// The attributes object as read ([`Detail::Full`]).
    pub(crate) attributes: Option<Box<str>>,
    /// The events array as read ([`Detail::Full`]).
    pub(crate) events: Option<Box<str>>,
}

/// A link, compact.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) trace: TraceKey,
    pub(crate) span: SpanKey,
    /// The link's attributes object as read ([`Detail::Full`]).
    pub(crate) attributes: Option<Box<str>>,
}

pub(crate) fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(NO_TIME + 1, |n| -n),
    }
}

pub(crate) fn time(ns: i64) -> Option<SystemTime> {
    if ns == NO_TIME {
        return None;
    }
    if ns >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_nanos(ns as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_nanos(ns.unsigned_abs()))
    }
}

/// Spans read so far, compact, not yet stitched into trees: what [`read_files`] and
/// [`read_bytes`] return, and what [`Traces::from_spans`] stitches.
///
/// [`read_files`]: super::read_files
/// [`read_bytes`]: super::read_bytes
/// [`Traces::from_spans`]: super::Traces::from_spans
#[derive(Debug, Clone, Default)]
pub struct Spans {
    pub(crate) spans: Vec<Span>,
    pub(crate) extras: Vec<Extra>,
    pub(crate) names: Interner,
    pub(crate) ids: Interner,
    pub(crate) trace_slots: FxMap<TraceKey, u32>,
    pub(crate) trace_keys: Vec<TraceKey>,
    pub(crate) detail: Detail,
    /// The last name interned for each name field (length, index).
    last_names: [(usize, u32); 5],
}

impl From<Vec<SpanRecord>> for Spans {
    /// The records, every detail kept.
    fn from(records: Vec<SpanRecord>) -> Spans {
        let mut spans = Spans::new(Detail::Full);
        spans.extend_records(&records);
        spans
    }
}

impl From<&[SpanRecord]> for Spans {
    /// The records, every detail kept.
    fn from(records: &[SpanRecord]) -> Spans {
        let mut spans = Spans::new(Detail::Full);
        spans.extend_records(records);
        spans
    }
}

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

impl Spans {
    /// No spans yet, keeping `detail` of each span added.
    pub fn new(detail: Detail) -> Spans {
        Spans {
            detail,
            last_names: [(0, NONE); 5],
            ..Spans::default()
        }
    }

    /// How many spans there are.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// How much of each span is kept.
    pub fn detail(&self) -> Detail {
        self.detail
    }

    /// Add a span record (from [`crate::journal`], a [`SpanCollector`], anywhere).
    ///
    /// [`SpanCollector`]: crate::journal::SpanCollector
    pub fn push_record(&mut self, record: &SpanRecord) {
        let mut known = Known::default();
        for (key, value) in &record.attributes {
            known.take(key, value);
        }
        let raw_attributes = (self.detail == Detail::Full && !record.attributes.is_empty())
            .then(|| serde_json::to_string(&record.attributes).unwrap_or_default());
        let link_attributes: Vec<Option<String>> = record
            .links
            .iter()
            .map(|l| {
                (self.detail == Detail::Full && !l.attributes.is_empty())
                    .then(|| serde_json::to_string(&l.attributes).unwrap_or_default())
            })
            .collect();
        let fields = Fields {
            trace_id: &record.trace_id,
            span_id: &record.span_id,
            parent_span_id: record.parent_span_id.as_deref(),
            service: record.service_name.as_deref(),
            operation: record.operation_name.as_deref(),
            kind: record.span_kind,
            start: record.start(),
            end: record
                .timestamp
                .or_else(|| Some(record.start()? + record.duration()?)),
            duration: record.duration(),
            status: record.status,
            error: record.error.as_deref(),
            known,
            links: record
                .links
                .iter()
                .zip(&link_attributes)
                .map(|(l, a)| (l.trace_id.as_str(), l.span_id.as_str(), a.as_deref()))
                .collect(),
            raw_attributes: raw_attributes.as_deref(),
            raw_events: None,
        };
        self.push(fields);
    }

    /// Add every record.
    pub fn extend_records<'r>(&mut self, records: impl IntoIterator<Item = &'r SpanRecord>) {
        for r in records {
            self.push_record(r);
        }
    }

    /// Add the spans of `other` (read with any detail).
    pub fn append(&mut self, other: Spans) {
        if self.spans.is_empty() && self.extras.is_empty() && self.detail == other.detail {
            *self = other;
            return;
        }
        let Spans {
            spans,
            extras,
            names,
            ids,
            trace_keys,
            ..
        } = other;
        // Each distinct name, id and trace once, not once per span.
        let name_map: Vec<u32> = names.strings.iter().map(|n| self.names.intern(n)).collect();
        let id_map: Vec<u32> = ids.strings.iter().map(|n| self.ids.intern(n)).collect();
        let name = |i: u32| {
            if i == NONE {
                NONE
            } else {
                name_map[i as usize]
            }
        };
        let span_key = |k: SpanKey| match k {
            SpanKey::Text(i) => SpanKey::Text(id_map[i as usize]),
            hex => hex,
        };
        let trace_key = |k: TraceKey| match k {
            TraceKey::Text(i) => TraceKey::Text(id_map[i as usize]),
            hex => hex,
        };
        let slot_map: Vec<u32> = trace_keys
            .iter()
            .map(|&k| self.trace_slot(trace_key(k)))
            .collect();
        let extra_base = self.extras.len() as u32;
        self.extras.extend(extras.into_iter().map(|mut e| {
            let links: Vec<Link> = e
                .links
                .iter()
                .map(|l| Link {
                    trace: trace_key(l.trace),
                    span: span_key(l.span),
                    attributes: l.attributes.clone(),
                })
                .collect();
            e.links = links.into();
            e
        }));
        self.spans.reserve_exact(spans.len());
        self.spans.extend(spans.into_iter().map(|mut span| {
            span.service = name(span.service);
            span.operation = name(span.operation);
            span.destination = name(span.destination);
            span.system = name(span.system);
            span.error_type = name(span.error_type);
            span.id = span_key(span.id);
            span.parent = span.parent.map(span_key);
            span.trace = slot_map[span.trace as usize];
            if span.extra != NONE {
                span.extra += extra_base;
            }
            span
        }));
    }

    fn trace_slot(&mut self, key: TraceKey) -> u32 {
        let next = u32::try_from(self.trace_keys.len()).unwrap_or(NONE - 1);
        let slot = *self.trace_slots.entry(key).or_insert(next);
        if slot == next {
            self.trace_keys.push(key);
        }
        slot
    }

    fn add_extra(&mut self, extra: Extra) -> u32 {
        let i = u32::try_from(self.extras.len()).unwrap_or(NONE - 1);
        self.extras.push(extra);
        i
    }

    fn name(&mut self, name: Option<&str>, field: usize) -> u32 {
        let Some(name) = name else { return NONE };
        // Lines of one journal mostly repeat the previous line's names.
        let (last, i) = self.last_names[field];
        if i != NONE
            && self
                .names
                .get(i)
                .is_some_and(|n| n.len() == last && n == name)
        {
            return i;
        }
        let i = self.names.intern(name);
        self.last_names[field] = (name.len(), i);
        i
    }

    /// Add one span from the fields a reader found.
    pub(crate) fn push(&mut self, f: Fields<'_>) {
        let trace = TraceKey::parse(f.trace_id, &mut self.ids);
        let trace = self.trace_slot(trace);
        let id = SpanKey::parse(f.span_id, &mut self.ids);
        let parent = f.parent_span_id.map(|p| SpanKey::parse(p, &mut self.ids));
        let k = f.known;
        let mut flags = 0;
        match k.operation_type.as_deref() {
            Some("process") => flags |= flag::PROCESS,
            Some("receive") => flags |= flag::PROCESS | flag::RECEIVE,
            Some("send" | "publish" | "create") => flags |= flag::SEND,
            _ => {}
        }
        if k.context_missing {
            flags |= flag::CONTEXT_MISSING;
        }
        if k.context_linked {
            flags |= flag::CONTEXT_LINKED;
        }
        if k.rejected.is_some() {
            flags |= flag::CONTEXT_REJECTED;
        }
        let queue = k
            .queue_ms
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map_or(NO_DURATION, |ms| (ms * 1e6).round() as u64);
        let small = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok()).unwrap_or(NONE);
        let full = self.detail == Detail::Full;
        let links: Vec<Link> = f
            .links
            .iter()
            .map(|&(t, s, a)| Link {
                trace: TraceKey::parse(t, &mut self.ids),
                span: SpanKey::parse(s, &mut self.ids),
                attributes: a.filter(|_| full).map(Into::into),
            })
            .collect();
        let extra = if f.error.is_some()
            || k.rejected.is_some()
            || !links.is_empty()
            || (full && (f.raw_attributes.is_some() || f.raw_events.is_some()))
        {
            self.add_extra(Extra {
                error: f.error.map(Into::into),
                rejected: k.rejected.map(Into::into),
                links: links.into(),
                attributes: f.raw_attributes.filter(|_| full).map(Into::into),
                events: f.raw_events.filter(|_| full).map(Into::into),
            })
        } else {
            NONE
        };
        let span = Span {
            start: f.start.map_or(NO_TIME, nanos),
            end: f.end.map_or(NO_TIME, nanos),
            duration: f.duration.map_or(NO_DURATION, |d| {
                u64::try_from(d.as_nanos()).unwrap_or(NO_DURATION - 1)
            }),
            queue,
            id,
            parent,
            trace,
            service: self.name(f.service, 0),
            operation: self.name(f.operation, 1),
            destination: self.name(k.destination.as_deref(), 2),
            system: self.name(k.system.as_deref(), 3),
            error_type: self.name(k.error_type.as_deref(), 4),
            attempt: small(k.attempt),
            batch: small(k.batch),
            extra,
            kind: f.kind,
            status: f.status,
            flags,
        };
        self.spans.push(span);
    }
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

/// A link record, for [`SpanRecord`] output.
pub(crate) fn link_record(link: &Link, ids: &Interner) -> LinkRecord {
    LinkRecord {
        trace_id: link.trace.id(ids).to_string(),
        span_id: link.span.id(ids).to_string(),
        attributes: link
            .attributes
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default(),
    }
}
