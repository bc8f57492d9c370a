//! Running the user's handler inside a process span, with its panics caught.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{self, Poll};

use opentelemetry::Context;

use super::summary::HandlerFailure;
use crate::ProcessSpan;

/// A caught panic: its message, and the payload to resume it with.
pub(crate) struct Panic {
    pub(crate) message: String,
    pub(crate) payload: Box<dyn Any + Send>,
}

/// Call `call` and await its future, with `cx` as the current context for both. A panic
/// in either is caught and returned, not unwound.
pub(crate) async fn run_guarded<Fut, T, E>(
    cx: &Context,
    call: impl FnOnce() -> Fut,
) -> Result<T, HandlerFailure<E>>
where
    Fut: Future<Output = Result<T, E>>,
{
    let guarded = Guarded {
        cx,
        call: Some(call),
        future: None,
    };
    match guarded.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(HandlerFailure::Error(error)),
        Err(payload) => Err(HandlerFailure::Panic(Panic {
            message: panic_message(&*payload),
            payload,
        })),
    }
}

pin_project_lite::pin_project! {
    /// The handler's call, made on the first poll, then the future it returned: each
    /// poll with `cx` attached once (the call and the first poll of its future share
    /// it), and a panic in either caught.
    struct Guarded<'c, C, Fut> {
        cx: &'c Context,
        call: Option<C>,
        #[pin]
        future: Option<Fut>,
    }
}

impl<C, Fut> Future for Guarded<'_, C, Fut>
where
    C: FnOnce() -> Fut,
    Fut: Future,
{
    type Output = Result<Fut::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, task: &mut task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _current = this.cx.clone().attach();
        let polled = catch_unwind(AssertUnwindSafe(|| {
            if let Some(call) = this.call.take() {
                this.future.set(Some(call()));
            }
            this.future
                .as_mut()
                .as_pin_mut()
                .map(|future| future.poll(task))
        }));
        match polled {
            Ok(Some(poll)) => poll.map(Ok),
            // The call panicked and was reported; nothing polls a run again after that.
            Ok(None) => panic!("a handler's run was polled again after its call panicked"),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Record a handler run's outcome on its process span.
pub(crate) fn record<T, E: fmt::Display>(
    span: &ProcessSpan,
    result: &Result<T, HandlerFailure<E>>,
) {
    if !span.is_recording() {
        return;
    }
    match result {
        Ok(_) => {
            span.record(&Ok::<(), E>(()));
        }
        Err(HandlerFailure::Error(error)) => {
            span.record_error(error);
        }
        Err(HandlerFailure::Panic(panic)) => span.record_panic(&panic.message),
    }
}

/// The text of a panic: its `&str` or `String` payload, as `panic!` gives it.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the handler panicked with a payload that is not text".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value only the run's context holds.
    #[derive(Debug, PartialEq)]
    struct Marker(u32);

    fn marker() -> Option<u32> {
        Context::current().get::<Marker>().map(|m| m.0)
    }

    #[tokio::test]
    async fn the_context_is_current_in_the_call_and_in_each_poll_only() {
        let cx = Context::new().with_value(Marker(7));
        let run = run_guarded(&cx, || {
            let at_call = marker();
            async move {
                let first_poll = marker();
                tokio::task::yield_now().await;
                Ok::<_, String>((at_call, first_poll, marker()))
            }
        });
        // Polled beside the run, in the same task: between the run's polls its context
        // is not current.
        let beside = async {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(marker());
                tokio::task::yield_now().await;
            }
            seen
        };
        let (ran, beside) = tokio::join!(run, beside);
        assert_eq!(ran.ok(), Some((Some(7), Some(7), Some(7))));
        assert_eq!(beside, vec![None, None, None]);
        assert_eq!(marker(), None, "nothing stays attached after the run");
    }

    #[tokio::test]
    async fn panics_in_the_call_and_in_a_later_poll_are_caught() {
        let cx = Context::new();
        let in_call = run_guarded(&cx, || -> std::future::Ready<Result<(), String>> {
            panic!("in the call")
        })
        .await;
        let in_poll = run_guarded(&cx, || async {
            tokio::task::yield_now().await;
            if marker().is_none() {
                panic!("after a yield");
            }
            Ok::<(), String>(())
        })
        .await;
        let message = |r: Result<(), HandlerFailure<String>>| match r {
            Err(HandlerFailure::Panic(p)) => p.message,
            Err(HandlerFailure::Error(e)) => format!("error {e}"),
            Ok(()) => "ok".to_owned(),
        };
        assert_eq!(message(in_call), "in the call");
        assert_eq!(message(in_poll), "after a yield");
        let failed = run_guarded(&cx, || async { Err::<(), _>("no".to_owned()) }).await;
        assert_eq!(message(failed), "error no");
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        let text = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*text), "plain");
        let formatted = std::panic::catch_unwind(|| panic!("order {}", 7)).unwrap_err();
        assert_eq!(panic_message(&*formatted), "order 7");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(42_u8)).unwrap_err();
        assert!(panic_message(&*other).contains("not text"));
    }
}
