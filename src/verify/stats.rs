//! Statistics across many traces: per pathway (producer service → destination → consumer
//! service) how many messages, how long they queued and took, how often they failed, were
//! retried or lost their context; per service its self time.

use std::collections::BTreeMap;
use std::time::Duration;

use super::node::Node;
use super::store::FxMap;
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

type Key = (Option<String>, Option<String>, Option<String>);

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

impl Traces {
    /// Statistics across every trace.
    pub fn stats(&self) -> Stats {
        let continuations = self.continuations();
        // Which services send to each destination (to name the producer of a delivery
        // that lost its context).
        let mut producers: FxMap<&str, Vec<&str>> = FxMap::default();
        for trace in self.iter() {
            for send in trace.by_start().filter(Node::is_send) {
                if let (Some(d), Some(s)) = (send.destination(), send.service()) {
                    let list = producers.entry(d).or_default();
                    if !list.contains(&s) {
                        list.push(s);
                    }
                }
            }
        }
        let mut pathways: BTreeMap<Key, Acc> = BTreeMap::new();
        let mut delivered = vec![false; self.spans.len()];
        let mut services: BTreeMap<&str, (usize, Vec<Duration>)> = BTreeMap::new();
        for trace in self.iter() {
            let self_times = trace.self_times();
            for node in trace.by_start() {
                if let Some(s) = node.service() {
                    let e = services.entry(s).or_default();
                    e.0 += 1;
                    e.1.push(self_times[node.index()]);
                }
            }
            let continued = continuations.continues(trace.index()).is_some();
            for consumer in trace
                .by_start()
                .filter(|n| n.is_consumer() && n.batch_size().is_none())
            {
                let Some((send, broken)) = delivery(&consumer, continued) else {
                    continue;
                };
                let destination = consumer
                    .destination()
                    .or_else(|| send.and_then(|s| s.destination()));
                let producer = match send {
                    Some(s) => s.service(),
                    None => destination
                        .and_then(|d| producers.get(d))
                        .filter(|p| p.len() == 1)
                        .map(|p| p[0]),
                };
                let key = (
                    producer.map(str::to_owned),
                    destination.map(str::to_owned),
                    consumer.service().map(str::to_owned),
                );
                let acc = pathways.entry(key).or_default();
                match send {
                    Some(s) => {
                        delivered[s.global()] = true;
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
        // Messages sent that no consumer in the input processed.
        for trace in self.iter() {
            for send in trace
                .by_start()
                .filter(|n| n.is_send() && !delivered[n.global()])
            {
                let key = (
                    send.service().map(str::to_owned),
                    send.destination().map(str::to_owned),
                    None,
                );
                pathways
                    .entry(key)
                    .or_default()
                    .sends
                    .insert(send.global() as u32);
            }
        }
        let mut pathways: Vec<Pathway> = pathways
            .into_iter()
            .map(|((producer, destination, consumer), acc)| Pathway {
                producer,
                destination,
                consumer,
                messages: acc.sends.len() + acc.broken_messages,
                deliveries: acc.deliveries,
                queue_time: Distribution::of(acc.queue),
                processing_time: Distribution::of(acc.processing),
                errors: acc.errors,
                retries: acc.retries,
                broken_context: acc.broken,
            })
            .collect();
        pathways.sort_by_key(|p| std::cmp::Reverse(p.messages));
        let total: Duration = services.values().flat_map(|(_, v)| v.iter()).sum();
        let mut services: Vec<ServiceStats> = services
            .into_iter()
            .map(|(service, (spans, times))| {
                let self_time: Duration = times.iter().sum();
                ServiceStats {
                    service: service.to_owned(),
                    spans,
                    self_time,
                    share: if total.is_zero() {
                        0.0
                    } else {
                        self_time.as_secs_f64() / total.as_secs_f64()
                    },
                    per_span: Distribution::of(times),
                }
            })
            .collect();
        services.sort_by_key(|s| std::cmp::Reverse(s.self_time));
        Stats {
            traces: self.len(),
            spans: self.span_count(),
            pathways,
            services,
        }
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
