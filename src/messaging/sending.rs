//! A traced send in flight: started when first polled, then the client's own future
//! polled in place.
//!
//! A send must open its span when it is polled, so that the context current then (for
//! instance through OpenTelemetry's `FutureExt::with_context`) is its parent; and its
//! future should be about the size of the client's own, because every move of a future
//! copies it. An `async fn` does the first but keeps its arguments beside the client's
//! future (which holds them again); [`Sending`] holds either what starts the send or the
//! client's future with what ends the span, never both.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// A send that runs `start` when first polled, then polls the client's future `F` it
    /// returned and hands its output to the finishing function `E`.
    #[project = SendingProj]
    pub(crate) enum Sending<S, F, E> {
        /// Not polled yet.
        Start { start: Option<S> },
        /// The client's future, and what ends the span with its output.
        Running { #[pin] inner: F, end: Option<E> },
    }
}

impl<S, F, E> Sending<S, F, E> {
    /// A send started by `start` (which opens the span and returns the client's future and
    /// the finishing function) when first polled. (Kafka's send is eager: the NATS and
    /// RabbitMQ adapters use this.)
    #[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
    pub(crate) fn new(start: S) -> Sending<S, F, E> {
        Sending::Start { start: Some(start) }
    }
}

impl<S, F, E, O> Future for Sending<S, F, E>
where
    S: FnOnce() -> (F, E),
    F: Future,
    E: FnOnce(F::Output) -> O,
{
    type Output = O;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        loop {
            match self.as_mut().project() {
                SendingProj::Start { start } => {
                    let Some(start) = start.take() else {
                        panic!("a traced send was polled again after its start panicked");
                    };
                    let (inner, end) = start();
                    self.set(Sending::Running {
                        inner,
                        end: Some(end),
                    });
                }
                SendingProj::Running { inner, end } => {
                    let output = std::task::ready!(inner.poll(cx));
                    let Some(end) = end.take() else {
                        panic!("a traced send was polled after it completed");
                    };
                    return Poll::Ready(end(output));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sending;
    use std::cell::Cell;

    #[tokio::test]
    async fn starts_when_polled_and_ends_with_the_output() {
        let started = Cell::new(false);
        let send = Sending::new(|| {
            started.set(true);
            (async { 20 }, |n: i32| n + 1)
        });
        assert!(!started.get(), "nothing runs before the first poll");
        assert_eq!(send.await, 21);
        assert!(started.get());
    }
}
