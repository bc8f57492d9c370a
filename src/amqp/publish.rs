//! Publishing: one send span per `basic_publish`, ended when the broker has the message.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use lapin::types::FieldTable;

use super::frame::{header_frame_len, DEFAULT_FRAME_MAX};
use super::{error_type, DEFAULT_EXCHANGE};
use crate::messaging::attributes as attr;
use crate::messaging::Sending;
use crate::{Outgoing, SendSpan, Telemetry};

/// A lapin [`Channel`] whose publishes are traced.
///
/// [`basic_publish`](Self::basic_publish) takes the same arguments as
/// [`Channel::basic_publish`]: it opens a send span (a child of the current context),
/// writes the span's context into the message's headers next to yours, and publishes.
/// Cheap to clone; clones share the channel.
///
/// Context is added only if the message's header frame stays within the connection's
/// `frame_max` (RabbitMQ closes the whole connection over a frame that is too large):
/// otherwise the message is published exactly as the plain client would publish it, and
/// the send span says `tracehop.context.dropped=frame_max`. lapin does not tell a channel
/// its connection's `frame_max`; [`DEFAULT_FRAME_MAX`](super::DEFAULT_FRAME_MAX)
/// (RabbitMQ's default) is assumed unless [`frame_max`](Self::frame_max) says otherwise.
#[derive(Clone)]
pub struct TracedChannel {
    channel: Channel,
    telemetry: Telemetry,
    frame_max: u32,
}

impl fmt::Debug for TracedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedChannel")
            .field("channel", &self.channel.id())
            .field("service", &self.telemetry.service_name())
            .finish()
    }
}

impl TracedChannel {
    /// Trace the publishes made on `channel` as service `telemetry`.
    pub fn new(channel: Channel, telemetry: Telemetry) -> TracedChannel {
        TracedChannel {
            channel,
            telemetry,
            frame_max: DEFAULT_FRAME_MAX,
        }
    }

    /// The connection's negotiated `frame_max`, for a broker that negotiates another than
    /// RabbitMQ's default: `.frame_max(connection.configuration().frame_max())`.
    pub fn frame_max(mut self, frame_max: u32) -> TracedChannel {
        self.frame_max = frame_max;
        self
    }

    /// The wrapped channel, for everything that is not a publish.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The telemetry handle the spans are recorded with.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Publish a message, traced. Arguments and errors are those of
    /// [`Channel::basic_publish`].
    ///
    /// The send span is named `publish <exchange>` (`amq.default` for the default
    /// exchange) and carries the routing key, the body size and, when set, the message and
    /// correlation ids. The context headers are added to `properties.headers` as long
    /// strings; every header you set is sent unchanged, type included.
    ///
    /// On a channel with publisher confirms, the span ends when the returned
    /// [`PublishConfirm`] resolves: an ack ends it successfully, a nack or a returned
    /// (unroutable, `mandatory`) message ends it as an error. Without confirms it ends as
    /// soon as the message is handed to the connection.
    ///
    /// The span opens when the future is first polled, as a child of the context current
    /// then (so `.with_context(cx)` on the future sets its parent).
    pub fn basic_publish<'a>(
        &'a self,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: &'a [u8],
        properties: BasicProperties,
    ) -> impl Future<Output = lapin::Result<PublishConfirm>> + Send + 'a {
        Sending::new(move || {
            let destination = match exchange.as_str() {
                "" => DEFAULT_EXCHANGE,
                name => name,
            };
            let mut headers = properties.headers().clone().unwrap_or_default();
            let name = super::publish_name(exchange.as_str(), routing_key.as_str());
            // The hooks read the user's headers as given (the context is not in them yet).
            let target = crate::messaging::Target {
                system: attr::system::RABBITMQ,
                destination: &name,
                headers: properties
                    .headers()
                    .as_ref()
                    .map(|h| h as &dyn crate::propagation::ReadCarrier),
            };
            let span = self
                .telemetry
                .send_span_lazy(None, &mut headers, false, target, || {
                    let mut msg = Outgoing::new(attr::system::RABBITMQ, destination)
                        .operation_name("publish");
                    msg.push(
                        crate::messaging::attributes::MESSAGING_MESSAGE_BODY_SIZE,
                        payload.len() as i64,
                    );
                    if *name != *destination {
                        msg.name_value = Some(name.clone().into_owned().into());
                    }
                    super::with_routing(&mut msg, &routing_key, &name, &properties);
                    msg
                });
            let (properties, dropped) = with_context(properties, headers, self.frame_max);
            if dropped {
                span.set_attribute(attr::CONTEXT_DROPPED, "frame_max");
            }
            let channel = &self.channel;
            let publish =
                channel.basic_publish(exchange, routing_key, options, payload, properties);
            let end = move |published: lapin::Result<PublisherConfirm>| {
                let confirm = match published {
                    Ok(confirm) => confirm,
                    Err(e) => {
                        span.end_with_error(error_type(&e), &e);
                        return Err(e);
                    }
                };
                let context = span.context().clone();
                let span = if channel.status().confirm() {
                    Some(span)
                } else {
                    span.end();
                    None
                };
                Ok(PublishConfirm {
                    confirm,
                    span,
                    context,
                })
            };
            (publish, end)
        })
    }
}

/// `properties` with `headers` (the user's headers plus the context) in place of its
/// headers, unless the header frame would then exceed `frame_max`: then `properties` as
/// they are, and `true`. Properties without headers get a table only if something was
/// written.
fn with_context(
    properties: BasicProperties,
    headers: FieldTable,
    frame_max: u32,
) -> (BasicProperties, bool) {
    if headers.inner().is_empty() && properties.headers().is_none() {
        return (properties, false);
    }
    let limit = usize::try_from(frame_max).unwrap_or(usize::MAX);
    // 0: the broker set no limit.
    if frame_max > 0 && header_frame_len(&properties, Some(&headers)) > limit {
        return (properties, true);
    }
    (properties.with_headers(headers), false)
}

/// The broker's answer to a traced publish: lapin's [`PublisherConfirm`], which also ends
/// the send span when it resolves.
///
/// Await it as you would the lapin future. Dropping it unawaited ends the span at once,
/// with no status (lapin then still lets
/// [`Channel::wait_for_confirms`] collect the answer).
#[must_use = "await the confirm to learn whether the broker accepted the message"]
pub struct PublishConfirm {
    confirm: PublisherConfirm,
    span: Option<SendSpan>,
    context: opentelemetry::Context,
}

impl PublishConfirm {
    /// The context of the message's send span: its trace id and span id are what the
    /// message carries (`context().span().span_context()`), for logging the trace of what
    /// was just published.
    pub fn context(&self) -> &opentelemetry::Context {
        &self.context
    }

    /// The span context the message carries.
    pub fn span_context(&self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::TraceContextExt as _;
        self.context.span().span_context().clone()
    }
}

impl fmt::Debug for PublishConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishConfirm")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl Future for PublishConfirm {
    type Output = lapin::Result<Confirmation>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match Pin::new(&mut self.confirm).poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        if let Some(span) = self.span.take() {
            end_send_span(span, &result);
        }
        Poll::Ready(result)
    }
}

/// End a send span with what the broker said about the message.
fn end_send_span(span: SendSpan, result: &lapin::Result<Confirmation>) {
    match result {
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => span.end(),
        Ok(Confirmation::Ack(Some(returned))) => span.end_with_error(
            "returned",
            &format_args!(
                "returned by the broker: {} {}",
                returned.reply_code, returned.reply_text
            ),
        ),
        Ok(Confirmation::Nack(_)) => span.end_with_error("nack", &"the broker nacked the message"),
        Err(e) => span.end_with_error(error_type(e), e),
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::BasicProperties;

    use super::with_context;
    use crate::amqp::frame::header_frame_len;

    fn table(entries: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        t
    }

    #[test]
    fn context_is_added_up_to_frame_max_and_not_a_byte_over() {
        let user = BasicProperties::default()
            .with_headers(table(&[("big", &"x".repeat(1000))]))
            .with_correlation_id("c-1".into());
        let merged = table(&[("big", &"x".repeat(1000)), ("x-added", "00-ab-cd-01")]);
        let exact = header_frame_len(&user, Some(&merged)) as u32;

        let (out, dropped) = with_context(user.clone(), merged.clone(), exact);
        assert!(!dropped);
        assert_eq!(out.headers().as_ref(), Some(&merged));
        assert_eq!(out.correlation_id(), user.correlation_id());

        let (out, dropped) = with_context(user.clone(), merged.clone(), exact - 1);
        assert!(dropped);
        assert_eq!(out, user, "exactly the user's message");

        let (out, dropped) = with_context(user.clone(), merged, 0);
        assert!(!dropped, "no limit");
        assert!(out
            .headers()
            .as_ref()
            .is_some_and(|h| h.contains_key("x-added")));

        // Nothing written, no headers before: no empty table is added.
        let (bare, dropped) = with_context(BasicProperties::default(), FieldTable::default(), 0);
        assert!(bare.headers().is_none() && !dropped);
    }
}
