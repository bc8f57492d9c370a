//! One trace's summary: slowest span, self time per service, queue time, critical path.

use std::collections::BTreeMap;
use std::time::Duration;

use super::node::Trace;
use super::timing::CriticalPath;

impl Trace<'_> {
    /// Slowest span, time per service, queue time and critical path.
    pub fn summary(&self) -> Summary {
        self.summary_with(&self.self_times(), &self.critical_path(), true)
    }

    /// [`summary`](Self::summary) from self times and a critical path already computed;
    /// without `path_ids`, [`Summary::critical_path`] is left empty (the text tree writes
    /// the path from `path` itself).
    pub(crate) fn summary_with(
        &self,
        self_times: &[Duration],
        path: &CriticalPath,
        path_ids: bool,
    ) -> Summary {
        let mut slowest: Option<(usize, Duration)> = None;
        let mut queue_time = Duration::ZERO;
        let mut queued = 0;
        let mut longest_queue: Option<(usize, Duration)> = None;
        for node in self.nodes() {
            if let Some(d) = node.duration() {
                if slowest.is_none_or(|(_, best)| d > best) {
                    slowest = Some((node.index(), d));
                }
            }
            if let Some(q) = node.queue_time() {
                queue_time += q;
                queued += 1;
                if longest_queue.is_none_or(|(_, l)| q > l) {
                    longest_queue = Some((node.index(), q));
                }
            }
        }
        let mut per_service: BTreeMap<&str, Duration> = BTreeMap::new();
        for node in self.by_start() {
            if let Some(service) = node.service() {
                *per_service.entry(service).or_default() += self_times[node.index()];
            }
        }
        let mut service_times: Vec<ServiceTime> = per_service
            .into_iter()
            .map(|(service, self_time)| ServiceTime {
                service: service.to_owned(),
                self_time,
            })
            .collect();
        // Most time first; ties by name (already sorted by name, and the sort is stable).
        service_times.sort_by_key(|s| std::cmp::Reverse(s.self_time));
        let id = |i: usize| self.node(i).span_id().to_string();
        Summary {
            spans: self.len(),
            services: self.services().into_iter().map(str::to_owned).collect(),
            duration: self.duration(),
            slowest: slowest.map(|(i, d)| (id(i), d)),
            service_times,
            queue_time,
            queued_messages: queued,
            longest_queue: longest_queue.map(|(i, d)| (id(i), d)),
            critical_path: if path_ids {
                path.spans().into_iter().map(id).collect()
            } else {
                Vec::new()
            },
            critical_path_duration: path.duration(),
            critical_path_waiting: path.waiting(),
        }
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
    /// The spans on the blocking critical path ([`Trace::critical_path`]), each once, in
    /// the order the run reached them.
    pub critical_path: Vec<String>,
    /// How long the critical path is: from its first step to the end of the span that
    /// ended last.
    pub critical_path_duration: Duration,
    /// How much of the critical path was waiting (queues, back-off).
    pub critical_path_waiting: Duration,
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
