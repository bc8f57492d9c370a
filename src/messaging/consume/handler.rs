//! Running the user's handler inside a process span, with its panics caught.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

use futures_util::FutureExt as _;
use opentelemetry::context::FutureExt as _;
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
    let called = catch_unwind(AssertUnwindSafe(|| {
        let _current = cx.clone().attach();
        call()
    }));
    let result = match called {
        Ok(future) => {
            AssertUnwindSafe(future.with_context(cx.clone()))
                .catch_unwind()
                .await
        }
        Err(payload) => Err(payload),
    };
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(HandlerFailure::Error(error)),
        Err(payload) => Err(HandlerFailure::Panic(Panic {
            message: panic_message(&*payload),
            payload,
        })),
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
