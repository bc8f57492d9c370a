//! Stitching spans into one tree per trace: sorted once, parents found by binary search,
//! children in flat arrays, every walk iterative (no recursion on depth).

use std::cmp::Ordering;

use super::store::{Detail, Extra, FxMap, Interner, Span, SpanKey, Spans, TraceKey, NONE, NO_TIME};

/// Spans stitched into one tree per trace, in a deterministic order.
///
/// Traces are ordered by their earliest span's start time (ties by trace id); inside a
/// trace, siblings are ordered by start time (ties by span id). A span whose parent is in
/// no input is drawn at the top level of its trace, after its trace's roots if it starts
/// later. A span seen twice (the same journal given twice) is kept once.
///
/// Spans are kept compact (see [`Detail`]): about 200 bytes a span once stitched, so a
/// million spans fit in a quarter of a gigabyte.
#[derive(Debug, Clone, Default)]
pub struct Traces {
    /// Sorted by trace (in trace order), then start, then span id.
    pub(crate) spans: Vec<Span>,
    pub(crate) extras: Vec<Extra>,
    pub(crate) names: Interner,
    pub(crate) ids: Interner,
    pub(crate) detail: Detail,
    pub(crate) traces: Vec<TraceData>,
    pub(crate) by_key: FxMap<TraceKey, u32>,
    /// Per span: the parent's index when it is in the same trace, else [`NONE`].
    pub(crate) parent: Vec<u32>,
    pub(crate) place: Vec<Place>,
    /// Children of span `i`: `children[child_start[i]..child_start[i + 1]]`, by start.
    pub(crate) child_start: Vec<u32>,
    pub(crate) children: Vec<u32>,
    pub(crate) depth: Vec<u32>,
    /// Pre-order of each trace, trace after trace: parents before children.
    pub(crate) order: Vec<u32>,
    /// Each trace's spans sorted by id, trace after trace (for finding a span by id).
    pub(crate) by_id: Vec<u32>,
    pub(crate) duplicates: usize,
}

/// One trace's place in the arrays.
#[derive(Debug, Clone)]
pub(crate) struct TraceData {
    pub(crate) key: TraceKey,
    /// Its spans are `start..end` (in every per-span array).
    pub(crate) start: u32,
    pub(crate) end: u32,
}

/// How a span hangs in its trace's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A root (no `parent_span_id`).
    Root,
    /// A child of a span in the same trace.
    Child,
    /// Its parent is in no input.
    Orphan,
    /// Its parent chain loops back to itself; drawn at the top to break the loop.
    Cycle,
}

fn cmp_text_or_hex_span(a: SpanKey, b: SpanKey, ids: &Interner) -> Ordering {
    match (a, b) {
        (SpanKey::Hex(x), SpanKey::Hex(y)) => x.cmp(&y),
        (SpanKey::Text(x), SpanKey::Text(y)) if x == y => Ordering::Equal,
        _ => a.id(ids).as_str().cmp(&b.id(ids).as_str()),
    }
}

fn cmp_trace_keys(a: TraceKey, b: TraceKey, ids: &Interner) -> Ordering {
    match (a, b) {
        (TraceKey::Hex(x), TraceKey::Hex(y)) => x.cmp(&y),
        (TraceKey::Text(x), TraceKey::Text(y)) if x == y => Ordering::Equal,
        _ => a.id(ids).as_str().cmp(&b.id(ids).as_str()),
    }
}

/// Sort by trace, start (unknown first), then span id: spans are counted into their
/// traces, each trace's small keys sorted, then the spans are moved into place along the
/// permutation's cycles (no second copy of them).
fn sort_spans(spans: &mut [Span], ids: &Interner, traces: usize) {
    let mut next = vec![0u32; traces + 1];
    for s in spans.iter() {
        next[s.trace as usize + 1] += 1;
    }
    for t in 0..traces {
        next[t + 1] += next[t];
    }
    let bounds = next.clone();
    // NO_TIME is i64::MIN: unknown starts sort first, as `None < Some`.
    let mut keys = vec![(0i64, 0u32); spans.len()];
    for (i, s) in spans.iter().enumerate() {
        let at = &mut next[s.trace as usize];
        keys[*at as usize] = (s.start, i as u32);
        *at += 1;
    }
    for t in 0..traces {
        let trace = &mut keys[bounds[t] as usize..bounds[t + 1] as usize];
        trace.sort_unstable();
        // Ties in start: by span id, as text.
        let mut i = 0;
        while i < trace.len() {
            let mut j = i + 1;
            while j < trace.len() && trace[j].0 == trace[i].0 {
                j += 1;
            }
            if j - i > 1 {
                trace[i..j].sort_by(|a, b| {
                    cmp_text_or_hex_span(spans[a.1 as usize].id, spans[b.1 as usize].id, ids)
                });
            }
            i = j;
        }
    }
    // Position p takes the span now at keys[p].2.
    let mut from: Vec<u32> = keys.into_iter().map(|k| k.1).collect();
    for start in 0..from.len() {
        if from[start] as usize == start {
            continue;
        }
        // Follow the cycle: each position takes the span it should have, once.
        let mut at = start;
        loop {
            let next = from[at] as usize;
            from[at] = at as u32;
            if next == start {
                break;
            }
            spans.swap(at, next);
            at = next;
        }
    }
}

/// Unknown times sort first, as `None < Some`.
fn time_key(t: i64) -> (bool, i64) {
    (t != NO_TIME, t)
}

fn key_order(a: SpanKey, b: SpanKey) -> Ordering {
    match (a, b) {
        (SpanKey::Hex(x), SpanKey::Hex(y)) => x.cmp(&y),
        (SpanKey::Text(x), SpanKey::Text(y)) => x.cmp(&y),
        (SpanKey::Hex(_), SpanKey::Text(_)) => Ordering::Less,
        (SpanKey::Text(_), SpanKey::Hex(_)) => Ordering::Greater,
    }
}

impl Traces {
    /// Stitch `records` (from any number of journals, in any order) into trees: a
    /// `Vec<SpanRecord>` (every detail kept), or [`Spans`] as read.
    pub fn from_records(records: impl Into<Spans>) -> Traces {
        Traces::from_spans(records.into())
    }

    /// Stitch spans read by [`read_files`](super::read_files) (or built with
    /// [`Spans::push_record`]) into trees.
    pub fn from_spans(input: Spans) -> Traces {
        let Spans {
            mut spans,
            extras,
            names,
            ids,
            trace_keys,
            detail,
            ..
        } = input;

        // Trace order: earliest start, then trace id.
        let mut first_start = vec![NO_TIME; trace_keys.len()];
        for s in &spans {
            let f = &mut first_start[s.trace as usize];
            if s.start != NO_TIME && (*f == NO_TIME || s.start < *f) {
                *f = s.start;
            }
        }
        let mut slots: Vec<u32> = (0..trace_keys.len() as u32).collect();
        slots.sort_unstable_by(|&a, &b| {
            time_key(first_start[a as usize])
                .cmp(&time_key(first_start[b as usize]))
                .then_with(|| cmp_trace_keys(trace_keys[a as usize], trace_keys[b as usize], &ids))
        });
        let mut rank = vec![0u32; trace_keys.len()];
        for (r, &slot) in slots.iter().enumerate() {
            rank[slot as usize] = r as u32;
        }
        for s in &mut spans {
            s.trace = rank[s.trace as usize];
        }
        drop(rank);
        drop(first_start);

        sort_spans(&mut spans, &ids, trace_keys.len());
        let before = spans.len();
        // The same span read twice sorts next to itself.
        spans.dedup_by(|a, b| a.trace == b.trace && a.id == b.id && a.start == b.start);
        let mut duplicates = before - spans.len();

        let mut traces = Vec::with_capacity(slots.len());
        let mut by_id;
        loop {
            traces.clear();
            let mut i = 0;
            while i < spans.len() {
                let t = spans[i].trace;
                let start = i;
                while i < spans.len() && spans[i].trace == t {
                    i += 1;
                }
                traces.push(TraceData {
                    key: trace_keys[slots[t as usize] as usize],
                    start: start as u32,
                    end: i as u32,
                });
            }
            by_id = (0..spans.len() as u32).collect::<Vec<u32>>();
            let mut again = Vec::new();
            for t in &traces {
                let slice = &mut by_id[t.start as usize..t.end as usize];
                slice.sort_unstable_by(|&a, &b| {
                    key_order(spans[a as usize].id, spans[b as usize].id).then(a.cmp(&b))
                });
                for w in slice.windows(2) {
                    if spans[w[0] as usize].id == spans[w[1] as usize].id {
                        again.push(w[1]);
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            // Same id, different times: keep the one that starts first.
            duplicates += again.len();
            again.sort_unstable();
            again.dedup();
            let mut k = 0;
            let mut index = 0u32;
            spans.retain(|_| {
                let drop = k < again.len() && again[k] == index;
                if drop {
                    k += 1;
                }
                index += 1;
                !drop
            });
        }
        let by_key = traces
            .iter()
            .enumerate()
            .map(|(i, t)| (t.key, i as u32))
            .collect();

        let n = spans.len();
        let mut parent = vec![NONE; n];
        let mut place = vec![Place::Root; n];
        for t in &traces {
            let ids_sorted = &by_id[t.start as usize..t.end as usize];
            for i in t.start as usize..t.end as usize {
                let Some(p) = spans[i].parent else { continue };
                match ids_sorted.binary_search_by(|&j| key_order(spans[j as usize].id, p)) {
                    Ok(at) => {
                        parent[i] = ids_sorted[at];
                        place[i] = Place::Child;
                    }
                    Err(_) => place[i] = Place::Orphan,
                }
            }
        }

        let mut count = vec![0u32; n + 1];
        for &p in &parent {
            if p != NONE {
                count[p as usize + 1] += 1;
            }
        }
        for i in 0..n {
            count[i + 1] += count[i];
        }
        let child_start = count;
        let mut fill = child_start.clone();
        let mut children = vec![0u32; child_start[n] as usize];
        for (i, &p) in parent.iter().enumerate() {
            if p != NONE {
                children[fill[p as usize] as usize] = i as u32;
                fill[p as usize] += 1;
            }
        }
        drop(fill);

        let mut traces_out = Traces {
            spans,
            extras,
            names,
            ids,
            detail,
            traces,
            by_key,
            parent,
            place,
            child_start,
            children,
            depth: Vec::new(),
            order: Vec::new(),
            by_id,
            duplicates,
        };
        traces_out.walk_all();
        traces_out
    }

    /// Depth and pre-order of every trace; cuts parent loops.
    fn walk_all(&mut self) {
        let n = self.spans.len();
        let mut walker = Walker {
            depth: vec![u32::MAX; n],
            order: Vec::with_capacity(n),
            stack: Vec::new(),
        };
        for t in 0..self.traces.len() {
            let (start, end) = (self.traces[t].start as usize, self.traces[t].end as usize);
            for i in start..end {
                if matches!(self.place[i], Place::Root | Place::Orphan) {
                    walker.walk(i, self);
                }
            }
            // Whatever is left hangs in a loop: cut the loop at its first span (in start
            // order) and walk again.
            for i in start..end {
                if walker.depth[i] == u32::MAX {
                    self.place[i] = Place::Cycle;
                    self.parent[i] = NONE;
                    walker.walk(i, self);
                }
            }
        }
        self.depth = walker.depth;
        self.order = walker.order;
    }

    pub(crate) fn child_slice(&self, i: usize) -> &[u32] {
        &self.children[self.child_start[i] as usize..self.child_start[i + 1] as usize]
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
        self.spans.len()
    }

    /// How many records were dropped because a span with the same trace and span id had
    /// already been seen.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// How much of each span was kept.
    pub fn detail(&self) -> Detail {
        self.detail
    }

    /// The index of the trace with id `trace_id`.
    pub(crate) fn trace_index(&self, trace_id: &str) -> Option<u32> {
        let key = TraceKey::find(trace_id, &self.ids)?;
        self.by_key.get(&key).copied()
    }

    /// The span with `span` in trace `trace`.
    pub(crate) fn find_key(&self, trace: TraceKey, span: SpanKey) -> Option<usize> {
        let t = &self.traces[*self.by_key.get(&trace)? as usize];
        let ids = &self.by_id[t.start as usize..t.end as usize];
        ids.binary_search_by(|&j| key_order(self.spans[j as usize].id, span))
            .ok()
            .map(|at| ids[at] as usize)
    }

    /// Which trace span `i` is in.
    pub(crate) fn trace_of(&self, i: usize) -> usize {
        self.spans[i].trace as usize
    }
}

struct Walker {
    depth: Vec<u32>,
    order: Vec<u32>,
    stack: Vec<(u32, u32)>,
}

impl Walker {
    /// Depth-first from `top`, recording each span's depth and the pre-order.
    fn walk(&mut self, top: usize, traces: &Traces) {
        self.stack.push((top as u32, 0));
        while let Some((i, d)) = self.stack.pop() {
            if self.depth[i as usize] != u32::MAX {
                continue;
            }
            self.depth[i as usize] = d;
            self.order.push(i);
            for &c in traces.child_slice(i as usize).iter().rev() {
                if traces.place[c as usize] == Place::Child {
                    self.stack.push((c, d + 1));
                }
            }
        }
    }
}
