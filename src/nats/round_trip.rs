//! A round trip through the server: the one way to know that it has processed what a
//! connection sent (async-nats' `flush` only writes to the socket).

use std::time::Duration;

use async_nats::client::{PublishError, SubscribeError};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;

/// How long [`round_trip`] waits when the client has no request timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// Why a [`round_trip`] did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundTripError {
    /// The probe subscription could not be made.
    #[error("round trip: subscribing to the probe inbox failed: {0}")]
    Subscribe(#[from] SubscribeError),
    /// The probe message could not be published.
    #[error("round trip: publishing the probe failed: {0}")]
    Publish(#[from] PublishError),
    /// The probe did not come back in time (no permission on the client's inbox prefix,
    /// or the connection is down).
    #[error("round trip: the probe did not come back within {0:?}")]
    TimedOut(Duration),
    /// The connection closed before the probe came back.
    #[error("round trip: the connection closed before the probe came back")]
    Closed,
}

/// Wait until the server has processed everything `client` sent before this call, its
/// subscriptions included.
///
/// async-nats' [`Client::flush`] returns once the bytes are written to the socket, not
/// once the server has read them. A subscription made on one connection can therefore
/// still be unknown to the server when another connection publishes, and core NATS drops
/// a message nobody is subscribed to. After `round_trip`, a message published from any
/// connection reaches the subscriptions made before it.
///
/// It subscribes to a fresh inbox of `client`, publishes an empty message to it and waits
/// for it to come back (the server handles one connection's protocol in order), then
/// unsubscribes. It waits up to the client's request timeout (10 s if it has none).
pub async fn round_trip(client: &Client) -> Result<(), RoundTripError> {
    let wait = client.timeout().unwrap_or(DEFAULT_WAIT);
    let probe = client.new_inbox();
    let mut subscriber = client.subscribe(probe.clone()).await?;
    client.publish(probe, Bytes::new()).await?;
    let back = tokio::time::timeout(wait, subscriber.next()).await;
    // Best effort: the subscriber also unsubscribes when dropped.
    let _ = subscriber.unsubscribe().await;
    match back {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(RoundTripError::Closed),
        Err(_) => Err(RoundTripError::TimedOut(wait)),
    }
}
