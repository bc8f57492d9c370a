//! Request/reply over RabbitMQ's direct reply-to, traced both ways.
//!
//! The client publishes the request with `reply_to` and `correlation_id` from inside its
//! own context; the server's process span is a child of the request's send span; the
//! server's [`TracedChannel::reply`] is a publish inside that process span, so its context
//! travels back with the reply and the client's span for the reply closes the round trip
//! in the same trace.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::oneshot;

use super::consume::describe;
use super::publish::{PublishConfirm, TracedChannel};
use crate::{ParentPolicy, Telemetry};

/// RabbitMQ's direct reply-to pseudo-queue: replies go straight back to the consuming
/// channel, with no queue to declare or delete.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What can go wrong with a request or a reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The AMQP client failed (connection, channel, protocol).
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    /// The broker nacked the request (publisher confirms).
    #[error("the broker nacked the request")]
    Nacked,
    /// The broker returned the request as unroutable (`mandatory` publish).
    #[error("the broker returned the request: {reply_code} {reply_text}")]
    Returned {
        /// The AMQP reply code (312 `NO_ROUTE`).
        reply_code: u16,
        /// The broker's text.
        reply_text: String,
    },
    /// Another call of this client is waiting for a reply with this correlation id.
    #[error("correlation id {0} is already waiting for a reply")]
    CorrelationIdInUse(String),
    /// The reply consumer stopped (channel or connection closed) before the reply came.
    #[error("the reply consumer stopped before the reply arrived")]
    Closed,
    /// The request has no `reply_to`, so there is nowhere to reply.
    #[error("the request has no reply_to")]
    NoReplyTo,
}

type Pending = Mutex<HashMap<String, oneshot::Sender<Delivery>>>;

fn lock(pending: &Pending) -> MutexGuard<'_, HashMap<String, oneshot::Sender<Delivery>>> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A traced RPC client over RabbitMQ's direct reply-to.
///
/// [`call`](Self::call) publishes the request (a send span, child of the current context)
/// with `reply_to` = [`DIRECT_REPLY_TO`] and a correlation id, waits for the reply, and
/// records a `process` span for the reply (named after the operation alone: the reply
/// destination is temporary), a child of the server's reply span, or of the request span
/// when the reply carries no usable context (the span says why) — the same reply span as
/// NATS request/reply. Calls may run
/// concurrently. The client owns its channel's reply consumer: use a channel of its own.
///
/// `call` has no timeout of its own; wrap it in `tokio::time::timeout`. A reply that
/// arrives after its caller gave up is discarded.
pub struct RpcClient {
    channel: TracedChannel,
    policy: ParentPolicy,
    pending: Arc<Pending>,
    prefix: String,
    next: AtomicU64,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("channel", &self.channel)
            .field("waiting", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

impl RpcClient {
    /// Start consuming replies on `channel` (in a task on the current Tokio runtime) and
    /// trace calls as service `telemetry`.
    pub async fn new(channel: Channel, telemetry: Telemetry) -> lapin::Result<RpcClient> {
        let mut replies = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                ShortString::default(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Arc<Pending> = Arc::default();
        let dispatch_to = Arc::clone(&pending);
        let dispatcher = tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let waiting = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| lock(&dispatch_to).remove(id.as_str()));
                if let Some(caller) = waiting {
                    // The caller may have given up meanwhile; the reply is then discarded.
                    let _ = caller.send(reply);
                }
            }
            // Wake every waiting caller: no reply will come.
            lock(&dispatch_to).clear();
        });
        Ok(RpcClient {
            channel: TracedChannel::new(channel, telemetry),
            policy: ParentPolicy::Child,
            pending,
            prefix: unique_prefix(),
            next: AtomicU64::new(0),
            dispatcher,
        })
    }

    /// How the span for a reply relates to the responder's span: a child of the
    /// responder's reply span (the default), or, with [`ParentPolicy::Link`], a child of
    /// the request span that links to the responder's (the responder is not trusted to
    /// choose the caller's trace).
    pub fn parent_policy(mut self, policy: ParentPolicy) -> RpcClient {
        self.policy = policy;
        self
    }

    /// The traced channel the requests are published on.
    pub fn channel(&self) -> &TracedChannel {
        &self.channel
    }

    /// Send a request and wait for its reply.
    ///
    /// `properties` are sent as given, except that `reply_to` is set to
    /// [`DIRECT_REPLY_TO`] and, if you set none, a correlation id is generated. The reply
    /// is returned as delivered; the client's span for it has already ended.
    pub async fn call(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Delivery, RpcError> {
        let correlation_id = match properties.correlation_id() {
            Some(id) => id.clone(),
            None => ShortString::from(format!(
                "{}.{}",
                self.prefix,
                self.next.fetch_add(1, Ordering::Relaxed)
            )),
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.contains_key(correlation_id.as_str()) {
                return Err(RpcError::CorrelationIdInUse(correlation_id.to_string()));
            }
            pending.insert(correlation_id.to_string(), tx);
        }
        let _waiting = Waiting {
            pending: &self.pending,
            id: correlation_id.as_str(),
        };
        let properties = properties
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(correlation_id.clone());
        let confirm = self
            .channel
            .basic_publish(exchange, routing_key, options, payload, properties)
            .await?;
        let request = confirm.context().clone();
        let confirmation = confirm.await?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Nack(_) => return Err(RpcError::Nacked),
            Confirmation::Ack(Some(returned)) => {
                return Err(RpcError::Returned {
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
        }
        let reply = rx.await.map_err(|_| RpcError::Closed)?;
        let msg = describe(DIRECT_REPLY_TO, &reply).parent_policy(self.policy);
        self.channel
            .telemetry()
            .record_reply(msg, &reply.properties, &request);
        Ok(reply)
    }
}

/// Removes a call's entry when the call ends, however it ends (dropped futures included).
struct Waiting<'a> {
    pending: &'a Pending,
    id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(self.id);
    }
}

/// A correlation id prefix unique to this client.
fn unique_prefix() -> String {
    static CLIENTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}.{:x}.{}",
        std::process::id(),
        nanos,
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    )
}

impl TracedChannel {
    /// Reply to an RPC `request`: publish `payload` to its `reply_to` through the default
    /// exchange, with its correlation id unless `properties` has one.
    ///
    /// Call it from the handler that processes the request, so the reply's send span is a
    /// child of the request's process span and the caller's trace continues.
    pub async fn reply(
        &self,
        request: &Delivery,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<PublishConfirm, RpcError> {
        let reply_to = request
            .properties
            .reply_to()
            .clone()
            .ok_or(RpcError::NoReplyTo)?;
        let properties = match (
            properties.correlation_id(),
            request.properties.correlation_id(),
        ) {
            (None, Some(id)) => properties.with_correlation_id(id.clone()),
            _ => properties,
        };
        Ok(self
            .basic_publish(
                ShortString::default(),
                reply_to,
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await?)
    }
}
