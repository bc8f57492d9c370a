//! Where a trace's time went: self time per span and the blocking critical path, both
//! in O(n log n) whatever the trace's shape (a chain of 200,000 spans included).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::node::Trace;
use super::store::{self, Span, NONE};
use super::tree::Place;

impl<'a> Trace<'a> {
    /// Every span's self time, by [`Node::index`](super::Node::index): its duration minus
    /// the part of it that its subtree covers (every descendant span, and the time each
    /// descendant process span's message waited in a queue). Waiting for downstream work
    /// is not work. When its start is unknown, its duration minus its children's
    /// durations. Never negative.
    pub fn self_times(&self) -> Vec<Duration> {
        let all = self.all;
        let range = self.range();
        let base = range.start;
        // Each span's coverage (its own interval, widened by its queue wait, and its
        // subtree's), as disjoint intervals start -> end; the largest child's set is
        // reused (small into large), and intervals inside a span's own interval are
        // absorbed once measured, so each interval is measured once.
        let mut sets: Vec<Coverage> = (0..range.len()).map(|_| Coverage::Empty).collect();
        let mut out = vec![Duration::ZERO; range.len()];
        for &g in all.order[range.clone()].iter().rev() {
            let g = g as usize;
            let span = &all.spans[g];
            let mut set = Coverage::Empty;
            let mut child_durations = 0u64;
            for &c in all.child_slice(g) {
                let c = c as usize;
                if all.place[c] != Place::Child {
                    continue;
                }
                child_durations =
                    child_durations.saturating_add(all.spans[c].known_duration().unwrap_or(0));
                let mut more = std::mem::take(&mut sets[c - base]);
                if more.len() > set.len() {
                    std::mem::swap(&mut set, &mut more);
                }
                more.drain_into(&mut set);
            }
            out[g - base] = match (span.known_duration(), span.known_start()) {
                (None, _) => Duration::ZERO,
                (Some(d), None) => Duration::from_nanos(d.saturating_sub(child_durations)),
                (Some(d), Some(s)) => {
                    let covered = set.measure(s, s.saturating_add(d as i64));
                    Duration::from_nanos(d.saturating_sub(covered))
                }
            };
            if let Some(s) = span.known_start() {
                let e = s.saturating_add(span.known_duration().unwrap_or(0) as i64);
                let q = s.saturating_sub(span.known_queue().unwrap_or(0) as i64);
                set.insert(q, e);
            }
            sets[g - base] = set;
        }
        out
    }

    /// The blocking critical path: what the run waited for, from its first span to the
    /// span that ends last.
    ///
    /// It starts at the span that ends last (in an async run the root often ends first)
    /// and walks back: inside a span, to the descendant that finished last before the
    /// current point, then on from that descendant's start; when nothing in a span
    /// finished before the point, through the span's own time to its start, and on to its
    /// parent (for a process span: the send span that delivered its message, with the time
    /// the message waited in between). Time covered by no span on the way (a queue wait, a
    /// retry's back-off) is a waiting step.
    pub fn critical_path(&self) -> CriticalPath {
        let steps = blocking_path(self);
        CriticalPath {
            steps: steps
                .into_iter()
                .rev()
                .filter_map(|(span, from, to, waiting)| {
                    Some(PathStep {
                        index: span - self.range().start,
                        from: store::time(from)?,
                        to: store::time(to)?,
                        waiting,
                    })
                })
                .collect(),
        }
    }
}

/// Disjoint intervals: most subtrees' coverage is one interval, kept without allocating.
#[derive(Debug, Default)]
enum Coverage {
    #[default]
    Empty,
    One(i64, i64),
    Many(BTreeMap<i64, i64>),
}

impl Coverage {
    fn len(&self) -> usize {
        match self {
            Coverage::Empty => 0,
            Coverage::One(..) => 1,
            Coverage::Many(m) => m.len(),
        }
    }

    fn insert(&mut self, s: i64, e: i64) {
        if s >= e {
            return;
        }
        match self {
            Coverage::Empty => *self = Coverage::One(s, e),
            Coverage::One(a, b) if s <= *b && *a <= e => {
                *self = Coverage::One(s.min(*a), e.max(*b))
            }
            Coverage::One(a, b) => {
                let mut m = BTreeMap::new();
                m.insert(*a, *b);
                insert(&mut m, s, e);
                *self = Coverage::Many(m);
            }
            Coverage::Many(m) => insert(m, s, e),
        }
    }

    fn measure(&self, s: i64, e: i64) -> u64 {
        match self {
            Coverage::Empty => 0,
            Coverage::One(a, b) => (e.min(*b) - s.max(*a)).max(0) as u64,
            Coverage::Many(m) => measure(m, s, e),
        }
    }

    fn drain_into(self, other: &mut Coverage) {
        match self {
            Coverage::Empty => {}
            Coverage::One(a, b) => other.insert(a, b),
            Coverage::Many(m) => {
                for (a, b) in m {
                    other.insert(a, b);
                }
            }
        }
    }
}

/// Add `[s, e)` to disjoint intervals, merging what it overlaps or touches.
fn insert(set: &mut BTreeMap<i64, i64>, mut s: i64, mut e: i64) {
    if s >= e {
        return;
    }
    while let Some((&ps, &pe)) = set.range(..=e).next_back() {
        if pe < s {
            break;
        }
        s = s.min(ps);
        e = e.max(pe);
        set.remove(&ps);
    }
    set.insert(s, e);
}

/// How much of `[s, e)` the intervals cover.
fn measure(set: &BTreeMap<i64, i64>, s: i64, e: i64) -> u64 {
    let mut covered = 0u64;
    for (&ps, &pe) in set.range(..e).rev() {
        if pe <= s {
            break;
        }
        covered += (pe.min(e) - ps.max(s)).max(0) as u64;
    }
    covered
}

/// One stretch of a critical path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStep {
    /// The span (its [`Node::index`](super::Node::index)); for a waiting step, the span
    /// that waited (a process span whose message sat in a queue).
    pub index: usize,
    /// When the stretch starts.
    pub from: SystemTime,
    /// When it ends.
    pub to: SystemTime,
    /// Whether nothing ran: the span's message waited in a queue, or a retry backed off.
    pub waiting: bool,
}

impl PathStep {
    /// How long the stretch is.
    pub fn duration(&self) -> Duration {
        self.to.duration_since(self.from).unwrap_or_default()
    }
}

/// The blocking critical path of a trace ([`Trace::critical_path`]), oldest step first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriticalPath {
    /// The stretches, in time order; a span can appear in several (before and after what
    /// it waited for).
    pub steps: Vec<PathStep>,
}

impl CriticalPath {
    /// The spans on the path, each once, in the order they first appear.
    pub fn spans(&self) -> Vec<usize> {
        let mut seen = vec![false; self.steps.iter().map(|s| s.index + 1).max().unwrap_or(0)];
        self.steps
            .iter()
            .map(|s| s.index)
            .filter(|&i| !std::mem::replace(&mut seen[i], true))
            .collect()
    }

    /// From the path's first step to its last.
    pub fn duration(&self) -> Duration {
        match (self.steps.first(), self.steps.last()) {
            (Some(a), Some(b)) => b.to.duration_since(a.from).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// How much of it was waiting.
    pub fn waiting(&self) -> Duration {
        self.steps
            .iter()
            .filter(|s| s.waiting)
            .map(PathStep::duration)
            .sum()
    }

    /// Whether the path has no steps (no span has both times).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Max-segment tree over the pre-order positions of one trace: which present span ends
/// last (ties: starts last, then comes last in tree order) in a range of positions.
struct Latest {
    size: usize,
    tree: Vec<u32>,
    keys: Vec<(i64, i64, u32)>,
}

impl Latest {
    fn new(keys: Vec<(i64, i64, u32)>) -> Latest {
        let size = keys.len().next_power_of_two().max(1);
        let mut tree = vec![NONE; 2 * size];
        for (p, k) in keys.iter().enumerate() {
            if k.0 != store::NO_TIME {
                tree[size + p] = p as u32;
            }
        }
        let mut l = Latest { size, tree, keys };
        for i in (1..size).rev() {
            l.tree[i] = l.best(l.tree[2 * i], l.tree[2 * i + 1]);
        }
        l
    }

    fn best(&self, a: u32, b: u32) -> u32 {
        match (a, b) {
            (NONE, x) | (x, NONE) => x,
            (a, b) => {
                if self.keys[a as usize] >= self.keys[b as usize] {
                    a
                } else {
                    b
                }
            }
        }
    }

    fn remove(&mut self, p: usize) {
        let mut i = self.size + p;
        self.tree[i] = NONE;
        while i > 1 {
            i /= 2;
            self.tree[i] = self.best(self.tree[2 * i], self.tree[2 * i + 1]);
        }
    }

    /// The best present position in `l..r`.
    fn query(&self, l: usize, r: usize) -> Option<usize> {
        let (mut l, mut r) = (l + self.size, r + self.size);
        let mut best = NONE;
        while l < r {
            if l & 1 == 1 {
                best = self.best(best, self.tree[l]);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                best = self.best(best, self.tree[r]);
            }
            l /= 2;
            r /= 2;
        }
        (best != NONE).then_some(best as usize)
    }
}

/// Steps (global span, from, to, waiting), newest first.
fn blocking_path(trace: &Trace<'_>) -> Vec<(usize, i64, i64, bool)> {
    let all = trace.all;
    let range = trace.range();
    let order = &all.order[range.clone()];
    let n = order.len();
    // Pre-order position of each span, and the size of each subtree.
    let mut pos = vec![0u32; n];
    for (p, &g) in order.iter().enumerate() {
        pos[g as usize - range.start] = p as u32;
    }
    // By pre-order position.
    let mut size = vec![1u32; n];
    for p in (0..n).rev() {
        let parent = all.parent[order[p] as usize];
        if parent != NONE {
            size[pos[parent as usize - range.start] as usize] += size[p];
        }
    }
    let span = |p: usize| -> &Span { &all.spans[order[p] as usize] };
    let keys: Vec<(i64, i64, u32)> = (0..n)
        .map(|p| {
            let s = span(p);
            match (s.known_start(), s.known_end()) {
                (Some(start), Some(end)) => (end, start, p as u32),
                _ => (store::NO_TIME, store::NO_TIME, p as u32),
            }
        })
        .collect();
    // Spans by end, latest first: as the point moves back, those ending after it leave.
    let mut by_end: Vec<usize> = (0..n).filter(|&p| keys[p].0 != store::NO_TIME).collect();
    by_end.sort_unstable_by(|&a, &b| keys[b].cmp(&keys[a]));
    let mut latest = Latest::new(keys);
    let Some(first) = latest.query(0, n) else {
        return Vec::new();
    };
    let mut gone = 0;
    let mut steps = Vec::new();
    let end_of = |p: usize| span(p).end;
    // A stretch [from, to) of span `p`, newest part first: past the span's end it is
    // waiting, charged to `waiter` (the span we came back from).
    // `end`: where the span's own work stops counting: its end, or, for a send span whose
    // broker acknowledgement ended it after the delivery had started, when the message
    // left (the delivery's queue time before it), so the queue wait stays a wait; such a
    // send stays on the path even if nothing of it is left.
    let section = |steps: &mut Vec<(usize, i64, i64, bool)>,
                   p: usize,
                   from: i64,
                   to: i64,
                   waiter: usize,
                   (end, keep): (i64, bool)| {
        let wait_from = from.max(end);
        if wait_from < to {
            steps.push((order[waiter] as usize, wait_from, to, true));
        }
        let work_to = to.min(end);
        if from < work_to || keep && from == work_to {
            steps.push((order[p] as usize, from, work_to, false));
        }
    };
    let (mut cur, mut t) = (first, end_of(first));
    latest.remove(first);
    let mut used = vec![false; n];
    used[first] = true;
    let mut waiter = first;
    loop {
        while gone < by_end.len() && end_of(by_end[gone]) > t {
            latest.remove(by_end[gone]);
            gone += 1;
        }
        // Back at a send span from a delivery of its message: what the delivery waited
        // for is the message (and an earlier attempt by the same consumer), not whatever
        // else consumed it (a fan-out's other consumers).
        let delivered = waiter != cur
            && span(cur).is_send()
            && span(waiter).is_consumer()
            && all.parent[order[waiter] as usize] == order[cur];
        let blocker = if delivered {
            let service = span(waiter).service;
            all.child_slice(order[cur] as usize)
                .iter()
                .map(|&c| pos[c as usize - range.start] as usize)
                .filter(|&c| {
                    let s = span(c);
                    !used[c]
                        && c != waiter
                        && s.is_consumer()
                        && s.service == service
                        && s.known_end().is_some_and(|e| e <= t)
                })
                .max_by_key(|&c| (span(c).end, span(c).start, c))
        } else {
            latest.query(cur + 1, cur + size[cur] as usize)
        };
        if let Some(d) = blocker {
            section(&mut steps, cur, end_of(d), t, waiter, (end_of(cur), false));
            latest.remove(d);
            used[d] = true;
            (cur, t, waiter) = (d, end_of(d), d);
            continue;
        }
        let start = span(cur).known_start().unwrap_or(t).min(t);
        let late_ack = delivered && end_of(cur) > t;
        let work_end = if late_ack {
            let queued = i64::try_from(span(waiter).queue).unwrap_or(i64::MAX);
            t.saturating_sub(queued).clamp(start, t)
        } else {
            end_of(cur)
        };
        section(&mut steps, cur, start, t, waiter, (work_end, late_ack));
        t = start;
        let parent = all.parent[order[cur] as usize];
        if parent != NONE {
            waiter = cur;
            cur = pos[parent as usize - range.start] as usize;
            continue;
        }
        // A top-level span: on to whatever else in the trace ended before it started.
        while gone < by_end.len() && end_of(by_end[gone]) > t {
            latest.remove(by_end[gone]);
            gone += 1;
        }
        let Some(d) = latest.query(0, n) else { break };
        if end_of(d) < t {
            steps.push((order[cur] as usize, end_of(d), t, true));
        }
        latest.remove(d);
        used[d] = true;
        (cur, t, waiter) = (d, end_of(d), d);
    }
    steps
}
