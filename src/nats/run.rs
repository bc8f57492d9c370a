//! Controls shared by the processing loops: when to stop, and what they did.

use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

/// Stops processing loops from another task.
///
/// A loop told to stop finishes the message in hand (its handler, settlement and span),
/// then returns; a core NATS subscription first drains (unsubscribes and processes the
/// messages that had already reached the client; see
/// [`TracedSubscriber::stop_on`](super::TracedSubscriber::stop_on) for its limits). Clones
/// share the same signal; one `Stop` can stop several loops.
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

    async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so this only returns once stopped.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// What a processing loop did before it returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Processed {
    /// Messages handed to the handler.
    pub messages: usize,
    /// Of those, how many the handler failed.
    pub failed: usize,
    /// Errors the message stream reported between messages (JetStream only: missed
    /// heartbeats, pull request errors). A stream whose error is final ends by itself.
    pub stream_errors: usize,
}

/// When a loop stops besides its stream ending: after a number of messages, or when a
/// [`Stop`] fires.
#[derive(Debug, Clone, Default)]
pub(crate) struct Until {
    limit: Option<usize>,
    stop: Option<Stop>,
    taken: usize,
}

impl Until {
    pub(crate) fn limit(&mut self, messages: usize) {
        self.limit = Some(messages);
    }

    pub(crate) fn stop_on(&mut self, stop: &Stop) {
        self.stop = Some(stop.clone());
    }

    /// The next item of `stream`, or `None` once the limit is reached, the stop signal has
    /// fired, or the stream has ended. Items the stream has not yet yielded stay in it.
    pub(crate) async fn next<S: Stream + Unpin>(&mut self, stream: &mut S) -> Option<S::Item> {
        if self.limit.is_some_and(|limit| self.taken >= limit) {
            return None;
        }
        let item = match &self.stop {
            None => stream.next().await,
            Some(stop) if stop.is_stopped() => None,
            Some(stop) => tokio::select! {
                biased;
                _ = stop.stopped() => None,
                item = stream.next() => item,
            },
        };
        item
    }

    /// The limit, if one was set.
    pub(crate) fn limit_value(&self) -> Option<usize> {
        self.limit
    }

    /// Whether the stop signal has fired.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(Stop::is_stopped)
    }

    /// Stop watching the stop signal (to drain what already arrived).
    pub(crate) fn forget_stop(&mut self) {
        self.stop = None;
    }

    /// Count one item towards the limit (messages, not stream errors).
    pub(crate) fn count(&mut self) {
        self.taken += 1;
    }
}
