//! How an adapter describes a message to the core.

use std::cell::RefCell;
use std::time::SystemTime;

use opentelemetry::{KeyValue, StringValue, Value};

use super::attributes as attr;

/// The builder methods [`Outgoing`] and [`Incoming`] share: written once.
macro_rules! shared_builders {
    ($default:literal, $operation:literal) => {
        #[doc = concat!("The system-specific operation name (", $default, ").")]
        pub fn operation_name(mut self, name: &'static str) -> Self {
            self.operation_name = name;
            self
        }

        #[doc = concat!(
            "The destination exists only for this exchange (a reply inbox, a server-named ",
            "queue): sets `messaging.destination.temporary`, and the span is named after the ",
            "operation alone (`", $operation, "`), as the conventions ask, since the ",
            "destination's name would make span names unbounded. `messaging.destination.name` ",
            "still holds it."
        )]
        pub fn temporary(mut self) -> Self {
            self.temporary = true;
            self.attribute(attr::MESSAGING_DESTINATION_TEMPORARY, true)
        }

        /// The size of the message body in bytes.
        pub fn body_size(self, bytes: usize) -> Self {
            self.attribute(attr::MESSAGING_MESSAGE_BODY_SIZE, bytes as i64)
        }

        /// The message id, where the system has one.
        pub fn message_id(self, id: impl Into<Value>) -> Self {
            self.attribute(attr::MESSAGING_MESSAGE_ID, id)
        }

        /// Any further attribute.
        pub fn attribute(mut self, key: &'static str, value: impl Into<Value>) -> Self {
            self.push(key, value);
            self
        }

        /// [`attribute`](Self::attribute) in place: the adapters' helpers add several
        /// without moving the whole description for each.
        pub(crate) fn push(&mut self, key: &'static str, value: impl Into<Value>) {
            self.attributes.push(KeyValue::new(key, value));
        }

        /// The destination (topic, subject, queue, exchange).
        pub fn destination(&self) -> &'a str {
            self.destination
        }

        /// The adapter's attributes followed by the four every messaging span has
        /// (system, destination, operation type and name), for a span of `operation_type`.
        pub(crate) fn span_attributes(&mut self, operation_type: &'static str) -> Vec<KeyValue> {
            let mut attributes = std::mem::take(&mut self.attributes);
            let name = match self.name_value() {
                Some(name) => name.clone(),
                None => super::names::value(self.destination),
            };
            super::push_common_attributes(
                &mut attributes,
                self.system,
                name,
                operation_type,
                self.operation_name,
            );
            attributes
        }
    };
}

/// Adding attributes to a message description of either direction, for adapters' helpers
/// that describe both.
#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
pub(crate) trait Describe {
    /// [`Outgoing::attribute`] / [`Incoming::attribute`], in place (their own `push`).
    fn push(&mut self, key: &'static str, value: impl Into<Value>);
}

impl Describe for Outgoing<'_> {
    fn push(&mut self, key: &'static str, value: impl Into<Value>) {
        Self::push(self, key, value);
    }
}

impl Describe for Incoming<'_> {
    fn push(&mut self, key: &'static str, value: impl Into<Value>) {
        Self::push(self, key, value);
    }
}

/// How a consumer relates its process span to the context a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ParentPolicy {
    /// The process span is a child of the producer's send span (the default: one message,
    /// one trace).
    #[default]
    Child,
    /// The process span starts a new trace and links to the producer's span. Use at trust
    /// boundaries: an untrusted producer cannot choose your trace id or sampling decision.
    Link,
}

/// An outgoing message, as an adapter describes it to [`Telemetry::send_span`].
///
/// [`Telemetry::send_span`]: crate::Telemetry::send_span
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub(crate) system: &'static str,
    pub(crate) destination: &'a str,
    pub(crate) operation_name: &'static str,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) temporary: bool,
    /// The template the destination is named by (a hook's), for the span name and metrics.
    pub(crate) template: Option<String>,
    /// `messaging.destination.name` when it is not `destination` (RabbitMQ's
    /// `{exchange}:{routing_key}`; the span is still named after `destination`).
    pub(crate) name_value: Option<StringValue>,
}

/// Room for the attributes of a description, and so of its span: a process span's are
/// the adapter's (up to 11, a JetStream delivery with a message id) and the core's (5 or 6
/// on a delivery with context, up to 9), plus the settlement; a send span's fewer (the
/// adapter's up to 6, the core's 4, the partition, offset or stream sequence learnt at the
/// end). Allocated once, and reused (see [`recycle_attributes`]). Not more: 18 attributes
/// are the largest block glibc's per-thread cache keeps (a larger vector costs some 800
/// instructions more per message to allocate and free).
const ATTRIBUTES: usize = 18;
/// How many emptied attribute vectors a thread keeps.
const SPARE_KEEP: usize = 8;

thread_local! {
    /// Attribute vectors of spans the journal wrote on this thread, emptied, for the next
    /// descriptions made here: a recorded message then allocates and frees none.
    static SPARE: RefCell<Vec<Vec<KeyValue>>> = const { RefCell::new(Vec::new()) };
}

/// An empty vector for a description's attributes, with room for [`ATTRIBUTES`].
fn attribute_vec() -> Vec<KeyValue> {
    SPARE
        .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(ATTRIBUTES))
}

/// Give a finished span's attributes back, emptied, for the next description on this
/// thread (only a vector of the size descriptions make is kept).
pub(crate) fn recycle_attributes(mut attributes: Vec<KeyValue>) {
    if !(ATTRIBUTES..=2 * ATTRIBUTES).contains(&attributes.capacity()) {
        return;
    }
    attributes.clear();
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARE_KEEP {
                spare.push(attributes);
            }
        }
    });
}

impl<'a> Outgoing<'a> {
    fn name_value(&self) -> Option<&StringValue> {
        self.name_value.as_ref()
    }

    /// A message to `destination` (topic, subject, exchange) on `system`
    /// (see [`attributes::system`](super::attributes::system)).
    pub fn new(system: &'static str, destination: &'a str) -> Self {
        Outgoing {
            system,
            destination,
            operation_name: "send",
            attributes: attribute_vec(),
            temporary: false,
            template: None,
            name_value: None,
        }
    }

    /// Name the destination by `template` (`orders.*`): sets
    /// `messaging.destination.template`, names the span after it and records metrics per
    /// template rather than per concrete destination.
    pub fn destination_template(mut self, template: impl Into<String>) -> Self {
        let template = template.into();
        self.attributes.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_TEMPLATE,
            template.clone(),
        ));
        self.template = Some(template);
        self
    }

    shared_builders!(
        "`send` by default; `publish` for NATS and RabbitMQ",
        "publish"
    );
}

/// An incoming message, as an adapter describes it to [`Telemetry::process_span`].
///
/// [`Telemetry::process_span`]: crate::Telemetry::process_span
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub(crate) system: &'static str,
    pub(crate) destination: &'a str,
    pub(crate) operation_name: &'static str,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) policy: ParentPolicy,
    pub(crate) enqueued_at: Option<SystemTime>,
    /// The process span's `messaging.destination.name`, as a value the adapter already
    /// holds (shared, so the span does not copy the name again): the destination's text
    /// (NATS), or longer (RabbitMQ's `exchange:routing key:queue`). Span names are made
    /// from `destination` (or the template), never from this.
    pub(crate) destination_value: Option<StringValue>,
    pub(crate) temporary: bool,
    /// The subscription's pattern, named in the span instead of the destination.
    pub(crate) template: Option<StringValue>,
    /// Which delivery this is (`tracehop.delivery.attempt`).
    pub(crate) attempt: Option<u32>,
}

impl<'a> Incoming<'a> {
    shared_builders!("`process` by default", "process");

    fn name_value(&self) -> Option<&StringValue> {
        self.destination_value.as_ref()
    }

    /// A message from `destination` on `system`.
    pub fn new(system: &'static str, destination: &'a str) -> Self {
        Incoming {
            system,
            destination,
            operation_name: "process",
            attributes: attribute_vec(),
            policy: ParentPolicy::Child,
            enqueued_at: None,
            destination_value: None,
            temporary: false,
            template: None,
            attempt: None,
        }
    }

    /// A message from `destination`, whose text the adapter also holds as `value` (the
    /// same name, shared rather than copied for `messaging.destination.name`).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn with_destination_value(
        system: &'static str,
        destination: &'a str,
        value: StringValue,
    ) -> Self {
        let mut msg = Incoming::new(system, destination);
        msg.destination_value = Some(value);
        msg
    }

    /// The pattern the consumer subscribed with (`orders.*`): sets
    /// `messaging.destination.template`, and the span is named after it (`process
    /// orders.*`) rather than the concrete destination, as the conventions ask, so
    /// wildcard subscriptions keep span names bounded.
    pub fn destination_template(mut self, template: impl Into<StringValue>) -> Self {
        self.set_template(template.into());
        self
    }

    /// [`destination_template`](Self::destination_template) in place.
    pub(crate) fn set_template(&mut self, template: StringValue) {
        if self.template.is_some() {
            self.attributes
                .retain(|kv| kv.key.as_str() != attr::MESSAGING_DESTINATION_TEMPLATE);
        }
        self.template = Some(template.clone());
        self.push(attr::MESSAGING_DESTINATION_TEMPLATE, template);
    }

    /// How to relate to the message's context.
    pub fn parent_policy(mut self, policy: ParentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Which delivery of the message this is, counting from 1. Without it, a process span
    /// records the attempt the message's `tracehop-attempt` header carries, if any.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// When the broker stored the message; used for queue time when the producer did not
    /// write `tracehop-sent-at`.
    pub fn enqueued_at(mut self, at: SystemTime) -> Self {
        self.enqueued_at = Some(at);
        self
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;

    use super::{attribute_vec, recycle_attributes, Incoming, Outgoing, ATTRIBUTES, SPARE_KEEP};

    /// A finished span's vector comes back empty to the next description on the thread
    /// (the same allocation), a vector of another size is not kept, and the spare list
    /// stays bounded.
    #[test]
    fn attribute_vectors_are_reused_empty_and_bounded() {
        // Whatever this test thread holds from before: take it.
        super::SPARE.with(|s| s.borrow_mut().clear());
        assert!(attribute_vec().capacity() >= ATTRIBUTES);
        let mut used = Incoming::new("nats", "jobs").body_size(5).attributes;
        used.push(KeyValue::new("x", "y"));
        let at = used.as_ptr();
        recycle_attributes(used);
        let next = Outgoing::new("nats", "jobs").body_size(7);
        assert_eq!(next.attributes.as_ptr(), at, "the same vector, reused");
        assert_eq!(next.attributes.len(), 1, "emptied: only the new body size");
        assert_eq!(next.attributes[0].value, opentelemetry::Value::I64(7));

        recycle_attributes(Vec::with_capacity(4));
        recycle_attributes(Vec::with_capacity(ATTRIBUTES * 4));
        assert!(
            super::SPARE.with(|s| s.borrow().is_empty()),
            "odd sizes are not kept"
        );

        for _ in 0..SPARE_KEEP * 2 {
            recycle_attributes(Vec::with_capacity(ATTRIBUTES));
        }
        assert_eq!(super::SPARE.with(|s| s.borrow().len()), SPARE_KEEP);
    }
}
