//! Instruments bound once per destination, and the caches that hold them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{BoundCounter, BoundHistogram};
use opentelemetry::KeyValue;

use super::{metric_attributes, seconds, with, Metrics};
use crate::messaging::attributes as attr;
use crate::messaging::{Incoming, Outgoing};
use crate::propagation::{ContextSource, Extracted};

/// How many destinations a cache keeps bound instruments for; past that (unbounded
/// subject names without a template), a message of a destination not cached binds its
/// instruments for itself and they are not kept (memory stays bounded; such messages pay
/// the binding each time: give such subjects a destination template).
const MAX_CACHED: usize = 1024;

/// Send instruments per system (a handle may send to several brokers), then destination.
pub(crate) type Sends = Vec<(&'static str, HashMap<Box<str>, Arc<SendBound>>)>;

/// The send instruments of one destination.
pub(crate) struct SendBound {
    attributes: Vec<KeyValue>,
    sent: BoundCounter<u64>,
    duration: BoundHistogram<f64>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SendBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBound")
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

impl SendBound {
    /// A send the broker accepted, after `took`.
    pub(crate) fn ok(&self, took: Duration) {
        self.sent.add(1);
        self.duration.record(seconds(took));
    }

    /// A send that failed with `error_type`, after `took`.
    pub(crate) fn failed(&self, error_type: &str, took: Duration) {
        let attributes = with(
            &self.attributes,
            KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()),
        );
        self.metrics.sent.add(1, &attributes);
        self.metrics.operation.record(seconds(took), &attributes);
    }
}

impl Metrics {
    /// The bound send instruments of `destination` on `system`, if already bound.
    pub(crate) fn cached_send(
        &self,
        system: &'static str,
        destination: &str,
    ) -> Option<Arc<SendBound>> {
        let sends = self.sends.read().unwrap_or_else(|e| e.into_inner());
        sends
            .iter()
            .find(|(s, _)| *s == system)
            .and_then(|(_, map)| map.get(destination).cloned())
    }

    /// Bind the send instruments of the message `msg` describes, and cache them.
    pub(crate) fn bind_send(self: &Arc<Self>, key: &str, msg: &Outgoing<'_>) -> Arc<SendBound> {
        let mut attributes = metric_attributes(
            msg.system,
            msg.name_value
                .as_ref()
                .map_or(msg.destination, |v| v.as_str()),
            msg.template.as_deref(),
            msg.operation_name,
            &msg.attributes,
        );
        let sent = self.sent.bind(&attributes);
        attributes.push(KeyValue::new(
            attr::MESSAGING_OPERATION_TYPE,
            attr::operation_type::SEND,
        ));
        let duration = self.operation.bind(&attributes);
        let bound = Arc::new(SendBound {
            attributes,
            sent,
            duration,
            metrics: self.clone(),
        });
        let mut sends = self.sends.write().unwrap_or_else(|e| e.into_inner());
        let index = match sends.iter().position(|(s, _)| *s == msg.system) {
            Some(i) => i,
            None => {
                sends.push((msg.system, HashMap::new()));
                sends.len() - 1
            }
        };
        let map = &mut sends[index].1;
        if map.len() < MAX_CACHED {
            map.insert(key.into(), bound.clone());
        }
        bound
    }
}

/// The consume instruments of one destination of one consumer.
pub(crate) struct ConsumeBound {
    attributes: Vec<KeyValue>,
    consumed: BoundCounter<u64>,
    process: BoundHistogram<f64>,
    queue_time: BoundHistogram<f64>,
    redeliveries: BoundCounter<u64>,
    missing: BoundCounter<u64>,
    /// `messaging.client.operation.duration` of each settlement seen (`ack`, `commit`).
    settles: Mutex<Vec<(&'static str, BoundHistogram<f64>)>>,
    metrics: Arc<Metrics>,
}

impl ConsumeBound {
    fn bind(metrics: &Arc<Metrics>, msg: &Incoming<'_>) -> ConsumeBound {
        let attributes = metric_attributes(
            msg.system,
            msg.destination_value
                .as_ref()
                .map_or(msg.destination, |v| v.as_str()),
            msg.template.as_ref().map(|t| t.as_str()),
            msg.operation_name,
            &msg.attributes,
        );
        ConsumeBound {
            consumed: metrics.consumed.bind(&attributes),
            process: metrics.process.bind(&attributes),
            queue_time: metrics.queue_time.bind(&attributes),
            redeliveries: metrics.redeliveries.bind(&attributes),
            missing: metrics.missing.bind(&attributes),
            settles: Mutex::default(),
            attributes,
            metrics: metrics.clone(),
        }
    }

    /// A delivery was received, with `extracted` context, sent at `sent` if known.
    pub(crate) fn received(&self, extracted: &Extracted, sent: Option<SystemTime>) {
        self.consumed.add(1);
        if let Some(why) = extracted.rejected {
            let attributes = with(
                &self.attributes,
                KeyValue::new(attr::CONTEXT_REJECTED, why.as_str()),
            );
            self.metrics.rejected.add(1, &attributes);
        } else if extracted.source == ContextSource::None {
            self.missing.add(1);
        }
        if let Some(sent) = extracted.sent_at.or(sent) {
            let waited = SystemTime::now().duration_since(sent).unwrap_or_default();
            self.queue_time.record(seconds(waited));
        }
    }

    /// A run of the handler on delivery attempt `attempt` began.
    pub(crate) fn run(&self, attempt: u32) {
        if attempt > 1 {
            self.redeliveries.add(1);
        }
    }

    /// A run ended after `took`, failed with `error_type` if given.
    pub(crate) fn processed(&self, took: Duration, error_type: Option<&str>) {
        match error_type {
            None => self.process.record(seconds(took)),
            Some(error_type) => self.metrics.process.record(
                seconds(took),
                &with(
                    &self.attributes,
                    KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()),
                ),
            ),
        }
    }

    /// A settlement `label` took `took`; `forwarded`: a broker action (dead letter,
    /// forward, term); `error_type`: it failed.
    pub(crate) fn settled(
        &self,
        label: &'static str,
        took: Duration,
        forwarded: bool,
        error_type: Option<&str>,
    ) {
        if label == "none" {
            return;
        }
        if forwarded && error_type.is_none() {
            let attributes = with(&self.attributes, KeyValue::new(attr::SETTLEMENT, label));
            self.metrics.forwarded.add(1, &attributes);
        }
        if let Some(error_type) = error_type {
            let mut attributes = self.settle_attributes(label);
            attributes.push(KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()));
            self.metrics.operation.record(seconds(took), &attributes);
            return;
        }
        let mut settles = self.settles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = settles.iter().find(|(l, _)| *l == label) {
            h.record(seconds(took));
            return;
        }
        let h = self.metrics.operation.bind(&self.settle_attributes(label));
        h.record(seconds(took));
        settles.push((label, h));
    }

    /// The attributes of a settlement: the operation name is the settlement's.
    fn settle_attributes(&self, label: &'static str) -> Vec<KeyValue> {
        let mut attributes: Vec<KeyValue> = self
            .attributes
            .iter()
            .map(|kv| {
                if kv.key.as_str() == attr::MESSAGING_OPERATION_NAME {
                    KeyValue::new(attr::MESSAGING_OPERATION_NAME, label)
                } else {
                    kv.clone()
                }
            })
            .collect();
        attributes.push(KeyValue::new(
            attr::MESSAGING_OPERATION_TYPE,
            attr::operation_type::SETTLE,
        ));
        attributes
    }
}

/// One consumer's bound instruments per destination (or template).
#[derive(Default)]
pub(crate) struct ConsumeCache {
    map: RwLock<HashMap<Box<str>, Arc<ConsumeBound>>>,
}

impl ConsumeCache {
    /// The instruments of deliveries keyed `key`; `describe` is called only to bind them.
    pub(crate) fn get<'a>(
        &self,
        metrics: &Arc<Metrics>,
        key: &str,
        describe: impl FnOnce() -> Incoming<'a>,
    ) -> Arc<ConsumeBound> {
        if let Some(bound) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return bound.clone();
        }
        let bound = Arc::new(ConsumeBound::bind(metrics, &describe()));
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() < MAX_CACHED {
            map.insert(key.into(), bound.clone());
        }
        bound
    }
}
