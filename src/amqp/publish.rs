//! Publishing: one send span per `basic_publish`, ended when the broker has the message.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use super::{carrier, error_type, DEFAULT_EXCHANGE};
use crate::messaging::attributes as attr;
use crate::{Outgoing, SendSpan, Telemetry};

/// A lapin [`Channel`] whose publishes are traced.
///
/// [`basic_publish`](Self::basic_publish) takes the same arguments as
/// [`Channel::basic_publish`]: it opens a send span (a child of the current context),
/// writes the span's context into the message's headers next to yours, and publishes.
/// Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct TracedChannel {
    channel: Channel,
    telemetry: Telemetry,
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
        TracedChannel { channel, telemetry }
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
    pub async fn basic_publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<PublishConfirm> {
        let destination = match exchange.as_str() {
            "" => DEFAULT_EXCHANGE,
            name => name,
        };
        let mut msg = Outgoing::new(attr::system::RABBITMQ, destination)
            .operation_name("publish")
            .body_size(payload.len());
        msg = super::with_routing(msg, &routing_key, &properties);

        let (properties, span) =
            carrier::with_headers(properties, |headers| self.telemetry.send_span(msg, headers));
        let confirm = match self
            .channel
            .basic_publish(exchange, routing_key, options, payload, properties)
            .await
        {
            Ok(confirm) => confirm,
            Err(e) => {
                span.end_with_error(error_type(&e), &e);
                return Err(e);
            }
        };
        let context = span.context().clone();
        let span = if self.channel.status().confirm() {
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
    }
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
