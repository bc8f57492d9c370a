//! JetStream consumers as a source for the one consume loop: each delivery, redeliveries
//! included, is its own process span carrying the server's delivery count, acked after
//! success and settled by the failure policy after an error.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::message::{Acker, Info};
use async_nats::jetstream::{self, AckKind};
use futures_util::{Stream, StreamExt as _};
use opentelemetry::Context;

use super::attributes as attr;
use super::describe::{closed, incoming, outage, Held, Outages, Waited};
use super::TracedJetStream;
use crate::messaging::attributes::system::NATS;
use crate::messaging::consume::{BoxError, Settle, SettleError, Settlement, Source, SourceError};
use crate::messaging::names;
use crate::propagation::ReadCarrier;
use crate::{Consumer, Incoming, OnFailure};

/// A JetStream consumer's message stream run through the one [`Consumer`] loop, from
/// [`TracedJetStream::messages`].
///
/// After success a message is acked; after a failure the policy decides
/// ([`OnFailure::redeliver`], a nak, by default; [`JetStreamAction`] adds nak with a
/// delay, term and leave). Errors the stream reports between messages are logged and
/// counted in [`Summary::source_errors`](crate::Summary::source_errors) (a final one
/// ends the stream).
///
/// A loop that stops, or reaches its limit, leaves unsettled whatever it has not
/// processed: a pull stream (`messages()`) may hold a whole batch already fetched, which
/// the server redelivers after the ack wait with a higher delivery count, counting
/// towards `max_deliver`. For a bounded run, fetch exactly what you will process
/// (`consumer.fetch().max_messages(n)`).
pub type TracedMessages<St> = Consumer<JetStreamMessages<St>>;

/// What a JetStream failure policy can do beyond the common decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JetStreamAction {
    /// Negative acknowledgement: redeliver, after `delay` if given
    /// ([`Decision::Redeliver`](crate::Decision::Redeliver) is a nak without delay).
    Nak {
        /// How long the server waits before redelivering.
        delay: Option<Duration>,
    },
    /// Terminate: never redeliver (the server publishes a `MSG_TERMINATED` advisory).
    Term,
    /// Send nothing: the server redelivers once the consumer's ack wait has passed.
    Leave,
}

impl OnFailure<JetStreamAction> {
    /// Nak with a delay before redelivery.
    pub fn nak_after(delay: Duration) -> Self {
        OnFailure::settle(JetStreamAction::Nak { delay: Some(delay) })
    }

    /// Term: never redeliver.
    pub fn term() -> Self {
        OnFailure::settle(JetStreamAction::Term)
    }

    /// Settle nothing: the server redelivers after the consumer's ack wait.
    pub fn leave() -> Self {
        OnFailure::settle(JetStreamAction::Leave)
    }

    /// Nak (after `delay`, if given) until delivery `max_deliveries` has failed, then
    /// term.
    pub fn nak_until(max_deliveries: u32, delay: Option<Duration>) -> Self {
        OnFailure::settle(JetStreamAction::Nak { delay })
            .below_attempt(max_deliveries)
            .then(OnFailure::term())
    }
}

/// The source behind [`TracedMessages`]: a JetStream message stream and the JetStream
/// context its spans describe.
pub struct JetStreamMessages<St> {
    js: TracedJetStream,
    stream: Mutex<Pin<Box<St>>>,
    outages: Outages,
}

impl<St> fmt::Debug for JetStreamMessages<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamMessages").finish_non_exhaustive()
    }
}

impl<St> JetStreamMessages<St> {
    pub(super) fn consumer(js: TracedJetStream, messages: St) -> TracedMessages<St>
    where
        Self: Source,
    {
        let telemetry = js.telemetry.clone();
        let policy = js.policy;
        let source = JetStreamMessages {
            js,
            stream: Mutex::new(Box::pin(messages)),
            outages: Outages::default(),
        };
        Consumer::from_source(source, telemetry).parent_policy(policy)
    }

    /// The wrapped message stream.
    pub fn stream_mut(&mut self) -> Pin<&mut St> {
        self.stream
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
    }
}

/// An error of the message stream: after some the stream cannot go on (the consumer was
/// deleted, is a push consumer, or the server rejected the pull's limits); the rest are
/// logged and counted.
fn stream_error(e: impl Into<BoxError>) -> SourceError {
    use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind as Kind};
    let error: BoxError = e.into();
    let fatal = error.downcast_ref::<MessagesError>().is_some_and(|e| {
        matches!(
            e.kind(),
            Kind::ConsumerDeleted | Kind::PushBasedConsumer | Kind::RequestLimitExceeded
        )
    });
    SourceError { fatal, error }
}

impl<St, SE> Source for JetStreamMessages<St>
where
    St: Stream<Item = Result<jetstream::Message, SE>> + Send,
    SE: Into<BoxError> + Send,
{
    type Message = jetstream::Message;
    type Action = JetStreamAction;
    type Delivery<'a>
        = JetStreamDelivery<'a>
    where
        St: 'a;

    async fn next(&self) -> Option<Result<JetStreamDelivery<'_>, SourceError>> {
        let next = std::future::poll_fn(|cx| {
            self.stream
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .poll_next_unpin(cx)
        });
        let message = match self.outages.watch(&self.js.client, next).await {
            Waited::Item(Some(Ok(message))) => message,
            Waited::Item(Some(Err(e))) => return Some(Err(stream_error(e))),
            Waited::Outage(state) => return Some(Err(outage(state))),
            // Ended: a fetched batch is done, or the client closed the connection for
            // good, which must not look like a clean end.
            Waited::Item(None) => return closed(&self.js.client).map(Err),
        };
        // The ack subject is parsed once: what the loop needs now (the delivery count),
        // and where the rest lies for the description, if the span is recorded.
        let info = message.info().ok();
        let delivered = info
            .as_ref()
            .and_then(|info| u32::try_from(info.delivered).ok());
        let parsed = info
            .as_ref()
            .and_then(|info| Parsed::of(message.reply.as_deref()?, info));
        Some(Ok(JetStreamDelivery {
            js: &self.js,
            acker: Acker::new(message.context.clone(), message.reply.clone()),
            delivered,
            parsed,
            held: Held::new(message),
        }))
    }

    fn describe_batch<'a>(&'a self, destination: &'a str) -> Incoming<'a> {
        Incoming::new(NATS, destination)
    }
}

/// A message delivered by a JetStream consumer.
pub struct JetStreamDelivery<'a> {
    js: &'a TracedJetStream,
    acker: Acker,
    /// The server's delivery count (from 1), from the ack subject.
    delivered: Option<u32>,
    /// The rest of the ack subject.
    parsed: Option<Parsed>,
    held: Held<jetstream::Message>,
}

/// What a delivery's ack subject says besides the delivery count: the stream and consumer
/// names as where they lie in the subject (the message keeps the text), the sequences,
/// and when the stream stored the message.
#[derive(Debug, Clone)]
struct Parsed {
    stream: Range<usize>,
    consumer: Range<usize>,
    stream_sequence: u64,
    consumer_sequence: u64,
    published: Option<SystemTime>,
}

impl Parsed {
    /// What `info`, parsed from the ack subject `reply`, says.
    fn of(reply: &str, info: &Info<'_>) -> Option<Parsed> {
        Some(Parsed {
            stream: within(reply, info.stream)?,
            consumer: within(reply, info.consumer)?,
            stream_sequence: info.stream_sequence,
            consumer_sequence: info.consumer_sequence,
            published: published_at(info.published),
        })
    }

    /// The same, with the names read from `reply`, the subject it was parsed from.
    fn in_subject<'s>(&self, reply: &'s str) -> Option<AckInfo<'s>> {
        Some(AckInfo {
            stream: reply.get(self.stream.clone())?,
            consumer: reply.get(self.consumer.clone())?,
            stream_sequence: self.stream_sequence,
            consumer_sequence: self.consumer_sequence,
            published: self.published,
        })
    }
}

/// Where `token`, a part of `text` (as the ack subject's parser hands it out), lies in it.
fn within(text: &str, token: &str) -> Option<Range<usize>> {
    let start = (token.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(token.len())?;
    (text.get(start..end) == Some(token)).then_some(start..end)
}

impl fmt::Debug for JetStreamDelivery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamDelivery")
            .field("subject", &self.held.subject())
            .field("delivered", &self.delivered)
            .field(
                "stream_sequence",
                &self.parsed.as_ref().map(|p| p.stream_sequence),
            )
            .finish_non_exhaustive()
    }
}

impl Settle for JetStreamDelivery<'_> {
    type Message = jetstream::Message;
    type Action = JetStreamAction;

    fn describe(&self) -> Incoming<'_> {
        self.held
            .describe(|message| describe_parsed(self.js, message, self.parsed.as_ref()))
    }

    fn destination(&self) -> &str {
        self.held.subject()
    }

    fn system(&self) -> &'static str {
        NATS
    }

    fn enqueued_at(&self) -> Option<SystemTime> {
        self.parsed.as_ref().and_then(|p| p.published)
    }

    fn headers(&self) -> &dyn ReadCarrier {
        self.held.headers()
    }

    fn redeliveries(&self) -> u32 {
        self.delivered.map_or(0, |n| n.saturating_sub(1))
    }

    fn message(&mut self, keep: bool) -> Option<jetstream::Message> {
        self.held.hand_over(keep)
    }

    fn position(&self) -> String {
        match self.parsed.as_ref().map(|p| p.stream_sequence) {
            Some(seq) => format!("subject {} (stream sequence {seq})", self.held.subject()),
            None => format!("subject {}", self.held.subject()),
        }
    }

    async fn settle(
        &mut self,
        settlement: Settlement<'_, JetStreamAction>,
        _span: &Context,
        _attempt: u32,
    ) -> Result<&'static str, SettleError> {
        let (kind, label) = match settlement {
            Settlement::Done => (AckKind::Ack, "ack"),
            Settlement::Redeliver => (AckKind::Nak(None), "nak"),
            Settlement::Action(JetStreamAction::Nak { delay }) => (AckKind::Nak(*delay), "nak"),
            Settlement::Action(JetStreamAction::Term) => (AckKind::Term, "term"),
            Settlement::Action(JetStreamAction::Leave) | Settlement::Nothing => return Ok("none"),
        };
        self.acker
            .ack_with(kind)
            .await
            .map(|()| label)
            .map_err(|e| SettleError::new(label, e))
    }
}

/// Describe a JetStream message: the core NATS attributes plus stream, consumer and
/// sequences from its ack subject's `info`.
pub(super) fn describe_message<'a>(
    js: &TracedJetStream,
    message: &'a jetstream::Message,
) -> Incoming<'a> {
    let parsed = message
        .info()
        .ok()
        .and_then(|info| Parsed::of(message.reply.as_deref()?, &info));
    describe_parsed(js, message, parsed.as_ref())
}

/// [`describe_message`], from what its ack subject said when it was parsed.
fn describe_parsed<'a>(
    js: &TracedJetStream,
    message: &'a jetstream::Message,
    parsed: Option<&Parsed>,
) -> Incoming<'a> {
    let mut msg = incoming(&js.server, &js.client, &message.message, None, None, false);
    msg.policy = js.policy;
    let reply = message.reply.as_deref().unwrap_or_default();
    if let Some(info) = parsed.and_then(|p| p.in_subject(reply)) {
        with_info(&mut msg, &info);
    }
    msg
}

/// The parts of a delivery's ack subject its process span records.
struct AckInfo<'s> {
    stream: &'s str,
    consumer: &'s str,
    stream_sequence: u64,
    consumer_sequence: u64,
    published: Option<SystemTime>,
}

fn with_info(msg: &mut Incoming<'_>, info: &AckInfo<'_>) {
    msg.push(attr::MESSAGING_NATS_JS_STREAM, names::value(info.stream));
    msg.push(
        attr::MESSAGING_NATS_JS_CONSUMER_NAME,
        names::value(info.consumer),
    );
    msg.push(
        attr::MESSAGING_NATS_JS_STREAM_SEQUENCE,
        i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
    );
    msg.push(
        attr::MESSAGING_NATS_JS_CONSUMER_SEQUENCE,
        i64::try_from(info.consumer_sequence).unwrap_or(i64::MAX),
    );
    if let Some(published) = info.published {
        msg.enqueued_at = Some(published);
    }
}

/// When the server stored the message, if it is a time `SystemTime` can hold everywhere
/// (the conversion panics on Windows for times before 1601).
fn published_at(published: async_nats::datetime::DateTime) -> Option<SystemTime> {
    static EPOCH: OnceLock<async_nats::datetime::DateTime> = OnceLock::new();
    let epoch = EPOCH.get_or_init(|| SystemTime::UNIX_EPOCH.into());
    (published >= *epoch).then(|| SystemTime::from(published))
}

#[cfg(test)]
mod tests {
    use super::within;

    /// A token handed out by a parser of `text` is found where it lies; a string that is
    /// not a part of `text` (even with the same bytes) is not.
    #[test]
    fn a_token_is_found_where_it_lies() {
        let reply = String::from("$JS.ACK.orders.worker.1.7.3.1700000000000000000.0");
        let stream = reply.split('.').nth(2).expect("stream");
        let range = within(&reply, stream).expect("inside");
        assert_eq!(&reply[range], "orders");
        let elsewhere = String::from("orders");
        assert_eq!(within(&reply, &elsewhere), None);
        assert_eq!(
            within(&reply, &reply[reply.len()..]),
            Some(reply.len()..reply.len())
        );
    }
}
