//! A round trip through the server: the one way to know that it has processed what a
//! connection sent (async-nats' `flush` only writes to the socket).

use std::time::Duration;

use async_nats::client::{RequestError, RequestErrorKind};
use async_nats::{Client, Request};

/// How long [`round_trip`] waits when the client has no request timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// Why a [`round_trip`] did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundTripError {
    /// The server did not answer in time (the connection is down, or the server predates
    /// no-responders replies, NATS 2.2).
    #[error("round trip: the server did not answer within {0:?}")]
    TimedOut(Duration),
    /// The probe request could not be sent or failed otherwise.
    #[error("round trip: {0}")]
    Request(#[source] RequestError),
}

/// Wait until the server has processed everything `client` sent before this call, its
/// subscriptions included.
///
/// async-nats' [`Client::flush`] returns once the bytes are written to the socket, not
/// once the server has read them. A subscription made on one connection can therefore
/// still be unknown to the server when another connection publishes, and core NATS drops
/// a message nobody is subscribed to. After `round_trip`, a message published to the same
/// server from any connection reaches the subscriptions made before it. (In a cluster or
/// through leaf nodes, interest reaches the other servers a moment later; this waits only
/// for the server `client` is connected to.)
///
/// It sends a request to a fresh inbox subject nobody listens on; the server handles a
/// connection's protocol in order and answers with "no responders", which proves it read
/// everything before. This works with `no_echo` connections. It waits up to the client's
/// request timeout (10 s if it has none).
pub async fn round_trip(client: &Client) -> Result<(), RoundTripError> {
    let wait = client.timeout().unwrap_or(DEFAULT_WAIT);
    let probe = client.new_inbox();
    match client
        .send_request(probe, Request::new().timeout(Some(wait)))
        .await
    {
        // An answer (someone does listen there) proves the same.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::TimedOut => Err(RoundTripError::TimedOut(wait)),
        Err(e) => Err(RoundTripError::Request(e)),
    }
}
