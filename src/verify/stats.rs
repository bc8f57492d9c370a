//! Statistics across many traces: per pathway (producer service → destination → consumer
//! service) how many messages, how long they queued and took, how often they failed, were
//! retried or lost their context; per service its self time.

use std::time::Duration;

use super::node::Node;
use super::store::{FxMap, NONE};
use super::tree::Traces;
use crate::journal::Status;

/// What [`Traces::stats`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// How many traces.
    pub traces: usize,
    /// How many spans.
    pub spans: usize,
    /// Per pathway, most messages first.
    pub pathways: Vec<Pathway>,
    /// Per service, most self time first.
    pub services: Vec<ServiceStats>,
}

/// Messages from one producer service to one destination, processed by one consumer
/// service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pathway {
    /// The service that sent (`None`: unknown, the consumer lost the context and several
    /// services send to the destination).
    pub producer: Option<String>,
    /// `messaging.destination.name`.
    pub destination: Option<String>,
    /// The service that processed (`None`: no consumer span in the input).
    pub consumer: Option<String>,
    /// How many messages (send spans, or deliveries with no send span to point to).
    pub messages: usize,
    /// How many deliveries (process spans; a retried message has several).
    pub deliveries: usize,
    /// Time in queue per delivery: `tracehop.queue_time_ms`, else from the send span's
    /// start to the delivery's start.
    pub queue_time: Distribution,
    /// Processing time per delivery (the process span's duration).
    pub processing_time: Distribution,
    /// Deliveries that ended in error.
    pub errors: usize,
    /// Deliveries that were not the first attempt (`tracehop.delivery.attempt` > 1).
    pub retries: usize,
    /// Deliveries whose consumer started a new trace (no context, rejected context, or
    /// no parent and no link to the send span).
    pub broken_context: usize,
}

impl Pathway {
    fn rate(&self, n: usize) -> f64 {
        if self.deliveries == 0 {
            0.0
        } else {
            n as f64 / self.deliveries as f64
        }
    }

    /// Share of deliveries that failed, 0 to 1.
    pub fn error_rate(&self) -> f64 {
        self.rate(self.errors)
    }

    /// Share of deliveries that were retries.
    pub fn retry_rate(&self) -> f64 {
        self.rate(self.retries)
    }

    /// Share of deliveries whose context broke.
    pub fn broken_context_rate(&self) -> f64 {
        self.rate(self.broken_context)
    }
}

/// Percentiles of a set of durations (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Distribution {
    /// How many values.
    pub count: usize,
    /// The median.
    pub p50: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest.
    pub max: Duration,
}

impl Distribution {
    /// The percentiles of `values` (sorted here).
    pub fn of(mut values: Vec<Duration>) -> Distribution {
        values.sort_unstable();
        let at = |p: f64| {
            let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[rank - 1]
        };
        if values.is_empty() {
            return Distribution::default();
        }
        Distribution {
            count: values.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// One service's work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStats {
    /// The service.
    pub service: String,
    /// How many spans it recorded.
    pub spans: usize,
    /// The sum of its spans' self times (waiting for others is not in it).
    pub self_time: Duration,
    /// Its share of all services' self time, 0 to 1.
    pub share: f64,
    /// Self time per span.
    pub per_span: Distribution,
}

/// A pathway as name numbers (producer, destination, consumer; `NONE` for unknown).
type Key = (u32, u32, u32);

#[derive(Default)]
struct Acc {
    sends: std::collections::HashSet<u32, std::hash::BuildHasherDefault<super::store::FxHasher>>,
    broken_messages: usize,
    deliveries: usize,
    queue: Vec<Duration>,
    processing: Vec<Duration>,
    errors: usize,
    retries: usize,
    broken: usize,
}

impl Acc {
    fn merge(&mut self, other: Acc) {
        self.sends.extend(other.sends);
        self.broken_messages += other.broken_messages;
        self.deliveries += other.deliveries;
        self.queue.extend(other.queue);
        self.processing.extend(other.processing);
        self.errors += other.errors;
        self.retries += other.retries;
        self.broken += other.broken;
    }
}

/// What one share of the traces adds up to.
struct Part {
    pathways: FxMap<Key, Acc>,
    /// Per service name: spans and their self times.
    services: Vec<(usize, Vec<Duration>)>,
    /// Send spans (global index) that some delivery in this share came from.
    delivered: Vec<u32>,
}

impl Traces {
    /// Statistics across every trace.
    pub fn stats(&self) -> Stats {
        let continuations = self.continuations();
        // Which services send to each destination (to name the producer of a delivery
        // that lost its context): the one service, or NONE for several.
        let mut producer_of: FxMap<u32, u32> = FxMap::default();
        for span in self.spans.iter().filter(|s| s.is_send()) {
            if span.destination != NONE && span.service != NONE {
                let p = producer_of.entry(span.destination).or_insert(span.service);
                if *p != span.service {
                    *p = NONE;
                }
            }
        }
        // The traces in a share per core, each share about as many spans.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let per = self.span_count().div_ceil(workers).max(1);
        let mut shares: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut from, mut spans) = (0, 0);
        for t in 0..self.len() {
            spans += self.trace(t).len();
            if spans >= per {
                shares.push(from..t + 1);
                (from, spans) = (t + 1, 0);
            }
        }
        if from < self.len() {
            shares.push(from..self.len());
        }
        let (continuations, producer_of) = (&continuations, &producer_of);
        let parts: Vec<Part> = std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .into_iter()
                .map(|share| {
                    scope.spawn(move || self.stats_part(share, continuations, producer_of))
                })
                .collect();
            crate::verify::join_all(handles)
        });
        let mut pathways: FxMap<Key, Acc> = FxMap::default();
        let mut services: Vec<(usize, Vec<Duration>)> = Vec::new();
        let mut delivered = vec![false; self.spans.len()];
        for part in parts {
            for (key, acc) in part.pathways {
                pathways.entry(key).or_default().merge(acc);
            }
            if services.len() < part.services.len() {
                services.resize_with(part.services.len(), Default::default);
            }
            for (i, (n, times)) in part.services.into_iter().enumerate() {
                services[i].0 += n;
                services[i].1.extend(times);
            }
            for s in part.delivered {
                delivered[s as usize] = true;
            }
        }
        // Messages sent that no consumer in the input processed.
        for (g, span) in self.spans.iter().enumerate() {
            if span.is_send() && !delivered[g] {
                let key = (span.service, span.destination, NONE);
                pathways.entry(key).or_default().sends.insert(g as u32);
            }
        }
        let name = |i: u32| self.names.get(i).map(str::to_owned);
        let mut pathways: Vec<Pathway> = pathways
            .into_iter()
            .map(|((producer, destination, consumer), acc)| Pathway {
                producer: name(producer),
                destination: name(destination),
                consumer: name(consumer),
                messages: acc.sends.len() + acc.broken_messages,
                deliveries: acc.deliveries,
                queue_time: Distribution::of(acc.queue),
                processing_time: Distribution::of(acc.processing),
                errors: acc.errors,
                retries: acc.retries,
                broken_context: acc.broken,
            })
            .collect();
        // Most messages first; ties by name.
        pathways.sort_by(|a, b| {
            (
                std::cmp::Reverse(a.messages),
                &a.producer,
                &a.destination,
                &a.consumer,
            )
                .cmp(&(
                    std::cmp::Reverse(b.messages),
                    &b.producer,
                    &b.destination,
                    &b.consumer,
                ))
        });
        let total: Duration = services.iter().flat_map(|(_, v)| v.iter()).sum();
        let mut services: Vec<ServiceStats> = services
            .into_iter()
            .enumerate()
            .filter(|(_, (spans, _))| *spans > 0)
            .filter_map(|(i, (spans, times))| {
                let self_time: Duration = times.iter().sum();
                Some(ServiceStats {
                    service: name(i as u32)?,
                    spans,
                    self_time,
                    share: if total.is_zero() {
                        0.0
                    } else {
                        self_time.as_secs_f64() / total.as_secs_f64()
                    },
                    per_span: Distribution::of(times),
                })
            })
            .collect();
        services.sort_by(|a, b| {
            (std::cmp::Reverse(a.self_time), &a.service)
                .cmp(&(std::cmp::Reverse(b.self_time), &b.service))
        });
        Stats {
            traces: self.len(),
            spans: self.span_count(),
            pathways,
            services,
        }
    }

    /// The pathways and service times of the traces in `share`.
    fn stats_part(
        &self,
        share: std::ops::Range<usize>,
        continuations: &super::Continuations<'_>,
        producer_of: &FxMap<u32, u32>,
    ) -> Part {
        let mut part = Part {
            pathways: FxMap::default(),
            services: Vec::new(),
            delivered: Vec::new(),
        };
        for t in share {
            let trace = self.trace(t);
            let self_times = trace.self_times();
            for node in trace.by_start() {
                let s = node.raw().service;
                if s == NONE {
                    continue;
                }
                if part.services.len() <= s as usize {
                    part.services.resize_with(s as usize + 1, Default::default);
                }
                part.services[s as usize].0 += 1;
                part.services[s as usize].1.push(self_times[node.index()]);
            }
            let continued = continuations.continues(trace.index()).is_some();
            for consumer in trace
                .by_start()
                .filter(|n| n.is_consumer() && n.batch_size().is_none())
            {
                let Some((send, broken)) = delivery(&consumer, continued) else {
                    continue;
                };
                let destination = match consumer.raw().destination {
                    NONE => send.map_or(NONE, |s| s.raw().destination),
                    d => d,
                };
                let producer = match send {
                    Some(s) => s.raw().service,
                    None => producer_of.get(&destination).copied().unwrap_or(NONE),
                };
                let key = (producer, destination, consumer.raw().service);
                let acc = part.pathways.entry(key).or_default();
                match send {
                    Some(s) => {
                        part.delivered.push(s.global() as u32);
                        acc.sends.insert(s.global() as u32);
                    }
                    None => acc.broken_messages += 1,
                }
                acc.deliveries += 1;
                let queue = consumer.queue_time().or_else(|| {
                    let (sent, started) = (send?.start()?, consumer.start()?);
                    Some(started.duration_since(sent).unwrap_or_default())
                });
                acc.queue.extend(queue);
                acc.processing.extend(consumer.duration());
                acc.errors += usize::from(consumer.status() == Status::Error);
                acc.retries += usize::from(consumer.attempt().is_some_and(|a| a > 1));
                acc.broken += usize::from(broken);
            }
        }
        part
    }
}

/// Whether `consumer` is a delivery: the send span that delivered it (if in the input)
/// and whether its context broke. `None`: not a delivery of its own (a span under a
/// receive span, say, that links nothing).
fn delivery<'a>(consumer: &Node<'a>, continued: bool) -> Option<(Option<Node<'a>>, bool)> {
    if let Some(parent) = consumer.parent().filter(Node::is_send) {
        return Some((Some(parent), false));
    }
    if let Some(send) = consumer
        .links()
        .filter_map(|l| l.target())
        .find(Node::is_send)
    {
        return Some((Some(send), false));
    }
    let broken = consumer.context_missing()
        || consumer.context_rejected().is_some()
        || (consumer.depth() == 0
            && !continued
            && consumer.links().len() == 0
            && !super::rules::received_nothing(consumer));
    broken.then_some((None, true))
}
