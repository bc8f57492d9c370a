//! The stop signal every consume loop watches.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

/// Stops consume loops from another task.
///
/// A loop told to stop finishes the message in hand (its handler, settlement and span),
/// then returns its summary; a core NATS subscription first drains (see the `nats`
/// module). Clones share the same signal: one `Stop` can stop several loops, on any
/// broker. It is also a future that completes once the signal fires, so it can stop
/// work of your own too.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let stop = tracehop::Stop::new();
/// let signal = stop.clone();
/// let waiter = tokio::spawn(async move { signal.await }); // a `Stop` is a future
/// stop.stop();
/// waiter.await.unwrap();
/// assert!(stop.is_stopped());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Stop {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop::new()
    }
}

impl Stop {
    /// A signal that has not fired.
    pub fn new() -> Stop {
        let (tx, _) = watch::channel(false);
        Stop { tx: Arc::new(tx) }
    }

    /// Fire the signal: every loop watching it returns after its current message.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    /// Wait until the signal fires (at once if it has).
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so this only returns once stopped.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

impl IntoFuture for Stop {
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.stopped().await })
    }
}
