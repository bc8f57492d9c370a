//! Looking at one trace ([`Trace`]) and one span in it ([`Node`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::store::{self, flag, Extra, Id, Link, Span, NONE};
use super::tree::{Place, TraceData, Traces};
use crate::journal::{Kind, SpanRecord, Status};

impl Traces {
    /// The traces, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Trace<'_>> + '_ {
        (0..self.traces.len()).map(move |index| Trace { all: self, index })
    }

    /// The trace at `index` (in [`iter`](Self::iter) order).
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn trace(&self, index: usize) -> Trace<'_> {
        assert!(
            index < self.traces.len(),
            "trace index {index} out of range"
        );
        Trace { all: self, index }
    }

    /// The trace with id `trace_id`.
    pub fn get(&self, trace_id: &str) -> Option<Trace<'_>> {
        self.trace_index(trace_id).map(|index| Trace {
            all: self,
            index: index as usize,
        })
    }

    pub(crate) fn node_at(&self, global: usize) -> Node<'_> {
        Node { all: self, global }
    }
}

impl<'a> IntoIterator for &'a Traces {
    type Item = Trace<'a>;
    type IntoIter = Box<dyn Iterator<Item = Trace<'a>> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// One trace: its spans and how they hang together.
#[derive(Debug, Clone, Copy)]
pub struct Trace<'a> {
    pub(crate) all: &'a Traces,
    pub(crate) index: usize,
}

impl<'a> Trace<'a> {
    pub(crate) fn data(&self) -> &'a TraceData {
        &self.all.traces[self.index]
    }

    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        let d = self.data();
        d.start as usize..d.end as usize
    }

    /// Its position among [`Traces::iter`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The trace id.
    pub fn trace_id(&self) -> Id<'a> {
        self.data().key.id(&self.all.ids)
    }

    /// How many spans the trace has.
    pub fn len(&self) -> usize {
        self.range().len()
    }

    /// Whether the trace has no spans (never true for a trace built from spans).
    pub fn is_empty(&self) -> bool {
        self.range().is_empty()
    }

    /// The span at `index`: spans are numbered by start time (ties by span id).
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn node(&self, index: usize) -> Node<'a> {
        assert!(index < self.len(), "span index {index} out of range");
        self.all.node_at(self.range().start + index)
    }

    /// The spans by start time (ties by span id): [`Node::index`] order.
    pub fn by_start(&self) -> impl ExactSizeIterator<Item = Node<'a>> + 'a {
        let all = self.all;
        self.range().map(move |global| all.node_at(global))
    }

    /// The span with id `span_id`.
    pub fn find(&self, span_id: &str) -> Option<Node<'a>> {
        let key = store::SpanKey::find(span_id, &self.all.ids)?;
        let global = self.all.find_key(self.data().key, key)?;
        Some(self.all.node_at(global))
    }

    /// Every span in tree order: each top-level span followed by its descendants, depth
    /// first, siblings by start time.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = Node<'a>> + 'a {
        let all = self.all;
        all.order[self.range()]
            .iter()
            .map(move |&global| all.node_at(global as usize))
    }

    /// The spans drawn at the top level: roots, spans whose parent is in no input, and
    /// (in corrupt input) a span cut out of a parent loop.
    pub fn tops(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        self.nodes().filter(|n| n.depth() == 0)
    }

    /// The root spans: those with no `parent_span_id`. A whole trace has exactly one.
    pub fn roots(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        self.nodes().filter(|n| n.place() == Place::Root)
    }

    /// The chain from the top of the tree down to the span at `index`, top first, ending
    /// with that span.
    pub fn ancestry(&self, index: usize) -> Vec<Node<'a>> {
        let mut chain = vec![self.node(index)];
        while let Some(parent) = chain.last().and_then(Node::parent) {
            chain.push(parent);
        }
        chain.reverse();
        chain
    }

    /// The services that appear in the trace, sorted by name.
    pub fn services(&self) -> Vec<&'a str> {
        let mut seen: Vec<u32> = self.spans().iter().map(|s| s.service).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut services: Vec<&str> = seen
            .into_iter()
            .filter_map(|i| self.all.names.get(i))
            .collect();
        services.sort_unstable();
        services
    }

    pub(crate) fn spans(&self) -> &'a [Span] {
        &self.all.spans[self.range()]
    }

    /// From the earliest start to the latest end of any span, when times are known.
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = self.bounds()?;
        Some(Duration::from_nanos(end.saturating_sub(start).max(0) as u64))
    }

    /// Earliest start and latest end, in nanoseconds since the epoch.
    pub(crate) fn bounds(&self) -> Option<(i64, i64)> {
        let spans = self.spans();
        let start = spans.iter().filter_map(Span::known_start).min()?;
        let end = spans.iter().filter_map(Span::known_end).max()?;
        Some((start, end))
    }

    /// When the trace starts, when known.
    pub fn start(&self) -> Option<SystemTime> {
        store::time(self.bounds()?.0)
    }

    /// Every span as a [`SpanRecord`], by start time.
    pub fn records(&self) -> Vec<SpanRecord> {
        self.by_start().map(|n| n.record()).collect()
    }
}

/// A span in its trace's tree.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    all: &'a Traces,
    global: usize,
}

impl<'a> Node<'a> {
    pub(crate) fn raw(&self) -> &'a Span {
        &self.all.spans[self.global]
    }

    pub(crate) fn global(&self) -> usize {
        self.global
    }

    pub(crate) fn place(&self) -> Place {
        self.all.place[self.global]
    }

    fn extra(&self) -> Option<&'a Extra> {
        let e = self.raw().extra;
        (e != NONE).then(|| &self.all.extras[e as usize])
    }

    fn name(&self, i: u32) -> Option<&'a str> {
        self.all.names.get(i)
    }

    /// The trace it is in.
    pub fn trace(&self) -> Trace<'a> {
        Trace {
            all: self.all,
            index: self.all.trace_of(self.global),
        }
    }

    /// Its index in its trace (spans are numbered by start time, ties by span id).
    pub fn index(&self) -> usize {
        self.global - self.trace().range().start
    }

    /// How deep it is drawn: 0 for top-level spans.
    pub fn depth(&self) -> usize {
        self.all.depth[self.global] as usize
    }

    /// Its parent, when the parent is in the trace.
    pub fn parent(&self) -> Option<Node<'a>> {
        let p = self.all.parent[self.global];
        (p != NONE).then(|| self.all.node_at(p as usize))
    }

    /// Its children, by start time.
    pub fn children(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        let all = self.all;
        all.child_slice(self.global)
            .iter()
            .filter(move |&&c| all.place[c as usize] == Place::Child)
            .map(move |&c| all.node_at(c as usize))
    }

    /// Whether it names a parent that no input contains.
    pub fn parent_missing(&self) -> bool {
        self.place() == Place::Orphan
    }

    /// Whether its parent chain loops back to itself (corrupt input).
    pub fn in_cycle(&self) -> bool {
        self.place() == Place::Cycle
    }

    /// The span id.
    pub fn span_id(&self) -> Id<'a> {
        self.raw().id.id(&self.all.ids)
    }

    /// The parent span id it names (whether or not that span is in the input).
    pub fn parent_span_id(&self) -> Option<Id<'a>> {
        self.raw().parent.map(|p| p.id(&self.all.ids))
    }

    /// The service it ran in.
    pub fn service(&self) -> Option<&'a str> {
        self.name(self.raw().service)
    }

    /// Its operation (the span name).
    pub fn operation(&self) -> Option<&'a str> {
        self.name(self.raw().operation)
    }

    /// Its kind.
    pub fn kind(&self) -> Option<Kind> {
        self.raw().kind
    }

    /// Its status.
    pub fn status(&self) -> Status {
        self.raw().status
    }

    /// The error description, for failed spans.
    pub fn error(&self) -> Option<&'a str> {
        self.extra().and_then(|e| e.error.as_deref())
    }

    /// `error.type`, when recorded.
    pub fn error_type(&self) -> Option<&'a str> {
        self.name(self.raw().error_type)
    }

    /// When it started.
    pub fn start(&self) -> Option<SystemTime> {
        store::time(self.raw().start)
    }

    /// When it ended.
    pub fn end(&self) -> Option<SystemTime> {
        store::time(self.raw().end)
    }

    /// How long it took.
    pub fn duration(&self) -> Option<Duration> {
        self.raw().known_duration().map(Duration::from_nanos)
    }

    /// How long its message waited in a queue before processing (`tracehop.queue_time_ms`).
    pub fn queue_time(&self) -> Option<Duration> {
        self.raw().known_queue().map(Duration::from_nanos)
    }

    /// Which delivery of its message this is (`tracehop.delivery.attempt`).
    pub fn attempt(&self) -> Option<u32> {
        let a = self.raw().attempt;
        (a != NONE).then_some(a)
    }

    /// How many messages a batch span processed (`messaging.batch.message_count`).
    pub fn batch_size(&self) -> Option<u32> {
        let b = self.raw().batch;
        (b != NONE).then_some(b)
    }

    /// `messaging.destination.name`.
    pub fn destination(&self) -> Option<&'a str> {
        self.name(self.raw().destination)
    }

    /// `messaging.system`.
    pub fn messaging_system(&self) -> Option<&'a str> {
        self.name(self.raw().system)
    }

    /// A consumer span: kind consumer, or `messaging.operation.type` process or receive.
    pub fn is_consumer(&self) -> bool {
        self.raw().is_consumer()
    }

    /// A producer span: kind producer, or `messaging.operation.type` send, publish or create.
    pub fn is_send(&self) -> bool {
        self.raw().is_send()
    }

    /// `tracehop.context.missing`: its message carried no trace context.
    pub fn context_missing(&self) -> bool {
        self.raw().has(flag::CONTEXT_MISSING)
    }

    /// `tracehop.context.linked`: it linked the incoming context instead of adopting it.
    pub fn context_linked(&self) -> bool {
        self.raw().has(flag::CONTEXT_LINKED)
    }

    /// `tracehop.context.rejected`: why it rejected its message's context.
    pub fn context_rejected(&self) -> Option<&'a str> {
        self.extra().and_then(|e| e.rejected.as_deref())
    }

    /// Its links to other spans.
    pub fn links(&self) -> impl ExactSizeIterator<Item = SpanLink<'a>> + 'a {
        let all = self.all;
        let links: &'a [Link] = self.extra().map_or(&[], |e| &e.links);
        links.iter().map(move |link| SpanLink { all, link })
    }

    /// Its attributes: every one read with [`Detail::Full`](super::Detail::Full), the ones
    /// verification reads with [`Detail::Lean`](super::Detail::Lean).
    pub fn attributes(&self) -> BTreeMap<String, Value> {
        match self.extra().and_then(|e| e.attributes.as_deref()) {
            Some(raw) => serde_json::from_str(raw).unwrap_or_default(),
            None => store::known_attributes(self.raw(), &self.all.names, self.extra()),
        }
    }

    /// The attributes as JSON object text, when they were kept as read.
    pub(crate) fn raw_attributes(&self) -> Option<&'a str> {
        self.extra().and_then(|e| e.attributes.as_deref())
    }

    /// Its events (as the journal or OTLP input had them; empty with
    /// [`Detail::Lean`](super::Detail::Lean)).
    pub fn events(&self) -> Vec<Value> {
        self.extra()
            .and_then(|e| e.events.as_deref())
            .and_then(|raw| serde_json::from_str(raw).ok())
            .unwrap_or_default()
    }

    /// The span as a [`SpanRecord`].
    pub fn record(&self) -> SpanRecord {
        let s = self.raw();
        SpanRecord {
            timestamp: self.end(),
            event: "span_finished".to_owned(),
            trace_id: self.trace().trace_id().to_string(),
            span_id: self.span_id().to_string(),
            parent_span_id: self.parent_span_id().map(|p| p.to_string()),
            service_name: self.service().map(str::to_owned),
            operation_name: self.operation().map(str::to_owned),
            span_kind: s.kind,
            start_time: self.start(),
            latency_ms: self.duration().map(crate::time::millis_f64),
            duration_ns: s.known_duration(),
            status: s.status,
            error: self.error().map(str::to_owned),
            attributes: self.attributes(),
            links: self
                .extra()
                .map(|e| {
                    e.links
                        .iter()
                        .map(|l| store::link_record(l, &self.all.ids))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A link from a span to another, possibly in another trace or in no input at all.
#[derive(Debug, Clone, Copy)]
pub struct SpanLink<'a> {
    all: &'a Traces,
    link: &'a Link,
}

impl<'a> SpanLink<'a> {
    /// The linked span's trace id.
    pub fn trace_id(&self) -> Id<'a> {
        self.link.trace.id(&self.all.ids)
    }

    /// The linked span's id.
    pub fn span_id(&self) -> Id<'a> {
        self.link.span.id(&self.all.ids)
    }

    /// The linked span, when it is in the input.
    pub fn target(&self) -> Option<Node<'a>> {
        self.all
            .find_key(self.link.trace, self.link.span)
            .map(|g| self.all.node_at(g))
    }

    /// The link's attributes (kept with [`Detail::Full`](super::Detail::Full)).
    pub fn attributes(&self) -> BTreeMap<String, Value> {
        self.link
            .attributes
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default()
    }
}
