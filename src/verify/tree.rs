//! Stitching span records into one tree per trace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::journal::SpanRecord;
use crate::messaging::attributes as attr;

/// Spans stitched into one tree per trace, in a deterministic order.
///
/// Traces are ordered by their earliest span's start time (ties by trace id); inside a
/// trace, siblings are ordered by start time (ties by span id). A span whose parent is in
/// no input is drawn at the top level of its trace, after its trace's roots if it starts
/// later. A span seen twice (the same journal given twice) is kept once.
#[derive(Debug, Clone, Default)]
pub struct Traces {
    traces: Vec<Trace>,
    by_id: HashMap<String, usize>,
    duplicates: usize,
}

impl Traces {
    /// Stitch `records` (from any number of journals, in any order) into trees.
    pub fn from_records(records: Vec<SpanRecord>) -> Traces {
        let mut by_trace: BTreeMap<String, Vec<SpanRecord>> = BTreeMap::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut duplicates = 0;
        for record in records {
            let key = (record.trace_id.clone(), record.span_id.clone());
            if !seen.insert(key) {
                duplicates += 1;
                continue;
            }
            by_trace
                .entry(record.trace_id.clone())
                .or_default()
                .push(record);
        }
        let mut traces: Vec<Trace> = by_trace
            .into_iter()
            .map(|(id, spans)| Trace::build(id, spans))
            .collect();
        traces.sort_by(|a, b| (a.first_start(), &a.trace_id).cmp(&(b.first_start(), &b.trace_id)));
        let by_id = traces
            .iter()
            .enumerate()
            .map(|(i, t)| (t.trace_id.clone(), i))
            .collect();
        Traces {
            traces,
            by_id,
            duplicates,
        }
    }

    /// The traces, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Trace> {
        self.traces.iter()
    }

    /// The trace with id `trace_id`.
    pub fn get(&self, trace_id: &str) -> Option<&Trace> {
        self.by_id.get(trace_id).map(|&i| &self.traces[i])
    }

    /// How many traces there are.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// Whether there are no traces at all.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// How many spans there are, across all traces.
    pub fn span_count(&self) -> usize {
        self.traces.iter().map(Trace::len).sum()
    }

    /// How many records were dropped because a span with the same trace and span id had
    /// already been seen.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }
}

impl<'a> IntoIterator for &'a Traces {
    type Item = &'a Trace;
    type IntoIter = std::slice::Iter<'a, Trace>;
    fn into_iter(self) -> Self::IntoIter {
        self.traces.iter()
    }
}

/// How a span hangs in its trace's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A root (`parent_span_id` is empty).
    Root,
    /// A child of a span in the same trace.
    Child(usize),
    /// Its parent is in no input.
    Orphan,
    /// Its parent chain loops back to itself; drawn at the top to break the loop.
    Cycle,
}

/// Depth-first from `top`, recording each span's depth and the pre-order.
fn walk(children: &[Vec<usize>], top: usize, depth: &mut [usize], order: &mut Vec<usize>) {
    let mut stack = vec![(top, 0usize)];
    while let Some((i, d)) = stack.pop() {
        if depth[i] != usize::MAX {
            continue;
        }
        depth[i] = d;
        order.push(i);
        for &c in children[i].iter().rev() {
            stack.push((c, d + 1));
        }
    }
}

/// One trace: its spans and how they hang together.
#[derive(Debug, Clone)]
pub struct Trace {
    trace_id: String,
    /// Sorted by (start, span id).
    spans: Vec<SpanRecord>,
    place: Vec<Place>,
    children: Vec<Vec<usize>>,
    depth: Vec<usize>,
    /// Pre-order: every span once, parents before children.
    order: Vec<usize>,
    /// Span id to index in `spans`.
    index: HashMap<String, usize>,
}

impl Trace {
    fn build(trace_id: String, mut spans: Vec<SpanRecord>) -> Trace {
        spans.sort_by(|a, b| (a.start(), &a.span_id).cmp(&(b.start(), &b.span_id)));
        let index: HashMap<String, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id.clone(), i))
            .collect();
        let mut place: Vec<Place> = spans
            .iter()
            .map(|s| match s.parent_span_id.as_deref() {
                None => Place::Root,
                Some(p) => match index.get(p) {
                    Some(&i) => Place::Child(i),
                    None => Place::Orphan,
                },
            })
            .collect();
        let n = spans.len();
        let mut children = vec![Vec::new(); n];
        for (i, p) in place.iter().enumerate() {
            if let Place::Child(parent) = p {
                children[*parent].push(i);
            }
        }
        // Walk from every top-level span; whatever is left hangs in a loop: cut the loop at
        // its first span (in order) and walk again.
        let mut depth = vec![usize::MAX; n];
        let mut order = Vec::with_capacity(n);
        let tops: Vec<usize> = (0..n)
            .filter(|&i| matches!(place[i], Place::Root | Place::Orphan))
            .collect();
        for i in tops {
            walk(&children, i, &mut depth, &mut order);
        }
        while let Some(i) = (0..n).find(|&i| depth[i] == usize::MAX) {
            if let Place::Child(parent) = place[i] {
                children[parent].retain(|&c| c != i);
            }
            place[i] = Place::Cycle;
            walk(&children, i, &mut depth, &mut order);
        }
        Trace {
            trace_id,
            spans,
            place,
            children,
            depth,
            order,
            index,
        }
    }

    fn first_start(&self) -> Option<SystemTime> {
        self.spans.iter().filter_map(SpanRecord::start).min()
    }

    /// The trace id.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// How many spans the trace has.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the trace has no spans (never true for a trace built from records).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The spans, ordered by start time (ties by span id); [`Node::index`] indexes this.
    pub fn spans(&self) -> &[SpanRecord] {
        &self.spans
    }

    /// The span at `index` in [`spans`](Self::spans) as a tree node.
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn node(&self, index: usize) -> Node<'_> {
        assert!(index < self.spans.len(), "span index {index} out of range");
        Node { trace: self, index }
    }

    /// The span with id `span_id`.
    pub fn find(&self, span_id: &str) -> Option<Node<'_>> {
        self.index
            .get(span_id)
            .map(|&index| Node { trace: self, index })
    }

    /// Every span in tree order: each top-level span followed by its descendants, depth
    /// first, siblings by start time.
    pub fn nodes(&self) -> impl Iterator<Item = Node<'_>> + '_ {
        self.order.iter().map(|&index| Node { trace: self, index })
    }

    /// The spans drawn at the top level: roots, spans whose parent is in no input, and
    /// (in corrupt input) a span cut out of a parent loop.
    pub fn tops(&self) -> impl Iterator<Item = Node<'_>> + '_ {
        self.nodes().filter(|n| n.depth() == 0)
    }

    /// The root spans: those with no `parent_span_id`. A whole trace has exactly one.
    pub fn roots(&self) -> impl Iterator<Item = Node<'_>> + '_ {
        self.nodes().filter(|n| self.place[n.index] == Place::Root)
    }

    /// The chain from the top of the tree down to the span at `index`, top first, ending
    /// with that span.
    pub fn ancestry(&self, index: usize) -> Vec<Node<'_>> {
        let mut chain = vec![self.node(index)];
        let mut at = index;
        while let Place::Child(parent) = self.place[at] {
            chain.push(Node {
                trace: self,
                index: parent,
            });
            at = parent;
        }
        chain.reverse();
        chain
    }

    /// The services that appear in the trace, sorted by name.
    pub fn services(&self) -> Vec<&str> {
        let mut services: Vec<&str> = self
            .spans
            .iter()
            .filter_map(|s| s.service_name.as_deref())
            .collect();
        services.sort_unstable();
        services.dedup();
        services
    }

    /// From the earliest start to the latest end of any span, when times are known.
    pub fn duration(&self) -> Option<Duration> {
        let start = self.first_start()?;
        let end = self.spans.iter().filter_map(end_time).max()?;
        Some(end.duration_since(start).unwrap_or_default())
    }

    /// Slowest span, time per service, queue time and critical path.
    pub fn summary(&self) -> Summary {
        let slowest = self
            .order
            .iter()
            .filter_map(|&i| Some((i, self.spans[i].duration()?)))
            .fold(None, |best: Option<(usize, Duration)>, (i, d)| match best {
                Some((_, bd)) if bd >= d => best,
                _ => Some((i, d)),
            });

        let mut per_service: BTreeMap<String, Duration> = BTreeMap::new();
        for i in 0..self.spans.len() {
            let Some(service) = &self.spans[i].service_name else {
                continue;
            };
            *per_service.entry(service.clone()).or_default() += self.self_time(i);
        }
        let mut service_times: Vec<ServiceTime> = per_service
            .into_iter()
            .map(|(service, self_time)| ServiceTime { service, self_time })
            .collect();
        // Most time first; ties by name (already sorted by name, and the sort is stable).
        service_times.sort_by_key(|s| std::cmp::Reverse(s.self_time));

        let mut queue_time = Duration::ZERO;
        let mut queued = 0;
        let mut longest_queue: Option<(usize, Duration)> = None;
        for &i in &self.order {
            if let Some(q) = queue_time_of(&self.spans[i]) {
                queue_time += q;
                queued += 1;
                if longest_queue.is_none_or(|(_, l)| q > l) {
                    longest_queue = Some((i, q));
                }
            }
        }

        Summary {
            spans: self.spans.len(),
            services: self.services().into_iter().map(str::to_owned).collect(),
            duration: self.duration(),
            slowest: slowest.map(|(i, d)| (self.spans[i].span_id.clone(), d)),
            service_times,
            queue_time,
            queued_messages: queued,
            longest_queue: longest_queue.map(|(i, d)| (self.spans[i].span_id.clone(), d)),
            critical_path: self
                .critical_path()
                .into_iter()
                .map(|i| self.spans[i].span_id.clone())
                .collect(),
        }
    }

    /// A span's self time: its duration minus the part of it that its subtree covers
    /// (every descendant span, and the time each descendant process span's message
    /// waited in a queue). Waiting for downstream work is not work. When start times are
    /// unknown, its duration minus its children's durations. Never negative.
    pub fn self_time(&self, index: usize) -> Duration {
        let span = &self.spans[index];
        let Some(duration) = span.duration() else {
            return Duration::ZERO;
        };
        let children = &self.children[index];
        let Some(start) = span.start() else {
            let sum: Duration = children
                .iter()
                .filter_map(|&c| self.spans[c].duration())
                .sum();
            return duration.saturating_sub(sum);
        };
        let end = start + duration;
        // What happened further down this span's subtree is not this span's own time:
        // the union of every descendant's interval, and of the time each descendant
        // process span's message waited in a queue, clipped to [start, end]. A parent
        // that waits for downstream work (an agent awaiting a tool's answer over a queue)
        // is waiting, not working.
        let mut intervals: Vec<(SystemTime, SystemTime)> = Vec::new();
        let mut stack: Vec<usize> = children.clone();
        while let Some(c) = stack.pop() {
            stack.extend(self.children[c].iter().copied());
            let span = &self.spans[c];
            let Some(s) = span.start() else { continue };
            let queued = span
                .attribute("tracehop.queue_time_ms")
                .and_then(|v| v.as_f64())
                .filter(|ms| ms.is_finite() && *ms > 0.0)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                .unwrap_or_default();
            let e = s + span.duration().unwrap_or_default();
            let s = s.checked_sub(queued).unwrap_or(s);
            let (s, e) = (s.max(start), e.min(end));
            if s < e {
                intervals.push((s, e));
            }
        }
        intervals.sort();
        let mut covered = Duration::ZERO;
        let mut current: Option<(SystemTime, SystemTime)> = None;
        for (s, e) in intervals {
            current = match current {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    covered += ce.duration_since(cs).unwrap_or_default();
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = current {
            covered += ce.duration_since(cs).unwrap_or_default();
        }
        duration.saturating_sub(covered)
    }

    /// From the first root (or first top-level span), repeatedly the child whose work
    /// ends last: the child whose subtree has the latest end. (A send span ends at once;
    /// what it started, the process span under it, is what the run waits for.)
    fn critical_path(&self) -> Vec<usize> {
        // Latest end in each subtree; `order` is pre-order, so walk it backwards.
        let mut subtree_end: Vec<Option<SystemTime>> = self.spans.iter().map(end_time).collect();
        for &i in self.order.iter().rev() {
            for &c in &self.children[i] {
                subtree_end[i] = subtree_end[i].max(subtree_end[c]);
            }
        }
        let first = self
            .roots()
            .next()
            .or_else(|| self.tops().next())
            .map(|n| n.index);
        let mut path = Vec::new();
        let mut at = first;
        while let Some(i) = at {
            path.push(i);
            let key = |c: usize| (subtree_end[c], self.spans[c].duration());
            at = self.children[i]
                .iter()
                .copied()
                .fold(None, |best: Option<usize>, c| match best {
                    Some(b) if key(b) >= key(c) => Some(b),
                    _ => Some(c),
                });
        }
        path
    }
}

/// A span in its trace's tree.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    trace: &'a Trace,
    index: usize,
}

impl<'a> Node<'a> {
    /// The span.
    pub fn span(&self) -> &'a SpanRecord {
        &self.trace.spans[self.index]
    }

    /// Its index in [`Trace::spans`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// How deep it is drawn: 0 for top-level spans.
    pub fn depth(&self) -> usize {
        self.trace.depth[self.index]
    }

    /// Its parent, when the parent is in the trace.
    pub fn parent(&self) -> Option<Node<'a>> {
        match self.trace.place[self.index] {
            Place::Child(index) => Some(Node {
                trace: self.trace,
                index,
            }),
            _ => None,
        }
    }

    /// Its children, by start time.
    pub fn children(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        let trace = self.trace;
        trace.children[self.index]
            .iter()
            .map(move |&index| Node { trace, index })
    }

    /// Whether it names a parent that no input contains.
    pub fn parent_missing(&self) -> bool {
        self.trace.place[self.index] == Place::Orphan
    }

    /// Whether its parent chain loops back to itself (corrupt input).
    pub fn in_cycle(&self) -> bool {
        self.trace.place[self.index] == Place::Cycle
    }

    /// Its self time (see [`Trace::self_time`]).
    pub fn self_time(&self) -> Duration {
        self.trace.self_time(self.index)
    }
}

/// Where a trace's time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// How many spans the trace has.
    pub spans: usize,
    /// The services in the trace, sorted by name.
    pub services: Vec<String>,
    /// From the earliest start to the latest end, when times are known.
    pub duration: Option<Duration>,
    /// The span that took longest, and how long.
    pub slowest: Option<(String, Duration)>,
    /// Self time per service (durations minus time covered by descendant spans and their
    /// queue waits), most first.
    /// Queue time is in no service's self time.
    pub service_times: Vec<ServiceTime>,
    /// Total time messages spent in queues before being processed.
    pub queue_time: Duration,
    /// How many process spans recorded a queue time.
    pub queued_messages: usize,
    /// The process span whose message waited longest, and how long.
    pub longest_queue: Option<(String, Duration)>,
    /// Span ids from the root down, each the child whose subtree ended last.
    pub critical_path: Vec<String>,
}

impl Summary {
    /// The service that added the most self time.
    pub fn busiest_service(&self) -> Option<&ServiceTime> {
        self.service_times.first()
    }
}

/// Self time added by one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTime {
    /// The service.
    pub service: String,
    /// The sum of its spans' self times.
    pub self_time: Duration,
}

/// When a span ended: `timestamp`, else start plus duration.
pub(crate) fn end_time(span: &SpanRecord) -> Option<SystemTime> {
    span.timestamp
        .or_else(|| Some(span.start()? + span.duration()?))
}

/// The queue time a process span recorded.
pub(crate) fn queue_time_of(span: &SpanRecord) -> Option<Duration> {
    let ms = span.attribute(attr::QUEUE_TIME_MS)?.as_f64()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
}
