//! How NATS messages are described to the core: the send and process span attributes
//! (nats.net's names), the connected server's address, and the context headers merged
//! into the user's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use opentelemetry::StringValue;

use super::attributes as attr;
use super::carrier::merge;
use crate::messaging::attributes::system::NATS;
use crate::messaging::consume::watch::watched;
use crate::messaging::Describe;
use crate::{Incoming, Outgoing, SendSpan, Telemetry};

/// Where a NATS message is published, as a send span describes it.
pub(super) struct Publish<'a> {
    pub(super) telemetry: &'a Telemetry,
    pub(super) server: &'a Server,
    pub(super) client: &'a Client,
    /// `publish` or `request`.
    pub(super) operation: &'static str,
    /// The server timestamps the message (JetStream): no `tracehop-sent-at`.
    pub(super) stamped: bool,
}

impl Publish<'_> {
    /// Open the send span of a message to `subject` (its description finished by
    /// `describe`) and merge its context headers into the user's `headers`.
    pub(super) fn open<'s>(
        &self,
        subject: &'s str,
        headers: Option<HeaderMap>,
        payload: &Bytes,
        describe: impl FnOnce(Outgoing<'s>) -> Outgoing<'s>,
    ) -> (SendSpan, Option<HeaderMap>) {
        let mut context = HeaderMap::new();
        let target = crate::messaging::Target {
            system: NATS,
            destination: subject,
            headers: headers
                .as_ref()
                .map(|h| h as &dyn crate::propagation::ReadCarrier),
        };
        let send = self
            .telemetry
            .send_span_lazy(None, &mut context, self.stamped, target, || {
                let mut msg = Outgoing::new(NATS, subject).operation_name(self.operation);
                msg.push(
                    crate::messaging::attributes::MESSAGING_MESSAGE_BODY_SIZE,
                    payload.len() as i64,
                );
                with_common(&mut msg, self.server, self.client, headers.as_ref());
                describe(msg)
            });
        let headers = with_context(&send, headers, context, payload, self.client);
        (send, headers)
    }
}

/// Merge the context headers into the user's, saying so on the span if they had to be left
/// out.
fn with_context(
    send: &SendSpan,
    headers: Option<HeaderMap>,
    context: HeaderMap,
    payload: &Bytes,
    client: &Client,
) -> Option<HeaderMap> {
    let (headers, dropped) = merge(headers, context, payload.len(), client.max_payload());
    if dropped {
        send.set_attribute(attr::CONTEXT_DROPPED, "max_payload");
    }
    headers
}

/// `server.address` and `server.port` of the server a client is connected to, cached.
///
/// async-nats only hands out a copy of the whole server `INFO` (a dozen strings), so the
/// address is read from it when the client has (re)connected since the last read, and
/// otherwise at most every [`Server::RECHECK`] messages; in between every message shares
/// the cached value. Clones share the cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct Server(Arc<ServerCache>);

#[derive(Debug, Default)]
struct ServerCache {
    address: RwLock<Option<ServerAddress>>,
    uses: AtomicU64,
}

#[derive(Debug)]
struct ServerAddress {
    /// The client's connect count when the address was read.
    connects: u64,
    host: StringValue,
    port: i64,
    /// The id the server gave this connection (`messaging.client.id`).
    client_id: StringValue,
}

impl Server {
    /// Messages between two reads of the server `INFO` while the client stays connected
    /// (async-nats counts a reconnect before it publishes the new server's `INFO`).
    const RECHECK: u64 = 1024;

    /// The address of the server `client` is connected to, if it has told us.
    pub(crate) fn address(&self, client: &Client) -> Option<(StringValue, i64, StringValue)> {
        let cache = &self.0;
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        let recheck = cache
            .uses
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(Self::RECHECK);
        if !recheck {
            let cached = cache.address.read().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = cached.as_ref().filter(|a| a.connects == connects) {
                return Some((a.host.clone(), a.port, a.client_id.clone()));
            }
        }
        let info = client
            .try_server_info()
            .filter(|info| !info.host.is_empty());
        let mut cached = cache.address.write().unwrap_or_else(|p| p.into_inner());
        // The same server as before keeps the values it had: spans share them (and the
        // journal writes a value it has seen before from what it kept).
        let same = |old: &StringValue, new: &str| (old.as_str() == new).then(|| old.clone());
        let fresh = info.map(|info| {
            let old = cached.as_ref();
            let client_id = info.client_id.to_string();
            ServerAddress {
                connects,
                host: old
                    .and_then(|a| same(&a.host, &info.host))
                    .unwrap_or_else(|| StringValue::from(Arc::<str>::from(info.host))),
                port: i64::from(info.port),
                client_id: old
                    .and_then(|a| same(&a.client_id, &client_id))
                    .unwrap_or_else(|| StringValue::from(Arc::<str>::from(client_id))),
            }
        });
        let out = fresh
            .as_ref()
            .map(|a| (a.host.clone(), a.port, a.client_id.clone()));
        *cached = fresh;
        out
    }
}

/// The message id (`Nats-Msg-Id`) and the connected server's address, on a description of
/// either direction.
fn with_common<M: Describe>(
    msg: &mut M,
    server: &Server,
    client: &Client,
    headers: Option<&HeaderMap>,
) {
    if let Some(id) = headers.and_then(message_id) {
        msg.push(
            crate::messaging::attributes::MESSAGING_MESSAGE_ID,
            id.as_str().to_owned(),
        );
    }
    if let Some((host, port, client_id)) = server.address(client) {
        msg.push(attr::SERVER_ADDRESS, host);
        msg.push(attr::SERVER_PORT, port);
        msg.push(crate::messaging::attributes::MESSAGING_CLIENT_ID, client_id);
    }
}

/// The first `Nats-Msg-Id` value, as `HeaderMap::get` finds it (walking a few headers:
/// [`WALK_HEADERS`](crate::propagation::WALK_HEADERS)).
fn message_id(headers: &HeaderMap) -> Option<&async_nats::HeaderValue> {
    let name = async_nats::header::NATS_MESSAGE_ID;
    if headers.len() > crate::propagation::WALK_HEADERS {
        return headers.get(name);
    }
    headers
        .iter()
        .find(|(key, _)| **key == name)
        .and_then(|(_, values)| values.first())
}

/// Describe an incoming NATS message, with the names nats.net uses. `core` is false for a
/// JetStream delivery, whose reply subject is the server's ack subject (not recorded).
pub(crate) fn incoming<'a>(
    server: &Server,
    client: &Client,
    message: &'a Message,
    subscription: Option<&StringValue>,
    queue_group: Option<&StringValue>,
    core: bool,
) -> Incoming<'a> {
    // One copy of the subject, shared by `messaging.destination.name` and
    // `messaging.nats.message.subject`.
    let subject = crate::messaging::names::value(message.subject.as_str());
    // Built in place: each builder call would move the whole description.
    let mut msg = Incoming::with_destination_value(NATS, message.subject.as_str(), subject.clone());
    msg.push(
        crate::messaging::attributes::MESSAGING_MESSAGE_BODY_SIZE,
        message.payload.len() as i64,
    );
    msg.push(attr::MESSAGING_MESSAGE_ENVELOPE_SIZE, message.length as i64);
    msg.push(attr::MESSAGING_NATS_MESSAGE_SUBJECT, subject);
    if let Some(reply) = message.reply.as_ref().filter(|_| core) {
        msg.push(attr::MESSAGING_NATS_MESSAGE_REPLY_TO, reply.to_string());
    }
    if let Some(subscription) = subscription {
        msg.set_template(subscription.clone());
    }
    if let Some(group) = queue_group {
        msg.push(attr::MESSAGING_CONSUMER_GROUP_NAME, group.clone());
    }
    with_common(&mut msg, server, client, message.headers.as_ref());
    msg
}

/// A core NATS or JetStream message.
pub(super) trait NatsMessage: Clone {
    /// The NATS message itself.
    fn nats(&self) -> &Message;
}

impl NatsMessage for Message {
    fn nats(&self) -> &Message {
        self
    }
}

impl NatsMessage for async_nats::jetstream::Message {
    fn nats(&self) -> &Message {
        &self.message
    }
}

/// A received message as a delivery holds it: its subject, and the message until it is
/// handed to the handler (core NATS and JetStream deliveries alike).
#[derive(Debug)]
pub(super) struct Held<M> {
    subject: async_nats::Subject,
    /// Boxed: the loop moves the delivery around before the handler takes the message.
    message: Option<Box<M>>,
}

impl<M: NatsMessage> Held<M> {
    pub(super) fn new(message: M) -> Held<M> {
        Held {
            subject: message.nats().subject.clone(),
            message: Some(Box::new(message)),
        }
    }

    pub(super) fn subject(&self) -> &str {
        self.subject.as_str()
    }

    /// The message's description by `describe`, or just its subject once handed over.
    pub(super) fn describe<'a>(
        &'a self,
        describe: impl FnOnce(&'a M) -> Incoming<'a>,
    ) -> Incoming<'a> {
        match &self.message {
            Some(message) => describe(message),
            None => Incoming::new(NATS, self.subject.as_str()),
        }
    }

    pub(super) fn headers(&self) -> &dyn crate::propagation::ReadCarrier {
        match &self.message {
            Some(message) => &message.nats().headers,
            None => crate::messaging::consume::NO_HEADERS,
        }
    }

    /// The message for a handler run: a copy when it must be kept for another run.
    pub(super) fn hand_over(&mut self, keep: bool) -> Option<M> {
        if keep {
            self.message.as_deref().cloned()
        } else {
            self.message.take().map(|message| *message)
        }
    }
}

/// How often a consumer waiting for its next message checks its connection.
const CHECK_CONNECTION: std::time::Duration = std::time::Duration::from_secs(1);

/// What waiting for the next message of a NATS stream came to.
pub(super) enum Waited<T> {
    /// The stream's next item (`None`: it ended).
    Item(Option<T>),
    /// The connection went down while waiting (reported once per outage).
    Outage(async_nats::connection::State),
}

/// Which outage of a connection was reported: set when one is, cleared once connected.
#[derive(Debug, Default)]
pub(super) struct Outages(std::sync::atomic::AtomicBool);

impl Outages {
    /// Wait for `next`, and if it does not come at once, check `client`'s connection every
    /// second: a connection that went down is reported (once) instead of waited through
    /// in silence. Messages that are flowing cost no timer.
    pub(super) async fn watch<T>(
        &self,
        client: &Client,
        next: impl std::future::Future<Output = Option<T>>,
    ) -> Waited<T> {
        use std::sync::atomic::Ordering::Relaxed;
        let check = || {
            let state = client.connection_state();
            if state == async_nats::connection::State::Connected {
                self.0.store(false, Relaxed);
                None
            } else {
                (!self.0.swap(true, Relaxed)).then_some(state)
            }
        };
        match watched(next, CHECK_CONNECTION, check).await {
            Ok(item) => Waited::Item(item),
            Err(state) => Waited::Outage(state),
        }
    }
}

/// The error of a consumer whose connection went down while it waited.
pub(super) fn outage(
    state: async_nats::connection::State,
) -> crate::messaging::consume::SourceError {
    crate::messaging::consume::SourceError::transient(format!(
        "the connection to the NATS server is down ({state:?}); waiting for it to come back"
    ))
}

/// The error of a stream that ended because its client closed the connection for good
/// (it gave up reconnecting, or was closed).
pub(super) fn closed(client: &Client) -> Option<crate::messaging::consume::SourceError> {
    let state = client.connection_state();
    (state != async_nats::connection::State::Connected).then(|| {
        crate::messaging::consume::SourceError::fatal(format!(
            "the subscription ended with the connection to the NATS server ({state:?}): the client gave up reconnecting or was closed"
        ))
    })
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;

    /// Re-reading the server `INFO` of the same server keeps the values read before (the
    /// same shared text), and reads what the server said (real NATS on loopback).
    #[tokio::test]
    async fn the_same_server_keeps_its_values_across_rechecks() {
        let url = std::env::var("TRACEHOP_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
        let client = async_nats::connect(&url).await.expect("NATS answers");
        crate::nats::round_trip(&client).await.expect("round trip");
        let server = super::Server::default();
        let (host, port, id) = server.address(&client).expect("an address");
        let info = client.server_info();
        assert_eq!(
            (host.as_str(), port),
            (info.host.as_str(), i64::from(info.port))
        );
        assert_eq!(id.as_str(), info.client_id.to_string());
        for _ in 0..=super::Server::RECHECK {
            let (again, _, again_id) = server.address(&client).expect("an address");
            assert!(std::ptr::eq(again.as_str(), host.as_str()));
            assert!(std::ptr::eq(again_id.as_str(), id.as_str()));
        }
    }

    /// The walk finds what `HeaderMap::get` finds, in a small map and in a large one;
    /// names are compared exactly, as the map compares them.
    #[test]
    fn the_message_id_is_the_first_value_of_exactly_its_header() {
        for others in [0, 3, 12] {
            let mut headers = HeaderMap::new();
            for i in 0..others {
                headers.insert(format!("x-{i}").as_str(), "v");
            }
            assert!(super::message_id(&headers).is_none());
            headers.insert("nats-msg-id", "lowercase");
            assert!(super::message_id(&headers).is_none(), "{others}");
            headers.append(async_nats::header::NATS_MESSAGE_ID, "order-42");
            headers.append(async_nats::header::NATS_MESSAGE_ID, "order-43");
            let id = super::message_id(&headers).map(|v| v.as_str().to_owned());
            assert_eq!(id.as_deref(), Some("order-42"), "{others}");
            assert_eq!(
                id.as_deref(),
                headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str())
            );
        }
    }
}
