//! What verification keeps of each span: a few dozen bytes, names interned, ids as integers.
//!
//! A journal line is ~350 bytes of JSON; a [`SpanRecord`] in memory is about three times
//! that. Verification needs neither: it keeps the fields its rules, trees and statistics
//! read in typed form ([`Span`]), service and operation names once per distinct name
//! ([`Interner`]), and hex ids as integers ([`SpanKey`], [`TraceKey`]). Everything else
//! (every attribute, events, link attributes) is kept as raw JSON text only when asked for
//! ([`Detail::Full`]), for the JSON output and the HTML view.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use super::fields::{known_attributes, Fields, Known};
pub(crate) use super::ids::{FxHasher, FxMap, Id, Interner, SpanKey, TraceKey};
use crate::journal::{Kind, LinkRecord, SpanRecord, Status};

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
    /// What the fast line reader remembers between lines.
    pub(crate) memo: super::scan::Memo,
    /// The trace of the last span added, and its slot (lines of a trace come together).
    last_trace: Option<(TraceKey, u32)>,
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
        let name_map: Vec<u32> = names.strings().map(|n| self.names.intern(n)).collect();
        let id_map: Vec<u32> = ids.strings().map(|n| self.ids.intern(n)).collect();
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
        if let Some((last, slot)) = self.last_trace {
            if last == key {
                return slot;
            }
        }
        let slot = self.new_trace_slot(key);
        self.last_trace = Some((key, slot));
        slot
    }

    fn new_trace_slot(&mut self, key: TraceKey) -> u32 {
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
    #[inline]
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
        let links: Vec<Link> = if f.links.is_empty() {
            Vec::new()
        } else {
            f.links
                .iter()
                .map(|&(t, s, a)| Link {
                    trace: TraceKey::parse(t, &mut self.ids),
                    span: SpanKey::parse(s, &mut self.ids),
                    attributes: a.filter(|_| full).map(Into::into),
                })
                .collect()
        };
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
